//! Functions: what an executor worker calls on a request's payload.
//!
//! A [`FunctionTable`] maps names to [`Function`]s. It is built once per executor, before
//! any call, from:
//!
//! - shared libraries with the C ABI of `include/rafi_function.h` (any language), loaded
//!   from a path on the node ([`FunctionLibrary::open`]) or from bytes a client shipped at
//!   allocation ([`FunctionLibrary::from_bytes`], through a sealed memfd);
//! - built-in Rust functions ([`FunctionTable::with_builtins`]: `rafi.noop`, `rafi.echo`;
//!   [`FunctionTable::add_builtin`] for more).
//!
//! The allocation handshake resolves the client's function names to [`FunctionId`]s
//! ([`FunctionTable::resolve`]); from then on a call is an index and an indirect call:
//!
//! ```text
//!  request slot payload ─▶ table.get(id).call(input, output) ─▶ Ok(len)  ─▶ Status::Ok
//!                              │ C ABI: f(in, len, out, cap)     Err(e)  ─▶ e.status(),
//!                              │ or a built-in fn (panics caught)            e.error_code()
//!                              └ return value checked: len <= cap, codes mapped
//! ```
//!
//! [`Function::call`] allocates nothing, takes no lock and makes no system call. Libraries
//! are bound eagerly (`RTLD_NOW`), so no symbol is resolved on the first call either.
//! Rust function libraries are written with the `rafi-function` crate (its `export!`
//! macro); see `docs/functions.md`.

pub mod abi;
// Unsafe code: the FFI call into a loaded library.
#[allow(unsafe_code)]
mod call;
// Unsafe code: dlopen, dlsym, memfd, and reading the library's table.
#[allow(unsafe_code)]
mod library;
mod table;

pub use call::{BuiltinFn, CallError, Function};
pub use library::{FunctionLibrary, LoadError, NameError};
pub use table::{FunctionId, FunctionTable, UnknownFunctions};
