//! Billing, the executor's side: an accountant thread adds what the workers did to
//! counters in the executor manager's memory with RDMA FETCH_ADD.
//!
//! ```text
//!  worker (hot path): invocations += 1; busy_cycles += rdtsc after − rdtsc before the call
//!                     → relaxed stores into WorkerStats (no lock, no system call)
//!  worker (going to sleep, cold): sleeping_since = now … asleep_ns += slept, sleeping_since = 0
//!  accountant (every interval, and at the end):
//!      read every WorkerStats → totals per worker (busy_ns = busy_cycles × ns/cycle, the
//!      ratio calibrated against Instant; hot_ns = wall − asleep; invocations)
//!      → deltas since the last flush → FETCH_ADD each non-zero delta into the manager's
//!      counter words (busy_ns at +0, hot_ns at +8, invocations at +16) → poll own CQ
//! ```
//!
//! The manager passes its queue pair's endpoint and the counters' address and rkey on the
//! executor's command line ([`BillingTarget`], `--billing`); the executor prints its
//! accountant's endpoint in its `listening` line and connects; the manager connects its
//! side after reading the line.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fabric::cycles::cycles;
use crate::fabric::{
    Access, CompletionQueue, Endpoint, Fabric, FabricError, MemoryRegion, ProtectionDomain,
    QpConfig, QueuePair, RemoteAddr, SendOp, SendWr,
};

use super::worker::{clock_ns, WorkerStats};

/// Offset of the busy-time counter (ns) in the manager's counter region.
pub const BUSY_NS: usize = 0;
/// Offset of the hot-time counter (ns).
pub const HOT_NS: usize = 8;
/// Offset of the invocation counter.
pub const INVOCATIONS: usize = 16;
/// Bytes of the counters of one executor.
pub const COUNTERS_LEN: usize = 24;

/// How often the accountant flushes by default.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How long a flush waits for its completions before it gives up on the manager.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where an executor bills: the manager's queue pair and its counter words
/// (`--billing` carries it as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingTarget {
    /// The manager's queue pair for this executor.
    pub endpoint: Endpoint,
    /// Address of the first counter word ([`BUSY_NS`]; the others follow).
    pub addr: u64,
    pub rkey: u32,
}

/// Usage totals (or deltas) of one executor, or one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub busy_ns: u64,
    pub hot_ns: u64,
    pub invocations: u64,
}

impl Counters {
    /// `self − earlier`, each counter saturating at 0.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            busy_ns: self.busy_ns.saturating_sub(earlier.busy_ns),
            hot_ns: self.hot_ns.saturating_sub(earlier.hot_ns),
            invocations: self.invocations.saturating_sub(earlier.invocations),
        }
    }

    fn add(&mut self, other: &Counters) {
        self.busy_ns = self.busy_ns.saturating_add(other.busy_ns);
        self.hot_ns = self.hot_ns.saturating_add(other.hot_ns);
        self.invocations = self.invocations.saturating_add(other.invocations);
    }

    fn max(&self, other: &Counters) -> Counters {
        Counters {
            busy_ns: self.busy_ns.max(other.busy_ns),
            hot_ns: self.hot_ns.max(other.hot_ns),
            invocations: self.invocations.max(other.invocations),
        }
    }

    fn is_zero(&self) -> bool {
        *self == Counters::default()
    }
}

/// Converts cycle counts to nanoseconds with a ratio measured between two readings of the
/// cycle counter and of the clock ([`clock_ns`]) taken at the same moments: the longer
/// apart, the more precise.
#[derive(Clone, Copy, Debug)]
pub struct CycleClock {
    origin_cycles: u64,
    origin_ns: u64,
}

impl CycleClock {
    /// Starts calibrating at (`cycles`, `ns`).
    pub fn new(cycles: u64, ns: u64) -> Self {
        Self {
            origin_cycles: cycles,
            origin_ns: ns,
        }
    }

    /// Starts calibrating now.
    pub fn start() -> Self {
        Self::new(cycles(), clock_ns())
    }

    /// Nanoseconds per cycle, from the origin to (`cycles`, `ns`); 1 until both moved.
    pub fn ns_per_cycle(&self, cycles: u64, ns: u64) -> f64 {
        let dc = cycles.saturating_sub(self.origin_cycles);
        let dn = ns.saturating_sub(self.origin_ns);
        if dc == 0 || dn == 0 {
            1.0
        } else {
            dn as f64 / dc as f64
        }
    }
}

/// What one worker's counters said at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerReading {
    pub invocations: u64,
    pub busy_cycles: u64,
    pub started_ns: u64,
    pub asleep_ns: u64,
    /// 0: awake.
    pub sleeping_since_ns: u64,
}

impl WorkerReading {
    /// Reads `stats` (the sleep flag first: a sleep may then count twice for a moment,
    /// which [`Books`] absorbs, but is never missed).
    pub fn of(stats: &WorkerStats) -> Self {
        let sleeping_since_ns = stats.sleeping_since_ns.load(Ordering::Acquire);
        Self {
            sleeping_since_ns,
            asleep_ns: stats.asleep_ns.load(Ordering::Acquire),
            invocations: stats.invocations.load(Ordering::Relaxed),
            busy_cycles: stats.busy_cycles.load(Ordering::Relaxed),
            started_ns: stats.started_ns.load(Ordering::Relaxed),
        }
    }

