//! # rdma-mock: a software RDMA fabric with verbs semantics
//!
//! rdma-mock lets a program use the verbs model — protection domains, registered memory
//! regions with lkeys and rkeys, completion queues and channels, reliable-connection queue
//! pairs with SEND, RDMA WRITE, WRITE_WITH_IMM, READ, FETCH_ADD and CMP_SWAP — on machines
//! without RDMA hardware, with the error behaviour of real RC hardware. Two fabrics:
//!
//! * [`Fabric::Shm`]: processes on one host. Every protection domain's memory is one sparse
//!   memfd; a connected peer maps it, so a one-sided operation is a direct copy or atomic by
//!   the initiator, and a receive completion is written straight into the target's receive
//!   slot. No thread of the target takes part.
//! * [`Fabric::Tcp`]: processes on different hosts. A progress thread per connection on the
//!   target applies incoming operations with the same code.
//!
//! ```text
//!  initiator process                                 target process
//!  post_send(WRITE_WITH_IMM)                          memory region (arena memfd)
//!   ├─ lkey → local bytes (own region table)       ┌─▶ payload copied in place
//!   ├─ rkey → peer bytes (peer's table, mapped) ───┘
//!   ├─ claim the peer's next posted receive slot ───▶ receive slot: imm, byte_len, done
//!   └─ send completion → own ring                    CompletionQueue::poll sees the slot
//! ```
//!
//! Who allocates memory: rdma-mock does. [`ProtectionDomain::register`] carves a zeroed,
//! page-aligned (4096-byte) region out of the domain's arena, because a peer process can
//! only map memory that lives in a file it can receive. Regions of different domains are
//! never reachable through each other's queue pairs.
//!
//! Errors: an operation with a bad rkey, out of bounds or without the needed access right
//! completes with [`WcStatus::RemoteAccessError`], leaves the target's memory untouched and
//! moves the queue pair to [`QpState::Error`]; a SEND or WRITE_WITH_IMM that finds no receive
//! is retried `rnr_retry` times, `rnr_timer` apart, then fails with
//! [`WcStatus::RnrRetryExceeded`]; everything posted to a queue pair in error, or towards a
//! peer that went away, completes with [`WcStatus::WrFlushError`] (the request that noticed a
//! dead peer with [`WcStatus::RetryExceeded`]). Nothing is left hanging.
//!
//! Trust: the shm fabric maps peers' memory into each other, so it is for cooperating
//! processes of one user: both ends refuse peers of another user (`SO_PEERCRED`); among one
//! user's processes its checks catch bugs, not an attacker with that user's rights. The tcp
//! fabric does not authenticate peers yet: bind its listener to a trusted network.
//!
//! ```
//! use rdma_mock::*;
//! let dev = Device::open(DeviceConfig::new(Fabric::Shm)).unwrap();
//! let pd = dev.alloc_pd().unwrap();
//! let cq = dev.create_cq(None).unwrap();
//! let mut cq = cq;
//! let mut a = pd.create_qp(&cq, &cq, QpConfig::default()).unwrap();
//! let mut b = pd.create_qp(&cq, &cq, QpConfig::default()).unwrap();
//! let (ea, eb) = (a.endpoint(), b.endpoint());
//! let t = std::thread::spawn(move || { b.connect(&ea).unwrap(); b });
//! a.connect(&eb).unwrap();
//! let b = t.join().unwrap();
//! let target = pd.register(4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE).unwrap();
//! a.post_send(&SendWr::inline(1, SendOp::Write { remote: target.remote(0) }, b"hello")).unwrap();
//! let mut wc = [WorkCompletion::default(); 4];
//! assert_eq!(cq.poll(&mut wc), 1);
//! assert!(wc[0].is_ok());
//! assert_eq!(&target.to_vec()[..5], b"hello");
//! # drop(b);
//! ```

#[cfg(feature = "alloc-counter")]
pub mod alloc_counter;
mod cq;
mod device;
mod error;
mod memory;
mod qp;
mod queue;
mod responder;
mod shm;
mod sys;
mod tcp;
mod types;

pub use cq::{CompletionChannel, CompletionQueue};
pub use device::{Device, DeviceConfig, Endpoint, Fabric, ProtectionDomain};
pub use error::{AllocError, ConnectError, OpenError, PostError, WaitError};
pub use memory::{MemoryRegion, MAX_REGIONS};
pub use qp::QueuePair;
pub use sys::pin_current_thread;
pub use types::{
    Access, Payload, QpConfig, QpState, RecvWr, RemoteAddr, SendOp, SendWr, Sge, WcOpcode,
    WcStatus, WorkCompletion, MAX_INLINE_DATA, MAX_MESSAGE, MAX_SGE,
};
