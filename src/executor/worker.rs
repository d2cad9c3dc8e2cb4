//! A worker thread: pinned to its core, it polls the completion queues of its links and
//! serves their requests, spinning (hot) or sleeping on its completion channel when idle
//! (warm). New links and teardowns arrive through an inbox that costs one relaxed load
//! per round when empty.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fabric::{CompletionChannel, CompletionQueue, Fabric, WorkCompletion};

use super::catalog::Catalog;
use super::config::Polling;
use super::link::{ExecutorLink, LinkEnd, Tally, POLL_BATCH};

/// Empty polling rounds between two looks at the clock in warm mode.
const ROUNDS_PER_CLOCK_CHECK: u32 = 128;
/// Longest sleep on the channel before the inbox is looked at again.
const MAX_SLEEP: Duration = Duration::from_millis(50);

pub(crate) enum Command<F: Fabric> {
    Add(Box<ExecutorLink<F>>),
    /// Drop every link of this allocation.
    Remove(u64),
    Stop,
}

/// The control side's handle on a worker thread.
pub(crate) struct WorkerHandle<F: Fabric> {
    inbox: mpsc::Sender<Command<F>>,
    pending: Arc<AtomicBool>,
    pub(crate) channel: F::Channel,
    pub(crate) stats: Arc<WorkerStats>,
    /// Taken by whoever stops the worker first (`stop_and_join` or drop).
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Counters a worker publishes (relaxed; for reports, not for synchronisation).
///
/// The billing counters (`invocations`, `busy_cycles`, `asleep_ns`, `sleeping_since_ns`)
/// are running totals that only the worker writes, with relaxed stores of its own plain
/// counters (no read-modify-write on the invocation path); the executor's accountant reads
/// them. Times in ns are on [`clock_ns`]'s clock.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub served: AtomicU64,
    pub dropped: AtomicU64,
    pub links: AtomicU64,
    pub sleeps: AtomicU64,
    /// Function calls, over every link this worker ever had.
    pub invocations: AtomicU64,
    /// Cycles ([`crate::fabric::cycles::cycles`]) spent inside function calls.
    pub busy_cycles: AtomicU64,
    /// When the worker started ([`clock_ns`]).
    pub started_ns: AtomicU64,
    /// Time spent asleep on the completion channel, finished sleeps only.
    pub asleep_ns: AtomicU64,
    /// While asleep: when the sleep began ([`clock_ns`], never 0); 0 while awake. The
    /// worker adds a finished sleep to `asleep_ns` before it clears this (both release), so
    /// a reader that loads this first (acquire) may count a sleep twice, never miss one.
    pub sleeping_since_ns: AtomicU64,
}

/// Nanoseconds on a process-wide monotonic clock (since its first use, plus one so that a
/// reading is never 0). A system call on some virtual machines: never on the hot path.
pub fn clock_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

