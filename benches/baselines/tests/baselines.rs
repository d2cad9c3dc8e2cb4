//! The baseline binaries end to end: each runs with a few round trips and prints parseable
//! reports; a server that corrupts a reply, a bad flag and (for MPI) a wrong rank count
//! make them fail with a message. No timing is asserted: only the reports' shape.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rafi::bench::LatencyReport;

/// A run that takes longer than this has hung (a test failure, not a measurement).
const HANG: Duration = Duration::from_secs(180);

const TCP: &str = env!("CARGO_BIN_EXE_baseline-tcp");
const GRPC: &str = env!("CARGO_BIN_EXE_baseline-grpc");
const MPI: &str = env!("CARGO_BIN_EXE_baseline-mpi");

/// Runs `cmd` to completion (killed after [`HANG`]) and returns its output.
fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let start = Instant::now();
    while child.try_wait().expect("waiting for the child").is_none() {
        if start.elapsed() > HANG {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reaping the child");
            panic!(
                "{what} hung for {HANG:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collecting the output")
}

/// Two cores this test may use, as `A,B` (the same core twice on a one-core machine).
fn cpus() -> String {
    let allowed = rafi::bench::cpus::allowed_cpus().unwrap_or_else(|| vec![0, 1]);
    let a = allowed.first().copied().unwrap_or(0);
    let b = allowed.get(1).copied().unwrap_or(a);
    format!("{a},{b}")
}

/// The JSON reports of a successful run, checked for shape: one per size, in order, with
/// the fields, ordering and counts asked for.
fn reports(
    out: &Output,
    fabric: &str,
    op: &str,
    sizes: &[usize],
    iters: u64,
) -> Vec<LatencyReport> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let reports: Vec<LatencyReport> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    assert_eq!(reports.len(), sizes.len(), "{stdout}");
    for (r, &size) in reports.iter().zip(sizes) {
        assert_eq!(
            (r.scenario.as_str(), r.fabric.as_str(), r.op.as_str()),
            ("baseline", fabric, op)
        );
        assert_eq!((r.size, r.iters), (size, iters));
        assert!(r.min_ns > 0, "{r:?}");
        assert!(
            r.min_ns <= r.p50_ns
                && r.p50_ns <= r.p90_ns
                && r.p90_ns <= r.p99_ns
                && r.p99_ns <= r.p999_ns,
            "{r:?}"
        );
        // Percentiles are histogram buckets (3 digits), the maximum is exact.
        assert!(r.p999_ns as f64 <= r.max_ns as f64 * 1.001 + 1.0, "{r:?}");
        assert!(
            r.min_ns as f64 <= r.mean_ns && r.mean_ns <= r.max_ns as f64,
            "{r:?}"
        );
        assert_eq!(r.extra["verified"], true);
        assert!(r.extra.contains_key("client_cpu") && r.extra.contains_key("server_cpu"));
    }
    reports
}

/// Asserts that the run failed and said `needle` on stderr.
fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it succeeded; stderr:\n{stderr}");
    assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
}

#[test]
fn tcp_blocking_and_busy() {
    for poll in ["block", "busy"] {
        let out = run(Command::new(TCP).args([
            "--sizes",
            "8,1K,64K",
            "--iters",
            "40",
            "--warmup",
            "5",
            "--json",
            "--poll",
            poll,
            "--cpus",
            &cpus(),
        ]));
        for r in reports(&out, "tcp", "reqresp", &[8, 1024, 65536], 40) {
            assert_eq!((r.warmup, r.extra["poll"].as_str()), (5, Some(poll)));
        }
    }
}

