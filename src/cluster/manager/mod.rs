//! # The executor manager: one per node
//!
//! ```text
//!  resource manager ◀── register (POST /v1/nodes), retried with backoff ──┐
//!                   ◀── heartbeat: usage deltas, ended leases ────────────┤ heartbeat thread
//!                   ──▶ reply: leases to end ─────────────────────────────┘
//!  client ── allocate {token, mode} ──▶ accept thread ──▶ one thread per connection:
//!         ◀── allocated {executor, cores, spawn_ns}       verify the token (ledger: nonces,
//!         ◀── executor_ended {reason} | error {kind}      cores), spawn `rafi executor
//!                                                          --cores <lease's>`, supervise it
//! ```
//!
//! Threads, not tokio: the manager's work is a handful of blocking conversations per node
//! (the resource manager's client, [`crate::cluster::http`], is blocking; child processes
//! are waited on), and a library that links the manager does not need an async runtime.
//! Each connection has a supervising thread and a reader thread; each executor a thread
//! reading its stdout.
//!
//! An executor ends when its process exits (the client hears `executor_ended` at once),
//! when its client closes the connection, at the lease's expiry (from the token), when the
//! resource manager lists its lease in a heartbeat reply, when the resource manager has
//! forgotten this node (it answers 404: the manager registers again and its earlier leases
//! are void) and when the manager shuts down. Every end frees the cores and is reported in
//! the next heartbeat.
//!
//! Billing: the manager opens its node's fabric, registers a page of counters per executor
//! (busy ns, hot ns, invocations) and hands the executor its queue pair's endpoint and the
//! counters' address and rkey (`--billing`); the executor's accountant FETCH_ADDs its
//! workers' usage there every 100 ms, and each heartbeat reports what the counters gained.
//! `docs/cluster-manager.md` has the protocol, the configuration and what is missing.

#![forbid(unsafe_code)]

mod billing;
mod cgroup;
mod config;
mod connection;
mod heartbeat;
mod ledger;
mod spawn;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use config::{
    default_spare_cores, discover_gpus, host_memory_mib, host_name, parse_core_list,
    parse_gpu_list, ManagerConfig,
};
pub use ledger::RunningExecutor;

use crate::cluster::token::TokenError;
use ledger::Ledger;
use spawn::Event;

/// Starting the manager failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the allocation service cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// Why an allocation was refused; [`AllocateError::kind`] is the `kind` of the `error`
/// line the client gets.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("lease {lease} was ended by the resource manager")]
    Ended { lease: u64 },
    #[error("this executor manager is not registered with the resource manager (yet), so no token is for it")]
    NotRegistered,
    #[error("cores {cores:?} are in use by another executor on this node")]
    BusyCores { cores: Vec<usize> },
    #[error("cores {cores:?} are not spare cores of this node (spare: {spare:?})")]
    NotSpare {
        cores: Vec<usize>,
        spare: Vec<usize>,
    },
    #[error("GPUs not on this node: {unknown:?}; in use by another executor: {taken:?}")]
    BusyGpus {
        unknown: Vec<String>,
        taken: Vec<String>,
    },
    #[error("cannot start the executor: {0}")]
    Spawn(String),
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl AllocateError {
    /// `forged`, `expired`, `reused`, `wrong_node`, `busy_cores`, `spawn_failed` or
    /// `bad_request`.
    pub fn kind(&self) -> &'static str {
        match self {
            AllocateError::Token(TokenError::Malformed | TokenError::BadSignature) => "forged",
            AllocateError::Token(TokenError::Expired { .. }) | AllocateError::Ended { .. } => {
                "expired"
            }
            AllocateError::Token(TokenError::Reused { .. }) => "reused",
            AllocateError::Token(TokenError::WrongNode { .. }) | AllocateError::NotRegistered => {
                "wrong_node"
            }
            AllocateError::BusyCores { .. }
            | AllocateError::NotSpare { .. }
            | AllocateError::BusyGpus { .. } => "busy_cores",
            AllocateError::Spawn(_) => "spawn_failed",
            AllocateError::BadRequest(_) => "bad_request",
        }
    }
}

