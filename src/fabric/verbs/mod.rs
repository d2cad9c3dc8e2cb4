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
//! - `max_send_wr` is what the queue pair asks the provider for; providers may grant more,
//!   and a full send queue is reported (`SendQueueFull`) when the provider refuses.
//! - The opcode of an error completion is whatever the provider reports (verbs defines it
//!   only for successful completions).
//! - Regions with REMOTE_WRITE or REMOTE_ATOMIC are registered with LOCAL_WRITE too, which
//!   verbs requires.
//! - `QpConfig::max_inline_data` is capped at the device's limit
//!   ([`crate::fabric::Fabric::max_inline_data`]); `max_sge` at the device's and 16.

mod convert;
mod cq;
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
