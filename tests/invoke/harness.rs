//! The pieces every end-to-end test uses: a catalog of test functions, an executor on a
//! chosen backend, allocations, and child processes (this test binary re-executed with a
//! role).
// Shared by the `invoke` and `invoke_hot_path` test binaries; each uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rafi::client::{Allocation, AllocationOptions};
use rafi::executor::{Catalog, Executor, ExecutorConfig, Outcome, Polling};
use rafi::fabric::Fabric;

/// The functions of the test catalog, by name; the index is the catalog id.
pub const FUNCTIONS: &[&str] = &[
    "echo",
    "noop",
    "fail",
    "panic",
    "slow",
    "too_big",
    "invalid",
    "allocs",
    "allocate",
    "enter_strict_mode",
];

/// Test functions with every outcome an executor must handle.
pub struct TestCatalog;

impl Catalog for TestCatalog {
    fn resolve(&self, name: &str) -> Option<u32> {
        FUNCTIONS.iter().position(|f| *f == name).map(|i| i as u32)
    }

    fn call(&self, id: u32, input: &[u8], output: &mut [u8]) -> Outcome {
        match FUNCTIONS[id as usize] {
            "echo" => {
                output[..input.len()].copy_from_slice(input);
                Outcome::Output(input.len())
            }
            "noop" => Outcome::Output(0),
            "fail" => Outcome::Failed(-7),
            // What a real catalog does with a panicking function: catch it.
            "panic" => match std::panic::catch_unwind(|| panic!("test function panics")) {
                Ok(()) => Outcome::Output(0),
                Err(_) => Outcome::Panicked,
            },
            "slow" => {
                let ms = input
                    .get(..8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
                std::thread::sleep(Duration::from_millis(ms));
                Outcome::Output(0)
            }
            "too_big" => Outcome::Output(output.len() + 1),
            "invalid" => Outcome::InvalidInput,
            // This worker thread's allocation count so far (with the counting allocator).
            "allocs" => {
                let n = allocations_on_this_thread();
                output[..8].copy_from_slice(&n.to_le_bytes());
                Outcome::Output(8)
            }
            "allocate" => {
                drop(std::hint::black_box(vec![0u8; 16]));
                Outcome::Output(0)
            }
            // Forbids this worker thread every system call but read, write, exit.
            "enter_strict_mode" => match STRICT_MODE.get() {
                Some(enter) => {
                    enter();
                    Outcome::Output(0)
                }
                None => Outcome::Failed(-2),
            },
            _ => Outcome::Failed(-1),
        }
    }
}

/// Set by the test binary that installs the counting allocator.
pub static ALLOC_COUNTER: std::sync::OnceLock<fn() -> u64> = std::sync::OnceLock::new();

/// Set by the test binary that can put a thread under seccomp strict mode.
pub static STRICT_MODE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

fn allocations_on_this_thread() -> u64 {
    ALLOC_COUNTER.get().map_or(0, |f| f())
}

/// An executor with `workers` workers on a fresh device from `open`.
pub fn executor<F: Fabric>(
    open: fn() -> F,
    workers: usize,
    polling: Polling,
) -> Executor<F, TestCatalog> {
    let mut config = ExecutorConfig::new(workers);
    config.polling = polling;
    Executor::start(open(), localhost(), config, Arc::new(TestCatalog)).expect("executor")
}

/// An allocation of `workers` workers for every test function.
pub fn allocate<F: Fabric>(open: fn() -> F, at: SocketAddr, workers: usize) -> Allocation<F> {
    allocate_with(
        open,
        at,
        AllocationOptions {
            workers,
            ..AllocationOptions::default()
        },
    )
}

pub fn allocate_with<F: Fabric>(
    open: fn() -> F,
    at: SocketAddr,
    options: AllocationOptions,
) -> Allocation<F> {
    Allocation::connect(open(), at, FUNCTIONS, options).expect("allocation")
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---- child processes ----------------------------------------------------------------------

/// Environment variable that makes this test binary run `child_main` with a role.
pub const ROLE_VAR: &str = "RAFI_TEST_ROLE";
/// Lines of the child protocol start with this, so libtest's own output is skipped.
pub const LINE_TAG: &str = "@@ ";

/// This test binary, re-executed as a child with `role` and extra environment.
pub struct ChildProcess {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildProcess {
    pub fn spawn(role: &str, env: &[(&str, String)]) -> ChildProcess {
        let exe = std::env::current_exe().expect("current exe");
        let mut cmd = Command::new(exe);
        cmd.args(["child_main", "--exact", "--nocapture", "--ignored"])
            .env(ROLE_VAR, role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix(LINE_TAG) {
                    if tx.send(rest.to_string()).is_err() {
                        return;
                    }
                }
            }
        });
        ChildProcess { child, lines }
    }

    /// The child's next tagged line (panics after 30 s).
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from the child process")
    }

    /// Waits for the child's exit and asserts it succeeded.
    pub fn wait_ok(mut self) {
        let status = self.child.wait().expect("wait for child");
        assert!(status.success(), "child process failed: {status}");
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints a line of the child protocol.
pub fn say(line: &str) {
    println!("{LINE_TAG}{line}");
}

/// Whether the verbs tests can run here: a device opens (it must be `rxe0` inside the
/// soft-RoCE VM). Without one they skip with a line saying so, unless `RAFI_RXE_VM` or
/// `RAFI_REQUIRE_VERBS` is set, where a missing device fails them.
#[cfg(feature = "verbs")]
pub fn verbs_available() -> bool {
    use rafi::fabric::verbs::Device;
    let required = ["RAFI_RXE_VM", "RAFI_REQUIRE_VERBS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    match Device::open(&rafi::fabric::VerbsConfig::from_env()) {
        Ok(device) => {
            if std::env::var_os("RAFI_RXE_VM").is_some() {
                assert_eq!(
                    device.name(),
                    "rxe0",
                    "inside the soft-RoCE VM the device must be rxe0"
                );
            }
            true
        }
        Err(e) if !required => {
            println!("skipped: no verbs device ({e}); set RAFI_REQUIRE_VERBS=1 to fail instead");
            false
        }
        Err(e) => panic!("a verbs device is required here: {e}"),
    }
}
