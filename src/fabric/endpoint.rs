//! How a queue pair is reached, for every backend: what the control connection carries.

use serde::{Deserialize, Serialize};

/// The backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FabricKind {
    /// rdma-mock over shared memory: processes of one host.
    Shm,
    /// rdma-mock over TCP: hosts without RDMA.
    Tcp,
    /// libibverbs: InfiniBand, RoCE, soft-RoCE (feature `verbs`).
    Verbs,
}

impl FabricKind {
    pub fn name(self) -> &'static str {
        match self {
            FabricKind::Shm => "shm",
            FabricKind::Tcp => "tcp",
            FabricKind::Verbs => "verbs",
        }
    }
}

impl std::str::FromStr for FabricKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shm" => Ok(FabricKind::Shm),
            "tcp" => Ok(FabricKind::Tcp),
            "verbs" => Ok(FabricKind::Verbs),
            other => Err(format!(
                "unknown fabric '{other}' (expected shm, tcp or verbs)"
            )),
        }
    }
}

impl std::fmt::Display for FabricKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<rdma_mock::Fabric> for FabricKind {
    fn from(f: rdma_mock::Fabric) -> Self {
        match f {
            rdma_mock::Fabric::Shm => FabricKind::Shm,
            rdma_mock::Fabric::Tcp => FabricKind::Tcp,
        }
    }
}

/// What a verbs queue pair needs to know of its peer to move to RTR and RTS (the
/// attributes that rdmacm would otherwise exchange).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VerbsEndpoint {
    /// Port LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    pub qpn: u32,
    /// First packet sequence number the peer will send.
    pub psn: u32,
    /// Port GID at the configured GID index (the address on RoCE).
    pub gid: [u8; 16],
    /// Active MTU of the port, as `ibv_mtu` (1 = 256 B … 5 = 4096 B).
    pub mtu: u8,
}

/// Where a queue pair can be reached: serialize it into the control connection, hand it to
/// the peer's [`super::QueuePair::connect`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Endpoint {
    /// An rdma-mock queue pair (shm or tcp; the endpoint says which).
    Mock(rdma_mock::Endpoint),
    Verbs(VerbsEndpoint),
}

impl Endpoint {
    /// The backend this endpoint belongs to.
    pub fn kind(&self) -> FabricKind {
        match self {
            Endpoint::Mock(e) => e.fabric.into(),
            Endpoint::Verbs(_) => FabricKind::Verbs,
        }
    }

    /// The peer's queue pair number.
    pub fn qpn(&self) -> u32 {
        match self {
            Endpoint::Mock(e) => e.qpn,
            Endpoint::Verbs(e) => e.qpn,
        }
    }
}
