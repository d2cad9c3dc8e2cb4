//! Reliable-connection queue pairs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::cq::{CqShared, Source};
use crate::device::{Endpoint, Listener, PdShared, Pending};
use crate::error::{AllocError, ConnectError, PostError};
use crate::memory::ArenaView;
use crate::queue::{RecvQueue, SendRing};
use crate::responder::{Gather, Scatter};
use crate::types::{
    Access, Payload, QpConfig, QpState, RecvWr, SendOp, SendWr, WcStatus, WorkCompletion,
};
use crate::{shm, tcp};

/// The part of a QP that its completion queues and the connection agents see.
pub(crate) struct QpShared {
    pub(crate) qpn: u32,
    /// Our receive queue and state word, in shared memory the peer maps.
    pub(crate) rq: RecvQueue,
    /// Number of the next receive completion to poll (advanced by the recv CQ only).
    rq_polled: AtomicU64,
    pub(crate) send_ring: SendRing,
    pub(crate) send_cq: Arc<CqShared>,
    pub(crate) recv_cq: Arc<CqShared>,
    pub(crate) pd: Arc<PdShared>,
    pub(crate) config: QpConfig,
    /// On tcp, the connection, which polls of the completion queues drive.
    pub(crate) tcp: OnceLock<Arc<tcp::Conn>>,
    /// The peer that delivers into our receive slots is gone for good (shm: its process
    /// died or closed the link), so a slot it claimed will never be completed.
    pub(crate) deliverer_gone: AtomicBool,
}

impl QpShared {
    pub(crate) fn state(&self) -> QpState {
        self.rq.state()
    }

    /// Moves the QP to the error state and wakes waiters so they see the flushes.
    pub(crate) fn fail(&self) {
        if self.rq.fail() {
            self.send_cq.notify();
            self.recv_cq.notify();
        }
    }

    /// Pushes a send completion and wakes the send CQ's waiter. The caller is the only
    /// producer at this time and checked that the ring has room.
    #[inline]
    pub(crate) fn push_send_completion(&self, wc: WorkCompletion) {
        self.send_ring.push(wc);
        self.send_cq.notify();
    }

    /// Moves ready completions into `out` (the completion queue's poll).
    #[inline]
    pub(crate) fn poll_into(&self, send: bool, recv: bool, out: &mut [WorkCompletion]) -> usize {
        if let Some(conn) = self.tcp.get() {
            conn.progress_from_app(self);
        }
        let mut filled = 0;
        if send {
            while filled < out.len() {
                match self.send_ring.pop() {
                    Some(wc) => {
                        out[filled] = wc;
                        filled += 1;
                    }
                    None => break,
                }
            }
        }
        if recv {
            let mut n = self.rq_polled.load(Ordering::Relaxed);
            while filled < out.len() {
                let gone = self.deliverer_gone.load(Ordering::Acquire);
                match self.rq.take_completion(n, self.qpn, gone) {
                    Some(wc) => {
                        out[filled] = wc;
                        filled += 1;
                        n += 1;
                    }
                    None => break,
                }
            }
            self.rq_polled.store(n, Ordering::Release);
        }
        filled
    }

    pub(crate) fn arena(&self) -> ArenaView<'_> {
        self.pd.arena.view()
    }

    /// Resolves the local buffers of a request that reads from local memory.
    #[inline]
    pub(crate) fn gather(&self, payload: &Payload<'_>) -> Result<Gather, WcStatus> {
        match payload {
            Payload::Inline(data) => Ok(Gather::one(data.as_ptr(), data.len())),
            Payload::Sgl(sgl) => {
                let mut g = Gather::EMPTY;
                for sge in *sgl {
                    let len = sge.length as usize;
                    let ptr = self
                        .arena()
                        .resolve(sge.lkey, sge.addr, len, Access::NONE)
                        .ok_or(WcStatus::LocalProtectionError)?;
                    g.push(ptr, len);
                }
                Ok(g)
            }
        }
    }

    /// Resolves the local buffers a READ or an atomic writes into.
    #[inline]
    pub(crate) fn scatter(&self, payload: &Payload<'_>) -> Result<Scatter, WcStatus> {
        let Payload::Sgl(sgl) = payload else {
            return Err(WcStatus::LocalProtectionError);
        };
        let mut s = Scatter::EMPTY;
        for sge in *sgl {
            let len = sge.length as usize;
            let ptr = self
                .arena()
                .resolve(sge.lkey, sge.addr, len, Access::LOCAL_WRITE)
                .ok_or(WcStatus::LocalProtectionError)?;
            s.push(ptr, len);
        }
        Ok(s)
    }
}

/// How a connected QP reaches its peer.
pub(crate) enum Link {
    Shm(shm::ShmLink),
    Tcp(tcp::TcpLink),
}

