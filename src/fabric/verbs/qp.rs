//! Reliable-connection queue pairs: created in INIT (receives may be posted at once),
//! connected INIT → RTR → RTS with the peer's [`VerbsEndpoint`], posting through the
//! provider's ops with work requests built on the stack.

use std::io;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys::{
    ibv_qp, ibv_qp_attr, ibv_qp_attr_mask, ibv_qp_init_attr, ibv_qp_state, ibv_qp_type,
    ibv_recv_wr, ibv_send_flags, ibv_send_wr, ibv_sge, ibv_wr_opcode,
};

use super::cq::{CompletionQueue, CqInner};
use super::credits::{Credits, Sides};
use super::device::errno;
use super::memory::ProtectionDomain;
use super::{convert, verbs_error};
use crate::fabric::{
    Endpoint, FabricError, Payload, PostError, QpConfig, QpState, RecvWr, SendOp, SendWr,
    VerbsEndpoint,
};

/// Most scatter/gather elements per request (the stack arrays' size).
const MAX_SGE: usize = 16;
/// Largest message, as rdma-mock (and the RC transport) allow.
const MAX_MESSAGE: u32 = 1 << 30;

/// Local ACK timeout, as IB's exponent: 4.096 µs × 2^14 ≈ 67 ms. With [`RETRY_CNT`]
/// retries, a dead peer fails a request with `RetryExceeded` after about 0.5 s.
const TIMEOUT: u8 = 14;
/// 6, not 7: rxe (like `rnr_retry`) reads a retry count of 7 as "retry forever".
const RETRY_CNT: u8 = 6;

type PostSend = unsafe extern "C" fn(*mut ibv_qp, *mut ibv_send_wr, *mut *mut ibv_send_wr) -> i32;
type PostRecv = unsafe extern "C" fn(*mut ibv_qp, *mut ibv_recv_wr, *mut *mut ibv_recv_wr) -> i32;

/// A verbs RC queue pair.
pub struct QueuePair {
    qp: NonNull<ibv_qp>,
    // Dropped after the queue pair is destroyed (in Drop): the queues and the domain.
    _send_cq: Arc<CqInner>,
    _recv_cq: Arc<CqInner>,
    pd: ProtectionDomain,
    qpn: u32,
    psn: u32,
    config: QpConfig,
    connected: bool,
    /// Queue accounting shared with the completion queues (see [`super::credits`]).
    credits: Arc<Credits>,
    /// Send requests posted (wrapping), signaled ones among them, receives posted.
    posted: u32,
    signaled: u32,
    recv_posted: u32,
    post_send: PostSend,
    post_recv: PostRecv,
}

