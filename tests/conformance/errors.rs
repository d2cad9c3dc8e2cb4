//! Every error case: bad keys, bounds and access rights, receiver not ready, a receive too
//! small, the error state and its flushes, requests refused at post time, full queues, and
//! endpoints that cannot be connected.

use std::time::{Duration, Instant};

use rafi::fabric::{
    Access, Endpoint, Fabric, FabricError, FabricKind, MemoryRegion, PostError, ProtectionDomain,
    QpConfig, QpState, QueuePair, RecvWr, RemoteAddr, SendOp, SendWr, Sge, VerbsEndpoint, WcStatus,
};

use crate::harness::*;

pub fn bad_rkey_is_a_remote_access_error_and_leaves_memory_untouched<F: Fabric>(fabric: &F) {
    let (mut a, b) = pair(fabric);
    let src = a.region(64);
    src.write(0, &[0xff; 64]);
    let dst = b.region(64);
    let bad = RemoteAddr {
        addr: dst.addr(),
        rkey: dst.rkey() ^ 0x5000,
    };
    expect_failure(
        &mut a,
        SendOp::Write { remote: bad },
        &[src.sge(0, 64)],
        WcStatus::RemoteAccessError,
    );
    assert!(
        dst.to_vec().iter().all(|&x| x == 0),
        "target memory was touched"
    );
}

pub fn out_of_bounds_is_a_remote_access_error<F: Fabric>(fabric: &F) {
    let (mut a, b) = pair(fabric);
    let src = a.region(64);
    src.write(0, &[0xff; 64]);
    // 100 bytes asked for: the page behind it is larger, the region is not.
    let dst = b.region(100);
    let end = dst.len();
    // A write that starts inside the region and crosses its end.
    expect_failure(
        &mut a,
        SendOp::Write {
            remote: dst.remote(end - 20),
        },
        &[src.sge(0, 64)],
        WcStatus::RemoteAccessError,
    );
    assert!(
        dst.to_vec().iter().all(|&x| x == 0),
        "target memory was touched"
    );
    // Below the start is refused too.
    let (mut a, b) = pair(fabric);
    let src = a.region(64);
    let dst = b.region(100);
    let before = RemoteAddr {
        addr: dst.addr() - 8,
        rkey: dst.rkey(),
    };
    expect_failure(
        &mut a,
        SendOp::Write { remote: before },
        &[src.sge(0, 8)],
        WcStatus::RemoteAccessError,
    );
}

/// Each remote right is checked by the operation that needs it; a READ into local memory
/// without LOCAL_WRITE is the requester's own protection error. (Every region here that
/// grants a remote write or atomic right also grants LOCAL_WRITE, which verbs requires.)
pub fn missing_access_rights_are_refused<F: Fabric>(fabric: &F) {
    type Op<M> = fn(&M) -> SendOp;
    let cases: [(Access, Op<F::Mr>); 3] = [
        (
            Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_ATOMIC,
            |r| SendOp::Write {
                remote: r.remote(0),
            },
        ),
        (
            Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC,
            |r| SendOp::Read {
                remote: r.remote(0),
            },
        ),
        (
            Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
            |r| SendOp::FetchAdd {
                remote: r.remote(0),
                add: 1,
            },
        ),
    ];
    for (rights, op) in cases {
        let (mut a, b) = pair(fabric);
        let local = a.region(64);
        let dst = b.pd.register(64, rights).expect("register");
        dst.write(0, &[9; 64]);
        expect_failure(
            &mut a,
            op(&dst),
            &[local.sge(0, 8)],
            WcStatus::RemoteAccessError,
        );
        assert!(
            dst.to_vec().iter().all(|&x| x == 9),
            "target memory was touched"
        );
    }
    let (mut a, b) = pair(fabric);
    let readonly = a.pd.register(64, Access::REMOTE_READ).expect("register");
    let src = b.region(64);
    expect_failure(
        &mut a,
        SendOp::Read {
            remote: src.remote(0),
        },
        &[readonly.sge(0, 8)],
        WcStatus::LocalProtectionError,
    );
}

pub fn bad_lkey_is_a_local_protection_error<F: Fabric>(fabric: &F) {
    let (mut a, b) = pair(fabric);
    let src = a.region(64);
    let dst = b.region(64);
    let bad = Sge {
        addr: src.addr(),
        length: 8,
        lkey: src.lkey() ^ 0x5000,
    };
    expect_failure(
        &mut a,
        SendOp::Write {
            remote: dst.remote(0),
        },
        &[bad],
        WcStatus::LocalProtectionError,
    );
    // The right key, but bytes past the region's end.
    let (mut a, b) = pair(fabric);
    let src = a.region(64);
    let dst = b.region(64);
    let beyond = Sge {
        addr: src.addr() + src.len() as u64 - 4,
        length: 8,
        lkey: src.lkey(),
    };
    expect_failure(
        &mut a,
        SendOp::Write {
            remote: dst.remote(0),
        },
        &[beyond],
        WcStatus::LocalProtectionError,
    );
}

