//! # The executor
//!
//! A process (or part of one) whose worker threads, each pinned to a core it was given,
//! serve invocations. Clients allocate workers over a TCP control connection (the JSON-line
//! handshake of [`crate::protocol`]); each worker then owns, for each client connection, a
//! queue pair, a region of request slots the client writes into with WRITE_WITH_IMM, and
//! staging slots the responses are built in.
//!
//! ```text
//!  control thread ── accept ──▶ session thread per client: hello → links → accept
//!                                  → connect → hand links to workers → ready … EOF → remove
//!  worker i (pinned) loop: inbox? ─ poll each link's CQ ─ recv completion:
//!        repost receive → validate in place → catalog.call(payload, staging output)
//!        → header → WRITE_WITH_IMM into the client's response slot
//!      idle: hot spins; warm spins for `idle`, then arms its CQs and sleeps on its channel
//! ```
//!
//! A malformed or hostile request gets an error status (or is dropped when no safe answer
//! exists) and the worker keeps serving; a function's failure or panic becomes a status. A
//! worker never exits on its own: only [`Executor`]'s drop stops it.

pub mod billing;
mod catalog;
mod config;
mod link;
mod memory;
mod placement;
mod session;
mod worker;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub use catalog::{Catalog, Outcome};
pub use config::{ExecutorConfig, Polling};
pub use worker::{clock_ns, WorkerStats};

use crate::fabric::{Fabric, FabricError};
use worker::WorkerHandle;

/// Starting an executor failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(transparent)]
    Fabric(#[from] FabricError),
    #[error("cannot listen for clients on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("an executor needs at least one worker")]
    NoWorkers,
}

pub(crate) struct Shared<F: Fabric, C: Catalog> {
    fabric: F,
    pd: F::Pd,
    workers: Vec<WorkerHandle<F>>,
    /// How many client links each worker serves: new allocations go to the least loaded.
    loads: placement::WorkerLoads,
    catalog: Arc<C>,
    config: ExecutorConfig,
    /// Leased memory in use, against `config.max_memory`.
    memory: Arc<memory::MemoryBudget>,
    /// The control connection of every live session, to end them when the executor stops.
    sessions: std::sync::Mutex<std::collections::HashMap<u64, TcpStream>>,
}

/// A running executor: worker threads and the control listener. Dropping it stops both.
pub struct Executor<F: Fabric, C: Catalog> {
    address: SocketAddr,
    shared: Arc<Shared<F, C>>,
    stopping: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl<F: Fabric, C: Catalog> Executor<F, C> {
    /// Starts the workers of `config` on `fabric`, serving the functions of `catalog`,
    /// and listens for clients on `listen` (port 0 picks a free one; see
    /// [`Executor::address`]).
    ///
    /// # Errors
    /// When the fabric, the listener or a thread cannot be set up.
    pub fn start(
        fabric: F,
        listen: SocketAddr,
        config: ExecutorConfig,
        catalog: Arc<C>,
    ) -> Result<Self, ExecutorError> {
        if config.cores.is_empty() {
            return Err(ExecutorError::NoWorkers);
        }
        let pd = fabric.alloc_pd()?;
        let mut workers = Vec::with_capacity(config.cores.len());
        for (i, core) in config.cores.iter().enumerate() {
            let channel = fabric.create_channel()?;
            workers.push(
                WorkerHandle::spawn(i, *core, config.polling, channel, catalog.clone())
                    .map_err(ExecutorError::Thread)?,
            );
        }
        let listener = TcpListener::bind(listen).map_err(|source| ExecutorError::Listen {
            addr: listen,
            source,
        })?;
        let address = listener
            .local_addr()
            .map_err(|source| ExecutorError::Listen {
                addr: listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            fabric,
            pd,
            loads: placement::WorkerLoads::new(workers.len()),
            workers,
            catalog,
            config,
            memory: Default::default(),
            sessions: Default::default(),
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let accept = {
            let (shared, stopping) = (shared.clone(), stopping.clone());
            std::thread::Builder::new()
                .name("rafi-executor-accept".into())
                .spawn(move || accept_loop(&listener, &shared, &stopping))
                .map_err(ExecutorError::Thread)?
        };
        Ok(Self {
            address,
            shared,
            stopping,
            accept: Some(accept),
        })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The counters of each worker.
    pub fn worker_stats(&self) -> Vec<Arc<WorkerStats>> {
        self.shared
            .workers
            .iter()
            .map(|w| w.stats.clone())
            .collect()
    }

    /// Bytes of remote memory leased to clients now.
    pub fn memory_in_use(&self) -> u64 {
        self.shared.memory.in_use()
    }

    /// The fabric the executor serves on.
    pub fn fabric(&self) -> &F {
        &self.shared.fabric
    }
}

impl<F: Fabric, C: Catalog> Drop for Executor<F, C> {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect(self.address);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // Stop the workers now (their links go with them, so clients see the end), and
        // close every session: nothing of this executor outlives it, even while clients
        // keep their allocations.
        for worker in &self.shared.workers {
            worker.stop_and_join();
        }
        let sessions = std::mem::take(
            &mut *self
                .shared
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for stream in sessions.values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn accept_loop<F: Fabric, C: Catalog>(
    listener: &TcpListener,
    shared: &Arc<Shared<F, C>>,
    stopping: &AtomicBool,
) {
    let next_client = AtomicU64::new(1);
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let client = next_client.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("rafi-session-{client}"))
            .spawn(move || session::run(shared, stream, client));
        if let Err(e) = spawned {
            eprintln!("rafi executor: cannot start a session thread: {e}");
        }
    }
}
