//! Write rafi functions in Rust, and talk to them from a client.
//!
//! This is the small crate that function-library authors depend on (not all of rafi). It
//! holds three things:
//!
//! - [`abi`]: the C ABI of a rafi function library (`include/rafi_function.h` in Rust
//!   terms): the entry point type, the table entry, the version and the error codes.
//! - [`export!`]: turns plain Rust functions into the exported symbols of a `cdylib`. A
//!   typed function takes `&Archived<In>` (the request payload, validated in place with
//!   rkyv's bytecheck) and returns `Out`, which is archived straight into the response slot.
//! - [`encode`] / [`decode`]: what a client uses to archive an input straight into a send
//!   slot and to view a result in place, without copying and without allocating.
//!
//! ```text
//!  client                         executor worker                     your function
//!  encode(&In, send slot) ──RDMA──▶ request slot ──▶ wrapper: decode ──▶ f(&Archived<In>)
//!                                                                         │ Out
//!  decode::<Out>(slot) ◀───RDMA─── response slot ◀── wrapper: encode ◀────┘
//! ```
//!
//! ```
//! use rkyv::{Archive, Serialize};
//!
//! #[derive(Archive, Serialize)]
//! pub struct Pair { pub a: f64, pub b: f64 }
//!
//! #[derive(Archive, Serialize)]
//! pub struct Sum { pub value: f64 }
//!
//! pub fn add(p: &ArchivedPair) -> Sum {
//!     Sum { value: p.a.to_native() + p.b.to_native() }
//! }
//!
//! pub fn echo(input: &[u8], output: &mut [u8]) -> Result<usize, i64> {
//!     let out = output.get_mut(..input.len()).ok_or(rafi_function::abi::ERR_OUTPUT_TOO_SMALL)?;
//!     out.copy_from_slice(input);
//!     Ok(input.len())
//! }
//!
//! rafi_function::export! {
//!     "add" => add,
//!     "echo" => raw echo,
//! }
//! # fn main() {}
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod abi;
mod codec;
// The only unsafe code: raw ABI pointers turned into slices for the wrapped function.
#[allow(unsafe_code)]
mod export;

pub use codec::{decode, encode, DecodeError, EncodeError, Serializer, SliceWriter, Validator};
pub use codec::{ALIGN, SCRATCH_LEN};

// The macro's support code: not part of the API, may change without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::export::{
        assert_names, call_fallible, call_raw, call_typed, entry_name, table, version,
    };
}

// rkyv as this crate sees it, so that users name the same version.
pub use rkyv;
