//! Runs both applications under `mpirun -np 2` against a whole rafi cluster started in
//! this process (resource manager and executor manager; executors are `rafi executor`
//! processes loading the Rust Black-Scholes library), with small sizes: they must verify
//! their results, and a wrong setting must end every rank with a clear error, not a hang.
//!
//! Needs `mpirun` (Open MPI): without it the tests print why they skip, except under
//! `CI=true`, where that is a failure. The `rafi` binary is the one cargo built beside
//! this test (`cargo test --workspace` builds it), else `$RAFI_BIN`, else a nested build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rafi::cluster::local::{LocalCluster, LocalClusterConfig};
use rafi::fabric::FabricKind;

/// Ranks of every run (each leases one core).
const RANKS: usize = 2;
/// A run that takes longer than this is taken for a hang (the runs take seconds).
const HANG: Duration = Duration::from_secs(240);

/// One mpirun at a time: the machine may have two cores only.
static SERIAL: Mutex<()> = Mutex::new(());

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(3)
        .expect("examples/mpi/rust is three levels below the workspace root")
}

/// `mpirun`'s path, or `None` (with the reason printed) when the test should skip.
fn mpirun() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("mpirun"))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => Some(path),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("mpirun is not installed, and CI=true: scripts/test.sh installs openmpi-bin")
        }
        None => {
            eprintln!("skipped: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)");
            None
        }
    }
}

/// Cores this process may use (`Cpus_allowed_list`).
fn allowed_cores() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .and_then(|list| rafi::cluster::manager::parse_core_list(list.trim()))
        })
        .unwrap_or_else(|| vec![0])
}

/// Builds `-p package` into a target directory of this test's own (no lock shared with
/// the cargo running the test) and returns that directory's debug folder.
fn nested_build(dir: &str, what: &[&str]) -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let status = Command::new(cargo)
        .args(["build", "--offline", "--quiet"])
        .args(what)
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("cannot run cargo");
    assert!(status.success(), "cargo build {what:?} failed");
    target.join("debug")
}

/// The `rafi` binary that runs the executors.
fn rafi_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("RAFI_BIN") {
            return bin.into();
        }
        // This test is target/<profile>/deps/<name>; cargo puts `rafi` in target/<profile>.
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("rafi")));
        match beside {
            Some(bin) if bin.is_file() => bin,
            _ => nested_build("mpi-rafi", &["-p", "rafi", "--bin", "rafi"]).join("rafi"),
        }
    })
}

/// The Rust example function library (the same nested build the root crate's tests use).
fn function_library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        nested_build("example-functions", &["-p", "rafi-example-functions"])
            .join("librafi_example_functions.so")
    })
}