// SAFETY: a libibverbs queue pair may be used from any thread; posting takes `&mut self`.
unsafe impl Send for QueuePair {}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once, before its queues and domain.
        unsafe { (self.pd.inner.device.inner.lib.ibv_destroy_qp)(self.qp.as_ptr()) };
    }
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("verbs::QueuePair")
            .field("qpn", &self.qpn)
            .field("psn", &self.psn)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl QueuePair {
    pub(super) fn new(
        pd: &ProtectionDomain,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        mut config: QpConfig,
    ) -> Result<Self, FabricError> {
        let d = &pd.inner.device.inner;
        if config.max_send_wr == 0 || config.max_recv_wr == 0 {
            return Err(FabricError::Config(
                "queue depths must be at least 1".into(),
            ));
        }
        if config.max_send_wr > d.max_qp_wr || config.max_recv_wr > d.max_qp_wr {
            return Err(FabricError::Config(format!(
                "queue depths {}/{} exceed {}'s limit of {}",
                config.max_send_wr, config.max_recv_wr, d.name, d.max_qp_wr
            )));
        }
        config.max_sge = config.max_sge.clamp(1, d.max_sge.min(MAX_SGE as u32));
        // The device's inline limit caps the request; posts are checked against the result.
        config.max_inline_data = config.max_inline_data.min(d.max_inline_data);
        // SAFETY: all-zero is a valid ibv_qp_init_attr (null pointers, zero counts).
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = send_cq.inner.cq.as_ptr();
        init.recv_cq = recv_cq.inner.cq.as_ptr();
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        init.cap.max_send_wr = config.max_send_wr;
        init.cap.max_recv_wr = config.max_recv_wr;
        init.cap.max_send_sge = config.max_sge;
        init.cap.max_recv_sge = config.max_sge;
        init.cap.max_inline_data = config.max_inline_data;
        // SAFETY: a live domain; the queues are of the same context and outlive the queue
        // pair (it holds their Arcs).
        let qp = unsafe { (d.lib.ibv_create_qp)(pd.inner.pd.as_ptr(), &mut init) };
        let qp = NonNull::new(qp)
            .ok_or_else(|| verbs_error("ibv_create_qp", io::Error::last_os_error(), None))?;
        // SAFETY: every context's ops table has these (verbs.h calls them unchecked).
        let ops = unsafe { &(*d.ctx.as_ptr()).ops };
        // SAFETY: a live queue pair.
        let qpn = unsafe { (*qp.as_ptr()).qp_num };
        let credits = Credits::new(config.max_send_wr);
        let same = Arc::ptr_eq(&send_cq.inner, &recv_cq.inner);
        send_cq.register(
            qpn,
            &credits,
            Sides {
                send: true,
                recv: same,
            },
        );
        if !same {
            recv_cq.register(
                qpn,
                &credits,
                Sides {
                    send: false,
                    recv: true,
                },
            );
        }
        let mut this = Self {
            qp,
            _send_cq: send_cq.inner.clone(),
            _recv_cq: recv_cq.inner.clone(),
            pd: pd.clone(),
            qpn,
            psn: initial_psn(qpn),
            config,
            connected: false,
            credits,
            posted: 0,
            signaled: 0,
            recv_posted: 0,
            // Placeholders replaced just below unless the provider lacks them.
            post_send: unsupported_post_send,
            post_recv: unsupported_post_recv,
        };
        match (ops.post_send, ops.post_recv) {
            (Some(s), Some(r)) => {
                this.post_send = s;
                this.post_recv = r;
            }
            _ => {
                return Err(FabricError::Config(format!(
                    "the provider of {} has no post_send/post_recv",
                    d.name
                )))
            }
        }
        // INIT at once, so that receives can be posted before `connect`.
        // SAFETY: all-zero is a valid ibv_qp_attr.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = d.port;
        attr.qp_access_flags = convert::access_flags(crate::fabric::Access::ALL) as u32;
        this.modify(
            "ibv_modify_qp (INIT)",
            &mut attr,
            ibv_qp_attr_mask::IBV_QP_STATE
                | ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
                | ibv_qp_attr_mask::IBV_QP_PORT
                | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS,
        )?;
        Ok(this)
    }

    fn modify(
        &mut self,
        call: &'static str,
        attr: &mut ibv_qp_attr,
        mask: ibv_qp_attr_mask,
    ) -> Result<(), FabricError> {
        let lib = self.pd.inner.device.inner.lib;
        // SAFETY: a live queue pair and an attribute struct valid for the call.
        let rc = unsafe { (lib.ibv_modify_qp)(self.qp.as_ptr(), attr, mask.0 as i32) };
        if rc != 0 {
            return Err(verbs_error(call, errno(rc), None));
        }
        Ok(())
    }

    fn connect_verbs(&mut self, remote: &VerbsEndpoint) -> Result<(), FabricError> {
        let d = self.pd.inner.device.inner.clone();
        if self.connected {
            return Err(FabricError::Config(format!(
                "queue pair {} is already connected",
                self.qpn
            )));
        }
        if !(1..=5).contains(&remote.mtu) {
            return Err(FabricError::Config(format!(
                "the peer's endpoint has an invalid MTU code {}",
                remote.mtu
            )));
        }
        // SAFETY: all-zero is a valid ibv_qp_attr.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = u32::from(d.mtu.min(remote.mtu));
        attr.dest_qp_num = remote.qpn;
        attr.rq_psn = remote.psn & 0xff_ffff;
        attr.max_dest_rd_atomic = d.max_dest_rd_atomic;
        attr.min_rnr_timer = convert::rnr_timer_code(self.config.rnr_timer);
        attr.ah_attr.dlid = remote.lid;
        attr.ah_attr.sl = 0;
        attr.ah_attr.src_path_bits = 0;
        attr.ah_attr.port_num = d.port;
        if d.roce || remote.gid != [0; 16] {
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid.raw = remote.gid;
            attr.ah_attr.grh.sgid_index = d.gid_index;
            attr.ah_attr.grh.hop_limit = 64;
        }
        self.modify(
            "ibv_modify_qp (RTR)",
            &mut attr,
            ibv_qp_attr_mask::IBV_QP_STATE
                | ibv_qp_attr_mask::IBV_QP_AV
                | ibv_qp_attr_mask::IBV_QP_PATH_MTU
                | ibv_qp_attr_mask::IBV_QP_DEST_QPN
                | ibv_qp_attr_mask::IBV_QP_RQ_PSN
                | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
                | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER,
        )?;
        // SAFETY: all-zero is a valid ibv_qp_attr.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTS;
        attr.timeout = TIMEOUT;
        attr.retry_cnt = RETRY_CNT;
        attr.rnr_retry = convert::rnr_retry(self.config.rnr_retry);
        attr.sq_psn = self.psn;
        attr.max_rd_atomic = d.max_rd_atomic;
        self.modify(
            "ibv_modify_qp (RTS)",
            &mut attr,
            ibv_qp_attr_mask::IBV_QP_STATE
                | ibv_qp_attr_mask::IBV_QP_TIMEOUT
                | ibv_qp_attr_mask::IBV_QP_RETRY_CNT
                | ibv_qp_attr_mask::IBV_QP_RNR_RETRY
                | ibv_qp_attr_mask::IBV_QP_SQ_PSN
                | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC,
        )?;
        self.connected = true;
        Ok(())
    }
}

