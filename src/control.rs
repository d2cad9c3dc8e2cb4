//! The control connection: JSON lines of [`ControlMessage`] over TCP, for the allocation
//! handshake. Setup path only; nothing here runs per invocation.

use std::io::{BufRead, Write};

use crate::protocol::{ControlMessage, HandshakeError, MAX_CONTROL_LINE};

/// Reading or writing a control line failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the control connection")]
    Closed,
    #[error(transparent)]
    Protocol(#[from] HandshakeError),
}

/// Reads one message; refuses a line longer than [`MAX_CONTROL_LINE`] without reading it
/// all into memory.
///
/// # Errors
/// [`ControlError::Closed`] at end of stream, otherwise I/O and decoding errors.
pub fn read_message(reader: &mut impl BufRead) -> Result<ControlMessage, ControlError> {
    let mut line = Vec::new();
    let limit = MAX_CONTROL_LINE as u64 + 2;
    let n = std::io::Read::take(&mut *reader, limit).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(ControlError::Closed);
    }
    if !line.ends_with(b"\n") && n as u64 == limit {
        return Err(HandshakeError::LineTooLong {
            len: n,
            max: MAX_CONTROL_LINE,
        }
        .into());
    }
    let text = String::from_utf8_lossy(&line);
    Ok(ControlMessage::from_line(&text)?)
}

/// Writes one message as a line and flushes it.
///
/// # Errors
/// I/O errors.
pub fn write_message(writer: &mut impl Write, message: &ControlMessage) -> std::io::Result<()> {
    writer.write_all(message.to_line().as_bytes())?;
    writer.flush()
}
