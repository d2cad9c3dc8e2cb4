//! The C ABI of a rafi function library, as in `include/rafi_function.h`.
//!
//! A library exports two symbols:
//!
//! - `uint32_t rafi_function_abi_version(void)`, returning [`ABI_VERSION`];
//! - `const rafi_function_entry *rafi_function_table(size_t *count)`, returning its
//!   function table (an array of [`FunctionEntry`], static for the life of the library)
//!   and storing the number of entries in `*count`.
//!
//! Each entry names one [`RawFunction`]:
//!
//! ```c
//! int64_t f(const uint8_t *input, size_t input_len, uint8_t *output, size_t output_capacity);
//! ```
//!
//! It returns the output length (`0..=output_capacity`) or a negative error code: one of
//! the `ERR_*` codes below, or any other negative value for a function-specific failure
//! that is passed to the client. Input and output are at least [`INPUT_ALIGN`]-byte aligned
//! and do not overlap; the output holds `output_capacity` initialized bytes of unspecified
//! contents. Functions are called concurrently from several threads and must not keep the
//! pointers after they return.

use std::ffi::{c_char, CStr};

/// The version of the ABI this crate implements (`RAFI_FUNCTION_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;

/// The input does not have the layout the function expects (`RAFI_ERR_INVALID_INPUT`).
pub const ERR_INVALID_INPUT: i64 = -1;
/// The output does not fit in `output_capacity` bytes (`RAFI_ERR_OUTPUT_TOO_SMALL`).
pub const ERR_OUTPUT_TOO_SMALL: i64 = -2;
/// The function panicked; a Rust wrapper caught it (`RAFI_ERR_PANIC`).
pub const ERR_PANIC: i64 = -3;
/// The wrapper failed for another reason, e.g. the output could not be archived within
/// the wrapper's fixed scratch space (`RAFI_ERR_INTERNAL`).
pub const ERR_INTERNAL: i64 = -4;
/// Codes `-1..=-15` are reserved for rafi; function-specific codes should be below this.
pub const ERR_RESERVED_MIN: i64 = -15;

/// Input and output buffers are aligned to at least this many bytes
/// (`RAFI_FUNCTION_ALIGN`). rafi's executor in fact gives 64 (the payload sits at offset
/// 64 of a slot whose size is a power of two, in a page-aligned region).
pub const INPUT_ALIGN: usize = 16;

/// Longest function name, in bytes (`RAFI_FUNCTION_NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Name of the version symbol, NUL-terminated.
pub const ABI_VERSION_SYMBOL: &[u8] = b"rafi_function_abi_version\0";
/// Name of the table symbol, NUL-terminated.
pub const TABLE_SYMBOL: &[u8] = b"rafi_function_table\0";

/// A function's entry point (`rafi_function_fn`).
pub type RawFunction = unsafe extern "C" fn(
    input: *const u8,
    input_len: usize,
    output: *mut u8,
    output_capacity: usize,
) -> i64;

/// `uint32_t rafi_function_abi_version(void)`.
pub type AbiVersionFn = unsafe extern "C" fn() -> u32;

/// `const rafi_function_entry *rafi_function_table(size_t *count)`.
pub type TableFn = unsafe extern "C" fn(count: *mut usize) -> *const FunctionEntry;

/// One entry of a library's function table (`rafi_function_entry`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FunctionEntry {
    /// NUL-terminated UTF-8 name, 1 to [`MAX_NAME_LEN`] bytes, unique in the library.
    pub name: *const c_char,
    /// The entry point; `None` (NULL) is refused by the loader.
    pub call: Option<RawFunction>,
}

// SAFETY: an entry is two pointers to immutable, static data (a name and code); sharing
// them between threads is what the ABI promises (functions are called concurrently).
#[allow(unsafe_code)]
unsafe impl Sync for FunctionEntry {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Send for FunctionEntry {}

impl FunctionEntry {
    /// An entry for a static name and a function.
    pub const fn new(name: &'static CStr, call: RawFunction) -> FunctionEntry {
        FunctionEntry {
            name: name.as_ptr(),
            call: Some(call),
        }
    }
}

/// The ABI meaning of a negative return value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// [`ERR_INVALID_INPUT`].
    InvalidInput,
    /// [`ERR_OUTPUT_TOO_SMALL`].
    OutputTooSmall,
    /// [`ERR_PANIC`].
    Panic,
    /// Any other negative value (including [`ERR_INTERNAL`]): a failure to pass on.
    Other(i64),
}

impl ErrorCode {
    /// The meaning of `code` (which should be negative).
    pub const fn from_code(code: i64) -> ErrorCode {
        match code {
            ERR_INVALID_INPUT => ErrorCode::InvalidInput,
            ERR_OUTPUT_TOO_SMALL => ErrorCode::OutputTooSmall,
            ERR_PANIC => ErrorCode::Panic,
            other => ErrorCode::Other(other),
        }
    }
}
