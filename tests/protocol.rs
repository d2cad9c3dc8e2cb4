//! The sans-IO invocation protocol, driven step by step: encodings, every rejection path,
//! id boundaries, random input, and a client and an executor talking through two plain
//! byte buffers that stand for the request and response regions.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU64;

use proptest::prelude::*;
use rafi::fabric::{Endpoint, FabricKind};
use rafi::protocol::*;
use rdma_mock::Fabric;

// ---------------------------------------------------------------------------------------
// Allocation counting (per thread), for the hot-path test.
// ---------------------------------------------------------------------------------------

#[global_allocator]
static GLOBAL: rdma_mock::alloc_counter::CountingAllocator =
    rdma_mock::alloc_counter::CountingAllocator;

use rdma_mock::alloc_counter::allocations;

// ---------------------------------------------------------------------------------------
// Helpers: two regions and two completion queues made of plain memory.
// ---------------------------------------------------------------------------------------

/// One worker connection without a fabric: the executor's request region, the client's
/// response region, and the receive completions (immediate, byte length) of each side.
struct Wire {
    geometry: SlotGeometry,
    requests: Vec<u8>,
    responses: Vec<u8>,
    to_executor: VecDeque<(u32, usize)>,
    to_client: VecDeque<(u32, usize)>,
}

impl Wire {
    fn new(geometry: SlotGeometry) -> Wire {
        let len = geometry.region_len() as usize;
        Wire {
            geometry,
            requests: vec![0; len],
            responses: vec![0; len],
            to_executor: VecDeque::new(),
            to_client: VecDeque::new(),
        }
    }

    /// The client's WRITE_WITH_IMM: the header (full form) and the payload land in the
    /// request slot, then the completion reaches the executor.
    fn post_request(&mut self, p: &Prepared, payload: &[u8]) {
        let at = p.remote_offset as usize - p.local_offset;
        match &p.header {
            Some(header) => {
                assert_eq!(
                    (p.local_offset, p.write_len),
                    (0, HEADER_LEN + payload.len())
                );
                self.requests[at..at + HEADER_LEN].copy_from_slice(header);
            }
            None => assert_eq!((p.local_offset, p.write_len), (HEADER_LEN, payload.len())),
        }
        self.requests[at + HEADER_LEN..at + HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.to_executor.push_back((p.imm, p.write_len));
    }

    /// The executor's WRITE_WITH_IMM into the paired response slot.
    fn post_response(&mut self, r: &EncodedResponse, output: &[u8]) {
        let at = r.remote_offset as usize - r.local_offset;
        match &r.header {
            Some(header) => {
                assert_eq!(
                    (r.local_offset, r.write_len),
                    (0, HEADER_LEN + output.len())
                );
                self.responses[at..at + HEADER_LEN].copy_from_slice(header);
            }
            None => assert_eq!((r.local_offset, r.write_len), (HEADER_LEN, output.len())),
        }
        self.responses[at + HEADER_LEN..at + HEADER_LEN + output.len()].copy_from_slice(output);
        self.to_client.push_back((r.imm, r.write_len));
    }

    fn slot_range(&self, slot: u16) -> std::ops::Range<usize> {
        let at = self.geometry.slot_offset(slot) as usize;
        at..at + self.geometry.slot_size() as usize
    }

    /// The request slot a request immediate names (clamped so that a bad index reads the
    /// last slot: the state machine must refuse it from the immediate alone).
    fn request_slot(&self, imm: u32) -> &[u8] {
        let slot = RequestImm::decode(imm).map_or(u16::MAX, |r| r.slot());
        let slot = slot.min(self.geometry.slots() as u16 - 1);
        &self.requests[self.slot_range(slot)]
    }

    fn response_slot(&self, imm: u32) -> &[u8] {
        let slot = ResponseImm::peek(imm).map_or(u16::MAX, |r| r.slot);
        let slot = slot.min(self.geometry.slots() as u16 - 1);
        &self.responses[self.slot_range(slot)]
    }
}

/// The state machines called with the whole of `bytes` as what the WRITE covered: the full
/// form's reading (a compact immediate then takes all of `bytes` past the header as its
/// payload). Round trips through [`Wire`] pass the real byte counts instead.
trait WholeSlot {
    fn on_request_all<'a>(&mut self, imm: u32, bytes: &'a [u8]) -> Result<Request<'a>, Rejection>;
}

impl WholeSlot for ExecutorConnection {
    fn on_request_all<'a>(&mut self, imm: u32, bytes: &'a [u8]) -> Result<Request<'a>, Rejection> {
        self.on_request(imm, bytes.len(), bytes)
    }
}

trait WholeResponse {
    fn on_response_all<'a>(
        &mut self,
        imm: u32,
        bytes: &'a [u8],
    ) -> Result<Completed<'a>, ResponseError>;
    fn on_response_hold_all<'a>(
        &mut self,
        imm: u32,
        bytes: &'a [u8],
    ) -> Result<Completed<'a>, ResponseError>;
}

impl WholeResponse for ClientConnection {
    fn on_response_all<'a>(
        &mut self,
        imm: u32,
        bytes: &'a [u8],
    ) -> Result<Completed<'a>, ResponseError> {
        self.on_response(imm, bytes.len(), bytes)
    }

    fn on_response_hold_all<'a>(
        &mut self,
        imm: u32,
        bytes: &'a [u8],
    ) -> Result<Completed<'a>, ResponseError> {
        self.on_response_hold(imm, bytes.len(), bytes)
    }
}

fn geometry(slots: u32, slot_size: u32) -> SlotGeometry {
    SlotGeometry::new(slots, slot_size).unwrap()
}

/// A request slot of `len` bytes holding `header` and `payload`.
fn request_bytes(len: usize, header: RequestHeader, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[..HEADER_LEN].copy_from_slice(&header.encode());
    b[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    b
}

fn response_bytes(len: usize, header: ResponseHeader, output: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[..HEADER_LEN].copy_from_slice(&header.encode());
    b[HEADER_LEN..HEADER_LEN + output.len()].copy_from_slice(output);
    b
}

fn ok_header(id: u64, output_len: u32) -> ResponseHeader {
    ResponseHeader {
        id,
        status: Status::Ok,
        output_len,
        error_code: 0,
    }
}

/// xorshift64*: a deterministic generator for the sequence tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------------------

#[test]
fn request_and_response_round_trip_through_both_state_machines() {
    for compact in [true, false] {
        let g = geometry(4, 1024);
        let mut client = ClientConnection::new(g, 3);
        client.set_compact(compact);
        let mut exec = ExecutorConnection::new(g, 3);
        let mut wire = Wire::new(g);
        for (function, len) in [(0u32, 0usize), (1, 1), (2, 17), (0, g.max_payload())] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let p = client.prepare(function, len).unwrap();
            assert_eq!(p.header.is_none(), compact);
            wire.post_request(&p, &payload);
            let (imm, byte_len) = wire.to_executor.pop_front().unwrap();
            let at = wire.slot_range(p.slot).start;
            let written = written_extent(imm, byte_len);
            // Either the whole slot or only the bytes up to the end of the WRITE may be
            // handed in.
            for bytes in [wire.request_slot(imm), &wire.requests[at..at + written.end]] {
                let mut e = exec.clone();
                let req = e.on_request(imm, byte_len, bytes).unwrap();
                assert_eq!(
                    (req.slot, req.id, req.function, req.flags),
                    (p.slot, p.id, function, 0)
                );
                assert_eq!(req.payload, &payload[..]);
            }
            let req = exec
                .on_request(imm, byte_len, wire.request_slot(imm))
                .unwrap();
            let output: Vec<u8> = req.payload.iter().rev().copied().collect();
            let r = exec
                .encode_response(req.slot, req.id, Status::Ok, 0, output.len())
                .unwrap();
            assert_eq!(
                r.header.is_none(),
                compact,
                "answered in the request's form"
            );
            assert_eq!(
                (r.slot, r.id, r.remote_offset, r.local_offset),
                (p.slot, p.id, p.remote_offset, p.local_offset)
            );
            wire.post_response(&r, &output);
            let (imm, len) = wire.to_client.pop_front().unwrap();
            let done = client
                .on_response(imm, len, wire.response_slot(imm))
                .unwrap();
            assert_eq!(
                (done.slot, done.id, done.status),
                (p.slot, p.id, Status::Ok)
            );
            assert_eq!(done.error_code, 0);
            assert_eq!(done.output, &output[..]);
            assert_eq!((client.in_flight(), exec.pending()), (0, 0));
        }
    }
}

