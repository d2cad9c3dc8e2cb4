//! Translations between rafi's verbs vocabulary and libibverbs' numbers: pure functions,
//! tested without a device.

use std::time::Duration;

use rdma_sys::{
    ibv_access_flags, ibv_qp_state, ibv_wc, ibv_wc_flags, ibv_wc_opcode, ibv_wc_status,
};

use super::super::{Access, QpState, WcOpcode, WcStatus, WorkCompletion};

/// `ibv_access_flags` for a region registered with `access`. Verbs refuses REMOTE_WRITE and
/// REMOTE_ATOMIC without LOCAL_WRITE, which rdma-mock allows, so those imply it here.
pub(super) fn access_flags(access: Access) -> i32 {
    let mut bits = access.bits();
    if access.contains(Access::REMOTE_WRITE) || access.contains(Access::REMOTE_ATOMIC) {
        bits |= Access::LOCAL_WRITE.bits();
    }
    // rafi's Access bits are ibv_access_flags' (LOCAL_WRITE 1, REMOTE_WRITE 2, REMOTE_READ 4,
    // REMOTE_ATOMIC 8); the constants below keep that honest.
    const _: () = assert!(
        ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 == 1
            && ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0 == 2
            && ibv_access_flags::IBV_ACCESS_REMOTE_READ.0 == 4
            && ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0 == 8
    );
    bits as i32
}

/// The work completion of `wc`. Verbs defines `opcode` only for successful completions; an
/// error completion reports what the provider left there (rxe and mlx5 report the request's
/// opcode for send-side errors; flushed receives report `Recv`).
#[inline]
pub(super) fn work_completion(wc: &ibv_wc) -> WorkCompletion {
    let imm = if wc.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0 {
        // The immediate travels in network byte order.
        Some(u32::from_be(imm_of(wc)))
    } else {
        None
    };
    WorkCompletion {
        wr_id: wc.wr_id,
        status: status(wc.status),
        opcode: opcode(wc.opcode),
        byte_len: wc.byte_len,
        imm,
        qp_num: wc.qp_num,
    }
}

#[inline]
fn imm_of(wc: &ibv_wc) -> u32 {
    // SAFETY: both members of the union are u32, so reading either is always defined.
    unsafe { wc.imm_data_invalidated_rkey_union.imm_data }
}

/// `ibv_wc_status` → [`WcStatus`]. Statuses rafi has no name for become the nearest one:
/// a response timeout is `RetryExceeded`; the rest (bad response, fatal, general errors…)
/// `RemoteOperationError`.
#[inline]
pub(super) fn status(s: ibv_wc_status::Type) -> WcStatus {
    use ibv_wc_status::*;
    match s {
        IBV_WC_SUCCESS => WcStatus::Success,
        IBV_WC_LOC_LEN_ERR => WcStatus::LocalLengthError,
        IBV_WC_LOC_PROT_ERR | IBV_WC_LOC_QP_OP_ERR | IBV_WC_MW_BIND_ERR => {
            WcStatus::LocalProtectionError
        }
        IBV_WC_WR_FLUSH_ERR => WcStatus::WrFlushError,
        IBV_WC_REM_INV_REQ_ERR | IBV_WC_REM_INV_RD_REQ_ERR => WcStatus::RemoteInvalidRequest,
        IBV_WC_REM_ACCESS_ERR => WcStatus::RemoteAccessError,
        IBV_WC_RETRY_EXC_ERR | IBV_WC_RESP_TIMEOUT_ERR => WcStatus::RetryExceeded,
        IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExceeded,
        _ => WcStatus::RemoteOperationError,
    }
}

/// `ibv_wc_opcode` → [`WcOpcode`] (memory-window and TSO opcodes, which rafi never posts,
/// read as `Send`).
#[inline]
pub(super) fn opcode(o: ibv_wc_opcode::Type) -> WcOpcode {
    use ibv_wc_opcode::*;
    match o {
        IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
        IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
        IBV_WC_COMP_SWAP => WcOpcode::CmpSwap,
        IBV_WC_FETCH_ADD => WcOpcode::FetchAdd,
        IBV_WC_RECV => WcOpcode::Recv,
        IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::RecvRdmaWithImm,
        _ => WcOpcode::Send,
    }
}

/// `ibv_qp_state` → [`QpState`]: RESET, INIT and RTR are not connected yet; a send queue in
/// error (SQE) is an error.
pub(super) fn qp_state(s: ibv_qp_state::Type) -> QpState {
    use ibv_qp_state::*;
    match s {
        IBV_QPS_RESET | IBV_QPS_INIT | IBV_QPS_RTR => QpState::Init,
        IBV_QPS_RTS | IBV_QPS_SQD => QpState::ReadyToSend,
        _ => QpState::Error,
    }
}

/// The IB encoding of the RNR NAK timer (`min_rnr_timer`): the smallest code whose delay is
/// at least `d` (so a peer waits no less than asked), saturating at 491.52 ms. Code 0 means
/// 655.36 ms, the longest, and is used only for longer requests.
pub(super) fn rnr_timer_code(d: Duration) -> u8 {
    // Delays of codes 1..=31, in units of 10 µs.
    const DELAYS: [u32; 31] = [
        1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536,
        2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152,
    ];
    let units = d.as_micros().div_ceil(10);
    match DELAYS.iter().position(|&u| u128::from(u) >= units) {
        Some(i) => i as u8 + 1,
        None => 0,
    }
}

/// rdma-mock's `rnr_retry` counts retries, 7 included; on verbs 7 means "retry forever".
/// rafi keeps the finite meaning: 7 becomes 6, the most finite retries verbs offers, so a
/// peer that never posts a receive fails the request with `RnrRetryExceeded` instead of
/// hanging it.
pub(super) fn rnr_retry(r: u8) -> u8 {
    r.min(6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rnr_timer_codes() {
        assert_eq!(rnr_timer_code(Duration::ZERO), 1);
        assert_eq!(rnr_timer_code(Duration::from_micros(10)), 1);
        assert_eq!(rnr_timer_code(Duration::from_micros(11)), 2);
        assert_eq!(rnr_timer_code(Duration::from_millis(1)), 14); // 1.28 ms
        assert_eq!(rnr_timer_code(Duration::from_micros(491_520)), 31);
        assert_eq!(rnr_timer_code(Duration::from_secs(1)), 0);
    }

    #[test]
    fn access_implies_local_write_for_remote_writes() {
        assert_eq!(access_flags(Access::REMOTE_READ), 4);
        assert_eq!(access_flags(Access::REMOTE_WRITE), 3);
        assert_eq!(access_flags(Access::REMOTE_ATOMIC), 9);
        assert_eq!(access_flags(Access::ALL), 15);
    }

    #[test]
    fn statuses_keep_their_numbers() {
        for s in [0u32, 1, 4, 5, 9, 10, 11, 12, 13] {
            assert_eq!(status(s) as u32, s);
        }
        assert_eq!(
            status(ibv_wc_status::IBV_WC_RESP_TIMEOUT_ERR),
            WcStatus::RetryExceeded
        );
    }

    #[test]
    fn rnr_retry_stays_finite() {
        assert_eq!(rnr_retry(7), 6);
        assert_eq!(rnr_retry(3), 3);
    }
}
