//! The executor side of one client connection on a worker.

use thiserror::Error;

use super::geometry::SlotGeometry;
use super::header::{get_u64, header_of, HeaderError, RequestHeader, ResponseHeader, HEADER_LEN};
use super::imm::{RequestImm, ResponseImm};
use super::status::Status;

/// What the executor knows about one request slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ExecSlot {
    /// The highest id accepted in this slot (0: none yet).
    last_id: u64,
    /// The request `last_id` still owes a response.
    pending: bool,
}

/// The executor's state machine for one client connection on one worker: request
/// validation and response encoding.
///
/// It does no I/O. For each receive completion carrying a request immediate, the caller
/// hands the immediate and the request slot's bytes to [`ExecutorConnection::on_request`],
/// runs the function on [`Request::payload`] (in place) with its output written at offset
/// 64 of a local staging slot, then calls [`ExecutorConnection::encode_response`], copies
/// [`EncodedResponse::header`] to the start of the staging slot, and posts one
/// WRITE_WITH_IMM of [`EncodedResponse::write_len`] bytes to
/// `response_region.addr + EncodedResponse::remote_offset` with immediate
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
    /// The 64 header bytes; the output follows them at offset 64.
    pub header: [u8; HEADER_LEN],
    /// The 32-bit immediate of the WRITE_WITH_IMM.
    pub imm: u32,
    /// Byte offset of the response slot in the client's response region.
    pub remote_offset: u64,
    /// Bytes to write: the header plus the output.
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

    /// Validates a request: `imm` is the immediate of the receive completion, `slot_bytes`
    /// the request slot it names (the whole slot, or its first `byte_len` bytes when the
    /// fabric reports how many were written).
    ///
    /// Checks, in order: direction bit and slot index (from the immediate alone), header
    /// present, id non-zero and agreeing with the immediate's tag, slot not busy, id above
    /// the last one seen in the slot; from here on the request owes a response; then flags
    /// and reserved bytes, payload length against the slot and the bytes received, function
    /// index against the table.
    ///
    /// # Errors
    /// [`Rejection`]; answer it with [`ExecutorConnection::encode_rejection`].
    pub fn on_request<'a>(
        &mut self,
        imm: u32,
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
        self.pending += 1;
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
    /// bytes of output. The slot's request is answered from then on.
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
            header: header.encode(),
            imm: ResponseImm::new(slot, id, status).encode(),
            remote_offset: self.geometry.slot_offset(slot),
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
        let r = e.on_request(imm, &bytes).unwrap();
        assert_eq!(
            (r.slot, r.id, r.function, r.payload),
            (2, 5, 1, &b"abc"[..])
        );
        assert_eq!(e.pending_in(2), Some(5));
        // The same request again while unanswered: busy, not answerable.
        let rej = e.on_request(imm, &bytes).unwrap_err();
        assert!(matches!(
            rej.error(),
            RequestError::SlotBusy { pending: 5, .. }
        ));
        assert!(!rej.answerable() && e.encode_rejection(&rej).is_none());
        let out = e.encode_response(2, 5, Status::Ok, 0, 7).unwrap();
        assert_eq!((out.remote_offset, out.write_len), (512, 71));
        assert_eq!(e.pending(), 0);
        // Replayed after the answer: stale.
        let rej = e.on_request(imm, &bytes).unwrap_err();
        assert!(matches!(rej.error(), RequestError::StaleId { last: 5, .. }));
        assert!(e.encode_response(2, 5, Status::Ok, 0, 0).is_err());
    }

    #[test]
    fn answerable_rejection_owes_a_response() {
        let g = SlotGeometry::new(1, 128).unwrap();
        let mut e = ExecutorConnection::new(g, 1);
        let rej = e
            .on_request(RequestImm::new(0, 1).encode(), &request(1, 9, b""))
            .unwrap_err();
        assert!(rej.answerable());
        assert_eq!(rej.status(), Status::UnknownFunction);
        assert_eq!(e.pending(), 1);
        let out = e.encode_rejection(&rej).unwrap();
        assert_eq!(out.status, Status::UnknownFunction);
        assert_eq!(e.pending(), 0);
        assert!(e.encode_rejection(&rej).is_none(), "answered once only");
    }
}
