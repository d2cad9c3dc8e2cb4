//! A whole cluster on one host for the tests in `tests/cluster.rs`: a resource manager
//! (SQLite in a temporary directory), executor managers in this process or as `rafi
//! executor-manager` child processes, the API calls a test makes, deadlines, this test
//! binary re-executed with a role, and "hosts" in network namespaces joined by a bridge.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rafi::cluster::api::{LeaseStatus, NodeState, NodeStatus, Usage};
use rafi::cluster::http::call;
use rafi::cluster::lease::LeaseClient;
use rafi::cluster::manager::{ExecutorManager, ManagerConfig};
use rafi::cluster::resource::{ResourceManager, ResourceManagerConfig};
use rafi::fabric::FabricKind;

pub const SECRET: &str = "cluster-secret";
pub const CLIENT: &str = "rank-0";
pub const CLIENT_SECRET: &str = "pw0";
/// Short, so that liveness and lease ends show within a fraction of a second.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
/// How long a test waits for something that should happen soon (a failure, not a pass,
/// waits this long).
pub const PATIENCE: Duration = Duration::from_secs(15);
/// The function every scenario invokes (a built-in of `rafi executor`).
pub const ECHO: &str = "rafi.echo";

/// Polls `f` every 10 ms until it holds; panics naming `what` after [`PATIENCE`].
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A client device of `fabric` (tcp listening on `tcp_ip` when given, else loopback).
pub fn open(fabric: FabricKind, tcp_ip: Option<&str>) -> rdma_mock::Device {
    let kind = match fabric {
        FabricKind::Shm => rdma_mock::Fabric::Shm,
        FabricKind::Tcp => rdma_mock::Fabric::Tcp,
        FabricKind::Verbs => panic!("the cluster tests run on the rdma-mock fabrics"),
    };
    let mut config = rdma_mock::DeviceConfig::new(kind);
    if let Some(ip) = tcp_ip {
        config.tcp_listen = format!("{ip}:0").parse().expect("an IP address");
    }
    rdma_mock::Device::open(config).expect("a client device")
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "rafi-cluster-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The resource manager's configuration: the database in `dir`, one client, short
/// heartbeats and ticks.
pub fn rm_config(dir: &Path, listen: &str) -> ResourceManagerConfig {
    ResourceManagerConfig {
        listen: listen.parse().expect("an address"),
        database: dir.join("resource.db"),
        secret: SECRET.into(),
        clients: BTreeMap::from([(CLIENT.to_string(), CLIENT_SECRET.to_string())]),
        heartbeat_interval: HEARTBEAT,
        tick_interval: Duration::from_millis(20),
        ..ResourceManagerConfig::default()
    }
}

/// An executor manager of `node` with `spare_cores`, started in this process.
pub fn manager_config(rm: &str, fabric: FabricKind, node: &str, spare: &[usize]) -> ManagerConfig {
    let mut c = ManagerConfig::new(rm, SECRET);
    c.node_name = node.into();
    c.listen = "127.0.0.1:0".parse().expect("an address");
    c.fabric = fabric;
    c.spare_cores = spare.to_vec();
    c.memory_mib = 1024;
    c.gpus = vec![];
    c.executor_binary = env!("CARGO_BIN_EXE_rafi").into();
    c
}

/// The API calls a test makes, against the resource manager at `rm`.
pub fn lease_client(rm: &str) -> LeaseClient {
    LeaseClient::new(rm, CLIENT, CLIENT_SECRET)
}

pub fn get<T: serde::de::DeserializeOwned>(rm: &str, path: &str) -> T {
    call(rm, "GET", path, SECRET, None::<&()>).expect("a GET the resource manager answers")
}

pub fn nodes(rm: &str) -> Vec<NodeStatus> {
    get(rm, "/v1/nodes")
}

pub fn node_named(rm: &str, name: &str) -> Option<NodeStatus> {
    nodes(rm).into_iter().find(|n| n.name == name)
}

pub fn leases(rm: &str) -> Vec<LeaseStatus> {
    get(rm, "/v1/leases")
}

pub fn lease_status(rm: &str, lease: u64) -> LeaseStatus {
    leases(rm)
        .into_iter()
        .find(|l| l.lease == lease)
        .unwrap_or_else(|| panic!("lease {lease} is not listed"))
}

pub fn usage(rm: &str, lease: u64) -> Usage {
    get::<Vec<Usage>>(rm, "/v1/usage")
        .into_iter()
        .find(|u| u.lease == lease)
        .unwrap_or_else(|| panic!("no usage of lease {lease}"))
}

/// Every leased core of the cluster, by node name.
pub fn leased_cores(rm: &str) -> BTreeMap<String, Vec<usize>> {
    nodes(rm)
        .into_iter()
        .map(|n| (n.name, n.leased_cores))
        .collect()
}

/// A resource manager and executor managers, all in this process.
pub struct Cluster {
    /// Dropped first: their executors end before the resource manager goes.
    pub managers: Vec<ExecutorManager>,
    /// The node name of each manager.
    pub names: Vec<String>,
    pub rm: Option<ResourceManager>,
    /// `127.0.0.1:port`, the same across [`Cluster::restart_resource_manager`].
    pub rm_addr: String,
    pub dir: TempDir,
}

impl Cluster {
    /// A resource manager and one manager per `(name, spare cores)`, all registered and up.
    pub fn start(fabric: FabricKind, nodes: &[(&str, &[usize])]) -> Cluster {
        let dir = TempDir::new();
        let rm = ResourceManager::start(rm_config(dir.path(), "127.0.0.1:0"))
            .expect("the resource manager starts");
        let rm_addr = rm.address().to_string();
        let managers = nodes
            .iter()
            .map(|(name, spare)| {
                let m = ExecutorManager::start(manager_config(&rm_addr, fabric, name, spare))
                    .expect("the executor manager starts");
                assert!(
                    m.wait_registered(PATIENCE).is_some(),
                    "node {name} registers"
                );
                m
            })
            .collect();
        Cluster {
            managers,
            names: nodes.iter().map(|(name, _)| name.to_string()).collect(),
            rm: Some(rm),
            rm_addr,
            dir,
        }
    }

    pub fn client(&self) -> LeaseClient {
        lease_client(&self.rm_addr)
    }

    /// The manager of node `name`.
    pub fn manager(&self, name: &str) -> &ExecutorManager {
        let i = self
            .names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no manager of node {name}"));
        &self.managers[i]
    }

    /// Waits until no manager runs an executor.
    pub fn wait_no_executors(&self, why: &str) {
        eventually(why, || self.managers.iter().all(|m| m.running().is_empty()));
    }

    /// Shuts the resource manager down and starts it again on the same address and
    /// database; returns the time (Unix ms) it started again.
    pub fn restart_resource_manager(&mut self) -> u64 {
        if let Some(rm) = self.rm.take() {
            rm.shutdown();
        }
        let restarted = rafi::cluster::token::now_millis();
        let rm = ResourceManager::start(rm_config(self.dir.path(), &self.rm_addr))
            .expect("the resource manager starts again on its address and database");
        self.rm = Some(rm);
        restarted
    }
}

/// Waits until node `name` is registered and up.
pub fn wait_up(rm: &str, name: &str) -> NodeStatus {
    let mut found = None;
    eventually(&format!("node {name} up"), || {
        found = node_named(rm, name).filter(|n| n.state == NodeState::Up);
        found.is_some()
    });
    found.expect("found")
}

// ---- child processes ----------------------------------------------------------------------

/// The environment variable that makes this test binary run `child_main` with a role.
pub const ROLE_VAR: &str = "RAFI_CLUSTER_TEST_ROLE";
/// Lines of the child protocol start with this, so libtest's own output is skipped.
pub const LINE_TAG: &str = "@@ ";

/// A child process (killed and reaped on drop) whose tagged stdout lines are read.
pub struct ChildProcess {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildProcess {
    /// `program args…` with `env`, stdout read for lines tagged [`LINE_TAG`].
    pub fn spawn(program: &[&str], env: &[(&str, String)]) -> ChildProcess {
        let mut cmd = Command::new(program[0]);
        cmd.args(&program[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program:?}: {e}"));
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

    /// This test binary with `role` (see `child_main`).
    pub fn role(role: &str, env: &[(&str, String)]) -> ChildProcess {
        let exe = std::env::current_exe().expect("current exe");
        let exe = exe.to_str().expect("a UTF-8 path");
        let mut env = env.to_vec();
        env.push((ROLE_VAR, role.to_string()));
        ChildProcess::spawn(
            &[exe, "child_main", "--exact", "--nocapture", "--ignored"],
            &env,
        )
    }

    /// The child's next tagged line.
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(PATIENCE)
            .expect("a line from the child process")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Prints a line of the child protocol.
pub fn say(line: &str) {
    println!("{LINE_TAG}{line}");
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // pid (comm) state ppid …; comm may hold spaces and parentheses.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// SIGKILLs process `pid` (one this test started).
pub fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The cores each thread of process `pid` may run on, for the threads pinned to a single
/// core: the set of those cores.
pub fn pinned_cores(pid: u32) -> std::collections::BTreeSet<usize> {
    let mut cores = std::collections::BTreeSet::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return cores;
    };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(str::trim)
            .and_then(rafi::cluster::manager::parse_core_list);
        if let Some([core]) = allowed.as_deref() {
            cores.insert(*core);
        }
    }
    cores
}

// ---- hosts in network namespaces ----------------------------------------------------------

/// "Hosts" on one LAN: network namespaces, each joined by a veth pair to a bridge that
/// lives in a namespace of its own (the switch), plus the root namespace (this test, the
/// client) on the same LAN. Each host has its own address on `10.214.N.0/24`. Every
/// process left in the namespaces is killed and everything is removed on drop.
pub struct Lan {
    tag: String,
    switch: String,
    /// (namespace, address) per host, in the order asked.
    pub hosts: Vec<(String, String)>,
    /// This (root) namespace's address on the LAN.
    pub our_ip: String,
    our_veth: String,
}

impl Lan {
    /// A LAN with one namespace per name in `hosts`.
    ///
    /// # Errors
    /// Why it cannot be built (no `ip`, not root, …); what was built is removed.
    pub fn create(hosts: &[&str]) -> Result<Lan, String> {
        let pid = std::process::id();
        let tag = format!("rc{pid}");
        let subnet = format!("10.214.{}", pid % 250);
        let mut lan = Lan {
            switch: format!("rafi-{tag}-lan"),
            hosts: Vec::new(),
            our_ip: format!("{subnet}.1"),
            our_veth: format!("{tag}h"),
            tag,
        };
        let sw = lan.switch.clone();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        // This namespace's port.
        let (ours, ours_sw) = (lan.our_veth.clone(), format!("{}hs", lan.tag));
        ip(&[
            "link", "add", &ours, "type", "veth", "peer", "name", &ours_sw,
        ])?;
        lan.plug(&ours_sw)?;
        ip(&["addr", "add", &format!("{}/24", lan.our_ip), "dev", &ours])?;
        ip(&["link", "set", &ours, "up"])?;
        for (i, name) in hosts.iter().enumerate() {
            let ns = format!("rafi-{}-{name}", lan.tag);
            let address = format!("{subnet}.{}", i + 2);
            let (end, end_sw) = (format!("{}n{i}", lan.tag), format!("{}n{i}s", lan.tag));
            ip(&["netns", "add", &ns])?;
            lan.hosts.push((ns.clone(), address.clone()));
            ip(&["link", "add", &end, "type", "veth", "peer", "name", &end_sw])?;
            ip(&["link", "set", &end, "netns", &ns])?;
            lan.plug(&end_sw)?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                &end,
            ])?;
            ip(&["-n", &ns, "link", "set", &end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    /// Moves `veth` into the switch namespace and onto its bridge.
    fn plug(&self, veth: &str) -> Result<(), String> {
        ip(&["link", "set", veth, "netns", &self.switch])?;
        ip(&["-n", &self.switch, "link", "set", veth, "master", "br0"])?;
        ip(&["-n", &self.switch, "link", "set", veth, "up"])
    }

    /// The processes in namespace `ns`.
    fn pids(ns: &str) -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for (ns, _) in &self.hosts {
            for pid in Lan::pids(ns) {
                kill_pid(pid);
            }
        }
        let _ = ip(&["link", "del", &self.our_veth]);
        for (ns, _) in &self.hosts {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

/// Runs `ip args…`; the error says which step failed and why.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
