//! A whole cluster on this host: a resource manager and executor managers ("nodes") with
//! disjoint spare cores, all in this process (the executors are processes of their own).
//! `rafi up` runs one; `rafi bench cold` and tests use it too.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use super::lease::LeaseClient;
use super::manager::{ExecutorManager, ManagerConfig, StartError as ManagerStartError};
use super::resource::{ResourceManager, ResourceManagerConfig, StartError as RmStartError};
use crate::fabric::FabricKind;

/// What to start.
#[derive(Clone, Debug)]
pub struct LocalClusterConfig {
    pub fabric: FabricKind,
    /// Spare cores of each node, one list per node (disjoint).
    pub nodes: Vec<Vec<usize>>,
    /// Function libraries every executor loads.
    pub libraries: Vec<PathBuf>,
    /// The resource manager's database (`:memory:`: nothing persisted).
    pub database: PathBuf,
    /// The `rafi` binary that runs executors.
    pub executor_binary: PathBuf,
    pub heartbeat_interval: Duration,
    /// How long a manager waits for a new executor to listen (an emulated machine can
    /// take far longer than the default).
    pub spawn_timeout: Duration,
}

impl LocalClusterConfig {
    /// One node per entry of `nodes`, on `fabric`, nothing persisted, this executable as the
    /// executor binary.
    pub fn new(fabric: FabricKind, nodes: Vec<Vec<usize>>) -> Self {
        Self {
            fabric,
            nodes,
            libraries: Vec::new(),
            database: PathBuf::from(":memory:"),
            executor_binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("rafi")),
            heartbeat_interval: Duration::from_millis(500),
            spawn_timeout: Duration::from_secs(10),
        }
    }
}

/// Starting the local cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error("starting the resource manager")]
    ResourceManager(#[from] RmStartError),
    #[error("starting the executor manager of node {node}")]
    Manager {
        node: String,
        source: ManagerStartError,
    },
    #[error("node {0} did not register with the resource manager within 10 s")]
    NotRegistered(String),
    #[error("invalid local cluster: {0}")]
    Config(String),
}

/// A running local cluster. Dropping it stops the managers (and their executors) and the
/// resource manager.
pub struct LocalCluster {
    /// The client allowed to lease from it.
    pub client: LeaseClient,
    pub secret: String,
    managers: Vec<(String, Vec<usize>, ExecutorManager)>,
    resource_manager: Option<ResourceManager>,
}

impl LocalCluster {
    /// Starts the resource manager, then every node's executor manager, and waits until all
    /// have registered.
    ///
    /// # Errors
    /// [`LocalClusterError`].
    pub fn start(config: LocalClusterConfig) -> Result<Self, LocalClusterError> {
        let mut seen = std::collections::HashSet::new();
        for cores in &config.nodes {
            if cores.is_empty() || !cores.iter().all(|c| seen.insert(*c)) {
                return Err(LocalClusterError::Config(format!(
                    "every node needs spare cores of its own: {:?}",
                    config.nodes
                )));
            }
        }
        let secret = random_hex(16);
        let client_secret = random_hex(16);
        let resource_manager = ResourceManager::start(ResourceManagerConfig {
            listen: "127.0.0.1:0".parse().expect("a literal address"),
            database: config.database.clone(),
            secret: secret.clone(),
            clients: BTreeMap::from([("local".to_string(), client_secret.clone())]),
            heartbeat_interval: config.heartbeat_interval,
            ..ResourceManagerConfig::default()
        })?;
        let rm_address = resource_manager.address().to_string();
        let memory_per_node = super::manager::host_memory_mib() / config.nodes.len() as u64;
        let mut managers = Vec::new();
        for (i, cores) in config.nodes.iter().enumerate() {
            let name = format!("local-{i}");
            let mut c = ManagerConfig::new(rm_address.clone(), secret.clone());
            c.node_name = name.clone();
            c.listen = "127.0.0.1:0".parse().expect("a literal address");
            c.fabric = config.fabric;
            c.spare_cores = cores.clone();
            c.memory_mib = memory_per_node;
            c.gpus = Vec::new();
            c.executor_binary = config.executor_binary.clone();
            c.spawn_timeout = config.spawn_timeout;
            for lib in &config.libraries {
                c.executor_args
                    .extend(["--library".into(), lib.display().to_string()]);
            }
            let manager =
                ExecutorManager::start(c).map_err(|source| LocalClusterError::Manager {
                    node: name.clone(),
                    source,
                })?;
            managers.push((name, cores.clone(), manager));
        }
        for (name, _, manager) in &managers {
            if manager.wait_registered(Duration::from_secs(10)).is_none() {
                return Err(LocalClusterError::NotRegistered(name.clone()));
            }
        }
        Ok(Self {
            client: LeaseClient::new(rm_address, "local", &client_secret),
            secret,
            managers,
            resource_manager: Some(resource_manager),
        })
    }

    /// The resource manager's address.
    pub fn resource_manager(&self) -> &str {
        &self.client.resource_manager
    }

    /// Each node: its name, spare cores and executor manager.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &[usize], &ExecutorManager)> {
        self.managers
            .iter()
            .map(|(n, c, m)| (n.as_str(), c.as_slice(), m))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, _, manager) in self.managers.drain(..) {
            manager.shutdown();
        }
        if let Some(rm) = self.resource_manager.take() {
            rm.shutdown();
        }
    }
}

/// `bytes` random bytes from the kernel, in hex.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        // No /dev/urandom: the time and the pid, which is still unique on this host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        buf = format!("{t:x}{:x}", std::process::id()).into_bytes();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
