//! What rdma-mock does beyond the fabric interface's common semantics: its exact limits,
//! its connection set-up, a dead peer noticed without a request, a finite `rnr_retry = 7`,
//! and tcp's ordering of flushes and late answers.
//!
//! Every operation and error case that all backends share is tested once, over the fabric
//! interface, by rafi's conformance suite (tests/conformance/, run against shm, tcp and
//! verbs); what is here is what real verbs does differently or does not promise.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdma_mock::*;

on_both_fabrics!(
    limits_are_exactly_the_ones_asked_for,
    rnr_retry_seven_is_seven_retries_not_forever,
    dead_peer_is_noticed_without_a_request,
    stale_endpoint_is_refused,
    connect_times_out_without_the_peer,
);

/// Verbs devices may round queue depths, SGE and inline limits up; rdma-mock grants exactly
/// what was asked for (the receive depth rounded up to a power of two), and counts unpolled
/// send completions against `max_send_wr`.
fn limits_are_exactly_the_ones_asked_for(fabric: Fabric) {
    let small = QpConfig {
        max_send_wr: 3,
        max_recv_wr: 2,
        max_sge: 2,
        max_inline_data: 16,
        ..QpConfig::default()
    };
    let (mut a, b) = pair_with(fabric, small, small);
    let src = a.region(64);
    let dst = b.region(64);
    let remote = dst.remote(0);
    let sges = [src.sge(0, 1), src.sge(1, 1), src.sge(2, 1)];
    assert_eq!(
        a.qp.post_send(&SendWr::new(0, SendOp::Write { remote }, &sges)),
        Err(PostError::TooManySge { given: 3, max: 2 })
    );
    assert_eq!(
        a.qp.post_recv(&RecvWr {
            wr_id: 0,
            sgl: &sges
        }),
        Err(PostError::TooManySge { given: 3, max: 2 })
    );
    assert_eq!(
        a.qp.post_send(&SendWr::inline(0, SendOp::Write { remote }, &[0; 17])),
        Err(PostError::InlineTooLarge { given: 17, max: 16 })
    );
    // Lengths travel as 32-bit values: totals past MAX_MESSAGE are refused before sending.
    let huge = Sge {
        addr: src.addr(),
        length: 1 << 31,
        lkey: src.lkey(),
    };
    assert_eq!(
        a.qp.post_send(&SendWr::new(0, SendOp::Write { remote }, &[huge, huge])),
        Err(PostError::MessageTooLarge {
            len: 1 << 32,
            max: MAX_MESSAGE
        })
    );
    assert!(matches!(
        a.qp.post_recv(&RecvWr {
            wr_id: 0,
            sgl: &[huge]
        }),
        Err(PostError::MessageTooLarge { .. })
    ));
    a.post_recv(1, &[]);
    a.post_recv(2, &[]);
    assert_eq!(
        a.qp.post_recv(&RecvWr { wr_id: 3, sgl: &[] }),
        Err(PostError::RecvQueueFull(2))
    );
    // max_send_wr = 3 means three unpolled completions, not the ring's power of two. (On
    // tcp they are outstanding or acknowledged but unpolled: refused either way.)
    for i in 0..3 {
        a.post(SendWr::inline(i, SendOp::Write { remote }, b"w"));
    }
    let fourth =
        a.qp.post_send(&SendWr::inline(3, SendOp::Write { remote }, b"w"));
    assert_eq!(fourth, Err(PostError::SendQueueFull(3)));
}

/// On InfiniBand `rnr_retry = 7` retries for ever; in rdma-mock it is seven retries, so a
/// peer that never posts a receive cannot hang a test.
fn rnr_retry_seven_is_seven_retries_not_forever(fabric: Fabric) {
    let seven = QpConfig {
        rnr_retry: 7,
        rnr_timer: Duration::from_millis(2),
        ..QpConfig::default()
    };
    let (mut a, _b) = pair_with(fabric, seven, seven);
    let started = Instant::now();
    a.post(SendWr::inline(1, SendOp::Send, b"anyone?"));
    let wc = a.next_wc();
    assert_eq!((wc.wr_id, wc.status), (1, WcStatus::RnrRetryExceeded));
    // Seven retries 2 ms apart happened before giving up.
    assert!(
        started.elapsed() >= Duration::from_millis(14),
        "gave up after {:?}",
        started.elapsed()
    );
}

