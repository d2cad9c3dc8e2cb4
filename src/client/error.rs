//! What can go wrong with an allocation or an invocation.

use std::time::Duration;

use crate::control::ControlError;
use crate::fabric::{FabricError, PostError, WcStatus};
use crate::protocol::{HandshakeError, Status};

/// Setting up an allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error("cannot reach the executor at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the executor refused the allocation: {0}")]
    Refused(#[from] HandshakeError),
    #[error(transparent)]
    Fabric(#[from] FabricError),
    #[error("invalid allocation request: {0}")]
    Invalid(String),
}

/// An invocation failed. Nothing is ever delivered to the wrong caller: every error names
/// the invocation it belongs to by being returned from its call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    #[error("function '{0}' is not part of this allocation")]
    UnknownFunction(String),
    #[error("the input of {len} B exceeds the {max} B a request slot holds (nothing was sent)")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("the output of {len} B does not fit the caller's buffer of {capacity} B")]
    OutputBufferTooSmall { len: usize, capacity: usize },
    #[error("every slot of every worker is in flight")]
    Busy,
    #[error("the executor is gone ({0})")]
    ExecutorGone(String),
    #[error("no response within {0:?}")]
    TimedOut(Duration),
    #[error("the function failed with error code {code}")]
    FunctionFailed { code: i32 },
    #[error("the function panicked")]
    FunctionPanicked,
    #[error("the executor refused the input: validation failed")]
    ValidationFailed,
    #[error("the function's output did not fit in the response slot")]
    OutputTooLarge,
    #[error("the executor answered with status {0}")]
    Rejected(Status),
    #[error("the response was malformed: {0}")]
    BadResponse(String),
    #[error("typed input/output: {0}")]
    Codec(String),
    #[error("the input buffer cannot be used: {0} (nothing was sent)")]
    BadBuffer(String),
}

/// An operation on leased remote memory failed. The checks the client makes itself (rights,
/// bounds, alignment) fail before anything is sent; the others come from the fabric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    #[error(
        "{len} B at offset {offset} are outside the {size} B of leased memory (nothing was sent)"
    )]
    OutOfBounds { offset: u64, len: u64, size: u64 },
    #[error(
        "{len} B do not fit the {max} B staging chunk that in-place transfers use (nothing \
         was sent; use put/get, or a larger MemoryOptions::staging)"
    )]
    TooLargeInPlace { len: usize, max: usize },
    #[error("the atomic word at offset {offset} is not 8-byte aligned (nothing was sent)")]
    Misaligned { offset: u64 },
    #[error("this lease does not allow {op}: it grants {granted} access (nothing was sent)")]
    NotPermitted {
        op: &'static str,
        granted: crate::protocol::MemoryAccess,
    },
    #[error(
        "the executor's device refused the {op}: {status} (a released region, a stale or \
         foreign rkey, or a right the region lacks)"
    )]
    RemoteAccess { op: &'static str, status: WcStatus },
    #[error("the leased memory is released: {0}")]
    Released(String),
    #[error("no completion within {0:?}")]
    TimedOut(Duration),
    #[error("the {op} failed: {status}")]
    Fabric { op: &'static str, status: WcStatus },
    #[error("cannot post the request: {0}")]
    Post(String),
}

impl InvokeError {
    pub(crate) fn from_status(status: Status, code: i32) -> InvokeError {
        match status {
            Status::FunctionError => InvokeError::FunctionFailed { code },
            Status::FunctionPanicked => InvokeError::FunctionPanicked,
            Status::ValidationFailed => InvokeError::ValidationFailed,
            Status::OutputTooLarge => InvokeError::OutputTooLarge,
            other => InvokeError::Rejected(other),
        }
    }

    pub(crate) fn gone_after(status: WcStatus) -> InvokeError {
        InvokeError::ExecutorGone(format!("connection failed: {status}"))
    }

    pub(crate) fn gone_on_post(e: PostError) -> InvokeError {
        InvokeError::ExecutorGone(format!("cannot post: {e}"))
    }
}
