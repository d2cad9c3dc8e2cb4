//! What an executor manager needs to know: its node, the resource manager, what it may
//! lease, and how it starts executors. Defaults come from the host (online cores, memory,
//! `nvidia-smi -L`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::fabric::FabricKind;

/// The configuration of one executor manager (one per node).
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// The node's name, unique in the cluster (default: the host name).
    pub node_name: String,
    /// The resource manager (`host:port`).
    pub resource_manager: String,
    /// The cluster secret: the bearer credential towards the resource manager and the key
    /// lease tokens are signed with.
    pub secret: String,
    /// Where the allocation service listens (port 0 picks a free one).
    pub listen: SocketAddr,
    /// What clients and the resource manager are told to dial (`host:port`; default: the
    /// address the service got, with an unspecified IP replaced by 127.0.0.1).
    pub advertise: Option<String>,
    /// The fabric every executor of this node uses.
    pub fabric: FabricKind,
    /// Cores batch jobs leave free, which leases may name.
    pub spare_cores: Vec<usize>,
    /// Memory leases may take, in MiB.
    pub memory_mib: u64,
    /// GPUs leases may take (ids as `CUDA_VISIBLE_DEVICES` takes them).
    pub gpus: Vec<String>,
    /// The `rafi` binary that runs `rafi executor`.
    pub executor_binary: PathBuf,
    /// Extra arguments for every executor (e.g. `--library PATH`, `--accept-libraries`).
    pub executor_args: Vec<String>,
    /// A command prefix every executor runs under (a sandbox or container runtime, e.g.
    /// `["systemd-run", "--user", "--scope"]`); empty: none.
    pub sandbox: Vec<String>,
    /// A cgroup v2 directory the manager may create child groups in, with the memory
    /// controller available; each executor then runs in its own child with `memory.max`
    /// set to its lease's memory. `None`: no memory limits (logged at start).
    pub memory_cgroup: Option<PathBuf>,
    /// The most time between heartbeats (the resource manager's interval wins when
    /// shorter; `None`: the resource manager's).
    pub heartbeat: Option<Duration>,
    /// How long an executor may take to print its `listening` line.
    pub spawn_timeout: Duration,
}

impl ManagerConfig {
    /// A configuration with the host's defaults: the host name, every online core but 0,
    /// the host's memory, the GPUs `nvidia-smi -L` lists, this executable as the executor,
    /// no sandbox, no cgroup, the resource manager's heartbeat interval.
    pub fn new(resource_manager: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            node_name: host_name(),
            resource_manager: resource_manager.into(),
            secret: secret.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7800)),
            advertise: None,
            fabric: FabricKind::Shm,
            spare_cores: default_spare_cores(),
            memory_mib: host_memory_mib(),
            gpus: discover_gpus(),
            executor_binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("rafi")),
            executor_args: Vec::new(),
            sandbox: Vec::new(),
            memory_cgroup: None,
            heartbeat: None,
            spawn_timeout: Duration::from_secs(10),
        }
    }

    /// The IP executors bind their control listener (and, on tcp, their fabric) to: the
    /// allocation service's.
    pub(crate) fn executor_ip(&self) -> IpAddr {
        self.listen.ip()
    }
}

/// The host name (`/proc/sys/kernel/hostname`, else `HOSTNAME`, else `localhost`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Every online core but 0 (which the system and batch jobs' helpers tend to use); core 0
/// alone on a one-core host.
pub fn default_spare_cores() -> Vec<usize> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_core_list(s.trim()))
        .unwrap_or_else(|| {
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
        });
    let spare: Vec<usize> = online.iter().copied().filter(|&c| c != 0).collect();
    if spare.is_empty() {
        online
    } else {
        spare
    }
}

/// Parses a kernel core list like `0-3,8,10-11`.
pub fn parse_core_list(s: &str) -> Option<Vec<usize>> {
    let mut cores = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b {
                    return None;
                }
                cores.extend(a..=b);
            }
            None => cores.push(part.trim().parse().ok()?),
        }
    }
    Some(cores)
}

/// `MemTotal` of `/proc/meminfo`, in MiB (0 when unreadable).
pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// The GPUs `nvidia-smi -L` lists, by index; none when it is absent or fails.
pub fn discover_gpus() -> Vec<String> {
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| parse_gpu_list(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

/// The indices of `nvidia-smi -L` lines (`GPU 0: NVIDIA H200 (UUID: GPU-…)`).
pub fn parse_gpu_list(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("GPU "))
        .filter_map(|l| l.split_once(':'))
        .map(|(index, _)| index.trim().to_string())
        .filter(|i| i.parse::<u32>().is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        assert_eq!(
            parse_core_list("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_core_list("5"), Some(vec![5]));
        assert_eq!(parse_core_list("3-1"), None);
        assert_eq!(parse_core_list("x"), None);
        assert!(!default_spare_cores().is_empty());
    }

    #[test]
    fn gpu_listing() {
        let listing = "GPU 0: NVIDIA H200 (UUID: GPU-1234)\nGPU 1: NVIDIA H200 (UUID: GPU-5678)\n\
                       MIG 1g.18gb Device 0: (UUID: MIG-abc)\n";
        assert_eq!(parse_gpu_list(listing), ["0", "1"]);
        assert!(parse_gpu_list("").is_empty());
    }
}
