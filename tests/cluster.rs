//! A whole cluster on one host: a resource manager (SQLite in a temporary directory),
//! executor managers ("nodes") that spawn real `rafi executor` processes, and clients that
//! lease, allocate and invoke. Each scenario is written once and run over the shm and the
//! tcp fabric (`cargo test --test cluster shm::`); one more puts the resource manager and
//! a node in network namespaces of their own ("hosts" on a bridged LAN) over tcp.
//!
//! Deadlines, not sleeps: every wait polls a condition until [`harness::PATIENCE`].

#[path = "support/cluster.rs"]
mod harness;
#[path = "support/libraries.rs"]
mod libraries;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use harness::*;
use rafi::client::{AllocationOptions, InvokeError};
use rafi::cluster::api::{LeasePart, LeaseRequest, LeaseState, NodeState, NodeStatus};
use rafi::cluster::http::{self, CallError};
use rafi::cluster::lease::{Leased, LeasedAllocateError, LeasedMemory};
use rafi::cluster::manager::ExecutorManager;
use rafi::cluster::resource::ResourceManager;
use rafi::cluster::token;
use rafi::fabric::FabricKind;

macro_rules! on_both_fabrics {
    ($($name:ident),* $(,)?) => {
        mod shm { $( #[test] fn $name() { super::$name(rafi::fabric::FabricKind::Shm) } )* }
        mod tcp { $( #[test] fn $name() { super::$name(rafi::fabric::FabricKind::Tcp) } )* }
    };
}

on_both_fabrics!(
    lease_allocate_invoke_release_across_two_nodes,
    exhaustion_grants_nothing,
    an_expired_lease_stops_its_executor_and_its_tokens,
    forged_tokens_are_refused,
    a_killed_executor_manager_loses_its_node_and_leases,
    a_resource_manager_restart_keeps_leases_and_accounting,
    two_concurrent_executors_on_disjoint_cores,
    a_killed_client_has_its_executor_reclaimed,
    a_memory_lease_is_reachable_until_it_expires,
    a_terminated_executor_manager_ends_its_executors_and_leases,
);

const RAFI: &str = env!("CARGO_BIN_EXE_rafi");

fn ask(cores: u32, duration_ms: u64, fabric: FabricKind) -> LeaseRequest {
    LeaseRequest {
        cores,
        memory_mib: 0,
        gpus: 0,
        duration_ms,
        fabric: Some(fabric),
    }
}

fn options() -> AllocationOptions {
    AllocationOptions {
        client_name: "cluster-test".into(),
        timeout: Duration::from_secs(10),
        ..AllocationOptions::default()
    }
}

/// Allocates on `part` (warm, or `mode`) with a fresh client device.
fn allocate(fabric: FabricKind, part: &LeasePart, mode: Option<&str>) -> Leased<rdma_mock::Device> {
    Leased::allocate(open(fabric, None), part, &[ECHO], mode, options())
        .unwrap_or_else(|e| panic!("allocating on node {}: {e}", part.node_name))
}

/// The refusal kind of an allocation that must be refused.
fn refusal(fabric: FabricKind, part: &LeasePart) -> String {
    match Leased::allocate(open(fabric, None), part, &[ECHO], None, options()) {
        Err(LeasedAllocateError::Refused { kind, .. }) => kind,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("allocated with a token that must be refused"),
    }
}

/// `rafi.echo` answers `count` inputs of several sizes byte for byte.
fn echoes(leased: &mut Leased<rdma_mock::Device>, seed: u8, count: usize) {
    for n in 0..count {
        let input: Vec<u8> = (0..(n * 37) % 3000)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let output = leased
            .allocation
            .invoke(ECHO, &input)
            .unwrap_or_else(|e| panic!("echo {n} ({} B): {e}", input.len()));
        assert_eq!(output, input, "echo {n}");
    }
}

fn gone(leased: &mut Leased<rdma_mock::Device>) {
    match leased.allocation.invoke(ECHO, b"anyone there?") {
        Err(InvokeError::ExecutorGone(_)) => {}
        other => panic!("expected ExecutorGone, got {other:?}"),
    }
}

fn exhausted(result: Result<rafi::cluster::api::Lease, CallError>) {
    match result {
        Err(CallError::Refused { status: 409, error }) => assert_eq!(error.kind, "exhausted"),
        Err(e) => panic!("expected 409 exhausted, got {e}"),
        Ok(lease) => panic!("expected exhausted, got lease {lease:?}"),
    }
}

fn names_and_cores(parts: &[LeasePart]) -> BTreeMap<String, Vec<usize>> {
    parts
        .iter()
        .map(|p| (p.node_name.clone(), p.cores.clone()))
        .collect()
}

fn none_leased(rm: &str) {
    assert!(
        leased_cores(rm).values().all(Vec::is_empty),
        "cores still leased: {:?}",
        leased_cores(rm)
    );
}

/// The value of the `rafi_cores{state="leased"}` gauge of `/metrics`.
fn leased_cores_metric(rm: &str) -> u64 {
    let (status, body) = http::request(rm, "GET", "/metrics", SECRET, None::<&()>).unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rafi_cores{state=\"leased\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a rafi_cores leased gauge")
}

// ---- 1. the whole path --------------------------------------------------------------------

/// Two nodes with one spare core each: a two-core lease spans both, every part gets an
/// executor on its leased core that echoes right, the resource manager shows the cores
/// leased; release ends both executors and frees the cores, which lease again.
fn lease_allocate_invoke_release_across_two_nodes(fabric: FabricKind) {
    let cluster = Cluster::start(fabric, &[("a", &[0]), ("b", &[1])]);
    let rm = cluster.rm_addr.clone();
    let client = cluster.client();
    none_leased(&rm);

    let lease = client.lease(&ask(2, 60_000, fabric)).expect("a lease");
    let expected = BTreeMap::from([("a".to_string(), vec![0]), ("b".to_string(), vec![1])]);
    assert_eq!(names_and_cores(&lease.parts), expected);
    assert!(lease.parts.iter().all(|p| p.fabric == fabric));
    let mut leased: Vec<_> = lease
        .parts
        .iter()
        .map(|p| allocate(fabric, p, None))
        .collect();
    for (i, l) in leased.iter_mut().enumerate() {
        assert_eq!(l.allocation.workers(), 1);
        echoes(l, i as u8, 30);
    }
    for p in &lease.parts {
        let running: Vec<_> = cluster
            .manager(&p.node_name)
            .running()
            .into_iter()
            .map(|r| (r.lease, r.cores))
            .collect();
        assert_eq!(running, [(lease.lease, p.cores.clone())], "{}", p.node_name);
    }
    assert_eq!(leased_cores(&rm), expected);
    assert_eq!(leased_cores_metric(&rm), 2);
    assert_eq!(lease_status(&rm, lease.lease).state, LeaseState::Active);

    let released = client.release(lease.lease).expect("release");
    assert_eq!(released.state, LeaseState::Released);
    none_leased(&rm);
    assert_eq!(leased_cores_metric(&rm), 0);
    cluster.wait_no_executors("the released lease's executors to end");
    for l in &mut leased {
        gone(l);
    }
    drop(leased);

    // The cores are free: the same lease again, on the same cores.
    let again = client
        .lease(&ask(2, 60_000, fabric))
        .expect("a second lease");
    assert_eq!(names_and_cores(&again.parts), expected);
    let mut l = allocate(fabric, &again.parts[1], None);
    echoes(&mut l, 9, 5);
    client.release(again.lease).unwrap();
    cluster.wait_no_executors("the second lease's executor to end");
}

// ---- 2. exhaustion ------------------------------------------------------------------------

/// More cores than the cluster has spare (or free, or of that fabric): `409 exhausted`,
/// and nothing is leased.
fn exhaustion_grants_nothing(fabric: FabricKind) {
    let cluster = Cluster::start(fabric, &[("a", &[0]), ("b", &[1])]);
    let rm = cluster.rm_addr.clone();
    let client = cluster.client();

    exhausted(client.lease(&ask(3, 60_000, fabric)));
    assert!(leases(&rm).is_empty(), "{:?}", leases(&rm));
    none_leased(&rm);

    let one = client.lease(&ask(1, 60_000, fabric)).expect("one core");
    exhausted(client.lease(&ask(2, 60_000, fabric)));
    let other = match fabric {
        FabricKind::Shm => FabricKind::Tcp,
        _ => FabricKind::Shm,
    };
    exhausted(client.lease(&ask(1, 60_000, other)));
    let listed: Vec<u64> = leases(&rm).iter().map(|l| l.lease).collect();
    assert_eq!(listed, [one.lease]);
    let held: Vec<usize> = leased_cores(&rm).into_values().flatten().collect();
    assert_eq!(held, one.parts[0].cores);

    // The refusals took nothing: the last free core still leases, then none is left.
    let two = client
        .lease(&ask(1, 60_000, fabric))
        .expect("the other core");
    assert_ne!(two.parts[0].cores, one.parts[0].cores);
    exhausted(client.lease(&ask(1, 60_000, fabric)));
    assert_eq!(leases(&rm).len(), 2);
    assert!(cluster.managers.iter().all(|m| m.running().is_empty()));
}

// ---- 3. expiry ----------------------------------------------------------------------------

/// A short lease over two nodes, allocated on one: at the expiry the executor is stopped
/// (the client's next invocation fails with `ExecutorGone`), the resource manager ends
/// the lease as expired, and both tokens (used and unused) are refused as `expired`.
fn an_expired_lease_stops_its_executor_and_its_tokens(fabric: FabricKind) {
    let cluster = Cluster::start(fabric, &[("a", &[0]), ("b", &[1])]);
    let rm = cluster.rm_addr.clone();
    let lease = cluster
        .client()
        .lease(&ask(2, 2_000, fabric))
        .expect("a short lease");
    let part = |name: &str| lease.parts.iter().find(|p| p.node_name == name).unwrap();
    let mut leased = allocate(fabric, part("a"), None);
    echoes(&mut leased, 3, 10);

    eventually("the lease to expire", || {
        lease_status(&rm, lease.lease).state == LeaseState::Expired
    });
    assert!(token::now_millis() >= lease.expires_at);
    cluster.wait_no_executors("the expired lease's executor to stop");
    gone(&mut leased);
    none_leased(&rm);
    assert_eq!(refusal(fabric, part("b")), "expired", "the unused token");
    assert_eq!(refusal(fabric, part("a")), "expired", "the used token");
    assert!(cluster.managers.iter().all(|m| m.running().is_empty()));
}

// ---- 4. forged tokens ---------------------------------------------------------------------

/// A token signed with another secret, one whose claims were edited after signing, and
/// garbage are refused as `forged` without spending the genuine token, which then
/// allocates once (a second use is `reused`).
fn forged_tokens_are_refused(fabric: FabricKind) {
    let cluster = Cluster::start(fabric, &[("a", &[0, 1])]);
    let lease = cluster
        .client()
        .lease(&ask(1, 60_000, fabric))
        .expect("a lease");
    let part = &lease.parts[0];
    let claims = token::verify(
        SECRET.as_bytes(),
        &part.token,
        part.node,
        token::now_millis(),
    )
    .expect("a genuine token");

    let other_secret = token::sign(b"not-the-cluster-secret", &claims);
    let mut edited = claims.clone();
    edited.cores = vec![0, 1];
    edited.expires_at += 3_600_000;
    let signature = part.token.split_once('.').unwrap().1;
    let edited = format!(
        "{}.{signature}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&edited).unwrap())
    );
    for (what, forged) in [
        ("signed with another secret", other_secret),
        ("claims edited after signing", edited),
        ("not a token", "not-a-token".to_string()),
    ] {
        let forged = LeasePart {
            token: forged,
            ..part.clone()
        };
        assert_eq!(refusal(fabric, &forged), "forged", "{what}");
    }
    let manager = cluster.manager("a");
    assert!(manager.running().is_empty());

    let mut leased = allocate(fabric, part, None);
    echoes(&mut leased, 4, 10);
    assert_eq!(refusal(fabric, part), "reused");
    let running = manager.running();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].cores, claims.cores);
}

// ---- 5. a killed executor manager ---------------------------------------------------------

/// Kills these processes on drop (executors orphaned by a killed manager).
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for &pid in &self.0 {
            kill_pid(pid);
        }
    }
}

