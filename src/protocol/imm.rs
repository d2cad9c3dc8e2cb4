//! The 32-bit immediates of the two WRITE_WITH_IMM of an invocation.
//!
//! ```text
//!               31  30   29 ............ 16   15 ........ 8   7 ......... 0
//!  request       0   0   id & 0x3fff          slot index (16 bits)
//!  request       0   1   id & 0x3fff          function        slot
//!  response      1   0   id&0x3f | status     slot index (16 bits)
//!  response      1   1   id & 0x3fff          status          slot
//! ```
//!
//! (Full-form response: bits 29–24 are `id & 0x3f`, bits 23–16 the status.)
//!
//! The receiver learns the slot from the immediate alone, without touching memory. The id
//! tag then lets it check, still without touching memory, that the completion belongs to
//! the invocation it expects in that slot (the client), or that the header it is about to
//! trust was written by the same WRITE as this completion (the executor). The top bit tells
//! the two directions apart, so a request immediate can never be taken for a response.
//!
//! Bit 30 marks the **compact form**: the WRITE carries no header, only the payload (or
//! output), written at offset 64 of the slot, and its length is the completion's byte
//! count. Everything the header would say is in the immediate (slot and function or
//! status), so the receiver reads no byte of the slot before it hands the payload on: a
//! function that does not look at its input, and a caller that does not look at the
//! output, never pull the slot's cache lines across. It needs a slot index and a function
//! index below 256, and no function error code (those answers take the full form).

use thiserror::Error;

use super::header::HEADER_LEN;
use super::status::{Status, UnknownStatus};

/// Bit 31: set on responses, clear on requests.
pub const RESPONSE_BIT: u32 = 1 << 31;
/// Bit 30: the compact form (no header in the slot).
pub const COMPACT_BIT: u32 = 1 << 30;
/// Bits of the invocation id carried by a request immediate, and by a compact response.
pub const REQUEST_TAG_MASK: u64 = 0x3fff;
/// Bits of the invocation id carried by a full-form response immediate.
pub const RESPONSE_TAG_MASK: u64 = 0x3f;
/// The largest slot index and function index the compact form carries.
pub const COMPACT_MAX_INDEX: u32 = 0xff;

/// Why an immediate could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ImmError {
    /// A response immediate where a request was expected, or the reverse.
    #[error("immediate {imm:#010x} is a {found}, expected a {expected}")]
    WrongDirection {
        imm: u32,
        expected: &'static str,
        found: &'static str,
    },
    /// The status byte of a response immediate is not a known status.
    #[error("immediate {imm:#010x}: {source}")]
    UnknownStatus {
        imm: u32,
        #[source]
        source: UnknownStatus,
    },
}

/// The bytes of a slot that the WRITE announced by `imm` covered, given the completion's
/// byte count: `0..byte_len` in the full form, `64..64 + byte_len` in the compact form.
/// The same for both directions.
#[inline]
pub const fn written_extent(imm: u32, byte_len: usize) -> std::ops::Range<usize> {
    if imm & COMPACT_BIT != 0 {
        HEADER_LEN..HEADER_LEN + byte_len
    } else {
        0..byte_len
    }
}

/// The immediate of a request WRITE_WITH_IMM: slot index, the low 14 bits of the id, and
/// in the compact form the function index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestImm {
    slot: u16,
    tag: u16,
    /// The function index of a compact request; `None` in the full form.
    function: Option<u8>,
}

impl RequestImm {
    /// The full-form immediate for invocation `id` in request slot `slot` (the header in
    /// the slot carries the rest).
    pub const fn new(slot: u16, id: u64) -> RequestImm {
        RequestImm {
            slot,
            tag: (id & REQUEST_TAG_MASK) as u16,
            function: None,
        }
    }

    /// The compact-form immediate of invocation `id` of function `function` in `slot`
    /// (no header: the payload is the whole WRITE).
    pub const fn compact(slot: u8, function: u8, id: u64) -> RequestImm {
        RequestImm {
            slot: slot as u16,
            tag: (id & REQUEST_TAG_MASK) as u16,
            function: Some(function),
        }
    }

