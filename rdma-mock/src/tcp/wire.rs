//! The tcp fabric's wire format: handshake, request and response frames (little endian).
//!
//! | frame | bytes |
//! |---|---|
//! | hello | magic "RDDT", version, refused flag, rnr_retry, rnr_timer_us, device, qpn, to_qpn, to_device (40 B); a refusal adds a length-prefixed reason |
//! | request | type 1, op, flags (bit 0: acknowledge), 0, len u32, seq u64, remote addr u64, rkey u32, imm u32, operand1 u64, operand2 u64 (48 B), then `len` payload bytes for WRITE, WRITE_WITH_IMM, SEND and SEND_WITH_IMM (for READ, `len` is the length to read) |
//! | response | type 2, status, 0, 0, len u32, seq u64, 0 u64 (24 B), then `len` bytes: READ data or an atomic's old value |
//!
//! A response acknowledges every request up to and including `seq`.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::qp::QpShared;
use crate::types::{QpConfig, RemoteAddr, SendOp, SendWr, WcStatus};

pub(super) const MAGIC: u32 = 0x5444_4452; // "RDDT"
pub(super) const VERSION: u32 = 1;
pub(super) const HELLO_LEN: usize = 40;
pub(super) const REQ_LEN: usize = 48;
pub(super) const RESP_LEN: usize = 24;
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const FRAME_REQUEST: u8 = 1;
pub(super) const FRAME_RESPONSE: u8 = 2;
pub(super) const FLAG_ACK: u8 = 1;

/// Largest payload one request may carry; a larger one means a corrupt stream.
pub(super) use crate::MAX_MESSAGE;

pub(super) fn op_code(op: SendOp) -> u8 {
    match op {
        SendOp::Write { .. } => 0,
        SendOp::WriteWithImm { .. } => 1,
        SendOp::Send => 2,
        SendOp::SendWithImm { .. } => 3,
        SendOp::Read { .. } => 4,
        SendOp::FetchAdd { .. } => 5,
        SendOp::CmpSwap { .. } => 6,
    }
}

/// A request header as it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Request {
    pub(super) op: u8,
    pub(super) flags: u8,
    pub(super) len: u32,
    pub(super) seq: u64,
    pub(super) remote: RemoteAddr,
    pub(super) imm: u32,
    pub(super) operand1: u64,
    pub(super) operand2: u64,
}

impl Request {
    pub(super) fn of(wr: &SendWr<'_>, seq: u64, len: u32, ack: bool) -> Self {
        let (remote, imm, operand1, operand2) = match wr.op {
            SendOp::Send => (RemoteAddr::default(), 0, 0, 0),
            SendOp::SendWithImm { imm } => (RemoteAddr::default(), imm, 0, 0),
            SendOp::Write { remote } | SendOp::Read { remote } => (remote, 0, 0, 0),
            SendOp::WriteWithImm { remote, imm } => (remote, imm, 0, 0),
            SendOp::FetchAdd { remote, add } => (remote, 0, add, 0),
            SendOp::CmpSwap {
                remote,
                compare,
                swap,
            } => (remote, 0, compare, swap),
        };
        Self {
            op: op_code(wr.op),
            flags: if ack { FLAG_ACK } else { 0 },
            len,
            seq,
            remote,
            imm,
            operand1,
            operand2,
        }
    }

    pub(super) fn encode(&self) -> [u8; REQ_LEN] {
        let mut b = [0u8; REQ_LEN];
        b[..4].copy_from_slice(&[FRAME_REQUEST, self.op, self.flags, 0]);
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.remote.addr.to_le_bytes());
        b[24..28].copy_from_slice(&self.remote.rkey.to_le_bytes());
        b[28..32].copy_from_slice(&self.imm.to_le_bytes());
        b[32..40].copy_from_slice(&self.operand1.to_le_bytes());
        b[40..48].copy_from_slice(&self.operand2.to_le_bytes());
        b
    }

    /// Decodes the header after its first byte (the frame type).
    pub(super) fn decode(b: &[u8; REQ_LEN]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Self {
            op: b[1],
            flags: b[2],
            len: u32_at(4),
            seq: u64_at(8),
            remote: RemoteAddr {
                addr: u64_at(16),
                rkey: u32_at(24),
            },
            imm: u32_at(28),
            operand1: u64_at(32),
            operand2: u64_at(40),
        }
    }
}

