//! End-to-end invocation tests: a real executor (worker threads, or a child process) and
//! real clients over every backend. Each test is written once, generic over the fabric,
//! and instantiated per backend by `for_each_backend!` (`cargo test --test invoke shm::`).

mod harness;

use std::num::NonZeroU64;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;
use rafi::client::{AllocateError, Allocation, AllocationOptions, InvokeError};
use rafi::executor::Polling;
use rafi::fabric::Fabric;
use rafi::protocol::{
    ErrorKind, HandshakeError, RequestHeader, RequestImm, SlotGeometry, HEADER_LEN,
};

fn open_shm() -> rdma_mock::Device {
    rdma_mock::Device::open(rdma_mock::DeviceConfig::new(rdma_mock::Fabric::Shm)).expect("shm")
}

fn open_tcp() -> rdma_mock::Device {
    rdma_mock::Device::open(rdma_mock::DeviceConfig::new(rdma_mock::Fabric::Tcp)).expect("tcp")
}

#[cfg(feature = "verbs")]
fn open_verbs() -> rafi::fabric::verbs::Device {
    rafi::fabric::verbs::Device::open(&rafi::fabric::VerbsConfig::from_env()).expect("verbs")
}

macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod shm { $( #[test] fn $name() { super::$name(super::open_shm) } )* }
        mod tcp { $( #[test] fn $name() { super::$name(super::open_tcp) } )* }
        #[cfg(feature = "verbs")]
        mod verbs {
            $( #[test] fn $name() {
                if super::harness::verbs_available() {
                    super::$name(super::open_verbs)
                }
            } )*
        }
    };
}

for_each_backend!(
    echo_of_every_size,
    invocations_from_a_registered_input_buffer,
    oversize_input_is_refused_before_sending,
    many_in_flight_over_every_worker,
    inputs_written_in_place_by_invoke_many_with,
    several_client_threads,
    several_client_processes,
    function_errors_and_panics_become_statuses,
    executor_killed_mid_invocation,
    hostile_requests_leave_the_executor_serving,
    ids_cross_the_2_pow_32_boundary,
    timeout_then_the_slot_is_reused,
    allocation_refusals,
    warm_workers_sleep_and_wake,
    async_invocations_on_tokio,
    invoke_many_sleeps_while_it_waits_when_asked,
    dropping_the_executor_ends_its_allocations,
);

/// Sizes from 0 B to the slot limit, each checked byte for byte, through all three
/// blocking APIs, in the protocol's compact form (the default) and with headers.
fn echo_of_every_size<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1, Polling::Hot);
    let geometry = SlotGeometry::new(4, 16 * 1024).unwrap();
    for compact in [true, false] {
        let mut a = allocate_with(
            open,
            ex.address(),
            AllocationOptions {
                geometry,
                compact,
                ..AllocationOptions::default()
            },
        );
        let echo = a.function("echo").unwrap();
        let max = a.max_payload();
        assert_eq!(max, 16 * 1024 - HEADER_LEN);
        let mut out = vec![0u8; max];
        for (i, len) in [0, 1, 7, 63, 64, 65, 255, 256, 257, 1000, 4096, max - 1, max]
            .into_iter()
            .enumerate()
        {
            let input = pattern(len, i as u8);
            let form = if compact { "compact" } else { "headers" };
            assert_eq!(
                a.invoke("echo", &input).unwrap(),
                input,
                "invoke, {len} B, {form}"
            );
            let n = a.invoke_into(echo, &input, &mut out).unwrap();
            assert_eq!(&out[..n], &input[..], "invoke_into, {len} B, {form}");
            let view = a.invoke_view(echo, &input).unwrap();
            assert_eq!(&view[..], &input[..], "invoke_view, {len} B, {form}");
        }
        assert_eq!(a.invoke("noop", b"ignored").unwrap(), b"");
    }
}

