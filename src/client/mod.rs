//! # The client library
//!
//! An [`Allocation`] holds workers of one executor, each reached over its own queue pair.
//! An invocation takes a free slot of a worker, writes the payload (and, when the protocol's
//! compact form does not fit, a header) into the executor's request slot with one
//! WRITE_WITH_IMM, and waits for the executor's WRITE_WITH_IMM into the matching response
//! slot.
//!
//! * [`Allocation::invoke_into`] / [`Allocation::invoke_view`]: blocking, no allocation,
//!   lock or system call on the hot path; the view reads the output in place.
//! * [`Allocation::invoke_view_with`]: the payload is written in place by the caller (an
//!   rkyv archive serialized straight into the slot).
//! * [`Allocation::invoke_from`]: the input lies in an [`InputBuffer`] registered once and
//!   filled in place; the request's WRITE reads it there (no copy into a staging slot).
//! * [`Allocation::invoke_many`]: fan-out of many inputs over every worker, pipelined.
//! * `invoke_async` (feature `tokio`): a future that sleeps on the completion channel
//!   through tokio, burning no CPU while it waits.
//!
//! * [`RemoteMemory`]: leased memory on an executor, read, written and updated atomically
//!   with one-sided RDMA (`put`, `get`, `fetch_add`, `compare_swap`, blocking and async);
//!   docs/remote-memory.md.
//!
//! Every invocation has a timeout; errors say what happened ([`InvokeError`]); a response
//! is matched to its invocation by slot and 64-bit id and never reaches another caller.

mod allocation;
#[cfg(feature = "tokio")]
mod asynch;
mod buffer;
mod error;
mod link;
mod memory;
mod options;

pub use allocation::{Allocation, FunctionId, ResultView};
pub use buffer::InputBuffer;
pub use error::{AllocateError, InvokeError, MemoryError};
pub use memory::{MemoryOptions, RemoteMemory};
pub use options::{AllocationOptions, ShippedLibrary};