pub(super) fn encode_response(out: &mut Vec<u8>, status: WcStatus, seq: u64, payload: &[u8]) {
    out.extend_from_slice(&[FRAME_RESPONSE, status as u8, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(payload);
}

/// Handshake message: who we are, which QP we want, and our retry settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hello {
    pub(super) refused: bool,
    pub(super) device: u64,
    pub(super) qpn: u32,
    pub(super) to_device: u64,
    pub(super) to_qpn: u32,
    pub(super) rnr_retry: u8,
    pub(super) rnr_timer_us: u32,
}

impl Hello {
    pub(super) fn of(qp: &QpShared, device: u64, to: (u64, u32)) -> Self {
        Self {
            refused: false,
            device,
            qpn: qp.qpn,
            to_device: to.0,
            to_qpn: to.1,
            rnr_retry: qp.config.rnr_retry,
            rnr_timer_us: qp.config.rnr_timer.as_micros().min(u32::MAX as u128) as u32,
        }
    }

    #[cfg(test)]
    pub(super) fn of_raw(device: u64, qpn: u32, to_device: u64, to_qpn: u32) -> Self {
        Self {
            refused: false,
            device,
            qpn,
            to_device,
            to_qpn,
            rnr_retry: 0,
            rnr_timer_us: 0,
        }
    }

    pub(super) fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8] = self.refused as u8;
        b[9] = self.rnr_retry;
        b[12..16].copy_from_slice(&self.rnr_timer_us.to_le_bytes());
        b[16..24].copy_from_slice(&self.device.to_le_bytes());
        b[24..28].copy_from_slice(&self.qpn.to_le_bytes());
        b[28..32].copy_from_slice(&self.to_qpn.to_le_bytes());
        b[32..40].copy_from_slice(&self.to_device.to_le_bytes());
        b
    }

    pub(super) fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, String> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC || u32_at(4) != VERSION {
            return Err("not an rdma-mock tcp handshake (magic or version differ)".into());
        }
        Ok(Self {
            refused: b[8] != 0,
            rnr_retry: b[9],
            rnr_timer_us: u32_at(12),
            device: u64_at(16),
            qpn: u32_at(24),
            to_qpn: u32_at(28),
            to_device: u64_at(32),
        })
    }

    pub(super) fn peer_config(&self) -> QpConfig {
        QpConfig {
            rnr_retry: self.rnr_retry,
            rnr_timer: Duration::from_micros(self.rnr_timer_us as u64),
            ..QpConfig::default()
        }
    }
}

/// Refusal: a hello with `refused` set, then a length-prefixed reason.
pub(super) fn send_refusal(mut stream: &TcpStream, device: u64, why: &str) -> io::Result<()> {
    let hello = Hello {
        refused: true,
        device,
        qpn: 0,
        to_device: 0,
        to_qpn: 0,
        rnr_retry: 0,
        rnr_timer_us: 0,
    };
    let mut msg = hello.encode().to_vec();
    msg.extend_from_slice(&(why.len() as u32).to_le_bytes());
    msg.extend_from_slice(why.as_bytes());
    stream.write_all(&msg)
}

pub(super) fn read_hello(mut stream: &TcpStream) -> io::Result<Result<Hello, String>> {
    let mut b = [0u8; HELLO_LEN];
    stream.read_exact(&mut b)?;
    let hello = match Hello::decode(&b) {
        Ok(h) => h,
        Err(why) => return Ok(Err(why)),
    };
    if hello.refused {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let mut why = vec![0u8; (u32::from_le_bytes(len) as usize).min(4096)];
        stream.read_exact(&mut why)?;
        return Ok(Err(String::from_utf8_lossy(&why).into_owned()));
    }
    Ok(Ok(hello))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_round_trips() {
        let req = Request {
            op: 6,
            flags: FLAG_ACK,
            len: 77,
            seq: 1 << 40,
            remote: RemoteAddr {
                addr: 0xdead_beef_0000,
                rkey: 0x1234,
            },
            imm: 9,
            operand1: 5,
            operand2: u64::MAX,
        };
        assert_eq!(Request::decode(&req.encode()), req);
    }

    #[test]
    fn hello_round_trips_and_rejects_junk() {
        let h = Hello {
            refused: false,
            device: 1,
            qpn: 2,
            to_device: 3,
            to_qpn: 4,
            rnr_retry: 5,
            rnr_timer_us: 6,
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        assert!(Hello::decode(&[0u8; HELLO_LEN]).is_err());
    }
}
