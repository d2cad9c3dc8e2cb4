//! # The cluster: resource manager, executor managers, leases
//!
//! ```text
//!  client ── POST /v1/leases (HTTP, client credential) ──▶ resource manager (one per cluster)
//!         ◀── lease: per node, the manager's address, cores, a signed token ──┘  nodes, leases,
//!  client ── allocate {token} (TCP JSON lines) ──▶ executor manager (one per node)  accounting
//!         ◀── allocated {executor address} ──────┘  spawns `rafi executor --cores <lease's>`
//!  client ── the executor handshake and invocations (crate::client) ──▶ executor
//!  executor manager ── register, heartbeat (usage; ended leases) ──▶ resource manager
//! ```
//!
//! * [`api`]: the messages of every conversation above, as serde types: the contract between
//!   the resource manager, the executor managers and clients.
//! * [`token`]: lease tokens signed with the cluster secret, so that an executor manager checks
//!   a client's right to cores without asking the resource manager.
//! * [`lease`]: the client side: lease from the resource manager, allocate through a
//!   node's executor manager.
//! * [`http`]: the small blocking HTTP/1.1 client managers and clients call the resource
//!   manager with.
//! * [`manager`]: the executor manager of a node: registers, heartbeats, checks tokens,
//!   spawns and supervises executors.
//! * [`resource`]: the resource manager service (feature `resource-manager`).
//! * [`local`]: a whole cluster on this host, in one process (`rafi up`).

pub mod api;
pub mod http;
pub mod lease;
#[cfg(feature = "resource-manager")]
pub mod local;
pub mod manager;
#[cfg(feature = "resource-manager")]
pub mod resource;
pub mod token;
