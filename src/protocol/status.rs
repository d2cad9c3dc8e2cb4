//! Status codes of a response.

use std::fmt;

use thiserror::Error;

/// The outcome of one invocation, as the executor reports it in the response immediate
/// (8 bits) and in the response header (32 bits, same value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// The function ran and returned its output.
    Ok = 0,
    /// The function ran and returned an error; its code (a C function's negative return
    /// value) is in the response header.
    FunctionError = 1,
    /// The function index is not in this connection's function table.
    UnknownFunction = 2,
    /// The request was malformed: bad header, a length beyond the slot, unknown flags.
    MalformedRequest = 3,
    /// The payload failed validation (rkyv bytecheck) before the function saw it.
    ValidationFailed = 4,
    /// The function's output did not fit in the response slot.
    OutputTooLarge = 5,
    /// The function panicked (or trapped); the worker survived it.
    FunctionPanicked = 6,
    /// The executor is shutting down and takes no new work.
    ShuttingDown = 7,
}

/// A status code that this version of the protocol does not define.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("unknown status code {code}")]
pub struct UnknownStatus {
    /// The code as received.
    pub code: u32,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 8] = [
        Status::Ok,
        Status::FunctionError,
        Status::UnknownFunction,
        Status::MalformedRequest,
        Status::ValidationFailed,
        Status::OutputTooLarge,
        Status::FunctionPanicked,
        Status::ShuttingDown,
    ];

    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Whether the function ran and succeeded.
    pub const fn is_ok(self) -> bool {
        matches!(self, Status::Ok)
    }

    /// The status with wire code `code`.
    ///
    /// # Errors
    /// [`UnknownStatus`] for a code this version does not define.
    pub const fn from_code(code: u32) -> Result<Status, UnknownStatus> {
        Ok(match code {
            0 => Status::Ok,
            1 => Status::FunctionError,
            2 => Status::UnknownFunction,
            3 => Status::MalformedRequest,
            4 => Status::ValidationFailed,
            5 => Status::OutputTooLarge,
            6 => Status::FunctionPanicked,
            7 => Status::ShuttingDown,
            _ => return Err(UnknownStatus { code }),
        })
    }

    /// A short, stable, lowercase name (for logs and JSON).
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::FunctionError => "function_error",
            Status::UnknownFunction => "unknown_function",
            Status::MalformedRequest => "malformed_request",
            Status::ValidationFailed => "validation_failed",
            Status::OutputTooLarge => "output_too_large",
            Status::FunctionPanicked => "function_panicked",
            Status::ShuttingDown => "shutting_down",
        }
    }
}

impl TryFrom<u8> for Status {
    type Error = UnknownStatus;
    fn try_from(code: u8) -> Result<Status, UnknownStatus> {
        Status::from_code(code as u32)
    }
}

impl TryFrom<u32> for Status {
    type Error = UnknownStatus;
    fn try_from(code: u32) -> Result<Status, UnknownStatus> {
        Status::from_code(code)
    }
}

impl From<Status> for u8 {
    fn from(s: Status) -> u8 {
        s.code()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::FunctionError => "the function returned an error",
            Status::UnknownFunction => "unknown function",
            Status::MalformedRequest => "malformed request",
            Status::ValidationFailed => "the payload failed validation",
            Status::OutputTooLarge => "the output does not fit in the response slot",
            Status::FunctionPanicked => "the function panicked",
            Status::ShuttingDown => "the executor is shutting down",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_the_rest_are_errors() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.code() as usize, i);
            assert_eq!(Status::try_from(s.code()), Ok(*s));
            assert_eq!(Status::try_from(s.code() as u32), Ok(*s));
            assert!(!s.to_string().is_empty());
        }
        for code in 8..=255u8 {
            assert_eq!(
                Status::try_from(code),
                Err(UnknownStatus { code: code as u32 })
            );
        }
        assert_eq!(
            Status::try_from(0x100u32),
            Err(UnknownStatus { code: 0x100 })
        );
        assert_eq!(Status::try_from(u32::MAX).unwrap_err().code, u32::MAX);
        assert!(Status::Ok.is_ok() && !Status::FunctionError.is_ok());
    }
}