/// A node whose `rafi executor-manager` process is SIGKILLed: the resource manager marks
/// it down within about three heartbeat intervals, its lease ends as `lost` and its cores
/// are no longer counted as leased; another node and its lease are untouched.
fn a_killed_executor_manager_loses_its_node_and_leases(fabric: FabricKind) {
    let dir = TempDir::new();
    let rm_service = ResourceManager::start(rm_config(dir.path(), "127.0.0.1:0")).unwrap();
    let rm = rm_service.address().to_string();
    let mut doomed = ChildProcess::spawn(
        &[
            RAFI,
            "executor-manager",
            "--resource-manager",
            &rm,
            "--secret",
            SECRET,
            "--node",
            "doomed",
            "--listen",
            "127.0.0.1:0",
            "--spare-cores",
            "0",
            "--fabric",
            fabric.name(),
        ],
        &[],
    );
    let doomed_node = wait_up(&rm, "doomed");
    // Registered after it, so first-fit puts the first lease on `doomed`.
    let survivor = ExecutorManager::start(manager_config(&rm, fabric, "survivor", &[1])).unwrap();
    assert!(survivor.wait_registered(PATIENCE).is_some());
    let client = lease_client(&rm);
    let lost = client.lease(&ask(1, 60_000, fabric)).unwrap();
    let kept = client.lease(&ask(1, 60_000, fabric)).unwrap();
    assert_eq!(lost.parts[0].node, doomed_node.node);
    assert_eq!(kept.parts[0].node_name, "survivor");
    let mut on_doomed = allocate(fabric, &lost.parts[0], None);
    let mut on_survivor = allocate(fabric, &kept.parts[0], None);
    echoes(&mut on_doomed, 5, 5);
    echoes(&mut on_survivor, 6, 5);
    assert_eq!(leased_cores_metric(&rm), 2);

    // Its executor notices its manager's end (its standard input closes) and ends too;
    // the reaper only cleans up if it did not.
    let orphans = Reap(children_of(doomed.pid()));
    assert_eq!(orphans.0.len(), 1, "the doomed manager runs one executor");
    doomed.kill();
    let killed = Instant::now();
    eventually("the killed manager's node to be marked down", || {
        node_named(&rm, "doomed").unwrap().state == NodeState::Down
    });
    let took = killed.elapsed();
    assert!(
        took <= HEARTBEAT * 3 + Duration::from_millis(600),
        "marked down {took:?} after the kill (heartbeat every {HEARTBEAT:?})"
    );

    let orphan = orphans.0[0];
    eventually("the dead manager's executor to end by itself", || {
        !std::path::Path::new(&format!("/proc/{orphan}")).exists()
            || std::fs::read_to_string(format!("/proc/{orphan}/stat"))
                .is_ok_and(|stat| stat.split_whitespace().nth(2) == Some("Z"))
    });
    assert!(matches!(
        on_doomed.allocation.invoke("rafi.echo", b"x"),
        Err(InvokeError::ExecutorGone(_))
    ));

    let status = lease_status(&rm, lost.lease);
    assert_eq!(status.state, LeaseState::Lost);
    assert!(status.ended_at.is_some());
    assert_eq!(
        leased_cores(&rm),
        BTreeMap::from([
            ("doomed".to_string(), vec![]),
            ("survivor".to_string(), vec![1])
        ])
    );
    assert_eq!(leased_cores_metric(&rm), 1);
    // A down node's cores are not free either.
    exhausted(client.lease(&ask(1, 60_000, fabric)));

    // The other node, its lease and its executor go on.
    assert_eq!(lease_status(&rm, kept.lease).state, LeaseState::Active);
    assert_eq!(node_named(&rm, "survivor").unwrap().state, NodeState::Up);
    echoes(&mut on_survivor, 7, 5);
    assert_eq!(survivor.running().len(), 1);
}

