//! The client side of one worker connection.

use std::num::NonZeroU64;

use thiserror::Error;

use super::credits::{IdGenerator, SlotPool};
use super::geometry::SlotGeometry;
use super::header::{get_u64, header_of, HeaderError, RequestHeader, ResponseHeader, HEADER_LEN};
use super::imm::{
    written_extent, ImmError, RequestImm, ResponseImm, COMPACT_MAX_INDEX, REQUEST_TAG_MASK,
};
use super::status::Status;

/// What a client slot is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Free: the credit is in the pool.
    Free,
    /// A request with this id was prepared; its response has not arrived.
    InFlight(u64),
    /// Like `InFlight`, but the caller gave up (timed out): the response still has to
    /// arrive before the slot may be reused, and then goes nowhere.
    Abandoned(u64),
    /// The response arrived and the caller still reads the output in place.
    Held(u64),
}

/// The client's state machine for one worker connection: ids, credits, request encoding
/// and response validation. One per (client, worker) queue pair.
///
/// It does no I/O. The caller copies [`Prepared::header`] and the payload into its local
/// send slot, posts one WRITE_WITH_IMM of [`Prepared::write_len`] bytes to
/// `request_region.addr + Prepared::remote_offset` with immediate [`Prepared::imm`], and
/// hands each receive completion's immediate and the response slot's bytes to
/// [`ClientConnection::on_response`].
///
/// Nothing allocates after [`ClientConnection::new`].
#[derive(Clone, Debug)]
pub struct ClientConnection {
    geometry: SlotGeometry,
    function_count: u32,
    ids: IdGenerator,
    pool: SlotPool,
    state: Box<[SlotState]>,
    /// Send requests in the compact form when they fit it (see [`ClientConnection::set_compact`]).
    compact: bool,
    /// The highest id the executor will have seen once every prepared request is sent, and
    /// the value before the last prepare (for its cancel): a compact request's id must
    /// follow it closely enough for the executor to recover the id from its 14-bit tag.
    executor_last_id: u64,
    executor_last_id_before: u64,
    /// A request other than the last prepared was cancelled: the executor's last id is not
    /// known exactly any more, so the next request takes the full form.
    resync: bool,
}

/// A response tied to an invocation: slot, id, abandoned, and the outcome.
type Tied<'a> = (u16, u64, bool, Result<Completed<'a>, ResponseError>);

/// A request ready to be written: everything the caller needs to post its WRITE_WITH_IMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// Request slot (and paired response slot) index.
    pub slot: u16,
    /// The invocation id.
    pub id: u64,
    /// The 64 header bytes to put at the start of the staging slot (the payload follows
    /// them at offset 64), or `None` in the compact form, which sends no header.
    pub header: Option<[u8; HEADER_LEN]>,
    /// The 32-bit immediate of the WRITE_WITH_IMM.
    pub imm: u32,
    /// Where the WRITE starts in the staging slot: 0 (header and payload) or 64 (the
    /// payload alone, compact form).
    pub local_offset: usize,
    /// Byte offset of the WRITE's destination in the executor's request region (the slot
    /// starts at `remote_offset - local_offset`; the paired response slot is at the same
    /// offset of the client's response region).
    pub remote_offset: u64,
    /// Bytes to write: the header plus the payload, or the payload alone.
    pub write_len: usize,
}

/// A validated response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed<'a> {
    /// Response slot index.
    pub slot: u16,
    /// The invocation id it answers (the one [`ClientConnection::prepare`] gave).
    pub id: u64,
    /// Outcome.
    pub status: Status,
    /// The function's error code when `status` is [`Status::FunctionError`]; zero otherwise.
    pub error_code: i32,
    /// The output, in place in the response slot. With [`Status::Ok`] it is the function's
    /// output; with an error status it may hold a UTF-8 diagnostic (or be empty).
    pub output: &'a [u8],
}