#[test]
fn every_status_reaches_the_client() {
    let g = geometry(1, 256);
    let mut client = ClientConnection::new(g, 1);
    let mut exec = ExecutorConnection::new(g, 1);
    let mut wire = Wire::new(g);
    for status in Status::ALL {
        let p = client.prepare(0, 3).unwrap();
        wire.post_request(&p, b"abc");
        let (imm, len) = wire.to_executor.pop_front().unwrap();
        let req = exec.on_request(imm, len, wire.request_slot(imm)).unwrap();
        let code = if status == Status::FunctionError {
            -5
        } else {
            0
        };
        let diag = if status.is_ok() { &b""[..] } else { b"why" };
        let r = exec
            .encode_response(req.slot, req.id, status, code, diag.len())
            .unwrap();
        wire.post_response(&r, diag);
        let (imm, len) = wire.to_client.pop_front().unwrap();
        assert_eq!(ResponseImm::decode(imm).unwrap().status(), status);
        // A function error code needs the header: only that status takes the full form.
        let compact = ResponseImm::peek(imm).unwrap().compact;
        assert_eq!(compact, status != Status::FunctionError);
        let done = client
            .on_response(imm, len, wire.response_slot(imm))
            .unwrap();
        assert_eq!(
            (done.status, done.error_code, done.output),
            (status, code, diag)
        );
    }
}

#[test]
fn headers_and_immediates_round_trip() {
    for id in [
        1,
        0x7fff,
        0x8000,
        0xffff,
        0x1_0000,
        0xffff_ffff,
        0x1_0000_0000,
        u64::MAX,
    ] {
        for slot in [0u16, 1, 0x7fff, 0x8000, 0xffff] {
            let r = RequestImm::new(slot, id);
            assert_eq!(RequestImm::decode(r.encode()), Ok(r));
            assert_eq!(r.encode() & RESPONSE_BIT, 0);
            for status in Status::ALL {
                let s = ResponseImm::new(slot, id, status);
                assert_eq!(ResponseImm::decode(s.encode()), Ok(s));
                assert_ne!(s.encode() & RESPONSE_BIT, 0);
            }
        }
        let h = RequestHeader {
            id,
            function: id as u32,
            payload_len: (id >> 7) as u32,
            flags: 0,
        };
        assert_eq!(RequestHeader::decode(&h.encode()), Ok(h));
        for status in Status::ALL {
            let h = ResponseHeader {
                id,
                status,
                output_len: id as u32,
                error_code: -(id as i32 & 0xff),
            };
            assert_eq!(ResponseHeader::decode(&h.encode()), Ok(h));
        }
    }
}

#[test]
fn status_codes_display_and_reject_unknown_codes() {
    for s in Status::ALL {
        assert_eq!(Status::try_from(s.code()), Ok(s));
        assert!(!s.to_string().is_empty());
        assert!(!s.name().is_empty());
    }
    assert_eq!(Status::Ok.to_string(), "ok");
    assert_eq!(
        Status::try_from(8u8).unwrap_err().to_string(),
        "unknown status code 8"
    );
}

// ---------------------------------------------------------------------------------------
// Prepare refusals.
// ---------------------------------------------------------------------------------------

#[test]
fn prepare_refuses_before_anything_is_sent() {
    let g = geometry(2, 128);
    let mut c = ClientConnection::new(g, 2);
    assert_eq!(
        c.prepare(0, 65),
        Err(PrepareError::PayloadTooLarge { len: 65, max: 64 })
    );
    assert_eq!(
        c.prepare(2, 0),
        Err(PrepareError::UnknownFunction { index: 2, count: 2 })
    );
    assert_eq!(
        (c.in_flight(), c.next_id()),
        (0, Some(1)),
        "nothing consumed"
    );
    let a = c.prepare(0, 64).unwrap();
    let b = c.prepare(1, 0).unwrap();
    assert_ne!(a.slot, b.slot);
    assert_eq!(
        c.prepare(0, 0),
        Err(PrepareError::AllSlotsInFlight { slots: 2 })
    );
    assert_eq!(c.next_id(), Some(3));
    assert_eq!(
        PrepareError::PayloadTooLarge { len: 65, max: 64 }.to_string(),
        "payload of 65 B exceeds the 64 B a request slot holds"
    );
}

#[test]
fn a_failed_post_gives_the_slot_back_but_not_the_id() {
    let g = geometry(1, 128);
    let mut c = ClientConnection::new(g, 1);
    let p = c.prepare(0, 0).unwrap();
    assert_eq!(
        c.cancel(p.slot, p.id + 1),
        Err(SlotError::WrongState {
            slot: 0,
            id: 2,
            expected: "in-flight"
        })
    );
    assert_eq!(
        c.cancel(1, p.id),
        Err(SlotError::BadSlot { slot: 1, slots: 1 })
    );
    c.cancel(p.slot, p.id).unwrap();
    assert_eq!(c.in_flight(), 0);
    assert_eq!(c.prepare(0, 0).unwrap().id, 2);
}

// ---------------------------------------------------------------------------------------
// Executor rejections.
// ---------------------------------------------------------------------------------------

fn header(id: u64, function: u32, payload_len: u32) -> RequestHeader {
    RequestHeader {
        id,
        function,
        payload_len,
        flags: 0,
    }
}

#[test]
fn executor_rejects_what_cannot_be_answered() {
    let g = geometry(4, 256);
    let mut e = ExecutorConnection::new(g, 2);
    let good = request_bytes(256, header(7, 0, 3), b"abc");
    let imm = RequestImm::new(1, 7).encode();
    let zero = request_bytes(256, header(0, 0, 0), b"");
    let cases: Vec<(u32, &[u8], RequestError)> = vec![
        (
            ResponseImm::new(1, 7, Status::Ok).encode(),
            &good,
            RequestError::WrongDirection {
                imm: ResponseImm::new(1, 7, Status::Ok).encode(),
            },
        ),
        (
            RequestImm::new(4, 7).encode(),
            &good,
            RequestError::BadSlot { slot: 4, slots: 4 },
        ),
        (
            RequestImm::new(0xffff, 7).encode(),
            &good,
            RequestError::BadSlot {
                slot: 0xffff,
                slots: 4,
            },
        ),
        (
            imm,
            &good[..63],
            RequestError::Truncated { slot: 1, len: 63 },
        ),
        (
            RequestImm::new(1, 0).encode(),
            &zero,
            RequestError::ZeroId { slot: 1 },
        ),
        (
            RequestImm::new(1, 8).encode(),
            &good,
            RequestError::TagMismatch {
                slot: 1,
                id: 7,
                tag: 8,
            },
        ),
    ];
    for (imm, bytes, error) in cases {
        let rej = e.on_request_all(imm, bytes).unwrap_err();
        assert_eq!(rej.error(), &error, "{rej}");
        assert_eq!(rej.status(), Status::MalformedRequest);
        assert!(!rej.answerable());
        assert!(e.encode_rejection(&rej).is_none());
        assert_eq!(e.pending(), 0, "no state change");
    }
    // Slot index known, id not: the rejection says so.
    let rej = e.on_request_all(imm, &good[..10]).unwrap_err();
    assert_eq!((rej.slot(), rej.id()), (Some(1), None));
    let rej = e
        .on_request_all(RequestImm::new(9, 7).encode(), &good)
        .unwrap_err();
    assert_eq!((rej.slot(), rej.id()), (None, None));

    // The real request goes through afterwards.
    let req = e.on_request_all(imm, &good).unwrap();
    assert_eq!((req.slot, req.id, req.payload), (1, 7, &b"abc"[..]));
}

#[test]
fn executor_refuses_busy_slots_and_replays() {
    let g = geometry(2, 256);
    let mut e = ExecutorConnection::new(g, 1);
    let first = request_bytes(256, header(1, 0, 0), b"");
    let second = request_bytes(256, header(3, 0, 0), b"");
    e.on_request_all(RequestImm::new(0, 1).encode(), &first)
        .unwrap();
    // The client overwrote slot 0 before its answer: refused, and slot 0 still owes the
    // answer to invocation 1.
    let rej = e
        .on_request_all(RequestImm::new(0, 3).encode(), &second)
        .unwrap_err();
    assert_eq!(
        rej.error(),
        &RequestError::SlotBusy {
            slot: 0,
            id: 3,
            pending: 1
        }
    );
    assert!(!rej.answerable());
    assert_eq!(e.pending_in(0), Some(1));
    e.encode_response(0, 1, Status::Ok, 0, 0).unwrap();
    // A replay of invocation 1 is stale.
    let rej = e
        .on_request_all(RequestImm::new(0, 1).encode(), &first)
        .unwrap_err();
    assert_eq!(
        rej.error(),
        &RequestError::StaleId {
            slot: 0,
            id: 1,
            last: 1
        }
    );
    assert!(!rej.answerable());
    // Ids are tracked per slot: slot 1 has seen nothing yet, so id 2 is fine there.
    let other = request_bytes(256, header(2, 0, 0), b"");
    let req = e
        .on_request_all(RequestImm::new(1, 2).encode(), &other)
        .unwrap();
    assert_eq!(req.id, 2);
    e.on_request_all(RequestImm::new(0, 3).encode(), &second)
        .unwrap();
    assert_eq!(e.pending(), 2);
    // Once 3 has been answered in slot 0, a lower id there is stale too, although it is
    // above everything slot 0 saw before 3.
    e.encode_response(0, 3, Status::Ok, 0, 0).unwrap();
    let two = request_bytes(256, header(2, 0, 0), b"");
    let rej = e
        .on_request_all(RequestImm::new(0, 2).encode(), &two)
        .unwrap_err();
    assert_eq!(
        rej.error(),
        &RequestError::StaleId {
            slot: 0,
            id: 2,
            last: 3
        }
    );
}