/// SIGTERM (what Slurm sends before a job's end, and `scancel --signal=TERM`) makes a
/// `rafi executor-manager` process end its executors (the client hears it), tell the
/// resource manager that their leases ended, and exit with status 0.
fn a_terminated_executor_manager_ends_its_executors_and_leases(fabric: FabricKind) {
    let dir = TempDir::new();
    let rm_service = ResourceManager::start(rm_config(dir.path(), "127.0.0.1:0")).unwrap();
    let rm = rm_service.address().to_string();
    let mut manager = ChildProcess::spawn(
        &[
            RAFI,
            "executor-manager",
            "--resource-manager",
            &rm,
            "--secret",
            SECRET,
            "--node",
            "batch",
            "--listen",
            "127.0.0.1:0",
            "--spare-cores",
            "0",
            "--fabric",
            fabric.name(),
        ],
        &[],
    );
    wait_up(&rm, "batch");
    let client = lease_client(&rm);
    let lease = client.lease(&ask(1, 60_000, fabric)).unwrap();
    let mut leased = allocate(fabric, &lease.parts[0], None);
    echoes(&mut leased, 8, 5);
    let executors = children_of(manager.pid());
    assert_eq!(executors.len(), 1, "the manager runs one executor");
    let _reap = Reap(executors.clone());

    // Slurm signals every process of the step, the executor too: the manager ends it,
    // after the executor's last flush of its usage.
    let sent = Instant::now();
    assert!(std::process::Command::new("kill")
        .arg("-TERM")
        .args(executors.iter().map(u32::to_string))
        .arg(manager.pid().to_string())
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = manager.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the manager still runs after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        status.success(),
        "the manager exited with {status} after SIGTERM"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "shutting down took {:?}",
        sent.elapsed()
    );
    // Its executor is gone, the client is told, and the lease ended with the last
    // heartbeat, not three heartbeats later when the node would be marked down.
    for pid in executors {
        // Gone, or a zombie that init has not reaped yet.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = state.rsplit(')').next().unwrap_or("").trim_start();
        assert!(
            state.is_empty() || state.starts_with('Z') || state.starts_with('X'),
            "executor {pid} outlived its manager (state {state:.1})"
        );
    }
    gone(&mut leased);
    let ended = lease_status(&rm, lease.lease);
    assert_eq!(ended.state, LeaseState::Lost);
    assert!(ended.ended_at.is_some());
    assert_eq!(leased_cores_metric(&rm), 0);
    // The five echoes were billed: the executor outlived the signal until its manager
    // ended it, and the last heartbeat carried its last usage.
    assert_eq!(usage(&rm, lease.lease).invocations, 5);
}