/// A 24-bit starting PSN that differs between queue pairs and runs (ibv_rc_pingpong uses
/// lrand48; nothing depends on its randomness).
fn initial_psn(qpn: u32) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (t ^ qpn.wrapping_mul(0x9e37_79b9)) & 0xff_ffff
}

unsafe extern "C" fn unsupported_post_send(
    _: *mut ibv_qp,
    _: *mut ibv_send_wr,
    _: *mut *mut ibv_send_wr,
) -> i32 {
    libc::EOPNOTSUPP
}

unsafe extern "C" fn unsupported_post_recv(
    _: *mut ibv_qp,
    _: *mut ibv_recv_wr,
    _: *mut *mut ibv_recv_wr,
) -> i32 {
    libc::EOPNOTSUPP
}

/// Copies `sgl` into the stack array `out` as `ibv_sge`s; the total length is checked.
#[inline]
fn fill_sges(sgl: &[crate::fabric::Sge], out: &mut [ibv_sge; MAX_SGE]) -> Result<(), PostError> {
    let mut total = 0u64;
    for (o, s) in out.iter_mut().zip(sgl) {
        total += u64::from(s.length);
        *o = ibv_sge {
            addr: s.addr,
            length: s.length,
            lkey: s.lkey,
        };
    }
    if total > u64::from(MAX_MESSAGE) {
        return Err(PostError::MessageTooLarge {
            len: total,
            max: MAX_MESSAGE,
        });
    }
    Ok(())
}

impl crate::fabric::QueuePair for QueuePair {
    fn qp_num(&self) -> u32 {
        self.qpn
    }