#[test]
fn executor_answers_malformed_requests_of_a_real_invocation() {
    let g = geometry(2, 256);
    let max = g.max_payload();
    let mut reserved = request_bytes(256, header(1, 0, 0), b"");
    reserved[40] = 0xee;
    let mut flags = request_bytes(256, header(2, 0, 0), b"");
    flags[16] = 1;
    let cases: Vec<(u64, Vec<u8>, usize, RequestError, Status)> = vec![
        (
            1,
            reserved,
            256,
            RequestError::BadHeader {
                slot: 0,
                id: 1,
                source: HeaderError::ReservedNotZero {
                    offset: 40,
                    value: 0xee,
                },
            },
            Status::MalformedRequest,
        ),
        (
            2,
            flags,
            256,
            RequestError::BadHeader {
                slot: 0,
                id: 2,
                source: HeaderError::UnknownFlags { flags: 1 },
            },
            Status::MalformedRequest,
        ),
        (
            3,
            request_bytes(256, header(3, 0, max as u32 + 1), b""),
            256,
            RequestError::PayloadTooLarge {
                slot: 0,
                id: 3,
                len: max as u32 + 1,
                max,
            },
            Status::MalformedRequest,
        ),
        (
            4,
            request_bytes(256, header(4, 0, u32::MAX), b""),
            256,
            RequestError::PayloadTooLarge {
                slot: 0,
                id: 4,
                len: u32::MAX,
                max,
            },
            Status::MalformedRequest,
        ),
        // Header says 100 B, but only 64 + 50 arrived.
        (
            5,
            request_bytes(256, header(5, 0, 100), b""),
            114,
            RequestError::PayloadTooLarge {
                slot: 0,
                id: 5,
                len: 100,
                max: 50,
            },
            Status::MalformedRequest,
        ),
        (
            6,
            request_bytes(256, header(6, 2, 0), b""),
            256,
            RequestError::UnknownFunction {
                slot: 0,
                id: 6,
                index: 2,
                count: 2,
            },
            Status::UnknownFunction,
        ),
    ];
    let mut e = ExecutorConnection::new(g, 2);
    let mut client = ClientConnection::new(g, 3);
    for (id, bytes, len, error, status) in cases {
        // The client side of the same invocation, so the answer can be checked end to end.
        let p = client.prepare(0, 0).unwrap();
        assert_eq!((p.slot, p.id), (0, id));
        let rej = e
            .on_request_all(RequestImm::new(0, id).encode(), &bytes[..len])
            .unwrap_err();
        assert_eq!(rej.error(), &error, "{rej}");
        assert_eq!(
            (rej.slot(), rej.id(), rej.status()),
            (Some(0), Some(id), status)
        );
        assert!(rej.answerable());
        assert_eq!(e.pending_in(0), Some(id));
        let r = e.encode_rejection(&rej).unwrap();
        assert_eq!(
            (r.slot, r.id, r.status, r.write_len),
            (0, id, status, HEADER_LEN)
        );
        let header = r
            .header
            .expect("a full-form request gets a full-form answer");
        let resp = response_bytes(256, ResponseHeader::decode(&header).unwrap(), b"");
        let done = client.on_response_all(r.imm, &resp).unwrap();
        assert_eq!((done.id, done.status), (id, status));
    }
    assert_eq!(e.pending(), 0);
}

#[test]
fn executor_bounds_checks_its_output() {
    let g = geometry(2, 128);
    let mut e = ExecutorConnection::new(g, 1);
    e.on_request_all(
        RequestImm::new(1, 1).encode(),
        &request_bytes(128, header(1, 0, 0), b""),
    )
    .unwrap();
    assert_eq!(
        e.encode_response(2, 1, Status::Ok, 0, 0),
        Err(EncodeResponseError::BadSlot { slot: 2, slots: 2 })
    );
    assert_eq!(
        e.encode_response(0, 1, Status::Ok, 0, 0),
        Err(EncodeResponseError::NotPending { slot: 0, id: 1 })
    );
    assert_eq!(
        e.encode_response(1, 2, Status::Ok, 0, 0),
        Err(EncodeResponseError::NotPending { slot: 1, id: 2 })
    );
    assert_eq!(
        e.encode_response(1, 1, Status::Ok, -1, 0),
        Err(EncodeResponseError::UnexpectedErrorCode {
            status: Status::Ok,
            code: -1
        })
    );
    assert_eq!(
        e.encode_response(1, 1, Status::Ok, 0, 65),
        Err(EncodeResponseError::OutputTooLarge {
            slot: 1,
            id: 1,
            len: 65,
            max: 64
        })
    );
    assert_eq!(e.pending_in(1), Some(1), "still owed");
    let r = e
        .encode_response(1, 1, Status::OutputTooLarge, 0, 0)
        .unwrap();
    assert_eq!(
        ResponseImm::decode(r.imm).unwrap().status(),
        Status::OutputTooLarge
    );
    let r = e.encode_response(1, 1, Status::Ok, 0, 64);
    assert!(r.is_err(), "answered once only");
}

// ---------------------------------------------------------------------------------------
// Client rejections.
// ---------------------------------------------------------------------------------------

/// A client with invocation 1 in flight in slot 0 and invocation 2 in slot 1.
fn client_with_two_in_flight() -> ClientConnection {
    let mut c = ClientConnection::new(geometry(4, 256), 1);
    assert_eq!(c.prepare(0, 0).unwrap().slot, 0);
    assert_eq!(c.prepare(0, 0).unwrap().slot, 1);
    c
}

#[test]
fn client_ignores_responses_it_cannot_tie_to_an_invocation() {
    let good = response_bytes(256, ok_header(2, 3), b"out");
    let imm = ResponseImm::new(1, 2, Status::Ok).encode();
    let other = response_bytes(256, ok_header(2 + 128, 0), b"");
    let cases: Vec<(u32, &[u8], ResponseError)> = vec![
        (
            RequestImm::new(1, 2).encode(),
            &good,
            ResponseError::WrongDirection {
                imm: RequestImm::new(1, 2).encode(),
            },
        ),
        (
            ResponseImm::new(4, 2, Status::Ok).encode(),
            &good,
            ResponseError::BadSlot { slot: 4, slots: 4 },
        ),
        (
            ResponseImm::new(3, 2, Status::Ok).encode(),
            &good,
            ResponseError::NotInFlight { slot: 3 },
        ),
        (
            ResponseImm::new(1, 3, Status::Ok).encode(),
            &good,
            ResponseError::TagMismatch {
                slot: 1,
                expected: 2,
                tag: 3,
            },
        ),
        (
            imm,
            &good[..63],
            ResponseError::Truncated { slot: 1, len: 63 },
        ),
        (
            ResponseImm::new(1, 2 + 128, Status::Ok).encode(),
            &other,
            ResponseError::IdMismatch {
                slot: 1,
                expected: 2,
                found: 130,
            },
        ),
    ];
    let mut c = client_with_two_in_flight();
    for (imm, bytes, error) in cases {
        assert_eq!(c.on_response_all(imm, bytes), Err(error));
        assert_eq!(error.failed_invocation(), None);
        assert_eq!(c.in_flight(), 2, "no state change");
        assert_eq!((c.outstanding(0), c.outstanding(1)), (Some(1), Some(2)));
    }
    let done = c.on_response_all(imm, &good).unwrap();
    assert_eq!((done.id, done.output), (2, &b"out"[..]));
}

