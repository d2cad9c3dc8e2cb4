//! One client connection served by one worker: the queue pair, its completion queue, the
//! request slots the client writes into, the staging slots responses are built in, and the
//! protocol state. `serve` is the executor's hot path.

use std::sync::Arc;

use crate::fabric::{
    Access, Fabric, FabricError, MemoryRegion, ProtectionDomain, QpConfig, QueuePair, RecvWr,
    RemoteAddr, SendOp, SendWr, SlotRegion, WcOpcode, WorkCompletion,
};
use crate::protocol::{
    ExecutorConnection, RegionDesc, RequestImm, SlotGeometry, Status, HEADER_LEN,
};

use super::catalog::{call_target, Catalog, Outcome, Target};
use crate::fabric::cycles::cycles;
use crate::function::FunctionTable;

/// Completions taken from the queue per poll.
pub(crate) const POLL_BATCH: usize = 16;

/// What a worker counts of its own work across its links, for billing: plain integers
/// it owns, published to [`super::worker::WorkerStats`] with relaxed stores.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tally {
    /// Function calls (requests that reached a function).
    pub(crate) invocations: u64,
    /// Cycles ([`crate::fabric::cycles::cycles`]) spent inside function calls.
    pub(crate) busy_cycles: u64,
}

/// Why a link stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkEnd {
    /// A completion failed: the client went away or broke the connection.
    #[error("a completion failed: {}", .0.status)]
    Completion(WorkCompletion),
    /// Posting a receive or a response failed.
    #[error("posting failed: {0}")]
    Post(crate::fabric::PostError),
}

/// What every link of one allocation shares.
pub(crate) struct LinkPlan {
    pub(crate) client: u64,
    pub(crate) geometry: SlotGeometry,
    /// Connection function index → the function it calls.
    pub(crate) functions: Arc<[Target]>,
    /// Libraries the client shipped with the allocation, if any.
    pub(crate) shipped: Option<Arc<FunctionTable>>,
    /// Copy each request out of its slot before validating it.
    pub(crate) private_inputs: bool,
}

pub(crate) struct ExecutorLink<F: Fabric> {
    /// Which allocation this link belongs to (to tear its links down together).
    pub(crate) client: u64,
    qp: F::Qp,
    pub(crate) cq: F::Cq,
    requests: SlotRegion<F::Mr>,
    staging: SlotRegion<F::Mr>,
    state: ExecutorConnection,
    /// Connection function index → the function it calls.
    functions: Arc<[Target]>,
    /// Libraries the client shipped with the allocation, if any.
    shipped: Option<Arc<FunctionTable>>,
    responses: RemoteAddr,
    /// With private inputs: each request is copied here before it is validated.
    private: Option<Box<[u8]>>,
    max_inline: usize,
    /// Sends since the last signaled one: one in `signal_every` asks for a completion,
    /// which (on verbs) also frees the send-queue entries of the unsignaled ones before it.
    unsignaled: u32,
    signal_every: u32,
    /// Requests answered and requests dropped unanswerable, for the executor's report.
    pub(crate) served: u64,
    pub(crate) dropped: u64,
}

impl<F: Fabric> ExecutorLink<F> {
    /// Creates the queue pair and regions for one worker of an allocation and posts a
    /// receive for every slot. `channel` is the worker's, so that its sleeps wake on this
    /// link's requests.
    pub(crate) fn create(
        fabric: &F,
        pd: &F::Pd,
        channel: &F::Channel,
        plan: &LinkPlan,
    ) -> Result<Self, FabricError> {
        let LinkPlan {
            client,
            geometry,
            ref functions,
            ref shipped,
            private_inputs,
        } = *plan;
        let functions = functions.clone();
        let shipped = shipped.clone();
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
        let requests = SlotRegion::register(
            pd,
            slots,
            slot_size,
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
        )?;
        let staging = SlotRegion::register(pd, slots, slot_size, Access::LOCAL_WRITE)?;
        let mut link = Self {
            client,
            qp,
            cq,
            requests,
            staging,
            state: ExecutorConnection::new(geometry, functions.len() as u32),
            functions,
            shipped,
            responses: RemoteAddr::default(),
            private: private_inputs.then(|| vec![0u8; slot_size].into_boxed_slice()),
            max_inline: max_inline as usize,
            unsignaled: 0,
            signal_every: (geometry.slots() / 2).max(1),
            served: 0,
            dropped: 0,
        };
        for _ in 0..slots {
            link.post_receive()
                .map_err(|e| FabricError::Config(format!("posting receives: {e}")))?;
        }
        Ok(link)
    }

    /// Where the client writes requests: the request region.
    pub(crate) fn request_region(&self) -> RegionDesc {
        let r = self.requests.region();
        RegionDesc {
            addr: r.addr(),
            rkey: r.rkey(),
            len: r.len() as u64,
        }
    }

    pub(crate) fn endpoint(&self) -> crate::fabric::Endpoint {
        self.qp.endpoint()
    }