impl<F: Fabric> WorkerHandle<F> {
    /// Starts worker `index` on `core`.
    pub(crate) fn spawn<C: Catalog>(
        index: usize,
        core: Option<usize>,
        polling: Polling,
        channel: F::Channel,
        catalog: Arc<C>,
    ) -> std::io::Result<Self> {
        let (inbox, commands) = mpsc::channel();
        let pending = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WorkerStats::default());
        stats.started_ns.store(clock_ns(), Ordering::Relaxed);
        let worker = Worker::<F, C> {
            commands,
            pending: pending.clone(),
            channel: channel.clone(),
            catalog,
            polling,
            links: Vec::new(),
            stats: stats.clone(),
            tally: Tally::default(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("rafi-worker-{index}"))
            .spawn(move || {
                if let Some(core) = core {
                    if let Err(e) = rdma_mock::pin_current_thread(core) {
                        eprintln!("rafi executor: worker {index} not pinned to core {core}: {e}");
                    }
                }
                worker.run();
            })?;
        Ok(Self {
            inbox,
            pending,
            channel,
            stats,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    pub(crate) fn send(&self, command: Command<F>) {
        // A worker that is gone has dropped its links already; nothing to tell it.
        let _ = self.inbox.send(command);
        self.pending.store(true, Ordering::Release);
    }
}

impl<F: Fabric> WorkerHandle<F> {
    /// Tells the worker to stop and waits until it has: its links (queue pairs, regions)
    /// are gone when this returns.
    pub(crate) fn stop_and_join(&self) {
        self.send(Command::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl<F: Fabric> Drop for WorkerHandle<F> {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct Worker<F: Fabric, C: Catalog> {
    commands: mpsc::Receiver<Command<F>>,
    pending: Arc<AtomicBool>,
    channel: F::Channel,
    catalog: Arc<C>,
    polling: Polling,
    links: Vec<ExecutorLink<F>>,
    stats: Arc<WorkerStats>,
    tally: Tally,
}

impl<F: Fabric, C: Catalog> Worker<F, C> {
    fn run(mut self) {
        let mut wcs = [WorkCompletion::default(); POLL_BATCH];
        let mut idle_rounds = 0u32;
        let mut idle_since = Instant::now();
        loop {
            if self.pending.load(Ordering::Acquire) && !self.take_commands() {
                return;
            }
            if self.poll_all(&mut wcs) {
                idle_rounds = 0;
                continue;
            }
            match self.polling {
                Polling::Hot => std::hint::spin_loop(),
                Polling::Warm { idle } => {
                    // The idle time counts from the first clock check, not from the first
                    // empty round: a worker that is busy never reads the clock (a system
                    // call on some virtual machines).
                    idle_rounds += 1;
                    if idle_rounds == ROUNDS_PER_CLOCK_CHECK {
                        idle_since = Instant::now();
                    } else if idle_rounds % ROUNDS_PER_CLOCK_CHECK == 0
                        && idle_since.elapsed() >= idle
                    {
                        self.sleep(&mut wcs);
                        idle_rounds = 0;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }

    /// Polls every link once; returns whether any completion arrived.
    #[inline]
    fn poll_all(&mut self, wcs: &mut [WorkCompletion; POLL_BATCH]) -> bool {
        let mut any = false;
        let mut i = 0;
        while i < self.links.len() {
            let link = &mut self.links[i];
            let n = link.slots.cq.poll(wcs);
            if n == 0 {
                i += 1;
                continue;
            }
            any = true;
            match link.handle(&wcs[..n], &*self.catalog, &mut self.tally) {
                Ok(()) => i += 1,
                Err(end) => self.drop_link(i, &end),
            }
        }
        if any {
            // Plain stores (the worker is the only writer): no locked instruction.
            self.stats
                .invocations
                .store(self.tally.invocations, Ordering::Relaxed);
            self.stats
                .busy_cycles
                .store(self.tally.busy_cycles, Ordering::Relaxed);
        }
        any
    }

    /// Arms every queue and sleeps on the channel until a request (or the inbox) needs us.
    #[cold]
    fn sleep(&mut self, wcs: &mut [WorkCompletion; POLL_BATCH]) {
        for link in &mut self.links {
            link.slots.cq.arm();
        }
        // A request that arrived before arming signalled nobody: look once more.
        if self.poll_all(wcs) || self.pending.load(Ordering::Acquire) {
            return;
        }
        self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
        let since = clock_ns();
        self.stats.sleeping_since_ns.store(since, Ordering::Release);
        // A timeout or an error both mean: go round the loop and look again.
        let _ = self.channel.get_event(Some(MAX_SLEEP));
        let slept = clock_ns().saturating_sub(since);
        self.stats.asleep_ns.fetch_add(slept, Ordering::Release);
        self.stats.sleeping_since_ns.store(0, Ordering::Release);
    }

    /// Applies the inbox; returns false on `Stop`.
    #[cold]
    fn take_commands(&mut self) -> bool {
        self.pending.store(false, Ordering::Release);
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Add(link) => self.links.push(*link),
                Command::Remove(client) => {
                    while let Some(i) = self.links.iter().position(|l| l.client == client) {
                        self.retire(i);
                    }
                }
                Command::Stop => return false,
            }
        }
        self.stats
            .links
            .store(self.links.len() as u64, Ordering::Relaxed);
        true
    }

    #[cold]
    fn drop_link(&mut self, i: usize, end: &LinkEnd) {
        let link = &self.links[i];
        // A flush is the normal end of a connection whose client left; anything else is
        // worth a line.
        if !matches!(end, LinkEnd::Completion(wc) if wc.status == crate::fabric::WcStatus::WrFlushError)
        {
            eprintln!(
                "rafi executor: dropping connection of allocation {}: {end}",
                link.client
            );
        }
        self.retire(i);
        self.stats
            .links
            .store(self.links.len() as u64, Ordering::Relaxed);
    }

    fn retire(&mut self, i: usize) {
        let link = self.links.swap_remove(i);
        self.stats.served.fetch_add(link.served, Ordering::Relaxed);
        self.stats
            .dropped
            .fetch_add(link.dropped, Ordering::Relaxed);
    }
}