#[test]
fn client_fails_the_invocation_of_a_malformed_response() {
    let mut unknown_header_status = response_bytes(256, ok_header(2, 0), b"");
    unknown_header_status[8] = 200;
    let mut reserved = response_bytes(256, ok_header(2, 0), b"");
    reserved[63] = 1;
    let unknown_imm_status = RESPONSE_BIT | 2 << 24 | 99 << 16 | 1;
    let cases: Vec<(u32, Vec<u8>, ResponseError)> = vec![
        (
            unknown_imm_status,
            response_bytes(256, ok_header(2, 0), b""),
            ResponseError::UnknownStatus {
                slot: 1,
                id: 2,
                code: 99,
            },
        ),
        (
            ResponseImm::new(1, 2, Status::Ok).encode(),
            unknown_header_status,
            ResponseError::BadHeader {
                slot: 1,
                id: 2,
                source: HeaderError::UnknownStatus(UnknownStatus { code: 200 }),
            },
        ),
        (
            ResponseImm::new(1, 2, Status::Ok).encode(),
            reserved,
            ResponseError::BadHeader {
                slot: 1,
                id: 2,
                source: HeaderError::ReservedNotZero {
                    offset: 63,
                    value: 1,
                },
            },
        ),
        (
            ResponseImm::new(1, 2, Status::FunctionPanicked).encode(),
            response_bytes(256, ok_header(2, 0), b""),
            ResponseError::StatusMismatch {
                slot: 1,
                id: 2,
                imm: Status::FunctionPanicked,
                header: Status::Ok,
            },
        ),
        (
            ResponseImm::new(1, 2, Status::Ok).encode(),
            response_bytes(
                256,
                ResponseHeader {
                    error_code: -3,
                    ..ok_header(2, 0)
                },
                b"",
            ),
            ResponseError::UnexpectedErrorCode {
                slot: 1,
                id: 2,
                status: Status::Ok,
                code: -3,
            },
        ),
        (
            ResponseImm::new(1, 2, Status::Ok).encode(),
            response_bytes(256, ok_header(2, 193), b""),
            ResponseError::OutputOutOfBounds {
                slot: 1,
                id: 2,
                len: 193,
                max: 192,
            },
        ),
        (
            ResponseImm::new(1, 2, Status::Ok).encode(),
            response_bytes(256, ok_header(2, u32::MAX), b""),
            ResponseError::OutputOutOfBounds {
                slot: 1,
                id: 2,
                len: u32::MAX,
                max: 192,
            },
        ),
        // Within the slot, but beyond the bytes the completion reported.
        (
            ResponseImm::new(1, 2, Status::Ok).encode(),
            response_bytes(256, ok_header(2, 10), b"")[..70].to_vec(),
            ResponseError::OutputOutOfBounds {
                slot: 1,
                id: 2,
                len: 10,
                max: 6,
            },
        ),
    ];
    for (imm, bytes, error) in cases {
        let mut c = client_with_two_in_flight();
        assert_eq!(c.on_response_all(imm, &bytes), Err(error));
        assert_eq!(error.failed_invocation(), Some((1, 2)), "{error}");
        assert_eq!(c.outstanding(1), None, "slot released");
        assert_eq!(c.outstanding(0), Some(1), "the other invocation untouched");
        assert_eq!(c.prepare(0, 0).unwrap().slot, 1, "slot 1 is reusable");
    }
}

#[test]
fn stale_response_for_a_released_slot_is_rejected() {
    let g = geometry(1, 256);
    let mut c = ClientConnection::new(g, 1);
    let p = c.prepare(0, 0).unwrap();
    let resp = response_bytes(256, ok_header(p.id, 0), b"");
    let imm = ResponseImm::new(0, p.id, Status::Ok).encode();
    c.on_response_all(imm, &resp).unwrap();
    // Delivered again (a duplicate) while the slot is free.
    assert_eq!(
        c.on_response_all(imm, &resp),
        Err(ResponseError::NotInFlight { slot: 0 })
    );
    // And again once the slot carries the next invocation.
    let q = c.prepare(0, 0).unwrap();
    assert_eq!(q.slot, p.slot);
    assert_eq!(
        c.on_response_all(imm, &resp),
        Err(ResponseError::TagMismatch {
            slot: 0,
            expected: 2,
            tag: 1
        })
    );
    assert_eq!(c.outstanding(0), Some(2));
}

#[test]
fn abandoned_invocations_hold_their_slot_until_the_executor_answers() {
    let g = geometry(1, 256);
    let mut c = ClientConnection::new(g, 1);
    let p = c.prepare(0, 0).unwrap();
    c.abandon(p.slot, p.id).unwrap();
    assert!(c.abandon(p.slot, p.id).is_err(), "abandoned once");
    assert!(c.cancel(p.slot, p.id).is_err(), "it may have been sent");
    assert_eq!(
        c.prepare(0, 0),
        Err(PrepareError::AllSlotsInFlight { slots: 1 }),
        "the executor may still write the slot"
    );
    assert_eq!(c.outstanding(0), Some(p.id));
    let resp = response_bytes(256, ok_header(p.id, 1), b"x");
    let imm = ResponseImm::new(0, p.id, Status::Ok).encode();
    let err = c.on_response_all(imm, &resp).unwrap_err();
    assert_eq!(err, ResponseError::Abandoned { slot: 0, id: 1 });
    assert_eq!(err.failed_invocation(), None, "nobody waits for it");
    assert_eq!(c.prepare(0, 0).unwrap().slot, 0);
    // A malformed response to an abandoned invocation frees the slot the same way.
    c.abandon(0, 2).unwrap();
    let bad = response_bytes(256, ok_header(2, 1000), b"");
    assert_eq!(
        c.on_response_all(ResponseImm::new(0, 2, Status::Ok).encode(), &bad),
        Err(ResponseError::Abandoned { slot: 0, id: 2 })
    );
    assert_eq!(c.available(), 1);
}

#[test]
fn held_responses_keep_their_slot_for_zero_copy_reads() {
    let g = geometry(2, 256);
    let mut c = ClientConnection::new(g, 1);
    let p = c.prepare(0, 0).unwrap();
    let resp = response_bytes(256, ok_header(p.id, 2), b"hi");
    let imm = ResponseImm::new(p.slot, p.id, Status::Ok).encode();
    let done = c.on_response_hold_all(imm, &resp).unwrap();
    assert_eq!(done.output, b"hi");
    assert_eq!(
        c.on_response_all(imm, &resp),
        Err(ResponseError::NotInFlight { slot: 0 })
    );
    assert_eq!(c.prepare(0, 0).unwrap().slot, 1, "slot 0 is still held");
    assert!(c.release(0, 99).is_err());
    c.release(0, p.id).unwrap();
    assert_eq!(c.prepare(0, 0).unwrap().slot, 0);
    // A malformed response is released at once even with hold.
    let bad = response_bytes(256, ok_header(3, 999), b"");
    assert!(c
        .on_response_hold_all(ResponseImm::new(0, 3, Status::Ok).encode(), &bad)
        .is_err());
    assert_eq!(c.outstanding(0), None);
    assert!(c.release(0, 3).is_err());
}

// ---------------------------------------------------------------------------------------
// Invocation ids.
// ---------------------------------------------------------------------------------------

/// Runs `n` invocations one after another over one slot, checking each result.
fn run_sequentially(client: &mut ClientConnection, exec: &mut ExecutorConnection, n: u64) {
    let mut wire = Wire::new(client.geometry());
    let mut last = 0u64;
    for _ in 0..n {
        let p = client.prepare(0, 8).unwrap();
        assert!(p.id > last, "ids strictly increase");
        last = p.id;
        wire.post_request(&p, &p.id.to_le_bytes());
        let (imm, len) = wire.to_executor.pop_front().unwrap();
        let req = exec.on_request(imm, len, wire.request_slot(imm)).unwrap();
        assert_eq!(req.id, p.id);
        let out = req.payload.to_vec();
        let r = exec
            .encode_response(req.slot, req.id, Status::Ok, 0, 8)
            .unwrap();
        wire.post_response(&r, &out);
        let (imm, len) = wire.to_client.pop_front().unwrap();
        let done = client
            .on_response(imm, len, wire.response_slot(imm))
            .unwrap();
        assert_eq!(done.id, p.id);
        assert_eq!(done.output, &p.id.to_le_bytes());
    }
}

#[test]
fn more_than_65536_invocations_on_one_slot_never_collide() {
    let g = geometry(1, 128);
    let mut client = ClientConnection::new(g, 1);
    let mut exec = ExecutorConnection::new(g, 1);
    run_sequentially(&mut client, &mut exec, 70_000);
    assert_eq!(client.next_id(), Some(70_001));
}

