//! Archiving into a fixed byte slice, and validating an archive in place: no allocation.

use std::any::TypeId;
use std::error::Error;
use std::fmt;
use std::mem::MaybeUninit;

use rkyv::api::low::{self, LowSerializer, LowValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{Failure, Source, Trace};
use rkyv::ser::allocator::SubAllocator;
use rkyv::ser::{Positional, Writer};
use rkyv::{Portable, Serialize};

/// Alignment an archive needs at its start: [`encode`] lays it out relative to the start of
/// the buffer, and [`decode`] refuses a buffer that starts less aligned (rkyv's own aligned
/// buffers use the same 16). Every rafi slot payload is at least this aligned.
pub const ALIGN: usize = 16;

/// Bytes of stack scratch space that [`encode`] gives rkyv (for the resolvers of
/// collections: e.g. 8 bytes per element of a `Vec<String>`, nothing for a `Vec<f64>`).
/// Archiving an output that needs more fails with [`EncodeError::Other`].
pub const SCRATCH_LEN: usize = 4096;

/// The serializer [`encode`] uses; an output type `Out` must be
/// `for<'a> rkyv::Serialize<Serializer<'a>>`, which `#[derive(rkyv::Serialize)]` gives any
/// type whose fields need no shared-pointer deduplication (`Rc`/`Arc`).
pub type Serializer<'a> = LowSerializer<SliceWriter<'a>, SubAllocator<'a>, EncodeError>;

/// The validator [`decode`] uses; an archived type `A` must be
/// `for<'a> CheckBytes<Validator<'a>>`, which `#[derive(rkyv::Archive)]` gives (rkyv's
/// `bytecheck` feature is on).
pub type Validator<'a> = LowValidator<'a, Failure>;

/// Why a value could not be archived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EncodeError {
    /// The archive does not fit in the output buffer.
    OutputTooSmall,
    /// Any other failure: the scratch space ran out ([`SCRATCH_LEN`]), or a `Serialize`
    /// implementation failed.
    Other,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::OutputTooSmall => "the archive does not fit in the output buffer",
            EncodeError::Other => "the value could not be archived (scratch space exhausted?)",
        })
    }
}

impl Error for EncodeError {}

impl Trace for EncodeError {
    fn trace<R>(self, _trace: R) -> Self
    where
        R: fmt::Debug + fmt::Display + Send + Sync + 'static,
    {
        self
    }
}

impl Source for EncodeError {
    fn new<T: Error + Send + Sync + 'static>(_source: T) -> Self {
        if TypeId::of::<T>() == TypeId::of::<Overflow>() {
            EncodeError::OutputTooSmall
        } else {
            EncodeError::Other
        }
    }
}

/// Why bytes could not be viewed as an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// The buffer does not start at a multiple of [`ALIGN`].
    Misaligned {
        /// The buffer's address modulo [`ALIGN`].
        offset: usize,
    },
    /// The bytes are not a valid archive of the type (bytecheck failed).
    Invalid,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Misaligned { offset } => write!(
                f,
                "the archive starts {offset} bytes past a {ALIGN}-byte boundary"
            ),
            DecodeError::Invalid => f.write_str("the bytes are not a valid archive"),
        }
    }
}

impl Error for DecodeError {}

/// The writer's overflow, recognised by [`EncodeError`]'s `Source` impl.
#[derive(Debug)]
struct Overflow;

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("output buffer full")
    }
}

impl Error for Overflow {}