// ---- 6. a resource manager restart --------------------------------------------------------

/// Leases and their accounting survive a restart of the resource manager on its database,
/// the managers' heartbeats keep their nodes up afterwards (same node ids: nobody
/// registered again), executors live through it, and lease ends still reach the nodes.
fn a_resource_manager_restart_keeps_leases_and_accounting(fabric: FabricKind) {
    let mut cluster = Cluster::start(fabric, &[("a", &[0]), ("b", &[1])]);
    let rm = cluster.rm_addr.clone();
    let client = cluster.client();

    // A hot lease that runs up usage and is released: its accounting is final.
    let done = client.lease(&ask(1, 60_000, fabric)).unwrap();
    let mut hot = allocate(fabric, &done.parts[0], Some("hot"));
    echoes(&mut hot, 8, 10);
    eventually("hot time to be reported", || {
        usage(&rm, done.lease).hot_ns > 0
    });
    client.release(done.lease).unwrap();
    drop(hot);
    cluster.wait_no_executors("the hot executor to end");
    // A lease that stays active across the restart, with a running executor.
    let kept = client.lease(&ask(1, 60_000, fabric)).unwrap();
    let mut warm = allocate(fabric, &kept.parts[0], None);
    echoes(&mut warm, 9, 5);

    let leases_before = leases(&rm);
    let done_before = usage(&rm, done.lease);
    let kept_before = usage(&rm, kept.lease);
    let ids_before: Vec<Option<u64>> = cluster.managers.iter().map(|m| m.node()).collect();
    let restarted = cluster.restart_resource_manager();

    assert_eq!(leases(&rm), leases_before);
    let done_after = usage(&rm, done.lease);
    assert_eq!(done_after.client, CLIENT);
    assert_eq!(done_after.core_seconds, done_before.core_seconds);
    assert!(done_after.hot_ns >= done_before.hot_ns && done_before.hot_ns > 0);
    let kept_after = usage(&rm, kept.lease);
    assert!(kept_after.core_seconds >= kept_before.core_seconds);

    // Heartbeats reach the new process, and keep the nodes up past three intervals.
    let heard = |n: &NodeStatus| n.state == NodeState::Up && n.last_heartbeat >= restarted;
    eventually("heartbeats after the restart", || {
        nodes(&rm).iter().all(heard)
    });
    let watch = Instant::now() + HEARTBEAT * 5;
    while Instant::now() < watch {
        assert!(
            nodes(&rm).iter().all(|n| n.state == NodeState::Up),
            "{:?}",
            nodes(&rm)
        );
        std::thread::sleep(HEARTBEAT / 4);
    }
    let ids_after: Vec<Option<u64>> = cluster.managers.iter().map(|m| m.node()).collect();
    assert_eq!(ids_after, ids_before);
    assert_eq!(lease_status(&rm, kept.lease).state, LeaseState::Active);
    echoes(&mut warm, 10, 5);

    // The restarted resource manager's ends reach the managers.
    client.release(kept.lease).unwrap();
    cluster.wait_no_executors("the kept lease's executor to end after its release");
    let next = client.lease(&ask(1, 60_000, fabric)).unwrap();
    assert!(next.lease > kept.lease, "lease ids go on after a restart");
}