#[test]
fn id_65537_is_not_id_1() {
    // Ids 1 and 65537 share their low 16 bits (and so their immediate tags): rFaaS's
    // 16-bit ids could not tell them apart. The 64-bit header id can.
    let g = geometry(1, 128);
    let mut client = ClientConnection::with_first_id(g, 1, NonZeroU64::new(65_537).unwrap());
    client.set_compact(false);
    let mut exec = ExecutorConnection::new(g, 1);
    let p = client.prepare(0, 0).unwrap();
    assert_eq!(p.id, 65_537);
    assert_eq!(
        p.imm,
        RequestImm::new(0, 1).encode(),
        "same immediate as id 1"
    );
    // A late response to invocation 1 (same immediate) is refused by the 64-bit id.
    let stale = response_bytes(128, ok_header(1, 0), b"");
    let imm = ResponseImm::new(0, 1, Status::Ok).encode();
    assert_eq!(
        client.on_response_all(imm, &stale),
        Err(ResponseError::IdMismatch {
            slot: 0,
            expected: 65_537,
            found: 1
        })
    );
    // And the executor refuses a replay of request 1 after 65537.
    let req = request_bytes(128, header(65_537, 0, 0), b"");
    exec.on_request_all(p.imm, &req).unwrap();
    exec.encode_response(0, 65_537, Status::Ok, 0, 0).unwrap();
    let replay = request_bytes(128, header(1, 0, 0), b"");
    let rej = exec
        .on_request_all(RequestImm::new(0, 1).encode(), &replay)
        .unwrap_err();
    assert!(matches!(
        rej.error(),
        RequestError::StaleId { last: 65_537, .. }
    ));
}

#[test]
fn ids_cross_the_16_and_32_bit_boundaries() {
    for first in [
        (1u64 << 15) - 10,
        (1 << 16) - 10,
        (1 << 32) - 10,
        (1 << 48) - 10,
    ] {
        let g = geometry(1, 128);
        let mut client = ClientConnection::with_first_id(g, 1, NonZeroU64::new(first).unwrap());
        let mut exec = ExecutorConnection::new(g, 1);
        run_sequentially(&mut client, &mut exec, 20);
        assert_eq!(client.next_id(), Some(first + 20));
    }
}

#[test]
fn ids_run_out_at_u64_max_instead_of_wrapping() {
    let g = geometry(2, 128);
    let mut client = ClientConnection::with_first_id(g, 1, NonZeroU64::new(u64::MAX - 2).unwrap());
    let mut exec = ExecutorConnection::new(g, 1);
    run_sequentially(&mut client, &mut exec, 3);
    assert_eq!(client.next_id(), None);
    assert_eq!(client.prepare(0, 0), Err(PrepareError::IdsExhausted));
    assert_eq!(client.in_flight(), 0, "no slot taken");
}

// ---------------------------------------------------------------------------------------
// Many in flight, completed out of order.
// ---------------------------------------------------------------------------------------

/// The functions of the sequence test.
/// 0: echo; 1: reverse; 2: fails with -(len); 3: "panics"; 4: doubles its input, which
/// may not fit.
fn run_function(function: u32, input: &[u8], out: &mut [u8]) -> (Status, i32, usize) {
    match function {
        0 => {
            out[..input.len()].copy_from_slice(input);
            (Status::Ok, 0, input.len())
        }
        1 => {
            for (o, i) in out.iter_mut().zip(input.iter().rev()) {
                *o = *i;
            }
            (Status::Ok, 0, input.len())
        }
        2 => (Status::FunctionError, -(input.len() as i32) - 1, 0),
        3 => {
            let msg = b"panicked at 'boom'";
            out[..msg.len()].copy_from_slice(msg);
            (Status::FunctionPanicked, 0, msg.len())
        }
        _ => {
            if 2 * input.len() > out.len() {
                (Status::OutputTooLarge, 0, 0)
            } else {
                out[..input.len()].copy_from_slice(input);
                out[input.len()..2 * input.len()].copy_from_slice(input);
                (Status::Ok, 0, 2 * input.len())
            }
        }
    }
}

fn expected(function: u32, input: &[u8], max: usize) -> (Status, i32, Vec<u8>) {
    let mut out = vec![0u8; max];
    let (s, c, n) = run_function(function, input, &mut out);
    out.truncate(n);
    (s, c, out)
}

#[test]
fn client_and_executor_with_many_in_flight_and_out_of_order_completion() {
    for (slots, slot_size, first_id, rounds) in [
        (8u32, 256u32, 1u64, 30_000usize),
        (64, 128, (1 << 32) - 5_000, 10_000),
        (3, 4096, (1 << 16) - 100, 3_000),
    ] {
        let g = geometry(slots, slot_size);
        let mut client = ClientConnection::with_first_id(g, 5, NonZeroU64::new(first_id).unwrap());
        let mut exec = ExecutorConnection::new(g, 5);
        let mut wire = Wire::new(g);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ slots as u64);
        // What each caller waits for: id -> (slot, function, input).
        let mut waiting: HashMap<u64, (u16, u32, Vec<u8>)> = HashMap::new();
        // Accepted requests the executor has not answered yet, with their inputs.
        let mut accepted: Vec<(u16, u64, u32, Vec<u8>)> = Vec::new();
        let mut done = 0usize;
        let mut max_in_flight = 0;
        let mut stale_refused = 0;
        let mut last_response: Option<(u32, usize, Vec<u8>)> = None;
        while done < rounds {
            // The client issues a burst until it runs out of credits.
            for _ in 0..rng.below(slots as usize + 1) {
                let function = rng.below(5) as u32;
                let len = rng.below(g.max_payload() + 1);
                let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                match client.prepare(function, len) {
                    Ok(p) => {
                        wire.post_request(&p, &input);
                        assert!(waiting.insert(p.id, (p.slot, function, input)).is_none());
                    }
                    Err(PrepareError::AllSlotsInFlight { .. }) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            max_in_flight = max_in_flight.max(client.in_flight());
            // The executor takes some completions in order ...
            for _ in 0..rng.below(4) {
                let Some((imm, len)) = wire.to_executor.pop_front() else {
                    break;
                };
                let at = wire
                    .slot_range(RequestImm::decode(imm).unwrap().slot())
                    .start;
                let end = at + written_extent(imm, len).end;
                let req = exec.on_request(imm, len, &wire.requests[at..end]).unwrap();
                // The executor knows the client's id, from the header or from the tag.
                assert!(waiting.contains_key(&req.id));
                accepted.push((req.slot, req.id, req.function, req.payload.to_vec()));
            }
            // ... and answers them in any order.
            for _ in 0..rng.below(accepted.len() + 1) {
                let (slot, id, function, input) = accepted.swap_remove(rng.below(accepted.len()));
                assert_eq!(exec.pending_in(slot), Some(id));
                let mut staging = vec![0u8; g.max_output()];
                let (status, code, n) = run_function(function, &input, &mut staging);
                let r = exec.encode_response(slot, id, status, code, n).unwrap();
                wire.post_response(&r, &staging[..n]);
            }
            // The client takes responses; now and then a stale duplicate of an earlier
            // response is delivered again, and must never reach a caller.
            while let Some((imm, len)) = wire.to_client.pop_front() {
                if rng.below(10) == 0 {
                    if let Some((old_imm, old_len, old_bytes)) = &last_response {
                        let r = client.on_response(*old_imm, *old_len, old_bytes);
                        assert!(r.is_err(), "stale response accepted");
                        assert_eq!(r.unwrap_err().failed_invocation(), None);
                        stale_refused += 1;
                    }
                }
                let at = wire.slot_range(ResponseImm::peek(imm).unwrap().slot).start;
                let bytes = wire.responses[at..at + written_extent(imm, len).end].to_vec();
                let c = client.on_response(imm, len, &bytes).unwrap();
                let (slot, function, input) = waiting.remove(&c.id).expect("a caller waits");
                assert_eq!(c.slot, slot);
                let (status, code, output) = expected(function, &input, g.max_output());
                assert_eq!(
                    (c.status, c.error_code, c.output),
                    (status, code, &output[..])
                );
                last_response = Some((imm, len, bytes));
                done += 1;
            }
        }
        assert!(max_in_flight >= slots.min(3), "several in flight");
        assert!(stale_refused > 0);
        assert_eq!(client.in_flight() as usize, waiting.len());
    }
}

#[test]
fn the_hot_path_allocates_nothing() {
    let g = geometry(8, 256);
    let mut client = ClientConnection::new(g, 2);
    let mut exec = ExecutorConnection::new(g, 2);
    let mut requests = vec![0u8; g.region_len() as usize];
    let mut responses = vec![0u8; g.region_len() as usize];
    let slot = g.slot_size() as usize;
    let payload = [0xabu8; 100];
    let mut in_flight = [(0u16, 0u64, 0u32, 0usize); 8];
    let probe = allocations();
    drop(std::hint::black_box(vec![1u8]));
    assert_eq!(allocations(), probe + 1, "the counter counts");
    let before = allocations();
    for round in 0..2_000u32 {
        // Fill every slot, then one more (refused). Even rounds in the compact form, odd
        // ones with headers.
        client.set_compact(round % 2 == 0);
        for entry in &mut in_flight {
            let p = client.prepare(round % 2, payload.len()).unwrap();
            let at = p.remote_offset as usize - p.local_offset;
            if let Some(header) = &p.header {
                requests[at..at + HEADER_LEN].copy_from_slice(header);
            }
            requests[at + HEADER_LEN..at + HEADER_LEN + payload.len()].copy_from_slice(&payload);
            *entry = (p.slot, p.id, p.imm, p.write_len);
        }
        assert!(client.prepare(0, 0).is_err());
        assert!(client.prepare(0, 10_000).is_err());
        // The executor takes them in the order they were sent, with rejected garbage in
        // between ...
        for &(s, id, imm, len) in &in_flight {
            let at = g.slot_offset(s) as usize;
            let req = exec.on_request(imm, len, &requests[at..at + slot]).unwrap();
            assert_eq!((req.id, req.payload.len()), (id, payload.len()));
            let rej = exec
                .on_request(imm, len, &requests[at..at + slot])
                .unwrap_err();
            assert!(exec.encode_rejection(&rej).is_none());
            assert!(exec.on_request_all(imm | RESPONSE_BIT, &requests).is_err());
        }
        // ... and answers them in reverse order.
        for &(s, id, imm, _) in in_flight.iter().rev() {
            let r = exec.encode_response(s, id, Status::Ok, 0, 32).unwrap();
            let at = r.remote_offset as usize - r.local_offset;
            if let Some(header) = &r.header {
                responses[at..at + HEADER_LEN].copy_from_slice(header);
            }
            let done = client
                .on_response(r.imm, r.write_len, &responses[at..at + slot])
                .unwrap();
            assert_eq!((done.id, done.output.len()), (id, 32));
            assert!(client
                .on_response(r.imm, r.write_len, &responses[at..at + slot])
                .is_err());
            assert!(client.on_response_all(imm, &responses).is_err());
        }
    }
    assert_eq!(allocations() - before, 0, "the hot path allocated");
}

// ---------------------------------------------------------------------------------------
// Random input never panics.
// ---------------------------------------------------------------------------------------

/// A request slot that is often nearly valid, so that the deep checks are reached.
fn request_input() -> impl Strategy<Value = (u32, Vec<u8>)> {
    let structured = (
        prop_oneof![4 => 0u16..4, 1 => any::<u16>()],
        prop_oneof![1 => Just(0u64), 4 => 1u64..1000, 1 => any::<u64>()],
        0u32..4,
        prop_oneof![3 => 0u32..200, 1 => any::<u32>()],
        prop_oneof![4 => Just(0u32), 1 => any::<u32>()],
        prop_oneof![Just(256usize), 0usize..300],
        proptest::bool::weighted(0.8),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(slot, id, function, len, flags, cut, tag_ok, junk)| {
            let mut bytes = request_bytes(
                256,
                RequestHeader {
                    id,
                    function,
                    payload_len: len,
                    flags,
                },
                b"",
            );
            bytes[HEADER_LEN..].copy_from_slice(&[7u8; 192]);
            if junk.len() > 64 && junk[0] == 0 {
                bytes[20..64].copy_from_slice(&junk[..44]);
            }
            bytes.truncate(cut.min(256));
            let tag_id = if tag_ok { id } else { id ^ 1 };
            (RequestImm::new(slot, tag_id).encode(), bytes)
        });
    prop_oneof![
        1 => (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)),
        3 => structured,
    ]
}