/// What every thread of one manager shares.
pub(crate) struct Shared {
    config: ManagerConfig,
    /// The cgroup v2 parent executors get their groups in, when usable.
    cgroup: Option<PathBuf>,
    /// `host:port` clients and the resource manager dial.
    advertise: String,
    node: Mutex<Option<u64>>,
    ledger: Mutex<Ledger<Sender<Event>>>,
    stopping: AtomicBool,
    /// The node's fabric for billing counters (`None`: it could not be opened; executors
    /// are then billed their wall time).
    billing: Option<Arc<dyn billing::Billing>>,
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger<Sender<Event>>> {
        // A panic elsewhere leaves the book consistent (every change is one call).
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn node(&self) -> Option<u64> {
        *self.node.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_node(&self, node: Option<u64>) {
        *self.node.lock().unwrap_or_else(|e| e.into_inner()) = node;
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The host part of the advertised address.
    fn advertised_host(&self) -> &str {
        let host = self
            .advertise
            .rsplit_once(':')
            .map_or(self.advertise.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Stops every running executor, for `reason`.
    fn end_all(&self, reason: &str) {
        for contact in self.ledger().contacts() {
            let _ = contact.send(Event::End(reason.to_string()));
        }
    }
}

/// A running executor manager; dropping it shuts it down (see
/// [`ExecutorManager::shutdown`]).
pub struct ExecutorManager {
    shared: Arc<Shared>,
    address: SocketAddr,
    accept: Option<JoinHandle<()>>,
    heartbeat: Option<(Sender<()>, JoinHandle<()>)>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl ExecutorManager {
    /// Starts the allocation service on `config.listen` and the registration with the
    /// resource manager (in the background: an unreachable resource manager is retried
    /// with backoff, and allocations are refused as `wrong_node` until it answers).
    ///
    /// # Errors
    /// When the service cannot listen or a thread cannot start.
    pub fn start(config: ManagerConfig) -> Result<Self, StartError> {
        let listener = TcpListener::bind(config.listen).map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let address = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let advertise = config.advertise.clone().unwrap_or_else(|| {
            let mut a = address;
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            a.to_string()
        });
        let cgroup = match &config.memory_cgroup {
            Some(dir) => match cgroup::probe(dir) {
                Ok(dir) => Some(dir),
                Err(why) => {
                    eprintln!("rafi executor-manager: {why}");
                    None
                }
            },
            None => {
                eprintln!(
                    "rafi executor-manager: no memory cgroup configured; executors run \
                     without memory limits"
                );
                None
            }
        };
        let billing = match billing::open(&config) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!(
                    "rafi executor-manager: cannot open the {} fabric for billing ({e}); \
                     executors are billed their wall time",
                    config.fabric
                );
                None
            }
        };
        let shared = Arc::new(Shared {
            billing,
            ledger: Mutex::new(Ledger::new(&config.spare_cores, &config.gpus)),
            config,
            cgroup,
            advertise,
            node: Mutex::new(None),
            stopping: AtomicBool::new(false),
        });
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let shared = shared.clone();
            let connections = connections.clone();
            std::thread::Builder::new()
                .name("rafi-manager-accept".into())
                .spawn(move || accept_loop(&listener, &shared, &connections))
                .map_err(StartError::Thread)?
        };
        let (stop, stopped) = mpsc::channel();
        let heartbeat = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("rafi-manager-heartbeat".into())
                .spawn(move || heartbeat::run(&shared, &stopped))
                .map_err(StartError::Thread)?
        };
        eprintln!(
            "rafi executor-manager: node {:?} serving allocations at {} (advertised as {}), \
             fabric {}, spare cores {:?}, {} MiB, GPUs {:?}; resource manager at {}",
            shared.config.node_name,
            address,
            shared.advertise,
            shared.config.fabric,
            shared.config.spare_cores,
            shared.config.memory_mib,
            shared.config.gpus,
            shared.config.resource_manager,
        );
        Ok(Self {
            shared,
            address,
            accept: Some(accept),
            heartbeat: Some((stop, heartbeat)),
            connections,
        })
    }

    /// Where the allocation service listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address given to the resource manager (and so to clients).
    pub fn advertised(&self) -> &str {
        &self.shared.advertise
    }

    /// The node id the resource manager gave, once registered.
    pub fn node(&self) -> Option<u64> {
        self.shared.node()
    }

    /// Waits up to `timeout` for the registration; the node id, if registered.
    pub fn wait_registered(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(node) = self.node() {
                return Some(node);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The executors running (or starting) now.
    pub fn running(&self) -> Vec<RunningExecutor> {
        self.shared.ledger().running()
    }

    /// Stops every executor (their clients hear `executor_ended`), sends a last heartbeat
    /// with their leases ended, and stops the service.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.end_all("the executor manager is shutting down");
        // Wake the accept loop; it sees `stopping` and returns.
        let _ = TcpStream::connect_timeout(&wake_address(self.address), Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let connections =
            std::mem::take(&mut *self.connections.lock().unwrap_or_else(|e| e.into_inner()));
        for c in connections {
            let _ = c.join();
        }
        if let Some((stop, thread)) = self.heartbeat.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

impl Drop for ExecutorManager {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The address that reaches a listener bound to `bound` (an unspecified IP is dialled
/// on loopback).
fn wake_address(bound: SocketAddr) -> SocketAddr {
    let mut a = bound;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    a
}

fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    connections: &Mutex<Vec<JoinHandle<()>>>,
) {
    for stream in listener.incoming() {
        if shared.stopping() {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("rafi executor-manager: accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("rafi-manager-conn".into())
            .spawn(move || connection::serve(&shared, stream));
        let mut threads = connections.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| !t.is_finished());
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => eprintln!("rafi executor-manager: cannot start a connection thread: {e}"),
        }
    }
}
