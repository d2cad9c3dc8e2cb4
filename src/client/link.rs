//! One worker connection of an allocation, client side: the queue pair, its completion
//! queue, the response slots the executor writes into, the staging slots requests are
//! built in, and the protocol state. `start` and `poll_event` are the client's hot path.

use std::time::Duration;

use crate::fabric::{
    CompletionChannel, CompletionQueue, Endpoint, Fabric, FabricError, QueuePair, RemoteAddr,
    SendOp, SendWr, Sge, WcOpcode, WorkCompletion,
};
use crate::protocol::{
    written_extent, ClientConnection, ClientWorker, PrepareError, RegionDesc, RequestHeader,
    ResponseImm, SlotGeometry, HEADER_LEN,
};
use crate::slot_link::SlotLink;

use super::error::InvokeError;

const POLL_BATCH: usize = 16;

/// A finished invocation. On success its output stays in the response slot until
/// [`ClientLink::release`].
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) slot: u16,
    pub(crate) id: u64,
    /// The output's length, or why the invocation failed.
    pub(crate) outcome: Result<usize, InvokeError>,
}

pub(crate) struct ClientLink<F: Fabric> {
    /// The queue pair, response slots (incoming) and request staging.
    slots: SlotLink<F>,
    pub(crate) channel: F::Channel,
    state: ClientConnection,
    /// Completions polled but not handled yet.
    polled: [WorkCompletion; POLL_BATCH],
    polled_next: usize,
    polled_len: usize,
    /// Set once the connection failed; every later call fails the same way.
    dead: Option<InvokeError>,
    /// For the async API: the channel registered with tokio, made on first use.
    #[cfg(feature = "tokio")]
    pub(crate) async_fd:
        Option<tokio::io::unix::AsyncFd<crate::fabric::reactor::ChannelFd<F::Channel>>>,
}

impl<F: Fabric> ClientLink<F> {
    pub(crate) fn create(
        fabric: &F,
        pd: &F::Pd,
        geometry: SlotGeometry,
        function_count: u32,
        first_id: std::num::NonZeroU64,
    ) -> Result<Self, FabricError> {
        let channel = fabric.create_channel()?;
        Ok(Self {
            slots: SlotLink::create(fabric, pd, &channel, geometry)?,
            channel,
            state: ClientConnection::with_first_id(geometry, function_count, first_id),
            polled: [WorkCompletion::default(); POLL_BATCH],
            polled_next: 0,
            polled_len: 0,
            dead: None,
            #[cfg(feature = "tokio")]
            async_fd: None,
        })
    }

    /// Whether requests go in the protocol's compact form (see `AllocationOptions`).
    pub(crate) fn set_compact(&mut self, enabled: bool) {
        self.state.set_compact(enabled);
    }

    /// What the hello tells the executor about this connection.
    pub(crate) fn describe(&self) -> ClientWorker {
        ClientWorker {
            endpoint: self.slots.endpoint(),
            response_region: self.slots.incoming_region(),
        }
    }

    pub(crate) fn connect(
        &mut self,
        executor: &Endpoint,
        requests: RegionDesc,
    ) -> Result<(), FabricError> {
        self.slots.connect(executor, requests)
    }

    pub(crate) fn max_payload(&self) -> usize {
        self.state.geometry().max_payload()
    }

    pub(crate) fn available(&self) -> u32 {
        if self.dead.is_some() {
            0
        } else {
            self.state.available()
        }
    }

    pub(crate) fn dead(&self) -> Option<&InvokeError> {
        self.dead.as_ref()
    }

    /// Fails the connection: every invocation in flight and every later one gets `error`.
    pub(crate) fn kill(&mut self, error: InvokeError) {
        if self.dead.is_none() {
            self.dead = Some(error);
            self.slots.qp.set_error();
        }
    }

