//! One callable function, and what a call can fail with.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use thiserror::Error;

use super::abi::{ErrorCode, RawFunction, ERR_INTERNAL, ERR_PANIC};
use super::library::Loaded;
use crate::protocol::Status;

/// A built-in Rust function: the raw ABI in safe Rust. `Ok(len)` is the output length;
/// `Err(code)` a negative ABI error code (`abi::ERR_*` or the function's own).
pub type BuiltinFn = fn(input: &[u8], output: &mut [u8]) -> Result<usize, i64>;

/// Why a call produced no output. Each maps to a protocol [`Status`] ([`CallError::status`])
/// and an error code for the response header ([`CallError::error_code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum CallError {
    /// The function refused its input (`RAFI_ERR_INVALID_INPUT`; for a typed Rust function,
    /// the payload failed rkyv validation).
    #[error("the function refused its input as invalid")]
    InvalidInput,
    /// The function's output would not fit (`RAFI_ERR_OUTPUT_TOO_SMALL`).
    #[error("the output does not fit in {capacity} bytes")]
    OutputTooSmall {
        /// The output capacity the function had.
        capacity: usize,
    },
    /// The function returned a length beyond its output capacity (a bug in the function);
    /// its output is not used.
    #[error("the function returned {len} bytes of output, beyond its capacity of {capacity}")]
    OutputOverrun {
        /// The length it returned.
        len: u64,
        /// The capacity it had.
        capacity: usize,
    },
    /// The function panicked (caught in a built-in, or `RAFI_ERR_PANIC` from a wrapper).
    #[error("the function panicked")]
    Panicked,
    /// The function failed with its own negative code (or `RAFI_ERR_INTERNAL`).
    #[error("the function failed with code {code}")]
    Failed {
        /// The code as returned.
        code: i64,
    },
}

impl CallError {
    /// The error for a negative return value `code`, with output capacity `capacity`.
    pub const fn from_code(code: i64, capacity: usize) -> CallError {
        match ErrorCode::from_code(code) {
            ErrorCode::InvalidInput => CallError::InvalidInput,
            ErrorCode::OutputTooSmall => CallError::OutputTooSmall { capacity },
            ErrorCode::Panic => CallError::Panicked,
            ErrorCode::Other(code) => CallError::Failed { code },
        }
    }

    /// The response status to report.
    pub const fn status(&self) -> Status {
        match self {
            CallError::InvalidInput => Status::ValidationFailed,
            CallError::OutputTooSmall { .. } | CallError::OutputOverrun { .. } => {
                Status::OutputTooLarge
            }
            CallError::Panicked => Status::FunctionPanicked,
            CallError::Failed { .. } => Status::FunctionError,
        }
    }

    /// The error code for the response header: the function's code for
    /// [`CallError::Failed`] (clamped into `i32`; codes are negative), 0 otherwise, as
    /// `ExecutorConnection::encode_response` expects.
    pub const fn error_code(&self) -> i32 {
        match self {
            CallError::Failed { code } => {
                if *code < i32::MIN as i64 {
                    i32::MIN
                } else if *code > i32::MAX as i64 {
                    i32::MAX
                } else {
                    *code as i32
                }
            }
            _ => 0,
        }
    }
}

/// A function an executor can call: from a loaded library or built in. Cheap to clone
/// (it shares its library, which stays loaded while any clone lives). `Send + Sync`:
/// the ABI requires functions to be callable from several threads at once.
#[derive(Clone)]
pub struct Function {
    name: Arc<str>,
    imp: Imp,
}

#[derive(Clone)]
enum Imp {
    Native {
        call: RawFunction,
        // Keeps the code behind `call` mapped.
        _library: Arc<Loaded>,
    },
    Builtin(BuiltinFn),
}

impl Function {
    pub(crate) fn native(name: &str, call: RawFunction, library: Arc<Loaded>) -> Function {
        Function {
            name: name.into(),
            imp: Imp::Native {
                call,
                _library: library,
            },
        }
    }

    pub(crate) fn builtin(name: &str, f: BuiltinFn) -> Function {
        Function {
            name: name.into(),
            imp: Imp::Builtin(f),
        }
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn shared_name(&self) -> Arc<str> {
        self.name.clone()
    }

    /// Whether this is a built-in Rust function (not from a library).
    pub fn is_builtin(&self) -> bool {
        matches!(self.imp, Imp::Builtin(_))
    }

    /// Calls the function on `input`, with `output` for its result; returns the output
    /// length (the output is `output[..len]`). No allocation, lock or system call here;
    /// a panic in a built-in function is caught.
    ///
    /// For the C ABI's guarantees, `input` and `output` should start at 16-byte boundaries
    /// (slot payloads do); typed Rust functions refuse a less aligned input as invalid.
    ///
    /// # Errors
    /// [`CallError`]: the function's error code, a panic, or a returned length beyond
    /// `output.len()`.
    #[inline]
    pub fn call(&self, input: &[u8], output: &mut [u8]) -> Result<usize, CallError> {
        let capacity = output.len();
        let ret = match self.imp {
            Imp::Native { call, .. } => {
                // SAFETY: `call` comes from a library that `_library` keeps loaded; the
                // pointers are valid for `input.len()` bytes of reading and `capacity`
                // bytes of reading and writing (initialized, as the ABI says), for the
                // duration of the call, and do not overlap (`&` and `&mut`). Whether the
                // function honours those bounds is its ABI contract.
                unsafe { call(input.as_ptr(), input.len(), output.as_mut_ptr(), capacity) }
            }
            // The same mapping as rafi-function's wrappers.
            Imp::Builtin(f) => match catch_unwind(AssertUnwindSafe(|| f(input, output))) {
                Ok(Ok(len)) => i64::try_from(len).unwrap_or(i64::MAX),
                Ok(Err(code)) if code < 0 => code,
                // A non-negative error code is a bug in the function.
                Ok(Err(_)) => ERR_INTERNAL,
                Err(_) => ERR_PANIC,
            },
        };
        if ret < 0 {
            return Err(CallError::from_code(ret, capacity));
        }
        // ret >= 0 fits in u64.
        let len = ret as u64;
        if len > capacity as u64 {
            return Err(CallError::OutputOverrun { len, capacity });
        }
        Ok(len as usize)
    }
}

impl fmt::Debug for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Function")
            .field("name", &self.name)
            .field("builtin", &self.is_builtin())
            .finish()
    }
}
