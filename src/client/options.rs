//! Settings of an allocation.

use std::num::NonZeroU64;
use std::time::Duration;

use crate::protocol::SlotGeometry;

/// What a client asks of an executor, and how it waits.
#[derive(Clone, Debug)]
pub struct AllocationOptions {
    /// A name for the executor's logs and accounting.
    pub client_name: String,
    /// Worker connections wanted (each a worker thread on its own core).
    pub workers: usize,
    /// Invocations in flight per worker, and the size of each request/response slot.
    pub geometry: SlotGeometry,
    /// How long an invocation may take before the client gives up on it
    /// (`Duration::MAX`: forever).
    pub timeout: Duration,
    /// How long a blocking call spins before it sleeps on the completion channel (zero:
    /// sleep at once; the default spins for the whole timeout, the lowest latency).
    pub spin: Option<Duration>,
    /// How often a caller that has waited this long checks that the executor's control
    /// connection is still open (one system call; an invocation answered sooner makes none;
    /// `Duration::MAX`: never).
    pub liveness_interval: Duration,
    /// Function libraries to ship with the allocation (shared objects exporting the rafi
    /// function ABI); the executor loads them from memory for this allocation only, if it
    /// accepts shipped libraries.
    pub libraries: Vec<ShippedLibrary>,
    /// The first invocation id of each worker connection (1 unless a test wants to cross
    /// the 2^16 or 2^32 boundaries without billions of calls first).
    pub first_id: NonZeroU64,
    /// Send invocations in the protocol's compact form (no header: the immediate and the
    /// WRITE's length say it all, so neither side reads a header line; docs/protocol.md).
    /// On by default; off puts a header on every request and response, which only
    /// benchmarks want, to show what the compact form saves.
    pub compact: bool,
}

impl Default for AllocationOptions {
    fn default() -> Self {
        Self {
            client_name: format!("pid-{}", std::process::id()),
            workers: 1,
            geometry: SlotGeometry::DEFAULT,
            timeout: Duration::from_secs(10),
            spin: None,
            liveness_interval: Duration::from_millis(1),
            first_id: NonZeroU64::MIN,
            libraries: Vec::new(),
            compact: true,
        }
    }
}

/// A function library sent to the executor at allocation.
#[derive(Clone, Debug)]
pub struct ShippedLibrary {
    /// A name for the executor's logs and errors.
    pub name: String,
    pub bytes: std::sync::Arc<[u8]>,
}

impl ShippedLibrary {
    /// Reads the shared object at `path`.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let path = path.as_ref();
        Ok(Self {
            name: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            ),
            bytes: std::fs::read(path)?.into(),
        })
    }
}
