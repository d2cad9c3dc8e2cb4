//! The resource manager over HTTP: nodes, leases, placement, auth, expiry, renewal, node
//! liveness, accounting, persistence across a restart, metrics. Clients and managers are
//! played with `cluster::http`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rafi::cluster::api::{
    Heartbeat, HeartbeatReply, Lease, LeaseRequest, LeaseState, LeaseStatus, LeaseUsage,
    NodeRegistered, NodeRegistration, NodeState, NodeStatus, RenewRequest, Usage,
};
use rafi::cluster::http::{call, request, CallError};
use rafi::cluster::resource::{ResourceManager, ResourceManagerConfig};
use rafi::cluster::token;
use rafi::fabric::FabricKind;

const SECRET: &str = "cluster-secret";
const RANK0: &str = "rank-0:pw0";
const RANK1: &str = "rank-1:pw1";

fn config(database: &Path, heartbeat: Duration) -> ResourceManagerConfig {
    ResourceManagerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: database.to_path_buf(),
        secret: SECRET.into(),
        clients: BTreeMap::from([
            ("rank-0".to_string(), "pw0".to_string()),
            ("rank-1".to_string(), "pw1".to_string()),
        ]),
        heartbeat_interval: heartbeat,
        tick_interval: Duration::from_millis(20),
        ..ResourceManagerConfig::default()
    }
}

fn start(heartbeat: Duration) -> (ResourceManager, String) {
    let rm = ResourceManager::start(config(Path::new(":memory:"), heartbeat)).unwrap();
    let addr = rm.address().to_string();
    (rm, addr)
}

fn node(name: &str, cores: &[usize]) -> NodeRegistration {
    NodeRegistration {
        name: name.into(),
        manager_address: format!("127.0.0.1:{}", 7900 + cores.len()),
        fabric: FabricKind::Shm,
        spare_cores: cores.to_vec(),
        memory_mib: 1024,
        gpus: vec![],
    }
}

fn register(addr: &str, reg: &NodeRegistration) -> u64 {
    let r: NodeRegistered = call(addr, "POST", "/v1/nodes", SECRET, Some(reg)).unwrap();
    r.node
}

fn heartbeat(addr: &str, node: u64, beat: &Heartbeat) -> Result<HeartbeatReply, CallError> {
    call(
        addr,
        "POST",
        &format!("/v1/nodes/{node}/heartbeat"),
        SECRET,
        Some(beat),
    )
}

fn ask(cores: u32, duration_ms: u64) -> LeaseRequest {
    LeaseRequest {
        cores,
        memory_mib: 0,
        gpus: 0,
        duration_ms,
        fabric: None,
    }
}

fn lease(addr: &str, who: &str, req: &LeaseRequest) -> Result<Lease, CallError> {
    call(addr, "POST", "/v1/leases", who, Some(req))
}

fn get<T: serde::de::DeserializeOwned>(addr: &str, path: &str, who: &str) -> T {
    call(addr, "GET", path, who, None::<&()>).unwrap()
}

fn status(e: CallError) -> (u16, String) {
    match e {
        CallError::Refused { status, error } => (status, error.kind),
        other => panic!("not a refusal: {other}"),
    }
}

fn leases(addr: &str) -> Vec<LeaseStatus> {
    get(addr, "/v1/leases", SECRET)
}