#[test]
fn tcp_table_output() {
    let out = run(Command::new(TCP).args(["--sizes", "64", "--iters", "10", "--warmup", "1"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.starts_with("scenario"), "{stdout}");
    assert!(
        stdout.lines().nth(1).is_some_and(|l| l.contains("reqresp")),
        "{stdout}"
    );
}

#[test]
fn tcp_checks_every_reply() {
    // Round trips 0..5 are warm-up, 5..25 timed: a bad reply in either is caught, even
    // the very last one.
    for at in ["2", "24"] {
        let out = run(Command::new(TCP).args([
            "--sizes",
            "64",
            "--iters",
            "20",
            "--warmup",
            "5",
            "--corrupt-at",
            at,
        ]));
        fails_with(&out, "does not echo faithfully");
    }
}

#[test]
fn tcp_server_that_dies_is_an_error() {
    let out = run(Command::new(TCP).args(["--sizes", "64", "--iters", "20", "--crash-at", "7"]));
    fails_with(&out, "closed the connection");
}

#[test]
fn bad_flags_fail_with_a_message() {
    for exe in [TCP, GRPC] {
        fails_with(&run(Command::new(exe).arg("--bogus")), "--bogus");
        fails_with(
            &run(Command::new(exe).args(["--sizes", "5M"])),
            "out of range",
        );
        fails_with(&run(Command::new(exe).args(["--iters", "0"])), "--iters");
        fails_with(
            &run(Command::new(exe).args(["--cpus", "0,100000"])),
            "not available",
        );
    }
}

#[test]
fn grpc_unary() {
    let out = run(Command::new(GRPC).args([
        "--sizes",
        "1,64K",
        "--iters",
        "30",
        "--warmup",
        "3",
        "--json",
        "--cpus",
        &cpus(),
    ]));
    reports(&out, "grpc", "unary", &[1, 65536], 30);
}

#[test]
fn grpc_checks_every_reply() {
    let out = run(Command::new(GRPC).args([
        "--sizes",
        "64",
        "--iters",
        "20",
        "--warmup",
        "5",
        "--corrupt-at",
        "24",
    ]));
    fails_with(&out, "does not echo faithfully");
}

/// `mpirun -np N` with what this machine needs (root, two cores), or `None` with a message
/// when Open MPI is not installed outside CI.
fn mpirun(np: &str) -> Option<Command> {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join("mpirun").is_file()));
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mpirun is missing (CI must install openmpi-bin and libopenmpi-dev)"
        );
        eprintln!("skipped: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)");
        return None;
    }
    let mut cmd = Command::new("mpirun");
    if is_root() {
        cmd.arg("--allow-run-as-root");
    }
    cmd.args(["--oversubscribe", "-np", np, MPI]);
    Some(cmd)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

#[test]
fn mpi_pingpong_and_handwork() {
    for op in ["pingpong", "handwork"] {
        let Some(mut cmd) = mpirun("2") else { return };
        let out = run(cmd.args([
            "--op",
            op,
            "--sizes",
            "8,1K",
            "--iters",
            "50",
            "--warmup",
            "5",
            "--json",
            "--cpus",
            &cpus(),
        ]));
        let rs = reports(&out, "mpi", op, &[8, 1024], 50);
        assert!(rs[0].extra["mpi_library"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
    }
}

#[test]
fn mpi_checks_every_reply() {
    for op in ["pingpong", "handwork"] {
        let Some(mut cmd) = mpirun("2") else { return };
        let out = run(cmd.args([
            "--op",
            op,
            "--sizes",
            "64",
            "--iters",
            "20",
            "--warmup",
            "5",
            "--no-pin",
            "--corrupt-at",
            "24",
        ]));
        fails_with(&out, "does not echo faithfully");
    }
}

#[test]
fn mpi_needs_two_ranks_and_good_flags() {
    let Some(mut cmd) = mpirun("3") else { return };
    fails_with(
        &run(cmd.args(["--iters", "5", "--no-pin"])),
        "exactly 2 ranks",
    );
    let Some(mut cmd) = mpirun("2") else { return };
    fails_with(&run(cmd.args(["--op", "nope"])), "--op");
}
