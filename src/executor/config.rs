//! Executor settings.

use std::time::Duration;

use crate::protocol::SlotGeometry;

/// How a worker waits for requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polling {
    /// Spin on the completion queues forever: lowest latency, one busy core per worker.
    Hot,
    /// Spin while requests keep coming; after `idle` without one, sleep on the completion
    /// channel until the next request wakes the worker.
    Warm { idle: Duration },
}

impl Polling {
    /// Warm polling with the default idle time (1 ms).
    pub const WARM: Polling = Polling::Warm {
        idle: Duration::from_millis(1),
    };

    pub fn name(self) -> &'static str {
        match self {
            Polling::Hot => "hot",
            Polling::Warm { .. } => "warm",
        }
    }
}

/// Settings of an executor.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// One entry per worker thread: the core it is pinned to (`None`: not pinned).
    pub cores: Vec<Option<usize>>,
    pub polling: Polling,
    /// The largest slot geometry a client may ask for (slots per worker connection and
    /// bytes per slot); requests beyond it are refused at allocation.
    pub max_slots: u32,
    pub max_slot_size: u32,
    /// Copy each request out of its slot before validating it, so that a client writing
    /// the slot again while the function runs cannot change bytes after they were checked
    /// (an rkyv archive's relative pointers read after validation must stay valid). `None`:
    /// copy on tcp and verbs, whose clients reach nothing but their slots; not on shm,
    /// whose peers map each other's memory and are trusted anyway (docs/rdma-mock.md).
    pub private_inputs: Option<bool>,
    /// Whether clients may ship function libraries with their allocation (code that then
    /// runs in this executor with its rights). Off by default.
    pub accept_libraries: bool,
    /// The largest shipped library accepted, in bytes.
    pub max_library_len: u64,
    /// Bytes of remote memory this executor leases to clients at most, all allocations
    /// together (docs/remote-memory.md); beyond it a memory request is refused.
    pub max_memory: u64,
}

impl ExecutorConfig {
    /// `workers` unpinned worker threads, warm polling, up to 256 slots of 1 MiB.
    pub fn new(workers: usize) -> Self {
        Self {
            cores: vec![None; workers],
            polling: Polling::WARM,
            max_slots: 256,
            max_slot_size: 1 << 20,
            private_inputs: None,
            accept_libraries: false,
            max_library_len: 256 << 20,
            max_memory: 1 << 30,
        }
    }

    /// One worker per listed core, each pinned to its core.
    pub fn pinned(cores: &[usize]) -> Self {
        Self {
            cores: cores.iter().copied().map(Some).collect(),
            ..Self::new(cores.len())
        }
    }

    /// Whether `geometry` is within this executor's limits.
    pub fn allows(&self, geometry: SlotGeometry) -> bool {
        geometry.slots() <= self.max_slots && geometry.slot_size() <= self.max_slot_size
    }
}
