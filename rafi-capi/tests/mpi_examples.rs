//! The C and Fortran examples, built with mpicc/mpifort against librafi installed from this
//! build (scripts/install-capi.sh, pkg-config), run under `mpirun -np 2` against a local
//! cluster started in this process: a resource manager and an executor manager on the shm
//! fabric whose executors load the example function libraries.
//!
//! Without mpicc the test is skipped with a message, except under `CI=true`, where that is
//! a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rafi::cluster::local::{LocalCluster, LocalClusterConfig};
use rafi::fabric::FabricKind;

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("rafi-capi sits in the repository")
        .to_path_buf()
}

/// The cargo output directory this test was built into (target/debug, target/release).
fn cargo_out_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/mpi_examples-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lies in <target>/<profile>/deps")
        .to_path_buf()
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `command`; panics with its output when it fails.
fn run(what: &str, command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("rafi-capi-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// In the soft-RoCE guest (`RAFI_RXE_VM`, scripts/rxe-vm.sh) the cluster runs on the verbs
/// fabric over rxe0 (the device named, so that no other is used), with librafi and `rafi`
/// built with verbs on the host beforehand (scripts/test.sh): cargo is not run in the
/// emulated guest.
fn in_rxe_vm() -> bool {
    std::env::var_os("RAFI_RXE_VM").is_some()
}

/// The verbs fabric on rxe0, for everything this test starts (its children inherit the
/// device name).
#[cfg(feature = "verbs")]
fn rxe0_fabric() -> FabricKind {
    std::env::set_var("RAFI_RDMA_DEVICE", "rxe0");
    FabricKind::Verbs
}

#[cfg(not(feature = "verbs"))]
fn rxe0_fabric() -> FabricKind {
    panic!("in the rxe guest this test needs --features verbs");
}

/// Builds librafi (the cdylib and staticlib) into `out_dir`: `cargo test` builds only the
/// crate's test harness, and a library left there by an earlier build may be stale. A
/// no-op when it is up to date.
fn build_librafi(out_dir: &Path) {
    if in_rxe_vm() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--locked", "-p", "rafi-capi"]);
    if out_dir.ends_with("release") {
        build.arg("--release");
    }
    run("building librafi", &mut build);
}

/// The `rafi` binary that runs executors: the workspace build's, built now if missing.
fn rafi_binary(out_dir: &Path) -> PathBuf {
    let binary = out_dir.join("rafi");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--locked", "-p", "rafi", "--bin", "rafi"]);
        if out_dir.ends_with("release") {
            build.arg("--release");
        }
        run("building the rafi binary", &mut build);
    }
    binary
}

/// What the examples need: librafi installed, the function libraries, the cluster.
struct Setup {
    scratch: Scratch,
    prefix: PathBuf,
    bin: PathBuf,
    cluster: LocalCluster,
    ranks: usize,
}

impl Setup {
    fn new() -> Option<Setup> {
        if !have("mpicc") || !have("mpirun") {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(
                !ci,
                "mpicc/mpirun not found, and CI=true: install openmpi-bin and libopenmpi-dev"
            );
            eprintln!(
                "SKIPPED: mpicc or mpirun not found (apt-get install openmpi-bin libopenmpi-dev)"
            );
            return None;
        }
        let scratch = Scratch::new();
        let prefix = scratch.0.join("prefix");
        let bin = scratch.0.join("bin");
        let out_dir = cargo_out_dir();
        build_librafi(&out_dir);
        run(
            "scripts/install-capi.sh",
            Command::new(root().join("scripts/install-capi.sh"))
                .arg("--prefix")
                .arg(&prefix)
                .arg("--from")
                .arg(&out_dir),
        );
        let functions = scratch.0.join("functions");
        run(
            "building the example function libraries",
            Command::new("make")
                .arg("-C")
                .arg(root().join("examples/functions/c"))
                .arg(format!("OUT={}", functions.display())),
        );
        // One node per core, at most two: a rank leases one core; a lease of two spans both.
        let nodes: Vec<Vec<usize>> = (0..std::thread::available_parallelism()
            .map_or(1, |n| n.get()))
            .take(2)
            .map(|core| vec![core])
            .collect();
        let ranks = nodes.len();
        let fabric = if in_rxe_vm() {
            rxe0_fabric()
        } else {
            FabricKind::Shm
        };
        let mut config = LocalClusterConfig::new(fabric, nodes);
        config.executor_binary = rafi_binary(&out_dir);
        if in_rxe_vm() {
            // Starting an executor on verbs in the emulated guest took more than the
            // default 10 s once, while both ranks started theirs at the same time.
            config.spawn_timeout = std::time::Duration::from_secs(60);
        }
        config.libraries = vec![
            functions.join("libecho.so"),
            functions.join("libblackscholes.so"),
        ];
        let cluster = LocalCluster::start(config).expect("a local cluster");
        Some(Setup {
            scratch,
            prefix,
            bin,
            cluster,
            ranks,
        })
    }

    /// Builds the examples of `dir` (relative to the repository) with their Makefile.
    fn make(&self, dir: &str) {
        run(
            &format!("make in {dir}"),
            Command::new("make")
                .arg("-C")
                .arg(root().join(dir))
                .arg(format!("OUT={}", self.bin.display()))
                .env("PKG_CONFIG_PATH", self.prefix.join("lib/pkgconfig")),
        );
    }

    /// `mpirun -np <ranks> program` with the cluster's address and credential.
    fn mpirun(&self, program: &str) -> Command {
        self.mpirun_np(self.ranks, program)
    }

    fn mpirun_np(&self, ranks: usize, program: &str) -> Command {
        let mut command = Command::new("mpirun");
        // Open MPI refuses root without this (CI runs as root).
        if std::env::var("USER").is_ok_and(|u| u == "root") || is_root() {
            command.arg("--allow-run-as-root");
        }
        // A hang is a failure, not a stuck CI job.
        command
            .args(["--oversubscribe", "--timeout", "300", "-np"])
            .arg(ranks.to_string())
            .arg(self.bin.join(program))
            .env("RAFI_RESOURCE_MANAGER", self.cluster.resource_manager())
            .env("RAFI_CLIENT", "local")
            .env("RAFI_CLIENT_SECRET", self.client_secret())
            .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
        // hello_offload's renewal check: its short lease must outlast setting up an
        // allocation, which takes seconds in the emulated guest (8 s was once too short:
        // the lease expired while the client was still connecting to its executor).
        if in_rxe_vm() {
            command.env("RAFI_EXAMPLE_SHORT_LEASE", "20");
        }
        command
    }

    fn client_secret(&self) -> String {
        let credential = &self.cluster.client.credential;
        credential
            .split_once(':')
            .map(|(_, s)| s.to_string())
            .expect("a client:secret credential")
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn mpi_examples() {
    let Some(setup) = Setup::new() else { return };
    setup.make("examples/mpi/c");

    // The life cycle, in C: blocking, non-blocking, fan-out.
    let output = run("hello_offload", &mut setup.mpirun("hello_offload"));
    let out = text(&output);
    assert!(out.contains("hello_offload: all checks passed"), "{out}");
    for rank in 0..setup.ranks {
        assert!(
            out.contains(&format!("echo answered \"hello from rank {rank}\"")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "rank {rank}: 3 invocations from a registered buffer"
            )),
            "{out}"
        );
        for renewal in ["not renewed", "renewed"] {
            assert!(
                out.contains(&format!(
                    "rank {rank}: a short lease, {renewal}, after its first expiry: as expected"
                )),
                "{out}"
            );
        }
    }

    // One rank, a lease over every node: an executor on each, fan-out across them.
    if setup.ranks == 2 {
        let output = run(
            "hello_offload over two nodes",
            setup.mpirun_np(1, "hello_offload").arg("2"),
        );
        let out = text(&output);
        assert!(out.contains("2 core(s) on 2 node(s), 2 worker(s)"), "{out}");
        assert!(out.contains("hello_offload: all checks passed"), "{out}");
    }

    // The offload application, small: local threads and remote workers share the batches
    // (and with no local thread, all of them go remote); every price is checked.
    for threads in ["1", "0"] {
        let output = run(
            "blackscholes_offload",
            setup
                .mpirun("blackscholes_offload")
                .args(["16384", threads]),
        );
        let out = text(&output);
        assert!(out.contains("blackscholes_offload: results match"), "{out}");
    }

    // Every error path, and a killed executor reported as such.
    errors_with_a_killed_executor(&setup);

    // The Fortran module and example.
    if have("mpifort") {
        setup.make("examples/mpi/fortran");
        let output = run("hello_offload_f", &mut setup.mpirun("hello_offload_f"));
        let out = text(&output);
        assert!(
            out.contains("fortran hello_offload: all checks passed"),
            "{out}"
        );
        assert!(
            out.contains("exceeds the 65472 B a request slot holds"),
            "{out}"
        );
        assert!(
            out.contains("a batch priced from a registered buffer"),
            "{out}"
        );
    } else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "mpifort not found, and CI=true: install gfortran");
        eprintln!("SKIPPED the Fortran example: mpifort not found (apt-get install gfortran)");
    }
}

