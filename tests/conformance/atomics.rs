//! FETCH_ADD and CMP_SWAP: old values, alignment, and atomicity under concurrent requests
//! from several queue pairs.

use std::sync::atomic::Ordering;

use rafi::fabric::{
    Fabric, MemoryRegion, PostError, QpConfig, QpState, QueuePair, RemoteAddr, SendOp, SendWr,
    WcOpcode, WcStatus,
};

use crate::harness::*;

pub fn fetch_add_and_cmp_swap_return_old_values<F: Fabric>(fabric: &F) {
    let (mut a, b) = pair(fabric);
    let result = a.region(64);
    let word = b.region(64);
    let target = word.atomic_u64(8);
    target.store(100, Ordering::SeqCst);
    a.post(SendWr::new(
        1,
        SendOp::FetchAdd {
            remote: word.remote(8),
            add: 5,
        },
        &[result.sge(0, 8)],
    ));
    let wc = a.next_wc();
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode),
        (1, WcStatus::Success, WcOpcode::FetchAdd)
    );
    assert_send_byte_len(fabric, &wc, 8);
    assert_eq!(result.atomic_u64(0).load(Ordering::SeqCst), 100);
    assert_eq!(target.load(Ordering::SeqCst), 105);
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
    let wc = a.next_wc();
    assert_eq!(
        (wc.status, wc.opcode),
        (WcStatus::Success, WcOpcode::CmpSwap)
    );
    assert_send_byte_len(fabric, &wc, 8);
    assert_eq!(result.atomic_u64(16).load(Ordering::SeqCst), 105);
    assert_eq!(target.load(Ordering::SeqCst), 105);
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
    assert_eq!(result.atomic_u64(24).load(Ordering::SeqCst), 105);
    assert_eq!(target.load(Ordering::SeqCst), 7);
    // The addition wraps, as on hardware.
    target.store(u64::MAX, Ordering::SeqCst);
    a.post(SendWr::new(
        4,
        SendOp::FetchAdd {
            remote: word.remote(8),
            add: 2,
        },
        &[result.sge(32, 8)],
    ));
    assert!(a.next_wc().is_ok());
    assert_eq!(result.atomic_u64(32).load(Ordering::SeqCst), u64::MAX);
    assert_eq!(target.load(Ordering::SeqCst), 1);
}

/// An atomic at an address that is not 8-byte aligned fails and changes nothing.
///
/// Verbs requires the alignment and lets the provider choose how to fail: hardware (mlx5)
/// and rdma-mock complete the request with `RemoteInvalidRequest` (and the queue pair goes
/// to error), while rxe's `post_send` refuses it at once with EINVAL, leaving the queue
/// pair usable. Both are checked for what they promise; rdma-mock only the first way.
pub fn misaligned_atomic_is_an_invalid_request<F: Fabric>(fabric: &F) {
    let (mut a, b) = pair(fabric);
    let local = a.region(64);
    let word = b.region(64);
    let op = SendOp::FetchAdd {
        remote: word.remote(4),
        add: 1,
    };
    let sgl = [local.sge(0, 8)];
    match a.qp.post_send(&SendWr::new(50, op, &sgl)) {
        Err(PostError::Rejected { errno }) if !is_mock(fabric) => {
            assert_eq!(errno, libc::EINVAL, "refused with errno {errno}");
            assert_eq!(a.qp.state(), QpState::ReadyToSend);
            a.post(SendWr::new(
                51,
                SendOp::FetchAdd {
                    remote: word.remote(8),
                    add: 1,
                },
                &sgl,
            ));
            let wc = a.next_wc();
            assert_eq!((wc.wr_id, wc.status), (51, WcStatus::Success));
            assert_eq!(word.atomic_u64(8).load(Ordering::SeqCst), 1);
            assert!(word.to_vec()[..8].iter().all(|&x| x == 0));
        }
        Ok(()) => {
            let wc = a.next_wc();
            assert_eq!((wc.wr_id, wc.status), (50, WcStatus::RemoteInvalidRequest));
            assert_eq!(a.qp.state(), QpState::Error);
            a.post(SendWr::inline(51, SendOp::Send, b"after"));
            let wc = a.next_wc();
            assert_eq!((wc.wr_id, wc.status), (51, WcStatus::WrFlushError));
            assert!(word.to_vec().iter().all(|&x| x == 0));
        }
        Err(e) => panic!("misaligned atomic refused with {e}"),
    }
}

