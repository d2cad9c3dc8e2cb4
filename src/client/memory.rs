//! Leased remote memory, client side: a memory-only allocation whose region on the executor
//! this client reads, writes and updates atomically with one-sided RDMA.
//!
//! ```text
//!  RemoteMemory::connect ── hello {memory: {len, access, endpoint}} ──▶ executor session:
//!                                                       reserve len of max_memory, register
//!                                                       the region, a QP for this client
//!                         ◀── accept {memory: {endpoint, region, access}}, ready ──
//!  put(offset, data)   check rights + bounds ─ copy into staging ─ WRITE ──▶ region
//!  get(offset, out)    check rights + bounds ─ READ into staging ─ copy out
//!  fetch_add / compare_swap   check rights + bounds + alignment ─ FETCH_ADD / CMP_SWAP
//!  drop (or the executor ends the lease): control connection closes → region deregistered
//! ```
//!
//! Every check that can be made before posting is made before posting, with an error that
//! says nothing was sent; the fabric's own checks (rkey, bounds, rights) stay as the second
//! line. Transfers larger than half the staging region go in chunks, two in flight (one
//! copied while the other travels). The per-operation path allocates nothing.

use std::io::BufReader;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::control::{read_message, write_message, ControlError};
use crate::fabric::{
    Access, CompletionQueue, Fabric, MemoryRegion, ProtectionDomain, QpConfig, QueuePair,
    RemoteAddr, SendOp, SendWr, SlotRegion, WcStatus, WorkCompletion,
};
use crate::protocol::{
    ClientHello, ControlMessage, HandshakeError, MemoryAccess, MemoryRequest, RegionDesc,
};

use super::error::{AllocateError, MemoryError};

/// Empty polls between two looks at the clock while waiting.
const POLLS_PER_CLOCK_CHECK: u32 = 256;
/// Requests in flight at most (two chunks of a transfer).
const DEPTH: usize = 2;

/// Settings of a memory lease.
#[derive(Clone, Debug)]
pub struct MemoryOptions {
    /// A name for the executor's logs.
    pub client_name: String,
    /// Bytes leased.
    pub len: u64,
    /// Remote rights asked for.
    pub access: MemoryAccess,
    /// Bytes of the local staging region (two halves; a transfer goes in chunks of half of
    /// it). At least 8 KiB.
    pub staging: usize,
    /// How long one operation may take before the client gives up (and the handle with it).
    pub timeout: Duration,
    /// How long a blocking call spins before it sleeps on the completion channel.
    pub spin: Duration,
}

impl MemoryOptions {
    /// `len` bytes with every right, 8 MiB of staging, a 10 s timeout.
    pub fn new(len: u64) -> Self {
        Self {
            client_name: format!("pid-{}", std::process::id()),
            len,
            access: MemoryAccess::ALL,
            staging: 8 << 20,
            timeout: Duration::from_secs(10),
            spin: Duration::from_millis(1),
        }
    }
}

/// A lease of remote memory on one executor, reached over a queue pair of its own.
/// Operations are issued by one thread at a time (`&mut self`); use one lease per thread
/// for concurrency. Dropping it releases the memory.
pub struct RemoteMemory<F: Fabric> {
    qp: F::Qp,
    cq: F::Cq,
    /// The completion queue's wake-up line (the blocking wait sleeps on it through the
    /// queue; the async API registers it with tokio).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    channel: F::Channel,
    /// Two slots of `chunk` bytes, registered for local access only.
    staging: SlotRegion<F::Mr>,
    /// Bytes per chunk: half the staging region.
    chunk: usize,
    remote: RegionDesc,
    access: MemoryAccess,
    options: MemoryOptions,
    control: TcpStream,
    next_wr: u64,
    /// Set once an operation failed in a way that broke the queue pair; every later call
    /// fails the same way.
    dead: Option<MemoryError>,
    #[cfg(feature = "tokio")]
    async_fd: Option<tokio::io::unix::AsyncFd<crate::fabric::reactor::ChannelFd<F::Channel>>>,
    // Dropped last: the device outlives its resources.
    _pd: F::Pd,
    _fabric: F,
}

