//! The same semantics across two (or more) processes: every operation, the error cases, a
//! peer killed mid-stream, and atomics from several processes on one word.
//!
//! Children are this test binary re-run with `RDMA_MOCK_TEST_ROLE` set (see `child_main`);
//! they talk to the parent in JSON lines over stdin and stdout.

mod common;

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rdma_mock::*;
use serde::{Deserialize, Serialize};

on_both_fabrics!(
    operations_across_processes,
    errors_across_processes,
    killed_peer_flushes_outstanding_work,
    atomics_from_several_processes_are_exact,
);

/// Where the responder keeps its receive buffers (1 KiB each) in its region.
const RECV_BASE: usize = 32 * 1024;
const REGION_LEN: usize = 64 * 1024;

#[derive(Serialize, Deserialize, Debug)]
struct Hello {
    endpoint: Endpoint,
    region: RegionInfo,
}

/// A receive completion as the responder reports it.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
struct Wc {
    wr_id: u64,
    status: String,
    opcode: String,
    byte_len: u32,
    imm: Option<u32>,
}

fn quick_rnr() -> QpConfig {
    QpConfig {
        rnr_retry: 2,
        rnr_timer: Duration::from_millis(2),
        ..QpConfig::default()
    }
}

/// Starts a responder child with `recvs` receives posted and connects to it.
fn connect_responder(fabric: Fabric, recvs: usize) -> (Side, Peer, RegionInfo) {
    connect_responder_with(fabric, recvs, "all")
}

/// The same, with the responder's region registered with `access` ("all" or "read-only").
fn connect_responder_with(fabric: Fabric, recvs: usize, access: &str) -> (Side, Peer, RegionInfo) {
    let mut side = Side::new(fabric, quick_rnr());
    let env = [
        ("FABRIC", fabric.to_string()),
        ("RECVS", recvs.to_string()),
        ("ACCESS", access.to_string()),
    ];
    let mut peer = Peer::spawn("responder", &env);
    let hello = link_to_responder(&mut side, &mut peer);
    (side, peer, hello.region)
}

/// Exchanges hellos with a responder child and connects `side` to it; returns its hello.
fn link_to_responder(side: &mut Side, peer: &mut Peer) -> Hello {
    let hello: Hello = peer.recv_json();
    let local = side.region(64);
    peer.send_json(&Hello {
        endpoint: side.qp.endpoint(),
        region: RegionInfo::of(&local),
    });
    side.qp
        .connect(&hello.endpoint)
        .expect("connect to responder");
    assert_eq!(peer.recv(), "connected");
    hello
}

fn dump(peer: &mut Peer, offset: usize, len: usize) -> Vec<u8> {
    peer.send(&format!("dump {offset} {len}"));
    peer.recv_json()
}

fn operations_across_processes(fabric: Fabric) {
    let (mut a, mut peer, region) = connect_responder(fabric, 4);
    let local = a.region(8192);

    // WRITE.
    local.write(0, &pattern(1000, 5));
    a.post(SendWr::new(
        1,
        SendOp::Write {
            remote: region.at(0),
        },
        &[local.sge(0, 1000)],
    ));
    assert_eq!(
        (a.next_wc().wr_id, dump(&mut peer, 0, 1000)),
        (1, pattern(1000, 5))
    );

    // WRITE_WITH_IMM: the responder's receive completes with the immediate.
    a.post(SendWr::inline(
        2,
        SendOp::WriteWithImm {
            remote: region.at(2000),
            imm: 0xabcd,
        },
        b"imm-data",
    ));
    assert!(a.next_wc().is_ok());
    let wc: Wc = peer.recv_json();
    assert_eq!(
        (wc.wr_id, wc.opcode.as_str(), wc.byte_len, wc.imm),
        (0, "RecvRdmaWithImm", 8, Some(0xabcd))
    );
    assert_eq!(dump(&mut peer, 2000, 8), b"imm-data");

    // SEND into the next receive's buffer.
    local.write(4096, &pattern(300, 9));
    a.post(SendWr::new(
        3,
        SendOp::SendWithImm { imm: 7 },
        &[local.sge(4096, 300)],
    ));
    assert!(a.next_wc().is_ok());
    let wc: Wc = peer.recv_json();
    assert_eq!(
        (
            wc.wr_id,
            wc.status.as_str(),
            wc.opcode.as_str(),
            wc.byte_len,
            wc.imm
        ),
        (1, "Success", "Recv", 300, Some(7))
    );
    assert_eq!(dump(&mut peer, RECV_BASE + 1024, 300), pattern(300, 9));

    // READ back what the WRITE put there.
    a.post(SendWr::new(
        4,
        SendOp::Read {
            remote: region.at(0),
        },
        &[local.sge(2048, 1000)],
    ));
    assert_eq!(a.next_wc().byte_len, 1000);
    assert_eq!(&local.to_vec()[2048..3048], &pattern(1000, 5)[..]);

    // Atomics.
    a.post(SendWr::new(
        5,
        SendOp::FetchAdd {
            remote: region.at(8192),
            add: 40,
        },
        &[local.sge(0, 8)],
    ));
    assert!(a.next_wc().is_ok());
    a.post(SendWr::new(
        6,
        SendOp::CmpSwap {
            remote: region.at(8192),
            compare: 40,
            swap: 2,
        },
        &[local.sge(8, 8)],
    ));
    assert!(a.next_wc().is_ok());
    assert_eq!(local.atomic_u64(0).load(Ordering::SeqCst), 0);
    assert_eq!(local.atomic_u64(8).load(Ordering::SeqCst), 40);
    assert_eq!(dump(&mut peer, 8192, 8), 2u64.to_le_bytes());

    peer.send("quit");
    peer.wait_success();
}

