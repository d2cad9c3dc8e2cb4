//! MPI applications that offload part of their work to rafi workers on leased cores.
//!
//! ```text
//!  mpirun -np R  ──▶ rank r ── lease cores (resource manager, HTTP) ──▶ executors on those cores
//!                      │   split the batch: local part ─▶ local threads (std::thread::scope)
//!                      │                    remote part ─▶ chunks ─▶ Allocation::invoke_many
//!                      │   check every price against a local computation
//!                      └── MPI all-reduce: agree on success, max of every time
//! ```
//!
//! Two binaries: `blackscholes-offload` (one large batch split between local threads and
//! remote workers, as in the rFaaS experiment) and `small-tasks-overlap` (many small
//! tasks offloaded from a background thread while the rank computes). The modules here
//! are what both share.
#![forbid(unsafe_code)]

pub mod batch;
pub mod cluster;
pub mod ranks;
pub mod remote;
pub mod stats;