pub fn deregistered_region_is_refused<F: Fabric>(fabric: &F) {
    let (mut a, b) = pair(fabric);
    let src = a.region(64);
    let dst = b.region(64);
    let remote = dst.remote(0);
    drop(dst);
    // A new region may reuse the old one's place, but not its key.
    let _other = b.region(64);
    expect_failure(
        &mut a,
        SendOp::Write { remote },
        &[src.sge(0, 8)],
        WcStatus::RemoteAccessError,
    );
}

pub fn rkey_of_another_domain_is_refused<F: Fabric>(fabric: &F) {
    let (mut a, b) = pair(fabric);
    let src = a.region(64);
    let _in_pd = b.region(64);
    let other_pd = b.fabric.alloc_pd().expect("pd");
    let foreign = other_pd.register(64, Access::ALL).expect("register");
    expect_failure(
        &mut a,
        SendOp::Write {
            remote: foreign.remote(0),
        },
        &[src.sge(0, 8)],
        WcStatus::RemoteAccessError,
    );
    assert!(foreign.to_vec().iter().all(|&x| x == 0));
}

fn quick_rnr() -> QpConfig {
    QpConfig {
        rnr_retry: 2,
        rnr_timer: Duration::from_millis(2),
        ..QpConfig::default()
    }
}

/// SEND and WRITE_WITH_IMM that find no receive are retried, then fail; the target sees
/// nothing.
pub fn receiver_not_ready_retries_then_fails<F: Fabric>(fabric: &F) {
    let (mut a, mut b) = pair_with(fabric, quick_rnr(), quick_rnr());
    let dst = b.region(64);
    let started = Instant::now();
    a.post(SendWr::inline(
        8,
        SendOp::WriteWithImm {
            remote: dst.remote(0),
            imm: 1,
        },
        b"x",
    ));
    let wc = a.next_wc();
    assert_eq!((wc.wr_id, wc.status), (8, WcStatus::RnrRetryExceeded));
    assert_eq!(a.qp.state(), QpState::Error);
    // At least one retry, one timer apart. (How the timer is rounded, and so how long the
    // two retries take in all, differs: verbs encodes it in a 5-bit table.)
    assert!(
        started.elapsed() >= Duration::from_millis(1),
        "gave up after {:?}",
        started.elapsed()
    );
    // rdma-mock checks for a receive before it writes; on verbs, whether a WRITE_WITH_IMM
    // refused for want of a receive placed its data first is up to the device.
    if is_mock(fabric) {
        assert_eq!(
            dst.to_vec()[0],
            0,
            "a refused WRITE_WITH_IMM wrote its data"
        );
    }
    b.expect_no_wc(Duration::from_millis(10));
    // The same for SEND.
    let (mut a, _b) = pair_with(fabric, quick_rnr(), quick_rnr());
    expect_failure(&mut a, SendOp::Send, &[], WcStatus::RnrRetryExceeded);
}

/// A SEND longer than the receive it lands in fails on both sides, and the receiver's queue
/// pair goes to error.
///
/// The InfiniBand spec has the responder answer with an Invalid Request NAK and complete
/// the receive with a local length error (`RemoteInvalidRequest` / `LocalLengthError`), as
/// rdma-mock and mlx5 do. rxe (Linux 6.1) treats the overflow as a malformed receive
/// instead: a Remote Operation Error NAK, and `IBV_WC_LOC_QP_OP_ERR` on the receive, which
/// rafi reports as `LocalProtectionError`. So the statuses are held to one of those two
/// pairs, and to the spec's on rdma-mock.
pub fn send_larger_than_the_receive_buffer_fails_both_sides<F: Fabric>(fabric: &F) {
    let (mut a, mut b) = pair(fabric);
    let buf = b.region(64);
    b.post_recv(1, &[buf.sge(0, 4)]);
    b.post_recv(2, &[buf.sge(8, 4)]);
    a.post(SendWr::inline(3, SendOp::Send, b"too long"));
    let swc = a.next_wc();
    let rwc = b.next_wc();
    assert_eq!((swc.wr_id, rwc.wr_id), (3, 1));
    let statuses = (swc.status, rwc.status);
    if is_mock(fabric) {
        assert_eq!(
            statuses,
            (WcStatus::RemoteInvalidRequest, WcStatus::LocalLengthError)
        );
    } else {
        assert!(
            matches!(
                statuses,
                (WcStatus::RemoteInvalidRequest, WcStatus::LocalLengthError)
                    | (
                        WcStatus::RemoteOperationError,
                        WcStatus::LocalProtectionError
                    )
            ),
            "sender {swc:?}, receiver {rwc:?}"
        );
    }
    // rdma-mock checks the length before it copies; verbs leaves a receive buffer that
    // completed in error undefined (a device may have placed part of the message).
    if is_mock(fabric) {
        assert!(
            buf.to_vec().iter().all(|&x| x == 0),
            "the oversize SEND wrote into the buffer"
        );
    }
    // The receiver's QP is in error now: its other receive is flushed.
    let rwc = b.next_wc();
    assert_eq!((rwc.wr_id, rwc.status), (2, WcStatus::WrFlushError));
    assert_eq!(b.qp.state(), QpState::Error);
}

