//! Connections come and go without leaking descriptors, mappings or threads: what a
//! long-running executor needs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdma_mock::*;

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

/// (open descriptors, mappings, threads) of this process.
fn resources() -> (usize, usize, usize) {
    (
        count_entries("/proc/self/fd"),
        mappings(),
        count_entries("/proc/self/task"),
    )
}

/// Creates, uses and drops `rounds` connected pairs, then waits (bounded) for the
/// process's resources to return to where they were after the first round.
fn connections_do_not_leak(fabric: Fabric, rounds: usize) {
    let use_once = || {
        let (mut a, mut b) = pair(fabric);
        let dst = b.region(4096);
        b.post_recv(1, &[]);
        a.post(SendWr::inline(
            1,
            SendOp::WriteWithImm {
                remote: dst.remote(0),
                imm: 7,
            },
            b"x",
        ));
        assert!(a.next_wc().is_ok());
        assert_eq!(b.next_wc().imm, Some(7));
    };
    // The first round allocates what stays for the process's lifetime (lazy statics).
    use_once();
    let settle = |want: (usize, usize, usize)| {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let now = resources();
            if now.0 <= want.0 && now.1 <= want.1 && now.2 <= want.2 {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "resources stay above {want:?}: {now:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let before = resources();
    for _ in 0..rounds {
        use_once();
    }
    // Other tests of this binary run in parallel threads: allow them a little slack, far
    // below what a leak of `rounds` connections would show.
    let slack = (8, 16, 8);
    settle((before.0 + slack.0, before.1 + slack.1, before.2 + slack.2));
}

#[test]
fn shm_connections_do_not_leak() {
    connections_do_not_leak(Fabric::Shm, 100);
}

#[test]
fn tcp_connections_do_not_leak() {
    connections_do_not_leak(Fabric::Tcp, 100);
}
