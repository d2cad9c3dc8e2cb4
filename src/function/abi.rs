//! The C ABI of function libraries (`include/rafi_function.h`), shared with the
//! `rafi-function` crate that Rust libraries are written with, plus the checks rafi
//! applies to what a library declares.

pub use rafi_function::abi::{
    AbiVersionFn, ErrorCode, FunctionEntry, RawFunction, TableFn, ABI_VERSION, ABI_VERSION_SYMBOL,
    ERR_INTERNAL, ERR_INVALID_INPUT, ERR_OUTPUT_TOO_SMALL, ERR_PANIC, ERR_RESERVED_MIN,
    INPUT_ALIGN, MAX_NAME_LEN, TABLE_SYMBOL,
};

use super::NameError;

/// Most functions one library may declare (a sanity bound on what its table claims).
pub const MAX_FUNCTIONS: usize = 1 << 16;

/// Checks a function name: UTF-8, 1 to [`MAX_NAME_LEN`] bytes, no control characters.
///
/// # Errors
/// The first [`NameError`] found.
pub fn check_name(name: &[u8]) -> Result<&str, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    let name = std::str::from_utf8(name).map_err(|_| NameError::NotUtf8)?;
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    Ok(name)
}
