//! An allocation: workers of one executor, reached over one queue pair each, with the
//! blocking invocation API.

use std::io::{BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::Deref;
use std::time::{Duration, Instant};

use crate::control::{read_message, write_message, ControlError};
use crate::fabric::{Fabric, LocalBuffer};
use crate::protocol::{ClientHello, ControlMessage, LibraryDesc};
use rafi_function::rkyv;

use super::buffer::InputBuffer;
use super::error::{AllocateError, InvokeError};
use super::link::{ClientLink, Event};
use super::options::AllocationOptions;

/// Empty polls between two looks at the clock while waiting.
const POLLS_PER_CLOCK_CHECK: u32 = 256;

/// An input of `invoke_many` in flight: its index and invocation id.
type InFlight = (usize, u64);

/// A function of the allocation, resolved once by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FunctionId(pub(crate) u32);

/// Workers of one executor, allocated to this client. Invocations from one allocation are
/// issued by one thread at a time (`&mut self`); use one allocation per thread for
/// concurrency.
pub struct Allocation<F: Fabric> {
    pub(super) links: Vec<ClientLink<F>>,
    functions: Vec<String>,
    pub(super) options: AllocationOptions,
    control: TcpStream,
    next_link: usize,
    /// For fan-out: `owners[link][slot]` is the input index and invocation id in flight
    /// there. Allocated once, so that `invoke_many` allocates nothing itself.
    owners: Vec<Box<[Option<InFlight>]>>,
    /// This allocation's identity, which its input buffers carry.
    id: u64,
    // Dropped last: the device outlives its resources.
    _pd: F::Pd,
    _fabric: F,
}

impl<F: Fabric> Allocation<F> {
    /// Allocates `options.workers` workers of the executor at `executor` for the
    /// `functions` named, on `fabric`.
    ///
    /// # Errors
    /// When the executor cannot be reached, refuses (unknown functions, too many workers,
    /// another fabric), or a connection cannot be set up.
    pub fn connect(
        fabric: F,
        executor: impl ToSocketAddrs + std::fmt::Display,
        functions: &[&str],
        options: AllocationOptions,
    ) -> Result<Self, AllocateError> {
        if options.workers == 0 {
            return Err(AllocateError::Invalid(
                "an allocation needs a worker".into(),
            ));
        }
        let control = TcpStream::connect(&executor).map_err(|source| AllocateError::Connect {
            addr: executor.to_string(),
            source,
        })?;
        let _ = control.set_nodelay(true);
        let pd = fabric.alloc_pd()?;
        let mut links = Vec::with_capacity(options.workers);
        for _ in 0..options.workers {
            let mut link = ClientLink::create(
                &fabric,
                &pd,
                options.geometry,
                functions.len() as u32,
                options.first_id,
            )?;
            link.set_compact(options.compact);
            links.push(link);
        }
        let names: Vec<String> = functions.iter().map(|s| s.to_string()).collect();
        let mut hello = ClientHello::new(
            options.client_name.clone(),
            names.clone(),
            options.geometry,
            links.iter().map(ClientLink::describe).collect(),
        );
        hello.libraries = options
            .libraries
            .iter()
            .map(|l| LibraryDesc {
                name: l.name.clone(),
                len: l.bytes.len() as u64,
            })
            .collect();
        let mut writer = control.try_clone().map_err(ControlError::Io)?;
        write_message(&mut writer, &ControlMessage::Hello(hello.clone()))
            .map_err(ControlError::Io)?;
        // The libraries' bytes follow the hello, raw, in its order.
        for library in &options.libraries {
            writer.write_all(&library.bytes).map_err(ControlError::Io)?;
        }
        let mut reader = BufReader::new(control.try_clone().map_err(ControlError::Io)?);
        let reply = read_message(&mut reader)?.into_reply()?;
        reply.check(&hello)?;
        for (link, theirs) in links.iter_mut().zip(&reply.workers) {
            link.connect(&theirs.endpoint, theirs.request_region)?;
        }
        read_message(&mut reader)?.into_ready()?;
        // From here on the control connection is only watched for the executor's end.
        control.set_nonblocking(true).map_err(ControlError::Io)?;
        let owners = links
            .iter()
            .map(|_| vec![None; options.geometry.slots() as usize].into_boxed_slice())
            .collect();
        Ok(Self {
            links,
            functions: names,
            options,
            control,
            next_link: 0,
            owners,
            id: super::buffer::next_owner(),
            _pd: pd,
            _fabric: fabric,
        })
    }

    /// The handle of function `name`.
    ///
    /// # Errors
    /// [`InvokeError::UnknownFunction`] if it was not named at allocation.
    pub fn function(&self, name: &str) -> Result<FunctionId, InvokeError> {
        self.functions
            .iter()
            .position(|f| f == name)
            .map(|i| FunctionId(i as u32))
            .ok_or_else(|| InvokeError::UnknownFunction(name.to_string()))
    }

    /// The largest input (and output) one invocation carries.
    pub fn max_payload(&self) -> usize {
        self.options.geometry.max_payload()
    }

    pub fn workers(&self) -> usize {
        self.links.len()
    }

    pub fn options(&self) -> &AllocationOptions {
        &self.options
    }

    /// Invokes `name` on `input` and returns its output in a new vector. For the hot path
    /// use [`Allocation::invoke_into`] or [`Allocation::invoke_view`], which allocate
    /// nothing.
    ///
    /// # Errors
    /// See [`InvokeError`].
    pub fn invoke(&mut self, name: &str, input: &[u8]) -> Result<Vec<u8>, InvokeError> {
        let f = self.function(name)?;
        Ok(self.invoke_view(f, input)?.to_vec())
    }

    /// Invokes `f` on `input` and copies its output into `output`; returns the output's
    /// length. No allocation, lock or system call on the way (on shm and verbs).
    ///
    /// # Errors
    /// See [`InvokeError`]; [`InvokeError::OutputBufferTooSmall`] when `output` is short
    /// (the invocation ran; its output is lost).
    pub fn invoke_into(
        &mut self,
        f: FunctionId,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, InvokeError> {
        let view = self.invoke_view(f, input)?;
        let len = view.len();
        if len > output.len() {
            return Err(InvokeError::OutputBufferTooSmall {
                len,
                capacity: output.len(),
            });
        }
        output[..len].copy_from_slice(&view);
        Ok(len)
    }

    /// Invokes `f` on `input`; the result is a view of the output in place in its response
    /// slot, which stays reserved until the view is dropped.
    ///
    /// # Errors
    /// See [`InvokeError`].
    pub fn invoke_view(
        &mut self,
        f: FunctionId,
        input: &[u8],
    ) -> Result<ResultView<'_, F>, InvokeError> {
        self.invoke_view_with(f, |area| {
            if input.len() > area.len() {
                return Err(InvokeError::PayloadTooLarge {
                    len: input.len(),
                    max: area.len(),
                });
            }
            area[..input.len()].copy_from_slice(input);
            Ok(input.len())
        })
    }

    /// Registers `len` bytes (at least 1) that invocations of this allocation can send from
    /// in place ([`Allocation::invoke_from`]): register once, fill and invoke many times.
    ///
    /// # Errors
    /// [`InvokeError::BadBuffer`] when the memory cannot be registered.
    pub fn input_buffer(&self, len: usize) -> Result<InputBuffer<F>, InvokeError> {
        let memory = LocalBuffer::register(&self._pd, len)
            .map_err(|e| InvokeError::BadBuffer(format!("registering {len} B: {e}")))?;
        Ok(InputBuffer {
            memory,
            owner: self.id,
        })
    }

    /// Invokes `f` on bytes `range` of `input`, which the request's WRITE reads in place
    /// (no copy into a staging slot); the result is a view of the output in place, as with
    /// [`Allocation::invoke_view`]. The buffer is borrowed until the view is dropped, so it
    /// cannot change while the device may still read it.
    ///
    /// # Errors
    /// See [`InvokeError`]; [`InvokeError::BadBuffer`] for a buffer of another allocation
    /// or a range outside it, [`InvokeError::PayloadTooLarge`] for a range no slot holds
    /// (nothing is sent).
    pub fn invoke_from<'a>(
        &'a mut self,
        f: FunctionId,
        input: &'a InputBuffer<F>,
        range: std::ops::Range<usize>,
    ) -> Result<ResultView<'a, F>, InvokeError> {
        if input.owner != self.id {
            return Err(InvokeError::BadBuffer(
                "it was registered by another allocation".into(),
            ));
        }
        let Some(bytes) = input.as_slice().get(range.clone()) else {
            return Err(InvokeError::BadBuffer(format!(
                "bytes {range:?} are outside its {} B",
                input.len()
            )));
        };
        let sge = input.memory.sge(range.start, bytes.len());
        let link = self.pick_link()?;
        let (slot, id) = self.links[link].start_from(f.0, bytes, sge)?;
        let len = self.wait_for(link, slot, id)?;
        Ok(ResultView {
            link: &mut self.links[link],
            slot,
            id,
            len,
        })
    }

    /// Invokes `f` with a payload that `encode` writes in place into the request's staging
    /// slot (for example an rkyv archive serialized straight there); it gets the slot's
    /// payload area and returns the payload's length.
    ///
    /// # Errors
    /// See [`InvokeError`]; `encode`'s own error is returned as is.
    pub fn invoke_view_with(
        &mut self,
        f: FunctionId,
        encode: impl FnOnce(&mut [u8]) -> Result<usize, InvokeError>,
    ) -> Result<ResultView<'_, F>, InvokeError> {
        let link = self.pick_link()?;
        let (slot, id) = self.links[link].start_with(f.0, encode)?;
        let len = self.wait_for(link, slot, id)?;
        Ok(ResultView {
            link: &mut self.links[link],
            slot,
            id,
            len,
        })
    }

    /// Invokes `f` on `input` archived with rkyv straight into the request slot (no
    /// intermediate buffer); read the result in place with [`ResultView::archived`].
    ///
    /// # Errors
    /// See [`InvokeError`]; [`InvokeError::PayloadTooLarge`] when the archive does not fit
    /// a slot, [`InvokeError::Codec`] when it cannot be built.
    pub fn invoke_typed<T>(
        &mut self,
        f: FunctionId,
        input: &T,
    ) -> Result<ResultView<'_, F>, InvokeError>
    where
        T: for<'a> rkyv::Serialize<rafi_function::Serializer<'a>>,
    {
        self.invoke_view_with(f, |area| {
            rafi_function::encode(input, area).map_err(|e| match e {
                rafi_function::EncodeError::OutputTooSmall => InvokeError::PayloadTooLarge {
                    len: area.len() + 1,
                    max: area.len(),
                },
                other => InvokeError::Codec(format!("archiving the input: {other:?}")),
            })
        })
    }

    /// Invokes `f` once per input, spread over every worker with up to `slots` in flight
    /// on each, and hands each result to `on_result` with the input's index as it arrives
    /// (in completion order). Returns when every input has its result. An invocation that
    /// makes no progress for the allocation's timeout fails with [`InvokeError::TimedOut`].
    /// It spins while it waits, unless [`AllocationOptions::spin`] is set: then, after that
    /// long without a result, it sleeps on a completion channel (its core goes to the
    /// caller's other threads, e.g. an MPI rank's compute threads).
    ///
    /// # Errors
    /// Only for the whole call, when no worker is left: the inputs not yet sent are not
    /// reported to `on_result`; everything sent has been.
    pub fn invoke_many<'i>(
        &mut self,
        f: FunctionId,
        inputs: impl IntoIterator<Item = &'i [u8]>,
        on_result: impl FnMut(usize, Result<&[u8], InvokeError>),
    ) -> Result<(), InvokeError> {
        self.invoke_many_with(
            f,
            inputs,
            |input, area| match area.get_mut(..input.len()) {
                Some(dst) => {
                    dst.copy_from_slice(input);
                    Ok(input.len())
                }
                None => Err(InvokeError::PayloadTooLarge {
                    len: input.len(),
                    max: area.len(),
                }),
            },
            on_result,
        )
    }

    /// [`Allocation::invoke_many`] with each input written in place: `encode` gets an item
    /// and its request slot's payload area, writes the payload there (an rkyv archive
    /// serialized straight into the slot, say: [`rafi_function::encode`]) and returns its
    /// length. No intermediate buffer and no copy. An item whose `encode` fails with
    /// [`InvokeError::Codec`] or [`InvokeError::PayloadTooLarge`] (the errors for an item's
    /// own fault) gets that error in `on_result`, and the others go on.
    ///
    /// # Errors
    /// As [`Allocation::invoke_many`].
    pub fn invoke_many_with<T>(
        &mut self,
        f: FunctionId,
        items: impl IntoIterator<Item = T>,
        mut encode: impl FnMut(&T, &mut [u8]) -> Result<usize, InvokeError>,
        mut on_result: impl FnMut(usize, Result<&[u8], InvokeError>),
    ) -> Result<(), InvokeError> {
        let mut inputs = items.into_iter().enumerate().peekable();
        let mut in_flight = 0usize;
        let timeout = self.options.timeout;
        let mut last_progress = Instant::now();
        let mut idle_polls = 0u32;
        loop {
            // Fill every free slot of every live worker.
            for (link, owners) in self.links.iter_mut().zip(&mut self.owners) {
                while link.available() > 0 && inputs.peek().is_some() {
                    let Some((index, item)) = inputs.next() else {
                        break;
                    };
                    match link.start_with(f.0, |area| encode(&item, area)) {
                        Ok((slot, id)) => {
                            owners[slot as usize] = Some((index, id));
                            in_flight += 1;
                        }
                        // This input's own fault: the link goes on.
                        Err(e @ (InvokeError::PayloadTooLarge { .. } | InvokeError::Codec(_))) => {
                            on_result(index, Err(e))
                        }
                        // The link died under us; the input goes to the next one.
                        Err(e) => {
                            on_result(index, Err(e));
                            break;
                        }
                    }
                }
            }
            if in_flight == 0 {
                if inputs.peek().is_none() {
                    return Ok(());
                }
                if let Some(e) = self.all_dead() {
                    return Err(e);
                }
            }
            // Collect what arrived.
            let mut progressed = false;
            for (link, owners) in self.links.iter_mut().zip(&mut self.owners) {
                loop {
                    match link.poll_event() {
                        Ok(Some(Event { slot, id, outcome })) => {
                            let Some((index, _)) = owners[slot as usize].take() else {
                                // Not ours: an earlier call's abandoned invocation.
                                continue;
                            };
                            in_flight -= 1;
                            progressed = true;
                            match outcome {
                                Ok(len) => {
                                    on_result(index, Ok(link.output(slot, len)));
                                    link.release(slot, id);
                                }
                                Err(e) => on_result(index, Err(e)),
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // Everything in flight on this link failed with it.
                            for owner in owners.iter_mut() {
                                if let Some((index, _)) = owner.take() {
                                    in_flight -= 1;
                                    progressed = true;
                                    on_result(index, Err(e.clone()));
                                }
                            }
                            break;
                        }
                    }
                }
            }
            if progressed {
                last_progress = Instant::now();
                idle_polls = 0;
                continue;
            }
            idle_polls += 1;
            if idle_polls % POLLS_PER_CLOCK_CHECK != 0 {
                std::hint::spin_loop();
                continue;
            }
            let idle = last_progress.elapsed();
            if !self.executor_alive() {
                self.kill_all("its control connection closed");
            } else if idle > timeout {
                // Give up on everything in flight; late responses are discarded.
                for (link, owners) in self.links.iter_mut().zip(&mut self.owners) {
                    for (slot, owner) in owners.iter_mut().enumerate() {
                        if let Some((index, id)) = owner.take() {
                            link.abandon(slot as u16, id);
                            in_flight -= 1;
                            on_result(index, Err(InvokeError::TimedOut(timeout)));
                        }
                    }
                }
                last_progress = Instant::now();
            } else if self.options.spin.is_some_and(|spin| idle >= spin) {
                self.nap_on_a_busy_link(timeout - idle);
            }
        }
    }

    /// Sleeps on the completion channel of a worker connection with invocations in flight,
    /// for at most `left`: 10 ms when it is the only one, 1 ms when others may finish first
    /// (their completions do not wake this channel). What a caller gets by setting
    /// [`AllocationOptions::spin`]: a core given back to its other threads while it waits.
    fn nap_on_a_busy_link(&mut self, left: Duration) {
        let mut busy = self
            .owners
            .iter()
            .enumerate()
            .filter(|(_, owners)| owners.iter().any(Option::is_some))
            .map(|(i, _)| i);
        let Some(first) = busy.next() else {
            return;
        };
        let cap = if busy.next().is_some() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(10)
        };
        self.links[first].sleep(left.min(cap));
    }

    /// The error of the allocation when every worker connection has failed.
    fn all_dead(&self) -> Option<InvokeError> {
        if self.links.iter().all(|l| l.dead().is_some()) {
            self.links[0].dead().cloned()
        } else {
            None
        }
    }

    /// Writes `bytes` into request slot `slot` of worker `worker` with immediate `imm`,
    /// bypassing the protocol: for tests of an executor's defences against hostile
    /// requests. Not for applications.
    ///
    /// # Errors
    /// When the bytes exceed a slot or the connection is gone.
    #[doc(hidden)]
    pub fn send_raw(
        &mut self,
        worker: usize,
        slot: u16,
        bytes: &[u8],
        imm: u32,
    ) -> Result<(), InvokeError> {
        self.links[worker].send_raw(slot, bytes, imm)
    }

    /// Round robin over the workers that have a free slot. When none has, late answers
    /// (to abandoned invocations or dropped futures) are collected first: they free slots.
    pub(super) fn pick_link(&mut self) -> Result<usize, InvokeError> {
        for attempt in 0..2 {
            let n = self.links.len();
            for k in 0..n {
                let i = (self.next_link + k) % n;
                if self.links[i].available() > 0 {
                    self.next_link = (i + 1) % n;
                    return Ok(i);
                }
            }
            if attempt == 0 {
                for link in &mut self.links {
                    while let Ok(Some(event)) = link.poll_event() {
                        link.settle_stray(&event);
                    }
                }
            }
        }
        Err(self.all_dead().unwrap_or(InvokeError::Busy))
    }

    /// Waits for invocation `id` in `slot` of `link`; returns its output's length.
    ///
    /// The clock is read only after [`POLLS_PER_CLOCK_CHECK`] empty polls, and never when
    /// there is neither a timeout nor a liveness check to keep (`Duration::MAX`): where
    /// the clock is a system call (some virtual machines), a prompt answer costs none.
    fn wait_for(&mut self, link: usize, slot: u16, id: u64) -> Result<usize, InvokeError> {
        let timeout = self.options.timeout;
        let liveness = self.options.liveness_interval;
        let spin = self.options.spin.unwrap_or(timeout);
        let needs_clock = timeout != Duration::MAX || liveness != Duration::MAX;
        let mut started: Option<Instant> = None;
        let mut last_liveness: Option<Instant> = None;
        let mut idle_polls = 0u32;
        loop {
            match self.links[link].poll_event()? {
                Some(event) if event.slot == slot && event.id == id => return event.outcome,
                // The end of an invocation whose future was dropped.
                Some(event) => {
                    self.links[link].settle_stray(&event);
                    continue;
                }
                None => {}
            }
            idle_polls = idle_polls.wrapping_add(1);
            if !needs_clock || idle_polls % POLLS_PER_CLOCK_CHECK != 0 {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            let waited = now - *started.get_or_insert(now);
            if waited >= timeout {
                self.links[link].abandon(slot, id);
                return Err(InvokeError::TimedOut(timeout));
            }
            if now - *last_liveness.get_or_insert(now) >= liveness {
                last_liveness = Some(now);
                if !self.executor_alive() {
                    self.kill_all("its control connection closed");
                    continue; // poll_event reports it
                }
            }
            if waited >= spin {
                let nap = (timeout - waited).min(Duration::from_millis(10));
                self.links[link].sleep(nap);
            }
        }
    }

    /// Whether the executor's end of the control connection is still open.
    pub(super) fn executor_alive(&self) -> bool {
        let mut byte = [0u8; 1];
        match self.control.peek(&mut byte) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }

    pub(super) fn kill_all(&mut self, why: &str) {
        for link in &mut self.links {
            link.kill(InvokeError::ExecutorGone(why.to_string()));
        }
    }
}

