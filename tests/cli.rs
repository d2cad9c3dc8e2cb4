//! The `rafi` binary, run as a user runs it: `rafi bench pingpong` on shm and tcp, its JSON
//! lines and table, edge sizes, and every way it should fail cleanly (verbs not built in,
//! bad arguments, a peer that dies). No timing assertions: only that values are sane.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Ping-pongs pin two processes to the same two cores and spin: one at a time.
static CORES: Mutex<()> = Mutex::new(());

fn rafi(args: &[&str]) -> Output {
    let _cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
    Command::new(env!("CARGO_BIN_EXE_rafi"))
        .args(args)
        .output()
        .expect("running the rafi binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a ping-pong with `--json` and returns its one JSON object, after checking the
/// fields every report carries.
fn pingpong_json(extra: &[&str]) -> Value {
    bench_json("pingpong", extra)
}

/// Runs `rafi bench SCENARIO --json EXTRA…` and returns its one JSON object, after checking
/// the fields every report carries.
fn bench_json(scenario: &str, extra: &[&str]) -> Value {
    let mut args = vec!["bench", scenario, "--json"];
    args.extend_from_slice(extra);
    let out = rafi(&args);
    assert!(
        out.status.success(),
        "rafi {args:?} failed ({}): {}",
        out.status,
        stderr(&out)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected, got {stdout:?}");
    let v: Value = serde_json::from_str(lines[0]).expect("a valid JSON object");
    assert_eq!(v["scenario"], scenario);
    for field in [
        "size", "iters", "warmup", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "min_ns", "max_ns",
    ] {
        assert!(v[field].is_u64(), "{field} missing or not a count in {v}");
    }
    assert!(v["mean_ns"].is_number(), "mean_ns missing in {v}");
    let n = |f: &str| v[f].as_u64().unwrap();
    assert!(n("min_ns") > 0, "{v}");
    assert!(n("min_ns") <= n("max_ns"), "{v}");
    assert!(n("p50_ns") <= n("p90_ns"), "{v}");
    assert!(n("p90_ns") <= n("p99_ns"), "{v}");
    assert!(n("p99_ns") <= n("p999_ns"), "{v}");
    let mean = v["mean_ns"].as_f64().unwrap();
    assert!(
        mean >= n("min_ns") as f64 && mean <= n("max_ns") as f64,
        "{v}"
    );
    v
}

#[test]
fn shm_write_imm_json() {
    let v = pingpong_json(&[
        "--fabric", "shm", "--size", "64", "--iters", "2000", "--warmup", "100",
    ]);
    assert_eq!(v["fabric"], "shm");
    assert_eq!(v["op"], "write-imm");
    assert_eq!(v["size"], 64);
    assert_eq!(v["iters"], 2000);
    assert_eq!(v["warmup"], 100);
    assert_eq!(v["wait"], "spin");
}

#[test]
fn tcp_write_imm_json() {
    let v = pingpong_json(&[
        "--fabric", "tcp", "--size", "64", "--iters", "2000", "--warmup", "100",
    ]);
    assert_eq!(v["fabric"], "tcp");
    assert_eq!(v["iters"], 2000);
    assert_eq!(v["wait"], "yield");
}

#[test]
fn size_zero_both_ops_both_fabrics() {
    for fabric in ["shm", "tcp"] {
        for op in ["write-imm", "send"] {
            let v = pingpong_json(&[
                "--fabric", fabric, "--op", op, "--size", "0", "--iters", "300", "--warmup", "10",
            ]);
            assert_eq!((v["size"].as_u64(), v["op"].as_str()), (Some(0), Some(op)));
        }
    }
}

#[test]
fn one_mebibyte() {
    for (fabric, op) in [("shm", "write-imm"), ("tcp", "send")] {
        let v = pingpong_json(&[
            "--fabric", fabric, "--op", op, "--size", "1MiB", "--iters", "20", "--warmup", "3",
        ]);
        assert_eq!(v["size"], 1 << 20);
        assert_eq!(v["iters"], 20);
    }
}

#[test]
fn small_sizes_and_block_wait() {
    for size in ["1", "7", "15", "4097"] {
        let v = pingpong_json(&[
            "--fabric", "shm", "--size", size, "--iters", "200", "--warmup", "10", "--wait",
            "block",
        ]);
        assert_eq!(v["wait"], "block");
    }
}

#[test]
fn table_by_default() {
    let out = rafi(&[
        "bench", "pingpong", "--fabric", "shm", "--iters", "500", "--warmup", "10",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].split_whitespace().any(|w| w == "p50_ns"),
        "{stdout}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["pingpong", "shm", "write-imm", "64", "500"],
        "{stdout}"
    );
}

#[test]
fn verbs_without_the_feature_says_how_to_get_it() {
    let out = rafi(&[
        "bench", "pingpong", "--fabric", "verbs", "--size", "64", "--iters", "1000", "--json",
    ]);
    let err = stderr(&out);
    if cfg!(feature = "verbs") {
        eprintln!("built with the verbs feature: only checking that there is no panic");
    } else {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("--features verbs"), "{err}");
        assert!(out.stdout.is_empty());
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    for (args, needle) in [
        (&["--fabric", "infiniband"][..], "unknown fabric"),
        (&["--size", "2G"][..], "more than 1 GiB"),
        (&["--size", "12X"][..], "unknown unit"),
        (&["--iters", "0"][..], "--iters"),
        (&["--op", "read"][..], "--op"),
        (&["--wait", "sleep"][..], "--wait"),
        (&["--cpus", "0"][..], "pair of cpu numbers"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ] {
        let mut all = vec!["bench", "pingpong"];
        all.extend_from_slice(args);
        let out = rafi(&all);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn unusable_cpu_is_a_clear_error() {
    let out = rafi(&["bench", "pingpong", "--cpus", "0,100000", "--iters", "10"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cpu 100000"), "{err}");
}

#[test]
fn peer_hidden_subcommand_refuses_garbage() {
    let _cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(env!("CARGO_BIN_EXE_rafi"))
        .args(["bench", "pingpong-peer"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"not json\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bad control message"), "{err}");
}

/// A child process that is killed and reaped when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The peer is killed mid-run: the measuring side must end with an error, not hang.
#[test]
fn killed_peer_is_an_error_not_a_hang() {
    for fabric in ["shm", "tcp"] {
        let _cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
        let mut parent = Reaped(
            Command::new(env!("CARGO_BIN_EXE_rafi"))
                .args(["bench", "pingpong", "--fabric", fabric, "--json"])
                .args(["--iters", "1000000000", "--wait", "yield"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let parent = &mut parent.0;
        let pid = parent.id();
        let children = format!("/proc/{pid}/task/{pid}/children");
        let deadline = Instant::now() + Duration::from_secs(30);
        let peer = loop {
            match std::fs::read_to_string(&children) {
                Ok(list) if !list.trim().is_empty() => break list.trim().to_owned(),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("skipped: cannot read {children}: {e}");
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the peer never started");
            std::thread::sleep(Duration::from_millis(10));
        };
        // Let it get into the timed loop (not needed for the outcome: an earlier kill
        // fails the handshake instead).
        std::thread::sleep(Duration::from_millis(300));
        let killed = Command::new("kill").args(["-9", &peer]).status().unwrap();
        assert!(killed.success(), "kill -9 {peer}");
        let status = loop {
            if let Some(status) = parent.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline + Duration::from_secs(30) {
                panic!("{fabric}: rafi still runs a minute after its peer was killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        parent
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(1), "{fabric}: {err}");
        assert!(err.contains("peer"), "{fabric}: {err}");
        assert!(!err.contains("panicked"), "{fabric}: {err}");
    }
}

#[test]
fn help_lists_the_flags() {
    let out = rafi(&["bench", "pingpong", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--fabric",
        "--size",
        "--iters",
        "--warmup",
        "--op",
        "--wait",
        "--json",
        "--cpus",
        "--device",
        "--gid-index",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let out = rafi(&["bench", "--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(!help.contains("pingpong-peer"), "{help}");
}

#[test]
fn invoke_json_hot_and_warm_on_both_fabrics() {
    for fabric in ["shm", "tcp"] {
        for mode in ["hot", "warm"] {
            let v = bench_json(
                "invoke",
                &[
                    "--fabric", fabric, "--mode", mode, "--size", "64", "--iters", "2000",
                ],
            );
            assert_eq!(v["fabric"], fabric, "{v}");
            assert_eq!(v["mode"], mode, "{v}");
            assert_eq!(v["size"], 64, "{v}");
            assert_eq!(v["iters"], 2000, "{v}");
            assert_eq!(v["op"], "rafi.echo", "{v}");
        }
    }
    // Sizes from nothing to a mebibyte, and the no-output function.
    for size in ["0", "1M"] {
        let v = bench_json("invoke", &["--size", size, "--iters", "200"]);
        assert_eq!(v["fabric"], "shm");
    }
    let v = bench_json("invoke", &["--function", "rafi.noop", "--iters", "500"]);
    assert_eq!(v["op"], "rafi.noop");
}

#[test]
fn invoke_of_an_unknown_function_is_a_clear_error() {
    let out = rafi(&["bench", "invoke", "--function", "nope", "--iters", "10"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nope"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn executor_announces_itself_and_refuses_bad_libraries() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_rafi"))
        .args([
            "executor",
            "--fabric",
            "shm",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("rafi executor");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_str(&line).expect("one JSON line");
    assert_eq!(v["event"], "listening");
    assert_eq!(v["fabric"], "shm");
    assert!(
        v["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v}"
    );
    assert!(v["functions"]
        .as_array()
        .unwrap()
        .contains(&"rafi.echo".into()));

    let out = rafi(&["executor", "--library", "/nonexistent/libnothing.so"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/nonexistent/libnothing.so"), "{err}");
    let out = rafi(&["executor", "--cores", "x"]);
    assert_eq!(out.status.code(), Some(2));
}

/// On an RDMA device (the soft-RoCE VM in CI): the raw ping-pong and an invocation over
/// verbs, the exact commands of the README.
#[cfg(feature = "verbs")]
#[test]
fn verbs_pingpong_and_invoke_on_the_device() {
    let required = ["RAFI_RXE_VM", "RAFI_REQUIRE_VERBS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if let Err(e) = rafi::fabric::verbs::Device::open(&rafi::fabric::VerbsConfig::from_env()) {
        assert!(!required, "a verbs device is required here: {e}");
        println!("skipped: no verbs device ({e})");
        return;
    }
    let device = std::env::var("RAFI_RDMA_DEVICE").unwrap_or_else(|_| "rxe0".into());
    let v = pingpong_json(&[
        "--fabric", "verbs", "--device", &device, "--size", "64", "--iters", "1000",
    ]);
    assert_eq!(v["fabric"], "verbs");
    let v = bench_json(
        "invoke",
        &[
            "--fabric", "verbs", "--device", &device, "--size", "64", "--iters", "1000",
        ],
    );
    assert_eq!(v["fabric"], "verbs");
}

/// A `rafi executor` on a free port, killed when dropped.
struct RunningExecutor {
    child: std::process::Child,
    address: String,
}

impl RunningExecutor {
    fn start(extra: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_rafi"))
            .args(["executor", "--fabric", "shm", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("rafi executor");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).expect("the listening line");
        let address = v["address"].as_str().unwrap().to_string();
        Self { child, address }
    }
}

impl Drop for RunningExecutor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn invoke_from_the_shell() {
    let ex = RunningExecutor::start(&[]);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rafi"))
            .args(["invoke", "--executor", &ex.address])
            .args(args)
            .output()
            .expect("rafi invoke")
    };
    let out = run(&["rafi.echo", "hello rafi"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello rafi\n");
    let out = run(&["rafi.echo", "--hex", "00ff10"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "00ff10\n");
    let out = run(&["rafi.noop", "x", "--repeat", "100"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("100 calls"), "{}", stderr(&out));
    // Errors: an unknown function, bad hex, and nowhere to invoke.
    let out = run(&["nope", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown function(s): nope"),
        "{}",
        stderr(&out)
    );
    let out = run(&["rafi.echo", "--hex", "0g"]);
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(env!("CARGO_BIN_EXE_rafi"))
        .args(["invoke", "rafi.echo", "x"])
        .env_remove("RAFI_EXECUTOR")
        .env_remove("RAFI_RESOURCE_MANAGER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--executor"), "{}", stderr(&out));
}

#[test]
fn up_demo_runs_a_cluster_and_invokes() {
    let out = rafi(&["up", "--demo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    for expected in [
        "resource manager  http://127.0.0.1:",
        "node local-0",
        "lease 1 granted",
        "rafi.echo(\"hello from rafi\") = \"hello from rafi\"",
        "20000 of 20000 invocations correct",
        "lease 1 released (Released)",
        "accounting: lease 1 of local",
        // 1 echo, 20,000 fanned out, 30,000 timed no-ops: billed by the executor with
        // FETCH_ADD into its manager's counters, reported to the resource manager.
        "50001 invocations",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    // Bad settings are clear errors.
    let out = rafi(&["up", "--nodes", "99"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("node(s) cannot share"),
        "{}",
        stderr(&out)
    );
    let out = rafi(&["up", "--library", "/nonexistent/lib.so"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bench_cold_times_the_phases() {
    for fabric in ["shm", "tcp"] {
        let v = bench_json("cold", &["--fabric", fabric, "--iters", "3"]);
        assert_eq!(v["fabric"], fabric, "{v}");
        assert_eq!(v["iters"], 3, "{v}");
        for phase in [
            "lease_p50_ns",
            "spawn_p50_ns",
            "connect_p50_ns",
            "first_invoke_p50_ns",
        ] {
            assert!(v[phase].as_u64().is_some_and(|n| n > 0), "{phase} in {v}");
        }
        // The phases are parts of the whole.
        let sum: u64 = ["lease_p50_ns", "spawn_p50_ns", "first_invoke_p50_ns"]
            .iter()
            .map(|p| v[*p].as_u64().unwrap())
            .sum();
        assert!(sum <= v["max_ns"].as_u64().unwrap(), "{v}");
    }
}

#[test]
fn status_of_a_running_cluster() {
    use std::io::BufRead;
    let mut up = Command::new(env!("CARGO_BIN_EXE_rafi"))
        .args(["up", "--nodes", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("rafi up");
    let mut reader = std::io::BufReader::new(up.stdout.take().unwrap());
    let mut env = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        if line.contains("RAFI_CLIENT_SECRET=") {
            env = line
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            break;
        }
        line.clear();
    }
    assert_eq!(env.len(), 3, "the clients line: {line:?}");
    let status = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rafi"))
            .arg("status")
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap()
    };
    let out = status(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("local-0") && text.contains("up"), "{text}");
    let out = status(&["--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let out = status(&["--secret", "wrong"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unauthorized"), "{}", stderr(&out));
    let _ = up.kill();
    let _ = up.wait();
}
