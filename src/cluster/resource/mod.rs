//! # The resource manager
//!
//! One per cluster: executor managers register their nodes and send heartbeats; clients
//! take leases of specific spare cores (plus memory and GPUs) for a while, renew and
//! release them; every core-second and the usage the managers report is accounted for.
//! The HTTP API is [`crate::cluster::api`]'s; `docs/cluster.md` describes it with examples.
//!
//! ```text
//!  HTTP request ─▶ server (tokio: accept, read, parse with request; auth)
//!                    │ blocking pool, one lock
//!                    ▼
//!                  state (sans-IO: nodes, leases, placement, tokens, accounting; `now` passed in)
//!                    │ the rows it changed, one transaction, before the answer
//!                    ▼
//!                  store (SQLite) ──▶ metrics (Prometheus text)
//!  ticker (every 100 ms): state.tick(now): expiry, node liveness
//! ```
//!
//! * [`state`]: the state core, driven by tests without sockets or clocks.
//! * [`store`]: SQLite persistence; a restart loses nothing.
//! * [`server`]: [`ResourceManager::start`], the routes, the ticker.
//! * [`request`]: the HTTP/1.1 request parser (sans-IO) and answers.
//! * [`auth`]: bearer credentials, compared in constant time.
//! * [`metrics`]: the Prometheus text.
//! * [`config`]: [`ResourceManagerConfig`] and its defaults.

pub mod auth;
pub mod config;
pub mod metrics;
pub mod request;
pub mod server;
pub mod state;
pub mod store;

pub use config::ResourceManagerConfig;
pub use server::{ResourceManager, StartError};