/// Why [`ClientConnection::prepare`] refused a request. Nothing was sent and no slot or
/// id was consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum PrepareError {
    /// The payload does not fit in a request slot.
    #[error("payload of {len} B exceeds the {max} B a request slot holds")]
    PayloadTooLarge { len: usize, max: usize },
    /// The function index is not in the connection's function table.
    #[error("function index {index} is not in the connection's table of {count} functions")]
    UnknownFunction { index: u32, count: u32 },
    /// Every slot has an invocation in flight: wait for a response.
    #[error("all {slots} request slots are in flight")]
    AllSlotsInFlight { slots: u32 },
    /// All 2^64 - 1 invocation ids of this connection have been used.
    #[error("the connection has used all its invocation ids")]
    IdsExhausted,
}

/// Why [`ClientConnection::on_response`] refused a response.
///
/// The first group (up to [`ResponseError::IdMismatch`]) could not be tied to an
/// invocation in flight: the state is unchanged and no caller is affected. The second
/// group was tied to the invocation [`ResponseError::failed_invocation`] names: its slot
/// has been released and that invocation has failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ResponseError {
    /// The immediate is a request immediate (bit 31 clear).
    #[error("immediate {imm:#010x} is not a response immediate")]
    WrongDirection { imm: u32 },
    /// The slot index is beyond the connection's slots.
    #[error("response for slot {slot}, but the connection has {slots} slots")]
    BadSlot { slot: u16, slots: u32 },
    /// No invocation is in flight in this slot: a stale or duplicated response.
    #[error("response for slot {slot}, which has no invocation in flight")]
    NotInFlight { slot: u16 },
    /// The id tag of the immediate does not match the invocation in flight in the slot.
    #[error("response for slot {slot} carries id tag {tag:#06x}, but invocation {expected} is in flight there")]
    TagMismatch { slot: u16, expected: u64, tag: u16 },
    /// Fewer bytes than a header were handed in.
    #[error("response slot {slot}: {len} B is shorter than the 64-byte header")]
    Truncated { slot: u16, len: usize },
    /// The header's id is not the invocation in flight in the slot.
    #[error("response slot {slot} holds invocation {found}, but invocation {expected} is in flight there")]
    IdMismatch {
        slot: u16,
        expected: u64,
        found: u64,
    },
    /// The status byte of the immediate is not a known status.
    #[error("response to invocation {id} (slot {slot}) has unknown status code {code}")]
    UnknownStatus { slot: u16, id: u64, code: u32 },
    /// The header is malformed (unknown status, reserved bytes not zero).
    #[error("response to invocation {id} (slot {slot}): {source}")]
    BadHeader {
        slot: u16,
        id: u64,
        #[source]
        source: HeaderError,
    },
    /// Immediate and header disagree on the status.
    #[error(
        "response to invocation {id} (slot {slot}): immediate says {imm}, header says {header}"
    )]
    StatusMismatch {
        slot: u16,
        id: u64,
        imm: Status,
        header: Status,
    },
    /// An error code with a status other than [`Status::FunctionError`].
    #[error("response to invocation {id} (slot {slot}): error code {code} with status {status}")]
    UnexpectedErrorCode {
        slot: u16,
        id: u64,
        status: Status,
        code: i32,
    },
    /// The output length reaches beyond the response slot (or beyond the bytes received).
    #[error("response to invocation {id} (slot {slot}): output of {len} B exceeds the {max} B available")]
    OutputOutOfBounds {
        slot: u16,
        id: u64,
        len: u32,
        max: usize,
    },
    /// A valid response to an invocation the caller abandoned: its slot is free again, and
    /// the result goes to nobody.
    #[error("response to abandoned invocation {id} (slot {slot}) discarded")]
    Abandoned { slot: u16, id: u64 },
}

