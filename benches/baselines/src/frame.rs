//! Length-prefixed frames over a TCP stream, read with blocking or busy-polled reads.
//!
//! A frame is an 8-byte little-endian payload length, then the payload. Reads take as much
//! as the socket has (one `read` for a small frame, not one for the header and one for the
//! payload); a request/response protocol never has more than one frame in flight.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Bytes of the length prefix.
pub const HEADER: usize = 8;

/// How a side waits for data.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Poll {
    /// Blocking reads: the thread sleeps in the kernel until data arrives.
    Block,
    /// Non-blocking reads spun in a loop: the thread never sleeps.
    Busy,
}

impl Poll {
    pub fn name(self) -> &'static str {
        match self {
            Poll::Block => "block",
            Poll::Busy => "busy",
        }
    }
}

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(
        "the {peer} closed the connection (it exited or crashed; its message, if any, is above)"
    )]
    Closed { peer: &'static str },
    #[error("no data from the {peer} for {0:?} (it hangs or is stopped)", STALL)]
    Stalled { peer: &'static str },
    #[error("a frame of {len} bytes from the {peer}; at most {max} were expected")]
    TooLong {
        peer: &'static str,
        len: u64,
        max: usize,
    },
    #[error("talking to the {peer}")]
    Io {
        peer: &'static str,
        source: std::io::Error,
    },
}

/// A side that sees no data for this long gives up.
pub const STALL: Duration = Duration::from_secs(30);
/// Busy loops look at the clock once per this many empty polls.
const SPINS_PER_CLOCK_READ: u32 = 1024;

/// One end of a framed connection.
#[derive(Debug)]
pub struct FramedStream {
    stream: TcpStream,
    poll: Poll,
    /// Who is on the other end, for messages.
    peer: &'static str,
}

impl FramedStream {
    /// Sets TCP_NODELAY (every frame goes out at once) and the wait mode.
    ///
    /// # Errors
    /// When the socket options cannot be set.
    pub fn new(stream: TcpStream, poll: Poll, peer: &'static str) -> Result<Self, FrameError> {
        let io = |source| FrameError::Io { peer, source };
        stream.set_nodelay(true).map_err(io)?;
        match poll {
            Poll::Block => stream.set_read_timeout(Some(STALL)).map_err(io)?,
            Poll::Busy => stream.set_nonblocking(true).map_err(io)?,
        }
        Ok(Self { stream, poll, peer })
    }

    /// Writes the header for `buf[HEADER..]` into `buf[..HEADER]`.
    pub fn put_header(buf: &mut [u8]) {
        let len = (buf.len() - HEADER) as u64;
        buf[..HEADER].copy_from_slice(&len.to_le_bytes());
    }

    /// Writes a whole frame (`frame[..HEADER]` must hold its header): one `write` call when
    /// the socket takes it all.
    ///
    /// # Errors
    /// When the peer is gone.
    pub fn write_frame(&mut self, frame: &[u8]) -> Result<(), FrameError> {
        let mut done = 0;
        let mut since: Option<Instant> = None;
        let mut spins = 0u32;
        while done < frame.len() {
            match self.stream.write(&frame[done..]) {
                Ok(0) => return Err(FrameError::Closed { peer: self.peer }),
                Ok(n) => {
                    done += n;
                    since = None;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.spin(&mut since, &mut spins)?,
                Err(e) => return Err(self.io_error(e)),
            }
        }
        Ok(())
    }

    /// Reads one frame into `buf` (header included) and returns the payload length; the
    /// payload is `buf[HEADER..HEADER + len]`.
    ///
    /// # Errors
    /// [`FrameError::Closed`] when the peer closed the connection before a whole frame,
    /// [`FrameError::TooLong`] for a frame larger than `buf`.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> Result<usize, FrameError> {
        let max = buf.len() - HEADER;
        let mut have = 0;
        let mut want = HEADER;
        let mut since: Option<Instant> = None;
        let mut spins = 0u32;
        while have < want {
            match self.stream.read(&mut buf[have..]) {
                Ok(0) => return Err(FrameError::Closed { peer: self.peer }),
                Ok(n) => {
                    have += n;
                    since = None;
                    if want == HEADER && have >= HEADER {
                        let mut len = [0u8; HEADER];
                        len.copy_from_slice(&buf[..HEADER]);
                        let len = u64::from_le_bytes(len);
                        if len > max as u64 {
                            return Err(FrameError::TooLong {
                                peer: self.peer,
                                len,
                                max,
                            });
                        }
                        want = HEADER + len as usize;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock && self.poll == Poll::Busy => {
                    self.spin(&mut since, &mut spins)?
                }
                // A blocking read that timed out (SO_RCVTIMEO).
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(FrameError::Stalled { peer: self.peer })
                }
                Err(e) => return Err(self.io_error(e)),
            }
        }
        Ok(want - HEADER)
    }

    /// One empty poll of a busy loop; fails after [`STALL`] without progress.
    fn spin(&self, since: &mut Option<Instant>, spins: &mut u32) -> Result<(), FrameError> {
        std::hint::spin_loop();
        *spins += 1;
        if spins.is_multiple_of(SPINS_PER_CLOCK_READ) {
            let start = *since.get_or_insert_with(Instant::now);
            if start.elapsed() > STALL {
                return Err(FrameError::Stalled { peer: self.peer });
            }
        }
        Ok(())
    }

    fn io_error(&self, source: std::io::Error) -> FrameError {
        match source.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                FrameError::Closed { peer: self.peer }
            }
            _ => FrameError::Io {
                peer: self.peer,
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(poll: Poll) -> (FramedStream, FramedStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (
            FramedStream::new(a, poll, "server").unwrap(),
            FramedStream::new(b, poll, "client").unwrap(),
        )
    }

    #[test]
    fn frames_round_trip_in_both_modes() {
        for poll in [Poll::Block, Poll::Busy] {
            let (mut a, mut b) = pair(poll);
            for len in [1usize, 100, 300_000] {
                let mut frame = vec![7u8; HEADER + len];
                FramedStream::put_header(&mut frame);
                // A large frame needs a reader while it is written.
                let t = std::thread::spawn(move || {
                    let mut buf = vec![0u8; HEADER + 400_000];
                    let n = b.read_frame(&mut buf).unwrap();
                    (b, n, buf[HEADER..HEADER + n].iter().all(|&x| x == 7))
                });
                a.write_frame(&frame).unwrap();
                let (back, n, ok) = t.join().unwrap();
                b = back;
                assert_eq!((n, ok), (len, true), "{poll:?}");
            }
        }
    }

    #[test]
    fn closed_and_oversized_frames_are_errors() {
        let (mut a, mut b) = pair(Poll::Block);
        let mut frame = vec![0u8; HEADER + 64];
        FramedStream::put_header(&mut frame);
        a.write_frame(&frame).unwrap();
        let mut small = vec![0u8; HEADER + 16];
        assert!(matches!(
            b.read_frame(&mut small),
            Err(FrameError::TooLong { len: 64, .. })
        ));
        drop(a);
        let (mut c, d) = pair(Poll::Busy);
        drop(d);
        assert!(matches!(
            c.read_frame(&mut small),
            Err(FrameError::Closed { .. })
        ));
    }
}
