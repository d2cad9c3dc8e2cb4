//! The code behind [`export!`](crate::export): ABI wrappers around Rust functions.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::slice;

use rkyv::bytecheck::CheckBytes;
use rkyv::{Portable, Serialize};

use crate::abi::{
    FunctionEntry, ABI_VERSION, ERR_INTERNAL, ERR_INVALID_INPUT, ERR_OUTPUT_TOO_SMALL, ERR_PANIC,
    MAX_NAME_LEN,
};
use crate::codec::{decode, encode, EncodeError, Serializer, Validator};

/// `rafi_function_abi_version`'s value.
pub const fn version() -> u32 {
    ABI_VERSION
}

/// `rafi_function_table`'s body.
///
/// # Safety
/// `count` is NULL or valid for writing a `usize`.
pub unsafe fn table(table: &'static [FunctionEntry], count: *mut usize) -> *const FunctionEntry {
    if !count.is_null() {
        // SAFETY: non-null, and valid for a write by the caller's contract.
        unsafe { count.write(table.len()) };
    }
    table.as_ptr()
}

/// A function name as a C string, checked at compile time: 1 to 255 bytes, no NUL inside.
/// `with_nul` is the name followed by one NUL byte (`concat!(name, "\0")`).
pub const fn entry_name(with_nul: &'static str) -> &'static CStr {
    let len = with_nul.len() - 1;
    assert!(len > 0, "a rafi function name must not be empty");
    assert!(
        len <= MAX_NAME_LEN,
        "a rafi function name must be at most 255 bytes"
    );
    match CStr::from_bytes_with_nul(with_nul.as_bytes()) {
        Ok(name) => name,
        Err(_) => panic!("a rafi function name must not contain a NUL byte"),
    }
}

/// Fails compilation when two exported names are equal.
pub const fn assert_names(names: &[&str]) {
    let mut i = 0;
    while i < names.len() {
        let mut j = i + 1;
        while j < names.len() {
            assert!(
                !bytes_eq(names[i].as_bytes(), names[j].as_bytes()),
                "two rafi functions exported under the same name"
            );
            j += 1;
        }
        i += 1;
    }
}

const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The input as a slice (empty for a NULL pointer or a zero length).
///
/// # Safety
/// The ABI contract: `ptr` is valid for reading `len` bytes during the call.
unsafe fn input_slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: valid for reads of `len` initialized bytes (caller's contract), and not
        // written during the call.
        unsafe { slice::from_raw_parts(ptr, len) }
    }
}

/// The output as a slice (empty for a NULL pointer or a zero capacity).
///
/// # Safety
/// The ABI contract: `ptr` is valid for reading and writing `cap` initialized bytes during
/// the call, and overlaps no input.
unsafe fn output_slice<'a>(ptr: *mut u8, cap: usize) -> &'a mut [u8] {
    if ptr.is_null() || cap == 0 {
        &mut []
    } else {
        // SAFETY: valid, initialized, exclusive to this call (caller's contract).
        unsafe { slice::from_raw_parts_mut(ptr, cap) }
    }
}

/// Runs `f`, turning a panic into [`ERR_PANIC`].
fn guard(f: impl FnOnce() -> i64) -> i64 {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(ERR_PANIC)
}

/// A function's error code as returned over the ABI: negative codes pass, anything else
/// (a bug in the function) becomes [`ERR_INTERNAL`].
fn error_code(code: i64) -> i64 {
    if code < 0 {
        code
    } else {
        ERR_INTERNAL
    }
}

/// Wraps `f(&[u8], &mut [u8]) -> Result<usize, i64>`.
///
/// # Safety
/// The ABI contract on `input`/`input_len` and `output`/`output_capacity`.
pub unsafe fn call_raw<F>(
    f: F,
    input: *const u8,
    input_len: usize,
    output: *mut u8,
    output_capacity: usize,
) -> i64
where
    F: Fn(&[u8], &mut [u8]) -> Result<usize, i64>,
{
    // SAFETY: passed on from our caller.
    let (input, output) = unsafe {
        (
            input_slice(input, input_len),
            output_slice(output, output_capacity),
        )
    };
    guard(|| match f(input, output) {
        // A length beyond the capacity is the loader's to report; keep it visible.
        Ok(len) => i64::try_from(len).unwrap_or(i64::MAX),
        Err(code) => error_code(code),
    })
}

/// Wraps `f(&A) -> Out`: validates the input as an `A` in place, archives `Out` into the
/// output.
///
/// # Safety
/// The ABI contract on `input`/`input_len` and `output`/`output_capacity`.
pub unsafe fn call_typed<A, Out, F>(
    f: F,
    input: *const u8,
    input_len: usize,
    output: *mut u8,
    output_capacity: usize,
) -> i64
where
    A: Portable + for<'a> CheckBytes<Validator<'a>>,
    Out: for<'a> Serialize<Serializer<'a>>,
    F: Fn(&A) -> Out,
{
    // SAFETY: passed on from our caller.
    unsafe {
        call_fallible(
            move |a: &A| Ok::<Out, i64>(f(a)),
            input,
            input_len,
            output,
            output_capacity,
        )
    }
}

