//! The executor side of one client connection on a worker.

use thiserror::Error;

use super::geometry::SlotGeometry;
use super::header::{get_u64, header_of, HeaderError, RequestHeader, ResponseHeader, HEADER_LEN};
use super::imm::{written_extent, RequestImm, ResponseImm, COMPACT_MAX_INDEX, REQUEST_TAG_MASK};
use super::status::Status;

/// What the executor knows about one request slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ExecSlot {
    /// The highest id accepted in this slot (0: none yet).
    last_id: u64,
    /// The request `last_id` still owes a response.
    pending: bool,
    /// That request came in the compact form (and is answered in it where possible).
    compact: bool,
}

/// The executor's state machine for one client connection on one worker: request
/// validation and response encoding.
///
/// It does no I/O. For each receive completion carrying a request immediate, the caller
/// hands the immediate, the byte count and the request slot's bytes to
/// [`ExecutorConnection::on_request`], runs the function on [`Request::payload`] (in place)
/// with its output written at offset 64 of a local staging slot, then calls
/// [`ExecutorConnection::encode_response`], copies [`EncodedResponse::header`] (if any) to
/// the start of the staging slot, and posts one WRITE_WITH_IMM of
/// [`EncodedResponse::write_len`] bytes from [`EncodedResponse::local_offset`] of the
/// staging slot to `response_region.addr + EncodedResponse::remote_offset` with immediate
/// [`EncodedResponse::imm`].
///
/// Every accepted request, and every [`Rejection`] that is
/// [`answerable`](Rejection::answerable), owes exactly one response; requests may be
/// answered in any order. Nothing allocates after [`ExecutorConnection::new`].
#[derive(Clone, Debug)]
pub struct ExecutorConnection {
    geometry: SlotGeometry,
    function_count: u32,
    slots: Box<[ExecSlot]>,
    pending: u32,
    /// The highest id accepted on the connection (0: none yet); compact ids follow it.
    last_id: u64,
}

/// A validated request, its payload in place in the request slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Request slot (and paired response slot) index.
    pub slot: u16,
    /// Invocation id.
    pub id: u64,
    /// Index into the connection's function table (checked to be in range).
    pub function: u32,
    /// Request flags (none defined in this version, so zero).
    pub flags: u32,
    /// The payload: bytes `64..64 + payload_len` of the slot.
    pub payload: &'a [u8],
}

/// Why a request was refused, in detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum RequestError {
    /// The immediate is a response immediate (bit 31 set).
    #[error("immediate {imm:#010x} is not a request immediate")]
    WrongDirection { imm: u32 },
    /// The slot index is beyond the connection's slots.
    #[error("request for slot {slot}, but the connection has {slots} slots")]
    BadSlot { slot: u16, slots: u32 },
    /// Fewer bytes than a header were handed in.
    #[error("request slot {slot}: {len} B is shorter than the 64-byte header")]
    Truncated { slot: u16, len: usize },
    /// Invocation id 0, which no client uses.
    #[error("request slot {slot}: invocation id 0")]
    ZeroId { slot: u16 },
    /// The header's id does not agree with the immediate's tag: the slot was overwritten
    /// after the WRITE that produced this completion (a client broke the credit rules).
    #[error("request slot {slot}: header id {id} does not match the immediate's tag {tag:#06x}")]
    TagMismatch { slot: u16, id: u64, tag: u16 },
    /// A request arrived in a slot whose previous request has not been answered.
    #[error("request {id} in slot {slot} while request {pending} there is still unanswered")]
    SlotBusy { slot: u16, id: u64, pending: u64 },
    /// The id is not above the last id seen in this slot: a replay or a stale write.
    #[error("request slot {slot}: id {id} is not above the last id {last} seen there")]
    StaleId { slot: u16, id: u64, last: u64 },
    /// Reserved bytes not zero, or unknown flags.
    #[error("request {id} in slot {slot}: {source}")]
    BadHeader {
        slot: u16,
        id: u64,
        #[source]
        source: HeaderError,
    },
    /// The payload length reaches beyond the slot (or beyond the bytes received).
    #[error("request {id} in slot {slot}: payload of {len} B exceeds the {max} B available")]
    PayloadTooLarge {
        slot: u16,
        id: u64,
        len: u32,
        max: usize,
    },
    /// The function index is not in the connection's function table.
    #[error("request {id} in slot {slot}: function index {index} is not in the table of {count}")]
    UnknownFunction {
        slot: u16,
        id: u64,
        index: u32,
        count: u32,
    },
}