    /// This worker's totals at `now_ns`, with `ns_per_cycle` for its busy cycles. Hot time
    /// is the time awake: since its start, less its sleeps (the current one too).
    pub fn totals(&self, now_ns: u64, ns_per_cycle: f64) -> Counters {
        let asleep = self
            .asleep_ns
            .saturating_add(if self.sleeping_since_ns == 0 {
                0
            } else {
                now_ns.saturating_sub(self.sleeping_since_ns)
            });
        Counters {
            busy_ns: (self.busy_cycles as f64 * ns_per_cycle) as u64,
            hot_ns: now_ns
                .saturating_sub(self.started_ns)
                .saturating_sub(asleep),
            invocations: self.invocations,
        }
    }
}

/// The accountant's book: what it has billed per worker. Totals only grow: a reading that
/// says less than was billed (a sleep counted twice for a moment, a calibration that
/// moved) bills nothing until it catches up.
#[derive(Clone, Debug, Default)]
pub struct Books {
    billed: Vec<Counters>,
}

impl Books {
    /// What to bill now for `readings` (one per worker, in a fixed order), and the billed
    /// totals to [`Books::commit`] once the manager has it.
    pub fn due(&self, readings: &[WorkerReading], now_ns: u64, ns_per_cycle: f64) -> Due {
        let mut delta = Counters::default();
        let mut totals = Vec::with_capacity(readings.len());
        for (i, r) in readings.iter().enumerate() {
            let billed = self.billed.get(i).copied().unwrap_or_default();
            let total = r.totals(now_ns, ns_per_cycle).max(&billed);
            delta.add(&total.since(&billed));
            totals.push(total);
        }
        Due { delta, totals }
    }

    /// The manager has `due`: it counts as billed.
    pub fn commit(&mut self, due: Due) {
        self.billed = due.totals;
    }
}

/// What a flush adds, and the totals it brings the books to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub delta: Counters,
    totals: Vec<Counters>,
}

/// Billing an executor's work into its manager's counters; [`Accountant::start`] runs it.
pub struct Accountant<F: Fabric> {
    _pd: F::Pd,
    cq: F::Cq,
    qp: F::Qp,
    /// The old values FETCH_ADD returns land here (one word per counter).
    results: F::Mr,
    target: BillingTarget,
}

impl<F: Fabric> Accountant<F> {
    /// Creates the queue pair that will reach `target` (not connected yet: print
    /// [`Accountant::endpoint`] for the manager first).
    ///
    /// # Errors
    /// When the fabric cannot create the queue pair or the result region.
    pub fn create(fabric: &F, target: BillingTarget) -> Result<Self, FabricError> {
        if target.endpoint.kind() != fabric.kind() {
            return Err(FabricError::Config(format!(
                "the billing endpoint is of the {} fabric, this executor serves on {}",
                target.endpoint.kind(),
                fabric.kind()
            )));
        }
        let pd = fabric.alloc_pd()?;
        let cq = fabric.create_cq(16, None)?;
        let qp = pd.create_qp(
            &cq,
            &cq,
            QpConfig {
                max_send_wr: 8,
                max_recv_wr: 1,
                max_sge: 1,
                max_inline_data: 0,
                ..QpConfig::default()
            },
        )?;
        let results = pd.register(4096, Access::LOCAL_WRITE)?;
        Ok(Self {
            _pd: pd,
            cq,
            qp,
            results,
            target,
        })
    }

    /// The accountant's queue pair, for the manager to connect to.
    pub fn endpoint(&self) -> Endpoint {
        self.qp.endpoint()
    }