/// Wraps `f(&A) -> Result<Out, i64>`, like [`call_typed`] with an error code to return.
///
/// # Safety
/// The ABI contract on `input`/`input_len` and `output`/`output_capacity`.
pub unsafe fn call_fallible<A, Out, F>(
    f: F,
    input: *const u8,
    input_len: usize,
    output: *mut u8,
    output_capacity: usize,
) -> i64
where
    A: Portable + for<'a> CheckBytes<Validator<'a>>,
    Out: for<'a> Serialize<Serializer<'a>>,
    F: Fn(&A) -> Result<Out, i64>,
{
    // SAFETY: passed on from our caller.
    let (input, output) = unsafe {
        (
            input_slice(input, input_len),
            output_slice(output, output_capacity),
        )
    };
    guard(|| {
        let Ok(archived) = decode::<A>(input) else {
            return ERR_INVALID_INPUT;
        };
        match f(archived) {
            Err(code) => error_code(code),
            Ok(out) => match encode(&out, output) {
                // len <= output_capacity <= isize::MAX.
                Ok(len) => len as i64,
                Err(EncodeError::OutputTooSmall) => ERR_OUTPUT_TOO_SMALL,
                Err(EncodeError::Other) => ERR_INTERNAL,
            },
        }
    })
}

/// Exports Rust functions from a `cdylib` as a rafi function library.
///
/// ```ignore
/// rafi_function::export! {
///     "blackscholes" => price_batch,        // fn(&Archived<In>) -> Out
///     "matmul" => fallible multiply,        // fn(&Archived<In>) -> Result<Out, i64>
///     "echo" => raw echo,                   // fn(&[u8], &mut [u8]) -> Result<usize, i64>
/// }
/// ```
///
/// Generates one `extern "C"` wrapper per function plus the two symbols of the ABI,
/// `rafi_function_abi_version` and `rafi_function_table` (so use it once per library).
/// A typed wrapper checks that the input starts at a 16-byte boundary and validates it in
/// place with bytecheck (failure: `ERR_INVALID_INPUT`), calls the function, and archives
/// its output straight into the output buffer (`ERR_OUTPUT_TOO_SMALL` if it does not fit).
/// Every wrapper catches panics (`ERR_PANIC`); an `Err(code)` with a non-negative code
/// becomes `ERR_INTERNAL`. The wrappers allocate nothing themselves.
///
/// Names are checked at compile time: 1 to 255 bytes, no NUL, no duplicates.
#[macro_export]
macro_rules! export {
    (@munch [$($entries:expr,)*] [$($names:expr,)*]) => {
        #[doc(hidden)]
        static __RAFI_FUNCTION_TABLE: &[$crate::abi::FunctionEntry] = &[$($entries),*];

        const _: () = $crate::__private::assert_names(&[$($names),*]);

        /// The rafi function ABI version of this library.
        #[no_mangle]
        pub extern "C" fn rafi_function_abi_version() -> u32 {
            $crate::__private::version()
        }

        /// This library's rafi function table; stores its length in `*count`.
        ///
        /// # Safety
        /// `count` is NULL or valid for writing a `size_t`.
        #[no_mangle]
        pub unsafe extern "C" fn rafi_function_table(
            count: *mut usize,
        ) -> *const $crate::abi::FunctionEntry {
            // SAFETY: our caller's contract is the one `table` needs.
            unsafe { $crate::__private::table(__RAFI_FUNCTION_TABLE, count) }
        }
    };
    (@munch [$($entries:expr,)*] [$($names:expr,)*] $name:literal => raw $f:path $(, $($rest:tt)*)?) => {
        $crate::export!(@munch [$($entries,)* $crate::export!(@entry call_raw $name $f),] [$($names,)* $name,] $($($rest)*)?);
    };
    (@munch [$($entries:expr,)*] [$($names:expr,)*] $name:literal => fallible $f:path $(, $($rest:tt)*)?) => {
        $crate::export!(@munch [$($entries,)* $crate::export!(@entry call_fallible $name $f),] [$($names,)* $name,] $($($rest)*)?);
    };
    (@munch [$($entries:expr,)*] [$($names:expr,)*] $name:literal => $f:path $(, $($rest:tt)*)?) => {
        $crate::export!(@munch [$($entries,)* $crate::export!(@entry call_typed $name $f),] [$($names,)* $name,] $($($rest)*)?);
    };
    (@entry $wrap:ident $name:literal $f:path) => {{
        unsafe extern "C" fn __rafi_call(
            input: *const u8,
            input_len: usize,
            output: *mut u8,
            output_capacity: usize,
        ) -> i64 {
            // SAFETY: the caller (the executor) upholds the ABI contract on the buffers.
            unsafe { $crate::__private::$wrap($f, input, input_len, output, output_capacity) }
        }
        $crate::abi::FunctionEntry::new(
            $crate::__private::entry_name(concat!($name, "\0")),
            __rafi_call,
        )
    }};
    ($($body:tt)+) => {
        $crate::export!(@munch [] [] $($body)+);
    };
}