/// A SEND into a receive whose buffer has a bad lkey fails on both sides: the receiver's
/// own protection error, the requester's remote operation error.
pub fn send_into_a_bad_receive_buffer_fails_both_sides<F: Fabric>(fabric: &F) {
    let (mut a, mut b) = pair(fabric);
    let buf = b.region(64);
    let bad = Sge {
        addr: buf.addr(),
        length: 64,
        lkey: buf.lkey() ^ 0x5000,
    };
    b.post_recv(1, &[bad]);
    a.post(SendWr::inline(2, SendOp::Send, b"lost"));
    let swc = a.next_wc();
    assert_eq!((swc.wr_id, swc.status), (2, WcStatus::RemoteOperationError));
    let rwc = b.next_wc();
    assert_eq!((rwc.wr_id, rwc.status), (1, WcStatus::LocalProtectionError));
    assert_eq!(b.qp.state(), QpState::Error);
    assert!(buf.to_vec().iter().all(|&x| x == 0));
}

/// `set_error` flushes the posted receives, in order, and everything posted afterwards:
/// receives and sends, signaled or not, each with exactly one completion.
pub fn error_state_flushes_sends_and_receives<F: Fabric>(fabric: &F) {
    let (mut a, _b) = pair(fabric);
    for id in 0..3 {
        a.post_recv(id, &[]);
    }
    a.qp.set_error();
    assert_eq!(a.qp.state(), QpState::Error);
    for id in 0..3 {
        // Only wr_id and status are defined for a flushed completion on verbs (the opcode
        // is not), so only they are compared.
        let wc = a.next_wc();
        assert_eq!((wc.wr_id, wc.status), (id, WcStatus::WrFlushError));
    }
    a.post_recv(9, &[]);
    let wc = a.next_wc();
    assert_eq!((wc.wr_id, wc.status), (9, WcStatus::WrFlushError));
    a.post(SendWr::inline(10, SendOp::Send, b"x").unsignaled());
    let wc = a.next_wc();
    assert_eq!((wc.wr_id, wc.status), (10, WcStatus::WrFlushError));
    a.expect_no_wc(Duration::from_millis(10));
}

/// Requests that cannot work are refused by `post_send` / `post_recv`, and nothing is
/// queued for them.
///
/// Verbs devices may round the limits a queue pair asks for up (more SGEs, more inline
/// bytes), so the requests here exceed any device's limit, and the limit in the error is
/// checked to be at least what was asked for; rdma-mock's limits are exactly the ones asked
/// for (rdma-mock/tests/operations.rs checks that).
pub fn post_errors_are_reported_synchronously<F: Fabric>(fabric: &F) {
    let small = QpConfig {
        max_sge: 2,
        max_inline_data: 16,
        ..QpConfig::default()
    };
    let mut lone = Side::new(fabric, small);
    assert_eq!(
        lone.qp.post_send(&SendWr::inline(0, SendOp::Send, b"x")),
        Err(PostError::NotConnected)
    );
    let (mut a, b) = pair_with(fabric, small, small);
    let src = a.region(4096);
    let dst = b.region(64);
    let remote = dst.remote(0);
    let sges: Vec<Sge> = (0..64).map(|i| src.sge(i, 1)).collect();
    let too_many = |r: Result<(), PostError>| {
        assert!(
            matches!(r, Err(PostError::TooManySge { given: 64, max }) if (2..64).contains(&max)),
            "{r:?}"
        )
    };
    too_many(a.qp.post_send(&SendWr::new(0, SendOp::Write { remote }, &sges)));
    too_many(a.qp.post_recv(&RecvWr {
        wr_id: 0,
        sgl: &sges,
    }));
    let huge = vec![0; fabric.max_inline_data() as usize + 1];
    let r =
        a.qp.post_send(&SendWr::inline(0, SendOp::Write { remote }, &huge));
    assert!(
        matches!(r, Err(PostError::InlineTooLarge { given, max })
            if given == huge.len() && max >= 16 && (max as usize) < given),
        "{r:?}"
    );
    assert_eq!(
        a.qp.post_send(&SendWr::new(
            0,
            SendOp::FetchAdd { remote, add: 1 },
            &[src.sge(0, 4)]
        )),
        Err(PostError::BadAtomicSgl)
    );
    assert_eq!(
        a.qp.post_send(&SendWr::inline(0, SendOp::Read { remote }, b"12345678")),
        Err(PostError::InlineNotAllowed)
    );
    // Nothing was queued: the queue pair still works and reports only the next request.
    a.post(SendWr::inline(7, SendOp::Write { remote }, b"ok"));
    let wc = a.next_wc();
    assert_eq!((wc.wr_id, wc.status), (7, WcStatus::Success));
    a.expect_no_wc(Duration::from_millis(10));
}

