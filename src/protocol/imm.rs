//! The 32-bit immediates of the two WRITE_WITH_IMM of an invocation.
//!
//! ```text
//!  request   31 | 30 ............. 16 | 15 ........... 0
//!             0 | id tag (id & 0x7fff) |   slot index
//!
//!  response  31 | 30 ..... 24 | 23 ... 16 | 15 ........... 0
//!             1 | id & 0x7f   |  status   |   slot index
//! ```
//!
//! The receiver learns the slot from the immediate alone, without touching memory. The id
//! tag then lets it check, still without touching memory, that the completion belongs to
//! the invocation it expects in that slot (the client), or that the header it is about to
//! trust was written by the same WRITE as this completion (the executor). The top bit tells
//! the two directions apart, so a request immediate can never be taken for a response.

use thiserror::Error;

use super::status::{Status, UnknownStatus};

/// Bit 31: set on responses, clear on requests.
pub const RESPONSE_BIT: u32 = 1 << 31;
/// Bits of the invocation id carried by a request immediate.
pub const REQUEST_TAG_MASK: u64 = 0x7fff;
/// Bits of the invocation id carried by a response immediate.
pub const RESPONSE_TAG_MASK: u64 = 0x7f;

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

/// The immediate of a request WRITE_WITH_IMM: slot index and the low 15 bits of the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestImm {
    slot: u16,
    tag: u16,
}

impl RequestImm {
    /// The immediate for invocation `id` in request slot `slot`.
    pub const fn new(slot: u16, id: u64) -> RequestImm {
        RequestImm {
            slot,
            tag: (id & REQUEST_TAG_MASK) as u16,
        }
    }

    /// The request slot index.
    pub const fn slot(self) -> u16 {
        self.slot
    }

    /// The low 15 bits of the invocation id.
    pub const fn tag(self) -> u16 {
        self.tag
    }

    /// Whether `id` agrees with the tag.
    pub const fn matches(self, id: u64) -> bool {
        (id & REQUEST_TAG_MASK) as u16 == self.tag
    }

    /// The 32-bit wire value.
    pub const fn encode(self) -> u32 {
        (self.tag as u32) << 16 | self.slot as u32
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
        Ok(RequestImm {
            slot: imm as u16,
            tag: ((imm >> 16) & 0x7fff) as u16,
        })
    }
}

/// The immediate of a response WRITE_WITH_IMM: slot index, status and the low 7 bits of
/// the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResponseImm {
    slot: u16,
    status: Status,
    tag: u8,
}

impl ResponseImm {
    /// The immediate answering invocation `id` in response slot `slot` with `status`.
    pub const fn new(slot: u16, id: u64, status: Status) -> ResponseImm {
        ResponseImm {
            slot,
            status,
            tag: (id & RESPONSE_TAG_MASK) as u8,
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

    /// The low 7 bits of the invocation id.
    pub const fn tag(self) -> u8 {
        self.tag
    }

    /// Whether `id` agrees with the tag.
    pub const fn matches(self, id: u64) -> bool {
        (id & RESPONSE_TAG_MASK) as u8 == self.tag
    }

    /// The 32-bit wire value.
    pub const fn encode(self) -> u32 {
        RESPONSE_BIT
            | (self.tag as u32) << 24
            | (self.status.code() as u32) << 16
            | self.slot as u32
    }

    /// Decodes a response immediate.
    ///
    /// # Errors
    /// [`ImmError::WrongDirection`] when bit 31 is clear (a request immediate),
    /// [`ImmError::UnknownStatus`] when the status byte is not a known status.
    pub const fn decode(imm: u32) -> Result<ResponseImm, ImmError> {
        if imm & RESPONSE_BIT == 0 {
            return Err(ImmError::WrongDirection {
                imm,
                expected: "response",
                found: "request",
            });
        }
        let status = match Status::from_code((imm >> 16) & 0xff) {
            Ok(s) => s,
            Err(source) => return Err(ImmError::UnknownStatus { imm, source }),
        };
        Ok(ResponseImm {
            slot: imm as u16,
            status,
            tag: ((imm >> 24) & 0x7f) as u8,
        })
    }

    /// The slot index and id tag of a response immediate whose status byte may be unknown,
    /// or `None` for a request immediate. Lets a client find the invocation a response
    /// with an unknown status belongs to, so that it can fail that invocation.
    pub const fn peek(imm: u32) -> Option<(u16, u8)> {
        if imm & RESPONSE_BIT == 0 {
            None
        } else {
            Some((imm as u16, ((imm >> 24) & 0x7f) as u8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let imm = RequestImm::new(0x1234, 0xdead_beef_0000_5678);
        assert_eq!(imm.encode(), 0x5678_1234);
        assert_eq!(RequestImm::decode(0x5678_1234), Ok(imm));
        assert!(imm.matches(0x5678) && imm.matches(0x1_5678) && !imm.matches(0x5679));
        // Bit 15 of the id is not carried: it would collide with the direction bit.
        let imm = RequestImm::new(65535, 0xffff);
        assert_eq!(imm.encode(), 0x7fff_ffff);
        assert_eq!(imm.tag(), 0x7fff);
    }

    #[test]
    fn response_layout() {
        let imm = ResponseImm::new(0xbeef, 0x1_0000_00ff, Status::FunctionPanicked);
        assert_eq!(imm.encode(), 0x8000_0000 | 0x7f << 24 | 6 << 16 | 0xbeef);
        assert_eq!(ResponseImm::decode(imm.encode()), Ok(imm));
        assert_eq!(ResponseImm::peek(imm.encode()), Some((0xbeef, 0x7f)));
        assert!(imm.matches(0xff) && imm.matches(0x7f) && !imm.matches(0x7e));
    }

    #[test]
    fn examples_of_docs_protocol_md() {
        assert_eq!(RequestImm::new(3, 0x1_2345).encode(), 0x2345_0003);
        assert_eq!(ResponseImm::new(3, 130, Status::Ok).encode(), 0x8200_0003);
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
                for status in Status::ALL {
                    let r = ResponseImm::new(slot, id, status);
                    assert_eq!(ResponseImm::decode(r.encode()), Ok(r));
                    assert_eq!((r.slot(), r.status()), (slot, status));
                    assert!(r.matches(id));
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
        }
    }
}