    /// Starts the accountant thread: it connects, then flushes every `interval` and once
    /// more when the handle is dropped.
    ///
    /// # Errors
    /// When the thread cannot start.
    pub fn start(
        self,
        workers: Vec<Arc<WorkerStats>>,
        interval: Duration,
    ) -> std::io::Result<AccountantHandle> {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("rafi-accountant".into())
            .spawn(move || self.run(&workers, interval, &stopped))?;
        Ok(AccountantHandle {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn run(
        mut self,
        workers: &[Arc<WorkerStats>],
        interval: Duration,
        stopped: &mpsc::Receiver<()>,
    ) {
        let clock = CycleClock::start();
        if let Err(e) = self.qp.connect(&self.target.endpoint.clone()) {
            eprintln!("rafi executor: cannot connect to the manager for billing: {e}");
            return;
        }
        let mut books = Books::default();
        loop {
            let last = !matches!(
                stopped.recv_timeout(interval),
                Err(RecvTimeoutError::Timeout)
            );
            let readings: Vec<WorkerReading> =
                workers.iter().map(|w| WorkerReading::of(w)).collect();
            let (c, n) = (cycles(), clock_ns());
            let due = books.due(&readings, n, clock.ns_per_cycle(c, n));
            match self.add(&due.delta) {
                Ok(()) => books.commit(due),
                Err(why) => {
                    eprintln!("rafi executor: billing stopped: {why}");
                    return;
                }
            }
            if last {
                return;
            }
        }
    }

    /// FETCH_ADDs each non-zero counter of `delta` and waits for the completions.
    fn add(&mut self, delta: &Counters) -> Result<(), String> {
        if delta.is_zero() {
            return Ok(());
        }
        let mut posted = 0;
        for (i, (offset, add)) in [
            (BUSY_NS, delta.busy_ns),
            (HOT_NS, delta.hot_ns),
            (INVOCATIONS, delta.invocations),
        ]
        .into_iter()
        .enumerate()
        {
            if add == 0 {
                continue;
            }
            let sge = [self.results.sge(i * 8, 8)];
            let op = SendOp::FetchAdd {
                remote: RemoteAddr {
                    addr: self.target.addr + offset as u64,
                    rkey: self.target.rkey,
                },
                add,
            };
            self.qp
                .post_send(&SendWr::new(i as u64, op, &sge))
                .map_err(|e| format!("posting a FETCH_ADD: {e}"))?;
            posted += 1;
        }
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        let mut wcs = [crate::fabric::WorkCompletion::default(); 4];
        while posted > 0 {
            let n = self.cq.poll(&mut wcs);
            for wc in &wcs[..n] {
                if !wc.is_ok() {
                    return Err(format!("a FETCH_ADD failed: {}", wc.status));
                }
            }
            posted -= n;
            if n == 0 {
                if Instant::now() >= deadline {
                    return Err(format!("no FETCH_ADD completion within {FLUSH_TIMEOUT:?}"));
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(())
    }
}

/// A running accountant; dropping it flushes one last time and waits for that.
pub struct AccountantHandle {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AccountantHandle {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_is_the_ratio_since_the_origin() {
        let c = CycleClock::new(1_000, 5_000);
        assert_eq!(c.ns_per_cycle(1_000, 9_000), 1.0, "no cycles yet");
        assert_eq!(c.ns_per_cycle(3_001_000, 1_005_000), 1.0 / 3.0);
        assert_eq!(c.ns_per_cycle(2_001_000, 4_005_000), 2.0);
    }

    #[test]
    fn the_cycle_clock_agrees_with_instant() {
        let c = CycleClock::start();
        std::thread::sleep(Duration::from_millis(20));
        let (c1, n1) = (cycles(), clock_ns());
        let start = cycles();
        std::thread::sleep(Duration::from_millis(30));
        let ns = (cycles() - start) as f64 * c.ns_per_cycle(c1, n1);
        assert!(
            (25e6..60e6).contains(&ns),
            "30 ms of cycles converted to {ns} ns"
        );
    }

    #[test]
    fn hot_time_is_wall_time_less_sleeps() {
        let awake = WorkerReading {
            invocations: 7,
            busy_cycles: 300,
            started_ns: 100,
            asleep_ns: 400,
            sleeping_since_ns: 0,
        };
        assert_eq!(
            awake.totals(1_100, 2.0),
            Counters {
                busy_ns: 600,
                hot_ns: 600,
                invocations: 7
            }
        );
        let asleep = WorkerReading {
            sleeping_since_ns: 900,
            ..awake
        };
        assert_eq!(asleep.totals(1_100, 2.0).hot_ns, 400);
        // A sleep counted twice for a moment, a clock before the start: never negative.
        assert_eq!(asleep.totals(50, 2.0).hot_ns, 0);
    }

    #[test]
    fn books_bill_deltas_that_never_go_backwards() {
        let w = |invocations, busy_cycles, asleep_ns| WorkerReading {
            invocations,
            busy_cycles,
            started_ns: 0,
            asleep_ns,
            sleeping_since_ns: 0,
        };
        let mut books = Books::default();
        let due = books.due(&[w(2, 10, 0), w(1, 5, 50)], 100, 1.0);
        assert_eq!(
            due.delta,
            Counters {
                busy_ns: 15,
                hot_ns: 150,
                invocations: 3
            }
        );
        // Not committed (the manager did not get it): billed again next time.
        let due = books.due(&[w(2, 10, 0), w(1, 5, 50)], 100, 1.0);
        assert_eq!(due.delta.invocations, 3);
        books.commit(due);
        // A sleep counted twice (hot time looks smaller) and a ratio that dropped: no
        // negative delta, and nothing billed twice once the reading catches up.
        let due = books.due(&[w(3, 10, 90), w(1, 5, 50)], 120, 0.5);
        assert_eq!(
            due.delta,
            Counters {
                busy_ns: 0,
                hot_ns: 20,
                invocations: 1
            }
        );
        books.commit(due);
        let due = books.due(&[w(3, 12, 20), w(1, 5, 50)], 200, 1.0);
        assert_eq!(
            due.delta,
            Counters {
                busy_ns: 2,
                hot_ns: 160,
                invocations: 0
            }
        );
    }
}