/// Runs `errors`; once every rank says it is ready, kills the executors and tells them.
fn errors_with_a_killed_executor(setup: &Setup) {
    let sync = setup.scratch.0.join("sync");
    std::fs::create_dir_all(&sync).expect("the sync directory");
    let child = setup
        .mpirun("errors")
        .env("RAFI_TEST_SYNC_DIR", &sync)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun errors");
    // The ranks get there after every other check; mpirun's own timeout ends a hang.
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = |rank: usize| sync.join(format!("ready.{rank}")).exists();
    while !(0..setup.ranks).all(ready) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut killed = 0;
    if (0..setup.ranks).all(ready) {
        for (_, _, manager) in setup.cluster.nodes() {
            for executor in manager.running() {
                let pid = executor.pid.expect("a started executor").to_string();
                run("kill", Command::new("kill").args(["-KILL", &pid]));
                killed += 1;
            }
        }
    }
    std::fs::write(sync.join("killed"), b"").expect("the killed flag");
    let output = child.wait_with_output().expect("mpirun errors ended");
    let out = text(&output);
    assert!(
        output.status.success(),
        "errors failed ({}):\n{out}",
        output.status
    );
    assert_eq!(
        killed, setup.ranks,
        "one executor per rank was running:\n{out}"
    );
    assert!(out.contains("errors: all checks passed"), "{out}");
    for expected in [
        "a wrong secret                     ok: 3",
        "(401 unauthorized)",
        "a forged lease token               ok: 4",
        "refused (forged)",
        "an oversize input                  ok: 7",
        "(nothing was sent)",
        "a buffer range past its end        ok: 1",
        "a buffer range larger than a slot  ok: 7",
        "invoke on a killed executor        ok: 9",
        "non-blocking on a killed executor  ok: 9",
    ] {
        assert!(out.contains(expected), "no '{expected}' in:\n{out}");
    }
}