/// Queue pairs that each run `rounds` of `body` on their own thread against one word of one
/// region: every thread's requester is connected to its own queue pair in the target's
/// domain. Returns the target region once all threads finished.
fn from_threads<F: Fabric>(
    fabric: &F,
    threads: usize,
    body: fn(&mut Side<F>, &F::Mr, RemoteAddr) -> Vec<u64>,
) -> (F::Mr, Vec<u64>) {
    let target = Side::new(fabric, QpConfig::default());
    let word = target.region(64);
    let mut targets = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..threads {
        let mut requester = Side::new(fabric, QpConfig::default());
        let responder = Side::in_pd(fabric, target.pd.clone(), QpConfig::default());
        targets.push(connect(&mut requester, responder));
        let remote = word.remote(8);
        workers.push(std::thread::spawn(move || {
            let results = requester.region(64);
            body(&mut requester, &results, remote)
        }));
    }
    let olds = workers
        .into_iter()
        .flat_map(|w| w.join().expect("atomic thread"))
        .collect();
    (word, olds)
}

/// FETCH_ADD from four queue pairs at once: every addition counts, and every old value
/// returned is distinct (each request saw the word between two others).
pub fn concurrent_fetch_add_counts_every_addition<F: Fabric>(fabric: &F) {
    const THREADS: usize = 4;
    const ROUNDS: u64 = 500;
    let (word, mut olds) = from_threads(fabric, THREADS, |side, results, remote| {
        (0..ROUNDS)
            .map(|i| {
                side.post(SendWr::new(
                    i,
                    SendOp::FetchAdd { remote, add: 1 },
                    &[results.sge(0, 8)],
                ));
                assert!(side.next_wc().is_ok());
                results.atomic_u64(0).load(Ordering::SeqCst)
            })
            .collect()
    });
    let total = THREADS as u64 * ROUNDS;
    assert_eq!(word.atomic_u64(8).load(Ordering::SeqCst), total);
    olds.sort_unstable();
    assert_eq!(olds, (0..total).collect::<Vec<_>>());
}

/// CMP_SWAP from four queue pairs at once, each incrementing by compare-and-swap and
/// retrying with the value it got back when it lost: no increment is lost or doubled.
pub fn concurrent_cmp_swap_loses_no_update<F: Fabric>(fabric: &F) {
    const THREADS: usize = 4;
    const ROUNDS: u64 = 200;
    let (word, mut olds) = from_threads(fabric, THREADS, |side, results, remote| {
        let mut guess = 0;
        let mut won = Vec::new();
        let mut id = 0;
        while (won.len() as u64) < ROUNDS {
            id += 1;
            side.post(SendWr::new(
                id,
                SendOp::CmpSwap {
                    remote,
                    compare: guess,
                    swap: guess + 1,
                },
                &[results.sge(0, 8)],
            ));
            assert!(side.next_wc().is_ok());
            let old = results.atomic_u64(0).load(Ordering::SeqCst);
            if old == guess {
                won.push(old);
                guess += 1;
            } else {
                guess = old;
            }
        }
        won
    });
    let total = THREADS as u64 * ROUNDS;
    assert_eq!(word.atomic_u64(8).load(Ordering::SeqCst), total);
    olds.sort_unstable();
    assert_eq!(olds, (0..total).collect::<Vec<_>>());
}
