//! A small blocking HTTP/1.1 client for the resource manager's JSON API: one request per
//! connection (`Connection: close`), bodies sized by `Content-Length`. Control path only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::ApiError;

/// How long a call may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const MAX_BODY: usize = 64 << 20;

/// A call to the resource manager failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the resource manager at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to the resource manager: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed answer from the resource manager: {0}")]
    Protocol(String),
    /// The resource manager answered with an error status.
    #[error("the resource manager refused ({status} {}): {}", .error.kind, .error.message)]
    Refused { status: u16, error: ApiError },
}

impl CallError {
    /// The API error kind (`exhausted`, `unauthorized`, …) of a refusal.
    pub fn kind(&self) -> Option<&str> {
        match self {
            CallError::Refused { error, .. } => Some(&error.kind),
            _ => None,
        }
    }
}

/// Sends `method path` with `body` as JSON and the bearer `credential`, and decodes the
/// JSON answer.
///
/// # Errors
/// [`CallError`]: unreachable, I/O, a malformed answer, or an error status with its
/// [`ApiError`].
pub fn call<B: Serialize, T: DeserializeOwned>(
    addr: &str,
    method: &str,
    path: &str,
    credential: &str,
    body: Option<&B>,
) -> Result<T, CallError> {
    let (status, bytes) = request(addr, method, path, credential, body)?;
    if !(200..300).contains(&status) {
        let error = serde_json::from_slice(&bytes).unwrap_or_else(|_| ApiError {
            kind: "unknown".into(),
            message: String::from_utf8_lossy(&bytes).into_owned(),
        });
        return Err(CallError::Refused { status, error });
    }
    serde_json::from_slice(&bytes).map_err(|e| CallError::Protocol(e.to_string()))
}

/// Sends one request and returns the status and the body, whatever the status.
///
/// # Errors
/// When the server cannot be reached or answers something that is not HTTP.
pub fn request<B: Serialize>(
    addr: &str,
    method: &str,
    path: &str,
    credential: &str,
    body: Option<&B>,
) -> Result<(u16, Vec<u8>), CallError> {
    let connect_error = |source| CallError::Connect {
        addr: addr.to_string(),
        source,
    };
    let target = addr
        .to_socket_addrs()
        .map_err(connect_error)?
        .next()
        .ok_or_else(|| connect_error(std::io::Error::other("no address")))?;
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).map_err(connect_error)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let payload = match body {
        Some(b) => serde_json::to_vec(b).map_err(|e| CallError::Protocol(e.to_string()))?,
        None => Vec::new(),
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {credential}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&payload)?;
    stream.flush()?;
    read_response(BufReader::new(stream))
}

fn read_response(mut reader: impl BufRead) -> Result<(u16, Vec<u8>), CallError> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CallError::Protocol(format!("status line {:?}", line.trim_end())))?;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(CallError::Protocol("the headers did not end".into()));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) if n > MAX_BODY => {
            return Err(CallError::Protocol(format!("a body of {n} bytes")));
        }
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.take(MAX_BODY as u64).read_to_end(&mut body)?;
        }
    }
    Ok((status, body))
}