/// Polls `f` until it holds, for up to 5 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn leases_get_specific_cores_within_and_across_nodes_and_exhaustion_grants_nothing() {
    let (rm, addr) = start(Duration::from_secs(5));
    let a = register(&addr, &node("a", &[2, 3, 5]));
    let b = register(&addr, &node("b", &[1, 7]));
    assert_ne!(a, b);

    let one = lease(&addr, RANK0, &ask(2, 60_000)).unwrap();
    assert_eq!(one.client, "rank-0");
    assert_eq!(one.parts.len(), 1);
    assert_eq!(
        (one.parts[0].node, one.parts[0].cores.clone()),
        (a, vec![2, 3])
    );
    assert_eq!(one.parts[0].node_name, "a");
    let claims = token::verify(
        SECRET.as_bytes(),
        &one.parts[0].token,
        a,
        token::now_millis(),
    )
    .unwrap();
    assert_eq!((claims.lease, claims.cores), (one.lease, vec![2, 3]));
    assert!(matches!(
        token::verify(
            SECRET.as_bytes(),
            &one.parts[0].token,
            b,
            token::now_millis()
        ),
        Err(token::TokenError::WrongNode { .. })
    ));
    assert!(token::verify(b"other", &one.parts[0].token, a, token::now_millis()).is_err());

    // Three cores: no node has them free, so the lease spans a and b.
    let split = lease(&addr, RANK1, &ask(3, 60_000)).unwrap();
    let parts: Vec<(u64, Vec<usize>)> = split
        .parts
        .iter()
        .map(|p| (p.node, p.cores.clone()))
        .collect();
    assert_eq!(parts, vec![(a, vec![5]), (b, vec![1, 7])]);
    for p in &split.parts {
        let c = token::verify(SECRET.as_bytes(), &p.token, p.node, token::now_millis()).unwrap();
        assert_eq!(c.cores, p.cores);
        assert_eq!(c.client, "rank-1");
    }

    // Nothing left: refused, nothing granted.
    let (code, kind) = status(lease(&addr, RANK0, &ask(1, 60_000)).unwrap_err());
    assert_eq!((code, kind.as_str()), (409, "exhausted"));
    assert_eq!(leases(&addr).len(), 2);
    let nodes: Vec<NodeStatus> = get(&addr, "/v1/nodes", RANK0);
    assert_eq!(nodes[0].leased_cores, vec![2, 3, 5]);
    assert_eq!(nodes[1].leased_cores, vec![1, 7]);
    assert!(nodes.iter().all(|n| n.state == NodeState::Up));

    // Releasing frees the cores for the next lease.
    let _: LeaseStatus = call(
        &addr,
        "DELETE",
        &format!("/v1/leases/{}", one.lease),
        RANK0,
        None::<&()>,
    )
    .unwrap();
    let again = lease(&addr, RANK0, &ask(2, 60_000)).unwrap();
    assert_eq!(again.parts[0].cores, vec![2, 3]);
    rm.shutdown();
}

#[test]
fn credentials_and_ownership_are_checked() {
    let (rm, addr) = start(Duration::from_secs(5));
    register(&addr, &node("a", &[2, 3, 5]));
    let mine = lease(&addr, RANK0, &ask(1, 60_000)).unwrap();
    let refusal = |method: &str, path: &str, who: &str| {
        let r: Result<serde_json::Value, _> = call(&addr, method, path, who, Some(&ask(1, 1)));
        status(r.unwrap_err())
    };
    // No, wrong, malformed credentials: 401.
    for who in ["", "wrong", "rank-0:pw1", "rank-9:pw0", "rank-0:", ":"] {
        assert_eq!(
            refusal("GET", "/v1/nodes", who),
            (401, "unauthorized".into())
        );
    }
    let (code, body) = request(&addr, "GET", "/v1/leases", "", None::<&()>).unwrap();
    assert_eq!(code, 401);
    assert!(String::from_utf8(body).unwrap().contains("unauthorized"));
    // Clients do not register nodes; managers do not take leases.
    assert_eq!(refusal("POST", "/v1/nodes", RANK0).0, 403);
    assert_eq!(refusal("POST", "/v1/leases", SECRET).0, 403);
    // Another client's lease: 403, and it stays active.
    let path = format!("/v1/leases/{}", mine.lease);
    assert_eq!(refusal("DELETE", &path, RANK1), (403, "forbidden".into()));
    assert_eq!(
        refusal("POST", &format!("{path}/renew"), RANK1),
        (403, "forbidden".into())
    );
    assert_eq!(leases(&addr)[0].state, LeaseState::Active);
    // Unknown things, bad bodies, wrong methods.
    assert_eq!(refusal("DELETE", "/v1/leases/999", RANK0).0, 404);
    assert_eq!(refusal("GET", "/v1/nothing", RANK0).0, 404);
    assert_eq!(refusal("PUT", "/v1/leases", RANK0).0, 405);
    assert_eq!(refusal("DELETE", "/v1/leases/x", RANK0).0, 400);
    let bad: Result<serde_json::Value, _> =
        call(&addr, "POST", "/v1/nodes", SECRET, Some(&"not a node"));
    assert_eq!(status(bad.unwrap_err()), (400, "bad_request".into()));
    let beat = heartbeat(&addr, 999, &Heartbeat::default()).unwrap_err();
    assert_eq!(status(beat).0, 404);
    // The owner releases it; twice is gone.
    let released: LeaseStatus = call(&addr, "DELETE", &path, RANK0, None::<&()>).unwrap();
    assert_eq!(released.state, LeaseState::Released);
    assert_eq!(refusal("DELETE", &path, RANK0), (410, "gone".into()));
    rm.shutdown();
}