/// A reliable-connection queue pair (`ibv_qp` of type RC).
///
/// Post from one thread (`post_send` and `post_recv` take `&mut self`); its completions are
/// polled through its completion queues, possibly on another thread.
pub struct QueuePair {
    shared: Arc<QpShared>,
    /// Number of the next receive to post.
    rq_posted: u64,
    link: Option<Link>,
}

impl QueuePair {
    pub(crate) fn create(
        pd: Arc<PdShared>,
        qpn: u32,
        send_cq: Arc<CqShared>,
        recv_cq: Arc<CqShared>,
        config: QpConfig,
    ) -> Result<Self, AllocError> {
        validate(&config)?;
        let depth = config.max_recv_wr.next_power_of_two();
        let rq = RecvQueue::create(depth).map_err(|source| AllocError::SharedMemory {
            what: "a queue pair",
            source,
        })?;
        let shared = Arc::new(QpShared {
            qpn,
            rq,
            rq_polled: AtomicU64::new(0),
            send_ring: SendRing::new(config.max_send_wr),
            send_cq: send_cq.clone(),
            recv_cq: recv_cq.clone(),
            pd,
            config,
            tcp: OnceLock::new(),
            deliverer_gone: AtomicBool::new(false),
        });
        send_cq.attach(Source {
            qp: shared.clone(),
            send: true,
            recv: false,
        });
        recv_cq.attach(Source {
            qp: shared.clone(),
            send: false,
            recv: true,
        });
        shared.pd.device.registry.insert_qp(qpn, &shared);
        Ok(Self {
            shared,
            rq_posted: 0,
            link: None,
        })
    }

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<QpShared> {
        &self.shared
    }

    /// The queue pair number, unique within its device.
    pub fn qp_num(&self) -> u32 {
        self.shared.qpn
    }

    pub fn state(&self) -> QpState {
        self.shared.state()
    }

    pub fn config(&self) -> &QpConfig {
        &self.shared.config
    }

    /// Where the peer can reach this queue pair.
    pub fn endpoint(&self) -> Endpoint {
        let device = &self.shared.pd.device;
        Endpoint {
            fabric: device.config.fabric,
            address: device.address(),
            device: device.uid,
            qpn: self.shared.qpn,
        }
    }

    /// Connects to the peer queue pair at `remote`, which must call `connect` with this
    /// queue pair's endpoint too. The side with the smaller identity dials and returns once
    /// the peer's device accepted; the other waits for that link (up to the device's connect
    /// timeout). A link from any other peer is discarded meanwhile. Requests may be posted
    /// at once (on tcp the peer applies them once its own `connect` took the link; on shm
    /// they land at once, as with a peer QP already in RTR).
    ///
    /// # Errors
    /// Wrong fabric, already connected, peer unreachable or refusing, or the peer did not
    /// take part within the device's connect timeout.
    pub fn connect(&mut self, remote: &Endpoint) -> Result<(), ConnectError> {
        let device = self.shared.pd.device.clone();
        if remote.fabric != device.config.fabric {
            return Err(ConnectError::FabricMismatch {
                local: device.config.fabric.name(),
                remote: remote.fabric.name(),
            });
        }
        if self.link.is_some() || self.state() != QpState::Init {
            return Err(ConnectError::AlreadyConnected {
                qpn: self.shared.qpn,
            });
        }
        let timeout = device.config.connect_timeout;
        // The side with the smaller (device, qpn) dials; the other waits for its agent.
        let dials = (device.uid, self.shared.qpn) < (remote.device, remote.qpn);
        let link = if dials {
            match &device.listener {
                Listener::Shm(agent) => Link::Shm(shm::dial(agent, &self.shared, remote)?),
                Listener::Tcp(_) => Link::Tcp(tcp::dial(&device, &self.shared, remote)?),
            }
        } else {
            match device.registry.take(self.shared.qpn, remote, timeout)? {
                Pending::Shm(link) => {
                    if !link.activate() {
                        return Err(ConnectError::Handshake(
                            "the peer went away before the connection completed".into(),
                        ));
                    }
                    Link::Shm(link)
                }
                Pending::Tcp(stream, hello) => {
                    Link::Tcp(tcp::activate(stream, &self.shared, &hello)?)
                }
            }
        };
        self.link = Some(link);
        self.shared.rq.mark_connected();
        Ok(())
    }

    /// Posts a receive. Receives may be posted before `connect`.
    ///
    /// # Errors
    /// Too many scatter elements, or the receive queue is full of unpolled receives.
    #[inline]
    pub fn post_recv(&mut self, wr: &RecvWr<'_>) -> Result<(), PostError> {
        let config = &self.shared.config;
        if wr.sgl.len() > config.max_sge as usize {
            return Err(PostError::TooManySge {
                given: wr.sgl.len(),
                max: config.max_sge,
            });
        }
        check_total(wr.sgl)?;
        let depth = self.shared.rq.depth() as u64;
        if self.rq_posted - self.shared.rq_polled.load(Ordering::Acquire) >= depth {
            return Err(PostError::RecvQueueFull(depth as u32));
        }
        self.shared.rq.post(self.rq_posted, wr.wr_id, wr.sgl);
        self.rq_posted += 1;
        if self.shared.state() == QpState::Error {
            self.shared.recv_cq.notify(); // it completes at once, as a flush
        }
        Ok(())
    }

