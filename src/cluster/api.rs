//! The messages between clients, the resource manager and executor managers.
//!
//! Resource manager: HTTP/1.1 with JSON bodies under `/v1/`, plus `GET /metrics`
//! (Prometheus text). Every request carries `Authorization: Bearer <credential>`:
//! executor managers the cluster secret, clients `<client name>:<client secret>` (clients
//! are configured on the resource manager), operators either.
//!
//! | method and path | who | body → answer |
//! |---|---|---|
//! | `POST /v1/nodes` | manager | [`NodeRegistration`] → [`NodeRegistered`] |
//! | `POST /v1/nodes/{node}/heartbeat` | manager | [`Heartbeat`] → [`HeartbeatReply`] |
//! | `POST /v1/leases` | client | [`LeaseRequest`] → [`Lease`] |
//! | `POST /v1/leases/{lease}/renew` | client | [`RenewRequest`] → [`Lease`] |
//! | `DELETE /v1/leases/{lease}` | client (its own) | → [`LeaseStatus`] |
//! | `GET /v1/nodes` | anyone authenticated | → `[NodeStatus]` |
//! | `GET /v1/leases` | anyone authenticated | → `[LeaseStatus]` |
//! | `GET /v1/usage` | anyone authenticated | → `[Usage]` |
//! | `GET /metrics` | anyone authenticated | Prometheus text |
//!
//! Errors are HTTP statuses with an [`ApiError`] body: 400 bad request, 401 no or wrong
//! credential, 403 not yours, 404 unknown node or lease, 409 not enough free resources
//! (`kind: "exhausted"`), 410 lease ended or expired.
//!
//! Executor manager: TCP, one JSON object per line ([`ManagerMessage`]). A client sends
//! `allocate` with a lease token; the manager answers `allocated` (the executor's address)
//! or `error`, keeps the connection for the life of the executor, and reports
//! `executor_ended` if the executor dies or the lease ends. On that connection the client
//! may send `renew` with a fresh token of the same lease (from `POST
//! /v1/leases/{lease}/renew`); the manager answers `renewed` (the executor now ends at the
//! new expiry) or `error`. The client closing the connection ends the executor.
//!
//! Billing: executors add their usage to counters in their manager's memory with RDMA
//! FETCH_ADD (see `docs/cluster-manager.md`); each [`Heartbeat`] carries what the
//! counters gained since the last one as [`LeaseUsage`], and the resource manager adds it
//! to the lease's [`Usage`].

use serde::{Deserialize, Serialize};

use crate::fabric::FabricKind;

/// Milliseconds since the Unix epoch (UTC): every time in the API.
pub type UnixMillis = u64;

/// An executor manager introduces its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// The node's name (unique in the cluster; a manager that registers again under the
    /// same name replaces its earlier registration and ends that one's leases).
    pub name: String,
    /// Where clients reach the manager's allocation service (`host:port`).
    pub manager_address: String,
    /// The fabric its executors use.
    pub fabric: FabricKind,
    /// Cores that batch jobs leave free and rafi may lease.
    pub spare_cores: Vec<usize>,
    /// Memory rafi may lease, in MiB.
    pub memory_mib: u64,
    /// GPUs rafi may lease (ids as CUDA_VISIBLE_DEVICES takes them).
    #[serde(default)]
    pub gpus: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistered {
    pub node: u64,
    /// How often the manager must send a heartbeat; a node silent for three intervals is
    /// marked down and its leases end.
    pub heartbeat_interval_ms: u64,
}

/// What one lease used on one node since the last heartbeat (counters are deltas, summed
/// over the lease's workers on the node). Executors measure it and FETCH_ADD it into their
/// manager's counters about every 100 ms; an executor killed hard loses at most its last
/// 100 ms. A manager that has no fabric for billing reports a hot executor's wall time ×
/// cores as `hot_ns` and nothing else.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseUsage {
    pub lease: u64,
    /// Time workers spent inside function calls, in ns (cycle counter, calibrated).
    pub busy_ns: u64,
    /// Time workers were awake (polling or running functions; not asleep on their
    /// completion channel), in ns. A hot worker is awake all its life.
    pub hot_ns: u64,
    /// Function calls (requests that reached a function, whatever their outcome).
    pub invocations: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub usage: Vec<LeaseUsage>,
    /// Leases whose executor died or was ended on this node since the last heartbeat.
    #[serde(default)]
    pub ended: Vec<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Leases of this node the resource manager ended (released, expired, lost) that the
    /// manager was not told of yet: stop their executors. Each is listed once.
    pub end: Vec<u64>,
}