#[test]
fn a_request_over_the_size_limit_is_refused() {
    let (rm, addr) = start(Duration::from_secs(5));
    let huge = node("a", &(0..200_000).collect::<Vec<_>>());
    let r: Result<NodeRegistered, _> = call(&addr, "POST", "/v1/nodes", SECRET, Some(&huge));
    // The server may answer 413 or close before the client finished writing.
    match r {
        Err(CallError::Refused { status, .. }) => assert_eq!(status, 413),
        Err(CallError::Io(_)) => {}
        other => panic!("{other:?}"),
    }
    rm.shutdown();
}

#[test]
fn leases_expire_and_renewal_keeps_one_alive() {
    let (rm, addr) = start(Duration::from_secs(5));
    let a = register(&addr, &node("a", &[2, 3, 5]));
    let short = lease(&addr, RANK0, &ask(1, 300)).unwrap();
    let renewed = lease(&addr, RANK0, &ask(1, 300)).unwrap();
    let longer: Lease = call(
        &addr,
        "POST",
        &format!("/v1/leases/{}/renew", renewed.lease),
        RANK0,
        Some(&RenewRequest {
            duration_ms: 60_000,
        }),
    )
    .unwrap();
    assert!(longer.expires_at >= renewed.expires_at + 59_000);
    assert_ne!(longer.parts[0].token, renewed.parts[0].token);
    eventually("the short lease to expire", || {
        leases(&addr)[0].state == LeaseState::Expired
    });
    let all = leases(&addr);
    assert_eq!(all[0].ended_at, Some(short.expires_at));
    assert_eq!(all[1].state, LeaseState::Active);
    // Its manager learns of it once.
    let reply = heartbeat(&addr, a, &Heartbeat::default()).unwrap();
    assert_eq!(reply.end, vec![short.lease]);
    assert!(heartbeat(&addr, a, &Heartbeat::default())
        .unwrap()
        .end
        .is_empty());
    // An expired lease cannot be renewed.
    let late: Result<Lease, _> = call(
        &addr,
        "POST",
        &format!("/v1/leases/{}/renew", short.lease),
        RANK0,
        Some(&RenewRequest { duration_ms: 1_000 }),
    );
    assert_eq!(status(late.unwrap_err()), (410, "gone".into()));
    rm.shutdown();
}

#[test]
fn a_silent_node_goes_down_and_its_manager_learns_the_lost_leases_after_reregistering() {
    let (rm, addr) = start(Duration::from_millis(100));
    let a = register(&addr, &node("a", &[2, 3, 5]));
    let b = register(&addr, &node("b", &[4, 6]));
    let spans = lease(&addr, RANK0, &ask(5, 60_000)).unwrap();
    assert_eq!(spans.parts.len(), 2);
    // b keeps beating, a falls silent.
    let mut told_b = Vec::new();
    eventually("node a to go down", || {
        told_b.extend(heartbeat(&addr, b, &Heartbeat::default()).unwrap().end);
        let nodes: Vec<NodeStatus> = get(&addr, "/v1/nodes", SECRET);
        nodes[0].state == NodeState::Down
    });
    let nodes: Vec<NodeStatus> = get(&addr, "/v1/nodes", SECRET);
    assert_eq!(nodes[1].state, NodeState::Up);
    assert_eq!(leases(&addr)[0].state, LeaseState::Lost);
    told_b.extend(heartbeat(&addr, b, &Heartbeat::default()).unwrap().end);
    assert_eq!(told_b, vec![spans.lease]);
    // a's manager registers again (same node id) and hears of the lost lease.
    assert_eq!(register(&addr, &node("a", &[2, 3, 5])), a);
    let reply = heartbeat(&addr, a, &Heartbeat::default()).unwrap();
    assert_eq!(reply.end, vec![spans.lease]);
    let nodes: Vec<NodeStatus> = get(&addr, "/v1/nodes", SECRET);
    assert_eq!(nodes[0].state, NodeState::Up);
    assert!(nodes[0].leased_cores.is_empty());
    rm.shutdown();
}