fn errors_across_processes(fabric: Fabric) {
    // Bad rkey: refused, and the target's memory is untouched.
    let (mut a, mut peer, region) = connect_responder(fabric, 1);
    let bad = RemoteAddr {
        addr: region.addr,
        rkey: region.rkey ^ 0x7000,
    };
    a.post(SendWr::inline(1, SendOp::Write { remote: bad }, b"forged"));
    assert_eq!(a.next_wc().status, WcStatus::RemoteAccessError);
    a.post(SendWr::inline(
        2,
        SendOp::Write {
            remote: region.at(0),
        },
        b"after",
    ));
    assert_eq!(a.next_wc().status, WcStatus::WrFlushError);
    assert!(
        dump(&mut peer, 0, 64).iter().all(|&x| x == 0),
        "target memory changed"
    );

    // Out of bounds, by one byte.
    let (mut a, mut peer, region) = connect_responder(fabric, 1);
    a.post(SendWr::inline(
        1,
        SendOp::Write {
            remote: region.at(REGION_LEN - 3),
        },
        b"four",
    ));
    assert_eq!(a.next_wc().status, WcStatus::RemoteAccessError);
    assert!(
        dump(&mut peer, REGION_LEN - 64, 64).iter().all(|&x| x == 0),
        "target memory changed"
    );

    // Receiver not ready: one receive posted, the second message finds none.
    let (mut a, mut peer, region) = connect_responder(fabric, 1);
    a.post(SendWr::inline(
        1,
        SendOp::WriteWithImm {
            remote: region.at(0),
            imm: 1,
        },
        b"one",
    ));
    a.post(SendWr::inline(
        2,
        SendOp::WriteWithImm {
            remote: region.at(8),
            imm: 2,
        },
        b"two",
    ));
    assert!(a.next_wc().is_ok());
    assert_eq!(a.next_wc().status, WcStatus::RnrRetryExceeded);
    let wc: Wc = peer.recv_json();
    assert_eq!(wc.imm, Some(1));
    assert_eq!(dump(&mut peer, 8, 3), [0, 0, 0]);

    // Missing rights on a read-only region: WRITE and FETCH_ADD refused, READ allowed.
    for op in ["write", "fetch-add"] {
        let (mut a, mut peer, region) = connect_responder_with(fabric, 1, "read-only");
        let local = a.region(64);
        let result_sge = [local.sge(0, 8)];
        let wr = match op {
            "write" => SendWr::inline(
                1,
                SendOp::Write {
                    remote: region.at(0),
                },
                b"nope",
            ),
            _ => SendWr::new(
                1,
                SendOp::FetchAdd {
                    remote: region.at(0),
                    add: 1,
                },
                &result_sge,
            ),
        };
        a.post(wr);
        assert_eq!(a.next_wc().status, WcStatus::RemoteAccessError, "{op}");
        assert!(
            dump(&mut peer, 0, 8).iter().all(|&x| x == 0),
            "{op} changed the target"
        );
    }
    let (mut a, _peer, region) = connect_responder_with(fabric, 1, "read-only");
    let local = a.region(64);
    a.post(SendWr::new(
        1,
        SendOp::Read {
            remote: region.at(0),
        },
        &[local.sge(0, 64)],
    ));
    assert!(a.next_wc().is_ok());
}

