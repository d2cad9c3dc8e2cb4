//! Every operation and every error case, within one process, on both fabrics.

mod common;

use std::time::Duration;

use common::*;
use rdma_mock::*;

on_both_fabrics!(
    write_lands_and_completes,
    unsignaled_write_lands_without_completion,
    write_with_imm_consumes_a_receive,
    send_scatters_into_posted_buffers,
    send_with_imm_and_gather_list,
    inline_payloads_need_no_registration,
    read_fetches_remote_bytes,
    fetch_add_and_cmp_swap_return_old_values,
    bad_rkey_is_a_remote_access_error_and_leaves_memory_untouched,
    out_of_bounds_is_a_remote_access_error,
    missing_access_rights_are_refused,
    misaligned_atomic_is_an_invalid_request,
    bad_lkey_is_a_local_protection_error,
    receiver_not_ready_retries_then_fails,
    receiver_not_ready_recovers_when_a_receive_arrives,
    a_target_that_polls_is_not_stalled_by_a_waiting_request,
    send_larger_than_the_receive_buffer_fails_both_sides,
    error_state_flushes_sends_and_receives,
    dropped_peer_fails_sends_and_flushes_receives,
    region_registered_after_connect_is_reachable,
    deregistered_region_is_refused,
    rkey_of_another_domain_is_refused,
    blocking_wait_sleeps_until_a_completion,
    blocking_wait_times_out,
    blocking_wait_uses_no_cpu,
    post_errors_are_reported_synchronously,
    message_and_queue_limits_are_exact,
    stale_endpoint_is_refused,
    connect_times_out_without_the_peer,
    many_messages_keep_order_and_ids,
);

fn write_lands_and_completes(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    let src = a.region(4096);
    let dst = b.region(4096);
    src.write(0, &pattern(1000, 7));
    a.post(SendWr::new(
        11,
        SendOp::Write {
            remote: dst.remote(100),
        },
        &[src.sge(0, 1000)],
    ));
    let wc = a.next_wc();
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (11, WcStatus::Success, WcOpcode::RdmaWrite, 1000)
    );
    assert_eq!(wc.qp_num, a.qp.qp_num());
    let got = dst.to_vec();
    assert_eq!(&got[100..1100], &pattern(1000, 7)[..]);
    assert!(
        got[..100].iter().chain(&got[1100..]).all(|&x| x == 0),
        "bytes outside the write changed"
    );
}

fn unsignaled_write_lands_without_completion(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    let dst = b.region(64);
    a.post(
        SendWr::inline(
            1,
            SendOp::Write {
                remote: dst.remote(0),
            },
            b"quiet",
        )
        .unsignaled(),
    );
    eventually("the unsignaled write", || &dst.to_vec()[..5] == b"quiet");
    a.expect_no_wc(Duration::from_millis(20));
}

fn write_with_imm_consumes_a_receive(fabric: Fabric) {
    let (mut a, mut b) = pair(fabric);
    let dst = b.region(256);
    b.post_recv(77, &[]);
    a.post(SendWr::inline(
        5,
        SendOp::WriteWithImm {
            remote: dst.remote(8),
            imm: 0xfeed_beef,
        },
        b"payload!",
    ));
    let rwc = b.next_wc();
    assert_eq!(rwc.wr_id, 77);
    assert_eq!(rwc.status, WcStatus::Success);
    assert_eq!(rwc.opcode, WcOpcode::RecvRdmaWithImm);
    assert_eq!(rwc.imm, Some(0xfeed_beef));
    assert_eq!(rwc.byte_len, 8);
    assert_eq!(rwc.qp_num, b.qp.qp_num());
    assert_eq!(&dst.to_vec()[8..16], b"payload!");
    assert_eq!(a.next_wc().status, WcStatus::Success);
}

