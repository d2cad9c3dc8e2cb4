//! The executor manager against a fake resource manager (a TCP listener answering the few
//! HTTP calls a manager makes with canned JSON): registration and heartbeats, tokens that
//! give executors a real client invokes over shm, refused tokens, disjoint cores, and every
//! way an executor ends (killed, client gone, lease ended by the resource manager, lease
//! expired).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rafi::client::{Allocation, AllocationOptions};
use rafi::cluster::api::{Heartbeat, LeasePart, LeaseUsage, ManagerMessage, NodeRegistration};
use rafi::cluster::lease::{Leased, RenewError};
use rafi::cluster::manager::{ExecutorManager, ManagerConfig};
use rafi::cluster::token::{self, Claims};
use rafi::fabric::FabricKind;

const SECRET: &str = "cluster-secret";
const NODE: u64 = 7;

/// One request the fake resource manager received.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    authorization: String,
    body: String,
}

/// A resource manager that answers registrations with node 7 (then 8, 9…), heartbeats with
/// the leases queued in `end`, and 404 to a heartbeat while `forget` is set.
struct FakeResourceManager {
    address: String,
    requests: Arc<Mutex<Vec<Request>>>,
    end: Arc<Mutex<Vec<u64>>>,
    forget: Arc<AtomicBool>,
}

impl FakeResourceManager {
    fn start() -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn on(listener: TcpListener) -> Self {
        let address = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let end = Arc::new(Mutex::new(Vec::new()));
        let forget = Arc::new(AtomicBool::new(false));
        let (r, e, f) = (requests.clone(), end.clone(), forget.clone());
        std::thread::spawn(move || {
            let next_node = AtomicU64::new(NODE);
            for stream in listener.incoming().flatten() {
                let _ = answer(stream, &r, &e, &f, &next_node);
            }
        });
        Self {
            address,
            requests,
            end,
            forget,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn heartbeats(&self) -> Vec<Heartbeat> {
        self.requests()
            .iter()
            .filter(|r| r.path.ends_with("/heartbeat"))
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect()
    }

    fn registrations(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == "/v1/nodes")
            .count()
    }
}

fn answer(
    stream: TcpStream,
    requests: &Mutex<Vec<Request>>,
    end: &Mutex<Vec<u64>>,
    forget: &AtomicBool,
    next_node: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut length = 0;
    let mut authorization = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "authorization" => authorization = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    requests.lock().unwrap().push(Request {
        method: method.clone(),
        path: path.clone(),
        authorization,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let (status, reply) = if method == "POST" && path == "/v1/nodes" {
        forget.store(false, Ordering::SeqCst);
        let node = next_node.fetch_add(1, Ordering::SeqCst);
        (
            "200 OK",
            format!(r#"{{"node":{node},"heartbeat_interval_ms":100}}"#),
        )
    } else if method == "POST" && path.ends_with("/heartbeat") {
        if forget.load(Ordering::SeqCst) {
            (
                "404 Not Found",
                r#"{"kind":"not_found","message":"unknown node"}"#.to_string(),
            )
        } else {
            let end: Vec<u64> = std::mem::take(&mut *end.lock().unwrap());
            ("200 OK", serde_json::json!({ "end": end }).to_string())
        }
    } else {
        (
            "404 Not Found",
            r#"{"kind":"not_found","message":"?"}"#.to_string(),
        )
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{reply}",
        reply.len()
    )?;
    stream.flush()
}

fn config(resource_manager: &str) -> ManagerConfig {
    let mut c = ManagerConfig::new(resource_manager, SECRET);
    c.node_name = "test-node".into();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.fabric = FabricKind::Shm;
    c.spare_cores = vec![0, 1];
    c.memory_mib = 1024;
    c.gpus = vec![];
    c.executor_binary = env!("CARGO_BIN_EXE_rafi").into();
    c
}

/// A manager registered with a fresh fake resource manager.
fn cluster() -> (FakeResourceManager, ExecutorManager) {
    let rm = FakeResourceManager::start();
    let manager = ExecutorManager::start(config(&rm.address)).unwrap();
    assert_eq!(manager.wait_registered(Duration::from_secs(10)), Some(NODE));
    (rm, manager)
}

static NONCE: AtomicU64 = AtomicU64::new(1);

fn claims(lease: u64, cores: &[usize], lifetime_ms: i64) -> Claims {
    Claims {
        lease,
        node: NODE,
        client: "rank-0".into(),
        cores: cores.to_vec(),
        memory_mib: 64,
        gpus: vec![],
        expires_at: (token::now_millis() as i64 + lifetime_ms) as u64,
        nonce: NONCE.fetch_add(1, Ordering::Relaxed),
    }
}

fn token(lease: u64, cores: &[usize]) -> String {
    token::sign(SECRET.as_bytes(), &claims(lease, cores, 60_000))
}

/// A client's connection to the manager.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn allocate(
        manager: &ExecutorManager,
        token: &str,
        mode: Option<&str>,
    ) -> (Self, ManagerMessage) {
        let mut stream = TcpStream::connect(manager.address()).unwrap();
        let line = serde_json::to_string(&ManagerMessage::Allocate {
            token: token.into(),
            mode: mode.map(Into::into),
        })
        .unwrap();
        writeln!(stream, "{line}").unwrap();
        let mut conn = Conn {
            reader: BufReader::new(stream),
        };
        conn.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let first = conn.next().expect("an answer");
        (conn, first)
    }

    fn next(&mut self) -> Option<ManagerMessage> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap()),
        }
    }
}

