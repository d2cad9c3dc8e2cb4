//! Plain verbs data: access flags, work requests, work completions, queue-pair settings.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::time::Duration;

/// Access rights of a memory region, as `ibv_access_flags`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access(u32);

impl Access {
    /// No access beyond local reads.
    pub const NONE: Access = Access(0);
    /// The local side may write the region (needed to receive SENDs, READ and atomic results).
    pub const LOCAL_WRITE: Access = Access(1);
    /// Peers may RDMA WRITE (and WRITE_WITH_IMM) into the region.
    pub const REMOTE_WRITE: Access = Access(2);
    /// Peers may RDMA READ from the region.
    pub const REMOTE_READ: Access = Access(4);
    /// Peers may run FETCH_ADD and CMP_SWAP on the region.
    pub const REMOTE_ATOMIC: Access = Access(8);
    /// Every right above.
    pub const ALL: Access = Access(15);

    /// Whether every right in `other` is granted.
    pub const fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw bits, as stored in the shared region table.
    pub const fn bits(self) -> u32 {
        self.0
    }

    pub(crate) const fn from_bits(bits: u32) -> Access {
        Access(bits & Self::ALL.0)
    }
}

impl BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

impl BitOrAssign for Access {
    fn bitor_assign(&mut self, rhs: Access) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Access::LOCAL_WRITE, "LOCAL_WRITE"),
            (Access::REMOTE_WRITE, "REMOTE_WRITE"),
            (Access::REMOTE_READ, "REMOTE_READ"),
            (Access::REMOTE_ATOMIC, "REMOTE_ATOMIC"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(a, _)| self.contains(*a))
            .map(|(_, n)| *n)
            .collect();
        if set.is_empty() {
            f.write_str("NONE")
        } else {
            f.write_str(&set.join("|"))
        }
    }
}

/// A scatter/gather element: `length` bytes at virtual address `addr` of the local region
/// whose key is `lkey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}

/// Where a one-sided operation lands: a virtual address in the peer's region and its rkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RemoteAddr {
    pub addr: u64,
    pub rkey: u32,
}

/// The operation of a send work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// Two-sided: consumes a receive posted by the peer and lands in its buffer.
    Send,
    /// Two-sided with a 32-bit immediate delivered in the receive completion.
    SendWithImm { imm: u32 },
    /// One-sided write into the peer's region; the peer sees no completion.
    Write { remote: RemoteAddr },
    /// One-sided write that also consumes a posted receive and delivers `imm` and the byte
    /// length in the peer's receive completion.
    WriteWithImm { remote: RemoteAddr, imm: u32 },
    /// One-sided read from the peer's region into the local scatter list.
    Read { remote: RemoteAddr },
    /// Atomically adds `add` to the 8-byte aligned word at `remote`; the old value lands in
    /// the local 8-byte scatter element.
    FetchAdd { remote: RemoteAddr, add: u64 },
    /// Atomically replaces the word at `remote` by `swap` if it equals `compare`; the old
    /// value lands in the local 8-byte scatter element.
    CmpSwap {
        remote: RemoteAddr,
        compare: u64,
        swap: u64,
    },
}

impl SendOp {
    pub(crate) fn opcode(self) -> WcOpcode {
        match self {
            SendOp::Send | SendOp::SendWithImm { .. } => WcOpcode::Send,
            SendOp::Write { .. } | SendOp::WriteWithImm { .. } => WcOpcode::RdmaWrite,
            SendOp::Read { .. } => WcOpcode::RdmaRead,
            SendOp::FetchAdd { .. } => WcOpcode::FetchAdd,
            SendOp::CmpSwap { .. } => WcOpcode::CmpSwap,
        }
    }
}

/// What a send work request carries: registered scatter/gather elements, or inline bytes
/// that are copied at post time and need no registration (as `IBV_SEND_INLINE`).
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    Sgl(&'a [Sge]),
    Inline(&'a [u8]),
}

/// A send work request (`ibv_send_wr`).
#[derive(Clone, Copy, Debug)]
pub struct SendWr<'a> {
    /// Returned untouched in the completion.
    pub wr_id: u64,
    pub op: SendOp,
    pub payload: Payload<'a>,
    /// Produce a completion on success. Errors always produce one.
    pub signaled: bool,
}

impl<'a> SendWr<'a> {
    /// A signaled request with a scatter/gather list.
    pub fn new(wr_id: u64, op: SendOp, sgl: &'a [Sge]) -> Self {
        Self {
            wr_id,
            op,
            payload: Payload::Sgl(sgl),
            signaled: true,
        }
    }

    /// A signaled request whose payload is copied inline.
    pub fn inline(wr_id: u64, op: SendOp, data: &'a [u8]) -> Self {
        Self {
            wr_id,
            op,
            payload: Payload::Inline(data),
            signaled: true,
        }
    }

    /// The same request without a completion on success.
    pub fn unsignaled(mut self) -> Self {
        self.signaled = false;
        self
    }
}

/// A receive work request (`ibv_recv_wr`). An empty list is fine for WRITE_WITH_IMM, which
/// only consumes the receive.
#[derive(Clone, Copy, Debug)]
pub struct RecvWr<'a> {
    pub wr_id: u64,
    pub sgl: &'a [Sge],
}

