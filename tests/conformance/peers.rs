//! A peer that goes away, or whose queue pair fails: requests towards it end with
//! `RetryExceeded`, the queue pair moves to the error state, and everything else is flushed.
//! Nothing hangs.

use std::time::Duration;

use rafi::fabric::{
    CompletionQueue, Fabric, MemoryRegion, QpState, QueuePair, SendOp, SendWr, WcStatus,
    WorkCompletion,
};

use crate::harness::*;

/// Collects completions until `count` have arrived; panics after [`TIMEOUT`].
fn completions<F: Fabric>(side: &mut Side<F>, count: usize) -> Vec<(u64, WcStatus)> {
    (0..count)
        .map(|_| {
            let wc = side.next_wc();
            (wc.wr_id, wc.status)
        })
        .collect()
}

/// Checks what a request towards a peer that cannot answer ends with: its own completion
/// with `RetryExceeded` (or `WrFlushError` where the fabric had already noticed the peer's
/// end, as rdma-mock does at once), then the posted receive flushed, the queue pair in
/// error, and a later request flushed.
fn requests_to_a_silent_peer_fail<F: Fabric>(a: &mut Side<F>, remote: rafi::fabric::RemoteAddr) {
    a.post(SendWr::inline(2, SendOp::Write { remote }, b"anyone?"));
    // The request and the flushed receive (posted before) report in either order: one is
    // on the send side, one on the receive side.
    let mut got = completions(a, 2);
    got.sort_unstable_by_key(|&(id, _)| id);
    assert_eq!(got[0], (1, WcStatus::WrFlushError), "the posted receive");
    assert_eq!(got[1].0, 2);
    assert!(
        matches!(got[1].1, WcStatus::RetryExceeded | WcStatus::WrFlushError),
        "a write towards a peer that is gone: {:?}",
        got[1].1
    );
    assert_eq!(a.qp.state(), QpState::Error);
    a.post(SendWr::inline(3, SendOp::Send, b"still?"));
    assert_eq!(completions(a, 1), [(3, WcStatus::WrFlushError)]);
    a.expect_no_wc(Duration::from_millis(10));
}

/// The peer drops its queue pair, domain and queues (as a process that exits does).
pub fn dropped_peer_fails_requests_and_flushes_the_rest<F: Fabric>(fabric: &F) {
    let (mut a, b) = pair(fabric);
    let dst = b.region(64);
    let remote = dst.remote(0);
    a.post_recv(1, &[]);
    drop(dst);
    drop(b);
    requests_to_a_silent_peer_fail(&mut a, remote);
}

/// The peer's queue pair moves to the error state and stays: it answers nothing more.
pub fn peer_in_error_state_fails_requests_and_flushes_the_rest<F: Fabric>(fabric: &F) {
    let (mut a, mut b) = pair(fabric);
    let dst = b.region(64);
    a.post_recv(1, &[]);
    b.qp.set_error();
    requests_to_a_silent_peer_fail(&mut a, dst.remote(0));
    assert!(
        dst.to_vec().iter().all(|&x| x == 0),
        "a queue pair in error let a write through"
    );
    let mut wc = [WorkCompletion::default(); 1];
    assert_eq!(b.cq.poll(&mut wc), 0, "{:?}", wc[0]);
}