fn send_scatters_into_posted_buffers(fabric: Fabric) {
    let (mut a, mut b) = pair(fabric);
    let src = a.region(4096);
    let buf = b.region(8192);
    src.write(0, &pattern(3000, 1));
    // Two receive buffers in one receive: 1000 + 2500 bytes.
    b.post_recv(9, &[buf.sge(0, 1000), buf.sge(2000, 2500)]);
    a.post(SendWr::new(3, SendOp::Send, &[src.sge(0, 3000)]));
    let rwc = b.next_wc();
    assert_eq!(
        (rwc.wr_id, rwc.status, rwc.opcode, rwc.byte_len, rwc.imm),
        (9, WcStatus::Success, WcOpcode::Recv, 3000, None)
    );
    let got = buf.to_vec();
    let want = pattern(3000, 1);
    assert_eq!(&got[..1000], &want[..1000]);
    assert_eq!(&got[2000..4000], &want[1000..]);
    assert!(got[1000..2000].iter().chain(&got[4000..]).all(|&x| x == 0));
    let swc = a.next_wc();
    assert_eq!(
        (swc.wr_id, swc.opcode, swc.status),
        (3, WcOpcode::Send, WcStatus::Success)
    );
}

fn send_with_imm_and_gather_list(fabric: Fabric) {
    let (mut a, mut b) = pair(fabric);
    let src = a.region(4096);
    let buf = b.region(4096);
    src.write(0, b"abc");
    src.write(100, b"defg");
    b.post_recv(1, &[buf.sge(0, 64)]);
    a.post(SendWr::new(
        2,
        SendOp::SendWithImm { imm: 42 },
        &[src.sge(0, 3), src.sge(100, 4)],
    ));
    let rwc = b.next_wc();
    assert_eq!(
        (rwc.byte_len, rwc.imm, rwc.opcode),
        (7, Some(42), WcOpcode::Recv)
    );
    assert_eq!(&buf.to_vec()[..7], b"abcdefg");
    assert!(a.next_wc().is_ok());
}

fn inline_payloads_need_no_registration(fabric: Fabric) {
    let (mut a, mut b) = pair(fabric);
    let buf = b.region(128);
    b.post_recv(1, &[buf.sge(64, 64)]);
    a.post(SendWr::inline(1, SendOp::Send, b"inline send"));
    a.post(SendWr::inline(
        2,
        SendOp::Write {
            remote: buf.remote(0),
        },
        b"inline write",
    ));
    assert_eq!(b.next_wc().byte_len, 11);
    assert_eq!(a.next_wc().wr_id, 1);
    assert_eq!(a.next_wc().wr_id, 2);
    let got = buf.to_vec();
    assert_eq!(&got[..12], b"inline write");
    assert_eq!(&got[64..75], b"inline send");
}

fn read_fetches_remote_bytes(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    let local = a.region(8192);
    let remote = b.region(8192);
    remote.write(0, &pattern(8192, 3));
    // Read 6000 bytes from offset 1000 into two local pieces.
    a.post(SendWr::new(
        4,
        SendOp::Read {
            remote: remote.remote(1000),
        },
        &[local.sge(0, 2000), local.sge(4096, 4000)],
    ));
    let wc = a.next_wc();
    assert_eq!(
        (wc.status, wc.opcode, wc.byte_len),
        (WcStatus::Success, WcOpcode::RdmaRead, 6000)
    );
    let got = local.to_vec();
    let want = pattern(8192, 3);
    assert_eq!(&got[..2000], &want[1000..3000]);
    assert_eq!(&got[4096..8096], &want[3000..7000]);
}

