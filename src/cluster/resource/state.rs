//! The resource manager's state, sans-IO: nodes, leases, placement, expiry, liveness and
//! accounting. No sockets, no database, no clock: every operation takes `now`, so tests
//! drive time step by step. The server persists what an operation changed
//! ([`State::take_dirty`]) before it answers.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::api::{
    Heartbeat, HeartbeatReply, Lease, LeasePart, LeasePartStatus, LeaseRequest, LeaseState,
    LeaseStatus, NodeRegistered, NodeRegistration, NodeState, NodeStatus, RenewRequest, UnixMillis,
    Usage,
};
use crate::cluster::token::{self, Claims};
use crate::fabric::FabricKind;

/// A node silent for this many heartbeat intervals is marked down.
pub const MISSED_HEARTBEATS: u64 = 3;

/// What the state core needs to know.
#[derive(Clone, Debug)]
pub struct StateConfig {
    /// The cluster secret: lease tokens are signed with it.
    pub secret: Vec<u8>,
    /// How often managers send heartbeats, in ms.
    pub heartbeat_interval_ms: u64,
    /// The longest lease (and renewal) granted, in ms.
    pub max_lease_ms: u64,
}

/// Why an operation was refused. [`StateError::kind`] is the API error kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown node {0}")]
    UnknownNode(u64),
    #[error("unknown lease {0}")]
    UnknownLease(u64),
    #[error("lease {lease} belongs to another client")]
    NotYours { lease: u64 },
    #[error("lease {lease} has ended ({state:?})")]
    Ended { lease: u64, state: LeaseState },
    #[error(
        "not enough free resources: asked for {cores} cores, {memory_mib} MiB, {gpus} GPUs; \
         free on up nodes{fabric}: {free_cores} cores, {free_memory_mib} MiB, {free_gpus} GPUs"
    )]
    Exhausted {
        cores: u32,
        memory_mib: u64,
        gpus: u32,
        fabric: String,
        free_cores: usize,
        free_memory_mib: u64,
        free_gpus: usize,
    },
}

impl StateError {
    /// The [`crate::cluster::api::ApiError`] kind.
    pub fn kind(&self) -> &'static str {
        match self {
            StateError::BadRequest(_) => "bad_request",
            StateError::UnknownNode(_) | StateError::UnknownLease(_) => "not_found",
            StateError::NotYours { .. } => "forbidden",
            StateError::Ended { .. } => "gone",
            StateError::Exhausted { .. } => "exhausted",
        }
    }
}

/// A registered node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: u64,
    pub registration: NodeRegistration,
    pub state: NodeState,
    pub last_heartbeat: UnixMillis,
    /// Leases of this node that ended and whose end its manager has not been told yet.
    pub pending_end: BTreeSet<u64>,
    /// Liveness is measured from the later of the last heartbeat and this (the time the
    /// state was restored from the database), so that a restart does not mark every node
    /// down at once. Not persisted.
    pub alive_since: UnixMillis,
}

/// The share of a lease on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRecord {
    pub node: u64,
    pub cores: Vec<usize>,
    pub memory_mib: u64,
    pub gpus: Vec<String>,
}

/// A lease and its accounting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: u64,
    pub client: String,
    pub state: LeaseState,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub ended_at: Option<UnixMillis>,
    pub parts: Vec<PartRecord>,
    pub busy_ns: u64,
    pub hot_ns: u64,
    pub invocations: u64,
}

impl LeaseRecord {
    fn is_active(&self) -> bool {
        self.state == LeaseState::Active
    }

    /// Cores × leased time, to the end of the lease or to `now`.
    pub fn core_seconds(&self, now: UnixMillis) -> f64 {
        let end = self.ended_at.unwrap_or(now).max(self.created_at);
        let cores: usize = self.parts.iter().map(|p| p.cores.len()).sum();
        cores as f64 * (end - self.created_at) as f64 / 1000.0
    }

    fn status(&self) -> LeaseStatus {
        LeaseStatus {
            lease: self.id,
            client: self.client.clone(),
            state: self.state,
            created_at: self.created_at,
            expires_at: self.expires_at,
            ended_at: self.ended_at,
            parts: self
                .parts
                .iter()
                .map(|p| LeasePartStatus {
                    node: p.node,
                    cores: p.cores.clone(),
                    memory_mib: p.memory_mib,
                    gpus: p.gpus.clone(),
                })
                .collect(),
        }
    }

    fn usage(&self, now: UnixMillis) -> Usage {
        Usage {
            lease: self.id,
            client: self.client.clone(),
            core_seconds: self.core_seconds(now),
            busy_ns: self.busy_ns,
            hot_ns: self.hot_ns,
            invocations: self.invocations,
        }
    }
}

/// Id counters and metric counters, persisted with the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub next_node: u64,
    pub next_lease: u64,
    /// The next token nonce. A fresh database starts it at a random value, so that a
    /// resource manager that lost its database does not hand out nonces managers have seen.
    pub next_nonce: u64,
    pub grants: u64,
    pub refusals: u64,
}

/// What an operation changed, for the store to write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    pub nodes: BTreeSet<u64>,
    pub leases: BTreeSet<u64>,
    pub counters: bool,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.leases.is_empty() && !self.counters
    }
}