impl RequestError {
    /// The status that answers this error.
    pub fn status(&self) -> Status {
        match self {
            RequestError::UnknownFunction { .. } => Status::UnknownFunction,
            _ => Status::MalformedRequest,
        }
    }
}

/// A refused request: what went wrong, and whom to tell.
///
/// If [`Rejection::answerable`], the slot and the id are trustworthy and the slot now owes
/// a response: answer it with [`ExecutorConnection::encode_rejection`] (the client then
/// gets [`Rejection::status`] instead of a timeout). Otherwise nobody can be told safely
/// (no valid slot, or a response could overwrite another invocation's) and the request is
/// dropped; a client that really sent it times out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("request rejected ({status}): {error}", status = self.status())]
pub struct Rejection {
    slot: Option<u16>,
    id: Option<u64>,
    error: RequestError,
    answerable: bool,
}

impl Rejection {
    /// The request slot, when the index was valid.
    pub fn slot(&self) -> Option<u16> {
        self.slot
    }

    /// The invocation id, when a header could be read.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// The status to answer with.
    pub fn status(&self) -> Status {
        self.error.status()
    }

    /// What went wrong.
    pub fn error(&self) -> &RequestError {
        &self.error
    }

    /// Whether the client can be told (see the type's documentation).
    pub fn answerable(&self) -> bool {
        self.answerable
    }
}

/// A response ready to be written: everything the caller needs to post its WRITE_WITH_IMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodedResponse {
    /// Response slot index (the request's slot).
    pub slot: u16,
    /// The invocation id it answers.
    pub id: u64,
    /// The status it reports.
    pub status: Status,
    /// The 64 header bytes to put at the start of the staging slot (the output follows
    /// them at offset 64), or `None` in the compact form, which sends no header.
    pub header: Option<[u8; HEADER_LEN]>,
    /// The 32-bit immediate of the WRITE_WITH_IMM.
    pub imm: u32,
    /// Where the WRITE starts in the staging slot: 0 (header and output) or 64 (the
    /// output alone, compact form).
    pub local_offset: usize,
    /// Byte offset of the WRITE's destination in the client's response region.
    pub remote_offset: u64,
    /// Bytes to write: the header plus the output, or the output alone.
    pub write_len: usize,
}

/// Why [`ExecutorConnection::encode_response`] refused. The slot's state is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum EncodeResponseError {
    /// The slot index is beyond the connection's slots.
    #[error("slot {slot} is out of range (the connection has {slots} slots)")]
    BadSlot { slot: u16, slots: u32 },
    /// No request with this id awaits a response in this slot.
    #[error("slot {slot} has no unanswered request {id}")]
    NotPending { slot: u16, id: u64 },
    /// An error code with a status other than [`Status::FunctionError`].
    #[error("error code {code} with status {status}")]
    UnexpectedErrorCode { status: Status, code: i32 },
    /// The output does not fit in the response slot: answer with
    /// [`Status::OutputTooLarge`] instead.
    #[error("output of {len} B for request {id} in slot {slot} exceeds the {max} B a response slot holds")]
    OutputTooLarge {
        slot: u16,
        id: u64,
        len: usize,
        max: usize,
    },
}

impl ExecutorConnection {
    /// A connection with no request seen yet; function indices `0..function_count` are
    /// valid on it.
    pub fn new(geometry: SlotGeometry, function_count: u32) -> ExecutorConnection {
        ExecutorConnection {
            geometry,
            function_count,
            slots: vec![ExecSlot::default(); geometry.slots() as usize].into_boxed_slice(),
            pending: 0,
            last_id: 0,
        }
    }

    /// The slot geometry.
    pub fn geometry(&self) -> SlotGeometry {
        self.geometry
    }

    /// Number of functions in the connection's table.
    pub fn function_count(&self) -> u32 {
        self.function_count
    }

    /// Requests (and answerable rejections) that still owe a response.
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// The unanswered request in `slot`, if any.
    pub fn pending_in(&self, slot: u16) -> Option<u64> {
        self.slots
            .get(slot as usize)
            .filter(|s| s.pending)
            .map(|s| s.last_id)
    }