fn fetch_add_and_cmp_swap_return_old_values(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    let result = a.region(64);
    let word = b.region(64);
    word.atomic_u64(8)
        .store(100, std::sync::atomic::Ordering::SeqCst);
    a.post(SendWr::new(
        1,
        SendOp::FetchAdd {
            remote: word.remote(8),
            add: 5,
        },
        &[result.sge(0, 8)],
    ));
    assert_eq!(a.next_wc().opcode, WcOpcode::FetchAdd);
    assert_eq!(
        result
            .atomic_u64(0)
            .load(std::sync::atomic::Ordering::SeqCst),
        100
    );
    // A failing compare leaves the word alone and still returns the old value.
    a.post(SendWr::new(
        2,
        SendOp::CmpSwap {
            remote: word.remote(8),
            compare: 1,
            swap: 7,
        },
        &[result.sge(16, 8)],
    ));
    assert_eq!(a.next_wc().opcode, WcOpcode::CmpSwap);
    assert_eq!(
        result
            .atomic_u64(16)
            .load(std::sync::atomic::Ordering::SeqCst),
        105
    );
    assert_eq!(
        word.atomic_u64(8).load(std::sync::atomic::Ordering::SeqCst),
        105
    );
    a.post(SendWr::new(
        3,
        SendOp::CmpSwap {
            remote: word.remote(8),
            compare: 105,
            swap: 7,
        },
        &[result.sge(24, 8)],
    ));
    assert!(a.next_wc().is_ok());
    assert_eq!(
        result
            .atomic_u64(24)
            .load(std::sync::atomic::Ordering::SeqCst),
        105
    );
    assert_eq!(
        word.atomic_u64(8).load(std::sync::atomic::Ordering::SeqCst),
        7
    );
}

/// Posts `op` and checks it fails with `status`, moves the QP to error, and that a request
/// posted after it is flushed.
fn expect_failure(a: &mut Side, op: SendOp, sgl: &[Sge], status: WcStatus) {
    a.post(SendWr::new(50, op, sgl));
    let wc = a.next_wc();
    assert_eq!((wc.wr_id, wc.status), (50, status), "{op:?}");
    assert_eq!(a.qp.state(), QpState::Error);
    a.post(SendWr::inline(51, SendOp::Send, b"after"));
    let wc = a.next_wc();
    assert_eq!((wc.wr_id, wc.status), (51, WcStatus::WrFlushError));
}