// ---- 7. two executors on one node ---------------------------------------------------------

/// Two one-core leases on a node with two spare cores: both executors run at once, on
/// disjoint cores (never both on core 0), each with its worker pinned to its own core.
fn two_concurrent_executors_on_disjoint_cores(fabric: FabricKind) {
    let cluster = Cluster::start(fabric, &[("duo", &[0, 1])]);
    let client = cluster.client();
    let one = client.lease(&ask(1, 60_000, fabric)).unwrap();
    let two = client.lease(&ask(1, 60_000, fabric)).unwrap();
    let mut x = allocate(fabric, &one.parts[0], None);
    let mut y = allocate(fabric, &two.parts[0], None);

    let running = cluster.manager("duo").running();
    assert_eq!(running.len(), 2, "{running:?}");
    let cores: Vec<BTreeSet<usize>> = running
        .iter()
        .map(|r| r.cores.iter().copied().collect())
        .collect();
    assert!(cores[0].is_disjoint(&cores[1]), "{running:?}");
    assert!(
        !(cores[0].contains(&0) && cores[1].contains(&0)),
        "{running:?}"
    );
    assert_eq!(
        cores.iter().flatten().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([0, 1])
    );
    for (r, mine) in running.iter().zip(&cores) {
        let pinned = pinned_cores(r.pid.expect("a started executor"));
        assert!(
            mine.is_subset(&pinned),
            "executor of lease {}: cores {mine:?}, threads pinned to {pinned:?}",
            r.lease
        );
        let others: BTreeSet<usize> = cores.iter().flatten().copied().collect();
        assert!(
            pinned.intersection(&others).all(|c| mine.contains(c)),
            "executor of lease {} has a thread pinned to another lease's core",
            r.lease
        );
    }

    // Both at once.
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for (l, seed) in [(&mut x, 11), (&mut y, 12)] {
            let start = &start;
            s.spawn(move || {
                start.wait();
                echoes(l, seed, 200);
            });
        }
    });
    assert_eq!(cluster.manager("duo").running().len(), 2);
}

