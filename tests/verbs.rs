//! Smoke tests of the verbs backend over the fabric traits: two queue pairs of one device
//! connected to each other (loopback), every operation, the error cases.
//!
//! Without an RDMA device they print a skip line and pass, unless `RAFI_RXE_VM` (set by
//! scripts/rxe-vm.sh) or `RAFI_REQUIRE_VERBS` is set: then a missing device fails them, and
//! in the VM the device opened must be rxe0. Run them on soft-RoCE with
//! `cargo test --features verbs --test verbs --no-run` and
//! `scripts/rxe-vm.sh target/debug/deps/verbs-HASH` (scripts/test.sh does).
#![cfg(feature = "verbs")]

use std::time::{Duration, Instant};

use rafi::fabric::verbs::{self, Device};
use rafi::fabric::{
    Access, CompletionChannel, CompletionQueue, Fabric, FabricConfig, FabricError, FabricKind,
    FabricUser, MemoryRegion, PostError, ProtectionDomain, QpConfig, QpState, QueuePair, RecvWr,
    RemoteAddr, SendOp, SendWr, VerbsConfig, WaitError, WcOpcode, WcStatus, WorkCompletion,
};

/// Generous: rxe under qemu's emulation takes milliseconds per operation.
const TIMEOUT: Duration = Duration::from_secs(10);

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Whether a missing device is a failure rather than a skip.
fn required() -> bool {
    env_set("RAFI_RXE_VM") || env_set("RAFI_REQUIRE_VERBS")
}

/// The device of `RAFI_RDMA_*`, or `None` (after a skip line) where there is none.
fn device(test: &str) -> Option<Device> {
    match Device::open(&VerbsConfig::from_env()) {
        Ok(d) => {
            if env_set("RAFI_RXE_VM") {
                assert_eq!(d.name(), "rxe0", "in the rxe VM the device must be rxe0");
            }
            Some(d)
        }
        Err(e) if required() => panic!("{test}: no verbs device, but one is required: {e}"),
        Err(e) => {
            println!("skipped {test}: no verbs device here ({e})");
            None
        }
    }
}

/// Two connected queue pairs on one device, each with its own queues; b's receive queue
/// has a completion channel.
struct Pair {
    a: verbs::QueuePair,
    b: verbs::QueuePair,
    a_cq: verbs::CompletionQueue,
    b_cq: verbs::CompletionQueue,
    channel: verbs::CompletionChannel,
    pd: verbs::ProtectionDomain,
    dev: Device,
}

fn pair(dev: Device, config: QpConfig) -> Pair {
    let pd = dev.alloc_pd().unwrap();
    let channel = dev.create_channel().unwrap();
    let a_cq = dev.create_cq(512, None).unwrap();
    let b_cq = dev.create_cq(512, Some(&channel)).unwrap();
    let mut a = pd.create_qp(&a_cq, &a_cq, config).unwrap();
    let mut b = pd.create_qp(&b_cq, &b_cq, config).unwrap();
    assert_eq!(a.state(), QpState::Init);
    let (ea, eb) = (a.endpoint(), b.endpoint());
    assert_eq!(ea.kind(), FabricKind::Verbs);
    a.connect(&eb).unwrap();
    b.connect(&ea).unwrap();
    assert_eq!(a.state(), QpState::ReadyToSend);
    Pair {
        a,
        b,
        a_cq,
        b_cq,
        channel,
        pd,
        dev,
    }
}

/// The next completion of `cq`, polling until [`TIMEOUT`].
fn next(cq: &mut impl CompletionQueue) -> WorkCompletion {
    next_within(cq, TIMEOUT)
}