/// Posts (with `post`) until the queue refuses, at most `limit` times; returns how many
/// were accepted and the refusal.
fn fill(limit: usize, mut post: impl FnMut(u64) -> Result<(), PostError>) -> (usize, PostError) {
    for i in 0..limit {
        if let Err(e) = post(i as u64) {
            return (i, e);
        }
    }
    panic!("the queue took {limit} requests without refusing");
}

/// A full send queue (outstanding requests plus unpolled completions) or receive queue
/// refuses, and takes requests again once completions are polled.
///
/// The send queue holds exactly what was asked for (2) on every backend, counted until the
/// completions are polled (on verbs by the backend, whatever the provider granted); the
/// receive queue at least that (rdma-mock rounds it up to a power of two), so the suite
/// finds its depth by filling it.
pub fn full_queues_refuse_until_completions_are_polled<F: Fabric>(fabric: &F) {
    let small = QpConfig {
        max_send_wr: 2,
        max_recv_wr: 2,
        ..QpConfig::default()
    };
    let (mut a, mut b) = pair_with(fabric, small, small);
    let dst = b.region(64);
    let remote = dst.remote(0);
    // The send depth is exact everywhere: verbs counts outstanding requests itself instead
    // of trusting the provider's (possibly deeper, and on rxe freed before the completion
    // is polled) queue.
    let (sent, refusal) = fill(1024, |i| {
        a.qp.post_send(&SendWr::inline(i, SendOp::Write { remote }, b"w"))
    });
    assert_eq!(sent, 2, "refused after {sent} requests: {refusal}");
    assert_eq!(refusal, PostError::SendQueueFull(2));
    for i in 0..sent as u64 {
        let wc = a.next_wc();
        assert_eq!((wc.wr_id, wc.status), (i, WcStatus::Success));
    }
    a.post(SendWr::inline(99, SendOp::Write { remote }, b"w"));
    assert_eq!(a.next_wc().wr_id, 99);

    let (received, refusal) = fill(1024, |i| b.qp.post_recv(&RecvWr { wr_id: i, sgl: &[] }));
    assert!(
        received >= 2,
        "refused after {received} receives: {refusal}"
    );
    assert_eq!(refusal, PostError::RecvQueueFull(received as u32));
    // One receive consumed and polled makes room for one more, and only one.
    a.post(SendWr::inline(
        1,
        SendOp::WriteWithImm { remote, imm: 1 },
        b"",
    ));
    assert!(a.next_wc().is_ok());
    assert_eq!(b.next_wc().wr_id, 0);
    b.post_recv(100, &[]);
    assert_eq!(
        b.qp.post_recv(&RecvWr {
            wr_id: 101,
            sgl: &[]
        }),
        Err(PostError::RecvQueueFull(received as u32))
    );
}

/// `connect` refuses an endpoint of another backend, and a queue pair that is already
/// connected.
pub fn connect_refuses_foreign_and_second_endpoints<F: Fabric>(fabric: &F) {
    let mut lone = Side::new(fabric, QpConfig::default());
    let foreign = match fabric.kind() {
        FabricKind::Shm | FabricKind::Tcp => Endpoint::Verbs(VerbsEndpoint {
            lid: 0,
            qpn: 1,
            psn: 0,
            gid: [0; 16],
            mtu: 5,
        }),
        FabricKind::Verbs => Endpoint::Mock(rdma_mock::Endpoint {
            fabric: rdma_mock::Fabric::Shm,
            address: "nowhere".into(),
            device: 1,
            qpn: 1,
        }),
    };
    let err = lone.qp.connect(&foreign).expect_err("a foreign endpoint");
    assert!(
        matches!(err, FabricError::FabricMismatch { local, remote }
            if local == fabric.kind() && remote == foreign.kind()),
        "{err}"
    );
    assert_eq!(lone.qp.state(), QpState::Init);

    let (mut a, b) = pair(fabric);
    assert_eq!(a.qp.state(), QpState::ReadyToSend);
    a.qp.connect(&b.qp.endpoint())
        .expect_err("connecting a connected queue pair");
}
