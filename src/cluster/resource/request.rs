//! HTTP/1.1 requests, sans-IO: the head parser the server feeds bytes into, and the
//! answer it writes. One request per connection (`Connection: close`); bodies sized by
//! `Content-Length` (chunked bodies are refused); a size limit on head and body.

/// The largest request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 16 << 10;

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub authorization: Option<String>,
    pub content_length: usize,
}

/// Why a request was refused before routing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Unsupported(String),
}

impl RequestError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Malformed(_) => 400,
            RequestError::TooLarge { .. } => 413,
            RequestError::Unsupported(_) => 501,
        }
    }
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete, otherwise
/// the head and its length (where the body starts). `limit` bounds head plus body.
///
/// # Errors
/// [`RequestError`] for anything that is not a request this server takes.
pub fn parse_head(buf: &[u8], limit: usize) -> Result<Option<(Head, usize)>, RequestError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD.min(limit) {
            return Err(RequestError::TooLarge {
                limit: MAX_HEAD.min(limit),
            });
        }
        return Ok(None);
    };
    let head_len = end + 4;
    if head_len > MAX_HEAD.min(limit) {
        return Err(RequestError::TooLarge {
            limit: MAX_HEAD.min(limit),
        });
    }
    let text = std::str::from_utf8(&buf[..end])
        .map_err(|_| RequestError::Malformed("the head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed(format!(
            "request line {request_line:?}"
        )));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(RequestError::Malformed(format!("method {method:?}")));
    }
    if !target.starts_with('/') {
        return Err(RequestError::Malformed(format!("target {target:?}")));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(RequestError::Unsupported(format!(
            "{version:?} (HTTP/1.1 only)"
        )));
    }
    let mut head = Head {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or(target).to_string(),
        authorization: None,
        content_length: 0,
    };
    let mut seen_length = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| RequestError::Malformed(format!("header {line:?}")))?;
        let name = name.trim();
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| RequestError::Malformed(format!("Content-Length {value:?}")))?;
            if seen_length && n != head.content_length {
                return Err(RequestError::Malformed("two Content-Lengths".into()));
            }
            seen_length = true;
            head.content_length = n;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::Unsupported(
                "Transfer-Encoding (send a Content-Length)".into(),
            ));
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_string());
        }
    }
    if head_len.saturating_add(head.content_length) > limit {
        return Err(RequestError::TooLarge { limit });
    }
    Ok(Some((head, head_len)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// The bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if self.status == 401 {
            out.push_str("WWW-Authenticate: Bearer\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Payload Too Large",
        501 => "Not Implemented",
        _ => "Internal Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_request_parses_in_pieces() {
        let req = b"POST /v1/leases?x=1 HTTP/1.1\r\nHost: h\r\nauthorization: Bearer a:b\r\n\
                    Content-Length: 2\r\n\r\n{}";
        for cut in 0..req.len() - 2 {
            if cut < req.len() - 2 {
                assert_eq!(parse_head(&req[..cut], 1024), Ok(None), "cut at {cut}");
            }
        }
        let (head, len) = parse_head(req, 1024).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                method: "POST".into(),
                path: "/v1/leases".into(),
                authorization: Some("Bearer a:b".into()),
                content_length: 2,
            }
        );
        assert_eq!(&req[len..], b"{}");
    }

    #[test]
    fn bad_requests_are_refused_with_their_status() {
        let status = |r: &[u8], limit| parse_head(r, limit).unwrap_err().status();
        assert_eq!(status(b"GET /\r\n\r\n", 1024), 400);
        assert_eq!(status(b"get / HTTP/1.1\r\n\r\n", 1024), 400);
        assert_eq!(status(b"GET x HTTP/1.1\r\n\r\n", 1024), 400);
        assert_eq!(status(b"GET / HTTP/2\r\n\r\n", 1024), 501);
        assert_eq!(status(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n", 1024), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 1024),
            400
        );
        assert_eq!(
            status(
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                1024
            ),
            501
        );
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 1024),
            413
        );
        assert_eq!(status(&[b'a'; 2000], 1024), 413);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_head(&bytes, 256);
        }

        #[test]
        fn arbitrary_heads_never_panic(method in "[A-Z]{1,7}", path in "/[ -~]{0,40}",
                                       headers in proptest::collection::vec("[ -~]{0,40}", 0..5)) {
            let text = format!("{method} {path} HTTP/1.1\r\n{}\r\n\r\n", headers.join("\r\n"));
            let _ = parse_head(text.as_bytes(), 4096);
        }
    }
}