fn executor_address(m: &ManagerMessage) -> String {
    match m {
        ManagerMessage::Allocated { executor, .. } => executor.clone(),
        other => panic!("expected allocated, got {other:?}"),
    }
}

fn refused(m: &ManagerMessage) -> (&str, &str) {
    match m {
        ManagerMessage::Error { kind, message } => (kind, message),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn pid_of(manager: &ExecutorManager, lease: u64) -> u32 {
    manager
        .running()
        .iter()
        .find(|r| r.lease == lease)
        .and_then(|r| r.pid)
        .expect("a running executor for the lease")
}

fn gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Everything the heartbeats reported for `lease`, summed.
fn usage(rm: &FakeResourceManager, lease: u64) -> LeaseUsage {
    let mut total = LeaseUsage {
        lease,
        ..LeaseUsage::default()
    };
    for u in rm.heartbeats().iter().flat_map(|h| h.usage.clone()) {
        if u.lease == lease {
            total.busy_ns += u.busy_ns;
            total.hot_ns += u.hot_ns;
            total.invocations += u.invocations;
        }
    }
    total
}

fn open_shm() -> rdma_mock::Device {
    rdma_mock::Device::open(rdma_mock::DeviceConfig::new(rdma_mock::Fabric::Shm)).expect("shm")
}

#[test]
fn registers_and_heartbeats() {
    let (rm, _manager) = cluster();
    wait_for("two heartbeats", Duration::from_secs(5), || {
        rm.heartbeats().len() >= 2
    });
    let requests = rm.requests();
    let registration = &requests[0];
    assert_eq!(registration.method, "POST");
    assert_eq!(registration.path, "/v1/nodes");
    assert_eq!(registration.authorization, format!("Bearer {SECRET}"));
    let body: NodeRegistration = serde_json::from_str(&registration.body).unwrap();
    assert_eq!(body.name, "test-node");
    assert_eq!(body.spare_cores, [0, 1]);
    assert_eq!(body.fabric, FabricKind::Shm);
    assert_eq!(body.memory_mib, 1024);
    assert!(body.manager_address.starts_with("127.0.0.1:"));
    assert!(requests[1..]
        .iter()
        .all(|r| r.path == format!("/v1/nodes/{NODE}/heartbeat")
            && r.authorization == format!("Bearer {SECRET}")));
}

#[test]
fn registration_is_retried_until_the_resource_manager_answers() {
    let spot = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = spot.local_addr().unwrap();
    drop(spot);
    let manager = ExecutorManager::start(config(&address.to_string())).unwrap();
    assert_eq!(manager.wait_registered(Duration::from_millis(400)), None);
    // No node yet: tokens cannot be for it.
    let (_, answer) = Conn::allocate(&manager, &token(1, &[0]), None);
    assert_eq!(refused(&answer).0, "wrong_node");
    let rm = FakeResourceManager::on(TcpListener::bind(address).unwrap());
    assert_eq!(manager.wait_registered(Duration::from_secs(10)), Some(NODE));
    assert_eq!(rm.registrations(), 1);
}

#[test]
fn a_node_the_resource_manager_forgot_registers_again_and_ends_its_executors() {
    let (rm, manager) = cluster();
    let (mut conn, answer) = Conn::allocate(&manager, &token(40, &[0]), None);
    executor_address(&answer);
    let pid = pid_of(&manager, 40);
    rm.forget.store(true, Ordering::SeqCst);
    match conn.next() {
        Some(ManagerMessage::ExecutorEnded { reason }) => {
            assert!(reason.contains("no longer knows"), "{reason}")
        }
        other => panic!("expected executor_ended, got {other:?}"),
    }
    assert!(gone(pid, Duration::from_secs(5)));
    wait_for("a second registration", Duration::from_secs(5), || {
        manager.node() == Some(NODE + 1)
    });
    assert_eq!(rm.registrations(), 2);
}

#[test]
fn a_valid_token_gives_an_executor_a_client_invokes_over_shm() {
    let (_rm, manager) = cluster();
    let (conn, answer) = Conn::allocate(&manager, &token(1, &[1]), Some("warm"));
    let ManagerMessage::Allocated {
        executor,
        cores,
        spawn_ns,
    } = &answer
    else {
        panic!("expected allocated, got {answer:?}");
    };
    assert_eq!(cores, &[1]);
    assert!(*spawn_ns > 0);
    let mut client = Allocation::connect(
        open_shm(),
        executor.as_str(),
        &["rafi.echo"],
        AllocationOptions::default(),
    )
    .expect("allocation on the executor");
    assert_eq!(client.invoke("rafi.echo", b"hello").unwrap(), b"hello");
    let running = manager.running();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].lease, 1);
    assert_eq!(running[0].cores, [1]);
    let pid = pid_of(&manager, 1);
    drop(client);
    // The client closing its manager connection ends the executor.
    drop(conn);
    assert!(
        gone(pid, Duration::from_secs(5)),
        "executor {pid} still there"
    );
    wait_for("the book to free the cores", Duration::from_secs(5), || {
        manager.running().is_empty()
    });
}