impl<F: Fabric> std::fmt::Debug for Allocation<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocation")
            .field("workers", &self.links.len())
            .field("functions", &self.functions)
            .finish()
    }
}

/// The output of an invocation, read in place in its response slot. The slot is reserved
/// for this view and freed when it is dropped.
pub struct ResultView<'a, F: Fabric> {
    link: &'a mut ClientLink<F>,
    slot: u16,
    id: u64,
    len: usize,
}

impl<F: Fabric> Deref for ResultView<'_, F> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.link.output(self.slot, self.len)
    }
}

impl<F: Fabric> ResultView<'_, F> {
    /// The output as the rkyv archive of `A` (e.g. `rkyv::Archived<MyOutput>`), checked in
    /// place (bytecheck) and viewed without a copy.
    ///
    /// # Errors
    /// [`InvokeError::Codec`] when the bytes are not a valid archive of `A`.
    pub fn archived<A>(&self) -> Result<&A, InvokeError>
    where
        A: rkyv::Portable + for<'a> rkyv::bytecheck::CheckBytes<rafi_function::Validator<'a>>,
    {
        rafi_function::decode::<A>(self).map_err(|e| {
            InvokeError::Codec(format!("the output is not the archive expected: {e:?}"))
        })
    }
}

impl<F: Fabric> Drop for ResultView<'_, F> {
    fn drop(&mut self) {
        self.link.release(self.slot, self.id);
    }
}