    /// The request slot index.
    pub const fn slot(self) -> u16 {
        self.slot
    }

    /// The low 14 bits of the invocation id.
    pub const fn tag(self) -> u16 {
        self.tag
    }

    /// The function index of a compact request; `None` in the full form.
    pub const fn function(self) -> Option<u8> {
        self.function
    }

    /// Whether `id` agrees with the tag.
    pub const fn matches(self, id: u64) -> bool {
        (id & REQUEST_TAG_MASK) as u16 == self.tag
    }

    /// The 32-bit wire value.
    pub const fn encode(self) -> u32 {
        let tag = (self.tag as u32) << 16;
        match self.function {
            None => tag | self.slot as u32,
            Some(f) => COMPACT_BIT | tag | (f as u32) << 8 | (self.slot as u32 & 0xff),
        }
    }

    /// Decodes a request immediate.
    ///
    /// # Errors
    /// [`ImmError::WrongDirection`] when bit 31 is set (a response immediate).
    pub const fn decode(imm: u32) -> Result<RequestImm, ImmError> {
        if imm & RESPONSE_BIT != 0 {
            return Err(ImmError::WrongDirection {
                imm,
                expected: "request",
                found: "response",
            });
        }
        let tag = ((imm >> 16) & REQUEST_TAG_MASK as u32) as u16;
        if imm & COMPACT_BIT != 0 {
            Ok(RequestImm {
                slot: (imm & 0xff) as u16,
                tag,
                function: Some((imm >> 8) as u8),
            })
        } else {
            Ok(RequestImm {
                slot: imm as u16,
                tag,
                function: None,
            })
        }
    }
}

/// The immediate of a response WRITE_WITH_IMM: slot index, status and the low bits of the
/// id (6 in the full form, 14 in the compact form).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResponseImm {
    slot: u16,
    status: Status,
    tag: u16,
    compact: bool,
}

impl ResponseImm {
    /// The full-form immediate answering invocation `id` in response slot `slot` with
    /// `status` (the header in the slot carries the rest).
    pub const fn new(slot: u16, id: u64, status: Status) -> ResponseImm {
        ResponseImm {
            slot,
            status,
            tag: (id & RESPONSE_TAG_MASK) as u16,
            compact: false,
        }
    }

    /// The compact-form immediate (no header: the output is the whole WRITE).
    pub const fn compact(slot: u8, id: u64, status: Status) -> ResponseImm {
        ResponseImm {
            slot: slot as u16,
            status,
            tag: (id & REQUEST_TAG_MASK) as u16,
            compact: true,
        }
    }

    /// The response slot index (the request's slot).
    pub const fn slot(self) -> u16 {
        self.slot
    }

    /// The status of the invocation.
    pub const fn status(self) -> Status {
        self.status
    }

    /// The low bits of the invocation id (6, or 14 in the compact form).
    pub const fn tag(self) -> u16 {
        self.tag
    }

    /// Whether this is the compact form.
    pub const fn is_compact(self) -> bool {
        self.compact
    }

    /// Whether `id` agrees with the tag.
    pub const fn matches(self, id: u64) -> bool {
        tag_matches(self.compact, self.tag, id)
    }

    /// The 32-bit wire value.
    pub const fn encode(self) -> u32 {
        let status = self.status.code() as u32;
        if self.compact {
            RESPONSE_BIT
                | COMPACT_BIT
                | (self.tag as u32) << 16
                | status << 8
                | (self.slot as u32 & 0xff)
        } else {
            RESPONSE_BIT | (self.tag as u32) << 24 | status << 16 | self.slot as u32
        }
    }