/// An input buffer registered once, filled in place and invoked from many times (small
/// inputs go inline, larger ones are read in place by the fabric); with headers (the full
/// form) the input is copied instead and the result is the same; misuse is refused before
/// anything is sent.
fn invocations_from_a_registered_input_buffer<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1, Polling::Hot);
    let geometry = SlotGeometry::new(4, 4096).unwrap();
    for compact in [true, false] {
        let options = AllocationOptions {
            geometry,
            compact,
            ..AllocationOptions::default()
        };
        let mut a = allocate_with(open, ex.address(), options.clone());
        let echo = a.function("echo").unwrap();
        let max = a.max_payload();
        let mut buffer = a.input_buffer(2 * 4096).unwrap();
        assert_eq!(buffer.len(), 2 * 4096);
        for round in 0..3u8 {
            let fill = pattern(buffer.len(), round);
            buffer.as_mut_slice().copy_from_slice(&fill);
            for range in [0..0, 0..1, 5..69, 100..1100, 0..max, 4096..4096 + max] {
                let view = a.invoke_from(echo, &buffer, range.clone()).unwrap();
                assert_eq!(
                    &view[..],
                    &fill[range.clone()],
                    "{range:?}, compact {compact}"
                );
            }
        }
        // A range past the buffer, one no slot holds, and another allocation's buffer.
        let len = buffer.len();
        assert!(matches!(
            a.invoke_from(echo, &buffer, len - 1..len + 1),
            Err(InvokeError::BadBuffer(_))
        ));
        assert!(matches!(
            a.invoke_from(echo, &buffer, 0..max + 1),
            Err(InvokeError::PayloadTooLarge { len, max: m }) if len == max + 1 && m == max
        ));
        let other = allocate_with(open, ex.address(), options);
        let foreign = other.input_buffer(64).unwrap();
        assert!(matches!(
            a.invoke_from(echo, &foreign, 0..8),
            Err(InvokeError::BadBuffer(_))
        ));
        // Nothing was sent by the refusals: the allocation still works.
        assert_eq!(a.invoke("echo", b"still here").unwrap(), b"still here");
    }
}

fn oversize_input_is_refused_before_sending<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1, Polling::Hot);
    let mut a = allocate(open, ex.address(), 1);
    let max = a.max_payload();
    let err = a.invoke("echo", &vec![1u8; max + 1]).unwrap_err();
    assert_eq!(err, InvokeError::PayloadTooLarge { len: max + 1, max });
    // A too-small output buffer is the caller's error, reported as such.
    let echo = a.function("echo").unwrap();
    let mut small = [0u8; 4];
    assert_eq!(
        a.invoke_into(echo, b"12345678", &mut small),
        Err(InvokeError::OutputBufferTooSmall {
            len: 8,
            capacity: 4
        })
    );
    assert_eq!(
        a.invoke("nope", b""),
        Err(InvokeError::UnknownFunction("nope".into()))
    );
    // Nothing was consumed: every slot still works.
    for i in 0..20u8 {
        assert_eq!(a.invoke("echo", &[i]).unwrap(), [i]);
    }
}

fn many_in_flight_over_every_worker<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 2, Polling::Hot);
    let mut a = allocate(open, ex.address(), 2);
    let echo = a.function("echo").unwrap();
    let inputs: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| {
            let mut v = i.to_le_bytes().to_vec();
            v.extend(pattern(i as usize % 300, i as u8));
            v
        })
        .collect();
    let mut results = vec![None; inputs.len()];
    a.invoke_many(echo, inputs.iter().map(Vec::as_slice), |i, r| {
        assert!(results[i].is_none(), "input {i} answered twice");
        results[i] = Some(r.map(<[u8]>::to_vec));
    })
    .unwrap();
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.expect("every input answered").unwrap(), inputs[i]);
    }
    // Both workers served (the counters are published when links end).
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = |ex: &rafi::executor::Executor<F, TestCatalog>| {
        ex.worker_stats()
            .iter()
            .map(|s| s.served.load(std::sync::atomic::Ordering::Relaxed))
            .collect::<Vec<_>>()
    };
    while served(&ex).iter().sum::<u64>() < 3000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let per_worker = served(&ex);
    assert_eq!(per_worker.iter().sum::<u64>(), 3000, "{per_worker:?}");
    assert!(per_worker.iter().all(|&n| n > 0), "{per_worker:?}");
}