fn killed_peer_flushes_outstanding_work(fabric: Fabric) {
    let mut a = Side::new(fabric, QpConfig::default());
    let target = a.region(4096);
    let mut peer = Peer::spawn("streamer", &[("FABRIC", fabric.to_string())]);
    let hello: Hello = peer.recv_json();
    peer.send_json(&Hello {
        endpoint: a.qp.endpoint(),
        region: RegionInfo::of(&target),
    });
    // Receives first (a queue pair takes them before it is connected): the streamer starts
    // writing as soon as the connection is up, and on a loaded host it must not run out of
    // receiver-not-ready retries before they are there.
    const POSTED: u64 = 32;
    for id in 0..POSTED {
        a.post_recv(id, &[]);
    }
    a.qp.connect(&hello.endpoint).expect("connect");
    // Take a stream of messages, reposting, then kill the sender mid-stream.
    let mut next_id = POSTED;
    let mut received = 0;
    while received < 200 {
        let wc = a.next_wc();
        assert!(wc.is_ok(), "{wc:?}");
        received += 1;
        a.post_recv(next_id, &[]);
        next_id += 1;
    }
    let local = a.region(64);
    if fabric == Fabric::Tcp {
        // Freeze the peer so a READ stays outstanding, then kill it.
        // SAFETY: sends SIGSTOP to our own child, whose pid stays ours until we reap it.
        let rc = unsafe { libc::kill(peer.child.id() as libc::pid_t, libc::SIGSTOP) };
        assert_eq!(rc, 0, "SIGSTOP failed");
        wait_until_stopped(peer.child.id());
        a.post(SendWr::new(
            999,
            SendOp::Read {
                remote: hello.region.at(0),
            },
            &[local.sge(0, 8)],
        ));
    }
    peer.kill();
    let killed_at = Instant::now();
    // Every receive still posted completes, in order: a few delivered by messages that were
    // in flight, then the rest flushed; the outstanding READ completes too. A blocking wait
    // wakes for them.
    let mut expect = received;
    let mut flushing = false;
    let mut read_status = None;
    let mut wc = [WorkCompletion::default(); 16];
    while expect < next_id || (fabric == Fabric::Tcp && read_status.is_none()) {
        let n =
            a.cq.wait(&mut wc, Some(Duration::from_secs(5)))
                .expect("outstanding work hangs after the kill");
        for w in &wc[..n] {
            if w.wr_id == 999 {
                read_status = Some(w.status);
                continue;
            }
            assert_eq!(w.wr_id, expect, "receive completions out of order");
            expect += 1;
            flushing |= w.status == WcStatus::WrFlushError;
            assert_eq!(
                w.status,
                if flushing {
                    WcStatus::WrFlushError
                } else {
                    WcStatus::Success
                },
                "{w:?}"
            );
        }
    }
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    if let Some(status) = read_status {
        assert_eq!(status, WcStatus::RetryExceeded);
    }
    assert_eq!(a.qp.state(), QpState::Error);
    // New work towards the dead peer fails at once.
    a.post(SendWr::inline(
        1000,
        SendOp::Write {
            remote: hello.region.at(0),
        },
        b"x",
    ));
    let w = a.next_wc();
    assert!(
        matches!(w.status, WcStatus::WrFlushError | WcStatus::RetryExceeded),
        "{w:?}"
    );
}

/// Waits until every thread of process `pid` is stopped: kill(SIGSTOP) returns before they
/// are, and a thread still running could answer a request meanwhile.
fn wait_until_stopped(pid: u32) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the child's threads");
        let all_stopped = tasks.flatten().all(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // The state follows the parenthesised command name: "pid (comm) T ...".
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        });
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "child {pid} did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn atomics_from_several_processes_are_exact(fabric: Fabric) {
    const CHILDREN: usize = 3;
    const ITERS: u64 = 500;
    let dev = Device::open(DeviceConfig::new(fabric)).expect("device");
    let pd = dev.alloc_pd().expect("pd");
    let cq = dev.create_cq(None).expect("cq");
    let counters = pd.register(64, Access::ALL).expect("region");
    let mut peers = Vec::new();
    let mut qps = Vec::new();
    for _ in 0..CHILDREN {
        let mut qp = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
        let mut peer = Peer::spawn(
            "adder",
            &[("FABRIC", fabric.to_string()), ("ITERS", ITERS.to_string())],
        );
        let hello: Hello = peer.recv_json();
        peer.send_json(&Hello {
            endpoint: qp.endpoint(),
            region: RegionInfo::of(&counters),
        });
        qp.connect(&hello.endpoint).expect("connect adder");
        peers.push(peer);
        qps.push(qp);
    }
    for peer in &mut peers {
        peer.send("go");
    }
    let mut olds = Vec::new();
    for peer in &mut peers {
        let mine: Vec<u64> = peer.recv_json();
        assert_eq!(mine.len() as u64, ITERS);
        olds.extend(mine);
        peer.wait_success();
    }
    let total = CHILDREN as u64 * ITERS;
    assert_eq!(
        counters.atomic_u64(0).load(Ordering::SeqCst),
        total,
        "FETCH_ADD total"
    );
    assert_eq!(
        counters.atomic_u64(8).load(Ordering::SeqCst),
        total,
        "CMP_SWAP increments total"
    );
    // Every old value FETCH_ADD returned is distinct: each add saw its own predecessor.
    olds.sort_unstable();
    assert_eq!(olds, (0..total).collect::<Vec<_>>());
}