impl ResponseError {
    /// The invocation (slot and id) this error failed, for errors that could be tied to a
    /// live invocation; `None` when no caller is affected (garbage, stale or duplicated
    /// responses, and responses to abandoned invocations).
    pub fn failed_invocation(&self) -> Option<(u16, u64)> {
        match *self {
            ResponseError::UnknownStatus { slot, id, .. }
            | ResponseError::BadHeader { slot, id, .. }
            | ResponseError::StatusMismatch { slot, id, .. }
            | ResponseError::UnexpectedErrorCode { slot, id, .. }
            | ResponseError::OutputOutOfBounds { slot, id, .. } => Some((slot, id)),
            _ => None,
        }
    }
}

/// Why [`ClientConnection::cancel`], [`ClientConnection::abandon`] or
/// [`ClientConnection::release`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SlotError {
    /// The slot index is beyond the connection's slots.
    #[error("slot {slot} is out of range (the connection has {slots} slots)")]
    BadSlot { slot: u16, slots: u32 },
    /// The slot does not hold invocation `id` in the state the operation needs.
    #[error("slot {slot} holds no {expected} invocation {id}")]
    WrongState {
        slot: u16,
        id: u64,
        expected: &'static str,
    },
}

impl ClientConnection {
    /// A connection with every slot free whose first invocation id is 1.
    /// `function_count` is the length of the function table the executor's reply gave
    /// (indices `0..function_count` are valid).
    pub fn new(geometry: SlotGeometry, function_count: u32) -> ClientConnection {
        Self::with_first_id(geometry, function_count, NonZeroU64::MIN)
    }

    /// Like [`ClientConnection::new`] with a first invocation id other than 1; tests use it
    /// to cross the 2^16, 2^32 and 2^64 boundaries.
    pub fn with_first_id(
        geometry: SlotGeometry,
        function_count: u32,
        first_id: NonZeroU64,
    ) -> ClientConnection {
        ClientConnection {
            geometry,
            function_count,
            ids: IdGenerator::starting_at(first_id),
            pool: SlotPool::new(geometry),
            state: vec![SlotState::Free; geometry.slots() as usize].into_boxed_slice(),
            compact: true,
            executor_last_id: 0,
            executor_last_id_before: 0,
            resync: false,
        }
    }

    /// Whether requests go in the compact form (no header) when slot and function index
    /// fit the immediate: on by default. The executor answers a compact request compactly
    /// too (unless it must send a function error code), so turning it off puts headers in
    /// both directions, as benchmarks do to show what the compact form saves.
    pub fn set_compact(&mut self, enabled: bool) {
        self.compact = enabled;
    }

    /// The slot geometry.
    pub fn geometry(&self) -> SlotGeometry {
        self.geometry
    }

    /// Number of functions in the connection's table.
    pub fn function_count(&self) -> u32 {
        self.function_count
    }

    /// Slots not free (in flight, abandoned, or held by a reader).
    pub fn in_flight(&self) -> u32 {
        self.pool.in_flight()
    }

    /// Slots free for [`ClientConnection::prepare`].
    pub fn available(&self) -> u32 {
        self.pool.available()
    }

    /// The id the next prepared request gets, or `None` when the ids are exhausted.
    pub fn next_id(&self) -> Option<u64> {
        self.ids.peek()
    }

    /// The invocation awaiting a response in `slot` (abandoned ones included), if any.
    pub fn outstanding(&self, slot: u16) -> Option<u64> {
        match self.state.get(slot as usize)? {
            SlotState::InFlight(id) | SlotState::Abandoned(id) => Some(*id),
            SlotState::Free | SlotState::Held(_) => None,
        }
    }