#[test]
fn forged_expired_foreign_and_reused_tokens_are_refused() {
    let (_rm, manager) = cluster();
    let forged = token::sign(b"not the secret", &claims(2, &[0], 60_000));
    let (_, a) = Conn::allocate(&manager, &forged, None);
    let (kind, message) = refused(&a);
    assert_eq!(kind, "forged");
    assert!(message.contains("signature"), "{message}");

    let (_, a) = Conn::allocate(&manager, "garbage", None);
    assert_eq!(refused(&a).0, "forged");

    let expired = token::sign(SECRET.as_bytes(), &claims(2, &[0], -1_000));
    let (_, a) = Conn::allocate(&manager, &expired, None);
    let (kind, message) = refused(&a);
    assert_eq!(kind, "expired");
    assert!(message.contains("expired"), "{message}");

    let mut other = claims(2, &[0], 60_000);
    other.node = NODE + 100;
    let foreign = token::sign(SECRET.as_bytes(), &other);
    let (_, a) = Conn::allocate(&manager, &foreign, None);
    let (kind, message) = refused(&a);
    assert_eq!(kind, "wrong_node");
    assert!(message.contains("node"), "{message}");

    let t = token(3, &[0]);
    let (_first, a) = Conn::allocate(&manager, &t, None);
    executor_address(&a);
    let (_, a) = Conn::allocate(&manager, &t, None);
    let (kind, message) = refused(&a);
    assert_eq!(kind, "reused");
    assert!(message.contains("already used"), "{message}");

    let (_, a) = Conn::allocate(&manager, &token(4, &[1]), Some("lukewarm"));
    assert_eq!(refused(&a).0, "bad_request");
}

#[test]
fn concurrent_allocations_get_disjoint_cores() {
    let (_rm, manager) = cluster();
    let (_a, first) = Conn::allocate(&manager, &token(10, &[0]), None);
    let (_b, second) = Conn::allocate(&manager, &token(11, &[1]), None);
    assert_ne!(executor_address(&first), executor_address(&second));
    let (_, third) = Conn::allocate(&manager, &token(12, &[1]), None);
    let (kind, message) = refused(&third);
    assert_eq!(kind, "busy_cores");
    assert!(message.contains("[1]"), "{message}");
    let (_, spare) = Conn::allocate(&manager, &token(13, &[5]), None);
    assert_eq!(refused(&spare).0, "busy_cores");
    let mut cores: Vec<usize> = manager
        .running()
        .iter()
        .flat_map(|r| r.cores.clone())
        .collect();
    cores.sort_unstable();
    assert_eq!(cores, [0, 1]);
}