    /// Validates a request: `imm` and `byte_len` are the immediate and byte count of the
    /// receive completion, `slot_bytes` the request slot it names (the whole slot, or at
    /// least up to the end of [`written_extent`]).
    ///
    /// Checks, in order: direction bit and slot index (from the immediate alone); then in
    /// the full form: header present, id non-zero and agreeing with the immediate's tag,
    /// slot not busy, id above the last one seen in the slot; from here on the request owes
    /// a response; then flags and reserved bytes, payload length against the slot and the
    /// bytes received, function index against the table. In the compact form (no header)
    /// the id is the first one above every id seen on the connection that agrees with the
    /// tag, and the payload is the whole WRITE: slot not busy; then payload length and
    /// function index. A compact request reads no byte of the slot.
    ///
    /// # Errors
    /// [`Rejection`]; answer it with [`ExecutorConnection::encode_rejection`].
    pub fn on_request<'a>(
        &mut self,
        imm: u32,
        byte_len: usize,
        slot_bytes: &'a [u8],
    ) -> Result<Request<'a>, Rejection> {
        let dropped = |slot, id, error| Rejection {
            slot,
            id,
            error,
            answerable: false,
        };
        let Ok(rimm) = RequestImm::decode(imm) else {
            return Err(dropped(None, None, RequestError::WrongDirection { imm }));
        };
        let slot = rimm.slot();
        let Some(state) = self.slots.get_mut(slot as usize) else {
            let slots = self.geometry.slots();
            return Err(dropped(None, None, RequestError::BadSlot { slot, slots }));
        };
        let received = written_extent(imm, byte_len).end.min(slot_bytes.len());
        let slot_bytes = &slot_bytes[..received];
        if let Some(function) = rimm.function() {
            // Compact: the id follows from the tag and the ids seen (requests of one
            // connection arrive in the order they were sent, with rising ids).
            let last = self.last_id;
            let Some(id) = next_id_with_tag(last, rimm.tag()) else {
                let id = last;
                return Err(dropped(
                    Some(slot),
                    None,
                    RequestError::StaleId { slot, id, last },
                ));
            };
            if state.pending {
                let pending = state.last_id;
                return Err(dropped(
                    Some(slot),
                    Some(id),
                    RequestError::SlotBusy { slot, id, pending },
                ));
            }
            state.last_id = id;
            state.pending = true;
            state.compact = true;
            self.pending += 1;
            self.last_id = id;
            let answer = |error| Rejection {
                slot: Some(slot),
                id: Some(id),
                error,
                answerable: true,
            };
            let max = self.geometry.max_payload();
            let len = byte_len.min(u32::MAX as usize) as u32;
            if byte_len > max || HEADER_LEN + byte_len > received {
                let max = max.min(received.saturating_sub(HEADER_LEN));
                return Err(answer(RequestError::PayloadTooLarge { slot, id, len, max }));
            }
            let function = function as u32;
            if function >= self.function_count {
                return Err(answer(RequestError::UnknownFunction {
                    slot,
                    id,
                    index: function,
                    count: self.function_count,
                }));
            }
            return Ok(Request {
                slot,
                id,
                function,
                flags: 0,
                payload: &slot_bytes[HEADER_LEN..HEADER_LEN + byte_len],
            });
        }
        let Some(h) = header_of(slot_bytes) else {
            let len = slot_bytes.len();
            return Err(dropped(
                Some(slot),
                None,
                RequestError::Truncated { slot, len },
            ));
        };
        let id = get_u64(h, 0);
        if id == 0 {
            return Err(dropped(Some(slot), Some(id), RequestError::ZeroId { slot }));
        }
        if !rimm.matches(id) {
            let tag = rimm.tag();
            return Err(dropped(
                Some(slot),
                Some(id),
                RequestError::TagMismatch { slot, id, tag },
            ));
        }
        if state.pending {
            let pending = state.last_id;
            return Err(dropped(
                Some(slot),
                Some(id),
                RequestError::SlotBusy { slot, id, pending },
            ));
        }
        if id <= state.last_id {
            let last = state.last_id;
            return Err(dropped(
                Some(slot),
                Some(id),
                RequestError::StaleId { slot, id, last },
            ));
        }
        // The request is addressable: from here on it owes a response.
        state.last_id = id;
        state.pending = true;
        state.compact = false;
        self.pending += 1;
        self.last_id = self.last_id.max(id);
        let answer = |error| Rejection {
            slot: Some(slot),
            id: Some(id),
            error,
            answerable: true,
        };
        let header = RequestHeader::decode(h)
            .map_err(|source| answer(RequestError::BadHeader { slot, id, source }))?;
        let max = self
            .geometry
            .max_payload()
            .min(slot_bytes.len() - HEADER_LEN);
        let len = header.payload_len;
        if len as usize > max {
            return Err(answer(RequestError::PayloadTooLarge { slot, id, len, max }));
        }
        if header.function >= self.function_count {
            return Err(answer(RequestError::UnknownFunction {
                slot,
                id,
                index: header.function,
                count: self.function_count,
            }));
        }
        Ok(Request {
            slot,
            id,
            function: header.function,
            flags: header.flags,
            payload: &slot_bytes[HEADER_LEN..HEADER_LEN + len as usize],
        })
    }

    /// Encodes the response to request `id` in `slot`: `status`, the function's
    /// `error_code` (only with [`Status::FunctionError`], otherwise 0) and `output_len`
    /// bytes of output. The slot's request is answered from then on. A compact request is
    /// answered in the compact form unless there is an error code to carry.
    ///
    /// # Errors
    /// [`EncodeResponseError`]; the slot still owes its response then (for
    /// [`EncodeResponseError::OutputTooLarge`], answer with [`Status::OutputTooLarge`]).
    pub fn encode_response(
        &mut self,
        slot: u16,
        id: u64,
        status: Status,
        error_code: i32,
        output_len: usize,
    ) -> Result<EncodedResponse, EncodeResponseError> {
        let slots = self.geometry.slots();
        let state = self
            .slots
            .get_mut(slot as usize)
            .ok_or(EncodeResponseError::BadSlot { slot, slots })?;
        if !state.pending || state.last_id != id {
            return Err(EncodeResponseError::NotPending { slot, id });
        }
        if error_code != 0 && status != Status::FunctionError {
            return Err(EncodeResponseError::UnexpectedErrorCode {
                status,
                code: error_code,
            });
        }
        let max = self.geometry.max_output();
        if output_len > max {
            return Err(EncodeResponseError::OutputTooLarge {
                slot,
                id,
                len: output_len,
                max,
            });
        }
        state.pending = false;
        self.pending -= 1;
        let remote_offset = self.geometry.slot_offset(slot);
        // A compact request gets a compact answer when the immediate can say it all.
        if state.compact && slot as u32 <= COMPACT_MAX_INDEX && error_code == 0 {
            return Ok(EncodedResponse {
                slot,
                id,
                status,
                header: None,
                imm: ResponseImm::compact(slot as u8, id, status).encode(),
                local_offset: HEADER_LEN,
                remote_offset: remote_offset + HEADER_LEN as u64,
                write_len: output_len,
            });
        }
        let header = ResponseHeader {
            id,
            status,
            // output_len <= max_output < 2^30.
            output_len: output_len as u32,
            error_code,
        };
        Ok(EncodedResponse {
            slot,
            id,
            status,
            header: Some(header.encode()),
            imm: ResponseImm::new(slot, id, status).encode(),
            local_offset: 0,
            remote_offset,
            write_len: HEADER_LEN + output_len,
        })
    }

    /// Encodes the error response to an answerable rejection (no output), or `None` when
    /// the rejection cannot be answered.
    pub fn encode_rejection(&mut self, rejection: &Rejection) -> Option<EncodedResponse> {
        if !rejection.answerable {
            return None;
        }
        let (slot, id) = (rejection.slot?, rejection.id?);
        self.encode_response(slot, id, rejection.status(), 0, 0)
            .ok()
    }
}