    /// Takes a slot and an id for a request to function `function` with a payload of
    /// `payload_len` bytes, and encodes its header and immediate.
    ///
    /// # Errors
    /// [`PrepareError`]; then nothing is consumed.
    pub fn prepare(&mut self, function: u32, payload_len: usize) -> Result<Prepared, PrepareError> {
        let max = self.geometry.max_payload();
        if payload_len > max {
            return Err(PrepareError::PayloadTooLarge {
                len: payload_len,
                max,
            });
        }
        if function >= self.function_count {
            return Err(PrepareError::UnknownFunction {
                index: function,
                count: self.function_count,
            });
        }
        if self.ids.peek().is_none() {
            return Err(PrepareError::IdsExhausted);
        }
        let slot = self.pool.acquire().ok_or(PrepareError::AllSlotsInFlight {
            slots: self.geometry.slots(),
        })?;
        let id = self.ids.next_id().ok_or(PrepareError::IdsExhausted)?;
        self.state[slot as usize] = SlotState::InFlight(id);
        let remote_offset = self.geometry.slot_offset(slot);
        // The executor recovers a compact id as the first above the last it saw with the
        // same 14 low bits: exact while the gap is at most 2^14 (ids skipped by cancels, or
        // a first id far above 1, take the full form once).
        let recoverable = !self.resync && id - self.executor_last_id <= REQUEST_TAG_MASK + 1;
        self.executor_last_id_before = self.executor_last_id;
        self.executor_last_id = id;
        // The compact form whenever the immediate can say it all.
        if self.compact
            && recoverable
            && slot as u32 <= COMPACT_MAX_INDEX
            && function <= COMPACT_MAX_INDEX
        {
            return Ok(Prepared {
                slot,
                id,
                header: None,
                imm: RequestImm::compact(slot as u8, function as u8, id).encode(),
                local_offset: HEADER_LEN,
                remote_offset: remote_offset + HEADER_LEN as u64,
                write_len: payload_len,
            });
        }
        // The header tells the executor the full id: it knows where it stands again.
        self.resync = false;
        let header = RequestHeader {
            id,
            function,
            // payload_len <= max_payload < 2^30.
            payload_len: payload_len as u32,
            flags: 0,
        };
        Ok(Prepared {
            slot,
            id,
            header: Some(header.encode()),
            imm: RequestImm::new(slot, id).encode(),
            local_offset: 0,
            remote_offset,
            write_len: HEADER_LEN + payload_len,
        })
    }

    /// Returns the slot of a prepared request that was never posted (its post failed).
    /// The id is not reused.
    ///
    /// # Errors
    /// [`SlotError`] when `slot` does not hold in-flight invocation `id`.
    pub fn cancel(&mut self, slot: u16, id: u64) -> Result<(), SlotError> {
        self.transition(
            slot,
            id,
            SlotState::InFlight(id),
            "in-flight",
            SlotState::Free,
        )?;
        // The executor never sees a cancelled id.
        if self.executor_last_id == id {
            self.executor_last_id = self.executor_last_id_before;
        } else {
            self.resync = true;
        }
        Ok(())
    }

    /// Gives up on invocation `id` (for example on a timeout). Its slot stays taken until
    /// the response arrives, because the executor may still write it; that response is then
    /// discarded with [`ResponseError::Abandoned`] and frees the slot. If the executor never
    /// answers, the slot is lost with the connection, never reused under a live write.
    ///
    /// # Errors
    /// [`SlotError`] when `slot` does not hold in-flight invocation `id`.
    pub fn abandon(&mut self, slot: u16, id: u64) -> Result<(), SlotError> {
        self.transition(
            slot,
            id,
            SlotState::InFlight(id),
            "in-flight",
            SlotState::Abandoned(id),
        )
    }

    /// Frees the slot of a response taken with [`ClientConnection::on_response_hold`] once
    /// its output has been read.
    ///
    /// # Errors
    /// [`SlotError`] when `slot` does not hold the response of invocation `id`.
    pub fn release(&mut self, slot: u16, id: u64) -> Result<(), SlotError> {
        self.transition(slot, id, SlotState::Held(id), "held", SlotState::Free)
    }