/// What an operation checks before it is posted.
#[derive(Clone, Copy)]
enum Right {
    Read,
    Write,
    Atomic,
}

impl Right {
    fn granted(self, access: MemoryAccess) -> bool {
        match self {
            Right::Read => access.read,
            Right::Write => access.write,
            Right::Atomic => access.atomic,
        }
    }
}

impl<F: Fabric> RemoteMemory<F> {
    /// Leases `options.len` bytes of the executor at `executor`.
    ///
    /// # Errors
    /// When the executor cannot be reached or refuses (over its memory limit, no right
    /// asked for, another fabric), or the queue pair cannot be set up.
    pub fn connect(
        fabric: F,
        executor: impl ToSocketAddrs + std::fmt::Display,
        options: MemoryOptions,
    ) -> Result<Self, AllocateError> {
        if options.staging < 8192 {
            return Err(AllocateError::Invalid(format!(
                "a staging region of {} B is below the 8 KiB minimum",
                options.staging
            )));
        }
        // Halves 8-byte aligned, and each within one message of every backend.
        let chunk = (options.staging / 2 / 8 * 8).min(1 << 30);
        let control = TcpStream::connect(&executor).map_err(|source| AllocateError::Connect {
            addr: executor.to_string(),
            source,
        })?;
        let _ = control.set_nodelay(true);
        let pd = fabric.alloc_pd()?;
        let channel = fabric.create_channel()?;
        let cq = fabric.create_cq(2 * DEPTH as u32, Some(&channel))?;
        let config = QpConfig {
            max_send_wr: DEPTH as u32,
            max_recv_wr: 1,
            max_sge: 1,
            max_inline_data: 0,
            ..QpConfig::default()
        };
        let mut qp = pd.create_qp(&cq, &cq, config)?;
        let staging = SlotRegion::register(&pd, DEPTH, chunk, Access::LOCAL_WRITE)?;
        let hello = ClientHello::memory_only(
            options.client_name.clone(),
            MemoryRequest {
                len: options.len,
                access: options.access,
                endpoint: qp.endpoint(),
            },
        );
        let mut writer = control.try_clone().map_err(ControlError::Io)?;
        write_message(&mut writer, &ControlMessage::Hello(hello.clone()))
            .map_err(ControlError::Io)?;
        let mut reader = BufReader::new(control.try_clone().map_err(ControlError::Io)?);
        let reply = read_message(&mut reader)?.into_reply()?;
        reply.check(&hello)?;
        let grant = reply.memory.ok_or_else(|| HandshakeError::MemoryMismatch {
            detail: "memory requested, none granted".into(),
        })?;
        qp.connect(&grant.endpoint)?;
        read_message(&mut reader)?.into_ready()?;
        // From here on the control connection is only watched for the executor's end.
        control.set_nonblocking(true).map_err(ControlError::Io)?;
        Ok(Self {
            qp,
            cq,
            channel,
            staging,
            chunk,
            remote: RegionDesc {
                len: options.len,
                ..grant.region
            },
            access: options.access,
            options,
            control,
            next_wr: 0,
            dead: None,
            #[cfg(feature = "tokio")]
            async_fd: None,
            _pd: pd,
            _fabric: fabric,
        })
    }

    /// Bytes leased.
    pub fn size(&self) -> u64 {
        self.remote.len
    }

    /// The rights of this lease.
    pub fn access(&self) -> MemoryAccess {
        self.access
    }

    /// The region as the executor described it (address, rkey, leased length): for
    /// diagnostics and tests. Only this lease's queue pair reaches it.
    pub fn region(&self) -> RegionDesc {
        self.remote
    }

