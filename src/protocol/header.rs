//! The 64-byte headers at the start of request and response slots (little endian).
//!
//! ```text
//!  request slot                           response slot
//!  off  len  field                        off  len  field
//!    0    8  invocation id (u64)            0    8  invocation id (u64)
//!    8    4  function index (u32)           8    4  status (u32, < 256)
//!   12    4  payload length (u32)          12    4  output length (u32)
//!   16    4  flags (u32, none defined)     16    4  function error code (i32)
//!   20   44  reserved, zero                20   44  reserved, zero
//!   64    …  payload                       64    …  output
//! ```
//!
//! The header fills one cache line and the payload starts on the next one, 64-byte aligned
//! (so rkyv archives, which need 16, are aligned in place).

use thiserror::Error;

use super::status::{Status, UnknownStatus};

/// Bytes of a request or response header; the payload or output starts at this offset.
pub const HEADER_LEN: usize = 64;

/// Request flags this version defines: none. A request with any flag set is refused, so
/// that a later version can give them meaning.
pub const KNOWN_REQUEST_FLAGS: u32 = 0;

/// Offset of the first reserved byte in both headers.
pub const RESERVED_OFFSET: usize = 20;

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// A reserved byte is not zero.
    #[error("reserved header byte at offset {offset} is {value:#04x}, not zero")]
    ReservedNotZero { offset: usize, value: u8 },
    /// A request carries flags this version does not define.
    #[error("unknown request flags {flags:#010x}")]
    UnknownFlags { flags: u32 },
    /// A response carries a status this version does not define.
    #[error(transparent)]
    UnknownStatus(#[from] UnknownStatus),
}

/// The header of a request slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    /// Invocation id: at least 1, strictly increasing per client connection.
    pub id: u64,
    /// Index into the connection's function table.
    pub function: u32,
    /// Payload bytes after the header.
    pub payload_len: u32,
    /// Request flags (none defined: must be zero).
    pub flags: u32,
}

/// The header of a response slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResponseHeader {
    /// The invocation id of the request this answers.
    pub id: u64,
    /// Outcome of the invocation.
    pub status: Status,
    /// Output bytes after the header.
    pub output_len: u32,
    /// The function's error code (its negative return value) when `status` is
    /// [`Status::FunctionError`]; zero otherwise.
    pub error_code: i32,
}

pub(crate) fn get_u32(h: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&h[at..at + 4]);
    u32::from_le_bytes(b)
}

pub(crate) fn get_u64(h: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The header at the start of `slot`, if `slot` is long enough to hold one.
pub(crate) fn header_of(slot: &[u8]) -> Option<&[u8; HEADER_LEN]> {
    slot.get(..HEADER_LEN).and_then(|h| h.try_into().ok())
}

fn check_reserved(h: &[u8; HEADER_LEN]) -> Result<(), HeaderError> {
    match h[RESERVED_OFFSET..].iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(HeaderError::ReservedNotZero {
            offset: RESERVED_OFFSET + i,
            value: h[RESERVED_OFFSET + i],
        }),
    }
}

impl RequestHeader {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&self.id.to_le_bytes());
        h[8..12].copy_from_slice(&self.function.to_le_bytes());
        h[12..16].copy_from_slice(&self.payload_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.flags.to_le_bytes());
        h
    }

    /// Decodes a request header. Checks the reserved bytes and the flags; the id, function
    /// and length are checked against the connection by
    /// [`ExecutorConnection::on_request`](super::ExecutorConnection::on_request).
    ///
    /// # Errors
    /// [`HeaderError::ReservedNotZero`], [`HeaderError::UnknownFlags`].
    pub fn decode(h: &[u8; HEADER_LEN]) -> Result<RequestHeader, HeaderError> {
        let header = RequestHeader {
            id: get_u64(h, 0),
            function: get_u32(h, 8),
            payload_len: get_u32(h, 12),
            flags: get_u32(h, 16),
        };
        if header.flags & !KNOWN_REQUEST_FLAGS != 0 {
            return Err(HeaderError::UnknownFlags {
                flags: header.flags,
            });
        }
        check_reserved(h)?;
        Ok(header)
    }
}

impl ResponseHeader {
    /// The 64 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&self.id.to_le_bytes());
        h[8..12].copy_from_slice(&(self.status.code() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&self.output_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.error_code.to_le_bytes());
        h
    }

    /// Decodes a response header. Checks the status code and the reserved bytes; the id and
    /// the output length are checked against the connection by
    /// [`ClientConnection::on_response`](super::ClientConnection::on_response).
    ///
    /// # Errors
    /// [`HeaderError::UnknownStatus`], [`HeaderError::ReservedNotZero`].
    pub fn decode(h: &[u8; HEADER_LEN]) -> Result<ResponseHeader, HeaderError> {
        let status = Status::from_code(get_u32(h, 8))?;
        check_reserved(h)?;
        Ok(ResponseHeader {
            id: get_u64(h, 0),
            status,
            output_len: get_u32(h, 12),
            error_code: get_u32(h, 16) as i32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        let h = RequestHeader {
            id: 0x0102_0304_0506_0708,
            function: 0x0a0b_0c0d,
            payload_len: 0x1122_3344,
            flags: 0,
        };
        let b = h.encode();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[8..12], &[0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(&b[12..16], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[16..64], &[0u8; 48][..]);
        assert_eq!(RequestHeader::decode(&b), Ok(h));
    }

    #[test]
    fn response_bytes() {
        let h = ResponseHeader {
            id: u64::MAX - 1,
            status: Status::FunctionError,
            output_len: 300,
            error_code: -22,
        };
        let b = h.encode();
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(&b[12..16], &[44, 1, 0, 0]);
        assert_eq!(&b[16..20], &(-22i32).to_le_bytes());
        assert_eq!(ResponseHeader::decode(&b), Ok(h));
    }

    #[test]
    fn refusals() {
        let mut b = RequestHeader {
            id: 1,
            function: 0,
            payload_len: 0,
            flags: 0,
        }
        .encode();
        b[63] = 1;
        assert_eq!(
            RequestHeader::decode(&b),
            Err(HeaderError::ReservedNotZero {
                offset: 63,
                value: 1
            })
        );
        b[63] = 0;
        b[16] = 0x80;
        assert_eq!(
            RequestHeader::decode(&b),
            Err(HeaderError::UnknownFlags { flags: 0x80 })
        );
        let mut r = ResponseHeader {
            id: 1,
            status: Status::Ok,
            output_len: 0,
            error_code: 0,
        }
        .encode();
        r[20] = 0xff;
        assert!(matches!(
            ResponseHeader::decode(&r),
            Err(HeaderError::ReservedNotZero { offset: 20, .. })
        ));
        r[20] = 0;
        r[9] = 1; // status 256
        assert_eq!(
            ResponseHeader::decode(&r),
            Err(HeaderError::UnknownStatus(UnknownStatus { code: 256 }))
        );
        assert!(header_of(&[0u8; 63]).is_none());
        assert!(header_of(&[0u8; 64]).is_some());
    }
}
