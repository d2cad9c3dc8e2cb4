//! Every operation succeeding: SEND, SEND_WITH_IMM, WRITE, WRITE_WITH_IMM, READ, inline
//! payloads, gather and scatter lists, unsignaled requests, ordering, and a request that
//! waits for the peer to post a receive.

use std::time::Duration;

use rafi::fabric::{
    CompletionQueue, Fabric, MemoryRegion, QpConfig, QueuePair, SendOp, SendWr, WcOpcode, WcStatus,
    WorkCompletion,
};

use crate::harness::*;

pub fn write_lands_and_completes<F: Fabric>(fabric: &F) {
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
        (wc.wr_id, wc.status, wc.opcode),
        (11, WcStatus::Success, WcOpcode::RdmaWrite)
    );
    assert_send_byte_len(fabric, &wc, 1000);
    assert_eq!(wc.qp_num, a.qp.qp_num());
    let got = dst.to_vec();
    assert_eq!(&got[100..1100], &pattern(1000, 7)[..]);
    assert!(
        got[..100].iter().chain(&got[1100..]).all(|&x| x == 0),
        "bytes outside the write changed"
    );
}

pub fn unsignaled_write_lands_without_completion<F: Fabric>(fabric: &F) {
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

pub fn write_with_imm_consumes_a_receive<F: Fabric>(fabric: &F) {
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
    assert_eq!(
        (rwc.wr_id, rwc.status, rwc.opcode, rwc.imm, rwc.byte_len),
        (
            77,
            WcStatus::Success,
            WcOpcode::RecvRdmaWithImm,
            Some(0xfeed_beef),
            8
        )
    );
    assert_eq!(rwc.qp_num, b.qp.qp_num());
    assert_eq!(&dst.to_vec()[8..16], b"payload!");
    let swc = a.next_wc();
    assert_eq!(
        (swc.wr_id, swc.status, swc.opcode),
        (5, WcStatus::Success, WcOpcode::RdmaWrite)
    );
}

pub fn send_scatters_into_posted_buffers<F: Fabric>(fabric: &F) {
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

pub fn send_with_imm_and_gather_list<F: Fabric>(fabric: &F) {
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

pub fn inline_payloads_need_no_registration<F: Fabric>(fabric: &F) {
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

pub fn read_fetches_remote_bytes<F: Fabric>(fabric: &F) {
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
        (wc.wr_id, wc.status, wc.opcode),
        (4, WcStatus::Success, WcOpcode::RdmaRead)
    );
    assert_send_byte_len(fabric, &wc, 6000);
    let got = local.to_vec();
    let want = pattern(8192, 3);
    assert_eq!(&got[..2000], &want[1000..3000]);
    assert_eq!(&got[4096..8096], &want[3000..7000]);
}

pub fn region_registered_after_connect_is_reachable<F: Fabric>(fabric: &F) {
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

/// Zero-copy views: an output built in place with `slice_mut` is written to the peer, and
/// the peer reads it where it landed with `slice`.
pub fn slices_build_and_read_payloads_in_place<F: Fabric>(fabric: &F) {
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

/// Thousands of WRITE_WITH_IMM, mostly unsignaled, with receives replenished as they go:
/// the receive completions come in posting order with the right ids and immediates.
pub fn many_messages_keep_order_and_ids<F: Fabric>(fabric: &F) {
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

/// Connects a pair and has `a`, on its own thread, send a WRITE_WITH_IMM carrying `imm` that
/// finds no receive at `b` and retries (on rdma-mock 7 times 100 ms apart, a wide margin for
/// the receive to come; on verbs 7 means for ever). Returns `b` and the thread, which yields `a`'s completion.
fn write_imm_waiting_for_a_receive<F: Fabric>(
    fabric: &F,
    imm: u32,
) -> (Side<F>, F::Mr, std::thread::JoinHandle<WorkCompletion>) {
    let patient = QpConfig {
        rnr_retry: 7,
        rnr_timer: Duration::from_millis(100),
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

/// A request that found no receive goes through once one is posted within its retries.
pub fn receiver_not_ready_recovers_when_a_receive_arrives<F: Fabric>(fabric: &F) {
    let (mut b, _dst, sender) = write_imm_waiting_for_a_receive(fabric, 3);
    // Gives the request time to find no receive first (the test holds either way).
    std::thread::sleep(Duration::from_millis(30));
    b.post_recv(2, &[]);
    assert_eq!(sender.join().expect("sender").status, WcStatus::Success);
    assert_eq!(b.next_wc().imm, Some(3));
}

/// The target polls its queue (on tcp its polls drive the connection) while a peer's
/// WRITE_WITH_IMM waits for a receive: the polls stay quick, and once the target posts the
/// receive from the same thread, the request goes through.
pub fn a_target_that_polls_is_not_stalled_by_a_waiting_request<F: Fabric>(fabric: &F) {
    let (mut b, _dst, sender) = write_imm_waiting_for_a_receive(fabric, 5);
    // Poll for a while first. A poll that slept out the retries would make the request fail
    // before this thread could post the receive below.
    let mut wc = [WorkCompletion::default(); 1];
    let until = std::time::Instant::now() + Duration::from_millis(40);
    while std::time::Instant::now() < until {
        assert_eq!(b.cq.poll(&mut wc), 0);
    }
    b.post_recv(9, &[]);
    assert_eq!(b.next_wc().imm, Some(5));
    assert_eq!(sender.join().expect("sender").status, WcStatus::Success);
}
