//! Races between a peer that completes receives and an owner that flushes them, and
//! random bytes from a tcp peer: every receive completes exactly once, nothing panics.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use rdma_mock::*;

/// The peer streams WRITE_WITH_IMM into posted receives while the owner moves its QP to the
/// error state at an arbitrary moment. The receive slot is either completed by the peer or
/// flushed by the owner, never both and never neither: every receive completes once, in
/// posting order, the delivered ones first.
fn flush_races_delivery(fabric: Fabric, rounds: u32) {
    const RECEIVES: u64 = 64;
    for round in 0..rounds {
        let (a, mut b) = pair(fabric);
        let dst = b.region(64);
        for id in 0..RECEIVES {
            b.post_recv(id, &[]);
        }
        let remote = dst.remote(0);
        let sender = std::thread::spawn(move || {
            let mut a = a;
            for i in 0..RECEIVES {
                let wr = SendWr::inline(
                    i,
                    SendOp::WriteWithImm {
                        remote,
                        imm: i as u32,
                    },
                    b"x",
                );
                a.post(wr.unsignaled());
            }
            a
        });
        // Fail somewhere in the middle of the stream (varies with the round).
        for _ in 0..(round % 7) * 3 {
            std::thread::yield_now();
        }
        b.qp.set_error();
        let mut flushing = false;
        for expect in 0..RECEIVES {
            let wc = b.next_wc();
            assert_eq!(
                wc.wr_id, expect,
                "round {round}: receive completions out of order"
            );
            flushing |= wc.status == WcStatus::WrFlushError;
            let want = if flushing {
                WcStatus::WrFlushError
            } else {
                WcStatus::Success
            };
            assert_eq!(wc.status, want, "round {round}: {wc:?}");
            if wc.is_ok() {
                assert_eq!(wc.imm, Some(expect as u32));
            }
        }
        b.expect_no_wc(Duration::from_millis(1));
        drop(sender.join().expect("sender"));
    }
}

#[test]
fn shm_flush_races_delivery() {
    flush_races_delivery(Fabric::Shm, 200);
}

#[test]
fn tcp_flush_races_delivery() {
    flush_races_delivery(Fabric::Tcp, 50);
}

/// A hello that the tcp listener accepts for `qp` (the wire format of rdma-mock's tcp
/// handshake: magic, version, flags, rnr settings, identities; see src/tcp/wire.rs).
fn tcp_hello(device: u64, qpn: u32, to_device: u64, to_qpn: u32) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[0..4].copy_from_slice(&0x5444_4452u32.to_le_bytes());
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[9] = 1; // rnr_retry
    b[12..16].copy_from_slice(&100u32.to_le_bytes()); // rnr timer, us
    b[16..24].copy_from_slice(&device.to_le_bytes());
    b[24..28].copy_from_slice(&qpn.to_le_bytes());
    b[28..32].copy_from_slice(&to_qpn.to_le_bytes());
    b[32..40].copy_from_slice(&to_device.to_le_bytes());
    b
}

/// Connects a fake tcp peer to a fresh QP and sends it `garbage`. Returns the QP's side and
/// the completions its polls took meanwhile.
fn feed_garbage(garbage: &[u8]) -> (Side, MemoryRegion, Vec<WorkCompletion>) {
    let mut side = Side::new(Fabric::Tcp, QpConfig::default());
    let region = side.region(4096);
    for id in 0..4 {
        side.post_recv(id, &[region.sge(0, 4096)]);
    }
    let ours = side.qp.endpoint();
    let bytes = garbage.to_vec();
    let fake = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&ours.address).expect("connect");
        stream
            .write_all(&tcp_hello(0, 0, ours.device, ours.qpn))
            .expect("hello");
        let mut reply = [0u8; 40];
        stream.read_exact(&mut reply).expect("reply");
        let _ = stream.write_all(&bytes);
        stream
    });
    let mut peer = side.qp.endpoint();
    peer.device = 0;
    peer.qpn = 0;
    side.qp.connect(&peer).expect("accept the fake peer");
    let stream = fake.join().expect("fake peer");
    // Let the garbage be read, by the progress thread and by our polls.
    let mut wc = [WorkCompletion::default(); 4];
    let mut taken = Vec::new();
    for _ in 0..50 {
        let n = side.cq.poll(&mut wc);
        taken.extend_from_slice(&wc[..n]);
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(stream);
    (side, region, taken)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Random bytes after a valid handshake: no panic, no hang; the QP ends in the error
    /// state once the peer hangs up, with its receives flushed or completed, and the device
    /// still connects real peers.
    #[test]
    fn tcp_garbage_from_a_peer_never_panics(
        garbage in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            // Frames that start plausibly: a request or response type byte first.
            (prop_oneof![Just(1u8), Just(2u8)], proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(t, rest)| { let mut v = vec![t]; v.extend(rest); v }),
        ]
    ) {
        let (mut side, _region, mut taken) = feed_garbage(&garbage);
        // The fake peer has hung up: every receive completes (delivered, failed on its own
        // buffer, or flushed), in order.
        while taken.len() < 4 {
            taken.push(side.next_wc());
        }
        for (i, wc) in taken.iter().enumerate() {
            prop_assert_eq!(wc.wr_id, i as u64);
            prop_assert!(
                matches!(wc.status, WcStatus::Success | WcStatus::WrFlushError | WcStatus::LocalLengthError | WcStatus::LocalProtectionError),
                "{:?}", wc
            );
        }
        prop_assert_eq!(side.qp.state(), QpState::Error);
        // The device is unharmed: a real pair on it still works.
        let mut qp = side.pd.create_qp(&side.cq, &side.cq, QpConfig::default()).expect("qp");
        let mut other = Side::new(Fabric::Tcp, QpConfig::default());
        let (e1, e2) = (qp.endpoint(), other.qp.endpoint());
        let t = std::thread::spawn(move || { other.qp.connect(&e1).expect("connect"); other });
        qp.connect(&e2).expect("connect");
        let other = t.join().expect("thread");
        let dst = other.region(64);
        qp.post_send(&SendWr::inline(1, SendOp::Write { remote: dst.remote(0) }, b"ok")).expect("post");
        eventually("a write after the garbage", || &dst.to_vec()[..2] == b"ok");
    }
}