/// The smallest id above `last` whose low 14 bits are `tag`, if there is one below 2^64.
fn next_id_with_tag(last: u64, tag: u16) -> Option<u64> {
    let candidate = (last & !REQUEST_TAG_MASK) | tag as u64;
    if candidate > last {
        Some(candidate)
    } else {
        candidate.checked_add(REQUEST_TAG_MASK + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u64, function: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 256];
        let h = RequestHeader {
            id,
            function,
            payload_len: payload.len() as u32,
            flags: 0,
        };
        b[..64].copy_from_slice(&h.encode());
        b[64..64 + payload.len()].copy_from_slice(payload);
        b
    }

    #[test]
    fn accept_answer_and_reject_replay() {
        let g = SlotGeometry::new(4, 256).unwrap();
        let mut e = ExecutorConnection::new(g, 2);
        let bytes = request(5, 1, b"abc");
        let imm = RequestImm::new(2, 5).encode();
        let r = e.on_request(imm, 64 + 3, &bytes).unwrap();
        assert_eq!(
            (r.slot, r.id, r.function, r.payload),
            (2, 5, 1, &b"abc"[..])
        );
        assert_eq!(e.pending_in(2), Some(5));
        // The same request again while unanswered: busy, not answerable.
        let rej = e.on_request(imm, 64 + 3, &bytes).unwrap_err();
        assert!(matches!(
            rej.error(),
            RequestError::SlotBusy { pending: 5, .. }
        ));
        assert!(!rej.answerable() && e.encode_rejection(&rej).is_none());
        let out = e.encode_response(2, 5, Status::Ok, 0, 7).unwrap();
        assert_eq!((out.remote_offset, out.write_len), (512, 71));
        assert_eq!(e.pending(), 0);
        // Replayed after the answer: stale.
        let rej = e.on_request(imm, 64 + 3, &bytes).unwrap_err();
        assert!(matches!(rej.error(), RequestError::StaleId { last: 5, .. }));
        assert!(e.encode_response(2, 5, Status::Ok, 0, 0).is_err());
    }

    #[test]
    fn answerable_rejection_owes_a_response() {
        let g = SlotGeometry::new(1, 128).unwrap();
        let mut e = ExecutorConnection::new(g, 1);
        let rej = e
            .on_request(RequestImm::new(0, 1).encode(), 64, &request(1, 9, b""))
            .unwrap_err();
        assert!(rej.answerable());
        assert_eq!(rej.status(), Status::UnknownFunction);
        assert_eq!(e.pending(), 1);
        let out = e.encode_rejection(&rej).unwrap();
        assert_eq!(out.status, Status::UnknownFunction);
        assert_eq!(e.pending(), 0);
        assert!(e.encode_rejection(&rej).is_none(), "answered once only");
    }

    #[test]
    fn compact_requests_take_their_id_from_the_tag_and_read_no_header() {
        let g = SlotGeometry::new(4, 256).unwrap();
        let mut e = ExecutorConnection::new(g, 2);
        // Garbage where a header would be: a compact request never reads it.
        let mut slot = vec![0xeeu8; 256];
        slot[64..67].copy_from_slice(b"abc");
        let r = e
            .on_request(RequestImm::compact(1, 1, 1).encode(), 3, &slot)
            .unwrap();
        assert_eq!(
            (r.slot, r.id, r.function, r.flags, r.payload),
            (1, 1, 1, 0, &b"abc"[..])
        );
        let out = e.encode_response(1, 1, Status::Ok, 0, 5).unwrap();
        assert_eq!(out.header, None);
        assert_eq!(
            (out.local_offset, out.remote_offset, out.write_len),
            (64, 256 + 64, 5)
        );
        assert_eq!(out.imm, ResponseImm::compact(1, 1, Status::Ok).encode());
        // Ids follow the highest seen (1), across the 14-bit tag's wrap: tag 1 is 2^14 + 1.
        let id = 0x4000 + 1;
        let r = e
            .on_request(RequestImm::compact(2, 0, id).encode(), 0, &slot)
            .unwrap();
        assert_eq!((r.id, r.payload), (id, &b""[..]));
        // A function error code takes the full form, with its header.
        let out = e
            .encode_response(2, id, Status::FunctionError, -7, 0)
            .unwrap();
        assert!(out.header.is_some() && out.local_offset == 0);
        // Busy slot, payload past the slot, unknown function.
        let r = e.on_request(RequestImm::compact(3, 0, id + 1).encode(), 0, &slot);
        assert!(r.is_ok());
        let busy = e
            .on_request(RequestImm::compact(3, 0, id + 2).encode(), 0, &slot)
            .unwrap_err();
        assert!(matches!(busy.error(), RequestError::SlotBusy { .. }) && !busy.answerable());
        let big = e
            .on_request(RequestImm::compact(0, 0, id + 3).encode(), 193, &slot)
            .unwrap_err();
        assert!(matches!(big.error(), RequestError::PayloadTooLarge { .. }) && big.answerable());
        assert_eq!(e.encode_rejection(&big).unwrap().write_len, 0);
        let unknown = e
            .on_request(RequestImm::compact(0, 9, id + 4).encode(), 0, &slot)
            .unwrap_err();
        assert_eq!(unknown.status(), Status::UnknownFunction);
    }

    #[test]
    fn the_next_id_with_a_tag() {
        assert_eq!(next_id_with_tag(0, 1), Some(1));
        assert_eq!(next_id_with_tag(5, 5), Some(0x4005));
        assert_eq!(next_id_with_tag(0x3fff, 0), Some(0x4000));
        assert_eq!(next_id_with_tag(u64::MAX - 1, 0x3fff), Some(u64::MAX));
        assert_eq!(next_id_with_tag(u64::MAX, 0x3fff), None);
    }
}