    /// Posts a send request. Failures of the transfer arrive as completions; only requests
    /// the queue pair cannot accept are refused here.
    ///
    /// # Errors
    /// Not connected, malformed request, or the send queue is full.
    #[inline]
    pub fn post_send(&mut self, wr: &SendWr<'_>) -> Result<(), PostError> {
        validate_send(&self.shared.config, wr)?;
        match &mut self.link {
            Some(Link::Shm(link)) => link.post_send(&self.shared, wr),
            Some(Link::Tcp(link)) => link.post_send(&self.shared, wr),
            None => Err(PostError::NotConnected),
        }
    }

    /// Moves the queue pair to the error state: outstanding and future requests are flushed.
    pub fn set_error(&mut self) {
        self.shared.fail();
        if let Some(Link::Tcp(link)) = &self.link {
            link.flush_outstanding(&self.shared);
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // Tell the peer: its operations towards us fail from now on.
        self.shared.fail();
        // Dropping the link closes its socket, which is how the peer learns we are gone.
        drop(self.link.take());
        self.shared.pd.device.registry.remove_qp(self.shared.qpn);
        self.shared.send_cq.detach(&self.shared);
        self.shared.recv_cq.detach(&self.shared);
    }
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qpn", &self.shared.qpn)
            .field("state", &self.state())
            .finish()
    }
}

fn validate(config: &QpConfig) -> Result<(), AllocError> {
    let bad = |what: String| Err(AllocError::InvalidConfig(what));
    if config.max_send_wr == 0 || config.max_send_wr > 1 << 16 {
        return bad(format!(
            "max_send_wr {} is not in 1..=65536",
            config.max_send_wr
        ));
    }
    if config.max_recv_wr == 0 || config.max_recv_wr > 1 << 16 {
        return bad(format!(
            "max_recv_wr {} is not in 1..=65536",
            config.max_recv_wr
        ));
    }
    if config.max_sge == 0 || config.max_sge as usize > crate::MAX_SGE {
        return bad(format!(
            "max_sge {} is not in 1..={}",
            config.max_sge,
            crate::MAX_SGE
        ));
    }
    if config.max_inline_data > crate::MAX_INLINE_DATA {
        return bad(format!(
            "max_inline_data {} exceeds {}",
            config.max_inline_data,
            crate::MAX_INLINE_DATA
        ));
    }
    Ok(())
}

#[inline]
/// Refuses scatter lists longer in total than [`crate::MAX_MESSAGE`] (lengths travel as u32).
fn check_total(sgl: &[crate::Sge]) -> Result<(), PostError> {
    let len: u64 = sgl.iter().map(|s| s.length as u64).sum();
    if len > crate::MAX_MESSAGE as u64 {
        return Err(PostError::MessageTooLarge {
            len,
            max: crate::MAX_MESSAGE,
        });
    }
    Ok(())
}

fn validate_send(config: &QpConfig, wr: &SendWr<'_>) -> Result<(), PostError> {
    if let Payload::Sgl(sgl) = wr.payload {
        check_total(sgl)?;
    }
    match wr.payload {
        Payload::Sgl(sgl) => {
            if sgl.len() > config.max_sge as usize {
                return Err(PostError::TooManySge {
                    given: sgl.len(),
                    max: config.max_sge,
                });
            }
            if matches!(wr.op, SendOp::FetchAdd { .. } | SendOp::CmpSwap { .. })
                && (sgl.len() != 1 || sgl[0].length != 8)
            {
                return Err(PostError::BadAtomicSgl);
            }
        }
        Payload::Inline(data) => {
            if data.len() > config.max_inline_data as usize {
                return Err(PostError::InlineTooLarge {
                    given: data.len(),
                    max: config.max_inline_data,
                });
            }
            if matches!(
                wr.op,
                SendOp::Read { .. } | SendOp::FetchAdd { .. } | SendOp::CmpSwap { .. }
            ) {
                return Err(PostError::InlineNotAllowed);
            }
        }
    }
    Ok(())
}

/// The completion of a send request that finished with `status`.
#[inline]
pub(crate) fn send_completion(
    qp: &QpShared,
    wr_id: u64,
    op: SendOp,
    status: WcStatus,
    byte_len: u32,
) -> WorkCompletion {
    WorkCompletion {
        wr_id,
        status,
        opcode: op.opcode(),
        byte_len,
        imm: None,
        qp_num: qp.qpn,
    }
}