/// `invoke_many_with` has each input written straight into its request slot; an item
/// whose encoder fails (a codec error, or a length past the slot) gets that error and the
/// others are answered, on every worker.
fn inputs_written_in_place_by_invoke_many_with<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 2, Polling::Hot);
    let mut a = allocate(open, ex.address(), 2);
    let echo = a.function("echo").unwrap();
    let expected = |i: u32| {
        let mut v = i.to_le_bytes().to_vec();
        v.extend(pattern(i as usize % 500, i as u8));
        v
    };
    let mut results = vec![None; 1000];
    a.invoke_many_with(
        echo,
        0..1000u32,
        |&i, area| match i {
            7 => Err(InvokeError::Codec("item 7 cannot be archived".into())),
            11 => Ok(area.len() + 1),
            _ => {
                let bytes = expected(i);
                area[..bytes.len()].copy_from_slice(&bytes);
                Ok(bytes.len())
            }
        },
        |i, r| {
            assert!(results[i].is_none(), "input {i} answered twice");
            results[i] = Some(r.map(<[u8]>::to_vec));
        },
    )
    .unwrap();
    for (i, r) in results.into_iter().enumerate() {
        match (i, r.expect("every input answered")) {
            (7, Err(InvokeError::Codec(m))) => assert!(m.contains("item 7")),
            (11, Err(InvokeError::PayloadTooLarge { len, max })) => assert_eq!(len, max + 1),
            (i, r) => assert_eq!(r.unwrap(), expected(i as u32), "input {i}"),
        }
    }
    // The failed encodings gave their slots back.
    for i in 0..50u8 {
        assert_eq!(a.invoke("echo", &[i; 3]).unwrap(), [i; 3]);
    }
}

fn several_client_threads<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 2, Polling::WARM);
    let at = ex.address();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut a = allocate(open, at, 1);
                for i in 0..300u32 {
                    let input = [&[t][..], &i.to_le_bytes()].concat();
                    assert_eq!(a.invoke("echo", &input).unwrap(), input);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

fn several_client_processes<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 2, Polling::WARM);
    let kind = open().kind().name().to_string();
    let children: Vec<_> = (0..3)
        .map(|i| {
            ChildProcess::spawn(
                "client",
                &[
                    ("RAFI_TEST_FABRIC", kind.clone()),
                    ("RAFI_TEST_EXECUTOR", ex.address().to_string()),
                    ("RAFI_TEST_SEED", i.to_string()),
                ],
            )
        })
        .collect();
    for c in children {
        assert_eq!(c.line(), "done");
        c.wait_ok();
    }
}

fn function_errors_and_panics_become_statuses<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1, Polling::Hot);
    // A panic's hook prints a backtrace when RUST_BACKTRACE is set (CI sets it); in the
    // emulated soft-RoCE guest, symbolizing the first one took more than 10 s.
    let mut a = allocate_with(
        open,
        ex.address(),
        AllocationOptions {
            timeout: Duration::from_secs(120),
            ..AllocationOptions::default()
        },
    );
    for _ in 0..3 {
        assert_eq!(
            a.invoke("fail", b"x"),
            Err(InvokeError::FunctionFailed { code: -7 })
        );
        assert_eq!(a.invoke("panic", b""), Err(InvokeError::FunctionPanicked));
        assert_eq!(a.invoke("too_big", b""), Err(InvokeError::OutputTooLarge));
        assert_eq!(a.invoke("invalid", b""), Err(InvokeError::ValidationFailed));
        // The worker survived every one of them.
        assert_eq!(a.invoke("echo", b"alive").unwrap(), b"alive");
    }
}

fn executor_killed_mid_invocation<F: Fabric>(open: fn() -> F) {
    let kind = open().kind().name().to_string();
    let child = ChildProcess::spawn("executor", &[("RAFI_TEST_FABRIC", kind)]);
    let at: std::net::SocketAddr = child.line().parse().expect("executor address");
    let timeout = Duration::from_secs(20);
    let mut a = allocate_with(
        open,
        at,
        AllocationOptions {
            timeout,
            ..AllocationOptions::default()
        },
    );
    assert_eq!(a.invoke("echo", b"before").unwrap(), b"before");
    let pid = child.child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        // SIGKILL: the executor gets no chance to say goodbye.
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let started = Instant::now();
    let err = a.invoke("slow", &60_000u64.to_le_bytes()).unwrap_err();
    let took = started.elapsed();
    killer.join().unwrap();
    assert!(
        matches!(err, InvokeError::ExecutorGone(_)),
        "expected ExecutorGone, got {err:?}"
    );
    assert!(took < timeout, "noticed after {took:?}");
    // Every later call fails at once, the same way.
    assert!(matches!(
        a.invoke("echo", b"after"),
        Err(InvokeError::ExecutorGone(_))
    ));
}