    /// Connects to the client's queue pair and response region.
    pub(crate) fn connect(
        &mut self,
        client: &crate::fabric::Endpoint,
        responses: RegionDesc,
    ) -> Result<(), FabricError> {
        self.responses = RemoteAddr {
            addr: responses.addr,
            rkey: responses.rkey,
        };
        self.qp.connect(client)
    }

    /// Handles the completions in `wcs`: runs each request and posts its response.
    pub(crate) fn handle<C: Catalog>(
        &mut self,
        wcs: &[WorkCompletion],
        catalog: &C,
        tally: &mut Tally,
    ) -> Result<(), LinkEnd> {
        for wc in wcs {
            if !wc.is_ok() {
                return Err(LinkEnd::Completion(*wc));
            }
            if wc.opcode == WcOpcode::RecvRdmaWithImm {
                self.post_receive().map_err(LinkEnd::Post)?;
                self.serve(wc.imm.unwrap_or(0), wc.byte_len as usize, catalog, tally)?;
            }
            // Send completions only free send-queue entries: nothing to do.
        }
        Ok(())
    }

    /// Validates the request announced by `imm`, runs it and writes the response.
    fn serve<C: Catalog>(
        &mut self,
        imm: u32,
        len: usize,
        catalog: &C,
        tally: &mut Tally,
    ) -> Result<(), LinkEnd> {
        let slot_size = self.requests.slot_size();
        // The slot comes from the immediate; `on_request` re-checks it and refuses what
        // is out of range before reading a byte, so an impossible slot reads nothing.
        let slot = RequestImm::decode(imm)
            .map(|i| i.slot() as usize)
            .ok()
            .filter(|&s| s < self.requests.slots());
        let bytes = match slot {
            Some(s) => {
                self.requests.prefetch(s, len);
                let incoming = self.requests.incoming(s, len.min(slot_size));
                match self.private.as_deref_mut() {
                    Some(private) => {
                        let copy = &mut private[..incoming.len()];
                        copy.copy_from_slice(incoming);
                        &*copy
                    }
                    None => incoming,
                }
            }
            None => &[],
        };
        let (slot, id, status, error_code, output_len) = match self.state.on_request(imm, bytes) {
            Ok(req) => {
                let output =
                    &mut self.staging.staging_mut(req.slot as usize, slot_size)[HEADER_LEN..];
                let target = self.functions[req.function as usize];
                let shipped = self.shipped.as_deref();
                // Busy time: the function call alone, timed with the cycle counter (no
                // system call); the accountant converts cycles to nanoseconds.
                let called = cycles();
                let outcome = call_target(target, catalog, shipped, req.payload, output);
                tally.busy_cycles += cycles().wrapping_sub(called);
                tally.invocations += 1;
                let (status, code, len) = match outcome {
                    Outcome::Output(n) if n <= output.len() => (Status::Ok, 0, n),
                    Outcome::Output(_) | Outcome::OutputTooLarge => (Status::OutputTooLarge, 0, 0),
                    Outcome::Failed(code) => (Status::FunctionError, code, 0),
                    Outcome::InvalidInput => (Status::ValidationFailed, 0, 0),
                    Outcome::Panicked => (Status::FunctionPanicked, 0, 0),
                };
                (req.slot, req.id, status, code, len)
            }
            Err(rejection) => {
                if !rejection.answerable() {
                    self.dropped += 1;
                    return Ok(());
                }
                let (Some(slot), Some(id)) = (rejection.slot(), rejection.id()) else {
                    self.dropped += 1;
                    return Ok(());
                };
                (slot, id, rejection.status(), 0, 0)
            }
        };
        let response = self
            .state
            .encode_response(slot, id, status, error_code, output_len)
            .expect("the slot owes exactly this response");
        let slot = slot as usize;
        let message = self.staging.staging_mut(slot, response.write_len);
        message[..HEADER_LEN].copy_from_slice(&response.header);
        let op = SendOp::WriteWithImm {
            remote: RemoteAddr {
                addr: self.responses.addr + response.remote_offset,
                rkey: self.responses.rkey,
            },
            imm: response.imm,
        };
        let signaled = self.unsignaled + 1 >= self.signal_every;
        self.unsignaled = if signaled { 0 } else { self.unsignaled + 1 };
        let posted = if response.write_len <= self.max_inline {
            let message = &self.staging.staging_mut(slot, response.write_len)[..];
            self.qp
                .post_send(&signal(SendWr::inline(slot as u64, op, message), signaled))
        } else {
            let sge = [self.staging.sge(slot, response.write_len)];
            self.qp
                .post_send(&signal(SendWr::new(slot as u64, op, &sge), signaled))
        };
        posted.map_err(LinkEnd::Post)?;
        self.served += 1;
        Ok(())
    }

    fn post_receive(&mut self) -> Result<(), crate::fabric::PostError> {
        // WRITE_WITH_IMM lands in the request slot: the receive only carries the immediate.
        self.qp.post_recv(&RecvWr { wr_id: 0, sgl: &[] })
    }
}

impl<F: Fabric> std::fmt::Debug for ExecutorLink<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorLink")
            .field("client", &self.client)
            .field("qp", &self.qp.qp_num())
            .field("served", &self.served)
            .finish()
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