/// Totals for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub nodes_up: usize,
    pub nodes_down: usize,
    /// Spare cores of up nodes not leased.
    pub cores_free: usize,
    /// Leased cores (active leases).
    pub cores_leased: usize,
    pub memory_free_mib: u64,
    pub memory_leased_mib: u64,
    pub gpus_free: usize,
    pub gpus_leased: usize,
    pub leases_active: usize,
    pub lease_grants: u64,
    pub lease_refusals: u64,
    /// Per client: core-seconds, busy ns, hot ns, invocations, over all its leases.
    pub usage_by_client: BTreeMap<String, ClientUsage>,
}

/// One client's usage, summed over its leases.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientUsage {
    pub core_seconds: f64,
    pub busy_ns: u64,
    pub hot_ns: u64,
    pub invocations: u64,
}

/// What is leased on one node (active leases).
#[derive(Default)]
struct InUse {
    cores: BTreeSet<usize>,
    memory_mib: u64,
    gpus: BTreeSet<String>,
}

/// Free resources of one node.
struct Free {
    node: u64,
    cores: Vec<usize>,
    memory_mib: u64,
    gpus: Vec<String>,
}

/// The resource manager's state.
#[derive(Debug)]
pub struct State {
    config: StateConfig,
    nodes: BTreeMap<u64, NodeRecord>,
    leases: BTreeMap<u64, LeaseRecord>,
    counters: Counters,
    dirty: Dirty,
}

impl State {
    /// An empty cluster. `nonce_seed` is the first token nonce (random, see
    /// [`Counters::next_nonce`]).
    pub fn new(config: StateConfig, nonce_seed: u64) -> State {
        State {
            config,
            nodes: BTreeMap::new(),
            leases: BTreeMap::new(),
            counters: Counters {
                next_node: 1,
                next_lease: 1,
                next_nonce: nonce_seed,
                grants: 0,
                refusals: 0,
            },
            dirty: Dirty {
                counters: true,
                ..Dirty::default()
            },
        }
    }

    /// The state as it was persisted. Nodes keep their persisted state; up nodes get
    /// [`MISSED_HEARTBEATS`] intervals from `now` to send a heartbeat before they are marked
    /// down (and their leases lost). Leases that expired meanwhile end at the next
    /// [`State::tick`].
    pub fn restore(
        config: StateConfig,
        nodes: Vec<NodeRecord>,
        leases: Vec<LeaseRecord>,
        counters: Counters,
        now: UnixMillis,
    ) -> State {
        let nodes = nodes
            .into_iter()
            .map(|mut n| {
                n.alive_since = now;
                (n.id, n)
            })
            .collect();
        let leases = leases.into_iter().map(|l| (l.id, l)).collect();
        State {
            config,
            nodes,
            leases,
            counters,
            dirty: Dirty::default(),
        }
    }

    pub fn config(&self) -> &StateConfig {
        &self.config
    }

