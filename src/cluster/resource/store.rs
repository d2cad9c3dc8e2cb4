//! Persistence: the resource manager's state in SQLite (rusqlite, bundled).
//!
//! Tables: `meta` (id counters, the next token nonce, grant and refusal counts), `nodes`
//! (the registration, state, last heartbeat, and the lease ends its manager has not been
//! told yet), `leases`, `lease_parts` and `usage`. The server writes the rows an
//! operation changed ([`super::state::Dirty`]) in one transaction before it answers, so a
//! restart loses no lease and no accounting. WAL journal with `synchronous=NORMAL`: a
//! committed transaction survives the process dying; a power cut may lose the last few.
//!
//! On load, nodes keep the state they had; up nodes get three heartbeat intervals from the
//! restart to send a heartbeat before they are marked down (see
//! [`super::state::State::restore`]).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::state::{Counters, Dirty, LeaseRecord, NodeRecord, PartRecord, State, StateConfig};
use crate::cluster::api::{LeaseState, NodeRegistration, NodeState, UnixMillis};

/// The schema this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    manager_address TEXT NOT NULL,
    fabric TEXT NOT NULL,
    spare_cores TEXT NOT NULL,      -- JSON array of core ids
    memory_mib INTEGER NOT NULL,
    gpus TEXT NOT NULL,             -- JSON array of GPU ids
    state TEXT NOT NULL,            -- up | down
    last_heartbeat INTEGER NOT NULL,
    pending_end TEXT NOT NULL       -- JSON array of lease ids
);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    state TEXT NOT NULL,            -- active | released | expired | lost
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at INTEGER
);
CREATE TABLE IF NOT EXISTS lease_parts (
    lease INTEGER NOT NULL REFERENCES leases(id),
    idx INTEGER NOT NULL,
    node INTEGER NOT NULL,
    cores TEXT NOT NULL,            -- JSON array of core ids
    memory_mib INTEGER NOT NULL,
    gpus TEXT NOT NULL,             -- JSON array of GPU ids
    PRIMARY KEY (lease, idx)
);
CREATE TABLE IF NOT EXISTS usage (
    lease INTEGER PRIMARY KEY REFERENCES leases(id),
    busy_ns INTEGER NOT NULL,
    hot_ns INTEGER NOT NULL,
    invocations INTEGER NOT NULL
);
";

/// Opening, reading or writing the database failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the resource manager database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("resource manager database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("resource manager database: {0}")]
    Corrupt(String),
}