/// A shm cluster of one node whose spare cores are the first `cores` this process may use.
fn cluster(cores: usize) -> LocalCluster {
    let spare: Vec<usize> = allowed_cores().into_iter().take(cores).collect();
    let mut config = LocalClusterConfig::new(FabricKind::Shm, vec![spare]);
    config.executor_binary = rafi_binary().to_path_buf();
    config.libraries = vec![function_library().to_path_buf()];
    LocalCluster::start(config).expect("starting the local cluster")
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `app args` under `mpirun -np RANKS` with the cluster's credentials in the
/// environment (`env` overrides them); kills it and fails if it hangs.
fn run(
    mpirun: &Path,
    cluster: &LocalCluster,
    app: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let (client, secret) = cluster
        .client
        .credential
        .split_once(':')
        .expect("a client:secret credential");
    let mut command = Command::new(mpirun);
    command.args([
        "-np",
        &RANKS.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ]);
    if running_as_root() {
        command.arg("--allow-run-as-root");
    }
    let app_path = match app {
        "blackscholes-offload" => env!("CARGO_BIN_EXE_blackscholes-offload"),
        "small-tasks-overlap" => env!("CARGO_BIN_EXE_small-tasks-overlap"),
        other => panic!("no application {other}"),
    };
    command
        .arg(app_path)
        .args(args)
        .env("RAFI_RESOURCE_MANAGER", cluster.resource_manager())
        .env("RAFI_CLIENT", client)
        .env("RAFI_CLIENT_SECRET", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("cannot start mpirun");
    let started = Instant::now();
    // Drain the pipes on threads so a chatty run cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for mpirun") {
            break status;
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{app} {args:?} still ran after {HANG:?}: a hang\nstdout:\n{}\nstderr:\n{}",
                out_reader.join().unwrap_or_default(),
                err_reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    eprintln!("--- {app} {args:?}: {status}\n{stdout}{stderr}");
    Output {
        status,
        stdout: stdout.into_bytes(),
        stderr: stderr.into_bytes(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON report line of a run's stdout.
fn report(stdout: &str, app: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{') && l.contains(app))
        .unwrap_or_else(|| panic!("no JSON report in:\n{stdout}"));
    serde_json::from_str(line).expect("the report is JSON")
}

#[test]
fn blackscholes_offload_verifies_every_price() {
    let Some(mpirun) = mpirun() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = cluster(RANKS);
    let out = run(
        &mpirun,
        &cluster,
        "blackscholes-offload",
        // 64 KiB slots: about 1600 options per invocation, so several invocations each.
        &[
            "--options",
            "20000",
            "--remote-fraction",
            "0.5",
            "--repetitions",
            "2",
            "--slot-size",
            "65536",
        ],
        &[],
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit status {}: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        stdout.contains("verified: 40000 prices on 2 rank(s) match the local computation"),
        "{stdout}"
    );
    let r = report(&stdout, "blackscholes-offload");
    assert_eq!(r["verified_options"], 40000);
    assert_eq!(r["ranks"], 2);
    assert_eq!(r["remote_workers"], 2);
    // 10000 remote options per rank in chunks of at most (65536 - 64 - 256) / 40.
    assert_eq!(r["invocations_per_rank"], 7);
    for field in [
        "local_only_s",
        "hybrid_s",
        "speedup",
        "remote_part_s",
        "noop_invocations_s",
    ] {
        assert!(r[field].as_f64().is_some_and(|v| v > 0.0), "{field} in {r}");
    }
}

#[test]
fn small_tasks_overlap_verifies_every_task() {
    let Some(mpirun) = mpirun() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = cluster(RANKS);
    let out = run(
        &mpirun,
        &cluster,
        "small-tasks-overlap",
        &[
            "--tasks",
            "60",
            "--compute-options",
            "20000",
            "--repetitions",
            "1",
        ],
        &[],
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit status {}: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        stdout.contains("verified: 120 offloaded tasks on 2 rank(s) match the local computation"),
        "{stdout}"
    );
    let r = report(&stdout, "small-tasks-overlap");
    assert_eq!(r["verified_tasks"], 120);
    let mean = r["mean_task_bytes"].as_f64().unwrap();
    assert!(
        (1024.0..=65536.0).contains(&mean),
        "mean task size {mean} B"
    );
    for field in ["compute_alone_s", "offload_alone_s", "overlapped_s"] {
        assert!(r[field].as_f64().is_some_and(|v| v > 0.0), "{field} in {r}");
    }
    assert!(
        r["overlap_fraction"].as_f64().is_some_and(f64::is_finite),
        "{r}"
    );
}

#[test]
fn a_wrong_secret_ends_every_rank_with_the_refusal() {
    let Some(mpirun) = mpirun() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = cluster(RANKS);
    let out = run(
        &mpirun,
        &cluster,
        "blackscholes-offload",
        &["--options", "1000"],
        &[("RAFI_CLIENT_SECRET", "not-the-secret")],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a wrong secret succeeded");
    for rank in 0..RANKS {
        assert!(
            stderr.contains(&format!("blackscholes-offload: rank {rank}: error: setting up the remote workers failed: leasing 1 shm core(s)")),
            "{stderr}"
        );
    }
    assert!(stderr.contains("401 unauthorized"), "{stderr}");
}

#[test]
fn an_unreachable_resource_manager_is_a_clear_error() {
    let Some(mpirun) = mpirun() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = cluster(RANKS);
    // Port 1 on loopback: nothing listens there.
    let out = run(
        &mpirun,
        &cluster,
        "small-tasks-overlap",
        &["--tasks", "10"],
        &[("RAFI_RESOURCE_MANAGER", "127.0.0.1:1")],
    );
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "an unreachable resource manager succeeded"
    );
    assert!(
        stderr.contains("small-tasks-overlap: rank 0: error")
            && stderr.contains("cannot reach the resource manager at 127.0.0.1:1"),
        "{stderr}"
    );
}

#[test]
fn a_rank_that_gets_no_core_stops_the_others_too() {
    let Some(mpirun) = mpirun() else { return };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One spare core for two ranks: one rank's lease is refused; the other, which got its
    // core, must not wait for it forever.
    let cluster = cluster(1);
    let out = run(
        &mpirun,
        &cluster,
        "blackscholes-offload",
        &["--options", "1000"],
        &[],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "two ranks shared one core");
    assert!(stderr.contains("409 exhausted"), "{stderr}");
    assert!(
        stderr.contains("setting up the remote workers failed on another rank"),
        "{stderr}"
    );
    // Both ranks are gone and the granted lease was released: the core leases again.
    let lease = cluster.client.lease(&rafi::cluster::api::LeaseRequest {
        cores: 1,
        memory_mib: 0,
        gpus: 0,
        duration_ms: 10_000,
        fabric: Some(FabricKind::Shm),
    });
    assert!(lease.is_ok(), "the core stayed leased: {lease:?}");
}
