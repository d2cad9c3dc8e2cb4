//! Property test: random sequences of operations, checked against a simple model of the
//! target's memory. After the first refused operation the model expects the QP in error:
//! every later request flushed, the memory frozen.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use proptest::prelude::*;
use rdma_mock::*;

/// The target region is exactly this long, so offsets near the end probe the bounds.
const LEN: usize = 4096;
const WORDS: usize = 16;

#[derive(Clone, Debug)]
enum Op {
    Write {
        offset: usize,
        len: usize,
        seed: u8,
        inline: bool,
    },
    WriteImm {
        offset: usize,
        len: usize,
        seed: u8,
        imm: u32,
    },
    Read {
        offset: usize,
        len: usize,
    },
    Send {
        len: usize,
        seed: u8,
    },
    FetchAdd {
        word: usize,
        add: u64,
    },
    CmpSwap {
        word: usize,
        hit: bool,
        compare: u64,
        swap: u64,
    },
    BadRkey {
        offset: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Offsets reach past the end now and then, so bounds errors happen in some sequences.
    let offset = prop_oneof![9 => 0..LEN - 8, 1 => LEN - 64..LEN + 64];
    prop_oneof![
        4 => (offset.clone(), 0..300usize, any::<u8>(), any::<bool>())
            .prop_map(|(offset, len, seed, inline)| Op::Write { offset, len, seed, inline }),
        2 => (offset.clone(), 0..300usize, any::<u8>(), any::<u32>())
            .prop_map(|(offset, len, seed, imm)| Op::WriteImm { offset, len, seed, imm }),
        3 => (offset.clone(), 1..300usize).prop_map(|(offset, len)| Op::Read { offset, len }),
        2 => (0..200usize, any::<u8>()).prop_map(|(len, seed)| Op::Send { len, seed }),
        2 => (0..WORDS, any::<u64>()).prop_map(|(word, add)| Op::FetchAdd { word, add }),
        2 => (0..WORDS, any::<bool>(), any::<u64>(), any::<u64>())
            .prop_map(|(word, hit, compare, swap)| Op::CmpSwap { word, hit, compare, swap }),
        1 => offset.prop_map(|offset| Op::BadRkey { offset }),
    ]
}

/// Where the atomic words live in the target region.
fn word_offset(word: usize) -> usize {
    LEN - 8 * WORDS + 8 * word
}

fn word_at(model: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(model[at..at + 8].try_into().expect("8 bytes"))
}

fn check_sequence(fabric: Fabric, ops: &[Op]) -> Result<(), TestCaseError> {
    let (mut a, mut b) = pair(fabric);
    let target = b.region(LEN);
    let inbox = b.region(256);
    let local = a.region(2 * LEN);
    let mut model = vec![0u8; LEN];
    let mut failed = false;

    for (i, op) in ops.iter().enumerate() {
        let wr_id = i as u64;
        // Each two-sided operation gets a receive of its own, so ids match one to one.
        if matches!(op, Op::WriteImm { .. } | Op::Send { .. }) {
            b.post_recv(wr_id, &[inbox.sge(0, 256)]);
        }
        let in_bounds = |offset: usize, len: usize| offset + len <= LEN;
        let (expected, remote_effect): (WcStatus, Option<(usize, Vec<u8>)>) = match op {
            Op::Write {
                offset,
                len,
                seed,
                inline,
            } => {
                let data = pattern(*len, *seed);
                let remote = target.remote(*offset);
                if *inline && *len <= 256 {
                    a.post(SendWr::inline(wr_id, SendOp::Write { remote }, &data));
                } else {
                    local.write(0, &data);
                    a.post(SendWr::new(
                        wr_id,
                        SendOp::Write { remote },
                        &[local.sge(0, *len)],
                    ));
                }
                if in_bounds(*offset, *len) {
                    (WcStatus::Success, Some((*offset, data)))
                } else {
                    (WcStatus::RemoteAccessError, None)
                }
            }
            Op::WriteImm {
                offset,
                len,
                seed,
                imm,
            } => {
                let data = pattern(*len, *seed);
                local.write(0, &data);
                a.post(SendWr::new(
                    wr_id,
                    SendOp::WriteWithImm {
                        remote: target.remote(*offset),
                        imm: *imm,
                    },
                    &[local.sge(0, *len)],
                ));
                if in_bounds(*offset, *len) {
                    (WcStatus::Success, Some((*offset, data)))
                } else {
                    (WcStatus::RemoteAccessError, None)
                }
            }
            Op::Read { offset, len } => {
                a.post(SendWr::new(
                    wr_id,
                    SendOp::Read {
                        remote: target.remote(*offset),
                    },
                    &[local.sge(LEN, *len)],
                ));
                if in_bounds(*offset, *len) {
                    (WcStatus::Success, None)
                } else {
                    (WcStatus::RemoteAccessError, None)
                }
            }
            Op::Send { len, seed } => {
                local.write(0, &pattern(*len, *seed));
                a.post(SendWr::new(wr_id, SendOp::Send, &[local.sge(0, *len)]));
                (WcStatus::Success, None)
            }
            Op::FetchAdd { word, add } => {
                a.post(SendWr::new(
                    wr_id,
                    SendOp::FetchAdd {
                        remote: target.remote(word_offset(*word)),
                        add: *add,
                    },
                    &[local.sge(0, 8)],
                ));
                (WcStatus::Success, None)
            }
            Op::CmpSwap {
                word,
                hit,
                compare,
                swap,
            } => {
                let at = word_offset(*word);
                let current = word_at(&model, at);
                let compare = if *hit { current } else { *compare };
                a.post(SendWr::new(
                    wr_id,
                    SendOp::CmpSwap {
                        remote: target.remote(at),
                        compare,
                        swap: *swap,
                    },
                    &[local.sge(0, 8)],
                ));
                (WcStatus::Success, None)
            }
            Op::BadRkey { offset } => {
                let remote = RemoteAddr {
                    addr: target.addr() + *offset as u64,
                    rkey: target.rkey() ^ 0x100000,
                };
                a.post(SendWr::inline(wr_id, SendOp::Write { remote }, b"forged"));
                (WcStatus::RemoteAccessError, None)
            }
        };
        let wc = a.next_wc();
        prop_assert_eq!(wc.wr_id, wr_id);
        if failed {
            prop_assert_eq!(
                wc.status,
                WcStatus::WrFlushError,
                "op {} {:?} after the QP failed",
                i,
                op
            );
            continue;
        }
        prop_assert_eq!(wc.status, expected, "op {} {:?}", i, op);
        if expected != WcStatus::Success {
            failed = true;
            continue;
        }
        // Apply the operation to the model and check what came back.
        match op {
            Op::Read { offset, len } => {
                let mut got = vec![0u8; *len];
                local.read(LEN, &mut got);
                prop_assert_eq!(&got[..], &model[*offset..offset + len], "read {}", i);
            }
            Op::FetchAdd { word, add } => {
                let at = word_offset(*word);
                let old = word_at(&model, at);
                prop_assert_eq!(local.atomic_u64(0).load(Ordering::SeqCst), old);
                model[at..at + 8].copy_from_slice(&old.wrapping_add(*add).to_le_bytes());
            }
            Op::CmpSwap {
                word,
                hit,
                compare,
                swap,
            } => {
                let at = word_offset(*word);
                let old = word_at(&model, at);
                prop_assert_eq!(local.atomic_u64(0).load(Ordering::SeqCst), old);
                if *hit || *compare == old {
                    model[at..at + 8].copy_from_slice(&swap.to_le_bytes());
                }
            }
            _ => {}
        }
        if let Some((offset, data)) = remote_effect {
            model[offset..offset + data.len()].copy_from_slice(&data);
        }
        // Two-sided operations complete on the receiver too, with the right contents.
        if let Op::WriteImm { len, imm, .. } = op {
            let rwc = b.next_wc();
            prop_assert_eq!(
                (rwc.wr_id, rwc.imm, rwc.byte_len as usize),
                (wr_id, Some(*imm), *len)
            );
        } else if let Op::Send { len, seed } = op {
            let rwc = b.next_wc();
            prop_assert_eq!((rwc.wr_id, rwc.byte_len as usize), (wr_id, *len));
            let mut got = vec![0u8; *len];
            inbox.read(0, &mut got);
            prop_assert_eq!(got, pattern(*len, *seed));
        }
        prop_assert_eq!(&target.to_vec(), &model, "memory after op {} {:?}", i, op);
    }
    prop_assert_eq!(target.to_vec(), model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn shm_matches_the_memory_model(ops in proptest::collection::vec(op(), 1..40)) {
        check_sequence(Fabric::Shm, &ops)?;
    }

    #[test]
    fn tcp_matches_the_memory_model(ops in proptest::collection::vec(op(), 1..40)) {
        check_sequence(Fabric::Tcp, &ops)?;
    }
}