    /// Decodes a response immediate.
    ///
    /// # Errors
    /// [`ImmError::WrongDirection`] when bit 31 is clear (a request immediate),
    /// [`ImmError::UnknownStatus`] when the status byte is not a known status.
    pub const fn decode(imm: u32) -> Result<ResponseImm, ImmError> {
        let Some(peeked) = ResponseImm::peek(imm) else {
            return Err(ImmError::WrongDirection {
                imm,
                expected: "response",
                found: "request",
            });
        };
        let code = if peeked.compact {
            (imm >> 8) & 0xff
        } else {
            (imm >> 16) & 0xff
        };
        let status = match Status::from_code(code) {
            Ok(s) => s,
            Err(source) => return Err(ImmError::UnknownStatus { imm, source }),
        };
        Ok(ResponseImm {
            slot: peeked.slot,
            status,
            tag: peeked.tag,
            compact: peeked.compact,
        })
    }

    /// The slot index, id tag and form of a response immediate whose status byte may be
    /// unknown, or `None` for a request immediate. Lets a client find the invocation a
    /// response with an unknown status belongs to, so that it can fail that invocation.
    pub const fn peek(imm: u32) -> Option<PeekedResponse> {
        if imm & RESPONSE_BIT == 0 {
            None
        } else if imm & COMPACT_BIT != 0 {
            Some(PeekedResponse {
                slot: (imm & 0xff) as u16,
                tag: ((imm >> 16) & REQUEST_TAG_MASK as u32) as u16,
                compact: true,
            })
        } else {
            Some(PeekedResponse {
                slot: imm as u16,
                tag: ((imm >> 24) & RESPONSE_TAG_MASK as u32) as u16,
                compact: false,
            })
        }
    }
}

/// What a response immediate says before its status is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeekedResponse {
    pub slot: u16,
    pub tag: u16,
    pub compact: bool,
}

impl PeekedResponse {
    /// Whether `id` agrees with the tag.
    pub const fn matches(self, id: u64) -> bool {
        tag_matches(self.compact, self.tag, id)
    }
}

