//! One client connection served by one worker: the queue pair, its completion queue, the
//! request slots the client writes into, the staging slots responses are built in, and the
//! protocol state. `serve` is the executor's hot path.

use std::sync::Arc;

use crate::fabric::{Fabric, FabricError, QueuePair, WcOpcode, WorkCompletion};
use crate::protocol::{
    written_extent, ExecutorConnection, RegionDesc, RequestImm, SlotGeometry, Status, HEADER_LEN,
};
use crate::slot_link::SlotLink;

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
    /// The queue pair, request slots (incoming) and response staging.
    pub(crate) slots: SlotLink<F>,
    state: ExecutorConnection,
    /// Connection function index → the function it calls.
    functions: Arc<[Target]>,
    /// Libraries the client shipped with the allocation, if any.
    shipped: Option<Arc<FunctionTable>>,
    /// With private inputs: each request is copied here before it is validated.
    private: Option<Box<[u8]>>,
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
        let slot_size = geometry.slot_size() as usize;
        Ok(Self {
            client,
            slots: SlotLink::create(fabric, pd, channel, geometry)?,
            state: ExecutorConnection::new(geometry, functions.len() as u32),
            functions,
            shipped,
            private: private_inputs.then(|| vec![0u8; slot_size].into_boxed_slice()),
            served: 0,
            dropped: 0,
        })
    }

    /// Where the client writes requests: the request region.
    pub(crate) fn request_region(&self) -> RegionDesc {
        self.slots.incoming_region()
    }

    pub(crate) fn endpoint(&self) -> crate::fabric::Endpoint {
        self.slots.endpoint()
    }

    /// Connects to the client's queue pair and response region.
    pub(crate) fn connect(
        &mut self,
        client: &crate::fabric::Endpoint,
        responses: RegionDesc,
    ) -> Result<(), FabricError> {
        self.slots.connect(client, responses)
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
                // Before serving, not after: measured on shm, re-posting after the answer
                // made a hot no-op ~50 ns slower (the receive queue's lines then move
                // between the cores on the next request's critical path).
                self.slots.post_receive().map_err(LinkEnd::Post)?;
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
        let slot_size = self.slots.incoming.slot_size();
        // The slot comes from the immediate; `on_request` re-checks it and refuses what
        // is out of range before reading a byte, so an impossible slot reads nothing.
        let slot = RequestImm::decode(imm)
            .map(|i| i.slot() as usize)
            .ok()
            .filter(|&s| s < self.slots.incoming.slots());
        // What the WRITE covered: the header and payload, or (compact) the payload alone.
        let extent = written_extent(imm, len);
        let end = extent.end.min(slot_size);
        let bytes = match slot {
            Some(s) => {
                self.slots.incoming.prefetch(s, extent.clone());
                let incoming = self.slots.incoming.incoming(s, end);
                match self.private.as_deref_mut() {
                    Some(private) => {
                        let copied = extent.start.min(end)..end;
                        private[copied.clone()].copy_from_slice(&incoming[copied]);
                        &private[..end]
                    }
                    None => incoming,
                }
            }
            None => &[],
        };
        let (slot, id, status, error_code, output_len) = match self
            .state
            .on_request(imm, len, bytes)
        {
            Ok(req) => {
                let output =
                    &mut self.slots.staging.staging_mut(req.slot as usize, slot_size)[HEADER_LEN..];
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
        if let Some(header) = &response.header {
            self.slots.staging.staging_mut(slot, HEADER_LEN)[..].copy_from_slice(header);
        }
        let posted = self.slots.send(
            slot,
            response.local_offset,
            response.write_len,
            response.remote_offset,
            response.imm,
        );
        posted.map_err(LinkEnd::Post)?;
        self.served += 1;
        Ok(())
    }
}

impl<F: Fabric> std::fmt::Debug for ExecutorLink<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorLink")
            .field("client", &self.client)
            .field("qp", &self.slots.qp.qp_num())
            .field("served", &self.served)
            .finish()
    }
}
