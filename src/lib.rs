//! rafi: RDMA-accelerated function invocation for HPC clusters.
//!
//! An MPI rank allocates workers of an executor on spare cores and invokes functions there
//! by writing its payload straight into executor memory with one-sided RDMA writes; the
//! executor answers the same way.
//!
//! ```text
//!  client (MPI rank)                                executor (workers pinned to cores)
//!  client::Allocation ── control: executor::session (JSON lines, protocol::handshake) ──▶
//!    invoke ── WRITE_WITH_IMM into a request slot (protocol) ──▶ worker: validate,
//!                                                                function::FunctionTable
//!    result ◀── WRITE_WITH_IMM into the response slot ───────── call, answer
//!  all of it over fabric::Fabric: rdma-mock shm | rdma-mock tcp | verbs (libibverbs)
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`fabric`] | one interface over every backend, static dispatch |
//! | [`protocol`] | the sans-IO wire format: slots, immediates, ids, credits, statuses, handshake |
//! | [`executor`] | worker threads, per-client links, the allocation handshake |
//! | [`client`] | allocations and invocations: blocking, zero-copy, typed, fan-out, async |
//! | [`function`] | C-ABI function libraries (by path or shipped), built-ins, the name table |
//! | [`control`] | JSON lines of the control connection |
//! | [`cluster`] | leases: the resource manager, executor managers, their API and tokens |
//! | `bench` | the benchmarks `rafi bench` runs (feature `cli`) |
//!
//! `docs/invocation.md`, `docs/protocol.md` and `docs/functions.md` describe them.
// Unsafe code lives only in `fabric` (the verbs backend, raw region access, the reactor
// registration) and in `function` (dlopen and the call into a loaded library), each block
// with a SAFETY comment; everything else is safe Rust.
#![deny(unsafe_code)]

#[cfg(feature = "cli")]
pub mod bench;
pub mod client;
pub mod cluster;
pub mod control;
pub mod executor;
pub mod fabric;
pub mod function;
pub mod protocol;
mod slot_link;
