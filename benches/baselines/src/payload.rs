//! The payload of each round trip and the check of its echo.
//!
//! Every round trip stamps its number into the payload (its first and last bytes and one
//! byte at a position that moves each round), so a reply left over from an earlier round, a
//! truncated reply or a server that does not copy the data is caught by the full comparison
//! the client makes after each round trip.

/// A reply that is not the payload that was sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EchoMismatch {
    #[error("round trip {round}: the reply has {got} bytes, {sent} were sent")]
    Length { round: u64, sent: usize, got: usize },
    #[error("round trip {round}: byte {offset} of the reply is {got:#04x}, {sent:#04x} was sent (the server does not echo faithfully)")]
    Content {
        round: u64,
        offset: usize,
        sent: u8,
        got: u8,
    },
}

/// Fills `buf` with a pattern that no zeroed or stale buffer has.
pub fn fill(buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
}

/// Stamps round `round` into the payload `buf` (a few byte writes, whatever its size).
pub fn stamp(buf: &mut [u8], round: u64) {
    let n = buf.len();
    if n == 0 {
        return;
    }
    let bytes = round.to_le_bytes();
    let k = n.min(bytes.len());
    buf[..k].copy_from_slice(&bytes[..k]);
    buf[n - k..].copy_from_slice(&bytes[..k]);
    let moving = (round.wrapping_mul(4099) % n as u64) as usize;
    buf[moving] = (round as u8) ^ 0xa5;
}

/// Checks that `got` is exactly `sent`.
///
/// # Errors
/// The first difference.
pub fn check_echo(sent: &[u8], got: &[u8], round: u64) -> Result<(), EchoMismatch> {
    if sent.len() != got.len() {
        return Err(EchoMismatch::Length {
            round,
            sent: sent.len(),
            got: got.len(),
        });
    }
    if sent == got {
        return Ok(());
    }
    let offset = sent.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
    Err(EchoMismatch::Content {
        round,
        offset,
        sent: sent[offset],
        got: got[offset],
    })
}

/// A server's fault injection for the tests: it flips one byte of the reply to request
/// number `at` (counted from 0 over the server's lifetime), so that the tests can check
/// that the client notices.
#[derive(Debug, Clone, Copy, Default)]
pub struct Corrupter {
    at: Option<u64>,
    served: u64,
}

impl Corrupter {
    pub fn new(at: Option<u64>) -> Self {
        Self { at, served: 0 }
    }

    /// Whether the next reply is the one to corrupt.
    pub fn is_armed(&self) -> bool {
        self.at == Some(self.served)
    }

    /// Called once per reply, before it goes out.
    pub fn apply(&mut self, reply: &mut [u8]) {
        if self.at == Some(self.served) {
            if let Some(b) = reply.last_mut() {
                *b ^= 0xff;
            }
        }
        self.served += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_differ_per_round() {
        for size in [1usize, 3, 8, 64, 4096] {
            let mut a = vec![0; size];
            fill(&mut a);
            let mut b = a.clone();
            stamp(&mut a, 1);
            stamp(&mut b, 2);
            assert_ne!(a, b, "size {size}");
            assert!(check_echo(&a, &a, 1).is_ok());
            assert!(check_echo(&a, &b, 2).is_err());
        }
    }

    #[test]
    fn mismatch_reports() {
        assert_eq!(
            check_echo(&[1, 2, 3], &[1, 9, 3], 7),
            Err(EchoMismatch::Content {
                round: 7,
                offset: 1,
                sent: 2,
                got: 9
            })
        );
        assert!(matches!(
            check_echo(&[1, 2], &[1], 0),
            Err(EchoMismatch::Length { .. })
        ));
    }

    #[test]
    fn corrupter_flips_one_reply() {
        let mut c = Corrupter::new(Some(1));
        let mut r = [0u8; 4];
        c.apply(&mut r);
        assert_eq!(r, [0; 4]);
        c.apply(&mut r);
        assert_eq!(r, [0, 0, 0, 0xff]);
        c.apply(&mut r);
        assert_eq!(r, [0, 0, 0, 0xff]);
    }
}