/// A second "host": a network namespace joined to ours by a veth pair, with its own
/// network stack. Removed on drop.
struct TestHost {
    ns: String,
    veth: String,
    our_ip: String,
    its_ip: String,
}

impl TestHost {
    fn create() -> Result<TestHost, String> {
        let pid = std::process::id();
        let subnet = format!("10.213.{}", pid % 250);
        let host = TestHost {
            ns: format!("rafi-test-{pid}"),
            veth: format!("rt{pid}a"),
            our_ip: format!("{subnet}.1"),
            its_ip: format!("{subnet}.2"),
        };
        let peer_veth = format!("rt{pid}b");
        let (ns, veth) = (host.ns.as_str(), host.veth.as_str());
        let our_cidr = format!("{}/24", host.our_ip);
        let its_cidr = format!("{}/24", host.its_ip);
        let steps: [&[&str]; 8] = [
            &["netns", "add", ns],
            &[
                "link", "add", veth, "type", "veth", "peer", "name", &peer_veth,
            ],
            &["link", "set", &peer_veth, "netns", ns],
            &["addr", "add", &our_cidr, "dev", veth],
            &["link", "set", veth, "up"],
            &["-n", ns, "addr", "add", &its_cidr, "dev", &peer_veth],
            &["-n", ns, "link", "set", &peer_veth, "up"],
            &["-n", ns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = std::process::Command::new("ip")
                .args(step)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(host)
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

/// The tcp fabric between two network stacks ("hosts"), over a veth pair rather than
/// loopback, with each device listening on its own non-loopback address.
#[test]
fn tcp_across_network_namespaces() {
    let host = match TestHost::create() {
        Ok(host) => host,
        // Namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN); CI has it and must run this.
        Err(why) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: cannot create a test host in a network namespace: {why}");
            return;
        }
        Err(why) => panic!("CI must be able to create a network namespace: {why}"),
    };
    let mut device = DeviceConfig::new(Fabric::Tcp);
    device.tcp_listen = format!("{}:0", host.our_ip).parse().expect("address");
    let mut a = Side::on(device, quick_rnr());
    let ns = host.ns.clone();
    let env = [
        ("FABRIC", "tcp".to_string()),
        ("RECVS", "4".to_string()),
        ("ACCESS", "all".to_string()),
        ("TCP_LISTEN", format!("{}:0", host.its_ip)),
    ];
    let mut peer = Peer::spawn_via(&["ip", "netns", "exec", &ns], "responder", &env);
    let hello = link_to_responder(&mut a, &mut peer);
    assert!(
        hello.endpoint.address.starts_with(&host.its_ip),
        "{:?}",
        hello.endpoint
    );
    let local = a.region(4096);
    let region = hello.region;

    local.write(0, &pattern(3000, 4));
    a.post(SendWr::new(
        1,
        SendOp::Write {
            remote: region.at(0),
        },
        &[local.sge(0, 3000)],
    ));
    assert!(a.next_wc().is_ok());
    assert_eq!(dump(&mut peer, 0, 3000), pattern(3000, 4));
    a.post(SendWr::inline(
        2,
        SendOp::WriteWithImm {
            remote: region.at(4000),
            imm: 77,
        },
        b"hi",
    ));
    assert!(a.next_wc().is_ok());
    let wc: Wc = peer.recv_json();
    assert_eq!((wc.opcode.as_str(), wc.imm), ("RecvRdmaWithImm", Some(77)));
    a.post(SendWr::new(
        3,
        SendOp::Read {
            remote: region.at(0),
        },
        &[local.sge(3072, 1000)],
    ));
    assert!(a.next_wc().is_ok());
    assert_eq!(&local.to_vec()[3072..4072], &pattern(3000, 4)[..1000]);
    a.post(SendWr::new(
        4,
        SendOp::FetchAdd {
            remote: region.at(8192),
            add: 9,
        },
        &[local.sge(0, 8)],
    ));
    assert!(a.next_wc().is_ok());
    assert_eq!(dump(&mut peer, 8192, 8), 9u64.to_le_bytes());
    peer.send("quit");
    peer.wait_success();
}

/// The shm fabric maps peers' memory into each other, so it refuses processes of another
/// user, in both directions: their hello at our agent, and our dial to their endpoint.
#[test]
fn shm_refuses_peers_of_other_users() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: starting a process as another user needs root (CI runs as root)");
        return;
    }
    const NOBODY: u32 = 65534;
    let mut ours = Side::new(Fabric::Shm, QpConfig::default());
    let secret = ours.region(64);
    secret.write(0, b"not for other users");
    let mut theirs = ours.qp.endpoint();
    // As they would see us: an identity that makes them the dialing side.
    theirs.device = u64::MAX;
    let mut intruder = Peer::spawn_with(
        &[],
        Some(NOBODY),
        "intruder",
        &[("FABRIC", "shm".to_string())],
    );
    let their_endpoint: Endpoint = intruder.recv_json();
    intruder.send_json(&theirs);
    let by_our_agent = intruder.recv();
    assert!(
        by_our_agent.contains("connections from user 65534 are refused"),
        "{by_our_agent}"
    );
    let by_their_library = intruder.recv();
    assert!(
        by_their_library.contains("belongs to user 0"),
        "{by_their_library}"
    );
    // And we refuse to dial them (an identity that makes us the dialing side).
    let mut dial = their_endpoint;
    dial.device = u64::MAX;
    match ours.qp.connect(&dial) {
        Err(ConnectError::Refused(why)) => assert!(why.contains("belongs to user 65534"), "{why}"),
        other => panic!("dialing another user's endpoint: {other:?}"),
    }
    assert_eq!(ours.qp.state(), QpState::Init);
    assert_eq!(&secret.to_vec()[..19], b"not for other users");
}

// ---- child roles ----------------------------------------------------------------------------

/// Entry point of child processes; ignored in normal runs.
#[test]
#[ignore = "entry point of child processes, run by the other tests"]
fn child_main() {
    let role = std::env::var(ROLE_VAR).expect("run by the tests with a role");
    match role.as_str() {
        "responder" => responder(),
        "streamer" => streamer(),
        "adder" => adder(),
        "intruder" => intruder(),
        other => panic!("unknown role {other}"),
    }
}

fn child_side() -> (Side, MemoryRegion) {
    let mut device = DeviceConfig::new(fabric_from_env());
    if let Ok(addr) = std::env::var("TCP_LISTEN") {
        device.tcp_listen = addr.parse().expect("TCP_LISTEN");
    }
    let side = Side::on(device, quick_rnr());
    // ACCESS=read-only leaves out remote writes and atomics.
    let access = match std::env::var("ACCESS").as_deref() {
        Ok("read-only") => Access::LOCAL_WRITE | Access::REMOTE_READ,
        _ => Access::ALL,
    };
    let region = side.pd.register(REGION_LEN, access).expect("region");
    (side, region)
}

fn child_connect(side: &mut Side, region: &MemoryRegion) -> Hello {
    say_json(&Hello {
        endpoint: side.qp.endpoint(),
        region: RegionInfo::of(region),
    });
    let parent: Hello = hear_json();
    side.qp.connect(&parent.endpoint).expect("child connect");
    parent
}

/// Posts `RECVS` receives, reports every completion, and answers `dump` and `quit`.
fn responder() {
    let (mut side, region) = child_side();
    let recvs: usize = std::env::var("RECVS")
        .expect("RECVS")
        .parse()
        .expect("RECVS");
    for i in 0..recvs {
        side.post_recv(i as u64, &[region.sge(RECV_BASE + i * 1024, 1024)]);
    }
    child_connect(&mut side, &region);
    say("connected");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        let line = hear();
        let quit = line == "quit" || line.is_empty();
        if tx.send(line).is_err() || quit {
            return;
        }
    });
    let mut wc = [WorkCompletion::default(); 8];
    loop {
        let n = side.cq.poll(&mut wc);
        for w in &wc[..n] {
            say_json(&Wc {
                wr_id: w.wr_id,
                status: format!("{:?}", w.status),
                opcode: format!("{:?}", w.opcode),
                byte_len: w.byte_len,
                imm: w.imm,
            });
        }
        match rx.try_recv() {
            Ok(line) if line.starts_with("dump ") => {
                let mut parts = line
                    .split_whitespace()
                    .skip(1)
                    .map(|x| x.parse::<usize>().expect("number"));
                let (offset, len) = (parts.next().expect("offset"), parts.next().expect("len"));
                let mut out = vec![0u8; len];
                region.read(offset, &mut out);
                say_json(&out);
            }
            Ok(line) if line == "quit" || line.is_empty() => return,
            Ok(other) => panic!("unknown command {other}"),
            Err(mpsc::TryRecvError::Empty) => std::thread::sleep(Duration::from_micros(200)),
            Err(mpsc::TryRecvError::Disconnected) => return,
        }
    }
}

