//! The TOML configuration file (`--config FILE` or `RAFI_CONFIG`). Every setting can also
//! be a flag or an environment variable; a flag wins over the environment, which wins over
//! the file, which wins over the built-in default.
//!
//! ```toml
//! [cluster]
//! secret_file = "/etc/rafi/secret"        # or: secret = "…" (managers and the resource manager)
//! resource_manager = "10.0.0.1:7800"      # where managers and clients find it
//!
//! [resource_manager]
//! listen = "0.0.0.0:7800"
//! database = "/var/lib/rafi/rafi.db"
//! heartbeat_interval_ms = 1000
//! clients = ["rank0:s3cret", "analytics:other"]
//!
//! [executor_manager]
//! node = "node17"
//! listen = "0.0.0.0:7900"
//! fabric = "verbs"
//! spare_cores = "8-15"
//! memory_mib = 65536
//! libraries = ["/opt/rafi/lib/libblackscholes.so"]
//! sandbox = ["systemd-run", "--user", "--scope"]
//!
//! [client]
//! name = "rank0"
//! secret = "s3cret"
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub resource_manager: ResourceManagerSection,
    #[serde(default)]
    pub executor_manager: ExecutorManagerSection,
    #[serde(default)]
    pub client: ClientSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub resource_manager: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceManagerSection {
    pub listen: Option<String>,
    pub database: Option<PathBuf>,
    pub heartbeat_interval_ms: Option<u64>,
    #[serde(default)]
    pub clients: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorManagerSection {
    pub node: Option<String>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub fabric: Option<String>,
    pub spare_cores: Option<String>,
    pub memory_mib: Option<u64>,
    pub gpus: Option<Vec<String>>,
    #[serde(default)]
    pub libraries: Vec<PathBuf>,
    #[serde(default)]
    pub sandbox: Vec<String>,
    pub memory_cgroup: Option<PathBuf>,
    pub accept_libraries: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    pub name: Option<String>,
    pub secret: Option<String>,
}

impl ConfigFile {
    /// Reads `path`, or returns an empty configuration when there is none.
    ///
    /// # Errors
    /// When the file cannot be read or is not valid (unknown keys included).
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in the configuration {}", path.display()))
    }

    /// The cluster secret: `flag`, else the file's `secret`, else its `secret_file`'s
    /// contents (trimmed).
    ///
    /// # Errors
    /// When none is given, or the secret file cannot be read.
    pub fn secret(&self, flag: Option<&str>, flag_file: Option<&Path>) -> anyhow::Result<String> {
        if let Some(s) = flag {
            return Ok(s.to_string());
        }
        let file = flag_file.or(self.cluster.secret_file.as_deref());
        if let Some(path) = file {
            let s = std::fs::read_to_string(path)
                .with_context(|| format!("reading the cluster secret {}", path.display()))?;
            return Ok(s.trim().to_string());
        }
        self.cluster.secret.clone().context(
            "no cluster secret: give --secret-file (or --secret, RAFI_SECRET, or [cluster] \
             secret_file in the configuration)",
        )
    }
}