/// An rkyv writer into a fixed, caller-owned byte slice.
#[derive(Debug)]
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceWriter<'a> {
    /// A writer that starts at the beginning of `buf`.
    pub fn new(buf: &'a mut [u8]) -> SliceWriter<'a> {
        SliceWriter { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Positional for SliceWriter<'_> {
    fn pos(&self) -> usize {
        self.len
    }
}

impl<E: Source> Writer<E> for SliceWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self
            .len
            .checked_add(bytes.len())
            .ok_or_else(|| E::new(Overflow))?;
        let dst = self
            .buf
            .get_mut(self.len..end)
            .ok_or_else(|| E::new(Overflow))?;
        dst.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

/// Archives `value` at the start of `out` and returns the archive's length; `out` should
/// start at an [`ALIGN`]-byte boundary for [`decode`] to accept it there. Allocates
/// nothing (the scratch space is [`SCRATCH_LEN`] bytes of stack).
///
/// # Errors
/// [`EncodeError::OutputTooSmall`] when the archive does not fit in `out`;
/// [`EncodeError::Other`] when the scratch space runs out.
pub fn encode<T>(value: &T, out: &mut [u8]) -> Result<usize, EncodeError>
where
    T: for<'a> Serialize<Serializer<'a>>,
{
    let mut scratch = [MaybeUninit::<u8>::uninit(); SCRATCH_LEN];
    let writer = low::to_bytes_in_with_alloc::<_, _, EncodeError>(
        value,
        SliceWriter::new(out),
        SubAllocator::new(&mut scratch),
    )?;
    Ok(writer.len)
}

/// Views `bytes` (an archive made by [`encode`], exactly as long as it returned) as an
/// `A`, after checking it in place with bytecheck: no copy, no allocation. `A` is the
/// archived type, e.g. `rkyv::Archived<MyOutput>`.
///
/// # Errors
/// [`DecodeError::Misaligned`] when `bytes` does not start at an [`ALIGN`]-byte boundary;
/// [`DecodeError::Invalid`] when the bytes are not a valid archive of `A`.
pub fn decode<A>(bytes: &[u8]) -> Result<&A, DecodeError>
where
    A: Portable + for<'a> CheckBytes<Validator<'a>>,
{
    let offset = bytes.as_ptr() as usize % ALIGN;
    if offset != 0 {
        return Err(DecodeError::Misaligned { offset });
    }
    low::access::<A, Failure>(bytes).map_err(|_| DecodeError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkyv::util::Align;
    use rkyv::{Archive, Archived};

    #[derive(Archive, Serialize, Debug, PartialEq)]
    struct Batch {
        id: u32,
        values: Vec<f64>,
        label: String,
    }

    fn batch() -> Batch {
        Batch {
            id: 7,
            values: vec![1.5, -2.0, 3.25],
            label: "options".into(),
        }
    }

    #[test]
    fn round_trip_in_a_fixed_buffer() {
        let mut buf = Align([0u8; 256]);
        let n = encode(&batch(), &mut buf[..]).unwrap();
        let a = decode::<Archived<Batch>>(&buf[..n]).unwrap();
        assert_eq!(a.id, 7);
        let values: Vec<f64> = a.values.iter().map(|v| v.to_native()).collect();
        assert_eq!(values, [1.5, -2.0, 3.25]);
        assert_eq!(a.label.as_str(), "options");
    }

    #[test]
    fn too_small_output_is_reported_as_such() {
        let mut buf = Align([0u8; 256]);
        let full = encode(&batch(), &mut buf[..]).unwrap();
        for cap in 0..full {
            assert_eq!(
                encode(&batch(), &mut buf[..cap]),
                Err(EncodeError::OutputTooSmall),
                "capacity {cap}"
            );
        }
    }

    #[test]
    fn misaligned_and_corrupt_archives_are_refused() {
        let mut buf = Align([0u8; 272]);
        let n = encode(&batch(), &mut buf[..256]).unwrap();
        // The same bytes one byte further on.
        buf.copy_within(0..n, 1);
        assert_eq!(
            decode::<Archived<Batch>>(&buf[1..n + 1]).err(),
            Some(DecodeError::Misaligned { offset: 1 })
        );
        assert!(matches!(
            decode::<Archived<Batch>>(&buf[16..16 + n]),
            Err(DecodeError::Invalid)
        ));
        // Truncations and every single-byte corruption: an error or a valid view, never UB.
        let mut good = Align([0u8; 256]);
        let n = encode(&batch(), &mut good[..]).unwrap();
        for len in 0..n {
            assert!(decode::<Archived<Batch>>(&good[..len]).is_err() || len == n);
        }
        for i in 0..n {
            let mut bad = Align([0u8; 256]);
            bad[..n].copy_from_slice(&good[..n]);
            bad[i] ^= 0xff;
            let _ = decode::<Archived<Batch>>(&bad[..n]);
        }
    }
}
