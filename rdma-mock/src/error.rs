//! Errors, one enum per operation that can fail synchronously. Failures of the transfers
//! themselves arrive as work completions with a [`crate::WcStatus`], as on real hardware.

use std::io;

/// Opening a device failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot start the {fabric} fabric's listener on {what}: {source}")]
    Listen {
        fabric: &'static str,
        what: String,
        source: io::Error,
    },
    #[error("cannot start the connection agent thread: {0}")]
    Thread(io::Error),
}

/// Allocating a protection domain, a memory region, a completion queue or a queue pair failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("cannot create shared memory for {what}: {source}")]
    SharedMemory {
        what: &'static str,
        source: io::Error,
    },
    #[error("the protection domain's arena has no free range of {len} bytes (arena size {arena} bytes; set DeviceConfig::arena_size)")]
    ArenaFull { len: usize, arena: usize },
    #[error("a memory region of zero bytes cannot be registered")]
    EmptyRegion,
    #[error("the protection domain already holds the maximum of {0} memory regions")]
    TooManyRegions(usize),
    #[error("invalid queue pair configuration: {0}")]
    InvalidConfig(String),
}

/// Connecting a queue pair to its peer failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("endpoint is for the {remote} fabric but this device runs the {local} fabric")]
    FabricMismatch {
        local: &'static str,
        remote: &'static str,
    },
    #[error("queue pair {qpn} is already connected or in the error state")]
    AlreadyConnected { qpn: u32 },
    #[error("cannot reach the peer at {addr}: {source}")]
    Unreachable { addr: String, source: io::Error },
    #[error("the peer refused the connection: {0}")]
    Refused(String),
    #[error("the peer did not complete the connection within {0:?}")]
    Timeout(std::time::Duration),
    #[error("connection handshake failed: {0}")]
    Handshake(String),
}

/// A work request was refused before it was queued (the queue pair did not accept it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PostError {
    #[error("the send queue is full ({0} outstanding requests or unpolled completions)")]
    SendQueueFull(u32),
    #[error("the receive queue is full ({0} receives posted and not yet polled)")]
    RecvQueueFull(u32),
    #[error("{given} scatter/gather elements given, the queue pair allows {max}")]
    TooManySge { given: usize, max: u32 },
    #[error("inline payload of {given} bytes exceeds the queue pair's limit of {max}")]
    InlineTooLarge { given: usize, max: u32 },
    #[error("atomic operations need exactly one 8-byte local scatter element")]
    BadAtomicSgl,
    #[error("inline payloads are only for SEND and WRITE")]
    InlineNotAllowed,
    #[error("the queue pair is not connected yet")]
    NotConnected,
    #[error("a message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { len: u64, max: u32 },
    /// Only from hardware backends (rafi's verbs fabric): the provider refused the request
    /// with this errno for a reason the checks above do not name.
    #[error("the RDMA device refused the request (errno {errno})")]
    Rejected { errno: i32 },
}

/// Waiting for a completion event failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("no completion within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the completion queue has no completion channel to wait on")]
    NoChannel,
    #[error("waiting on the completion channel failed: {0}")]
    Io(#[from] io::Error),
}