/// A client that ends its allocation and at once allocates the same core under a new
/// lease (what the resource manager allows as soon as the first lease is released) gets it:
/// the manager waits for the ending executor instead of refusing `busy_cores`.
#[test]
fn cores_freed_by_an_ending_executor_are_waited_for_not_refused() {
    let (_rm, manager) = cluster();
    for lease in 20..25 {
        let (conn, answer) = Conn::allocate(&manager, &token(lease, &[1]), None);
        assert!(
            matches!(answer, ManagerMessage::Allocated { .. }),
            "lease {lease}: {answer:?}"
        );
        // The executor is still running when the next allocation comes.
        drop(conn);
    }
}

#[test]
fn a_killed_executor_is_reported_to_the_client_and_the_resource_manager() {
    let (rm, manager) = cluster();
    let (mut conn, answer) = Conn::allocate(&manager, &token(20, &[0]), Some("hot"));
    executor_address(&answer);
    let pid = pid_of(&manager, 20);
    // The executor bills its hot time every 100 ms: wait for some before killing it.
    wait_for("hot time billed", Duration::from_secs(5), || {
        usage(&rm, 20).hot_ns > 0
    });
    let killed_at = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    match conn.next() {
        Some(ManagerMessage::ExecutorEnded { reason }) => {
            assert!(reason.contains("exited"), "{reason}")
        }
        other => panic!("expected executor_ended, got {other:?}"),
    }
    assert!(
        killed_at.elapsed() < Duration::from_millis(500),
        "executor_ended after {:?}",
        killed_at.elapsed()
    );
    wait_for(
        "a heartbeat with the lease ended",
        Duration::from_secs(5),
        || rm.heartbeats().iter().any(|h| h.ended.contains(&20)),
    );
    assert!(manager.running().is_empty());
}

#[test]
fn a_lease_the_resource_manager_ends_stops_its_executor() {
    let (rm, manager) = cluster();
    let (mut conn, answer) = Conn::allocate(&manager, &token(30, &[1]), None);
    executor_address(&answer);
    let pid = pid_of(&manager, 30);
    rm.end.lock().unwrap().push(30);
    match conn.next() {
        Some(ManagerMessage::ExecutorEnded { reason }) => {
            assert!(reason.contains("resource manager"), "{reason}")
        }
        other => panic!("expected executor_ended, got {other:?}"),
    }
    assert!(gone(pid, Duration::from_secs(5)));
    // Its tokens are refused from now on.
    let (_, a) = Conn::allocate(&manager, &token(30, &[1]), None);
    assert_eq!(refused(&a).0, "expired");
}

#[test]
fn an_expired_lease_stops_its_executor() {
    let (_rm, manager) = cluster();
    let t = token::sign(SECRET.as_bytes(), &claims(31, &[0], 1_500));
    let (mut conn, answer) = Conn::allocate(&manager, &t, None);
    executor_address(&answer);
    let pid = pid_of(&manager, 31);
    match conn.next() {
        Some(ManagerMessage::ExecutorEnded { reason }) => {
            assert!(reason.contains("expired"), "{reason}")
        }
        other => panic!("expected executor_ended, got {other:?}"),
    }
    assert!(gone(pid, Duration::from_secs(5)));
}

#[test]
fn shutdown_stops_every_executor() {
    let (_rm, manager) = cluster();
    let (mut conn, answer) = Conn::allocate(&manager, &token(50, &[0]), None);
    executor_address(&answer);
    let pid = pid_of(&manager, 50);
    manager.shutdown();
    match conn.next() {
        Some(ManagerMessage::ExecutorEnded { reason }) => {
            assert!(reason.contains("shutting down"), "{reason}")
        }
        other => panic!("expected executor_ended, got {other:?}"),
    }
    assert!(gone(pid, Duration::from_secs(5)));
}