const fn tag_matches(compact: bool, tag: u16, id: u64) -> bool {
    let mask = if compact {
        REQUEST_TAG_MASK
    } else {
        RESPONSE_TAG_MASK
    };
    (id & mask) as u16 == tag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let imm = RequestImm::new(0x1234, 0xdead_beef_0000_5678);
        assert_eq!(imm.encode(), 0x1678_1234);
        assert_eq!(RequestImm::decode(0x1678_1234), Ok(imm));
        assert!(imm.matches(0x1678) && imm.matches(0x1_5678) && !imm.matches(0x1679));
        // Bits 14 and 15 of the id are not carried: they would collide with the direction
        // and form bits.
        let imm = RequestImm::new(65535, 0xffff);
        assert_eq!(imm.encode(), 0x3fff_ffff);
        assert_eq!(imm.tag(), 0x3fff);
        assert_eq!(imm.function(), None);
        // Compact: function in bits 8-15, slot in bits 0-7.
        let imm = RequestImm::compact(0x12, 0x34, 0x5678);
        assert_eq!(imm.encode(), 0x4000_0000 | 0x1678 << 16 | 0x3412);
        assert_eq!(RequestImm::decode(imm.encode()), Ok(imm));
        assert_eq!((imm.slot(), imm.function()), (0x12, Some(0x34)));
    }

    #[test]
    fn response_layout() {
        let imm = ResponseImm::new(0xbeef, 0x1_0000_00ff, Status::FunctionPanicked);
        assert_eq!(imm.encode(), 0x8000_0000 | 0x3f << 24 | 6 << 16 | 0xbeef);
        assert_eq!(ResponseImm::decode(imm.encode()), Ok(imm));
        let peeked = ResponseImm::peek(imm.encode()).unwrap();
        assert_eq!(
            (peeked.slot, peeked.tag, peeked.compact),
            (0xbeef, 0x3f, false)
        );
        assert!(imm.matches(0xff) && imm.matches(0x3f) && !imm.matches(0x3e));
        // Compact: 14-bit tag in bits 16-29, status in bits 8-15, slot in bits 0-7.
        let imm = ResponseImm::compact(0xef, 0x1_0000_00ff, Status::FunctionPanicked);
        assert_eq!(imm.encode(), 0xc000_0000 | 0xff << 16 | 6 << 8 | 0xef);
        assert_eq!(ResponseImm::decode(imm.encode()), Ok(imm));
        let peeked = ResponseImm::peek(imm.encode()).unwrap();
        assert_eq!(
            (peeked.slot, peeked.tag, peeked.compact),
            (0xef, 0xff, true)
        );
        assert!(imm.matches(0x40ff) && !imm.matches(0x7f) && peeked.matches(0xff));
    }

    #[test]
    fn written_extents() {
        assert_eq!(written_extent(RequestImm::new(3, 1).encode(), 80), 0..80);
        assert_eq!(
            written_extent(RequestImm::compact(3, 0, 1).encode(), 16),
            64..80
        );
        assert_eq!(
            written_extent(ResponseImm::compact(3, 1, Status::Ok).encode(), 0),
            64..64
        );
        assert_eq!(
            written_extent(ResponseImm::new(3, 1, Status::Ok).encode(), 64),
            0..64
        );
    }

    #[test]
    fn examples_of_docs_protocol_md() {
        assert_eq!(RequestImm::new(3, 0x1_2345).encode(), 0x2345_0003);
        assert_eq!(RequestImm::compact(3, 2, 0x1_2345).encode(), 0x6345_0203);
        assert_eq!(ResponseImm::new(3, 130, Status::Ok).encode(), 0x8200_0003);
        assert_eq!(
            ResponseImm::compact(3, 130, Status::Ok).encode(),
            0xc082_0003
        );
    }

    #[test]
    fn every_request_imm_round_trips() {
        for slot in [0u16, 1, 7, 255, 256, 65534, 65535] {
            for id in [
                1u64,
                0x7fff,
                0x8000,
                0xffff,
                0x1_0000,
                u32::MAX as u64,
                u64::MAX,
            ] {
                let imm = RequestImm::new(slot, id);
                let wire = imm.encode();
                assert_eq!(wire & RESPONSE_BIT, 0);
                assert_eq!(RequestImm::decode(wire), Ok(imm));
                assert_eq!(imm.slot(), slot);
                assert!(imm.matches(id));
                let compact = RequestImm::compact(slot as u8, 7, id);
                assert_eq!(RequestImm::decode(compact.encode()), Ok(compact));
                assert!(compact.matches(id) && compact.slot() == slot & 0xff);
                for status in Status::ALL {
                    let r = ResponseImm::new(slot, id, status);
                    assert_eq!(ResponseImm::decode(r.encode()), Ok(r));
                    assert_eq!((r.slot(), r.status()), (slot, status));
                    assert!(r.matches(id));
                    let c = ResponseImm::compact(slot as u8, id, status);
                    assert_eq!(ResponseImm::decode(c.encode()), Ok(c));
                    assert_eq!((c.slot(), c.status()), (slot & 0xff, status));
                    assert!(c.matches(id) && c.is_compact());
                }
            }
        }
    }

    #[test]
    fn directions_are_never_confused() {
        let req = RequestImm::new(3, 9).encode();
        let resp = ResponseImm::new(3, 9, Status::Ok).encode();
        assert!(matches!(
            ResponseImm::decode(req),
            Err(ImmError::WrongDirection { .. })
        ));
        assert!(matches!(
            RequestImm::decode(resp),
            Err(ImmError::WrongDirection { .. })
        ));
        assert_eq!(ResponseImm::peek(req), None);
        let compact = RequestImm::compact(3, 1, 9).encode();
        assert!(ResponseImm::decode(compact).is_err() && ResponseImm::peek(compact).is_none());
    }

    #[test]
    fn unknown_status_byte_is_an_error() {
        for code in 8..=255u32 {
            let wire = RESPONSE_BIT | code << 16 | 5;
            assert_eq!(
                ResponseImm::decode(wire),
                Err(ImmError::UnknownStatus {
                    imm: wire,
                    source: UnknownStatus { code }
                })
            );
            let compact = RESPONSE_BIT | COMPACT_BIT | code << 8 | 5;
            assert!(matches!(
                ResponseImm::decode(compact),
                Err(ImmError::UnknownStatus { .. })
            ));
            assert!(ResponseImm::peek(compact).is_some_and(|p| p.compact && p.slot == 5));
        }
    }
}