    /// Writes `data` at `offset` of the leased memory; returns once it is there.
    ///
    /// # Errors
    /// [`MemoryError::NotPermitted`] without write access and [`MemoryError::OutOfBounds`]
    /// (both before anything is sent); a failed transfer (see [`MemoryError`]).
    pub fn put(&mut self, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.check(Right::Write, "put", offset, data.len() as u64)?;
        let mut in_flight = 0;
        for (i, chunk) in data.chunks(self.chunk).enumerate() {
            if in_flight == DEPTH {
                self.complete("put")?;
                in_flight -= 1;
            }
            self.post_put_chunk(offset, i, chunk)?;
            in_flight += 1;
        }
        for _ in 0..in_flight {
            self.complete("put")?;
        }
        Ok(())
    }

    /// Reads `out.len()` bytes at `offset` of the leased memory into `out`.
    ///
    /// # Errors
    /// [`MemoryError::NotPermitted`] without read access and [`MemoryError::OutOfBounds`]
    /// (both before anything is sent); a failed transfer (see [`MemoryError`]).
    pub fn get(&mut self, offset: u64, out: &mut [u8]) -> Result<(), MemoryError> {
        self.check(Right::Read, "get", offset, out.len() as u64)?;
        let chunk = self.chunk;
        let n = out.len().div_ceil(chunk);
        // Post up to DEPTH reads, then copy each out as it completes and post the next.
        let mut posted = 0;
        for k in 0..n {
            while posted < n && posted < k + DEPTH {
                self.post_read(offset, out.len(), posted)?;
                posted += 1;
            }
            self.complete("get")?;
            self.copy_got_chunk(k, out);
        }
        Ok(())
    }

    /// Adds `add` to the 8-byte word at `offset` (8-byte aligned) atomically; returns the
    /// value it had before.
    ///
    /// # Errors
    /// [`MemoryError::NotPermitted`] without atomic access, [`MemoryError::OutOfBounds`],
    /// [`MemoryError::Misaligned`] (all before anything is sent); a failed operation.
    pub fn fetch_add(&mut self, offset: u64, add: u64) -> Result<u64, MemoryError> {
        self.post_fetch_add(offset, add)?;
        self.complete("fetch-add")?;
        Ok(self.atomic_result())
    }

    /// Replaces the 8-byte word at `offset` (8-byte aligned) by `new` if it equals
    /// `expected`, atomically; returns the value it had before (equal to `expected` when
    /// the swap happened).
    ///
    /// # Errors
    /// As [`RemoteMemory::fetch_add`].
    pub fn compare_swap(
        &mut self,
        offset: u64,
        expected: u64,
        new: u64,
    ) -> Result<u64, MemoryError> {
        self.post_compare_swap(offset, expected, new)?;
        self.complete("compare-swap")?;
        Ok(self.atomic_result())
    }

    /// The most bytes [`RemoteMemory::put_with`] and [`RemoteMemory::get_with`] move: one
    /// staging chunk (half of [`MemoryOptions::staging`]).
    pub fn max_in_place(&self) -> usize {
        self.chunk
    }

    /// Writes `len` bytes at `offset` that `fill` builds in place, in the registered
    /// staging memory the WRITE is posted from: no copy besides the caller's own (for
    /// data produced on the spot, e.g. serialized straight into the slice).
    ///
    /// # Errors
    /// As [`RemoteMemory::put`]; [`MemoryError::TooLargeInPlace`] beyond
    /// [`RemoteMemory::max_in_place`] (before anything is sent).
    pub fn put_with(
        &mut self,
        offset: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), MemoryError> {
        self.check(Right::Write, "put", offset, len as u64)?;
        self.check_in_place(len)?;
        if len == 0 {
            return Ok(());
        }
        fill(self.staging.staging_mut(0, len));
        let remote = self.remote_at(offset);
        self.post(SendOp::Write { remote }, 0, len)?;
        self.complete("put")
    }