fn bad_rkey_is_a_remote_access_error_and_leaves_memory_untouched(fabric: Fabric) {
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

fn out_of_bounds_is_a_remote_access_error(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    let src = a.region(64);
    src.write(0, &[0xff; 64]);
    let dst = b.region(100);
    // The region is 100 bytes (its page is larger): bytes 80..144 cross its end.
    expect_failure(
        &mut a,
        SendOp::Write {
            remote: dst.remote(80),
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
    let dst = b.region(100);
    let before = RemoteAddr {
        addr: dst.addr() - 8,
        rkey: dst.rkey(),
    };
    expect_failure(
        &mut a,
        SendOp::Write { remote: before },
        &[],
        WcStatus::RemoteAccessError,
    );
}

fn missing_access_rights_are_refused(fabric: Fabric) {
    type Case = (Access, fn(&MemoryRegion) -> SendOp, usize);
    let cases: [Case; 3] = [
        (
            Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_ATOMIC,
            |r| SendOp::Write {
                remote: r.remote(0),
            },
            8,
        ),
        (
            Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC,
            |r| SendOp::Read {
                remote: r.remote(0),
            },
            8,
        ),
        (
            Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
            |r| SendOp::FetchAdd {
                remote: r.remote(0),
                add: 1,
            },
            8,
        ),
    ];
    for (rights, op, len) in cases {
        let (mut a, b) = pair(fabric);
        let local = a.region(64);
        let dst = b.pd.register(64, rights).expect("register");
        dst.write(0, &[9; 64]);
        expect_failure(
            &mut a,
            op(&dst),
            &[local.sge(0, len)],
            WcStatus::RemoteAccessError,
        );
        assert!(
            dst.to_vec().iter().all(|&x| x == 9),
            "target memory was touched"
        );
    }
    // A READ into a local region without LOCAL_WRITE is a local protection error.
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

fn misaligned_atomic_is_an_invalid_request(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    let local = a.region(64);
    let word = b.region(64);
    expect_failure(
        &mut a,
        SendOp::FetchAdd {
            remote: word.remote(4),
            add: 1,
        },
        &[local.sge(0, 8)],
        WcStatus::RemoteInvalidRequest,
    );
    assert!(word.to_vec().iter().all(|&x| x == 0));
}

fn bad_lkey_is_a_local_protection_error(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    let src = a.region(64);
    let dst = b.region(64);
    let bad = Sge {
        addr: src.addr(),
        length: 8,
        lkey: src.lkey() + 1,
    };
    expect_failure(
        &mut a,
        SendOp::Write {
            remote: dst.remote(0),
        },
        &[bad],
        WcStatus::LocalProtectionError,
    );
    let (mut a, b) = pair(fabric);
    let src = a.region(64);
    let dst = b.region(64);
    let beyond = Sge {
        addr: src.addr() + 60,
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

fn quick_rnr() -> QpConfig {
    QpConfig {
        rnr_retry: 2,
        rnr_timer: Duration::from_millis(2),
        ..QpConfig::default()
    }
}

fn receiver_not_ready_retries_then_fails(fabric: Fabric) {
    let (mut a, mut b) = pair_with(fabric, quick_rnr(), quick_rnr());
    let dst = b.region(64);
    let started = std::time::Instant::now();
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
    // Two retries 2 ms apart happened before giving up.
    assert!(
        started.elapsed() >= Duration::from_millis(4),
        "gave up after {:?}",
        started.elapsed()
    );
    assert_eq!(
        dst.to_vec()[0],
        0,
        "a refused WRITE_WITH_IMM wrote its data"
    );
    b.expect_no_wc(Duration::from_millis(10));
    // The same for SEND.
    let (mut a, _b) = pair_with(fabric, quick_rnr(), quick_rnr());
    expect_failure(&mut a, SendOp::Send, &[], WcStatus::RnrRetryExceeded);
}

/// Connects a pair and has `a`, on its own thread, send a WRITE_WITH_IMM carrying `imm` that
/// finds no receive at `b` and retries (7 times, 20 ms apart). Returns `b` and the thread,
/// which yields `a`'s completion.
fn write_imm_waiting_for_a_receive(
    fabric: Fabric,
    imm: u32,
) -> (Side, MemoryRegion, std::thread::JoinHandle<WorkCompletion>) {
    let patient = QpConfig {
        rnr_retry: 7,
        rnr_timer: Duration::from_millis(20),
        ..QpConfig::default()
    };
    let (a, b) = pair_with(fabric, patient, patient);
    let dst = b.region(64);
    let remote = dst.remote(0);
    let sender = std::thread::spawn(move || {
        let mut a = a;
        a.post(SendWr::inline(
            1,
            SendOp::WriteWithImm { remote, imm },
            b"late",
        ));
        a.next_wc()
    });
    (b, dst, sender)
}

fn receiver_not_ready_recovers_when_a_receive_arrives(fabric: Fabric) {
    let (mut b, _dst, sender) = write_imm_waiting_for_a_receive(fabric, 3);
    std::thread::sleep(Duration::from_millis(30));
    b.post_recv(2, &[]);
    assert_eq!(sender.join().expect("sender").status, WcStatus::Success);
    assert_eq!(b.next_wc().imm, Some(3));
}

/// The target polls its queue (on tcp its polls drive the connection) while a peer's
/// WRITE_WITH_IMM waits for a receive: the polls stay quick, and once the target posts the
/// receive from the same thread, the request goes through.
fn a_target_that_polls_is_not_stalled_by_a_waiting_request(fabric: Fabric) {
    let (mut b, _dst, sender) = write_imm_waiting_for_a_receive(fabric, 5);
    // Poll for a while first. A poll that slept out the retries (7 x 20 ms) would make the
    // request fail before this thread could post the receive below.
    let mut wc = [WorkCompletion::default(); 1];
    let until = std::time::Instant::now() + Duration::from_millis(40);
    while std::time::Instant::now() < until {
        assert_eq!(b.cq.poll(&mut wc), 0);
    }
    b.post_recv(9, &[]);
    assert_eq!(b.next_wc().imm, Some(5));
    assert_eq!(sender.join().expect("sender").status, WcStatus::Success);
}

fn send_larger_than_the_receive_buffer_fails_both_sides(fabric: Fabric) {
    let (mut a, mut b) = pair(fabric);
    let buf = b.region(64);
    b.post_recv(1, &[buf.sge(0, 4)]);
    b.post_recv(2, &[buf.sge(8, 4)]);
    a.post(SendWr::inline(3, SendOp::Send, b"too long"));
    let swc = a.next_wc();
    assert_eq!(swc.status, WcStatus::RemoteInvalidRequest);
    let rwc = b.next_wc();
    assert_eq!((rwc.wr_id, rwc.status), (1, WcStatus::LocalLengthError));
    assert!(
        buf.to_vec().iter().all(|&x| x == 0),
        "the oversize SEND wrote into the buffer"
    );
    // The receiver's QP is in error now: its other receive is flushed.
    let rwc = b.next_wc();
    assert_eq!((rwc.wr_id, rwc.status), (2, WcStatus::WrFlushError));
    assert_eq!(b.qp.state(), QpState::Error);
}

fn error_state_flushes_sends_and_receives(fabric: Fabric) {
    let (mut a, _b) = pair(fabric);
    for id in 0..3 {
        a.post_recv(id, &[]);
    }
    a.qp.set_error();
    let mut ids: Vec<u64> = (0..3)
        .map(|_| {
            let wc = a.next_wc();
            assert_eq!(
                (wc.status, wc.opcode),
                (WcStatus::WrFlushError, WcOpcode::Recv)
            );
            wc.wr_id
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [0, 1, 2]);
    // Work posted afterwards is flushed too: receives and sends, signaled or not.
    a.post_recv(9, &[]);
    assert_eq!(
        (
            a.next_wc().wr_id,
            a.cq.poll(&mut [WorkCompletion::default(); 1])
        ),
        (9, 0)
    );
    a.post(SendWr::inline(10, SendOp::Send, b"x").unsignaled());
    let wc = a.next_wc();
    assert_eq!((wc.wr_id, wc.status), (10, WcStatus::WrFlushError));
}

fn dropped_peer_fails_sends_and_flushes_receives(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    let dst = b.region(64);
    let remote = dst.remote(0);
    a.post_recv(1, &[]);
    drop(b);
    // The receive is flushed once the disconnect is noticed, and a blocking wait wakes for it.
    let mut wc = [WorkCompletion::default(); 1];
    let n = a.cq.wait(&mut wc, Some(TIMEOUT)).expect("flush completion");
    assert_eq!(
        (n, wc[0].wr_id, wc[0].status),
        (1, 1, WcStatus::WrFlushError)
    );
    a.post(SendWr::inline(2, SendOp::Write { remote }, b"gone?"));
    let wc = a.next_wc();
    assert!(
        matches!(wc.status, WcStatus::RetryExceeded | WcStatus::WrFlushError),
        "write to a departed peer: {:?}",
        wc.status
    );
}

fn region_registered_after_connect_is_reachable(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    let late = b.region(1 << 20);
    a.post(SendWr::inline(
        1,
        SendOp::Write {
            remote: late.remote((1 << 20) - 4),
        },
        b"end!",
    ));
    assert!(a.next_wc().is_ok());
    assert_eq!(&late.to_vec()[(1 << 20) - 4..], b"end!");
}

fn deregistered_region_is_refused(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    let dst = b.region(64);
    let remote = dst.remote(0);
    drop(dst);
    // A new region may reuse the table slot, but not the key.
    let _other = b.region(64);
    expect_failure(
        &mut a,
        SendOp::Write { remote },
        &[],
        WcStatus::RemoteAccessError,
    );
}

fn rkey_of_another_domain_is_refused(fabric: Fabric) {
    let (mut a, b) = pair(fabric);
    let _in_pd = b.region(64);
    let other_pd = b.dev.alloc_pd().expect("pd");
    let foreign = other_pd.register(64, Access::ALL).expect("register");
    expect_failure(
        &mut a,
        SendOp::Write {
            remote: foreign.remote(0),
        },
        &[],
        WcStatus::RemoteAccessError,
    );
}

fn blocking_wait_sleeps_until_a_completion(fabric: Fabric) {
    let (a, mut b) = pair(fabric);
    let dst = b.region(64);
    let remote = dst.remote(0);
    b.post_recv(4, &[]);
    let sender = std::thread::spawn(move || {
        let mut a = a;
        std::thread::sleep(Duration::from_millis(50));
        a.post(SendWr::inline(1, SendOp::WriteWithImm { remote, imm: 99 }, b"wake").unsignaled());
        a
    });
    let mut wc = [WorkCompletion::default(); 4];
    let n = b.cq.wait(&mut wc, Some(TIMEOUT)).expect("wait");
    assert_eq!((n, wc[0].imm), (1, Some(99)));
    drop(sender.join());
}

fn blocking_wait_times_out(fabric: Fabric) {
    let (_a, mut b) = pair(fabric);
    let mut wc = [WorkCompletion::default(); 1];
    let err =
        b.cq.wait(&mut wc, Some(Duration::from_millis(30)))
            .expect_err("nothing to wait for");
    assert!(matches!(err, WaitError::Timeout(_)), "{err}");
    let mut no_channel = b.dev.create_cq(None).expect("cq");
    assert!(matches!(
        no_channel.wait(&mut wc, None),
        Err(WaitError::NoChannel)
    ));
}

/// CPU time of the calling thread (not wall time: other tests and the host do not count).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A thread blocked in `wait` sleeps: over a 300 ms wait it uses a sliver of CPU, then a
/// completion wakes it.
fn blocking_wait_uses_no_cpu(fabric: Fabric) {
    let (a, mut b) = pair(fabric);
    let dst = b.region(64);
    let remote = dst.remote(0);
    b.post_recv(1, &[]);
    let sender = std::thread::spawn(move || {
        let mut a = a;
        std::thread::sleep(Duration::from_millis(300));
        a.post(SendWr::inline(1, SendOp::WriteWithImm { remote, imm: 1 }, b"go").unsignaled());
        a
    });
    let cpu_before = thread_cpu_time();
    let mut wc = [WorkCompletion::default(); 1];
    assert_eq!(b.cq.wait(&mut wc, Some(TIMEOUT)).expect("woken"), 1);
    let used = thread_cpu_time() - cpu_before;
    // A spinning wait would use about 300 ms.
    assert!(
        used < Duration::from_millis(30),
        "the waiting thread used {used:?} of CPU"
    );
    drop(sender.join());
}

fn post_errors_are_reported_synchronously(fabric: Fabric) {
    let small = QpConfig {
        max_send_wr: 2,
        max_recv_wr: 2,
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
    let src = a.region(64);
    let dst = b.region(64);
    let sges = [src.sge(0, 1), src.sge(1, 1), src.sge(2, 1)];
    let remote = dst.remote(0);
    assert_eq!(
        a.qp.post_send(&SendWr::new(0, SendOp::Write { remote }, &sges)),
        Err(PostError::TooManySge { given: 3, max: 2 })
    );
    assert_eq!(
        a.qp.post_send(&SendWr::inline(0, SendOp::Write { remote }, &[0; 17])),
        Err(PostError::InlineTooLarge { given: 17, max: 16 })
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
    assert_eq!(
        a.qp.post_recv(&RecvWr {
            wr_id: 0,
            sgl: &sges
        }),
        Err(PostError::TooManySge { given: 3, max: 2 })
    );
    // Two receives fit, a third does not until one is polled.
    a.post_recv(1, &[]);
    a.post_recv(2, &[]);
    assert_eq!(
        a.qp.post_recv(&RecvWr { wr_id: 3, sgl: &[] }),
        Err(PostError::RecvQueueFull(2))
    );
    // Two signaled completions fill the send side until they are polled.
    a.post(SendWr::inline(1, SendOp::Write { remote }, b"1"));
    a.post(SendWr::inline(2, SendOp::Write { remote }, b"2"));
    // (On tcp they are outstanding or acknowledged but unpolled: refused either way.)
    let third =
        a.qp.post_send(&SendWr::inline(3, SendOp::Write { remote }, b"3"));
    assert_eq!(third, Err(PostError::SendQueueFull(2)));
    assert_eq!(a.next_wc().wr_id, 1);
    assert_eq!(a.next_wc().wr_id, 2);
    a.post(SendWr::inline(3, SendOp::Write { remote }, b"3"));
    assert_eq!(a.next_wc().wr_id, 3);
}

fn message_and_queue_limits_are_exact(fabric: Fabric) {
    let three = QpConfig {
        max_send_wr: 3,
        ..QpConfig::default()
    };
    let (mut a, b) = pair_with(fabric, three, three);
    let src = a.region(64);
    let dst = b.region(64);
    let remote = dst.remote(0);
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
    // max_send_wr = 3 means three unpolled completions, not the ring's power of two.
    for i in 0..3 {
        a.post(SendWr::inline(i, SendOp::Write { remote }, b"w"));
    }
    let fourth =
        a.qp.post_send(&SendWr::inline(3, SendOp::Write { remote }, b"w"));
    assert_eq!(fourth, Err(PostError::SendQueueFull(3)));
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

fn many_messages_keep_order_and_ids(fabric: Fabric) {
    let (mut a, mut b) = pair(fabric);
    let dst = b.region(64 * 1024);
    let count = 2000u64;
    let mut polled = Vec::new();
    let mut posted_recv = 0u64;
    let mut wc = [WorkCompletion::default(); 32];
    for i in 0..count {
        while posted_recv < i + 64 && posted_recv < count {
            b.post_recv(posted_recv, &[]);
            posted_recv += 1;
        }
        let signaled = i % 16 == 15;
        let bytes = i.to_le_bytes();
        let op = SendOp::WriteWithImm {
            remote: dst.remote((i % 1000) as usize * 8),
            imm: i as u32,
        };
        let mut wr = SendWr::inline(i, op, &bytes);
        wr.signaled = signaled;
        a.post(wr);
        if signaled {
            assert_eq!(a.next_wc().wr_id, i);
        }
        let n = b.cq.poll(&mut wc);
        polled.extend(wc[..n].iter().map(|w| (w.wr_id, w.imm)));
    }
    while (polled.len() as u64) < count {
        let w = b.next_wc();
        polled.push((w.wr_id, w.imm));
    }
    for (i, (wr_id, imm)) in polled.into_iter().enumerate() {
        assert_eq!(
            (wr_id, imm),
            (i as u64, Some(i as u32)),
            "receive completions out of order"
        );
    }
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

/// Zero-copy views: an output built in place with `slice_mut` is written to the peer, and
/// the peer reads it where it landed with `slice`.
#[test]
fn slices_build_and_read_payloads_in_place() {
    for fabric in [Fabric::Shm, Fabric::Tcp] {
        let (mut a, mut b) = pair(fabric);
        let (src, dst) = (a.region(4096), b.region(4096));
        // SAFETY: nothing else touches src's first 100 bytes while we fill them.
        unsafe { src.slice_mut(0, 100) }.copy_from_slice(&pattern(100, 9));
        b.post_recv(1, &[]);
        a.post(SendWr::new(
            1,
            SendOp::WriteWithImm {
                remote: dst.remote(200),
                imm: 1,
            },
            &[src.sge(0, 100)],
        ));
        assert!(a.next_wc().is_ok());
        assert_eq!(b.next_wc().byte_len, 100);
        // SAFETY: the peer's write completed and it writes nothing more.
        assert_eq!(unsafe { dst.slice(200, 100) }, &pattern(100, 9)[..]);
    }
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
