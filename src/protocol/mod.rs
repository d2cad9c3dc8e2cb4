//! # The invocation protocol, sans-IO
//!
//! The wire format of rafi's invocation path as plain data and small state machines over
//! byte slices: no I/O, no threads, no clock, and no allocation after a connection's state
//! is built. The fabric code around it moves the bytes; tests drive it step by step.
//! `docs/protocol.md` documents every byte.
//!
//! ```text
//!  client (one ClientConnection per worker)          executor worker (one ExecutorConnection
//!                                                    per client connection)
//!  prepare(f, len) ─▶ slot i, id, imm (+ header)
//!  payload (+ header) in local send slot i
//!  WRITE_WITH_IMM ──── request region + i·slot_size ──▶ request slot i
//!    compact: imm = 0|1|id[0..14]|f|i, payload only   recv completion (imm, byte_len)
//!                                                    on_request(imm, byte_len, slot i)
//!                                                      ─▶ Request
//!                                                    function(payload) ─▶ output
//!                                                    encode_response(i, id, status, …)
//!  response slot i ◀── response region + i·slot_size ── WRITE_WITH_IMM
//!  recv completion     compact: imm = 1|1|id[0..14]|status|i, output only
//!  on_response(imm, byte_len, slot i) ─▶ Completed (slot i free again)
//! ```
//!
//! In the compact form (slot and function index below 256, no function error code) the
//! immediate and the WRITE's length say everything, so neither side reads a header: see
//! [`written_extent`] and `docs/protocol.md`.
//!
//! * [`SlotGeometry`]: `slots` request slots of `slot_size` bytes per worker connection,
//!   request slot `i` paired with response slot `i`.
//! * [`RequestHeader`], [`ResponseHeader`]: the 64-byte headers; payload and output at
//!   offset [`HEADER_LEN`].
//! * [`RequestImm`], [`ResponseImm`]: the 32-bit immediates (slot index, id tag, status,
//!   direction bit).
//! * [`IdGenerator`], [`SlotPool`]: 64-bit invocation ids that are never reused; credits.
//! * [`Status`]: outcome codes.
//! * [`ClientConnection`], [`ExecutorConnection`]: the two state machines.
//! * [`ControlMessage`] and friends: the allocation handshake, JSON lines over TCP.
//!
//! One invocation, with two vectors standing in for the RDMA regions:
//!
//! ```
//! use rafi::protocol::*;
//!
//! let g = SlotGeometry::new(8, 4096).unwrap();
//! let mut client = ClientConnection::new(g, 1); // one function in the table
//! let mut exec = ExecutorConnection::new(g, 1);
//! let mut requests = vec![0u8; g.region_len() as usize]; // executor's request region
//! let mut responses = vec![0u8; g.region_len() as usize]; // client's response region
//! let slot = g.slot_size() as usize;
//!
//! // Client: take a slot and an id, then WRITE_WITH_IMM the payload (and the header, if
//! // the form needs one).
//! let p = client.prepare(0, 5).unwrap();
//! let at = p.remote_offset as usize - p.local_offset; // the slot's start
//! if let Some(header) = &p.header {
//!     requests[at..at + HEADER_LEN].copy_from_slice(header);
//! }
//! requests[at + HEADER_LEN..at + HEADER_LEN + 5].copy_from_slice(b"hello");
//!
//! // Executor: the receive completion carries `p.imm` and `p.write_len` bytes; validate
//! // in place, run, answer.
//! let req = exec.on_request(p.imm, p.write_len, &requests[at..at + slot]).unwrap();
//! let output = req.payload.to_ascii_uppercase();
//! let r = exec.encode_response(req.slot, req.id, Status::Ok, 0, output.len()).unwrap();
//! let at = r.remote_offset as usize - r.local_offset;
//! if let Some(header) = &r.header {
//!     responses[at..at + HEADER_LEN].copy_from_slice(header);
//! }
//! responses[at + HEADER_LEN..at + HEADER_LEN + output.len()].copy_from_slice(&output);
//!
//! // Client: the receive completion carries `r.imm` and `r.write_len`; the slot is free
//! // again.
//! let done = client.on_response(r.imm, r.write_len, &responses[at..at + slot]).unwrap();
//! assert_eq!((done.id, done.status, done.output), (p.id, Status::Ok, &b"HELLO"[..]));
//! assert_eq!(client.in_flight(), 0);
//! ```

mod client;
mod credits;
mod executor;
mod geometry;
mod handshake;
mod header;
mod imm;
mod status;

pub use client::{ClientConnection, Completed, PrepareError, Prepared, ResponseError, SlotError};
pub use credits::{IdGenerator, SlotPool};
pub use executor::{
    EncodeResponseError, EncodedResponse, ExecutorConnection, Rejection, Request, RequestError,
};
pub use geometry::{GeometryError, SlotGeometry};
pub use handshake::{
    Admission, ClientHello, ClientWorker, ControlMessage, ErrorKind, ErrorMessage, ExecutorReply,
    ExecutorWorker, FunctionEntry, HandshakeError, LibraryDesc, MemoryAccess, MemoryGrant,
    MemoryRequest, RegionDesc, MAX_CONTROL_LINE, PROTOCOL_VERSION,
};
pub use header::{
    HeaderError, RequestHeader, ResponseHeader, HEADER_LEN, KNOWN_REQUEST_FLAGS, RESERVED_OFFSET,
};
pub use imm::{
    written_extent, ImmError, PeekedResponse, RequestImm, ResponseImm, COMPACT_BIT,
    COMPACT_MAX_INDEX, REQUEST_TAG_MASK, RESPONSE_BIT, RESPONSE_TAG_MASK,
};
pub use status::{Status, UnknownStatus};