    /// Reads `len` bytes at `offset` and hands them to `read` in place, in the registered
    /// staging memory the READ landed in: no copy (for data consumed on the spot, e.g.
    /// validated and read as an archive). Returns what `read` returns.
    ///
    /// # Errors
    /// As [`RemoteMemory::get`]; [`MemoryError::TooLargeInPlace`] beyond
    /// [`RemoteMemory::max_in_place`] (before anything is sent).
    pub fn get_with<R>(
        &mut self,
        offset: u64,
        len: usize,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, MemoryError> {
        self.check(Right::Read, "get", offset, len as u64)?;
        self.check_in_place(len)?;
        if len > 0 {
            let remote = self.remote_at(offset);
            self.post(SendOp::Read { remote }, 0, len)?;
            self.complete("get")?;
        }
        // Sound (see `SlotRegion::incoming`): the only writer of the staging region is
        // this lease's own READ, which has completed, and the next one needs `&mut self`.
        // One that timed out broke the handle: it posts nothing, and borrows nothing, again.
        Ok(read(self.staging.incoming(0, len)))
    }

    fn check_in_place(&self, len: usize) -> Result<(), MemoryError> {
        if len > self.chunk {
            return Err(MemoryError::TooLargeInPlace {
                len,
                max: self.chunk,
            });
        }
        Ok(())
    }

    /// Writes `data` at `offset` of the region `target` describes, through this lease's
    /// queue pair and with none of the client's checks: for tests of the fabric's second
    /// line of defence (a stale or foreign rkey). Not for applications.
    ///
    /// # Errors
    /// Whatever the fabric reports.
    #[doc(hidden)]
    pub fn put_unchecked(
        &mut self,
        target: RegionDesc,
        offset: u64,
        data: &[u8],
    ) -> Result<(), MemoryError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        let len = data.len().min(self.chunk);
        self.staging.region().write(0, &data[..len]);
        let remote = RemoteAddr {
            addr: target.at(offset),
            rkey: target.rkey,
        };
        self.post(SendOp::Write { remote }, 0, len)?;
        self.complete("put")
    }

    // ---- the pieces -------------------------------------------------------------------