    pub fn node_record(&self, id: u64) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    pub fn lease_record(&self, id: u64) -> Option<&LeaseRecord> {
        self.leases.get(&id)
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// What changed since the last call: the store writes these rows.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Registers a node, or replaces the registration of the node with the same name
    /// (which keeps its id, ends its leases as lost, and keeps the ends its manager has not
    /// been told yet, so the next heartbeat reports them).
    ///
    /// # Errors
    /// [`StateError::BadRequest`] for an empty name or address, or repeated cores or GPUs.
    pub fn register(
        &mut self,
        registration: NodeRegistration,
        now: UnixMillis,
    ) -> Result<NodeRegistered, StateError> {
        validate_registration(&registration)?;
        let existing = self
            .nodes
            .values()
            .find(|n| n.registration.name == registration.name)
            .map(|n| n.id);
        let id = match existing {
            Some(id) => {
                let ending: Vec<u64> = self.active_leases_on(id);
                for lease in ending {
                    self.end_lease(lease, LeaseState::Lost, now, None);
                }
                id
            }
            None => {
                let id = self.counters.next_node;
                self.counters.next_node += 1;
                self.dirty.counters = true;
                id
            }
        };
        let pending_end = self
            .nodes
            .remove(&id)
            .map(|n| n.pending_end)
            .unwrap_or_default();
        self.nodes.insert(
            id,
            NodeRecord {
                id,
                registration,
                state: NodeState::Up,
                last_heartbeat: now,
                pending_end,
                alive_since: now,
            },
        );
        self.dirty.nodes.insert(id);
        Ok(NodeRegistered {
            node: id,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
        })
    }

    /// A heartbeat: the node is alive (a down node comes back up, its leases stay ended),
    /// usage deltas are added to their leases, leases whose executor ended are lost (or
    /// expired, when their expiry has passed: the manager ends executors then). The
    /// reply lists the node's leases that ended and whose end its manager was not told yet.
    ///
    /// # Errors
    /// [`StateError::UnknownNode`]: the manager must register (again).
    pub fn heartbeat(
        &mut self,
        node: u64,
        heartbeat: Heartbeat,
        now: UnixMillis,
    ) -> Result<HeartbeatReply, StateError> {
        if !self.nodes.contains_key(&node) {
            return Err(StateError::UnknownNode(node));
        }
        for usage in &heartbeat.usage {
            let Some(lease) = self.leases.get_mut(&usage.lease) else {
                continue;
            };
            // Only what runs on this node is this node's to report.
            if !lease.parts.iter().any(|p| p.node == node) {
                continue;
            }
            lease.busy_ns = lease.busy_ns.saturating_add(usage.busy_ns);
            lease.hot_ns = lease.hot_ns.saturating_add(usage.hot_ns);
            lease.invocations = lease.invocations.saturating_add(usage.invocations);
            self.dirty.leases.insert(usage.lease);
        }
        for &lease in &heartbeat.ended {
            let Some(record) = self
                .leases
                .get(&lease)
                .filter(|l| l.is_active() && l.parts.iter().any(|p| p.node == node))
            else {
                continue;
            };
            // A manager ends an executor at its token's expiry and may report that before
            // the tick that expires the lease here: past its expiry, the lease expired.
            if record.expires_at <= now {
                let at = record.expires_at;
                self.end_lease(lease, LeaseState::Expired, at, Some(node));
            } else {
                self.end_lease(lease, LeaseState::Lost, now, Some(node));
            }
        }
        let record = self
            .nodes
            .get_mut(&node)
            .ok_or(StateError::UnknownNode(node))?;
        record.state = NodeState::Up;
        record.last_heartbeat = now;
        let end: Vec<u64> = std::mem::take(&mut record.pending_end)
            .into_iter()
            .collect();
        self.dirty.nodes.insert(node);
        Ok(HeartbeatReply { end })
    }

    /// Grants a lease: first-fit over up nodes of the requested fabric (in node id order).
    /// The first node with room for the whole request gets it as one part; if none has,
    /// the request is split: each node in turn gives as many of its free cores as are
    /// still wanted (the first ones of its spare list), and as much memory and as many GPUs
    /// as are still wanted, until the request is met. Nothing is granted unless all of it
    /// is.
    ///
    /// # Errors
    /// [`StateError::BadRequest`] for no cores, a zero or too long duration;
    /// [`StateError::Exhausted`] when the cluster cannot fit it.
    pub fn lease(
        &mut self,
        client: &str,
        request: &LeaseRequest,
        now: UnixMillis,
    ) -> Result<Lease, StateError> {
        if request.cores == 0 {
            return Err(StateError::BadRequest(
                "a lease needs at least one core".into(),
            ));
        }
        self.check_duration(request.duration_ms)?;
        let free = self.free(request.fabric);
        let parts = match place(&free, request) {
            Some(parts) => parts,
            None => {
                self.counters.refusals += 1;
                self.dirty.counters = true;
                return Err(StateError::Exhausted {
                    cores: request.cores,
                    memory_mib: request.memory_mib,
                    gpus: request.gpus,
                    fabric: request
                        .fabric
                        .map(|f| format!(" of fabric {f}"))
                        .unwrap_or_default(),
                    free_cores: free.iter().map(|f| f.cores.len()).sum(),
                    free_memory_mib: free.iter().map(|f| f.memory_mib).sum(),
                    free_gpus: free.iter().map(|f| f.gpus.len()).sum(),
                });
            }
        };
        let id = self.counters.next_lease;
        self.counters.next_lease += 1;
        self.counters.grants += 1;
        self.dirty.counters = true;
        self.leases.insert(
            id,
            LeaseRecord {
                id,
                client: client.to_string(),
                state: LeaseState::Active,
                created_at: now,
                expires_at: now.saturating_add(request.duration_ms),
                ended_at: None,
                parts,
                busy_ns: 0,
                hot_ns: 0,
                invocations: 0,
            },
        );
        self.dirty.leases.insert(id);
        Ok(self.granted(id))
    }

    /// Extends an active lease of `client` to `now + duration`, with fresh tokens.
    ///
    /// # Errors
    /// Unknown lease, another client's, ended, or a bad duration.
    pub fn renew(
        &mut self,
        client: &str,
        lease: u64,
        request: &RenewRequest,
        now: UnixMillis,
    ) -> Result<Lease, StateError> {
        self.check_duration(request.duration_ms)?;
        let record = self.own_active_lease(client, lease, now)?;
        record.expires_at = now.saturating_add(request.duration_ms);
        self.dirty.leases.insert(lease);
        Ok(self.granted(lease))
    }

    /// Ends an active lease of `client`.
    ///
    /// # Errors
    /// Unknown lease, another client's, or already ended.
    pub fn release(
        &mut self,
        client: &str,
        lease: u64,
        now: UnixMillis,
    ) -> Result<LeaseStatus, StateError> {
        self.own_active_lease(client, lease, now)?;
        self.end_lease(lease, LeaseState::Released, now, None);
        Ok(self.leases[&lease].status())
    }

    /// Ends leases that expired by `now` (at their expiry time) and marks down the up nodes
    /// silent for [`MISSED_HEARTBEATS`] intervals, ending their leases as lost.
    pub fn tick(&mut self, now: UnixMillis) {
        let expired: Vec<(u64, UnixMillis)> = self
            .leases
            .values()
            .filter(|l| l.is_active() && l.expires_at <= now)
            .map(|l| (l.id, l.expires_at))
            .collect();
        for (lease, at) in expired {
            self.end_lease(lease, LeaseState::Expired, at, None);
        }
        let silence = MISSED_HEARTBEATS.saturating_mul(self.config.heartbeat_interval_ms);
        let silent: Vec<u64> = self
            .nodes
            .values()
            .filter(|n| {
                n.state == NodeState::Up
                    && now.saturating_sub(n.last_heartbeat.max(n.alive_since)) > silence
            })
            .map(|n| n.id)
            .collect();
        for node in silent {
            if let Some(n) = self.nodes.get_mut(&node) {
                n.state = NodeState::Down;
            }
            self.dirty.nodes.insert(node);
            for lease in self.active_leases_on(node) {
                self.end_lease(lease, LeaseState::Lost, now, None);
            }
        }
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let in_use = self.in_use();
        self.nodes
            .values()
            .map(|n| {
                let used = in_use.get(&n.id);
                let r = &n.registration;
                NodeStatus {
                    node: n.id,
                    name: r.name.clone(),
                    state: n.state,
                    manager_address: r.manager_address.clone(),
                    fabric: r.fabric,
                    spare_cores: r.spare_cores.clone(),
                    leased_cores: r
                        .spare_cores
                        .iter()
                        .copied()
                        .filter(|c| used.is_some_and(|u| u.cores.contains(c)))
                        .collect(),
                    memory_mib: r.memory_mib,
                    leased_memory_mib: used.map_or(0, |u| u.memory_mib),
                    gpus: r.gpus.clone(),
                    leased_gpus: r
                        .gpus
                        .iter()
                        .filter(|g| used.is_some_and(|u| u.gpus.contains(*g)))
                        .cloned()
                        .collect(),
                    last_heartbeat: n.last_heartbeat,
                }
            })
            .collect()
    }

    /// Every lease, active or ended, in id order.
    pub fn leases(&self) -> Vec<LeaseStatus> {
        self.leases.values().map(LeaseRecord::status).collect()
    }

    /// The accounting of every lease, core-seconds to `now` for active ones.
    pub fn usage(&self, now: UnixMillis) -> Vec<Usage> {
        self.leases.values().map(|l| l.usage(now)).collect()
    }

    /// Totals for `/metrics`.
    pub fn metrics(&self, now: UnixMillis) -> Metrics {
        let mut m = Metrics {
            lease_grants: self.counters.grants,
            lease_refusals: self.counters.refusals,
            ..Metrics::default()
        };
        for n in self.nodes.values() {
            match n.state {
                NodeState::Up => m.nodes_up += 1,
                NodeState::Down => m.nodes_down += 1,
            }
        }
        for f in self.free(None) {
            m.cores_free += f.cores.len();
            m.memory_free_mib += f.memory_mib;
            m.gpus_free += f.gpus.len();
        }
        for l in self.leases.values() {
            if l.is_active() {
                m.leases_active += 1;
                for p in &l.parts {
                    m.cores_leased += p.cores.len();
                    m.memory_leased_mib += p.memory_mib;
                    m.gpus_leased += p.gpus.len();
                }
            }
            let c = m.usage_by_client.entry(l.client.clone()).or_default();
            c.core_seconds += l.core_seconds(now);
            c.busy_ns = c.busy_ns.saturating_add(l.busy_ns);
            c.hot_ns = c.hot_ns.saturating_add(l.hot_ns);
            c.invocations = c.invocations.saturating_add(l.invocations);
        }
        m
    }

    fn check_duration(&self, duration_ms: u64) -> Result<(), StateError> {
        if duration_ms == 0 || duration_ms > self.config.max_lease_ms {
            return Err(StateError::BadRequest(format!(
                "a lease lasts 1 to {} ms, not {duration_ms}",
                self.config.max_lease_ms
            )));
        }
        Ok(())
    }

    /// The lease `lease` of `client`, active at `now` (an expired one not yet ticked is
    /// ended here).
    fn own_active_lease(
        &mut self,
        client: &str,
        lease: u64,
        now: UnixMillis,
    ) -> Result<&mut LeaseRecord, StateError> {
        let record = self
            .leases
            .get(&lease)
            .ok_or(StateError::UnknownLease(lease))?;
        if record.client != client {
            return Err(StateError::NotYours { lease });
        }
        if record.is_active() && record.expires_at <= now {
            let at = record.expires_at;
            self.end_lease(lease, LeaseState::Expired, at, None);
        }
        let record = self
            .leases
            .get_mut(&lease)
            .ok_or(StateError::UnknownLease(lease))?;
        if !record.is_active() {
            return Err(StateError::Ended {
                lease,
                state: record.state,
            });
        }
        Ok(record)
    }

    /// Ends an active lease and queues its end for the managers of its nodes, except
    /// `told` (the node that reported it).
    fn end_lease(&mut self, lease: u64, state: LeaseState, at: UnixMillis, told: Option<u64>) {
        let Some(record) = self.leases.get_mut(&lease) else {
            return;
        };
        if !record.is_active() {
            return;
        }
        record.state = state;
        record.ended_at = Some(at.max(record.created_at));
        self.dirty.leases.insert(lease);
        for part in &record.parts {
            if Some(part.node) == told {
                continue;
            }
            if let Some(node) = self.nodes.get_mut(&part.node) {
                node.pending_end.insert(lease);
                self.dirty.nodes.insert(part.node);
            }
        }
    }

    fn active_leases_on(&self, node: u64) -> Vec<u64> {
        self.leases
            .values()
            .filter(|l| l.is_active() && l.parts.iter().any(|p| p.node == node))
            .map(|l| l.id)
            .collect()
    }

    fn in_use(&self) -> BTreeMap<u64, InUse> {
        let mut in_use: BTreeMap<u64, InUse> = BTreeMap::new();
        for l in self.leases.values().filter(|l| l.is_active()) {
            for p in &l.parts {
                let u = in_use.entry(p.node).or_default();
                u.cores.extend(p.cores.iter().copied());
                u.memory_mib += p.memory_mib;
                u.gpus.extend(p.gpus.iter().cloned());
            }
        }
        in_use
    }

    /// Free resources of the up nodes of `fabric`, in node id order.
    fn free(&self, fabric: Option<FabricKind>) -> Vec<Free> {
        let in_use = self.in_use();
        let none = InUse::default();
        self.nodes
            .values()
            .filter(|n| n.state == NodeState::Up)
            .filter(|n| fabric.map_or(true, |f| n.registration.fabric == f))
            .map(|n| {
                let used = in_use.get(&n.id).unwrap_or(&none);
                let r = &n.registration;
                Free {
                    node: n.id,
                    cores: r
                        .spare_cores
                        .iter()
                        .copied()
                        .filter(|c| !used.cores.contains(c))
                        .collect(),
                    memory_mib: r.memory_mib.saturating_sub(used.memory_mib),
                    gpus: r
                        .gpus
                        .iter()
                        .filter(|g| !used.gpus.contains(*g))
                        .cloned()
                        .collect(),
                }
            })
            .collect()
    }

    /// The lease as granted, with a freshly signed token (new nonce) per part.
    fn granted(&mut self, lease: u64) -> Lease {
        let record = self.leases[&lease].clone();
        let parts = record
            .parts
            .iter()
            .map(|p| {
                let nonce = self.counters.next_nonce;
                self.counters.next_nonce = nonce.wrapping_add(1);
                self.dirty.counters = true;
                let claims = Claims {
                    lease,
                    node: p.node,
                    client: record.client.clone(),
                    cores: p.cores.clone(),
                    memory_mib: p.memory_mib,
                    gpus: p.gpus.clone(),
                    expires_at: record.expires_at,
                    nonce,
                };
                // Parts name registered nodes (nodes are never removed).
                let node = self.nodes.get(&p.node).map(|n| &n.registration);
                LeasePart {
                    node: p.node,
                    node_name: node.map(|n| n.name.clone()).unwrap_or_default(),
                    manager_address: node.map(|n| n.manager_address.clone()).unwrap_or_default(),
                    fabric: node.map_or(FabricKind::Tcp, |n| n.fabric),
                    cores: p.cores.clone(),
                    memory_mib: p.memory_mib,
                    gpus: p.gpus.clone(),
                    token: token::sign(&self.config.secret, &claims),
                }
            })
            .collect();
        Lease {
            lease,
            client: record.client,
            expires_at: record.expires_at,
            parts,
        }
    }
}

fn validate_registration(r: &NodeRegistration) -> Result<(), StateError> {
    if r.name.trim().is_empty() {
        return Err(StateError::BadRequest("a node needs a name".into()));
    }
    if r.manager_address.trim().is_empty() {
        return Err(StateError::BadRequest(format!(
            "node {:?} has no manager address",
            r.name
        )));
    }
    let cores: BTreeSet<_> = r.spare_cores.iter().collect();
    if cores.len() != r.spare_cores.len() {
        return Err(StateError::BadRequest(format!(
            "node {:?} lists a spare core twice: {:?}",
            r.name, r.spare_cores
        )));
    }
    let gpus: BTreeSet<_> = r.gpus.iter().collect();
    if gpus.len() != r.gpus.len() {
        return Err(StateError::BadRequest(format!(
            "node {:?} lists a GPU twice: {:?}",
            r.name, r.gpus
        )));
    }
    Ok(())
}

/// First-fit placement (see [`State::lease`]); `None` when it does not fit.
fn place(free: &[Free], request: &LeaseRequest) -> Option<Vec<PartRecord>> {
    let cores = request.cores as usize;
    let gpus = request.gpus as usize;
    let take = |f: &Free, cores: usize, memory_mib: u64, gpus: usize| PartRecord {
        node: f.node,
        cores: f.cores[..cores].to_vec(),
        memory_mib,
        gpus: f.gpus[..gpus].to_vec(),
    };
    if let Some(f) = free.iter().find(|f| {
        f.cores.len() >= cores && f.memory_mib >= request.memory_mib && f.gpus.len() >= gpus
    }) {
        return Some(vec![take(f, cores, request.memory_mib, gpus)]);
    }
    let (mut cores_left, mut memory_left, mut gpus_left) = (cores, request.memory_mib, gpus);
    let mut parts = Vec::new();
    for f in free.iter().filter(|f| !f.cores.is_empty()) {
        if cores_left == 0 {
            break;
        }
        let c = cores_left.min(f.cores.len());
        let m = memory_left.min(f.memory_mib);
        let g = gpus_left.min(f.gpus.len());
        parts.push(take(f, c, m, g));
        cores_left -= c;
        memory_left -= m;
        gpus_left -= g;
    }
    (cores_left == 0 && memory_left == 0 && gpus_left == 0).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::api::LeaseUsage;

    const SECRET: &[u8] = b"cluster-secret";

    fn state() -> State {
        State::new(
            StateConfig {
                secret: SECRET.to_vec(),
                heartbeat_interval_ms: 1_000,
                max_lease_ms: 3_600_000,
            },
            1_000,
        )
    }

    fn node(name: &str, cores: &[usize], memory_mib: u64, gpus: &[&str]) -> NodeRegistration {
        NodeRegistration {
            name: name.into(),
            manager_address: format!("{name}:7900"),
            fabric: FabricKind::Shm,
            spare_cores: cores.to_vec(),
            memory_mib,
            gpus: gpus.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn ask(cores: u32, memory_mib: u64, gpus: u32) -> LeaseRequest {
        LeaseRequest {
            cores,
            memory_mib,
            gpus,
            duration_ms: 10_000,
            fabric: None,
        }
    }

    #[test]
    fn a_lease_within_one_node_gets_specific_spare_cores_and_a_verifying_token() {
        let mut s = state();
        let n = s.register(node("a", &[2, 3, 5], 1024, &["0"]), 0).unwrap();
        assert_eq!(n.heartbeat_interval_ms, 1_000);
        let lease = s.lease("rank-0", &ask(2, 512, 1), 100).unwrap();
        assert_eq!(lease.parts.len(), 1);
        let part = &lease.parts[0];
        assert_eq!(part.cores, vec![2, 3]);
        assert_eq!(part.memory_mib, 512);
        assert_eq!(part.gpus, vec!["0".to_string()]);
        assert_eq!(lease.expires_at, 10_100);
        let claims = token::verify(SECRET, &part.token, n.node, 200).unwrap();
        assert_eq!(claims.cores, vec![2, 3]);
        assert_eq!(claims.client, "rank-0");
        assert!(token::verify(SECRET, &part.token, n.node + 1, 200).is_err());
        // The next lease gets the remaining core, not the same ones.
        let next = s.lease("rank-1", &ask(1, 0, 0), 100).unwrap();
        assert_eq!(next.parts[0].cores, vec![5]);
        let nonce = |t: &str| token::verify(SECRET, t, n.node, 0).unwrap().nonce;
        assert_ne!(nonce(&part.token), nonce(&next.parts[0].token));
        assert_eq!(s.nodes()[0].leased_cores, vec![2, 3, 5]);
    }

    #[test]
    fn a_large_lease_is_split_across_nodes_on_disjoint_cores() {
        let mut s = state();
        s.register(node("a", &[2, 3, 5], 1000, &[]), 0).unwrap();
        s.register(node("b", &[1, 7], 1000, &[]), 0).unwrap();
        s.register(node("c", &[4, 6], 1000, &[]), 0).unwrap();
        let lease = s.lease("rank-0", &ask(4, 1500, 0), 0).unwrap();
        let got: Vec<(u64, Vec<usize>, u64)> = lease
            .parts
            .iter()
            .map(|p| (p.node, p.cores.clone(), p.memory_mib))
            .collect();
        assert_eq!(got, vec![(1, vec![2, 3, 5], 1000), (2, vec![1], 500)]);
        for p in &lease.parts {
            assert_eq!(
                token::verify(SECRET, &p.token, p.node, 0).unwrap().cores,
                p.cores
            );
        }
        // What is left: core 7 on b, both cores of c.
        let rest = s.lease("rank-1", &ask(3, 0, 0), 0).unwrap();
        let cores: Vec<(u64, Vec<usize>)> = rest
            .parts
            .iter()
            .map(|p| (p.node, p.cores.clone()))
            .collect();
        assert_eq!(cores, vec![(2, vec![7]), (3, vec![4, 6])]);
    }

    #[test]
    fn a_request_one_node_fits_goes_to_the_first_such_node() {
        let mut s = state();
        s.register(node("a", &[0], 100, &[]), 0).unwrap();
        s.register(node("b", &[8, 9], 100, &[]), 0).unwrap();
        let lease = s.lease("r", &ask(2, 0, 0), 0).unwrap();
        assert_eq!(lease.parts.len(), 1);
        assert_eq!(lease.parts[0].node_name, "b");
    }

    #[test]
    fn exhaustion_grants_nothing() {
        let mut s = state();
        s.register(node("a", &[2, 3], 100, &["0"]), 0).unwrap();
        s.register(node("b", &[5], 100, &[]), 0).unwrap();
        for req in [ask(4, 0, 0), ask(1, 300, 0), ask(1, 0, 2)] {
            let err = s.lease("r", &req, 0).unwrap_err();
            assert_eq!(err.kind(), "exhausted", "{err}");
        }
        assert!(s.leases().is_empty());
        assert_eq!(s.metrics(0).lease_refusals, 3);
        // All of it still fits.
        let lease = s.lease("r", &ask(3, 200, 1), 0).unwrap();
        assert_eq!(lease.parts.len(), 2);
        assert_eq!(
            s.lease("r", &ask(1, 0, 0), 0).unwrap_err().kind(),
            "exhausted"
        );
    }

    #[test]
    fn fabric_and_down_nodes_are_respected() {
        let mut s = state();
        let mut tcp = node("t", &[1], 100, &[]);
        tcp.fabric = FabricKind::Tcp;
        s.register(tcp, 0).unwrap();
        s.register(node("s", &[1], 100, &[]), 0).unwrap();
        let mut req = ask(2, 0, 0);
        req.fabric = Some(FabricKind::Tcp);
        assert_eq!(s.lease("r", &req, 0).unwrap_err().kind(), "exhausted");
        req.cores = 1;
        assert_eq!(s.lease("r", &req, 0).unwrap().parts[0].node_name, "t");
        // "s" goes silent.
        s.heartbeat(1, Heartbeat::default(), 3_000).unwrap();
        s.tick(3_500);
        assert_eq!(s.nodes()[1].state, NodeState::Down);
        assert_eq!(
            s.lease("r", &ask(1, 0, 0), 3_500).unwrap_err().kind(),
            "exhausted"
        );
    }

    #[test]
    fn leases_expire_at_their_time_and_free_their_cores() {
        let mut s = state();
        s.register(node("a", &[2, 3, 5], 100, &[]), 0).unwrap();
        let lease = s.lease("r", &ask(3, 0, 0), 0).unwrap();
        s.heartbeat(1, Heartbeat::default(), 9_000).unwrap();
        s.tick(9_999);
        assert_eq!(s.leases()[0].state, LeaseState::Active);
        s.tick(10_050);
        let status = &s.leases()[0];
        assert_eq!(status.state, LeaseState::Expired);
        assert_eq!(status.ended_at, Some(10_000));
        assert_eq!(s.usage(20_000)[0].core_seconds, 30.0);
        let reply = s.heartbeat(1, Heartbeat::default(), 10_100).unwrap();
        assert_eq!(reply.end, vec![lease.lease]);
        let reply = s.heartbeat(1, Heartbeat::default(), 10_200).unwrap();
        assert!(reply.end.is_empty(), "told once");
        assert_eq!(
            s.lease("r", &ask(3, 0, 0), 10_200).unwrap().parts[0].cores,
            vec![2, 3, 5]
        );
        // Renewing or releasing an expired lease: gone.
        let renew = RenewRequest { duration_ms: 100 };
        assert_eq!(
            s.renew("r", lease.lease, &renew, 10_300)
                .unwrap_err()
                .kind(),
            "gone"
        );
        assert_eq!(
            s.release("r", lease.lease, 10_300).unwrap_err().kind(),
            "gone"
        );
    }

    #[test]
    fn renewal_extends_and_issues_fresh_tokens() {
        let mut s = state();
        s.register(node("a", &[2, 3, 5], 100, &[]), 0).unwrap();
        let lease = s.lease("r", &ask(1, 0, 0), 0).unwrap();
        let renew = RenewRequest {
            duration_ms: 20_000,
        };
        assert_eq!(
            s.renew("other", lease.lease, &renew, 5_000)
                .unwrap_err()
                .kind(),
            "forbidden"
        );
        assert_eq!(
            s.renew("r", 99, &renew, 5_000).unwrap_err().kind(),
            "not_found"
        );
        let renewed = s.renew("r", lease.lease, &renew, 5_000).unwrap();
        assert_eq!(renewed.expires_at, 25_000);
        assert_ne!(renewed.parts[0].token, lease.parts[0].token);
        let claims = token::verify(SECRET, &renewed.parts[0].token, 1, 24_000).unwrap();
        assert_eq!(claims.expires_at, 25_000);
        s.heartbeat(1, Heartbeat::default(), 12_000).unwrap();
        s.tick(12_000);
        assert_eq!(s.leases()[0].state, LeaseState::Active);
        let too_long = RenewRequest {
            duration_ms: 3_600_001,
        };
        assert_eq!(
            s.renew("r", lease.lease, &too_long, 12_000)
                .unwrap_err()
                .kind(),
            "bad_request"
        );
    }

    #[test]
    fn only_its_client_releases_a_lease() {
        let mut s = state();
        s.register(node("a", &[2, 3, 5], 100, &[]), 0).unwrap();
        s.register(node("b", &[4], 100, &[]), 0).unwrap();
        let lease = s.lease("r", &ask(4, 0, 0), 0).unwrap();
        assert_eq!(
            s.release("x", lease.lease, 10).unwrap_err().kind(),
            "forbidden"
        );
        let status = s.release("r", lease.lease, 2_000).unwrap();
        assert_eq!(status.state, LeaseState::Released);
        assert_eq!(status.ended_at, Some(2_000));
        assert_eq!(
            s.release("r", lease.lease, 2_001).unwrap_err().kind(),
            "gone"
        );
        assert_eq!(s.usage(9_000)[0].core_seconds, 8.0);
        // Both managers are told.
        assert_eq!(
            s.heartbeat(1, Heartbeat::default(), 2_100).unwrap().end,
            vec![1]
        );
        assert_eq!(
            s.heartbeat(2, Heartbeat::default(), 2_100).unwrap().end,
            vec![1]
        );
    }

    #[test]
    fn a_silent_node_goes_down_its_leases_are_lost_and_its_manager_is_told_after_reregistering() {
        let mut s = state();
        s.register(node("a", &[2, 3, 5], 100, &[]), 0).unwrap();
        s.register(node("b", &[4], 100, &[]), 0).unwrap();
        let spans = s.lease("r", &ask(4, 0, 0), 0).unwrap();
        s.release("r", spans.lease, 0).unwrap();
        s.heartbeat(1, Heartbeat::default(), 10).unwrap();
        s.heartbeat(2, Heartbeat::default(), 10).unwrap();
        let on_a = s.lease("r", &ask(2, 0, 0), 10).unwrap();
        let both = s.lease("r", &ask(2, 0, 0), 10).unwrap();
        assert_eq!(both.parts.len(), 2);
        // b keeps beating, a falls silent.
        s.heartbeat(2, Heartbeat::default(), 3_000).unwrap();
        s.tick(3_000);
        assert_eq!(
            s.nodes()[0].state,
            NodeState::Up,
            "exactly 3 intervals: still up"
        );
        s.tick(3_011);
        assert_eq!(s.nodes()[0].state, NodeState::Down);
        let states: Vec<LeaseState> = s.leases().iter().map(|l| l.state).collect();
        assert_eq!(
            states,
            vec![LeaseState::Released, LeaseState::Lost, LeaseState::Lost]
        );
        assert_eq!(
            s.heartbeat(2, Heartbeat::default(), 3_100).unwrap().end,
            vec![both.lease]
        );
        assert_eq!(s.metrics(3_100).cores_free, 1);
        // a's manager comes back: same id, and it learns both ends.
        let again = s.register(node("a", &[2, 3, 5], 100, &[]), 4_000).unwrap();
        assert_eq!(again.node, 1);
        let reply = s.heartbeat(1, Heartbeat::default(), 4_100).unwrap();
        assert_eq!(reply.end, vec![on_a.lease, both.lease]);
        assert_eq!(s.nodes()[0].state, NodeState::Up);
    }

    #[test]
    fn reregistering_ends_the_earlier_registrations_leases() {
        let mut s = state();
        s.register(node("a", &[2, 3, 5], 100, &[]), 0).unwrap();
        let lease = s.lease("r", &ask(1, 0, 0), 0).unwrap();
        s.register(node("a", &[2, 3], 100, &[]), 500).unwrap();
        assert_eq!(s.leases()[0].state, LeaseState::Lost);
        assert_eq!(s.nodes().len(), 1);
        assert_eq!(s.nodes()[0].spare_cores, vec![2, 3]);
        assert_eq!(
            s.heartbeat(1, Heartbeat::default(), 600).unwrap().end,
            vec![lease.lease]
        );
    }

    #[test]
    fn an_executor_ended_at_the_expiry_reported_before_the_tick_leaves_the_lease_expired() {
        let mut s = state();
        s.register(node("a", &[2], 100, &[]), 0).unwrap();
        let lease = s.lease("r", &ask(1, 0, 0), 1_000).unwrap();
        let at = lease.expires_at;
        let ended = Heartbeat {
            usage: vec![],
            ended: vec![lease.lease],
        };
        s.heartbeat(1, ended, at + 5).unwrap();
        let status = &s.leases()[0];
        assert_eq!(
            (status.state, status.ended_at),
            (LeaseState::Expired, Some(at))
        );
        // The manager that reported it is not told again.
        assert!(s
            .heartbeat(1, Heartbeat::default(), at + 10)
            .unwrap()
            .end
            .is_empty());
    }

    #[test]
    fn heartbeats_add_usage_and_report_dead_executors() {
        let mut s = state();
        s.register(node("a", &[2, 3], 100, &[]), 0).unwrap();
        s.register(node("b", &[4], 100, &[]), 0).unwrap();
        let lease = s.lease("r", &ask(3, 0, 0), 0).unwrap();
        let beat = |busy, ended: Vec<u64>| Heartbeat {
            usage: vec![LeaseUsage {
                lease: lease.lease,
                busy_ns: busy,
                hot_ns: 2 * busy,
                invocations: 3,
            }],
            ended,
        };
        s.heartbeat(1, beat(100, vec![]), 1_000).unwrap();
        s.heartbeat(2, beat(10, vec![]), 1_000).unwrap();
        // A node the lease does not span cannot bill it.
        s.register(node("c", &[9], 100, &[]), 0).unwrap();
        s.heartbeat(3, beat(1_000_000, vec![]), 1_000).unwrap();
        let u = &s.usage(2_000)[0];
        assert_eq!((u.busy_ns, u.hot_ns, u.invocations), (110, 220, 6));
        assert_eq!(u.core_seconds, 6.0);
        // b's executor died: the lease is lost; a is told, b is not told again.
        assert!(s
            .heartbeat(2, beat(5, vec![lease.lease]), 2_000)
            .unwrap()
            .end
            .is_empty());
        assert_eq!(s.leases()[0].state, LeaseState::Lost);
        assert_eq!(
            s.heartbeat(1, Heartbeat::default(), 2_100).unwrap().end,
            vec![lease.lease]
        );
        assert!(s
            .heartbeat(2, Heartbeat::default(), 2_100)
            .unwrap()
            .end
            .is_empty());
        let m = s.metrics(5_000);
        assert_eq!(m.usage_by_client["r"].busy_ns, 115);
        assert_eq!(m.usage_by_client["r"].core_seconds, 6.0);
        assert_eq!(
            s.heartbeat(42, Heartbeat::default(), 0).unwrap_err().kind(),
            "not_found"
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut s = state();
        assert_eq!(
            s.register(node("", &[1], 0, &[]), 0).unwrap_err().kind(),
            "bad_request"
        );
        assert_eq!(
            s.register(node("a", &[1, 1], 0, &[]), 0)
                .unwrap_err()
                .kind(),
            "bad_request"
        );
        s.register(node("a", &[1], 0, &[]), 0).unwrap();
        assert_eq!(
            s.lease("r", &ask(0, 0, 0), 0).unwrap_err().kind(),
            "bad_request"
        );
        let mut zero = ask(1, 0, 0);
        zero.duration_ms = 0;
        assert_eq!(s.lease("r", &zero, 0).unwrap_err().kind(), "bad_request");
    }

    #[test]
    fn dirty_names_what_changed() {
        let mut s = state();
        assert!(s.take_dirty().counters);
        s.register(node("a", &[1], 0, &[]), 0).unwrap();
        let d = s.take_dirty();
        assert_eq!(d.nodes, BTreeSet::from([1]));
        s.lease("r", &ask(1, 0, 0), 0).unwrap();
        let d = s.take_dirty();
        assert_eq!(d.leases, BTreeSet::from([1]));
        assert!(d.counters);
        s.tick(1);
        assert!(s.take_dirty().is_empty());
    }
}