    fn state(&self) -> QpState {
        let lib = self.pd.inner.device.inner.lib;
        let mut attr = MaybeUninit::<ibv_qp_attr>::zeroed();
        let mut init = MaybeUninit::<ibv_qp_init_attr>::zeroed();
        // SAFETY: a live queue pair and writable attribute structs.
        let rc = unsafe {
            (lib.ibv_query_qp)(
                self.qp.as_ptr(),
                attr.as_mut_ptr(),
                ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
                init.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return QpState::Error;
        }
        // SAFETY: zero-initialised plain data, filled in by the call.
        convert::qp_state(unsafe { attr.assume_init() }.qp_state)
    }

    fn endpoint(&self) -> Endpoint {
        let d = &self.pd.inner.device.inner;
        Endpoint::Verbs(VerbsEndpoint {
            lid: d.lid,
            qpn: self.qpn,
            psn: self.psn,
            gid: d.gid,
            mtu: d.mtu,
        })
    }

    fn connect(&mut self, remote: &Endpoint) -> Result<(), FabricError> {
        match remote {
            Endpoint::Verbs(e) => self.connect_verbs(e),
            other => Err(FabricError::FabricMismatch {
                local: crate::fabric::FabricKind::Verbs,
                remote: other.kind(),
            }),
        }
    }

    #[inline]
    fn post_send(&mut self, wr: &SendWr<'_>) -> Result<(), PostError> {
        if !self.connected {
            return Err(PostError::NotConnected);
        }
        let depth = self.config.max_send_wr;
        if self.credits.outstanding(self.posted) >= depth && !self.credits.errored() {
            return Err(PostError::SendQueueFull(depth));
        }
        let atomic = matches!(wr.op, SendOp::FetchAdd { .. } | SendOp::CmpSwap { .. });
        // SAFETY: all-zero is a valid ibv_sge array (null address, zero length and key).
        let mut sges: [ibv_sge; MAX_SGE] = unsafe { std::mem::zeroed() };
        // SAFETY: all-zero is a valid ibv_send_wr (null pointers, zero numbers, no flags).
        let mut ibv: ibv_send_wr = unsafe { std::mem::zeroed() };
        ibv.wr_id = wr.wr_id;
        if wr.signaled {
            ibv.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        match wr.payload {
            Payload::Sgl(sgl) => {
                if sgl.len() > self.config.max_sge as usize {
                    return Err(PostError::TooManySge {
                        given: sgl.len(),
                        max: self.config.max_sge,
                    });
                }
                if atomic && (sgl.len() != 1 || sgl[0].length != 8) {
                    return Err(PostError::BadAtomicSgl);
                }
                fill_sges(sgl, &mut sges)?;
                ibv.num_sge = sgl.len() as i32;
            }
            Payload::Inline(data) => {
                if data.len() > self.config.max_inline_data as usize {
                    return Err(PostError::InlineTooLarge {
                        given: data.len(),
                        max: self.config.max_inline_data,
                    });
                }
                if atomic || matches!(wr.op, SendOp::Read { .. }) {
                    return Err(PostError::InlineNotAllowed);
                }
                // The provider copies inline data at post time; the lkey is ignored.
                sges[0] = ibv_sge {
                    addr: data.as_ptr() as u64,
                    length: data.len() as u32,
                    lkey: 0,
                };
                ibv.num_sge = i32::from(!data.is_empty());
                ibv.send_flags |= ibv_send_flags::IBV_SEND_INLINE.0;
            }
        }
        ibv.sg_list = sges.as_mut_ptr();
        match wr.op {
            SendOp::Send => ibv.opcode = ibv_wr_opcode::IBV_WR_SEND,
            SendOp::SendWithImm { imm } => {
                ibv.opcode = ibv_wr_opcode::IBV_WR_SEND_WITH_IMM;
                ibv.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
            }
            SendOp::Write { remote } => {
                ibv.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                ibv.wr.rdma = rdma_sys::rdma_t {
                    remote_addr: remote.addr,
                    rkey: remote.rkey,
                };
            }
            SendOp::WriteWithImm { remote, imm } => {
                ibv.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                ibv.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
                ibv.wr.rdma = rdma_sys::rdma_t {
                    remote_addr: remote.addr,
                    rkey: remote.rkey,
                };
            }
            SendOp::Read { remote } => {
                ibv.opcode = ibv_wr_opcode::IBV_WR_RDMA_READ;
                ibv.wr.rdma = rdma_sys::rdma_t {
                    remote_addr: remote.addr,
                    rkey: remote.rkey,
                };
            }
            SendOp::FetchAdd { remote, add } => {
                ibv.opcode = ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD;
                ibv.wr.atomic = rdma_sys::atomic_t {
                    remote_addr: remote.addr,
                    compare_add: add,
                    swap: 0,
                    rkey: remote.rkey,
                };
            }
            SendOp::CmpSwap {
                remote,
                compare,
                swap,
            } => {
                ibv.opcode = ibv_wr_opcode::IBV_WR_ATOMIC_CMP_AND_SWP;
                ibv.wr.atomic = rdma_sys::atomic_t {
                    remote_addr: remote.addr,
                    compare_add: compare,
                    swap,
                    rkey: remote.rkey,
                };
            }
        }
        if wr.signaled {
            // Before posting: the completion may be polled before post_send returns. A
            // refused request leaves the slot to the next signaled one.
            self.credits
                .note_signaled(self.signaled, self.posted.wrapping_add(1));
        }
        let mut bad = std::ptr::null_mut();
        // SAFETY: the provider's post_send for this live queue pair; the request and its
        // scatter list live on this stack frame for the duration of the call, which copies
        // them (and inline data) into the send queue.
        let rc = unsafe { (self.post_send)(self.qp.as_ptr(), &mut ibv, &mut bad) };
        match rc {
            0 => {
                self.posted = self.posted.wrapping_add(1);
                self.signaled = self.signaled.wrapping_add(u32::from(wr.signaled));
                Ok(())
            }
            libc::ENOMEM => Err(PostError::SendQueueFull(self.config.max_send_wr)),
            rc if rc > 0 => Err(PostError::Rejected { errno: rc }),
            _ => Err(PostError::Rejected {
                errno: io::Error::last_os_error().raw_os_error().unwrap_or(0),
            }),
        }
    }

    #[inline]
    fn post_recv(&mut self, wr: &RecvWr<'_>) -> Result<(), PostError> {
        if wr.sgl.len() > self.config.max_sge as usize {
            return Err(PostError::TooManySge {
                given: wr.sgl.len(),
                max: self.config.max_sge,
            });
        }
        let errored = self.credits.errored();
        let depth = self.config.max_recv_wr;
        if self.credits.recv_outstanding(self.recv_posted) >= depth && !errored {
            return Err(PostError::RecvQueueFull(depth));
        }
        // SAFETY: all-zero is a valid ibv_sge array.
        let mut sges: [ibv_sge; MAX_SGE] = unsafe { std::mem::zeroed() };
        fill_sges(wr.sgl, &mut sges)?;
        let mut ibv = ibv_recv_wr {
            wr_id: wr.wr_id,
            next: std::ptr::null_mut(),
            sg_list: sges.as_mut_ptr(),
            num_sge: wr.sgl.len() as i32,
        };
        let mut bad = std::ptr::null_mut();
        // SAFETY: the provider's post_recv for this live queue pair; the request and its
        // scatter list live on this stack frame for the duration of the call.
        let rc = unsafe { (self.post_recv)(self.qp.as_ptr(), &mut ibv, &mut bad) };
        match rc {
            0 => {
                self.recv_posted = self.recv_posted.wrapping_add(1);
                if errored {
                    // rxe flushes receives only when the queue pair moves to error (its
                    // post_recv stays in user space): move it again (module docs).
                    self.set_error();
                }
                Ok(())
            }
            libc::ENOMEM => Err(PostError::RecvQueueFull(self.config.max_recv_wr)),
            rc if rc > 0 => Err(PostError::Rejected { errno: rc }),
            _ => Err(PostError::Rejected {
                errno: io::Error::last_os_error().raw_os_error().unwrap_or(0),
            }),
        }
    }

    fn set_error(&mut self) {
        self.credits.set_errored();
        // SAFETY: all-zero is a valid ibv_qp_attr.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_ERR;
        // Moving to ERR is allowed from every state; a failure leaves nothing to do.
        let _ = self.modify(
            "ibv_modify_qp (ERR)",
            &mut attr,
            ibv_qp_attr_mask::IBV_QP_STATE,
        );
    }
}
