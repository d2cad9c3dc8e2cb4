//! What both ends of a worker connection are made of: a queue pair with its completion
//! queue, the slots the peer writes into, the staging slots outgoing messages are built in,
//! and where the peer's slots are. The executor's link (requests in, responses out) and
//! the client's link (responses in, requests out) add their protocol state on top.

use crate::fabric::{
    Access, Endpoint, Fabric, FabricError, MemoryRegion, PostError, ProtectionDomain, QpConfig,
    QueuePair, RecvWr, RemoteAddr, SendOp, SendWr, Sge, SlotRegion,
};
use crate::protocol::{RegionDesc, SlotGeometry};

pub(crate) struct SlotLink<F: Fabric> {
    pub(crate) qp: F::Qp,
    pub(crate) cq: F::Cq,
    /// The slots the peer writes into (remote write).
    pub(crate) incoming: SlotRegion<F::Mr>,
    /// The slots outgoing messages are built in (local only).
    pub(crate) staging: SlotRegion<F::Mr>,
    /// The peer's slots.
    peer: RemoteAddr,
    max_inline: usize,
    /// Sends since the last signaled one: one in `signal_every` asks for a completion,
    /// which (on verbs) also frees the send-queue entries of the unsignaled ones before it.
    unsignaled: u32,
    signal_every: u32,
}

impl<F: Fabric> SlotLink<F> {
    /// Creates the queue pair (reporting to a new completion queue that signals `channel`)
    /// and both slot regions of `geometry`, and posts a receive for every slot.
    pub(crate) fn create(
        fabric: &F,
        pd: &F::Pd,
        channel: &F::Channel,
        geometry: SlotGeometry,
    ) -> Result<Self, FabricError> {
        let slots = geometry.slots() as usize;
        let slot_size = geometry.slot_size() as usize;
        let max_inline = fabric.max_inline_data().min(256);
        // A send's completion may still be unpolled when the answer to it has arrived and
        // the slot is reused: room for two sends per slot. The queue holds those and a
        // receive per slot.
        let config = QpConfig {
            max_send_wr: 2 * geometry.slots(),
            max_recv_wr: geometry.slots(),
            max_sge: 1,
            max_inline_data: max_inline,
            ..QpConfig::default()
        };
        let cq = fabric.create_cq(3 * geometry.slots(), Some(channel))?;
        let qp = pd.create_qp(&cq, &cq, config)?;
        let incoming = SlotRegion::register(
            pd,
            slots,
            slot_size,
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        )?;
        let staging = SlotRegion::register(pd, slots, slot_size, Access::LOCAL_WRITE)?;
        let mut link = Self {
            qp,
            cq,
            incoming,
            staging,
            peer: RemoteAddr::default(),
            max_inline: max_inline as usize,
            unsignaled: 0,
            signal_every: (geometry.slots() / 2).max(1),
        };
        for _ in 0..slots {
            link.post_receive()
                .map_err(|e| FabricError::Config(format!("posting receives: {e}")))?;
        }
        Ok(link)
    }

    /// The incoming slots as the peer sees them.
    pub(crate) fn incoming_region(&self) -> RegionDesc {
        let r = self.incoming.region();
        RegionDesc {
            addr: r.addr(),
            rkey: r.rkey(),
            len: r.len() as u64,
        }
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        self.qp.endpoint()
    }

    /// Connects to the peer's queue pair, whose slots are `peer_slots`.
    pub(crate) fn connect(
        &mut self,
        peer: &Endpoint,
        peer_slots: RegionDesc,
    ) -> Result<(), FabricError> {
        self.peer = RemoteAddr {
            addr: peer_slots.addr,
            rkey: peer_slots.rkey,
        };
        self.qp.connect(peer)
    }

    /// Posts a receive: a WRITE_WITH_IMM lands in a slot, the receive only carries the
    /// immediate.
    #[inline]
    pub(crate) fn post_receive(&mut self) -> Result<(), PostError> {
        self.qp.post_recv(&RecvWr { wr_id: 0, sgl: &[] })
    }

    /// Writes `len` bytes of staging slot `slot` from byte `from` to `peer_offset` of the
    /// peer's slots with immediate `imm`: inline when small, one send in `signal_every`
    /// signaled.
    #[inline]
    pub(crate) fn send(
        &mut self,
        slot: usize,
        from: usize,
        len: usize,
        peer_offset: u64,
        imm: u32,
    ) -> Result<(), PostError> {
        let (op, signaled) = self.next_write(peer_offset, imm);
        if len <= self.max_inline {
            let message = &self.staging.staging_mut(slot, from + len)[from..];
            self.qp
                .post_send(&signal(SendWr::inline(slot as u64, op, message), signaled))
        } else {
            let sge = [self.staging.sge_at(slot, from, len)];
            self.qp
                .post_send(&signal(SendWr::new(slot as u64, op, &sge), signaled))
        }
    }

    /// Like [`SlotLink::send`], from registered memory outside the staging slots: `bytes`,
    /// which `sge` names (copied at post time when small enough to go inline, otherwise
    /// read by the device, so they must stay unchanged until the answer arrives).
    #[inline]
    pub(crate) fn send_from(
        &mut self,
        wr_id: u64,
        bytes: &[u8],
        sge: Sge,
        peer_offset: u64,
        imm: u32,
    ) -> Result<(), PostError> {
        let (op, signaled) = self.next_write(peer_offset, imm);
        if bytes.len() <= self.max_inline {
            self.qp
                .post_send(&signal(SendWr::inline(wr_id, op, bytes), signaled))
        } else {
            self.qp
                .post_send(&signal(SendWr::new(wr_id, op, &[sge]), signaled))
        }
    }

    /// The WRITE_WITH_IMM to `peer_offset`, and whether it is the one in `signal_every`
    /// that asks for a completion.
    #[inline]
    fn next_write(&mut self, peer_offset: u64, imm: u32) -> (SendOp, bool) {
        let op = SendOp::WriteWithImm {
            remote: RemoteAddr {
                addr: self.peer.addr + peer_offset,
                rkey: self.peer.rkey,
            },
            imm,
        };
        let signaled = self.unsignaled + 1 >= self.signal_every;
        self.unsignaled = if signaled { 0 } else { self.unsignaled + 1 };
        (op, signaled)
    }

    /// Where the peer's slots are.
    pub(crate) fn peer(&self) -> RemoteAddr {
        self.peer
    }
}

/// `wr`, unsignaled unless `signaled`.
#[inline]
fn signal(wr: SendWr<'_>, signaled: bool) -> SendWr<'_> {
    if signaled {
        wr
    } else {
        wr.unsignaled()
    }
}
