//! The resource manager's configuration, with documented defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the resource manager listens, where it keeps its state, who may talk to it.
#[derive(Clone, Debug)]
pub struct ResourceManagerConfig {
    /// The HTTP address. Default `127.0.0.1:7800`; port 0 picks a free port (see
    /// [`super::ResourceManager::address`]).
    pub listen: SocketAddr,
    /// The SQLite database file, created if missing. Default `rafi-resource.db` (in the
    /// working directory); `:memory:` keeps the state in memory only (tests).
    pub database: PathBuf,
    /// The cluster secret: executor managers authenticate with it, and lease tokens are
    /// signed with its UTF-8 bytes (HMAC-SHA256). Required (no default): an empty secret
    /// is refused.
    pub secret: String,
    /// Clients: name → secret. A client authenticates with `Bearer <name>:<secret>`.
    /// Names may not contain `:`. Default: none (only the cluster secret works).
    pub clients: BTreeMap<String, String>,
    /// How often executor managers send heartbeats; a node silent for three intervals is
    /// marked down and its leases end. Default 1 s.
    pub heartbeat_interval: Duration,
    /// The longest lease or renewal granted. Default 24 h.
    pub max_lease: Duration,
    /// How often expiry and node liveness are checked. Default 100 ms.
    pub tick_interval: Duration,
    /// The largest request accepted (head and body), in bytes. Default 1 MiB.
    pub max_request_bytes: usize,
    /// How long a client may take to send its request. Default 10 s.
    pub request_timeout: Duration,
}

impl Default for ResourceManagerConfig {
    fn default() -> Self {
        ResourceManagerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7800)),
            database: PathBuf::from("rafi-resource.db"),
            secret: String::new(),
            clients: BTreeMap::new(),
            heartbeat_interval: Duration::from_secs(1),
            max_lease: Duration::from_secs(24 * 3600),
            tick_interval: Duration::from_millis(100),
            max_request_bytes: 1 << 20,
            request_timeout: Duration::from_secs(10),
        }
    }
}