    fn transition(
        &mut self,
        slot: u16,
        id: u64,
        from: SlotState,
        expected: &'static str,
        to: SlotState,
    ) -> Result<(), SlotError> {
        let slots = self.geometry.slots();
        let state = self
            .state
            .get_mut(slot as usize)
            .ok_or(SlotError::BadSlot { slot, slots })?;
        if *state != from {
            return Err(SlotError::WrongState { slot, id, expected });
        }
        *state = to;
        if to == SlotState::Free {
            self.pool.release(slot);
        }
        Ok(())
    }

    /// Validates a response: `imm` is the immediate of the receive completion, `slot_bytes`
    /// the response slot it names (the whole slot, or its first `byte_len` bytes when the
    /// fabric reports how many were written). On success the slot is free again, so read
    /// [`Completed::output`] before the next [`ClientConnection::prepare`] can reuse it, or
    /// use [`ClientConnection::on_response_hold`].
    ///
    /// The slot index, the direction and the id tag are checked from the immediate before
    /// any byte of the slot is read.
    ///
    /// # Errors
    /// [`ResponseError`]; see there which errors fail an invocation.
    pub fn on_response<'a>(
        &mut self,
        imm: u32,
        byte_len: usize,
        slot_bytes: &'a [u8],
    ) -> Result<Completed<'a>, ResponseError> {
        self.complete(imm, byte_len, slot_bytes, false)
    }

    /// Like [`ClientConnection::on_response`], but a successful response keeps its slot
    /// until [`ClientConnection::release`], so that the output can be read in place (a
    /// zero-copy view) while other invocations go on.
    ///
    /// # Errors
    /// As [`ClientConnection::on_response`].
    pub fn on_response_hold<'a>(
        &mut self,
        imm: u32,
        byte_len: usize,
        slot_bytes: &'a [u8],
    ) -> Result<Completed<'a>, ResponseError> {
        self.complete(imm, byte_len, slot_bytes, true)
    }

    fn complete<'a>(
        &mut self,
        imm: u32,
        byte_len: usize,
        slot_bytes: &'a [u8],
        hold: bool,
    ) -> Result<Completed<'a>, ResponseError> {
        let received = written_extent(imm, byte_len).end.min(slot_bytes.len());
        let (slot, id, abandoned, result) =
            self.validate(imm, byte_len, &slot_bytes[..received])?;
        // The response was tied to invocation `id` in flight in `slot`: settle the slot.
        if hold && !abandoned && result.is_ok() {
            self.state[slot as usize] = SlotState::Held(id);
        } else {
            self.state[slot as usize] = SlotState::Free;
            self.pool.release(slot);
        }
        if abandoned {
            return Err(ResponseError::Abandoned { slot, id });
        }
        result
    }

    /// Checks a response without changing state. The outer error means the response could
    /// not be tied to an invocation; otherwise returns the slot, the invocation id, whether
    /// it was abandoned, and the outcome for that invocation.
    fn validate<'a>(
        &self,
        imm: u32,
        byte_len: usize,
        bytes: &'a [u8],
    ) -> Result<Tied<'a>, ResponseError> {
        let peeked = ResponseImm::peek(imm).ok_or(ResponseError::WrongDirection { imm })?;
        let (slot, tag) = (peeked.slot, peeked.tag);
        let (expected, abandoned) = match self.state.get(slot as usize) {
            None => {
                return Err(ResponseError::BadSlot {
                    slot,
                    slots: self.geometry.slots(),
                })
            }
            Some(SlotState::InFlight(id)) => (*id, false),
            Some(SlotState::Abandoned(id)) => (*id, true),
            Some(SlotState::Free | SlotState::Held(_)) => {
                return Err(ResponseError::NotInFlight { slot })
            }
        };
        if !peeked.matches(expected) {
            return Err(ResponseError::TagMismatch {
                slot,
                expected,
                tag,
            });
        }
        if peeked.compact {
            let outcome = self.check_compact(slot, expected, imm, byte_len, bytes);
            return Ok((slot, expected, abandoned, outcome));
        }
        let h = header_of(bytes).ok_or(ResponseError::Truncated {
            slot,
            len: bytes.len(),
        })?;
        let found = get_u64(h, 0);
        if found != expected {
            return Err(ResponseError::IdMismatch {
                slot,
                expected,
                found,
            });
        }
        let outcome = self.check_body(slot, expected, imm, h, bytes);
        Ok((slot, expected, abandoned, outcome))
    }

    /// A compact response: the status from the immediate, the output the whole WRITE.
    fn check_compact<'a>(
        &self,
        slot: u16,
        id: u64,
        imm: u32,
        byte_len: usize,
        bytes: &'a [u8],
    ) -> Result<Completed<'a>, ResponseError> {
        let status = self.status_of(slot, id, imm)?;
        let max = self
            .geometry
            .max_output()
            .min(bytes.len().saturating_sub(HEADER_LEN));
        if byte_len > max {
            let len = byte_len.min(u32::MAX as usize) as u32;
            return Err(ResponseError::OutputOutOfBounds { slot, id, len, max });
        }
        Ok(Completed {
            slot,
            id,
            status,
            error_code: 0,
            output: &bytes[HEADER_LEN..HEADER_LEN + byte_len],
        })
    }

    /// The status byte of a response immediate tied to invocation `id` in `slot`.
    fn status_of(&self, slot: u16, id: u64, imm: u32) -> Result<Status, ResponseError> {
        match ResponseImm::decode(imm) {
            Ok(r) => Ok(r.status()),
            Err(ImmError::UnknownStatus { source, .. }) => Err(ResponseError::UnknownStatus {
                slot,
                id,
                code: source.code,
            }),
            Err(ImmError::WrongDirection { .. }) => Err(ResponseError::WrongDirection { imm }),
        }
    }

    fn check_body<'a>(
        &self,
        slot: u16,
        id: u64,
        imm: u32,
        h: &[u8; HEADER_LEN],
        bytes: &'a [u8],
    ) -> Result<Completed<'a>, ResponseError> {
        let status = self.status_of(slot, id, imm)?;
        let header = ResponseHeader::decode(h).map_err(|source| ResponseError::BadHeader {
            slot,
            id,
            source,
        })?;
        if header.status != status {
            return Err(ResponseError::StatusMismatch {
                slot,
                id,
                imm: status,
                header: header.status,
            });
        }
        if header.error_code != 0 && status != Status::FunctionError {
            return Err(ResponseError::UnexpectedErrorCode {
                slot,
                id,
                status,
                code: header.error_code,
            });
        }
        let max = self
            .geometry
            .max_output()
            .min(bytes.len().saturating_sub(HEADER_LEN));
        let len = header.output_len;
        if len as usize > max {
            return Err(ResponseError::OutputOutOfBounds { slot, id, len, max });
        }
        Ok(Completed {
            slot,
            id,
            status,
            error_code: header.error_code,
            output: &bytes[HEADER_LEN..HEADER_LEN + len as usize],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: u64, status: Status, code: i32, output: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 256];
        let h = ResponseHeader {
            id,
            status,
            output_len: output.len() as u32,
            error_code: code,
        };
        b[..64].copy_from_slice(&h.encode());
        b[64..64 + output.len()].copy_from_slice(output);
        b
    }

    #[test]
    fn prepare_then_complete() {
        let g = SlotGeometry::new(2, 256).unwrap();
        let mut c = ClientConnection::new(g, 3);
        c.set_compact(false);
        let p = c.prepare(2, 10).unwrap();
        assert_eq!((p.slot, p.id, p.remote_offset, p.write_len), (0, 1, 0, 74));
        assert_eq!(RequestImm::decode(p.imm).unwrap(), RequestImm::new(0, 1));
        let h = RequestHeader::decode(&p.header.unwrap()).unwrap();
        assert_eq!((h.id, h.function, h.payload_len, h.flags), (1, 2, 10, 0));
        let q = c.prepare(0, 0).unwrap();
        assert_eq!((q.slot, q.id, q.remote_offset), (1, 2, 256));
        assert_eq!(
            c.prepare(0, 0),
            Err(PrepareError::AllSlotsInFlight { slots: 2 })
        );
        assert_eq!(c.next_id(), Some(3), "a refused prepare uses no id");

        let bytes = response(2, Status::Ok, 0, b"out");
        let imm = ResponseImm::new(1, 2, Status::Ok).encode();
        let done = c.on_response(imm, 64 + 3, &bytes).unwrap();
        assert_eq!(
            (done.slot, done.id, done.status, done.output),
            (1, 2, Status::Ok, &b"out"[..])
        );
        assert_eq!(
            c.on_response(imm, 64 + 3, &bytes),
            Err(ResponseError::NotInFlight { slot: 1 })
        );
        assert_eq!(c.in_flight(), 1);
    }

    #[test]
    fn compact_requests_and_responses() {
        let g = SlotGeometry::new(2, 256).unwrap();
        let mut c = ClientConnection::new(g, 3);
        let p = c.prepare(2, 10).unwrap();
        assert_eq!(p.header, None);
        assert_eq!(
            (p.slot, p.id, p.local_offset, p.remote_offset, p.write_len),
            (0, 1, 64, 64, 10)
        );
        assert_eq!(
            RequestImm::decode(p.imm).unwrap(),
            RequestImm::compact(0, 2, 1)
        );
        // The output is the whole WRITE, at offset 64; the header bytes are never read.
        let mut bytes = vec![0xeeu8; 256];
        bytes[64..67].copy_from_slice(b"out");
        let imm = ResponseImm::compact(0, 1, Status::Ok).encode();
        let done = c.on_response(imm, 3, &bytes).unwrap();
        assert_eq!(
            (
                done.slot,
                done.id,
                done.status,
                done.error_code,
                done.output
            ),
            (0, 1, Status::Ok, 0, &b"out"[..])
        );
        // An output longer than the slot holds fails the invocation it belongs to.
        let p = c.prepare(0, 0).unwrap();
        let imm = ResponseImm::compact(p.slot as u8, p.id, Status::Ok).encode();
        assert!(matches!(
            c.on_response(imm, 200, &bytes),
            Err(ResponseError::OutputOutOfBounds {
                len: 200,
                max: 192,
                ..
            })
        ));
        // A compact tag is 14 bits: id 1 + 2^6 does not pass for id 1.
        let p = c.prepare(0, 0).unwrap();
        let wrong = ResponseImm::compact(p.slot as u8, p.id + 64, Status::Ok).encode();
        assert!(matches!(
            c.on_response(wrong, 0, &bytes),
            Err(ResponseError::TagMismatch { .. })
        ));
        // A function index past 255 takes the full form.
        let mut wide = ClientConnection::new(g, 300);
        let p = wide.prepare(299, 1).unwrap();
        assert!(p.header.is_some() && RequestImm::decode(p.imm).unwrap().function().is_none());
    }

    #[test]
    fn hold_and_release() {
        let g = SlotGeometry::new(1, 128).unwrap();
        let mut c = ClientConnection::new(g, 1);
        c.set_compact(false);
        let p = c.prepare(0, 0).unwrap();
        let bytes = response(p.id, Status::Ok, 0, b"x");
        let imm = ResponseImm::new(0, p.id, Status::Ok).encode();
        c.on_response_hold(imm, 65, &bytes).unwrap();
        assert_eq!(c.available(), 0);
        assert!(matches!(
            c.prepare(0, 0),
            Err(PrepareError::AllSlotsInFlight { .. })
        ));
        assert!(c.release(0, p.id + 1).is_err());
        c.release(0, p.id).unwrap();
        assert!(c.release(0, p.id).is_err());
        assert_eq!(c.prepare(0, 0).unwrap().id, 2);
    }
}