fn response_input() -> impl Strategy<Value = (u32, Vec<u8>)> {
    let structured = (
        prop_oneof![4 => 0u16..4, 1 => any::<u16>()],
        // Mostly the id in flight in that slot (slot + 1), sometimes anything.
        prop_oneof![3 => Just(None), 1 => any::<u64>().prop_map(Some)],
        prop_oneof![3 => 0u32..8, 1 => 0u32..256],
        proptest::bool::weighted(0.8),
        prop_oneof![3 => 0u32..200, 1 => any::<u32>()],
        prop_oneof![4 => Just(0i32), 1 => any::<i32>()],
        prop_oneof![Just(256usize), 0usize..300],
    )
        .prop_map(|(slot, id, status, header_status_ok, len, code, cut)| {
            let id = id.unwrap_or(slot as u64 + 1);
            let mut bytes = vec![0u8; 256];
            bytes[..8].copy_from_slice(&id.to_le_bytes());
            let hs = if header_status_ok { status } else { status + 1 };
            bytes[8..12].copy_from_slice(&hs.to_le_bytes());
            bytes[12..16].copy_from_slice(&len.to_le_bytes());
            bytes[16..20].copy_from_slice(&code.to_le_bytes());
            bytes.truncate(cut);
            let imm = RESPONSE_BIT | ((id & 0x7f) as u32) << 24 | status << 16 | slot as u32;
            (imm, bytes)
        });
    prop_oneof![
        1 => (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)),
        3 => structured,
    ]
}

