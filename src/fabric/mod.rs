//! # The fabric interface
//!
//! rafi's executors and clients are written once, generic over [`Fabric`], and run on every
//! backend with static dispatch (no virtual call on the hot path):
//!
//! | backend | type | where |
//! |---|---|---|
//! | `shm` | [`rdma_mock::Device`] | processes of one host, shared memory |
//! | `tcp` | [`rdma_mock::Device`] | hosts without RDMA, TCP |
//! | `verbs` | `verbs::Device` (feature `verbs`) | InfiniBand, RoCE, soft-RoCE via libibverbs |
//!
//! The vocabulary — access flags, work requests, completions, statuses, queue pair settings,
//! post and wait errors — is the verbs vocabulary that rdma-mock already defines; every
//! backend speaks it, so a completion status means the same thing on all three. What differs
//! per backend sits behind the traits here: how memory is allocated and registered, how a
//! queue pair is reached ([`Endpoint`]), and how a completion queue sleeps.
//!
//! ```text
//!  Fabric (a device)      ── alloc_pd ──▶ ProtectionDomain ── register ──▶ MemoryRegion
//!    ├─ create_channel ─▶ CompletionChannel (an fd to sleep on)        └─ create_qp ──▶ QueuePair
//!    └─ create_cq ──────▶ CompletionQueue (poll / arm / wait)                 endpoint, connect,
//!                                                                             post_send, post_recv
//! ```
//!
//! [`open`] picks a backend at run time from a [`FabricConfig`] and hands the concrete
//! device to a [`FabricUser`], whose generic `run` is monomorphised once per backend.
//!
//! The conformance suite (`tests/conformance/`) checks every backend against the same
//! semantics: every operation, every error case, a dead peer, atomics.

mod config;
// `rdtsc` is an intrinsic, so `unsafe`: a one-line wrapper.
#[allow(unsafe_code)]
pub mod cycles;
mod endpoint;
mod error;
// The modules below hold the only unsafe code outside the verbs backend: the region trait's
// raw-pointer accessors, the mock regions' promise to honour them, and the safe views
// (slots, local buffers) built on them.
#[allow(unsafe_code)]
mod buffer;
#[allow(unsafe_code)]
mod mock;
#[cfg(feature = "tokio")]
#[allow(unsafe_code)]
pub mod reactor;
#[allow(unsafe_code)]
mod region;
#[allow(unsafe_code)]
mod slots;
#[cfg(feature = "verbs")]
#[allow(unsafe_code)]
pub mod verbs;

use std::os::fd::RawFd;
use std::time::Duration;

pub use buffer::LocalBuffer;
pub use config::{FabricConfig, VerbsConfig};
pub use endpoint::{Endpoint, FabricKind, VerbsEndpoint};
pub use error::FabricError;
pub use rdma_mock::{
    Access, Payload, PostError, QpConfig, QpState, RecvWr, RemoteAddr, SendOp, SendWr, Sge,
    WaitError, WcOpcode, WcStatus, WorkCompletion,
};
pub use region::MemoryRegion;
pub use slots::SlotRegion;

/// An open RDMA device of one backend. Cheap to clone; everything made from it keeps it
/// alive.
pub trait Fabric: Clone + Send + Sync + std::fmt::Debug + 'static {
    type Pd: ProtectionDomain<Fabric = Self>;
    type Mr: MemoryRegion;
    type Channel: CompletionChannel;
    type Cq: CompletionQueue;
    type Qp: QueuePair;

    /// Which backend this is (for a mock device, which of its two fabrics).
    fn kind(&self) -> FabricKind;

    /// The device's name: the RDMA device for verbs (`mlx5_0`, `rxe0`), the fabric's name
    /// for the mock fabrics. Tests use it to prove which device really ran.
    fn device_name(&self) -> &str;

    /// Largest inline payload the device accepts in one send request.
    fn max_inline_data(&self) -> u32;

    /// Allocates a protection domain.
    ///
    /// # Errors
    /// When the device runs out of resources.
    fn alloc_pd(&self) -> Result<Self::Pd, FabricError>;

    /// Creates a completion channel, for sleeping until an armed queue gets a completion.
    ///
    /// # Errors
    /// When the device runs out of resources or file descriptors.
    fn create_channel(&self) -> Result<Self::Channel, FabricError>;

    /// Creates a completion queue that holds at least `capacity` completions (size it for
    /// every request of every queue pair that reports to it), signalling `channel` when
    /// armed.
    ///
    /// # Errors
    /// When the device runs out of resources or `capacity` exceeds its limit.
    fn create_cq(
        &self,
        capacity: u32,
        channel: Option<&Self::Channel>,
    ) -> Result<Self::Cq, FabricError>;
}

/// A protection domain: its regions are reachable only through its queue pairs.
pub trait ProtectionDomain: Clone + Send + Sync + std::fmt::Debug {
    type Fabric: Fabric;

    /// Allocates `len` bytes of zeroed, page-aligned memory and registers it with `access`.
    /// The backend allocates, because the shm fabric can only share memory it placed in its
    /// arena and the verbs fabric aligns (and can huge-page) what it registers.
    ///
    /// # Errors
    /// When memory cannot be allocated or registered (for verbs, often the memlock limit).
    fn register(
        &self,
        len: usize,
        access: Access,
    ) -> Result<<Self::Fabric as Fabric>::Mr, FabricError>;

