//! Settings of every backend, with defaults and environment overrides.

use std::net::SocketAddr;
use std::time::Duration;

use super::FabricKind;

/// Which backend to open and how.
#[derive(Clone, Debug)]
pub struct FabricConfig {
    pub kind: FabricKind,
    /// tcp: where the device listens for connections (port 0 picks a free one).
    pub tcp_listen: SocketAddr,
    /// shm and tcp: virtual size of each protection domain's arena (sparse).
    pub arena_size: usize,
    /// shm and tcp: how long `connect` waits for the peer's side.
    pub connect_timeout: Duration,
    pub verbs: VerbsConfig,
}

impl FabricConfig {
    /// Defaults for `kind`, with the verbs settings taken from the environment
    /// ([`VerbsConfig::from_env`]).
    pub fn new(kind: FabricKind) -> Self {
        let mock = rdma_mock::DeviceConfig::new(rdma_mock::Fabric::Shm);
        Self {
            kind,
            tcp_listen: mock.tcp_listen,
            arena_size: mock.arena_size,
            connect_timeout: mock.connect_timeout,
            verbs: VerbsConfig::from_env(),
        }
    }
}

/// Settings of the verbs backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerbsConfig {
    /// Device name as `ibv_devices` lists it (`mlx5_0`, `rxe0`); `None` takes the first.
    pub device: Option<String>,
    /// Port number, from 1.
    pub port: u8,
    /// GID index; `None` picks the first RoCE v2 IPv4-mapped GID, else index 0.
    pub gid_index: Option<u8>,
    /// Inline-data limit requested for queue pairs; `None` uses the device's answer.
    pub max_inline_data: Option<u32>,
    /// Back registered regions with 2 MiB huge pages when they are large enough (falls
    /// back to normal pages when none are free).
    pub huge_pages: bool,
}

impl Default for VerbsConfig {
    fn default() -> Self {
        Self {
            device: None,
            port: 1,
            gid_index: None,
            max_inline_data: None,
            huge_pages: false,
        }
    }
}

impl VerbsConfig {
    /// Defaults overridden by `RAFI_RDMA_DEVICE`, `RAFI_RDMA_PORT`, `RAFI_RDMA_GID_INDEX`,
    /// `RAFI_RDMA_INLINE` and `RAFI_RDMA_HUGE_PAGES=1`; a value that does not parse is
    /// ignored here and reported by [`Self::check_env`].
    pub fn from_env() -> Self {
        Self {
            device: env_text("RAFI_RDMA_DEVICE"),
            port: env_number("RAFI_RDMA_PORT").unwrap_or(1),
            gid_index: env_number("RAFI_RDMA_GID_INDEX"),
            max_inline_data: env_number("RAFI_RDMA_INLINE"),
            huge_pages: env_text("RAFI_RDMA_HUGE_PAGES").is_some_and(|v| v == "1"),
        }
    }

    /// Reports an environment variable of [`Self::from_env`] that is set but malformed.
    ///
    /// # Errors
    /// With the variable's name and value.
    pub fn check_env() -> Result<(), String> {
        for (name, ok) in [
            ("RAFI_RDMA_PORT", parses::<u8> as fn(&str) -> bool),
            ("RAFI_RDMA_GID_INDEX", parses::<u8>),
            ("RAFI_RDMA_INLINE", parses::<u32>),
        ] {
            if let Ok(v) = std::env::var(name) {
                if !v.is_empty() && !ok(&v) {
                    return Err(format!("{name}={v:?} is not a valid number"));
                }
            }
        }
        Ok(())
    }
}

fn parses<T: std::str::FromStr>(v: &str) -> bool {
    v.parse::<T>().is_ok()
}

fn env_text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    env_text(name).and_then(|v| v.parse().ok())
}