proptest! {
    #[test]
    fn on_request_never_panics_and_is_consistent(
        inputs in proptest::collection::vec(request_input(), 1..8),
    ) {
        let g = geometry(4, 256);
        let mut e = ExecutorConnection::new(g, 3);
        for (imm, bytes) in inputs {
            let before = e.pending();
            match e.on_request_all(imm, &bytes) {
                Ok(req) => {
                    let h = RequestHeader::decode(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
                    prop_assert_eq!(req.slot, imm as u16);
                    prop_assert!(req.slot < 4);
                    prop_assert_eq!(req.id, h.id);
                    prop_assert!(req.id != 0);
                    prop_assert!(RequestImm::decode(imm).unwrap().matches(req.id));
                    prop_assert!(req.function < 3);
                    prop_assert_eq!(req.payload, &bytes[HEADER_LEN..HEADER_LEN + h.payload_len as usize]);
                    prop_assert_eq!(e.pending(), before + 1);
                    // Answer it so that the slot can take the next one.
                    prop_assert!(e.encode_response(req.slot, req.id, Status::Ok, 0, 0).is_ok());
                }
                Err(rej) => {
                    prop_assert!(!rej.to_string().is_empty());
                    if rej.answerable() {
                        prop_assert_eq!(e.pending(), before + 1);
                        let r = e.encode_rejection(&rej);
                        prop_assert!(r.is_some());
                        let r = r.unwrap();
                        prop_assert_eq!(r.status, rej.status());
                        prop_assert_eq!(Some(r.slot), rej.slot());
                        prop_assert_eq!(Some(r.id), rej.id());
                    } else {
                        prop_assert_eq!(e.pending(), before);
                        prop_assert!(e.encode_rejection(&rej).is_none());
                    }
                }
            }
        }
    }

    #[test]
    fn on_response_never_panics_and_is_consistent(
        inputs in proptest::collection::vec(response_input(), 1..8),
        abandon in any::<bool>(),
    ) {
        let g = geometry(4, 256);
        let mut c = ClientConnection::new(g, 1);
        for _ in 0..3 {
            c.prepare(0, 0).unwrap();
        }
        if abandon {
            c.abandon(2, 3).unwrap();
        }
        for (imm, bytes) in inputs {
            let before: Vec<Option<u64>> = (0..4).map(|s| c.outstanding(s)).collect();
            let slot = imm as u16;
            match c.on_response_all(imm, &bytes) {
                Ok(done) => {
                    prop_assert_eq!(done.slot, slot);
                    prop_assert_eq!(Some(done.id), before[slot as usize]);
                    prop_assert!(!(abandon && slot == 2));
                    let h = ResponseHeader::decode(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
                    prop_assert_eq!(h.id, done.id);
                    prop_assert_eq!(h.status, done.status);
                    prop_assert_eq!(ResponseImm::decode(imm).unwrap().status(), done.status);
                    prop_assert_eq!(done.output, &bytes[HEADER_LEN..HEADER_LEN + h.output_len as usize]);
                    prop_assert_eq!(c.outstanding(slot), None);
                }
                Err(err) => {
                    prop_assert!(!err.to_string().is_empty());
                    let after: Vec<Option<u64>> = (0..4).map(|s| c.outstanding(s)).collect();
                    match (err.failed_invocation(), err) {
                        (Some((s, id)), _) => {
                            prop_assert_eq!(before[s as usize], Some(id));
                            prop_assert_eq!(after[s as usize], None);
                        }
                        (None, ResponseError::Abandoned { slot: s, id }) => {
                            prop_assert_eq!((s, id), (2, 3));
                            prop_assert_eq!(after[2], None);
                        }
                        (None, _) => prop_assert_eq!(&after, &before),
                    }
                }
            }
        }
    }

    #[test]
    fn every_prepared_request_is_accepted_as_sent(
        slots in 1u32..20,
        shift in 7u32..14,
        requests in proptest::collection::vec((0u32..4, any::<prop::sample::Index>()), 1..40),
    ) {
        let g = geometry(slots, 1 << shift);
        let mut c = ClientConnection::new(g, 4);
        let mut e = ExecutorConnection::new(g, 4);
        let mut wire = Wire::new(g);
        for (function, len) in requests {
            let len = len.index(g.max_payload() + 1);
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let p = match c.prepare(function, len) {
                Ok(p) => p,
                Err(PrepareError::AllSlotsInFlight { .. }) => break,
                Err(err) => return Err(TestCaseError::fail(err.to_string())),
            };
            wire.post_request(&p, &payload);
            let (imm, len) = wire.to_executor.pop_front().unwrap();
            let req = e.on_request(imm, len, wire.request_slot(imm)).unwrap();
            prop_assert_eq!((req.slot, req.id, req.function), (p.slot, p.id, function));
            prop_assert_eq!(req.payload, &payload[..]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Handshake.
// ---------------------------------------------------------------------------------------

fn endpoint(fabric: Fabric, qpn: u32) -> Endpoint {
    Endpoint::Mock(rdma_mock::Endpoint {
        fabric,
        address: "rdma-mock-4242".into(),
        device: 0x1234_5678,
        qpn,
    })
}

fn hello(workers: usize) -> ClientHello {
    let g = SlotGeometry::DEFAULT;
    ClientHello::new(
        "app-rank-0",
        vec!["echo".into(), "black_scholes".into()],
        g,
        (0..workers)
            .map(|i| ClientWorker {
                endpoint: endpoint(Fabric::Shm, 10 + i as u32),
                response_region: RegionDesc {
                    addr: 0x7f00_0000_0000 + i as u64 * g.region_len(),
                    rkey: 0x1001,
                    len: g.region_len(),
                },
            })
            .collect(),
    )
}

fn catalog(name: &str) -> Option<&'static str> {
    ["echo", "black_scholes", "matmul"]
        .into_iter()
        .find(|f| *f == name)
}

fn reply_to(h: &ClientHello) -> ExecutorReply {
    let g = SlotGeometry::new(h.slots, h.slot_size).unwrap();
    ExecutorReply::new(
        h,
        (0..h.workers.len())
            .map(|i| ExecutorWorker {
                endpoint: endpoint(Fabric::Shm, 100 + i as u32),
                request_region: RegionDesc {
                    addr: 0x7e00_0000_0000 + i as u64 * g.region_len(),
                    rkey: 0x2002,
                    len: g.region_len(),
                },
            })
            .collect(),
    )
}

#[test]
fn handshake_happy_path_through_json_lines() {
    let h = hello(2);
    let line = ControlMessage::Hello(h.clone()).to_line();
    assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
    let got = ControlMessage::from_line(&line)
        .unwrap()
        .into_hello()
        .unwrap();
    assert_eq!(got, h);
    let admission = got.admit(FabricKind::Shm, 4, catalog).unwrap();
    assert_eq!(admission.geometry, SlotGeometry::DEFAULT);
    assert_eq!(admission.functions, vec!["echo", "black_scholes"]);

    let reply = reply_to(&got);
    let line = ControlMessage::Accept(reply.clone()).to_line();
    let back = ControlMessage::from_line(&line)
        .unwrap()
        .into_reply()
        .unwrap();
    assert_eq!(back, reply);
    assert_eq!(back.check(&h), Ok(SlotGeometry::DEFAULT));
    assert_eq!(back.function_index("black_scholes"), Some(1));
    assert_eq!(back.function_index("matmul"), None);
    assert_eq!(
        back.workers[1].request_region.at(65536),
        0x7e00_0000_0000 + 9 * 65536
    );
}

#[test]
fn handshake_json_shape() {
    let v: serde_json::Value =
        serde_json::from_str(&ControlMessage::Hello(hello(1)).to_line()).unwrap();
    assert_eq!(v["type"], "hello");
    assert_eq!(v["version"], PROTOCOL_VERSION);
    assert_eq!(v["functions"][1], "black_scholes");
    assert_eq!(v["slots"], 8);
    assert_eq!(v["slot_size"], 65536);
    assert_eq!(v["workers"][0]["endpoint"]["fabric"], "shm");
    assert_eq!(v["workers"][0]["response_region"]["rkey"], 0x1001);
    let v: serde_json::Value =
        serde_json::from_str(&ControlMessage::Accept(reply_to(&hello(1))).to_line()).unwrap();
    assert_eq!(v["type"], "accept");
    assert_eq!(v["functions"][1]["name"], "black_scholes");
    assert_eq!(v["functions"][1]["index"], 1);
    let e = ErrorMessage::from_error(&HandshakeError::UnknownFunctions {
        names: vec!["nope".into()],
    });
    let v: serde_json::Value = serde_json::from_str(&ControlMessage::Error(e).to_line()).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["kind"], "unknown_functions");
    assert_eq!(v["unknown_functions"][0], "nope");
}

#[test]
fn unknown_functions_are_refused_all_at_once() {
    let mut h = hello(1);
    h.functions = vec!["echo".into(), "fft".into(), "matmul".into(), "sort".into()];
    let err = h.admit(FabricKind::Shm, 1, catalog).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::UnknownFunctions {
            names: vec!["fft".into(), "sort".into()]
        }
    );
    assert_eq!(err.to_string(), "unknown function(s): fft, sort");
    // Sent back as an error message, it reads as the same error on the client.
    let line = ControlMessage::Error(ErrorMessage::from_error(&err)).to_line();
    let back = ControlMessage::from_line(&line)
        .unwrap()
        .into_reply()
        .unwrap_err();
    assert_eq!(back, err);
}

#[test]
fn version_mismatch_is_a_clear_error() {
    let mut h = hello(1);
    h.version = PROTOCOL_VERSION + 1;
    let err = h.admit(FabricKind::Shm, 1, catalog).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: PROTOCOL_VERSION + 1
        }
    );
    assert!(err.to_string().contains("version mismatch"));
    // On the wire, even when the other version's message has another shape.
    let line = format!(
        r#"{{"type":"hello","version":{},"something":"new"}}"#,
        PROTOCOL_VERSION + 7
    );
    assert_eq!(
        ControlMessage::from_line(&line),
        Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: PROTOCOL_VERSION + 7
        })
    );
    // The executor's error message of another version still decodes, as a mismatch.
    let line = r#"{"type":"error","version":9,"kind":"version_mismatch","message":"v9 only"}"#;
    assert_eq!(
        ControlMessage::from_line(line).unwrap().into_reply(),
        Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: 9
        })
    );
    let mut r = reply_to(&hello(1));
    r.version = 0;
    assert!(matches!(
        r.check(&hello(1)),
        Err(HandshakeError::VersionMismatch { theirs: 0, .. })
    ));
}

#[test]
fn executor_refuses_bad_hellos() {
    let refuse = |h: ClientHello, workers| h.admit(FabricKind::Shm, workers, catalog).unwrap_err();
    let mut h = hello(1);
    h.slot_size = 1000;
    assert_eq!(
        refuse(h, 1),
        HandshakeError::Geometry(GeometryError::SlotSizeNotPowerOfTwo { size: 1000 })
    );
    let mut h = hello(1);
    h.slots = 0;
    assert!(matches!(
        refuse(h, 1),
        HandshakeError::Geometry(GeometryError::SlotCount { slots: 0, .. })
    ));
    assert_eq!(refuse(hello(0), 1), HandshakeError::NoWorkers);
    assert_eq!(
        refuse(hello(3), 2),
        HandshakeError::TooManyWorkers {
            wanted: 3,
            available: 2
        }
    );
    let mut h = hello(2);
    h.workers[1].endpoint = endpoint(Fabric::Tcp, 11);
    assert_eq!(
        refuse(h, 2),
        HandshakeError::FabricMismatch {
            worker: 1,
            ours: "shm",
            theirs: "tcp"
        }
    );
    let mut h = hello(2);
    h.workers[1].response_region.len -= 1;
    assert_eq!(
        refuse(h, 2),
        HandshakeError::RegionTooSmall {
            worker: 1,
            role: "response",
            len: 8 * 65536 - 1,
            needed: 8 * 65536
        }
    );
    let mut h = hello(1);
    h.functions.clear();
    assert_eq!(refuse(h, 1), HandshakeError::NoFunctions);
    let mut h = hello(1);
    h.functions.push("echo".into());
    assert_eq!(
        refuse(h, 1),
        HandshakeError::DuplicateFunction {
            name: "echo".into()
        }
    );
    // Every refusal can be told to the client.
    let e = ErrorMessage::from_error(&refuse(hello(3), 2));
    assert_eq!(e.kind, ErrorKind::TooManyWorkers);
    assert_eq!(
        e.clone().into_error(),
        HandshakeError::Refused {
            kind: ErrorKind::TooManyWorkers,
            message: "3 workers requested, but only 2 are available".into()
        }
    );
}

