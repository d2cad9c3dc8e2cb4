//! # The verbs backend (feature `verbs`)
//!
//! InfiniBand, RoCE and soft-RoCE through libibverbs. `rdma-sys` provides the C type
//! layouts only; the library itself is loaded at run time ([`lib`]), so a rafi built with
//! this feature starts, and runs shm and tcp, on machines without libibverbs, and opening
//! verbs there fails with a message that says what to install.
//!
//! ```text
//!  Device::open(VerbsConfig)          device by name (None: the first), port, GID index
//!    │                                (None: first RoCE v2 IPv4 GID, else 0), inline limit
//!    ├─ alloc_pd ─▶ ProtectionDomain ─ register ─▶ MemoryRegion (mmap, zeroed, ibv_reg_mr)
//!    │                               └ create_qp ─▶ QueuePair: INIT; connect = RTR, RTS
//!    ├─ create_channel ─▶ CompletionChannel (non-blocking fd, poll(2), get/ack events)
//!    └─ create_cq ─────▶ CompletionQueue (poll, arm through the provider's ops)
//!
//!  hot path: post_send / post_recv build ibv_send_wr/ibv_sge on the stack and call the
//!  provider's ops->post_send/post_recv; poll calls ops->poll_cq into a stack array of ibv_wc
//! ```
//!
//! Differences from rdma-mock, where verbs cannot do otherwise (docs/rdma-mock.md has the
//! model):
//! - `rnr_retry` 7 means "forever" on verbs; rafi passes at most 6, so a peer that never
//!   posts a receive still fails the request with `RnrRetryExceeded`. `rnr_timer` is the
//!   delay this queue pair asks its *peer* to wait (verbs' `min_rnr_timer`, set at RTR),
//!   rounded up to the IB table.
//! - A dead peer fails a request with `RetryExceeded` after about 0.5 s (local ACK timeout
//!   67 ms, 6 retries; rxe reads a `retry_cnt` of 7 as "forever").
//! - Queue depths are counted by the backend ([`credits`]), not left to the provider (which
//!   may grant more than asked, and rxe frees a send slot before its completion is polled):
//!   `post_send` refuses with `SendQueueFull(max_send_wr)` while `max_send_wr` requests are
//!   outstanding (a request is outstanding until its completion is polled; an unsignaled
//!   one until a later signaled request's completion is polled), `post_recv` with
//!   `RecvQueueFull(max_recv_wr)` while `max_recv_wr` receives are. Once a completion in
//!   error was polled (or after `set_error`) nothing is counted: every request is flushed.
//!   rdma-mock counts unpolled completions the same way (an unsignaled request completes
//!   there at once, so it does not hold a slot) and rounds the receive depth up.
//! - A receive posted to a queue pair in error is flushed by the provider on mlx5; rxe's
//!   user-space `post_recv` never enters the kernel, which flushes the receive queue only
//!   when the queue pair moves to error. So `post_recv` on a queue pair known to be in
//!   error moves it to error again (one system call, error path only), which flushes it.
//! - The opcode of an error completion is whatever the provider reports (verbs defines it
//!   only for successful completions).
//! - Regions with REMOTE_WRITE or REMOTE_ATOMIC are registered with LOCAL_WRITE too, which
//!   verbs requires.
//! - `QpConfig::max_inline_data` is capped at the device's limit
//!   ([`crate::fabric::Fabric::max_inline_data`]); `max_sge` at the device's and 16.

mod convert;
mod cq;
mod credits;
mod device;
mod lib;
mod memory;
mod qp;

pub use cq::{CompletionChannel, CompletionQueue};
pub use device::Device;
pub use memory::{MemoryRegion, ProtectionDomain};
pub use qp::QueuePair;

use super::FabricError;

/// Opens the device that `config` names.
///
/// # Errors
/// As [`Device::open`].
pub fn open(config: &super::FabricConfig) -> Result<Device, FabricError> {
    Device::open(&config.verbs)
}

fn verbs_error(
    call: &'static str,
    source: std::io::Error,
    hint: Option<&'static str>,
) -> FabricError {
    FabricError::Verbs { call, source, hint }
}
