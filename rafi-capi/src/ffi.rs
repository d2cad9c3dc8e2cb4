//! Reading the arguments C passes: strings, handles and out-pointers, each checked so that
//! a null or malformed one is an `RAFI_ERR_ARG`, never a crash inside the library.

use std::ffi::{c_char, CStr};

use crate::status::Failure;

/// The UTF-8 string at `p`.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that outlives `'a`.
pub unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::arg(format!("{what} is NULL")));
    }
    // SAFETY: non-null, and NUL-terminated by the caller's promise.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|_| Failure::arg(format!("{what} is not UTF-8")))
}

/// The string at `p`, or `None` when it is null or empty.
///
/// # Safety
/// As for [`text`].
pub unsafe fn optional_text<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    let s = unsafe { text(p, what) }?;
    Ok((!s.is_empty()).then_some(s))
}

/// The object behind handle `p`.
///
/// # Safety
/// `p` is null or a handle this library returned and that was not freed.
pub unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller's promise; null is refused by as_ref.
    unsafe { p.as_ref() }.ok_or_else(|| Failure::arg(format!("{what} is NULL")))
}

/// Writes `value` to `out`.
///
/// # Safety
/// `out` is null or valid for a write of `T`.
pub unsafe fn put<T>(out: *mut T, value: T, what: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::arg(format!("{what} is NULL")));
    }
    // SAFETY: non-null and valid by the caller's promise; T is a plain C value.
    unsafe { out.write(value) };
    Ok(())
}

/// Writes `value` to `out` unless `out` is null (an optional result).
///
/// # Safety
/// `out` is null or valid for a write of `T`.
pub unsafe fn put_optional<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: non-null and valid by the caller's promise.
        unsafe { out.write(value) };
    }
}

/// Moves `value` to the heap and returns it as a handle.
pub fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Takes the handle at `*slot` back (null when there is none) and nulls the caller's copy.
///
/// # Safety
/// `slot` is null or valid for reads and writes; `*slot` is null or a live handle of `T`
/// from [`into_handle`], not used again by the caller.
pub unsafe fn take_handle<T>(slot: *mut *mut T, what: &str) -> Result<Option<Box<T>>, Failure> {
    if slot.is_null() {
        return Err(Failure::arg(format!("{what} is NULL")));
    }
    // SAFETY: valid by the caller's promise.
    let p = unsafe { slot.read() };
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: as above; the caller's copy is nulled so the box is owned once.
    unsafe { slot.write(std::ptr::null_mut()) };
    // SAFETY: p came from Box::into_raw in into_handle.
    Ok(Some(unsafe { Box::from_raw(p) }))
}

/// A buffer of the caller, checked: a null pointer is allowed only with a zero length.
pub fn check_buffer<T>(p: *const T, len: usize, what: &str) -> Result<(), Failure> {
    if p.is_null() && len != 0 {
        return Err(Failure::arg(format!(
            "{what} is NULL with a length of {len}"
        )));
    }
    Ok(())
}