// ---- 8. a killed client -------------------------------------------------------------------

/// A client process that leased and allocated is SIGKILLed: its executor is reclaimed
/// (killed and reaped), and its lease ends.
fn a_killed_client_has_its_executor_reclaimed(fabric: FabricKind) {
    let cluster = Cluster::start(fabric, &[("a", &[0])]);
    let rm = cluster.rm_addr.clone();
    let mut client = ChildProcess::role(
        "client",
        &[
            ("RAFI_TEST_RM", rm.clone()),
            ("RAFI_TEST_FABRIC", fabric.name().into()),
        ],
    );
    let line = client.line();
    let lease: u64 = line
        .strip_prefix("allocated ")
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("the client says {line:?}"));
    let manager = cluster.manager("a");
    let running = manager.running();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].lease, lease);
    let executor = running[0].pid.expect("a started executor");
    assert!(std::path::Path::new(&format!("/proc/{executor}")).exists());

    client.kill();
    eventually("the killed client's executor to be reclaimed", || {
        manager.running().is_empty()
    });
    assert!(
        !std::path::Path::new(&format!("/proc/{executor}")).exists(),
        "executor {executor} still exists"
    );
    eventually("the lease to end", || {
        lease_status(&rm, lease).state == LeaseState::Lost
    });
    none_leased(&rm);
}

/// Roles of this test binary run as a child process (`RAFI_CLUSTER_TEST_ROLE`).
#[test]
#[ignore = "a child process of other tests"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    match role.as_str() {
        // Leases a core, allocates, checks an echo, says so, then waits to be killed.
        "client" => {
            let rm = std::env::var("RAFI_TEST_RM").unwrap();
            let fabric: FabricKind = std::env::var("RAFI_TEST_FABRIC").unwrap().parse().unwrap();
            let lease = lease_client(&rm).lease(&ask(1, 60_000, fabric)).unwrap();
            let mut leased = allocate(fabric, &lease.parts[0], None);
            echoes(&mut leased, 13, 5);
            say(&format!("allocated {}", lease.lease));
            loop {
                std::thread::park();
            }
        }
        other => panic!("unknown role {other}"),
    }
}

// ---- 9. hosts in network namespaces -------------------------------------------------------

