//! Completion channels: `wait` sleeps until a completion and times out, `arm` plus
//! `get_event` for event loops, and a sleeping thread uses no CPU.

use std::time::Duration;

use rafi::fabric::{
    CompletionChannel, CompletionQueue, Fabric, MemoryRegion, SendOp, SendWr, WaitError, WcStatus,
    WorkCompletion,
};

use crate::harness::*;

/// `b` waits on its queue; a thread of `a` posts a WRITE_WITH_IMM (unsignaled) once
/// `before_post` returns. Returns what `wait` returned, with the CPU time the waiting
/// thread used.
fn wait_for_a_write<F: Fabric>(fabric: &F, before_post: fn()) -> (usize, Option<u32>, Duration) {
    let (a, mut b) = pair(fabric);
    let dst = b.region(64);
    let remote = dst.remote(0);
    b.post_recv(4, &[]);
    let sender = std::thread::spawn(move || {
        let mut a = a;
        before_post();
        a.post(SendWr::inline(1, SendOp::WriteWithImm { remote, imm: 99 }, b"wake").unsignaled());
        a
    });
    let cpu_before = thread_cpu_time();
    let mut wc = [WorkCompletion::default(); 4];
    let n = b.cq.wait(&mut wc, Some(TIMEOUT)).expect("wait");
    let used = thread_cpu_time() - cpu_before;
    drop(sender.join().expect("sender"));
    assert_eq!(wc[0].status, WcStatus::Success);
    (n, wc[0].imm, used)
}

pub fn blocking_wait_returns_a_completion<F: Fabric>(fabric: &F) {
    let (n, imm, _) = wait_for_a_write(fabric, || ());
    assert_eq!((n, imm), (1, Some(99)));
}

/// A thread blocked in `wait` sleeps: over a 300 ms wait it uses a sliver of CPU, then a
/// completion wakes it.
pub fn blocking_wait_uses_no_cpu<F: Fabric>(fabric: &F) {
    let (n, imm, used) = wait_for_a_write(fabric, || {
        // The length of the wait being measured, not a synchronization.
        std::thread::sleep(Duration::from_millis(300))
    });
    assert_eq!((n, imm), (1, Some(99)));
    // A spinning wait would use about 300 ms.
    assert!(
        used < Duration::from_millis(30),
        "the waiting thread used {used:?} of CPU"
    );
}

pub fn blocking_wait_times_out<F: Fabric>(fabric: &F) {
    let (_a, mut b) = pair(fabric);
    let mut wc = [WorkCompletion::default(); 1];
    let started = std::time::Instant::now();
    let err =
        b.cq.wait(&mut wc, Some(Duration::from_millis(30)))
            .expect_err("nothing to wait for");
    assert!(matches!(err, WaitError::Timeout(_)), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(30));
    let mut no_channel = fabric.create_cq(16, None).expect("cq");
    assert!(matches!(
        no_channel.wait(&mut wc, None),
        Err(WaitError::NoChannel)
    ));
}

/// The event-loop way: arm, poll once more, sleep on the channel (or its fd), poll.
pub fn armed_queue_signals_its_channel<F: Fabric>(fabric: &F) {
    let (mut a, mut b) = pair(fabric);
    let dst = b.region(64);
    b.post_recv(1, &[]);
    // Nothing yet: the channel times out.
    b.cq.arm();
    let mut wc = [WorkCompletion::default(); 1];
    assert_eq!(b.cq.poll(&mut wc), 0);
    assert!(matches!(
        b.channel.get_event(Some(Duration::from_millis(20))),
        Err(WaitError::Timeout(_))
    ));
    assert!(!readable(b.channel.as_raw_fd(), 0));
    a.post(SendWr::inline(
        1,
        SendOp::WriteWithImm {
            remote: dst.remote(0),
            imm: 7,
        },
        b"event",
    ));
    assert!(a.next_wc().is_ok());
    assert!(
        readable(b.channel.as_raw_fd(), TIMEOUT.as_millis() as i32),
        "the channel's fd did not become readable"
    );
    let events = b.channel.get_event(Some(TIMEOUT)).expect("an event");
    assert!(events >= 1);
    assert_eq!(b.next_wc().imm, Some(7));
}

/// Whether `fd` becomes readable within `timeout_ms`.
fn readable(fd: std::os::fd::RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd that we own, for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    n == 1 && pfd.revents & libc::POLLIN != 0
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