#[test]
fn client_refuses_bad_replies() {
    let h = hello(2);
    let mut r = reply_to(&h);
    r.functions.swap(0, 1);
    assert!(matches!(
        r.check(&h),
        Err(HandshakeError::FunctionTableMismatch { position: 0, .. })
    ));
    let mut r = reply_to(&h);
    r.functions.pop();
    assert!(matches!(
        r.check(&h),
        Err(HandshakeError::FunctionTableMismatch { position: 1, .. })
    ));
    let mut r = reply_to(&h);
    r.functions[1].index = 7;
    assert!(matches!(
        r.check(&h),
        Err(HandshakeError::FunctionTableMismatch { position: 1, .. })
    ));
    let mut r = reply_to(&h);
    r.workers.pop();
    assert_eq!(
        r.check(&h),
        Err(HandshakeError::WorkerCountMismatch { wanted: 2, got: 1 })
    );
    let mut r = reply_to(&h);
    r.workers[0].request_region.len = 4096;
    assert!(matches!(
        r.check(&h),
        Err(HandshakeError::RegionTooSmall {
            worker: 0,
            role: "request",
            ..
        })
    ));
    let mut r = reply_to(&h);
    r.workers[1].endpoint = endpoint(Fabric::Tcp, 101);
    assert!(matches!(
        r.check(&h),
        Err(HandshakeError::FabricMismatch { worker: 1, .. })
    ));
}

#[test]
fn malformed_control_lines() {
    assert!(matches!(
        ControlMessage::from_line("not json"),
        Err(HandshakeError::Decode { .. })
    ));
    assert!(matches!(
        ControlMessage::from_line(r#"{"type":"launch","version":2}"#),
        Err(HandshakeError::Decode { .. })
    ));
    assert!(matches!(
        ControlMessage::from_line(r#"{"type":"hello","version":2}"#),
        Err(HandshakeError::Decode { .. })
    ));
    let long = format!("\"{}\"", "x".repeat(MAX_CONTROL_LINE));
    assert!(matches!(
        ControlMessage::from_line(&long),
        Err(HandshakeError::LineTooLong { .. })
    ));
    let hello_line = ControlMessage::Hello(hello(1)).to_line();
    assert_eq!(
        ControlMessage::from_line(&hello_line).unwrap().into_reply(),
        Err(HandshakeError::UnexpectedMessage {
            expected: "accept",
            found: "hello"
        })
    );
    let crlf = hello_line.trim_end().to_string() + "\r\n";
    assert!(ControlMessage::from_line(&crlf).is_ok());
}

// ---- leased memory in the handshake ---------------------------------------------------------

fn memory_hello(len: u64, access: MemoryAccess) -> ClientHello {
    ClientHello::memory_only(
        "app-rank-0",
        MemoryRequest {
            len,
            access,
            endpoint: endpoint(Fabric::Shm, 7),
        },
    )
}

fn grant_for(h: &ClientHello, len: u64, access: MemoryAccess) -> ExecutorReply {
    let mut reply = ExecutorReply::new(h, Vec::new());
    reply.memory = Some(MemoryGrant {
        endpoint: endpoint(Fabric::Shm, 70),
        region: RegionDesc {
            addr: 0x7d00_0000_0000,
            rkey: 0x3003,
            len,
        },
        access,
    });
    reply
}

#[test]
fn a_memory_only_hello_is_admitted_and_its_grant_checked() {
    let h = memory_hello(4096, MemoryAccess::ALL);
    let admission = h.admit(FabricKind::Shm, 1, catalog).unwrap();
    assert!(admission.functions.is_empty());
    // Through the wire and back.
    let line = ControlMessage::Hello(h.clone()).to_line();
    assert!(line.contains("\"memory\""), "{line}");
    assert_eq!(
        ControlMessage::from_line(&line)
            .unwrap()
            .into_hello()
            .unwrap(),
        h
    );
    assert!(grant_for(&h, 4096, MemoryAccess::ALL).check(&h).is_ok());
    let small = grant_for(&h, 4095, MemoryAccess::ALL)
        .check(&h)
        .unwrap_err();
    assert!(
        matches!(small, HandshakeError::MemoryMismatch { .. }),
        "{small}"
    );
    let weaker = grant_for(&h, 4096, MemoryAccess::READ_ONLY)
        .check(&h)
        .unwrap_err();
    assert!(weaker
        .to_string()
        .contains("read+write+atomic access requested, read granted"));
    let none = ExecutorReply::new(&h, Vec::new()).check(&h).unwrap_err();
    assert!(none.to_string().contains("none granted"), "{none}");
}

#[test]
fn invalid_memory_requests_are_refused() {
    let zero = memory_hello(0, MemoryAccess::ALL).admit(FabricKind::Shm, 1, catalog);
    assert!(matches!(zero, Err(HandshakeError::InvalidMemory { .. })));
    let no_rights = memory_hello(64, MemoryAccess::default()).admit(FabricKind::Shm, 1, catalog);
    assert!(matches!(
        no_rights,
        Err(HandshakeError::InvalidMemory { .. })
    ));
    let other_fabric = memory_hello(64, MemoryAccess::ALL).admit(FabricKind::Tcp, 1, catalog);
    assert!(matches!(
        other_fabric,
        Err(HandshakeError::InvalidMemory { .. })
    ));
}

#[test]
fn hellos_and_replies_without_memory_are_unchanged_on_the_wire() {
    let h = hello(1);
    let line = ControlMessage::Hello(h.clone()).to_line();
    assert!(!line.contains("memory"), "{line}");
    let reply_line = ControlMessage::Accept(reply_to(&h)).to_line();
    assert!(!reply_line.contains("memory"), "{reply_line}");
    let back = ControlMessage::from_line(&line)
        .unwrap()
        .into_hello()
        .unwrap();
    assert_eq!(back.memory, None);
    assert!(reply_to(&h).check(&h).is_ok());
}

// ---------------------------------------------------------------------------------------
// The compact form's ids.
// ---------------------------------------------------------------------------------------

/// Sends one request through `wire` and checks the executor sees the client's id and form.
fn exchange(
    client: &mut ClientConnection,
    exec: &mut ExecutorConnection,
    wire: &mut Wire,
    compact: bool,
) {
    let p = client.prepare(0, 4).unwrap();
    assert_eq!(p.header.is_none(), compact, "form of invocation {}", p.id);
    wire.post_request(&p, b"ping");
    let (imm, len) = wire.to_executor.pop_front().unwrap();
    let req = exec.on_request(imm, len, wire.request_slot(imm)).unwrap();
    assert_eq!((req.id, req.payload), (p.id, &b"ping"[..]));
    let r = exec
        .encode_response(req.slot, req.id, Status::Ok, 0, 0)
        .unwrap();
    wire.post_response(&r, b"");
    let (imm, len) = wire.to_client.pop_front().unwrap();
    let done = client
        .on_response(imm, len, wire.response_slot(imm))
        .unwrap();
    assert_eq!(done.id, p.id);
}

#[test]
fn compact_ids_stay_exact_across_gaps_and_far_first_ids() {
    let g = geometry(2, 256);
    // A first id far above 1: the first request says it in full, then compact.
    let first = NonZeroU64::new((1 << 40) + 3).unwrap();
    let mut client = ClientConnection::with_first_id(g, 1, first);
    let mut exec = ExecutorConnection::new(g, 1);
    let mut wire = Wire::new(g);
    exchange(&mut client, &mut exec, &mut wire, false);
    exchange(&mut client, &mut exec, &mut wire, true);
    // Cancelled prepares skip ids the executor never sees. Up to 2^14 of them the next id
    // is still recovered from its tag; past that it goes in full once.
    for skipped in [1u64, 0x3fff, 0x4000, 0x4001, 100_000] {
        for _ in 0..skipped {
            let p = client.prepare(0, 0).unwrap();
            client.cancel(p.slot, p.id).unwrap();
        }
        let compact = skipped < 0x4000;
        exchange(&mut client, &mut exec, &mut wire, compact);
        exchange(&mut client, &mut exec, &mut wire, true);
    }
    // A cancel that is not of the last prepared request: the next one goes in full.
    let a = client.prepare(0, 0).unwrap();
    let b = client.prepare(0, 0).unwrap();
    client.cancel(a.slot, a.id).unwrap();
    client.cancel(b.slot, b.id).unwrap();
    exchange(&mut client, &mut exec, &mut wire, false);
    exchange(&mut client, &mut exec, &mut wire, true);
}