/// rdma-mock notices a peer's end at once (the kernel closes its socket) and flushes the
/// posted receives, waking a blocked `wait`, before anything is sent. (On verbs the
/// receives are flushed only once a request towards the peer has timed out.)
fn dead_peer_is_noticed_without_a_request(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    a.post_recv(1, &[]);
    drop(b);
    let mut wc = [WorkCompletion::default(); 1];
    let n = a.cq.wait(&mut wc, Some(TIMEOUT)).expect("flush completion");
    assert_eq!(
        (n, wc[0].wr_id, wc[0].status),
        (1, 1, WcStatus::WrFlushError)
    );
    assert_eq!(a.qp.state(), QpState::Error);
}

fn stale_endpoint_is_refused(fabric: Fabric) {
    let mut a = Side::new(fabric, QpConfig::default());
    let b = Side::new(fabric, QpConfig::default());
    // Smallest possible identity so `a` dials (the larger side would wait instead).
    let mut stale = b.qp.endpoint();
    stale.device = u64::MAX;
    stale.qpn = u32::MAX;
    match a.qp.connect(&stale) {
        Err(ConnectError::Refused(why)) => assert!(why.contains("not here"), "{why}"),
        Err(ConnectError::Timeout(_)) => panic!("dialing side chosen wrongly"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let other = if fabric == Fabric::Shm {
        Fabric::Tcp
    } else {
        Fabric::Shm
    };
    let c = Side::new(other, QpConfig::default());
    assert!(matches!(
        a.qp.connect(&c.qp.endpoint()),
        Err(ConnectError::FabricMismatch { .. })
    ));
}

fn connect_times_out_without_the_peer(fabric: Fabric) {
    let mut config = DeviceConfig::new(fabric);
    config.connect_timeout = Duration::from_millis(100);
    let dev = Device::open(config).expect("device");
    let pd = dev.alloc_pd().expect("pd");
    let cq = dev.create_cq(None).expect("cq");
    let mut qp = pd.create_qp(&cq, &cq, QpConfig::default()).expect("qp");
    // A peer endpoint that sorts below ours, so we are the side that waits to be dialed.
    let mut peer = qp.endpoint();
    peer.device = 0;
    assert!(matches!(qp.connect(&peer), Err(ConnectError::Timeout(_))));
}

/// Both sides stream large signaled writes at each other at once, so each side's progress
/// thread must answer while its own application keeps the socket busy. A fabric whose reader
/// blocks on writing while its peer does the same deadlocks here.
#[test]
fn tcp_large_writes_both_ways_at_once_do_not_deadlock() {
    let (mut a, mut b) = pair(Fabric::Tcp);
    let (a_src, a_dst) = (a.region(1 << 20), a.region(1 << 20));
    let (b_src, b_dst) = (b.region(1 << 20), b.region(1 << 20));
    let (to_b, to_a) = (b_dst.remote(0), a_dst.remote(0));
    let run = |side: &mut Side, src: &MemoryRegion, remote: RemoteAddr| {
        for i in 0..64u64 {
            side.post(SendWr::new(
                i,
                SendOp::Write { remote },
                &[src.sge(0, 1 << 20)],
            ));
            // Keep 32 MiB in flight, far more than the sockets buffer.
            if i % 32 == 31 {
                for _ in 0..32 {
                    assert!(side.next_wc().is_ok());
                }
            }
        }
    };
    let t = std::thread::spawn(move || {
        run(&mut b, &b_src, to_a);
        (b, b_src, b_dst)
    });
    run(&mut a, &a_src, to_b);
    drop(t.join().expect("other direction"));
    drop((a_dst, a));
}

/// rdma-mock's own zero-copy accessors view the region's bytes in place (rafi's conformance
/// suite checks the fabric interface's, with a peer writing between them).
#[test]
fn slices_view_region_bytes_in_place() {
    let side = Side::new(Fabric::Shm, QpConfig::default());
    let region = side.region(4096);
    // SAFETY: nothing else touches the region while the slices live.
    unsafe { region.slice_mut(100, 5) }.copy_from_slice(b"hello");
    assert_eq!(&region.to_vec()[100..105], b"hello");
    region.write(200, b"world");
    // SAFETY: as above.
    assert_eq!(unsafe { region.slice(200, 5) }, b"world");
}

#[test]
#[should_panic(expected = "outside")]
fn slices_are_bounds_checked() {
    let side = Side::new(Fabric::Shm, QpConfig::default());
    let region = side.region(100);
    // SAFETY: not reached: the range is refused first.
    let _ = unsafe { region.slice(50, 51) };
}

/// Fetches completions for a while (for checks of what arrives and in which order).
fn drain(cq: &mut CompletionQueue, span: Duration) -> Vec<(u64, WcStatus)> {
    let mut out = Vec::new();
    let mut wc = [WorkCompletion::default(); 16];
    let until = std::time::Instant::now() + span;
    while std::time::Instant::now() < until {
        let n = cq.poll(&mut wc);
        out.extend(wc[..n].iter().map(|w| (w.wr_id, w.status)));
        std::thread::sleep(Duration::from_millis(1));
    }
    out
}

fn patient() -> QpConfig {
    QpConfig {
        rnr_retry: 7,
        rnr_timer: Duration::from_millis(100),
        ..QpConfig::default()
    }
}

/// tcp: a request still outstanding when the QP is failed by its owner is flushed first,
/// before anything posted later, and is not completed by a late answer from the peer.
#[test]
fn tcp_error_state_flushes_outstanding_requests_in_order() {
    let (mut a, mut b) = pair_with(Fabric::Tcp, patient(), patient());
    a.post(SendWr::inline(1, SendOp::Send, b"old")); // waits at b for a receive
    std::thread::sleep(Duration::from_millis(20));
    a.qp.set_error();
    let dst = b.region(64);
    a.post(SendWr::inline(
        2,
        SendOp::Write {
            remote: dst.remote(0),
        },
        b"new",
    ));
    b.post_recv(9, &[dst.sge(8, 16)]); // lets the old SEND through at b, too late for a
    let got = drain(&mut a.cq, Duration::from_millis(400));
    assert_eq!(
        got,
        [(1, WcStatus::WrFlushError), (2, WcStatus::WrFlushError)]
    );
}

/// tcp: an unsignaled request not yet acknowledged when the QP fails is flushed too (with a
/// completion, as flushed requests always get one), and frees its send-queue slot.
#[test]
fn tcp_error_state_flushes_unacknowledged_unsignaled_requests() {
    let config = QpConfig {
        max_send_wr: 4,
        ..QpConfig::default()
    };
    let (mut a, b) = pair_with(Fabric::Tcp, config, config);
    let dst = b.region(64);
    a.post(
        SendWr::inline(
            1,
            SendOp::Write {
                remote: dst.remote(0),
            },
            b"x",
        )
        .unsignaled(),
    );
    a.qp.set_error();
    assert_eq!(
        drain(&mut a.cq, Duration::from_millis(50)),
        [(1, WcStatus::WrFlushError)]
    );
    for i in 10..14 {
        a.post(SendWr::inline(
            i,
            SendOp::Write {
                remote: dst.remote(0),
            },
            b"y",
        ));
        assert_eq!(a.next_wc().wr_id, i);
    }
}

/// tcp: READ data is placed when it arrives, after checking the lkey then, as an HCA does:
/// a destination deregistered meanwhile gives a local protection error, and the bytes go
/// nowhere (not into whatever reuses the space).
#[test]
fn tcp_read_into_a_region_deregistered_before_the_data_arrives() {
    let (mut a, mut b) = pair_with(Fabric::Tcp, patient(), patient());
    let src = b.region(64);
    src.write(0, b"remote bytes");
    let inbox = b.region(64);
    // A SEND that waits at b for a receive holds up the READ queued behind it.
    a.post(SendWr::inline(1, SendOp::Send, b"hold"));
    let dst = a.region(64);
    a.post(SendWr::new(
        2,
        SendOp::Read {
            remote: src.remote(0),
        },
        &[dst.sge(0, 12)],
    ));
    drop(dst);
    let reuse = a.region(64); // likely the same arena space
    b.post_recv(9, &[inbox.sge(0, 64)]);
    let got = drain(&mut a.cq, Duration::from_millis(300));
    assert_eq!(
        got,
        [(1, WcStatus::Success), (2, WcStatus::LocalProtectionError)]
    );
    assert!(
        reuse.to_vec().iter().all(|&x| x == 0),
        "READ data landed in a reused region"
    );
}