/// The database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path`; `:memory:` keeps it in memory.
    ///
    /// # Errors
    /// [`StoreError`] when the file cannot be opened or has a newer schema.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // `journal_mode` answers with a row; in memory it stays `memory`.
        let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "schema version {version} is newer than this rafi's ({SCHEMA_VERSION})"
            )));
        }
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
        Ok(Store { conn })
    }

    /// The persisted state, or an empty one (with a random first nonce) for a new
    /// database. `now` starts the liveness grace of the restored nodes.
    ///
    /// # Errors
    /// [`StoreError`] for SQL errors or rows that do not decode.
    pub fn load(&self, config: StateConfig, now: UnixMillis) -> Result<State, StoreError> {
        let Some(counters) = self.counters()? else {
            return Ok(State::new(config, random_nonce_seed(now)));
        };
        let nodes = self.nodes()?;
        let leases = self.leases()?;
        Ok(State::restore(config, nodes, leases, counters, now))
    }

    /// Writes the rows `dirty` names, in one transaction.
    ///
    /// # Errors
    /// [`StoreError`]; nothing is written then.
    pub fn save(&mut self, state: &State, dirty: &Dirty) -> Result<(), StoreError> {
        if dirty.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        if dirty.counters {
            let c = state.counters();
            let mut put =
                tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
            for (key, value) in [
                ("next_node", c.next_node),
                ("next_lease", c.next_lease),
                ("next_nonce", c.next_nonce),
                ("grants", c.grants),
                ("refusals", c.refusals),
            ] {
                put.execute(params![key, value as i64])?;
            }
        }
        for id in &dirty.nodes {
            let Some(n) = state.node_record(*id) else {
                continue;
            };
            let r = &n.registration;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO nodes (id, name, manager_address, fabric, spare_cores,
                 memory_mib, gpus, state, last_heartbeat, pending_end)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                n.id as i64,
                r.name,
                r.manager_address,
                r.fabric.name(),
                json(&r.spare_cores),
                r.memory_mib as i64,
                json(&r.gpus),
                node_state_name(n.state),
                n.last_heartbeat as i64,
                json(&n.pending_end),
            ])?;
        }
        for id in &dirty.leases {
            let Some(l) = state.lease_record(*id) else {
                continue;
            };
            tx.prepare_cached(
                "INSERT OR REPLACE INTO leases (id, client, state, created_at, expires_at, ended_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                l.id as i64,
                l.client,
                lease_state_name(l.state),
                l.created_at as i64,
                l.expires_at as i64,
                l.ended_at.map(|t| t as i64),
            ])?;
            // Parts never change after the grant.
            let mut part = tx.prepare_cached(
                "INSERT OR IGNORE INTO lease_parts (lease, idx, node, cores, memory_mib, gpus)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (i, p) in l.parts.iter().enumerate() {
                part.execute(params![
                    l.id as i64,
                    i as i64,
                    p.node as i64,
                    json(&p.cores),
                    p.memory_mib as i64,
                    json(&p.gpus),
                ])?;
            }
            tx.prepare_cached(
                "INSERT OR REPLACE INTO usage (lease, busy_ns, hot_ns, invocations)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                l.id as i64,
                l.busy_ns as i64,
                l.hot_ns as i64,
                l.invocations as i64,
            ])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn counters(&self) -> Result<Option<Counters>, StoreError> {
        let get = |key: &str| -> Result<Option<u64>, StoreError> {
            Ok(self
                .conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()?
                .map(|v| v as u64))
        };
        let Some(next_lease) = get("next_lease")? else {
            return Ok(None);
        };
        Ok(Some(Counters {
            next_node: get("next_node")?.unwrap_or(1),
            next_lease,
            next_nonce: get("next_nonce")?.unwrap_or(0),
            grants: get("grants")?.unwrap_or(0),
            refusals: get("refusals")?.unwrap_or(0),
        }))
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut q = self.conn.prepare(
            "SELECT id, name, manager_address, fabric, spare_cores, memory_mib, gpus, state,
             last_heartbeat, pending_end FROM nodes ORDER BY id",
        )?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, String>(9)?,
            ))
        })?;
        let mut nodes = Vec::new();
        for row in rows {
            let (id, name, address, fabric, cores, memory, gpus, state, heartbeat, pending) = row?;
            nodes.push(NodeRecord {
                id: id as u64,
                registration: NodeRegistration {
                    name,
                    manager_address: address,
                    fabric: fabric.parse().map_err(StoreError::Corrupt)?,
                    spare_cores: unjson(&cores)?,
                    memory_mib: memory as u64,
                    gpus: unjson(&gpus)?,
                },
                state: match state.as_str() {
                    "up" => NodeState::Up,
                    "down" => NodeState::Down,
                    other => return Err(StoreError::Corrupt(format!("node state {other:?}"))),
                },
                last_heartbeat: heartbeat as u64,
                pending_end: unjson(&pending)?,
                alive_since: 0,
            });
        }
        Ok(nodes)
    }

    fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        let mut q = self.conn.prepare(
            "SELECT l.id, l.client, l.state, l.created_at, l.expires_at, l.ended_at,
             u.busy_ns, u.hot_ns, u.invocations
             FROM leases l LEFT JOIN usage u ON u.lease = l.id ORDER BY l.id",
        )?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, Option<i64>>(8)?,
            ))
        })?;
        let mut leases = Vec::new();
        for row in rows {
            let (id, client, state, created, expires, ended, busy, hot, invocations) = row?;
            leases.push(LeaseRecord {
                id: id as u64,
                client,
                state: match state.as_str() {
                    "active" => LeaseState::Active,
                    "released" => LeaseState::Released,
                    "expired" => LeaseState::Expired,
                    "lost" => LeaseState::Lost,
                    other => return Err(StoreError::Corrupt(format!("lease state {other:?}"))),
                },
                created_at: created as u64,
                expires_at: expires as u64,
                ended_at: ended.map(|t| t as u64),
                parts: Vec::new(),
                busy_ns: busy.unwrap_or(0) as u64,
                hot_ns: hot.unwrap_or(0) as u64,
                invocations: invocations.unwrap_or(0) as u64,
            });
        }
        let mut q = self.conn.prepare(
            "SELECT lease, node, cores, memory_mib, gpus FROM lease_parts ORDER BY lease, idx",
        )?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        for row in rows {
            let (lease, node, cores, memory, gpus) = row?;
            let Ok(i) = leases.binary_search_by_key(&(lease as u64), |l| l.id) else {
                return Err(StoreError::Corrupt(format!(
                    "a part of unknown lease {lease}"
                )));
            };
            leases[i].parts.push(PartRecord {
                node: node as u64,
                cores: unjson(&cores)?,
                memory_mib: memory as u64,
                gpus: unjson(&gpus)?,
            });
        }
        Ok(leases)
    }
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    // Vectors and sets of numbers and strings always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

