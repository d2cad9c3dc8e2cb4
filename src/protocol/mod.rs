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
//!  prepare(f, len) ─▶ slot i, id, header, imm
//!  copy header + payload to local send slot i
//!  WRITE_WITH_IMM ──── request region + i·slot_size ──▶ request slot i
//!                      imm = 0 | id[0..15] | i          recv completion (imm, byte_len)
//!                                                    on_request(imm, slot i) ─▶ Request
//!                                                    function(payload) ─▶ output
//!                                                    encode_response(i, id, status, …)
//!  response slot i ◀── response region + i·slot_size ── WRITE_WITH_IMM
//!  recv completion     imm = 1 | id[0..7] | status | i
//!  on_response(imm, slot i) ─▶ Completed (slot i free again)
//! ```
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
//! // Client: take a slot and an id, then WRITE_WITH_IMM header + payload.
//! let p = client.prepare(0, 5).unwrap();
//! let at = p.remote_offset as usize;
//! requests[at..at + HEADER_LEN].copy_from_slice(&p.header);
//! requests[at + HEADER_LEN..at + p.write_len].copy_from_slice(b"hello");
//!
//! // Executor: the receive completion carries `p.imm`; validate in place, run, answer.
//! let req = exec.on_request(p.imm, &requests[at..at + slot]).unwrap();
//! let output = req.payload.to_ascii_uppercase();
//! let r = exec.encode_response(req.slot, req.id, Status::Ok, 0, output.len()).unwrap();
//! let at = r.remote_offset as usize;
//! responses[at..at + HEADER_LEN].copy_from_slice(&r.header);
//! responses[at + HEADER_LEN..at + r.write_len].copy_from_slice(&output);
//!
//! // Client: the receive completion carries `r.imm`; the slot is free again.
//! let done = client.on_response(r.imm, &responses[at..at + slot]).unwrap();
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
    ImmError, RequestImm, ResponseImm, REQUEST_TAG_MASK, RESPONSE_BIT, RESPONSE_TAG_MASK,
};
pub use status::{Status, UnknownStatus};