/// A client that writes garbage into its request slots cannot stop the executor from
/// serving it or anyone else.
fn hostile_requests_leave_the_executor_serving<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1, Polling::Hot);
    let mut honest = allocate(open, ex.address(), 1);
    let mut hostile = allocate(open, ex.address(), 1);
    let slot_size = hostile.options().geometry.slot_size() as usize;
    let header = |id: u64, function: u32, payload_len: u32| {
        RequestHeader {
            id,
            function,
            payload_len,
            flags: 0,
        }
        .encode()
    };
    let mut attacks: Vec<(u16, Vec<u8>, u32)> = vec![
        // Random bytes with a plausible immediate.
        (0, pattern(200, 9), RequestImm::new(0, 1).encode()),
        // A response immediate sent as a request.
        (1, header(1, 0, 0).to_vec(), 0x8000_0001),
        // A slot far beyond the connection's.
        (
            2,
            header(1, 0, 0).to_vec(),
            RequestImm::new(60_000, 1).encode(),
        ),
        // Id 0, and an id that disagrees with the immediate's tag.
        (3, header(0, 0, 0).to_vec(), RequestImm::new(3, 0).encode()),
        (
            4,
            header(77, 0, 0).to_vec(),
            RequestImm::new(4, 78).encode(),
        ),
        // Shorter than a header.
        (5, vec![1, 2, 3], RequestImm::new(5, 1).encode()),
        // A payload length beyond the slot, and beyond the bytes written.
        (
            6,
            header(1, 0, u32::MAX).to_vec(),
            RequestImm::new(6, 1).encode(),
        ),
        (
            7,
            header(2, 0, 4000).to_vec(),
            RequestImm::new(7, 2).encode(),
        ),
    ];
    // An unknown function index and non-zero reserved bytes.
    let mut reserved = header(3, 0, 0);
    reserved[40] = 1;
    attacks.push((0, reserved.to_vec(), RequestImm::new(0, 3).encode()));
    attacks.push((1, header(4, 99, 0).to_vec(), RequestImm::new(1, 4).encode()));
    attacks.push((
        2,
        vec![0xff; slot_size],
        RequestImm::new(2, 0x7fff).encode(),
    ));
    // The compact form (no header): an unknown function, a slot beyond the connection's,
    // a payload that reaches past the slot (the WRITE's length is the payload's), and the
    // same request again while it is being answered.
    attacks.push((3, pattern(16, 3), RequestImm::compact(3, 200, 5).encode()));
    attacks.push((4, pattern(16, 4), RequestImm::compact(250, 0, 6).encode()));
    attacks.push((
        5,
        vec![0xee; slot_size],
        RequestImm::compact(5, 0, 7).encode(),
    ));
    attacks.push((6, pattern(8, 6), RequestImm::compact(6, 0, 8).encode()));
    attacks.push((6, pattern(8, 6), RequestImm::compact(6, 0, 8).encode()));
    for (slot, bytes, imm) in &attacks {
        hostile
            .send_raw(0, *slot, bytes, *imm)
            .expect("hostile write");
        assert_eq!(honest.invoke("echo", b"still here").unwrap(), b"still here");
    }
    for i in 0..100u32 {
        assert_eq!(
            honest.invoke("echo", &i.to_le_bytes()).unwrap(),
            i.to_le_bytes()
        );
    }
}

