//! Status codes, the per-thread message of the last failure, and the guard every exported
//! function runs its body in (a panic becomes `RAFI_ERR_BUG`, never an unwind into C).

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use rafi::client::{AllocateError, InvokeError};
use rafi::cluster::http::CallError;
use rafi::cluster::lease::{LeasedAllocateError, RenewError};

/// The codes of `rafi.h`, in the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Arg = 1,
    Connect = 2,
    Auth = 3,
    Lease = 4,
    Exhausted = 5,
    Alloc = 6,
    TooLarge = 7,
    Truncated = 8,
    ExecutorGone = 9,
    Timeout = 10,
    Function = 11,
    Rejected = 12,
    Busy = 13,
    Cancelled = 14,
    Fabric = 15,
    Protocol = 16,
    Bug = 17,
}

/// The last code: `rafi_strerror` knows every code up to it.
const LAST: c_int = Code::Bug as c_int;

/// A failed call: its code and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn arg(message: impl Into<String>) -> Self {
        Self::new(Code::Arg, message)
    }
}

impl From<InvokeError> for Failure {
    fn from(e: InvokeError) -> Self {
        let code = match &e {
            InvokeError::UnknownFunction(_) | InvokeError::BadBuffer(_) => Code::Arg,
            InvokeError::PayloadTooLarge { .. } => Code::TooLarge,
            InvokeError::OutputBufferTooSmall { .. } => Code::Truncated,
            InvokeError::Busy => Code::Busy,
            InvokeError::ExecutorGone(_) => Code::ExecutorGone,
            InvokeError::TimedOut(_) => Code::Timeout,
            InvokeError::FunctionFailed { .. } | InvokeError::FunctionPanicked => Code::Function,
            InvokeError::ValidationFailed
            | InvokeError::OutputTooLarge
            | InvokeError::Rejected(_) => Code::Rejected,
            InvokeError::BadResponse(_) | InvokeError::Codec(_) => Code::Protocol,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        let code = match &e {
            CallError::Connect { .. } => Code::Connect,
            CallError::Io(_) | CallError::Protocol(_) => Code::Protocol,
            CallError::Refused { status, error } => match (status, error.kind.as_str()) {
                (401 | 403, _) | (_, "unauthorized" | "forbidden") => Code::Auth,
                (409, _) | (_, "exhausted") => Code::Exhausted,
                (404 | 410, _) | (_, "gone" | "not_found") => Code::Lease,
                (400, _) => Code::Arg,
                _ => Code::Protocol,
            },
        };
        Failure::new(code, e.to_string())
    }
}

impl From<RenewError> for Failure {
    fn from(e: RenewError) -> Self {
        let code = match &e {
            RenewError::WrongNode { .. } => Code::Arg,
            RenewError::Refused { .. } => Code::Lease,
            RenewError::Ended { .. } => Code::ExecutorGone,
            RenewError::Protocol { .. } => Code::Protocol,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<LeasedAllocateError> for Failure {
    fn from(e: LeasedAllocateError) -> Self {
        let code = match &e {
            LeasedAllocateError::Connect { .. } => Code::Connect,
            LeasedAllocateError::Refused { kind, .. } => match kind.as_str() {
                "forged" | "expired" | "reused" | "wrong_node" => Code::Lease,
                "busy_cores" => Code::Exhausted,
                "bad_request" => Code::Arg,
                _ => Code::Alloc,
            },
            LeasedAllocateError::Protocol { .. } => Code::Protocol,
            LeasedAllocateError::Ended { .. } => Code::ExecutorGone,
            LeasedAllocateError::Allocate(a) => match a {
                AllocateError::Connect { .. } => Code::Connect,
                AllocateError::Fabric(_) => Code::Fabric,
                AllocateError::Invalid(_) => Code::Arg,
                AllocateError::Refused(_) => Code::Alloc,
                AllocateError::Control(_) => Code::Protocol,
            },
        };
        Failure::new(code, e.to_string())
    }
}

thread_local! {
    /// The message of this thread's last failed call.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `failure` as this thread's last error; returns its code.
pub fn record(failure: &Failure) -> c_int {
    // A message never holds a NUL byte from rafi itself; one from user data is cut there.
    let text = failure.message.split('\0').next().unwrap_or_default();
    let text = CString::new(text).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
    failure.code as c_int
}

/// The message of this thread's last failure (valid until its next failed call).
pub fn last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// Runs the body of an exported function: its `Err` is recorded and returned as a code, a
/// panic is caught and returned as [`Code::Bug`].
pub fn guard(body: impl FnOnce() -> Result<(), Failure>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => Code::Ok as c_int,
        Ok(Err(failure)) => record(&failure),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            record(&Failure::new(
                Code::Bug,
                format!("internal error in librafi (please report it): {what}"),
            ))
        }
    }
}

/// The fixed description of `code`.
pub fn describe(code: c_int) -> &'static std::ffi::CStr {
    const TEXTS: [&std::ffi::CStr; LAST as usize + 1] = [
        c"success",
        c"invalid argument",
        c"cannot connect (resource manager, executor manager or executor unreachable)",
        c"the resource manager refused the client's credential",
        c"the lease or its token was refused (forged, expired, reused, ended or unknown)",
        c"not enough free resources in the cluster",
        c"the executor refused the allocation",
        c"the input exceeds the largest payload of a slot (nothing was sent)",
        c"the output does not fit the caller's buffer",
        c"the executor is gone",
        c"no response within the allocation's timeout",
        c"the function failed or panicked",
        c"the executor rejected the invocation",
        c"every slot of every worker is in flight",
        c"cancelled: its allocation was freed before it ran",
        c"the fabric cannot be opened",
        c"a malformed answer (protocol error)",
        c"internal error in librafi",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| TEXTS.get(i))
        .copied()
        .unwrap_or(c"unknown rafi status code")
}