    /// Creates a reliable-connection queue pair reporting to `send_cq` and `recv_cq`.
    ///
    /// # Errors
    /// For an invalid configuration or when the device runs out of resources.
    fn create_qp(
        &self,
        send_cq: &<Self::Fabric as Fabric>::Cq,
        recv_cq: &<Self::Fabric as Fabric>::Cq,
        config: QpConfig,
    ) -> Result<<Self::Fabric as Fabric>::Qp, FabricError>;
}

/// The wake-up line of completion queues (`ibv_comp_channel`), for one waiting thread.
pub trait CompletionChannel: Clone + Send + Sync + std::fmt::Debug {
    /// Sleeps until an armed queue of this channel gets a completion or `timeout` passes,
    /// and acknowledges the events; returns how many there were.
    ///
    /// # Errors
    /// [`WaitError::Timeout`] when nothing arrived in time.
    fn get_event(&self, timeout: Option<Duration>) -> Result<u64, WaitError>;

    /// A file descriptor that becomes readable on an event, for event loops; read events
    /// with [`Self::get_event`] once it is readable. It is the same open descriptor for as
    /// long as any handle on the channel lives (event loops rely on it).
    fn as_raw_fd(&self) -> RawFd;
}

/// A completion queue. Poll it from one thread.
pub trait CompletionQueue: Send + std::fmt::Debug {
    /// Moves up to `out.len()` completions into `out` and returns how many. Never blocks;
    /// no allocation, lock or system call on the shm and verbs backends.
    fn poll(&mut self, out: &mut [WorkCompletion]) -> usize;

    /// Prepares to sleep on the channel: arms the queue (and lets background progress take
    /// over where a backend needs it). Poll once more afterwards; sleep only if that poll
    /// found nothing.
    fn arm(&mut self);

    /// Polls; if nothing is there, arms and sleeps on the channel until a completion
    /// arrives or `timeout` passes. Uses no CPU while it sleeps.
    ///
    /// # Errors
    /// [`WaitError::NoChannel`] without a channel, [`WaitError::Timeout`] on timeout.
    fn wait(
        &mut self,
        out: &mut [WorkCompletion],
        timeout: Option<Duration>,
    ) -> Result<usize, WaitError>;
}

/// A reliable-connection queue pair.
pub trait QueuePair: Send + std::fmt::Debug {
    /// The queue pair number (what completions report in `qp_num`).
    fn qp_num(&self) -> u32;

    fn state(&self) -> QpState;

    /// How the peer reaches this queue pair: send it over the control connection.
    fn endpoint(&self) -> Endpoint;

    /// Connects to the peer's queue pair. Both sides call it with each other's endpoint;
    /// once both calls have returned, requests flow both ways. (The mock fabrics wait for
    /// the peer's call inside `connect`; verbs does not need to, since its transport
    /// retries until the peer's queue pair is ready.)
    ///
    /// # Errors
    /// When the endpoint is of another backend, the peer cannot be reached, or the queue
    /// pair is already connected.
    fn connect(&mut self, remote: &Endpoint) -> Result<(), FabricError>;

    /// Posts a send-queue request (SEND, WRITE, WRITE_WITH_IMM, READ, atomics).
    ///
    /// # Errors
    /// When the request is refused before it is queued; transfer failures arrive as
    /// completions.
    fn post_send(&mut self, wr: &SendWr<'_>) -> Result<(), PostError>;

    /// Posts a receive.
    ///
    /// # Errors
    /// When the receive queue is full or the scatter list is invalid.
    fn post_recv(&mut self, wr: &RecvWr<'_>) -> Result<(), PostError>;

    /// Moves the queue pair to the error state: everything outstanding is flushed.
    fn set_error(&mut self);
}

/// Code that runs on whatever backend [`open`] picks: `run` is generic, so each backend
/// gets its own statically dispatched copy.
pub trait FabricUser {
    type Output;
    fn run<F: Fabric>(self, fabric: F) -> Self::Output;
}

/// Opens the device that `config` names and runs `user` on it.
///
/// # Errors
/// When the device cannot be opened: for verbs, a message that says what is missing (the
/// feature, libibverbs, a device) and how to get soft-RoCE.
pub fn open<U: FabricUser>(config: &FabricConfig, user: U) -> Result<U::Output, FabricError> {
    match config.kind {
        FabricKind::Shm | FabricKind::Tcp => Ok(user.run(mock::open(config)?)),
        FabricKind::Verbs => open_verbs(config, user),
    }
}

#[cfg(feature = "verbs")]
fn open_verbs<U: FabricUser>(config: &FabricConfig, user: U) -> Result<U::Output, FabricError> {
    Ok(user.run(verbs::open(config)?))
}

#[cfg(not(feature = "verbs"))]
fn open_verbs<U: FabricUser>(_: &FabricConfig, _: U) -> Result<U::Output, FabricError> {
    Err(FabricError::Unavailable {
        backend: FabricKind::Verbs,
        reason: "this rafi was built without the verbs backend".into(),
        hint: "rebuild with `cargo build --release --features verbs` (needs libibverbs-dev, \
               librdmacm-dev and libclang-dev), or use --fabric shm|tcp"
            .into(),
    })
}