/// Status of a work completion, named after `ibv_wc_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum WcStatus {
    Success = 0,
    /// A receive buffer was too small for the incoming SEND.
    LocalLengthError = 1,
    /// A local scatter element had a bad lkey, was out of its region's bounds, or lacked
    /// local write access where the operation writes locally.
    LocalProtectionError = 4,
    /// The QP was in the error state: the request was not executed.
    WrFlushError = 5,
    /// The peer refused the request as malformed (misaligned atomic, oversize SEND).
    RemoteInvalidRequest = 9,
    /// Bad rkey, out of the peer region's bounds, or a missing remote access right.
    RemoteAccessError = 10,
    /// The peer's receive side failed (for example a protection error on its buffer).
    RemoteOperationError = 11,
    /// The peer did not answer: it died, disconnected, or its QP is in the error state.
    RetryExceeded = 12,
    /// The peer had no receive posted for the configured number of retries.
    RnrRetryExceeded = 13,
}

impl WcStatus {
    pub(crate) fn from_u32(v: u32) -> WcStatus {
        match v {
            0 => WcStatus::Success,
            1 => WcStatus::LocalLengthError,
            4 => WcStatus::LocalProtectionError,
            5 => WcStatus::WrFlushError,
            9 => WcStatus::RemoteInvalidRequest,
            10 => WcStatus::RemoteAccessError,
            11 => WcStatus::RemoteOperationError,
            12 => WcStatus::RetryExceeded,
            _ => WcStatus::RnrRetryExceeded,
        }
    }
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            WcStatus::Success => "success",
            WcStatus::LocalLengthError => "local length error (receive buffer too small)",
            WcStatus::LocalProtectionError => "local protection error (bad lkey, bounds or access)",
            WcStatus::WrFlushError => "flushed: the queue pair is in the error state",
            WcStatus::RemoteInvalidRequest => "remote invalid request",
            WcStatus::RemoteAccessError => "remote access error (bad rkey, bounds or access)",
            WcStatus::RemoteOperationError => "remote operation error",
            WcStatus::RetryExceeded => "transport retry exceeded (peer gone or in error)",
            WcStatus::RnrRetryExceeded => "receiver not ready: retries exceeded",
        };
        f.write_str(text)
    }
}

/// What a completion reports, named after `ibv_wc_opcode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum WcOpcode {
    Send = 0,
    RdmaWrite = 1,
    RdmaRead = 2,
    CmpSwap = 3,
    FetchAdd = 4,
    /// A receive consumed by SEND.
    Recv = 128,
    /// A receive consumed by WRITE_WITH_IMM.
    RecvRdmaWithImm = 129,
}

impl WcOpcode {
    pub(crate) fn from_u32(v: u32) -> WcOpcode {
        match v {
            0 => WcOpcode::Send,
            1 => WcOpcode::RdmaWrite,
            2 => WcOpcode::RdmaRead,
            3 => WcOpcode::CmpSwap,
            4 => WcOpcode::FetchAdd,
            129 => WcOpcode::RecvRdmaWithImm,
            _ => WcOpcode::Recv,
        }
    }
}

/// A work completion (`ibv_wc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkCompletion {
    pub wr_id: u64,
    pub status: WcStatus,
    pub opcode: WcOpcode,
    /// Bytes received (receive completions) or transferred.
    pub byte_len: u32,
    /// The immediate of SEND_WITH_IMM or WRITE_WITH_IMM.
    pub imm: Option<u32>,
    /// The local queue pair number.
    pub qp_num: u32,
}

impl WorkCompletion {
    pub(crate) const EMPTY: WorkCompletion = WorkCompletion {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: WcOpcode::Send,
        byte_len: 0,
        imm: None,
        qp_num: 0,
    };

    /// Whether the request succeeded.
    pub fn is_ok(&self) -> bool {
        self.status == WcStatus::Success
    }
}

impl Default for WorkCompletion {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// Sizes and retry behaviour of a queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpConfig {
    /// Outstanding send requests (and pending send completions) at most.
    pub max_send_wr: u32,
    /// Posted receives at most; rounded up to a power of two.
    pub max_recv_wr: u32,
    /// Scatter/gather elements per request at most (up to [`MAX_SGE`]).
    pub max_sge: u32,
    /// Largest inline payload accepted by `post_send`.
    pub max_inline_data: u32,
    /// How often a request that found no receive posted is retried before it fails with
    /// [`WcStatus::RnrRetryExceeded`]. Unlike InfiniBand, 7 is not "forever".
    pub rnr_retry: u8,
    /// How long the requester waits between receiver-not-ready retries.
    pub rnr_timer: Duration,
}

/// Most scatter/gather elements in one request.
pub const MAX_SGE: usize = 4;
/// Largest message (the sum of a request's or a receive's scatter/gather lengths).
pub const MAX_MESSAGE: u32 = 1 << 30;
/// Most inline bytes in one request.
pub const MAX_INLINE_DATA: u32 = 1024;

impl Default for QpConfig {
    fn default() -> Self {
        Self {
            max_send_wr: 256,
            max_recv_wr: 256,
            max_sge: MAX_SGE as u32,
            max_inline_data: 256,
            rnr_retry: 7,
            rnr_timer: Duration::from_millis(1),
        }
    }
}

/// Life-cycle state of a queue pair (a reduced `ibv_qp_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum QpState {
    /// Created, not connected yet: receives may be posted, sends may not.
    Init = 0,
    /// Connected: ready to send and receive.
    ReadyToSend = 1,
    /// Failed: every outstanding and new request completes with [`WcStatus::WrFlushError`].
    Error = 2,
}

impl QpState {
    pub(crate) fn from_u32(v: u32) -> QpState {
        match v {
            0 => QpState::Init,
            1 => QpState::ReadyToSend,
            _ => QpState::Error,
        }
    }
}