#[test]
fn heartbeats_account_usage_per_lease() {
    let (rm, addr) = start(Duration::from_secs(5));
    let a = register(&addr, &node("a", &[2, 3]));
    let b = register(&addr, &node("b", &[5]));
    let l = lease(&addr, RANK1, &ask(3, 60_000)).unwrap();
    let beat = |busy| Heartbeat {
        usage: vec![LeaseUsage {
            lease: l.lease,
            busy_ns: busy,
            hot_ns: busy * 10,
            invocations: 2,
        }],
        ended: vec![],
    };
    heartbeat(&addr, a, &beat(1_000)).unwrap();
    heartbeat(&addr, a, &beat(500)).unwrap();
    heartbeat(&addr, b, &beat(250)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let usage: Vec<Usage> = get(&addr, "/v1/usage", RANK0);
    assert_eq!(usage.len(), 1);
    let u = &usage[0];
    assert_eq!(u.client, "rank-1");
    assert_eq!((u.busy_ns, u.hot_ns, u.invocations), (1_750, 17_500, 6));
    assert!(
        u.core_seconds >= 0.3 && u.core_seconds < 30.0,
        "{}",
        u.core_seconds
    );
    rm.shutdown();
}

#[test]
fn metrics_are_prometheus_text() {
    let (rm, addr) = start(Duration::from_secs(5));
    register(&addr, &node("a", &[2, 3, 5]));
    lease(&addr, RANK0, &ask(2, 60_000)).unwrap();
    let _ = lease(&addr, RANK0, &ask(9, 60_000)).unwrap_err();
    let (code, body) = request(&addr, "GET", "/metrics", RANK1, None::<&()>).unwrap();
    assert_eq!(code, 200);
    let text = String::from_utf8(body).unwrap();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = value.parse().expect(line);
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "{line}");
        }
        samples.insert(series.to_string(), value);
    }
    assert_eq!(samples["rafi_nodes{state=\"up\"}"], 1.0);
    assert_eq!(samples["rafi_cores{state=\"free\"}"], 1.0);
    assert_eq!(samples["rafi_cores{state=\"leased\"}"], 2.0);
    assert_eq!(samples["rafi_leases_active"], 1.0);
    assert_eq!(samples["rafi_lease_grants_total"], 1.0);
    assert_eq!(samples["rafi_lease_refusals_total"], 1.0);
    assert!(samples.contains_key("rafi_usage_core_seconds_total{client=\"rank-0\"}"));
    rm.shutdown();
}

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rafi-rm-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("resource.db")
}

#[test]
fn a_restart_on_the_same_database_keeps_leases_and_usage() {
    let db = temp_db("restart");
    let rm = ResourceManager::start(config(&db, Duration::from_secs(5))).unwrap();
    let addr = rm.address().to_string();
    let a = register(&addr, &node("a", &[2, 3, 5]));
    let kept = lease(&addr, RANK0, &ask(2, 60_000)).unwrap();
    let released = lease(&addr, RANK1, &ask(1, 60_000)).unwrap();
    let usage = Heartbeat {
        usage: vec![LeaseUsage {
            lease: kept.lease,
            busy_ns: 123,
            hot_ns: 456,
            invocations: 7,
        }],
        ended: vec![],
    };
    heartbeat(&addr, a, &usage).unwrap();
    // Released after the last heartbeat: its manager is told after the restart.
    let _: LeaseStatus = call(
        &addr,
        "DELETE",
        &format!("/v1/leases/{}", released.lease),
        RANK1,
        None::<&()>,
    )
    .unwrap();
    let before = leases(&addr);
    rm.shutdown();

    let rm = ResourceManager::start(config(&db, Duration::from_secs(5))).unwrap();
    let addr = rm.address().to_string();
    assert_eq!(leases(&addr), before);
    let usage: Vec<Usage> = get(&addr, "/v1/usage", RANK0);
    let u = usage.iter().find(|u| u.lease == kept.lease).unwrap();
    assert_eq!((u.busy_ns, u.hot_ns, u.invocations), (123, 456, 7));
    assert_eq!(usage.len(), 2);
    // The node is still known (same id), its leased cores too: the next lease gets core 5.
    let nodes: Vec<NodeStatus> = get(&addr, "/v1/nodes", SECRET);
    assert_eq!(
        (nodes[0].node, nodes[0].leased_cores.clone()),
        (a, vec![2, 3])
    );
    let next = lease(&addr, RANK1, &ask(1, 60_000)).unwrap();
    assert_eq!(next.parts[0].cores, vec![5]);
    assert!(next.lease > released.lease, "ids are not reused");
    let nonce = |t: &str| token::verify(SECRET.as_bytes(), t, a, 0).unwrap().nonce;
    assert!(nonce(&next.parts[0].token) > nonce(&kept.parts[0].token));
    // The manager learns of the lease released before the restart.
    assert_eq!(
        heartbeat(&addr, a, &Heartbeat::default()).unwrap().end,
        vec![released.lease]
    );
    rm.shutdown();
    let _ = std::fs::remove_dir_all(db.parent().unwrap());
}

#[test]
fn a_bad_configuration_is_refused() {
    let mut c = config(Path::new(":memory:"), Duration::from_secs(1));
    c.secret.clear();
    assert!(ResourceManager::start(c).is_err());
    let mut c = config(Path::new(":memory:"), Duration::from_secs(1));
    c.clients.insert("a:b".into(), "x".into());
    assert!(ResourceManager::start(c).is_err());
}
