//! An idle tcp connection uses no CPU, also while a request waits at the head of the stream
//! for a receive with more bytes queued behind it. (A binary of its own: it measures the
//! whole process's CPU time.)

mod common;

use std::time::Duration;

use common::*;
use rdma_mock::*;

fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the rusage we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[test]
fn tcp_waiting_request_with_bytes_behind_it_uses_no_cpu() {
    let patient = QpConfig {
        rnr_retry: 7,
        rnr_timer: Duration::from_millis(100),
        ..QpConfig::default()
    };
    let (mut a, b) = pair_with(Fabric::Tcp, patient, patient);
    let dst = b.region(64);
    a.post(SendWr::inline(1, SendOp::Send, b"waits").unsignaled());
    std::thread::sleep(Duration::from_millis(30));
    a.post(
        SendWr::inline(
            2,
            SendOp::Write {
                remote: dst.remote(0),
            },
            b"behind",
        )
        .unsignaled(),
    );
    let before = process_cpu();
    // Nobody polls: both applications idle while b's progress thread holds the SEND.
    std::thread::sleep(Duration::from_millis(400));
    let used = process_cpu() - before;
    // A progress thread spinning on the readable socket would use about 400 ms.
    assert!(
        used < Duration::from_millis(60),
        "an idle connection used {used:?} of CPU"
    );
    drop((a, b));
}