fn ids_cross_the_2_pow_32_boundary<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1, Polling::Hot);
    let first = (1u64 << 32) - 20;
    let mut a = allocate_with(
        open,
        ex.address(),
        AllocationOptions {
            first_id: NonZeroU64::new(first).unwrap(),
            geometry: SlotGeometry::new(4, 4096).unwrap(),
            ..AllocationOptions::default()
        },
    );
    let echo = a.function("echo").unwrap();
    // One at a time, then pipelined, across 2^32 (where a 32-bit id would wrap to 0).
    for i in 0..30u64 {
        assert_eq!(a.invoke("echo", &i.to_le_bytes()).unwrap(), i.to_le_bytes());
    }
    let inputs: Vec<[u8; 8]> = (0..40u64).map(u64::to_le_bytes).collect();
    let mut ok = 0;
    a.invoke_many(echo, inputs.iter().map(|b| &b[..]), |i, r| {
        assert_eq!(r.unwrap(), inputs[i]);
        ok += 1;
    })
    .unwrap();
    assert_eq!(ok, 40);
}

fn timeout_then_the_slot_is_reused<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1, Polling::Hot);
    let timeout = Duration::from_millis(150);
    let mut a = allocate_with(
        open,
        ex.address(),
        AllocationOptions {
            timeout,
            geometry: SlotGeometry::new(1, 4096).unwrap(),
            ..AllocationOptions::default()
        },
    );
    let started = Instant::now();
    assert_eq!(
        a.invoke("slow", &600u64.to_le_bytes()),
        Err(InvokeError::TimedOut(timeout))
    );
    assert!(started.elapsed() >= timeout);
    // The only slot is taken until the late response arrives: the caller hears Busy, not
    // someone else's result.
    assert_eq!(a.invoke("echo", b"early"), Err(InvokeError::Busy));
    std::thread::sleep(Duration::from_millis(700));
    // The late answer is discarded when it is polled; the slot is free again after it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a.invoke("echo", b"late") {
            Ok(out) => {
                assert_eq!(out, b"late");
                break;
            }
            Err(InvokeError::Busy) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("after the timeout: {e}"),
        }
    }
}

fn allocation_refusals<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 2, Polling::WARM);
    let unknown = Allocation::connect(
        open(),
        ex.address(),
        &["echo", "nope", "nada"],
        AllocationOptions::default(),
    )
    .unwrap_err();
    match unknown {
        AllocateError::Refused(HandshakeError::UnknownFunctions { names }) => {
            assert_eq!(names, ["nope", "nada"])
        }
        other => panic!("expected unknown functions, got {other}"),
    }
    let too_many = Allocation::connect(
        open(),
        ex.address(),
        &["echo"],
        AllocationOptions {
            workers: 3,
            ..AllocationOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            too_many,
            AllocateError::Refused(HandshakeError::Refused {
                kind: ErrorKind::TooManyWorkers,
                ..
            })
        ),
        "{too_many}"
    );
    let nobody = Allocation::connect(
        open(),
        "127.0.0.1:1",
        &["echo"],
        AllocationOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(nobody, AllocateError::Connect { .. }), "{nobody}");
    // The executor is unharmed.
    let mut a = allocate(open, ex.address(), 2);
    assert_eq!(a.invoke("echo", b"ok").unwrap(), b"ok");
}

fn warm_workers_sleep_and_wake<F: Fabric>(open: fn() -> F) {
    let ex = executor(
        open,
        1,
        Polling::Warm {
            idle: Duration::from_micros(200),
        },
    );
    let mut a = allocate(open, ex.address(), 1);
    for i in 0..20u8 {
        // Long enough for the worker to fall asleep between calls.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(a.invoke("echo", &[i]).unwrap(), [i]);
    }
    let sleeps = ex.worker_stats()[0]
        .sleeps
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(sleeps >= 10, "the worker slept {sleeps} times");
}