/// The resource manager in one network namespace, an executor manager in another, the
/// client in the root namespace: three "hosts" with their own addresses on a bridged LAN,
/// over the tcp fabric. Needs root and `ip`; skipped without them unless `CI` is set.
#[test]
fn hosts_in_network_namespaces_over_tcp() {
    let lan = match Lan::create(&["rm", "node"]) {
        Ok(lan) => lan,
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: cannot create hosts in network namespaces: {why}");
            return;
        }
        Err(why) => panic!("CI must be able to create network namespaces: {why}"),
    };
    let dir = TempDir::new();
    let (rm_ns, rm_ip) = lan.hosts[0].clone();
    let (node_ns, node_ip) = lan.hosts[1].clone();
    // Fresh network stacks: every port is free there.
    let rm = format!("{rm_ip}:7800");
    let manager_address = format!("{node_ip}:7900");
    let database = dir.path().join("resource.db");
    let _rm = ChildProcess::spawn(
        &[
            "ip",
            "netns",
            "exec",
            &rm_ns,
            RAFI,
            "resource-manager",
            "--listen",
            &rm,
            "--database",
            database.to_str().unwrap(),
            "--secret",
            SECRET,
            "--client",
            &format!("{CLIENT}:{CLIENT_SECRET}"),
            "--heartbeat-interval-ms",
            &HEARTBEAT.as_millis().to_string(),
        ],
        &[],
    );
    let _manager = ChildProcess::spawn(
        &[
            "ip",
            "netns",
            "exec",
            &node_ns,
            RAFI,
            "executor-manager",
            "--resource-manager",
            &rm,
            "--secret",
            SECRET,
            "--node",
            "far",
            "--listen",
            &manager_address,
            "--spare-cores",
            "0",
            "--fabric",
            "tcp",
        ],
        &[],
    );
    let mut far = None;
    eventually("node far to register across the LAN", || {
        far = http::call::<(), Vec<NodeStatus>>(&rm, "GET", "/v1/nodes", SECRET, None)
            .ok()
            .and_then(|nodes| nodes.into_iter().find(|n| n.name == "far"))
            .filter(|n| n.state == NodeState::Up);
        far.is_some()
    });
    let far = far.unwrap();
    assert_eq!(far.manager_address, manager_address);
    assert_eq!(far.fabric, FabricKind::Tcp);

    let client = lease_client(&rm);
    let lease = client.lease(&ask(1, 60_000, FabricKind::Tcp)).unwrap();
    let part = &lease.parts[0];
    assert_eq!(part.manager_address, manager_address);
    let device = open(FabricKind::Tcp, Some(&lan.our_ip));
    let mut leased = Leased::allocate(device, part, &[ECHO], None, options())
        .unwrap_or_else(|e| panic!("allocating across namespaces: {e}"));
    echoes(&mut leased, 14, 50);
    assert_eq!(leased_cores(&rm)["far"], [0]);

    // A release reaches the node in its namespace through its heartbeat.
    client.release(lease.lease).unwrap();
    eventually("the executor across the LAN to stop", || {
        leased.allocation.invoke(ECHO, b"x").is_err()
    });
    gone(&mut leased);
    none_leased(&rm);
}

// ---- remote memory ------------------------------------------------------------------------

/// A lease of memory (and the one core its executor needs): the client leases remote memory
/// of at most the lease's size from the executor the manager starts, reads, writes and
/// updates it, and the memory is gone when the lease expires.
fn a_memory_lease_is_reachable_until_it_expires(fabric: FabricKind) {
    use rafi::client::{MemoryError, MemoryOptions};
    let cluster = Cluster::start(fabric, &[("a", &[0])]);
    let rm = cluster.rm_addr.clone();
    let memory_ask = |duration_ms| LeaseRequest {
        memory_mib: 16,
        ..ask(1, duration_ms, fabric)
    };
    let lease = cluster
        .client()
        .lease(&memory_ask(60_000))
        .expect("a memory lease");
    let err = LeasedMemory::allocate(
        open(fabric, None),
        &lease.parts[0],
        MemoryOptions::new(32 << 20),
    )
    .err()
    .expect("more memory than the lease holds");
    assert!(
        err.to_string().contains("leases at most 16777216 B"),
        "{err}"
    );
    cluster.client().release(lease.lease).expect("release");
    cluster.wait_no_executors("the refused lease's executor to stop");

    let lease = cluster
        .client()
        .lease(&memory_ask(2_000))
        .expect("a short memory lease");
    let mut leased = LeasedMemory::allocate(
        open(fabric, None),
        &lease.parts[0],
        MemoryOptions::new(16 << 20),
    )
    .unwrap_or_else(|e| panic!("leasing memory: {e}"));
    let m = &mut leased.memory;
    let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    m.put(4096, &data).unwrap();
    let mut back = vec![0u8; 1 << 20];
    m.get(4096, &mut back).unwrap();
    assert!(back == data);
    assert_eq!(m.fetch_add(0, 5).unwrap(), 0);
    assert_eq!(m.compare_swap(0, 5, 6).unwrap(), 5);

    eventually("the lease to expire", || {
        lease_status(&rm, lease.lease).state == LeaseState::Expired
    });
    cluster.wait_no_executors("the expired lease's executor to stop");
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match m.fetch_add(0, 1) {
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(_) => panic!("the memory is still reachable 10 s after its executor stopped"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, MemoryError::Released(_)), "{err}");
}