#[test]
fn the_sandbox_prefix_wraps_the_executor_and_only_the_leased_gpus_are_visible() {
    let rm = FakeResourceManager::start();
    let mut c = config(&rm.address);
    // `env` execs the command after it, as a sandbox or container runtime does.
    c.sandbox = vec!["env".into(), "RAFI_SANDBOXED=1".into()];
    c.gpus = vec!["0".into(), "1".into()];
    let manager = ExecutorManager::start(c).unwrap();
    assert_eq!(manager.wait_registered(Duration::from_secs(10)), Some(NODE));
    let mut with_gpu = claims(60, &[0], 60_000);
    with_gpu.gpus = vec!["1".into()];
    let (_conn, answer) =
        Conn::allocate(&manager, &token::sign(SECRET.as_bytes(), &with_gpu), None);
    executor_address(&answer);
    let pid = pid_of(&manager, 60);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
    assert!(vars.contains(&&b"RAFI_SANDBOXED=1"[..]));
    assert!(vars.contains(&&b"CUDA_VISIBLE_DEVICES=1"[..]));
    // The same GPU twice is refused, like a core.
    let mut again = claims(61, &[1], 60_000);
    again.gpus = vec!["1".into()];
    let (_, a) = Conn::allocate(&manager, &token::sign(SECRET.as_bytes(), &again), None);
    let (kind, message) = refused(&a);
    assert_eq!(kind, "busy_cores");
    assert!(message.contains("GPU"), "{message}");
}

#[test]
fn executors_bill_invocations_busy_and_hot_time_to_their_own_lease() {
    let (rm, manager) = cluster();
    let (_a, hot) = Conn::allocate(&manager, &token(70, &[0]), Some("hot"));
    let (_b, warm) = Conn::allocate(&manager, &token(71, &[1]), Some("warm"));
    let connect = |address: String| {
        Allocation::connect(
            open_shm(),
            address.as_str(),
            &["rafi.echo"],
            AllocationOptions::default(),
        )
        .expect("allocation on the executor")
    };
    let mut on_hot = connect(executor_address(&hot));
    let mut on_warm = connect(executor_address(&warm));
    for i in 0..25u32 {
        assert_eq!(
            on_hot.invoke("rafi.echo", &i.to_le_bytes()).unwrap(),
            i.to_le_bytes()
        );
    }
    for _ in 0..7 {
        on_warm.invoke("rafi.echo", b"w").unwrap();
    }
    wait_for("every invocation billed", Duration::from_secs(10), || {
        usage(&rm, 70).invocations >= 25 && usage(&rm, 71).invocations >= 7
    });
    // A few more flushes and heartbeats: nothing is billed twice.
    std::thread::sleep(Duration::from_millis(400));
    let (h, w) = (usage(&rm, 70), usage(&rm, 71));
    assert_eq!(h.invocations, 25, "{h:?}");
    assert_eq!(w.invocations, 7, "{w:?}");
    assert!(h.busy_ns > 0 && w.busy_ns > 0, "{h:?} {w:?}");
    assert!(h.hot_ns > 0 && w.hot_ns > 0, "{h:?} {w:?}");
    // Busy time is a part of the awake time; a hot worker is awake all the time, a warm
    // one that waits sleeps most of it.
    assert!(h.busy_ns <= h.hot_ns, "{h:?}");
    assert!(w.hot_ns < h.hot_ns, "warm {w:?} hot {h:?}");
}

#[test]
fn a_renewed_allocation_outlives_its_first_expiry() {
    let (_rm, manager) = cluster();
    let first = claims(80, &[1], 1_500);
    let part = |claims: &Claims| LeasePart {
        node: NODE,
        node_name: "test-node".into(),
        manager_address: manager.address().to_string(),
        fabric: FabricKind::Shm,
        cores: claims.cores.clone(),
        memory_mib: claims.memory_mib,
        gpus: vec![],
        token: token::sign(SECRET.as_bytes(), claims),
    };
    let mut leased = Leased::allocate(
        open_shm(),
        &part(&first),
        &["rafi.echo"],
        None,
        AllocationOptions::default(),
    )
    .expect("allocated");
    let pid = pid_of(&manager, 80);
    // A token of another lease, or the allocation's own token again, is refused.
    match leased.renew(&part(&claims(81, &[1], 60_000))) {
        Err(RenewError::Refused { kind, .. }) => assert_eq!(kind, "bad_request"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match leased.renew(&part(&first)) {
        Err(RenewError::Refused { kind, .. }) => assert_eq!(kind, "reused"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let renewed = claims(80, &[1], 3_500);
    assert_eq!(leased.renew(&part(&renewed)).unwrap(), renewed.expires_at);
    // Past the first expiry the executor still serves.
    while token::now_millis() < first.expires_at + 500 {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(
        leased.allocation.invoke("rafi.echo", b"still").unwrap(),
        b"still"
    );
    // And ends at the new one.
    assert!(
        gone(pid, Duration::from_secs(6)),
        "executor {pid} still there"
    );
    assert!(token::now_millis() >= renewed.expires_at);
}
