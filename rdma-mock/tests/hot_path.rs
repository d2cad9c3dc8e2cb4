//! The shm hot path (post_send, post_recv, poll) allocates nothing and makes no system call.
//!
//! Allocations are counted by a global allocator, per thread. System calls are ruled out
//! the hard way: a child process runs the loop under seccomp strict mode, where any system
//! call except read, write and exit kills the process on the spot.

mod common;

use common::*;
use rdma_mock::*;

#[global_allocator]
static GLOBAL: rdma_mock::alloc_counter::CountingAllocator =
    rdma_mock::alloc_counter::CountingAllocator;

use rdma_mock::alloc_counter::allocations;

/// Ping-pong between `a` and `b` in one thread: WRITE_WITH_IMM each way (every 16th
/// signaled), SEND now and then, reposting receives, polling both queues.
fn ping_pong(a: &mut Side, b: &mut Side, a_mr: &MemoryRegion, b_mr: &MemoryRegion, rounds: u64) {
    let mut wc = [WorkCompletion::default(); 8];
    let a_buf = [a_mr.sge(2048, 64)];
    let b_buf = [b_mr.sge(2048, 64)];
    for i in 0..rounds {
        let signaled = i % 16 == 0;
        let op = if i % 8 == 0 {
            SendOp::Send
        } else {
            SendOp::WriteWithImm {
                remote: b_mr.remote(0),
                imm: i as u32,
            }
        };
        let mut wr = SendWr::new(i, op, &a_buf);
        wr.signaled = signaled;
        a.qp.post_send(&wr).expect("a post");
        assert_eq!(b.cq.poll(&mut wc), 1);
        b.qp.post_recv(&RecvWr {
            wr_id: i,
            sgl: &b_buf,
        })
        .expect("b recv");
        let mut wr = SendWr::new(
            i,
            SendOp::WriteWithImm {
                remote: a_mr.remote(0),
                imm: i as u32,
            },
            &b_buf,
        );
        wr.signaled = signaled;
        b.qp.post_send(&wr).expect("b post");
        // a's queue holds the receive completion and, when signaled, its send completion.
        let mut seen = 0;
        while seen < 1 + signaled as usize {
            seen += a.cq.poll(&mut wc[seen..]);
        }
        a.qp.post_recv(&RecvWr {
            wr_id: i,
            sgl: &a_buf,
        })
        .expect("a recv");
        // b's send completion, when signaled.
        if signaled {
            assert_eq!(b.cq.poll(&mut wc), 1);
        }
        // And an empty poll, the common case of a busy-polling executor.
        assert_eq!(b.cq.poll(&mut wc), 0);
    }
}

fn prepared_pair() -> (Side, Side, MemoryRegion, MemoryRegion) {
    let (mut a, mut b) = pair(Fabric::Shm);
    let a_mr = a.region(4096);
    let b_mr = b.region(4096);
    for i in 0..4 {
        a.post_recv(i, &[a_mr.sge(2048, 64)]);
        b.post_recv(i, &[b_mr.sge(2048, 64)]);
    }
    (a, b, a_mr, b_mr)
}

#[test]
fn shm_post_and_poll_do_not_allocate() {
    let (mut a, mut b, a_mr, b_mr) = prepared_pair();
    // Warm-up: the completion queues take their first snapshot of attached QPs.
    ping_pong(&mut a, &mut b, &a_mr, &b_mr, 100);
    let before = allocations();
    ping_pong(&mut a, &mut b, &a_mr, &b_mr, 10_000);
    assert_eq!(allocations() - before, 0, "the shm hot path allocated");
}

#[test]
fn allocation_counter_counts() {
    // The check above would pass vacuously if the counter never moved.
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 100]);
    drop(v);
    assert!(allocations() > before);
}

#[test]
fn shm_post_and_poll_make_no_system_call() {
    let mut peer = Peer::spawn("strict", &[]);
    assert_eq!(peer.recv(), "ready");
    // The child prints "done" only if 10,000 round trips under seccomp strict mode survived.
    assert_eq!(peer.recv(), "done 10000");
    peer.kill();
}

#[test]
#[ignore = "entry point of child processes, run by the other tests"]
fn child_main() {
    assert_eq!(std::env::var(ROLE_VAR).as_deref(), Ok("strict"));
    let (mut a, mut b, a_mr, b_mr) = prepared_pair();
    ping_pong(&mut a, &mut b, &a_mr, &b_mr, 100);
    say("ready");
    let done = format!("{LINE_TAG}done 10000\n");
    // SAFETY: prctl with constant arguments; from here on this thread may only use read,
    // write, _exit and sigreturn, or the kernel kills the process.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_STRICT as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    assert_eq!(rc, 0, "seccomp strict mode unavailable");
    ping_pong(&mut a, &mut b, &a_mr, &b_mr, 10_000);
    // SAFETY: writes a live buffer to stdout, one of the calls strict mode allows.
    unsafe { libc::write(1, done.as_ptr().cast(), done.len()) };
    // Strict mode forbids exit_group: leave only this thread and let the parent kill us.
    // SAFETY: SYS_exit ends the calling thread; nothing runs after it.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
}