// ---- GPUs ---------------------------------------------------------------------------------

/// A function that answers with its executor's `CUDA_VISIBLE_DEVICES`: what a CUDA library
/// on that executor would see (examples/functions/cuda; no GPU needed here).
const VISIBLE_GPUS_LIBRARY: &str = r#"
#include <stdlib.h>
#include <string.h>
#include "rafi_function.h"

static int64_t visible_gpus(const uint8_t *input, size_t input_len, uint8_t *output,
                            size_t capacity) {
    (void)input;
    (void)input_len;
    const char *v = getenv("CUDA_VISIBLE_DEVICES");
    if (v == NULL) v = "unset";
    size_t n = strlen(v);
    if (n > capacity) return RAFI_ERR_OUTPUT_TOO_SMALL;
    memcpy(output, v, n);
    return (int64_t)n;
}

static const rafi_function_entry functions[] = {{"visible_gpus", visible_gpus}};
RAFI_FUNCTION_EXPORT(functions)
"#;

/// GPUs end to end through the shell tools: `rafi executor-manager --gpus` offers them,
/// `rafi invoke --gpus N` leases N with its core, and the executor the manager starts sees
/// exactly the leased ones (`CUDA_VISIBLE_DEVICES`); none when none were leased. More GPUs
/// than the node has, a malformed `--gpus` and GPUs without a lease are clear errors.
#[test]
fn leased_gpus_are_the_executors_visible_devices() {
    let library = libraries::cc("visible_gpus", VISIBLE_GPUS_LIBRARY);
    let dir = TempDir::new();
    let rm_service = ResourceManager::start(rm_config(dir.path(), "127.0.0.1:0")).unwrap();
    let rm = rm_service.address().to_string();
    let manager_args = |gpus: &'static str| {
        [
            "executor-manager",
            "--resource-manager",
            &rm,
            "--secret",
            SECRET,
            "--node",
            "gpu-node",
            "--listen",
            "127.0.0.1:0",
            "--spare-cores",
            "0",
            "--gpus",
            gpus,
            "--library",
            library.to_str().unwrap(),
        ]
        .map(String::from)
    };
    let bad = std::process::Command::new(RAFI)
        .args(manager_args("0,,1"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("is not a GPU id"), "{said}");

    let args = manager_args("3,GPU-5");
    let mut program = vec![RAFI];
    program.extend(args.iter().map(String::as_str));
    let _manager = ChildProcess::spawn(&program, &[]);
    let node = wait_up(&rm, "gpu-node");
    assert_eq!(node.gpus, ["3", "GPU-5"]);

    let invoke = |gpus: &str| {
        let out = std::process::Command::new(RAFI)
            .args(["invoke", "visible_gpus", "--gpus", gpus])
            .args(["--resource-manager", &rm, "--client", CLIENT])
            .args(["--secret", CLIENT_SECRET, "--fabric", "shm"])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            said,
        )
    };
    for (gpus, visible, listed) in [
        ("1", "3\n", r#"GPUs ["3"]"#),
        ("2", "3,GPU-5\n", r#"GPUs ["3", "GPU-5"]"#),
        ("0", "\n", "GPUs []"),
    ] {
        let (code, stdout, stderr) = invoke(gpus);
        assert_eq!(code, Some(0), "--gpus {gpus}: {stderr}");
        assert_eq!(stdout, visible, "--gpus {gpus}");
        assert!(stderr.contains(listed), "--gpus {gpus}: {stderr}");
    }
    let (code, _, stderr) = invoke("3");
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("leasing a core and 3 GPU(s)") && stderr.contains("3 GPUs"),
        "{stderr}"
    );
    let out = std::process::Command::new(RAFI)
        .args([
            "invoke",
            "visible_gpus",
            "--gpus",
            "1",
            "--executor",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("--gpus leases GPUs"), "{said}");
    none_leased(&rm);
}