    /// Sends an invocation of `function` whose payload `encode` writes in place into the
    /// staging slot (given the slot's payload area; it returns the payload's length).
    /// Returns the slot and the invocation id.
    pub(crate) fn start_with(
        &mut self,
        function: u32,
        encode: impl FnOnce(&mut [u8]) -> Result<usize, InvokeError>,
    ) -> Result<(u16, u64), InvokeError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        // The slot is taken before the payload is known, so that `encode` can write it
        // straight into its place; the header is rebuilt with the real length after.
        let prepared = self.state.prepare(function, 0).map_err(prepare_error)?;
        let slot = prepared.slot as usize;
        let max = self.max_payload();
        let area = &mut self.slots.staging.staging_mut(slot, HEADER_LEN + max)[HEADER_LEN..];
        let encoded = match encode(area) {
            Ok(len) if len > max => Err(InvokeError::PayloadTooLarge { len, max }),
            other => other,
        };
        let len = match encoded {
            Ok(len) => len,
            Err(e) => {
                let _ = self.state.cancel(prepared.slot, prepared.id);
                return Err(e);
            }
        };
        // The compact form (no header) carries the length as the WRITE's own.
        let write_len = match prepared.header {
            None => len,
            Some(_) => {
                let header = RequestHeader {
                    id: prepared.id,
                    function,
                    payload_len: len as u32,
                    flags: 0,
                };
                self.slots.staging.staging_mut(slot, HEADER_LEN)[..]
                    .copy_from_slice(&header.encode());
                HEADER_LEN + len
            }
        };
        let posted = self.slots.send(
            slot,
            prepared.local_offset,
            write_len,
            prepared.remote_offset,
            prepared.imm,
        );
        if let Err(e) = posted {
            let _ = self.state.cancel(prepared.slot, prepared.id);
            let error = InvokeError::gone_on_post(e);
            self.kill(error.clone());
            return Err(error);
        }
        Ok((prepared.slot, prepared.id))
    }

    /// Sends an invocation of `function` whose input `input` lies in registered memory
    /// that `sge` names: in the compact form the WRITE reads it in place (no copy into a
    /// staging slot); a request that needs the full form (header and payload in one
    /// WRITE) copies it into the staging slot as [`ClientLink::start`] does.
    pub(crate) fn start_from(
        &mut self,
        function: u32,
        input: &[u8],
        sge: Sge,
    ) -> Result<(u16, u64), InvokeError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        let max = self.max_payload();
        if input.len() > max {
            return Err(InvokeError::PayloadTooLarge {
                len: input.len(),
                max,
            });
        }
        let prepared = self
            .state
            .prepare(function, input.len())
            .map_err(prepare_error)?;
        if prepared.header.is_some() {
            let _ = self.state.cancel(prepared.slot, prepared.id);
            return self.start(function, input);
        }
        let posted = self.slots.send_from(
            prepared.slot as u64,
            input,
            sge,
            prepared.remote_offset,
            prepared.imm,
        );
        if let Err(e) = posted {
            let _ = self.state.cancel(prepared.slot, prepared.id);
            let error = InvokeError::gone_on_post(e);
            self.kill(error.clone());
            return Err(error);
        }
        Ok((prepared.slot, prepared.id))
    }

    /// Sends an invocation of `function` with `input` copied into the staging slot.
    #[inline]
    pub(crate) fn start(&mut self, function: u32, input: &[u8]) -> Result<(u16, u64), InvokeError> {
        let max = self.max_payload();
        if input.len() > max {
            return Err(InvokeError::PayloadTooLarge {
                len: input.len(),
                max,
            });
        }
        self.start_with(function, |area| {
            area[..input.len()].copy_from_slice(input);
            Ok(input.len())
        })
    }

    /// Writes `bytes` into request slot `slot` with immediate `imm`, outside the protocol:
    /// for tests of what an executor does with hostile requests.
    pub(crate) fn send_raw(
        &mut self,
        slot: u16,
        bytes: &[u8],
        imm: u32,
    ) -> Result<(), InvokeError> {
        let slot_size = self.slots.staging.slot_size();
        if slot as usize >= self.slots.staging.slots() || bytes.len() > slot_size {
            return Err(InvokeError::PayloadTooLarge {
                len: bytes.len(),
                max: slot_size,
            });
        }
        // Completions of earlier raw writes (and answers to them) free the send queue.
        while let Ok(Some(event)) = self.poll_event() {
            self.settle_stray(&event);
        }
        // Staging slot 0 is borrowed for the message; a test does nothing else meanwhile.
        self.slots
            .staging
            .staging_mut(0, bytes.len())
            .copy_from_slice(bytes);
        let sge = [self.slots.staging.sge(0, bytes.len())];
        let op = SendOp::WriteWithImm {
            remote: RemoteAddr {
                addr: self.slots.peer().addr + slot as u64 * slot_size as u64,
                rkey: self.slots.peer().rkey,
            },
            imm,
        };
        self.slots
            .qp
            .post_send(&SendWr::new(
                u64::MAX,
                op,
                if bytes.is_empty() { &[] } else { &sge },
            ))
            .map_err(InvokeError::gone_on_post)
    }

    /// The next finished invocation, if one has arrived. `Err` when the connection failed
    /// (then every invocation in flight on it has failed).
    pub(crate) fn poll_event(&mut self) -> Result<Option<Event>, InvokeError> {
        loop {
            if let Some(e) = &self.dead {
                return Err(e.clone());
            }
            if self.polled_next == self.polled_len {
                self.polled_len = self.slots.cq.poll(&mut self.polled);
                self.polled_next = 0;
                if self.polled_len == 0 {
                    return Ok(None);
                }
            }
            let wc = self.polled[self.polled_next];
            self.polled_next += 1;
            if !wc.is_ok() {
                self.kill(InvokeError::gone_after(wc.status));
                continue;
            }
            if wc.opcode != WcOpcode::RecvRdmaWithImm {
                continue; // a request's send completion: its entry is free again
            }
            if let Err(e) = self.slots.post_receive() {
                self.kill(InvokeError::gone_on_post(e));
                continue;
            }
            if let Some(event) = self.take_response(wc.imm.unwrap_or(0), wc.byte_len as usize) {
                return Ok(Some(event));
            }
        }
    }

    fn take_response(&mut self, imm: u32, len: usize) -> Option<Event> {
        let slot_size = self.slots.incoming.slot_size();
        let extent = written_extent(imm, len);
        let bytes = match ResponseImm::peek(imm) {
            Some(peeked) if (peeked.slot as usize) < self.slots.incoming.slots() => {
                let slot = peeked.slot as usize;
                self.slots.incoming.prefetch(slot, extent.clone());
                self.slots
                    .incoming
                    .incoming(slot, extent.end.min(slot_size))
            }
            _ => &[],
        };
        match self.state.on_response_hold(imm, len, bytes) {
            Ok(done) => {
                let (slot, id) = (done.slot, done.id);
                let outcome = if done.status.is_ok() {
                    Ok(done.output.len())
                } else {
                    // Nothing to read in place: the slot is free at once.
                    let error = InvokeError::from_status(done.status, done.error_code);
                    self.release(slot, id);
                    Err(error)
                };
                Some(Event { slot, id, outcome })
            }
            Err(e) => e.failed_invocation().map(|(slot, id)| Event {
                slot,
                id,
                outcome: Err(InvokeError::BadResponse(e.to_string())),
            }),
        }
    }

    /// The output of a successful invocation, in place in its response slot.
    pub(crate) fn output(&self, slot: u16, len: usize) -> &[u8] {
        &self
            .slots
            .incoming
            .incoming(slot as usize, HEADER_LEN + len)[HEADER_LEN..]
    }

    /// Settles the end of an invocation nobody waits for any more (its future was
    /// dropped): its slot is freed.
    pub(crate) fn settle_stray(&mut self, event: &Event) {
        if event.outcome.is_ok() {
            self.release(event.slot, event.id);
        }
    }

    /// Frees the slot of a successful invocation once its output has been read.
    pub(crate) fn release(&mut self, slot: u16, id: u64) {
        // Only a slot the link handed out as held can come back here.
        let _ = self.state.release(slot, id);
    }

    /// Gives up on an invocation in flight (its late response will be discarded).
    pub(crate) fn abandon(&mut self, slot: u16, id: u64) {
        let _ = self.state.abandon(slot, id);
    }

    /// Arms the completion queue before sleeping on the channel; afterwards poll once more.
    pub(crate) fn arm(&mut self) {
        self.slots.cq.arm();
    }

    /// Sleeps on the channel (blocking API) for at most `timeout`.
    pub(crate) fn sleep(&mut self, timeout: Duration) {
        self.arm();
        if self.polled_next < self.polled_len {
            return;
        }
        self.polled_len = self.slots.cq.poll(&mut self.polled);
        self.polled_next = 0;
        if self.polled_len == 0 {
            let _ = self.channel.get_event(Some(timeout));
        }
    }
}

fn prepare_error(e: PrepareError) -> InvokeError {
    match e {
        PrepareError::PayloadTooLarge { len, max } => InvokeError::PayloadTooLarge { len, max },
        PrepareError::UnknownFunction { index, .. } => {
            InvokeError::UnknownFunction(format!("#{index}"))
        }
        PrepareError::AllSlotsInFlight { .. } => InvokeError::Busy,
        PrepareError::IdsExhausted => {
            InvokeError::ExecutorGone("the connection has used all its invocation ids".into())
        }
    }
}