fn unjson<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{text:?}: {e}")))
}

fn node_state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Up => "up",
        NodeState::Down => "down",
    }
}

fn lease_state_name(state: LeaseState) -> &'static str {
    match state {
        LeaseState::Active => "active",
        LeaseState::Released => "released",
        LeaseState::Expired => "expired",
        LeaseState::Lost => "lost",
    }
}

/// A random first nonce (below 2^62, so that counting up never wraps in practice): from
/// the kernel's random source, or std's randomly keyed hasher where that cannot be read.
fn random_nonce_seed(now: UnixMillis) -> u64 {
    use std::hash::BuildHasher;
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let seed = match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes))
    {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::collections::hash_map::RandomState::new().hash_one(now),
    };
    seed >> 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::api::{Heartbeat, LeaseRequest, LeaseUsage};
    use crate::fabric::FabricKind;

    fn config() -> StateConfig {
        StateConfig {
            secret: b"s".to_vec(),
            heartbeat_interval_ms: 1_000,
            max_lease_ms: 3_600_000,
        }
    }

    fn save(store: &mut Store, state: &mut State) {
        let dirty = state.take_dirty();
        store.save(state, &dirty).unwrap();
    }

    #[test]
    fn the_state_survives_a_reopen_of_the_file() {
        let dir = std::env::temp_dir().join(format!("rafi-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rm.db");
        let _ = std::fs::remove_file(&path);
        let mut store = Store::open(&path).unwrap();
        let mut state = store.load(config(), 0).unwrap();
        let seed = state.counters().next_nonce;
        for (name, cores) in [("a", vec![2, 3, 5]), ("b", vec![7])] {
            state
                .register(
                    NodeRegistration {
                        name: name.into(),
                        manager_address: format!("{name}:1"),
                        fabric: FabricKind::Tcp,
                        spare_cores: cores,
                        memory_mib: 64,
                        gpus: vec!["0".into()],
                    },
                    0,
                )
                .unwrap();
        }
        save(&mut store, &mut state);
        let request = LeaseRequest {
            cores: 4,
            memory_mib: 100,
            gpus: 1,
            duration_ms: 60_000,
            fabric: None,
        };
        let lease = state.lease("r", &request, 100).unwrap();
        state.release("r", lease.lease, 200).unwrap();
        let lease = state.lease("r", &request, 300).unwrap();
        let usage = LeaseUsage {
            lease: lease.lease,
            busy_ns: 5,
            hot_ns: 6,
            invocations: 7,
        };
        state
            .heartbeat(
                2,
                Heartbeat {
                    usage: vec![usage],
                    ended: vec![],
                },
                400,
            )
            .unwrap();
        save(&mut store, &mut state);
        drop(store);

        let store = Store::open(&path).unwrap();
        let restored = store.load(config(), 10_000).unwrap();
        assert_eq!(restored.leases(), state.leases());
        assert_eq!(restored.usage(20_000), state.usage(20_000));
        assert_eq!(restored.nodes(), state.nodes());
        assert_eq!(restored.counters(), state.counters());
        assert!(restored.counters().next_nonce >= seed + 4);
        assert_eq!(
            restored.node_record(1).unwrap().pending_end,
            state.node_record(1).unwrap().pending_end
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_new_database_starts_empty_with_a_random_nonce() {
        let store = Store::open(Path::new(":memory:")).unwrap();
        let a = store.load(config(), 0).unwrap();
        let b = Store::open(Path::new(":memory:"))
            .unwrap()
            .load(config(), 0)
            .unwrap();
        assert!(a.nodes().is_empty() && a.leases().is_empty());
        assert_ne!(a.counters().next_nonce, b.counters().next_nonce);
    }
}