/// Sends WRITE_WITH_IMM to the parent forever (until killed), pacing itself by the
/// parent's receives (it retries patiently when none is posted).
fn streamer() {
    let (mut side, region) = child_side();
    let patient = QpConfig {
        rnr_retry: 7,
        rnr_timer: Duration::from_millis(50),
        ..QpConfig::default()
    };
    side.qp = side.pd.create_qp(&side.cq, &side.cq, patient).expect("qp");
    let parent = child_connect(&mut side, &region);
    let mut i = 0u64;
    loop {
        let bytes = i.to_le_bytes();
        let mut wr = SendWr::inline(
            i,
            SendOp::WriteWithImm {
                remote: parent.region.at(0),
                imm: i as u32,
            },
            &bytes,
        );
        wr.signaled = i % 8 == 0;
        side.post(wr);
        if wr.signaled {
            let wc = side.next_wc();
            assert!(wc.is_ok(), "streamer: {wc:?}");
        }
        i += 1;
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Runs as another user. Reports what the parent's agent answers to a hello sent by hand
/// (as a hostile client would, bypassing the library's own checks), then what the library
/// says when asked to connect.
fn intruder() {
    use std::io::{Read, Write};
    use std::os::linux::net::SocketAddrExt;
    let mut side = Side::new(fabric_from_env(), QpConfig::default());
    say_json(&side.qp.endpoint());
    let target: Endpoint = hear_json();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(target.address.as_bytes())
        .expect("name");
    let mut raw = std::os::unix::net::UnixStream::connect_addr(&addr).expect("connect");
    // The agent may refuse before reading it (and close): the write can fail, the reply not.
    let _ = raw.write_all(&[0u8; 40]);
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    // A refusal is a 40-byte handshake header followed by the reason.
    say(&String::from_utf8_lossy(
        reply.get(40..).unwrap_or_default(),
    ));
    match side.qp.connect(&target) {
        Err(ConnectError::Refused(why)) => say(&why),
        other => say(&format!("not refused: {other:?}")),
    }
    hear(); // stay up until the parent has dialed our endpoint too
}

/// Adds 1 `ITERS` times with FETCH_ADD to word 0 and with a CMP_SWAP loop to word 1 of the
/// parent's region; reports the old values FETCH_ADD returned.
fn adder() {
    let (mut side, region) = child_side();
    let iters: u64 = std::env::var("ITERS")
        .expect("ITERS")
        .parse()
        .expect("ITERS");
    let parent = child_connect(&mut side, &region);
    assert_eq!(hear(), "go");
    let mut olds = Vec::with_capacity(iters as usize);
    for i in 0..iters {
        side.post(SendWr::new(
            i,
            SendOp::FetchAdd {
                remote: parent.region.at(0),
                add: 1,
            },
            &[region.sge(0, 8)],
        ));
        assert!(side.next_wc().is_ok());
        olds.push(region.atomic_u64(0).load(Ordering::SeqCst));
    }
    let word = parent.region.at(8);
    let mut seen = 0u64;
    for _ in 0..iters {
        loop {
            side.post(SendWr::new(
                0,
                SendOp::CmpSwap {
                    remote: word,
                    compare: seen,
                    swap: seen + 1,
                },
                &[region.sge(8, 8)],
            ));
            assert!(side.next_wc().is_ok());
            let old = region.atomic_u64(8).load(Ordering::SeqCst);
            if old == seen {
                seen += 1;
                break;
            }
            seen = old;
        }
    }
    say_json(&olds);
}