fn async_invocations_on_tokio<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1, Polling::WARM);
    let at = ex.address();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut a = allocate_with(
            open,
            at,
            AllocationOptions {
                timeout: Duration::from_millis(600),
                ..AllocationOptions::default()
            },
        );
        let echo = a.function("echo").unwrap();
        for i in 0..200u32 {
            let out = a.invoke_async(echo, &i.to_le_bytes()).await.unwrap();
            assert_eq!(out, i.to_le_bytes());
        }
        // Waiting long enough to sleep in the reactor, and timing out there. While it
        // waits, the waiting thread (this one: a current-thread runtime) burns no CPU: a
        // spinning wait of 250 ms would use all of it.
        let slow = a.function("slow").unwrap();
        let cpu_before = thread_cpu_time();
        assert_eq!(
            a.invoke_async(slow, &250u64.to_le_bytes()).await.unwrap(),
            b""
        );
        let cpu = thread_cpu_time() - cpu_before;
        assert!(
            cpu < Duration::from_millis(100),
            "the waiting thread used {cpu:?} of CPU during a 250 ms wait"
        );
        assert!(matches!(
            a.invoke_async(slow, &1500u64.to_le_bytes()).await,
            Err(InvokeError::TimedOut(_))
        ));
    });
}

/// With `spin` set, `invoke_many` sleeps on a completion channel once it has spun that long
/// without a result: 4 calls of 150 ms on 2 workers (about 300 ms) cost the waiting thread
/// little CPU (a spinning wait would use all of it), and every result still arrives.
fn invoke_many_sleeps_while_it_waits_when_asked<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 2, Polling::WARM);
    let mut a = allocate_with(
        open,
        ex.address(),
        AllocationOptions {
            workers: 2,
            spin: Some(Duration::from_micros(50)),
            timeout: Duration::from_secs(10),
            ..AllocationOptions::default()
        },
    );
    let slow = a.function("slow").unwrap();
    let input = 150u64.to_le_bytes();
    let mut answered = [false; 4];
    let cpu_before = thread_cpu_time();
    let started = Instant::now();
    a.invoke_many(slow, [&input[..]; 4], |i, r| {
        assert_eq!(r.unwrap(), b"", "call {i}");
        answered[i] = true;
    })
    .unwrap();
    let (cpu, wall) = (thread_cpu_time() - cpu_before, started.elapsed());
    assert_eq!(answered, [true; 4]);
    assert!(
        wall >= Duration::from_millis(290),
        "4 calls of 150 ms on 2 workers in {wall:?}"
    );
    assert!(
        cpu < wall / 3,
        "the waiting thread used {cpu:?} of CPU in {wall:?} of waiting"
    );
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_THREAD is the calling thread.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: initialized by the successful call above (and zeroed before).
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// An executor handle dropped while clients hold allocations stops its workers and closes
/// the clients' control connections: their next call fails, it does not hang.
fn dropping_the_executor_ends_its_allocations<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1, Polling::Hot);
    let mut a = allocate_with(
        open,
        ex.address(),
        AllocationOptions {
            timeout: Duration::from_secs(20),
            ..AllocationOptions::default()
        },
    );
    assert_eq!(a.invoke("echo", b"before").unwrap(), b"before");
    let started = Instant::now();
    drop(ex);
    let err = a.invoke("echo", b"after").unwrap_err();
    assert!(matches!(err, InvokeError::ExecutorGone(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

// ---- child processes ----------------------------------------------------------------------

/// Entry point of child processes (ignored unless run with a role).
#[test]
#[ignore = "entry point of child processes"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let fabric = std::env::var("RAFI_TEST_FABRIC").expect("RAFI_TEST_FABRIC");
    match fabric.as_str() {
        "shm" => run_role(&role, open_shm),
        "tcp" => run_role(&role, open_tcp),
        #[cfg(feature = "verbs")]
        "verbs" => run_role(&role, open_verbs),
        other => panic!("unknown fabric {other}"),
    }
}

fn run_role<F: Fabric>(role: &str, open: fn() -> F) {
    match role {
        // An executor in its own process; prints its address, serves until killed.
        "executor" => {
            let ex = executor(open, 1, Polling::WARM);
            say(&ex.address().to_string());
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        // A client in its own process: checked invocations, then "done".
        "client" => {
            let at = std::env::var("RAFI_TEST_EXECUTOR")
                .unwrap()
                .parse()
                .unwrap();
            let seed: u8 = std::env::var("RAFI_TEST_SEED").unwrap().parse().unwrap();
            let mut a = allocate(open, at, 1);
            for i in 0..300usize {
                let input = pattern(i % 500, seed);
                assert_eq!(a.invoke("echo", &input).unwrap(), input);
            }
            say("done");
        }
        other => panic!("unknown role {other}"),
    }
}