fn next_within(cq: &mut impl CompletionQueue, timeout: Duration) -> WorkCompletion {
    let deadline = Instant::now() + timeout;
    let mut wc = [WorkCompletion::default()];
    loop {
        if cq.poll(&mut wc) == 1 {
            return wc[0];
        }
        assert!(
            Instant::now() < deadline,
            "no completion within {TIMEOUT:?}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn open_and_register() {
    let Some(dev) = device("open_and_register") else {
        return;
    };
    println!("opened {dev:?}, max inline {} B", dev.max_inline_data());
    assert_eq!(dev.kind(), FabricKind::Verbs);
    if env_set("RAFI_RXE_VM") {
        // The default GID choice is the RoCE v2 IPv4 GID that the VM found.
        let want: u8 = std::env::var("RAFI_RDMA_GID_INDEX")
            .unwrap()
            .parse()
            .unwrap();
        let default = Device::open(&VerbsConfig::default()).unwrap();
        assert_eq!(default.name(), "rxe0");
        let (index, gid) = default.gid();
        assert_eq!(index, want, "default GID index");
        assert_eq!(&gid[10..], &[0xff, 0xff, 10, 77, 0, 1], "GID {gid:x?}");
        assert!(dev.is_roce());
    }
    let pd = dev.alloc_pd().unwrap();
    let mr = pd.register(1 << 20, Access::ALL).unwrap();
    assert_eq!(mr.len(), 1 << 20);
    assert_eq!(mr.addr() % 4096, 0);
    assert!(mr.to_vec().iter().all(|&b| b == 0), "regions start zeroed");
    mr.write(100, b"hello");
    let mut out = [0; 5];
    mr.read(100, &mut out);
    assert_eq!(&out, b"hello");
    assert!(matches!(
        pd.register(0, Access::ALL),
        Err(FabricError::Config(_))
    ));
    let odd = pd.register(5000, Access::LOCAL_WRITE).unwrap();
    assert_eq!(odd.len(), 5000);
    // A bad device name, port or GID index is a configuration error, not a panic.
    for config in [
        VerbsConfig {
            device: Some("no-such-device".into()),
            ..VerbsConfig::default()
        },
        VerbsConfig {
            device: Some(dev.name().into()),
            port: 9,
            ..VerbsConfig::default()
        },
        VerbsConfig {
            device: Some(dev.name().into()),
            gid_index: Some(250),
            ..VerbsConfig::default()
        },
    ] {
        let e = Device::open(&config).unwrap_err();
        assert!(matches!(e, FabricError::Config(_)), "{config:?}: {e}");
    }
    // And through the dispatching `open`.
    struct Kind;
    impl FabricUser for Kind {
        type Output = FabricKind;
        fn run<F: Fabric>(self, fabric: F) -> FabricKind {
            fabric.kind()
        }
    }
    let config = FabricConfig::new(FabricKind::Verbs);
    assert_eq!(
        rafi::fabric::open(&config, Kind).unwrap(),
        FabricKind::Verbs
    );
}

#[test]
fn write_with_imm_send_and_inline() {
    let Some(dev) = device("write_with_imm_send_and_inline") else {
        return;
    };
    let mut p = pair(dev, QpConfig::default());
    let src = p.pd.register(4096, Access::LOCAL_WRITE).unwrap();
    let dst = p.pd.register(4096, Access::ALL).unwrap();
    src.write(0, &[7; 64]);

    // WRITE_WITH_IMM into b's region consumes an empty receive; b sleeps on its channel.
    p.b.post_recv(&RecvWr { wr_id: 1, sgl: &[] }).unwrap();
    let op = SendOp::WriteWithImm {
        remote: dst.remote(128),
        imm: 0xdead_beef,
    };
    p.a.post_send(&SendWr::new(10, op, &[src.sge(0, 64)]))
        .unwrap();
    let mut wc = [WorkCompletion::default(); 4];
    let n = p.b_cq.wait(&mut wc, Some(TIMEOUT)).unwrap();
    assert_eq!(n, 1);
    assert_eq!(wc[0].status, WcStatus::Success, "{:?}", wc[0]);
    assert_eq!(wc[0].opcode, WcOpcode::RecvRdmaWithImm);
    assert_eq!(wc[0].imm, Some(0xdead_beef));
    assert_eq!(wc[0].byte_len, 64);
    assert_eq!(wc[0].wr_id, 1);
    assert_eq!(wc[0].qp_num, p.b.qp_num());
    let mut got = [0; 64];
    dst.read(128, &mut got);
    assert_eq!(got, [7; 64]);
    let s = next(&mut p.a_cq);
    assert_eq!(
        (s.wr_id, s.status, s.opcode),
        (10, WcStatus::Success, WcOpcode::RdmaWrite)
    );
    assert_eq!(s.qp_num, p.a.qp_num());

    // SEND_WITH_IMM into a posted buffer, inline.
    p.b.post_recv(&RecvWr {
        wr_id: 2,
        sgl: &[dst.sge(1024, 256)],
    })
    .unwrap();
    let op = SendOp::SendWithImm { imm: 42 };
    p.a.post_send(&SendWr::inline(11, op, b"inline hello"))
        .unwrap();
    let r = next(&mut p.b_cq);
    assert_eq!(
        (r.wr_id, r.status, r.opcode),
        (2, WcStatus::Success, WcOpcode::Recv)
    );
    assert_eq!((r.imm, r.byte_len), (Some(42), 12));
    let mut got = [0; 12];
    dst.read(1024, &mut got);
    assert_eq!(&got, b"inline hello");
    assert_eq!(next(&mut p.a_cq).opcode, WcOpcode::Send);

    // An unsignaled WRITE produces no completion; a later signaled one does.
    src.write(0, b"abcd");
    let sgl = [src.sge(0, 4)];
    let w = SendWr::new(
        12,
        SendOp::Write {
            remote: dst.remote(0),
        },
        &sgl,
    );
    p.a.post_send(&w.unsignaled()).unwrap();
    p.a.post_send(&SendWr::new(
        13,
        SendOp::Write {
            remote: dst.remote(4),
        },
        &[src.sge(0, 4)],
    ))
    .unwrap();
    assert_eq!(next(&mut p.a_cq).wr_id, 13);
    let mut got = [0; 8];
    dst.read(0, &mut got);
    assert_eq!(&got, b"abcdabcd");

    // Refused before posting.
    let too_big = vec![0u8; p.dev.max_inline_data() as usize + 1];
    let e =
        p.a.post_send(&SendWr::inline(14, SendOp::Send, &too_big))
            .unwrap_err();
    assert!(matches!(e, PostError::InlineTooLarge { .. }), "{e}");
    let e =
        p.a.post_send(&SendWr::inline(
            15,
            SendOp::Read {
                remote: dst.remote(0),
            },
            b"x",
        ))
        .unwrap_err();
    assert_eq!(e, PostError::InlineNotAllowed);
    let sges = [src.sge(0, 8); 5];
    let e =
        p.a.post_send(&SendWr::new(16, SendOp::Send, &sges))
            .unwrap_err();
    assert!(matches!(e, PostError::TooManySge { given: 5, .. }), "{e}");
    let mut c =
        p.pd.create_qp(&p.a_cq, &p.a_cq, QpConfig::default())
            .unwrap();
    let e = c
        .post_send(&SendWr::new(17, SendOp::Send, &[]))
        .unwrap_err();
    assert_eq!(e, PostError::NotConnected);
    // Receives may be posted before connect.
    c.post_recv(&RecvWr { wr_id: 1, sgl: &[] }).unwrap();
}

#[test]
fn read_and_atomics() {
    let Some(dev) = device("read_and_atomics") else {
        return;
    };
    let mut p = pair(dev, QpConfig::default());
    let local = p.pd.register(4096, Access::LOCAL_WRITE).unwrap();
    let remote = p.pd.register(4096, Access::ALL).unwrap();
    remote.write(256, b"read me please");
    let op = SendOp::Read {
        remote: remote.remote(256),
    };
    p.a.post_send(&SendWr::new(1, op, &[local.sge(0, 14)]))
        .unwrap();
    let wc = next(&mut p.a_cq);
    assert_eq!(
        (wc.status, wc.opcode, wc.byte_len),
        (WcStatus::Success, WcOpcode::RdmaRead, 14)
    );
    let mut got = [0; 14];
    local.read(0, &mut got);
    assert_eq!(&got, b"read me please");

    let word = remote.atomic_u64(512);
    word.store(40, std::sync::atomic::Ordering::SeqCst);
    let op = SendOp::FetchAdd {
        remote: remote.remote(512),
        add: 2,
    };
    p.a.post_send(&SendWr::new(2, op, &[local.sge(64, 8)]))
        .unwrap();
    let wc = next(&mut p.a_cq);
    assert_eq!(
        (wc.status, wc.opcode),
        (WcStatus::Success, WcOpcode::FetchAdd)
    );
    assert_eq!(
        local
            .atomic_u64(64)
            .load(std::sync::atomic::Ordering::SeqCst),
        40
    );
    assert_eq!(word.load(std::sync::atomic::Ordering::SeqCst), 42);

    for (compare, expect_old, expect_new) in [(42, 42, 7), (42, 7, 7)] {
        let op = SendOp::CmpSwap {
            remote: remote.remote(512),
            compare,
            swap: 7,
        };
        p.a.post_send(&SendWr::new(3, op, &[local.sge(72, 8)]))
            .unwrap();
        let wc = next(&mut p.a_cq);
        assert_eq!(
            (wc.status, wc.opcode),
            (WcStatus::Success, WcOpcode::CmpSwap)
        );
        assert_eq!(
            local
                .atomic_u64(72)
                .load(std::sync::atomic::Ordering::SeqCst),
            expect_old
        );
        assert_eq!(word.load(std::sync::atomic::Ordering::SeqCst), expect_new);
    }
    let op = SendOp::FetchAdd {
        remote: remote.remote(512),
        add: 1,
    };
    let e =
        p.a.post_send(&SendWr::new(4, op, &[local.sge(0, 4)]))
            .unwrap_err();
    assert_eq!(e, PostError::BadAtomicSgl);
}

#[test]
fn bad_rkey_is_a_remote_access_error_then_flush() {
    let Some(dev) = device("bad_rkey_is_a_remote_access_error_then_flush") else {
        return;
    };
    let mut p = pair(dev, QpConfig::default());
    let local = p.pd.register(4096, Access::LOCAL_WRITE).unwrap();
    let remote = p.pd.register(4096, Access::REMOTE_READ).unwrap();
    remote.write(0, &[9; 16]);
    let bad = RemoteAddr {
        addr: remote.addr(),
        rkey: remote.rkey() ^ 0x5a5a_0000,
    };
    p.a.post_send(&SendWr::new(
        1,
        SendOp::Write { remote: bad },
        &[local.sge(0, 16)],
    ))
    .unwrap();
    let wc = next(&mut p.a_cq);
    assert_eq!(
        (wc.wr_id, wc.status),
        (1, WcStatus::RemoteAccessError),
        "{wc:?}"
    );
    assert_eq!(p.a.state(), QpState::Error);
    // Everything after is flushed, signaled or not.
    let sgl = [local.sge(0, 16)];
    let w = SendWr::new(
        2,
        SendOp::Write {
            remote: remote.remote(0),
        },
        &sgl,
    );
    match p.a.post_send(&w.unsignaled()) {
        Ok(()) => {
            let wc = next(&mut p.a_cq);
            assert_eq!((wc.wr_id, wc.status), (2, WcStatus::WrFlushError));
        }
        Err(e) => panic!("posting to a queue pair in error must flush, not fail: {e}"),
    }
    assert_eq!(remote.to_vec()[..16], [9; 16], "target memory untouched");

    // A write into a region without REMOTE_WRITE fails the same way, on a fresh pair.
    let mut q = pair(p.dev.clone(), QpConfig::default());
    let local = q.pd.register(4096, Access::LOCAL_WRITE).unwrap();
    let remote = q.pd.register(4096, Access::REMOTE_READ).unwrap();
    let sgl = [local.sge(0, 16)];
    let w = SendWr::new(
        3,
        SendOp::Write {
            remote: remote.remote(0),
        },
        &sgl,
    );
    q.a.post_send(&w).unwrap();
    assert_eq!(next(&mut q.a_cq).status, WcStatus::RemoteAccessError);
    // Receives of a queue pair put in error are flushed.
    q.b.post_recv(&RecvWr {
        wr_id: 77,
        sgl: &[],
    })
    .unwrap();
    q.b.set_error();
    assert_eq!(q.b.state(), QpState::Error);
    let wc = next(&mut q.b_cq);
    assert_eq!((wc.wr_id, wc.status), (77, WcStatus::WrFlushError));
}

#[test]
fn dead_peer_is_retry_exceeded_then_flush() {
    let Some(dev) = device("dead_peer_is_retry_exceeded_then_flush") else {
        return;
    };
    let p = pair(dev, QpConfig::default());
    let Pair {
        mut a,
        b,
        mut a_cq,
        pd,
        ..
    } = p;
    let local = pd.register(4096, Access::LOCAL_WRITE).unwrap();
    let remote = pd.register(4096, Access::ALL).unwrap();
    drop(b);
    let start = Instant::now();
    a.post_send(&SendWr::new(
        1,
        SendOp::Write {
            remote: remote.remote(0),
        },
        &[local.sge(0, 8)],
    ))
    .unwrap();
    a.post_send(&SendWr::new(
        2,
        SendOp::Write {
            remote: remote.remote(8),
        },
        &[local.sge(0, 8)],
    ))
    .unwrap();
    let wc = next_within(&mut a_cq, TIMEOUT);
    let took = start.elapsed();
    println!("first completion after {took:?}: {wc:?}");
    assert_eq!(
        (wc.wr_id, wc.status),
        (1, WcStatus::RetryExceeded),
        "{wc:?}"
    );
    println!("dead peer noticed after {took:?}");
    // Under emulation the guest's clock is honest but slow to act: allow some slack.
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let wc = next(&mut a_cq);
    assert_eq!((wc.wr_id, wc.status), (2, WcStatus::WrFlushError));
}

#[test]
fn rnr_retry_is_finite() {
    let Some(dev) = device("rnr_retry_is_finite") else {
        return;
    };
    let config = QpConfig {
        rnr_retry: 1,
        rnr_timer: Duration::from_millis(1),
        ..QpConfig::default()
    };
    let mut p = pair(dev, config);
    let src = p.pd.register(4096, Access::LOCAL_WRITE).unwrap();
    // No receive posted at b.
    p.a.post_send(&SendWr::new(1, SendOp::Send, &[src.sge(0, 8)]))
        .unwrap();
    let wc = next(&mut p.a_cq);
    assert_eq!(
        (wc.wr_id, wc.status),
        (1, WcStatus::RnrRetryExceeded),
        "{wc:?}"
    );
}

#[test]
fn channel_is_non_blocking_and_times_out() {
    let Some(dev) = device("channel_is_non_blocking_and_times_out") else {
        return;
    };
    let mut p = pair(dev, QpConfig::default());
    let fd = p.channel.as_raw_fd();
    assert!(fd >= 0);
    let start = Instant::now();
    let e = p
        .channel
        .get_event(Some(Duration::from_millis(50)))
        .unwrap_err();
    assert!(matches!(e, WaitError::Timeout(_)), "{e}");
    assert!(start.elapsed() >= Duration::from_millis(50));
    let mut wc = [WorkCompletion::default()];
    let e = p
        .b_cq
        .wait(&mut wc, Some(Duration::from_millis(20)))
        .unwrap_err();
    assert!(matches!(e, WaitError::Timeout(_)), "{e}");
    let e = p
        .a_cq
        .wait(&mut wc, Some(Duration::from_millis(20)))
        .unwrap_err();
    assert!(matches!(e, WaitError::NoChannel), "{e}");
    // Armed, then an event: get_event reports it.
    p.b.post_recv(&RecvWr { wr_id: 5, sgl: &[] }).unwrap();
    p.b_cq.arm();
    let dst = p.pd.register(4096, Access::ALL).unwrap();
    let op = SendOp::WriteWithImm {
        remote: dst.remote(0),
        imm: 1,
    };
    p.a.post_send(&SendWr::inline(1, op, b"x")).unwrap();
    assert!(p.channel.get_event(Some(TIMEOUT)).unwrap() >= 1);
    assert_eq!(next(&mut p.b_cq).wr_id, 5);
}

/// Re-runs this test binary with `RAFI_LIBIBVERBS` pointing at a file that does not exist
/// (the library is loaded once per process, so it needs a process of its own).
#[test]
fn missing_libibverbs_is_a_clear_error_and_shm_still_works() {
    if std::env::var_os("RAFI_VERBS_TEST_CHILD").is_some() {
        return missing_library_child();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "missing_libibverbs_is_a_clear_error_and_shm_still_works",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RAFI_VERBS_TEST_CHILD", "1")
        .env("RAFI_LIBIBVERBS", "/nonexistent/libibverbs.so.1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("child: verbs error:"), "{text}");
}

fn missing_library_child() {
    let config = FabricConfig::new(FabricKind::Verbs);
    struct Probe;
    impl FabricUser for Probe {
        type Output = u32;
        fn run<F: Fabric>(self, fabric: F) -> u32 {
            let pd = fabric.alloc_pd().unwrap();
            let mr = pd.register(4096, Access::ALL).unwrap();
            mr.write(0, b"ok");
            mr.lkey()
        }
    }
    let e = rafi::fabric::open(&config, Probe).unwrap_err();
    let text = e.to_string();
    println!("child: verbs error: {text}");
    assert!(matches!(e, FabricError::Unavailable { .. }), "{e:?}");
    for needle in [
        "/nonexistent/libibverbs.so.1",
        "apt-get install libibverbs1 ibverbs-providers",
        "scripts/rxe-vm.sh",
        "scripts/setup-rxe.sh",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    // The shm fabric works in the same process.
    rafi::fabric::open(&FabricConfig::new(FabricKind::Shm), Probe).unwrap();
}