/// A client asks for resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Cores in all; more than one node has are placed on several nodes.
    pub cores: u32,
    #[serde(default)]
    pub memory_mib: u64,
    #[serde(default)]
    pub gpus: u32,
    pub duration_ms: u64,
    /// Only nodes of this fabric (`None`: any).
    #[serde(default)]
    pub fabric: Option<FabricKind>,
}

/// Extends a lease to now + `duration_ms`; the answer carries fresh tokens (new nonces,
/// the new expiry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub duration_ms: u64,
}

/// A granted lease: one part per node it spans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub lease: u64,
    pub client: String,
    pub expires_at: UnixMillis,
    pub parts: Vec<LeasePart>,
}

/// The share of a lease on one node, with the token its manager checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasePart {
    pub node: u64,
    pub node_name: String,
    pub manager_address: String,
    pub fabric: FabricKind,
    pub cores: Vec<usize>,
    pub memory_mib: u64,
    pub gpus: Vec<String>,
    /// The signed token (see [`super::token`]).
    pub token: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Up,
    /// Missed its heartbeats: its leases ended; it comes back up when it registers again
    /// or its next heartbeat arrives (its leases stay ended).
    Down,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: u64,
    pub name: String,
    pub state: NodeState,
    pub manager_address: String,
    pub fabric: FabricKind,
    pub spare_cores: Vec<usize>,
    pub leased_cores: Vec<usize>,
    pub memory_mib: u64,
    pub leased_memory_mib: u64,
    pub gpus: Vec<String>,
    pub leased_gpus: Vec<String>,
    pub last_heartbeat: UnixMillis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    Active,
    Released,
    Expired,
    /// Ended because a node it spans went down or its executor died.
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub lease: u64,
    pub client: String,
    pub state: LeaseState,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub ended_at: Option<UnixMillis>,
    pub parts: Vec<LeasePartStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasePartStatus {
    pub node: u64,
    pub cores: Vec<usize>,
    pub memory_mib: u64,
    pub gpus: Vec<String>,
}

/// Accounting of one lease, persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub lease: u64,
    pub client: String,
    /// Cores × time leased, in core-seconds (to the end of the lease, or to now).
    pub core_seconds: f64,
    pub busy_ns: u64,
    pub hot_ns: u64,
    pub invocations: u64,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `exhausted`, `gone`,
    /// `internal`.
    pub kind: String,
    pub message: String,
}

/// One line of an executor manager's allocation connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ManagerMessage {
    /// Client → manager: start an executor for this lease part.
    Allocate {
        token: String,
        /// Worker polling: `hot` or `warm` (default warm).
        #[serde(default)]
        mode: Option<String>,
    },
    /// Manager → client: the executor listens at `executor` (its control address).
    Allocated {
        executor: String,
        cores: Vec<usize>,
        /// Time from the allocate line to the executor listening, in ns (cold start).
        spawn_ns: u64,
    },
    /// Manager → client: the executor ended (died, or the lease ended).
    ExecutorEnded {
        reason: String,
    },
    /// Client → manager, on the allocation connection after `allocated`: extend the
    /// executor to the expiry of `token`, a fresh token of the same lease for the same node
    /// (and cores), as `POST /v1/leases/{lease}/renew` returns. Checked like an allocate
    /// token (signature, expiry, node, unused nonce, lease not ended).
    Renew {
        token: String,
    },
    /// Manager → client: the executor now ends at `expires_at`.
    Renewed {
        expires_at: UnixMillis,
    },
    Error {
        kind: String,
        message: String,
    },
}
