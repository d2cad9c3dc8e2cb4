//! The hot path of an invocation — client and executor worker — allocates nothing and
//! makes no system call on the shm fabric. Allocations are counted per thread by a
//! counting global allocator (the worker's count is read by a test function running on
//! the worker itself); system calls are forbidden outright with strict mode's rule (a
//! seccomp filter under which the kernel kills the process at any call but read, write,
//! exit and sigreturn).

#[path = "invoke/harness.rs"]
mod harness;

use std::time::Duration;

use harness::*;
use rafi::client::AllocationOptions;
use rafi::executor::Polling;
use rdma_mock::alloc_counter::{allocations, CountingAllocator};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn open_shm() -> rdma_mock::Device {
    rdma_mock::Device::open(rdma_mock::DeviceConfig::new(rdma_mock::Fabric::Shm)).expect("shm")
}

fn worker_allocations<F: rafi::fabric::Fabric>(a: &mut rafi::client::Allocation<F>) -> u64 {
    let out = a.invoke("allocs", b"").expect("allocs");
    u64::from_le_bytes(out[..8].try_into().unwrap())
}

#[test]
fn no_allocation_on_the_hot_path_shm() {
    no_allocation_on_the_hot_path(open_shm);
}

/// On verbs (run in the soft-RoCE VM). The rxe provider rings its doorbell with a write(2)
/// to the kernel; hardware providers write a doorbell register, so only the allocation
/// half of the claim is checked on verbs.
#[cfg(feature = "verbs")]
#[test]
fn no_allocation_on_the_hot_path_verbs() {
    if verbs_available() {
        no_allocation_on_the_hot_path(|| {
            rafi::fabric::verbs::Device::open(&rafi::fabric::VerbsConfig::from_env())
                .expect("verbs")
        });
    }
}

fn no_allocation_on_the_hot_path<F: rafi::fabric::Fabric>(open: fn() -> F) {
    let _ = ALLOC_COUNTER.set(allocations);
    let ex = executor(open, 1, Polling::Hot);
    let mut a = allocate(open, ex.address(), 1);
    let echo = a.function("echo").unwrap();
    let allocs = a.function("allocs").unwrap();
    let input = pattern(64, 1);
    let inputs: Vec<Vec<u8>> = (0..64).map(|i| pattern(100, i)).collect();
    let mut out = vec![0u8; a.max_payload()];
    // Registered once, outside the measured rounds; invoked from in place (2000 B: not
    // inline, so the fabric reads the buffer itself).
    let mut buffer = a.input_buffer(2000).unwrap();
    buffer.as_mut_slice().copy_from_slice(&pattern(2000, 2));
    let mut round = |a: &mut rafi::client::Allocation<F>| {
        for _ in 0..1000 {
            assert_eq!(a.invoke_into(echo, &input, &mut out).unwrap(), 64);
            let view = a.invoke_view(echo, &input).unwrap();
            assert_eq!(view.len(), 64);
            drop(view);
            let view = a.invoke_from(echo, &buffer, 0..2000).unwrap();
            assert_eq!(view.len(), 2000);
        }
        let mut answered = 0;
        a.invoke_many(echo, inputs.iter().map(Vec::as_slice), |_, r| {
            assert_eq!(r.map(<[u8]>::len), Ok(100));
            answered += 1;
        })
        .unwrap();
        assert_eq!(answered, 64);
        // The worker's own count, read without allocating on either side.
        let mut count = [0u8; 8];
        a.invoke_into(allocs, b"", &mut count).unwrap();
        u64::from_le_bytes(count)
    };
    let _warm_up = round(&mut a);
    let worker_before = worker_allocations(&mut a);
    let client_before = allocations();
    let worker_after = round(&mut a);
    let client_after = allocations();
    assert_eq!(client_after - client_before, 0, "client thread allocated");
    assert_eq!(worker_after - worker_before, 0, "worker thread allocated");
    // The counters would pass vacuously if they never moved.
    a.invoke("allocate", b"").unwrap();
    assert!(
        worker_allocations(&mut a) > worker_after,
        "the worker's count moves"
    );
    let before = allocations();
    let _ = a.invoke("echo", b"x").unwrap();
    assert!(allocations() > before, "the client's count moves");
}

#[test]
fn no_system_call_on_the_hot_path() {
    let child = ChildProcess::spawn("strict", &[("RAFI_TEST_FABRIC", "shm".into())]);
    assert_eq!(child.line(), "ready");
    // Printed only if 10,000 invocations survived seccomp strict mode on both threads.
    assert_eq!(child.line(), "done 10000");
}

#[test]
#[ignore = "entry point of child processes"]
fn child_main() {
    if std::env::var(ROLE_VAR).as_deref() != Ok("strict") {
        return;
    }
    let _ = STRICT_MODE.set(enter_strict_mode);
    let ex = executor(open_shm, 1, Polling::Hot);
    let mut a = allocate_with(
        open_shm,
        ex.address(),
        AllocationOptions {
            // A slow answer would read the clock (a system call on some machines, this
            // one included) for its timeout and check the executor with another.
            timeout: Duration::MAX,
            liveness_interval: Duration::MAX,
            ..AllocationOptions::default()
        },
    );
    let echo = a.function("echo").unwrap();
    let input = pattern(64, 3);
    let mut out = [0u8; 64];
    for _ in 0..100 {
        a.invoke_into(echo, &input, &mut out).unwrap();
    }
    // From its next call on, the worker thread runs under strict mode too.
    a.invoke("enter_strict_mode", b"").unwrap();
    say("ready");
    let done = format!("{LINE_TAG}done 10000\n");
    enter_strict_mode();
    for _ in 0..10_000 {
        if a.invoke_into(echo, &input, &mut out) != Ok(64) || out[..] != input[..] {
            // SAFETY: _exit is allowed under strict mode; a wrong answer fails the test.
            unsafe { libc::syscall(libc::SYS_exit, 1) };
        }
    }
    // SAFETY: writes a live buffer to stdout, one of the calls strict mode allows.
    unsafe { libc::write(1, done.as_ptr().cast(), done.len()) };
    // Strict mode forbids exit_group: end this thread and let the parent kill the rest.
    // SAFETY: SYS_exit ends the calling thread; nothing runs after it.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
}

/// From here on the calling thread may only use read, write, _exit and sigreturn; any
/// other system call kills the process.
///
/// This is seccomp strict mode's rule, installed as a filter: strict mode itself also
/// disables the time-stamp counter (the kernel sets TIF_NOTSC), and workers time function
/// calls with `rdtsc` for billing, which is no system call.
pub fn enter_strict_mode() {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let allow_if = |nr: libc::c_long, skip_to_allow: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: skip_to_allow,
        jf: 0,
        k: nr as u32,
    };
    // seccomp_data: nr at offset 0, arch at offset 4.
    let mut program = [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 5,
            k: ARCH,
        },
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        allow_if(libc::SYS_read, 4),
        allow_if(libc::SYS_write, 3),
        allow_if(libc::SYS_exit, 2),
        allow_if(libc::SYS_rt_sigreturn, 1),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: prctl with constant arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "no_new_privs unavailable");
    // SAFETY: `fprog` points at a live, well-formed filter program for the call's duration
    // (the kernel copies it).
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    assert_eq!(rc, 0, "seccomp filter mode unavailable");
}