    fn check(
        &self,
        right: Right,
        op: &'static str,
        offset: u64,
        len: u64,
    ) -> Result<(), MemoryError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        if !right.granted(self.access) {
            return Err(MemoryError::NotPermitted {
                op,
                granted: self.access,
            });
        }
        if !offset
            .checked_add(len)
            .is_some_and(|end| end <= self.remote.len)
        {
            return Err(MemoryError::OutOfBounds {
                offset,
                len,
                size: self.remote.len,
            });
        }
        Ok(())
    }

    // The steps the blocking and async operations share; they differ only in how they
    // wait for completions.

    /// Copies chunk `i` of a put into its staging slot and posts its WRITE.
    fn post_put_chunk(&mut self, offset: u64, i: usize, chunk: &[u8]) -> Result<(), MemoryError> {
        let at = (i % DEPTH) * self.chunk;
        self.staging.region().write(at, chunk);
        let remote = self.remote_at(offset + (i * self.chunk) as u64);
        self.post(SendOp::Write { remote }, at, chunk.len())
    }

    /// Copies chunk `k` of a completed get from its staging slot into `out`.
    fn copy_got_chunk(&self, k: usize, out: &mut [u8]) {
        let start = k * self.chunk;
        let end = (start + self.chunk).min(out.len());
        self.staging
            .region()
            .read((k % DEPTH) * self.chunk, &mut out[start..end]);
    }

    fn post_fetch_add(&mut self, offset: u64, add: u64) -> Result<(), MemoryError> {
        self.check_atomic("fetch-add", offset)?;
        let remote = self.remote_at(offset);
        self.post(SendOp::FetchAdd { remote, add }, 0, 8)
    }

    fn post_compare_swap(
        &mut self,
        offset: u64,
        expected: u64,
        new: u64,
    ) -> Result<(), MemoryError> {
        self.check_atomic("compare-swap", offset)?;
        let remote = self.remote_at(offset);
        let op = SendOp::CmpSwap {
            remote,
            compare: expected,
            swap: new,
        };
        self.post(op, 0, 8)
    }

    fn check_atomic(&self, op: &'static str, offset: u64) -> Result<(), MemoryError> {
        self.check(Right::Atomic, op, offset, 8)?;
        if offset % 8 != 0 {
            return Err(MemoryError::Misaligned { offset });
        }
        Ok(())
    }

    fn remote_at(&self, offset: u64) -> RemoteAddr {
        RemoteAddr {
            addr: self.remote.at(offset),
            rkey: self.remote.rkey,
        }
    }

    fn atomic_result(&self) -> u64 {
        self.staging
            .region()
            .atomic_u64(0)
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Posts READ number `k` of a `total`-byte get at `offset`, into its staging half.
    fn post_read(&mut self, offset: u64, total: usize, k: usize) -> Result<(), MemoryError> {
        let start = k * self.chunk;
        let len = self.chunk.min(total - start);
        let remote = self.remote_at(offset + start as u64);
        self.post(SendOp::Read { remote }, (k % DEPTH) * self.chunk, len)
    }

    /// Posts `op` with `len` bytes of staging at `at` as its local side.
    fn post(&mut self, op: SendOp, at: usize, len: usize) -> Result<(), MemoryError> {
        let sge = [self.staging.region().sge(at, len)];
        self.next_wr += 1;
        let wr = SendWr::new(self.next_wr, op, &sge);
        self.qp.post_send(&wr).map_err(|e| {
            let error = MemoryError::Post(e.to_string());
            self.dead = Some(error.clone());
            error
        })
    }

    /// Waits for the next completion (blocking API).
    fn complete(&mut self, op: &'static str) -> Result<(), MemoryError> {
        let mut wc = [WorkCompletion::default(); 1];
        let timeout = self.options.timeout;
        let spin = self.options.spin;
        let mut started: Option<Instant> = None;
        let mut idle_polls = 0u32;
        loop {
            if self.cq.poll(&mut wc) == 1 {
                return self.settle(op, &wc[0]);
            }
            idle_polls = idle_polls.wrapping_add(1);
            if idle_polls % POLLS_PER_CLOCK_CHECK != 0 {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            let waited = now - *started.get_or_insert(now);
            if waited >= timeout {
                return Err(self.fail(MemoryError::TimedOut(timeout)));
            }
            if waited >= spin {
                if !self.executor_alive() {
                    return Err(self.fail(MemoryError::Released(
                        "the executor closed the lease's control connection".into(),
                    )));
                }
                let nap = (timeout - waited).min(Duration::from_millis(10));
                if let Ok(1) = self.cq.wait(&mut wc, Some(nap)) {
                    return self.settle(op, &wc[0]);
                }
            }
        }
    }

    /// The outcome of a completion; an error breaks the queue pair, so it sticks.
    fn settle(&mut self, op: &'static str, wc: &WorkCompletion) -> Result<(), MemoryError> {
        if wc.status == WcStatus::Success {
            return Ok(());
        }
        let error = match wc.status {
            WcStatus::RemoteAccessError | WcStatus::RemoteInvalidRequest => {
                MemoryError::RemoteAccess {
                    op,
                    status: wc.status,
                }
            }
            _ if !self.executor_alive() => MemoryError::Released(format!(
                "the executor ended the lease ({op} failed: {})",
                wc.status
            )),
            status => MemoryError::Fabric { op, status },
        };
        Err(self.fail(error))
    }

    fn fail(&mut self, error: MemoryError) -> MemoryError {
        self.qp.set_error();
        self.dead = Some(error.clone());
        error
    }

    /// Whether the executor's end of the control connection is still open.
    fn executor_alive(&self) -> bool {
        let mut byte = [0u8; 1];
        match self.control.peek(&mut byte) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

#[cfg(feature = "tokio")]
mod asynch {
    //! The async versions: the same checks and posts, waiting on tokio's reactor.

    use std::time::{Duration, Instant};

    use super::*;
    use crate::fabric::{reactor, CompletionChannel};

    /// How long an async operation polls before it parks on the channel.
    const ASYNC_SPIN: Duration = Duration::from_micros(20);

    impl<F: Fabric> RemoteMemory<F> {
        /// [`RemoteMemory::put`], as a future that sleeps in tokio's reactor while it waits.
        ///
        /// # Errors
        /// As [`RemoteMemory::put`].
        pub async fn put_async(&mut self, offset: u64, data: &[u8]) -> Result<(), MemoryError> {
            self.check(Right::Write, "put", offset, data.len() as u64)?;
            let mut in_flight = 0;
            for (i, chunk) in data.chunks(self.chunk).enumerate() {
                if in_flight == DEPTH {
                    self.complete_async("put").await?;
                    in_flight -= 1;
                }
                self.post_put_chunk(offset, i, chunk)?;
                in_flight += 1;
            }
            for _ in 0..in_flight {
                self.complete_async("put").await?;
            }
            Ok(())
        }

        /// [`RemoteMemory::get`], as a future.
        ///
        /// # Errors
        /// As [`RemoteMemory::get`].
        pub async fn get_async(&mut self, offset: u64, out: &mut [u8]) -> Result<(), MemoryError> {
            self.check(Right::Read, "get", offset, out.len() as u64)?;
            let chunk = self.chunk;
            let n = out.len().div_ceil(chunk);
            let mut posted = 0;
            for k in 0..n {
                while posted < n && posted < k + DEPTH {
                    self.post_read(offset, out.len(), posted)?;
                    posted += 1;
                }
                self.complete_async("get").await?;
                self.copy_got_chunk(k, out);
            }
            Ok(())
        }

        /// [`RemoteMemory::fetch_add`], as a future.
        ///
        /// # Errors
        /// As [`RemoteMemory::fetch_add`].
        pub async fn fetch_add_async(&mut self, offset: u64, add: u64) -> Result<u64, MemoryError> {
            self.post_fetch_add(offset, add)?;
            self.complete_async("fetch-add").await?;
            Ok(self.atomic_result())
        }

        /// [`RemoteMemory::compare_swap`], as a future.
        ///
        /// # Errors
        /// As [`RemoteMemory::fetch_add`].
        pub async fn compare_swap_async(
            &mut self,
            offset: u64,
            expected: u64,
            new: u64,
        ) -> Result<u64, MemoryError> {
            self.post_compare_swap(offset, expected, new)?;
            self.complete_async("compare-swap").await?;
            Ok(self.atomic_result())
        }

        async fn complete_async(&mut self, op: &'static str) -> Result<(), MemoryError> {
            let mut wc = [WorkCompletion::default(); 1];
            let timeout = self.options.timeout;
            let start = Instant::now();
            loop {
                if self.cq.poll(&mut wc) == 1 {
                    return self.settle(op, &wc[0]);
                }
                let waited = start.elapsed();
                if waited >= timeout {
                    return Err(self.fail(MemoryError::TimedOut(timeout)));
                }
                if waited < ASYNC_SPIN {
                    tokio::task::yield_now().await;
                    continue;
                }
                if !self.executor_alive() {
                    return Err(self.fail(MemoryError::Released(
                        "the executor closed the lease's control connection".into(),
                    )));
                }
                // Arm, look once more, then sleep until the channel fires (or a short
                // while, to notice a dead executor whose completions never come).
                self.cq.arm();
                if self.cq.poll(&mut wc) == 1 {
                    return self.settle(op, &wc[0]);
                }
                let nap = (timeout - waited).min(Duration::from_millis(10));
                self.wait_channel(nap).await;
            }
        }

        async fn wait_channel(&mut self, nap: Duration) {
            if self.async_fd.is_none() {
                match reactor::register(self.channel.clone()) {
                    Ok(fd) => self.async_fd = Some(fd),
                    Err(_) => {
                        tokio::time::sleep(nap.min(Duration::from_micros(100))).await;
                        return;
                    }
                }
            }
            let Some(fd) = self.async_fd.as_ref() else {
                return;
            };
            if let Ok(Ok(mut ready)) = tokio::time::timeout(nap, fd.readable()).await {
                ready.clear_ready();
            }
            let _ = self.channel.get_event(Some(Duration::ZERO));
        }
    }
}

impl<F: Fabric> std::fmt::Debug for RemoteMemory<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMemory")
            .field("size", &self.remote.len)
            .field("access", &self.access)
            .field("dead", &self.dead)
            .finish()
    }
}
