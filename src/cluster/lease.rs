//! The client side of the cluster: lease cores from the resource manager, then allocate
//! executors on the nodes of the lease through their executor managers.
//!
//! ```text
//!  LeaseClient::lease ── POST /v1/leases ──▶ resource manager ──▶ Lease { parts: [node, token] }
//!  Leased::allocate(part) ── allocate{token} ──▶ executor manager ── spawns an executor
//!                         ◀── allocated{executor} ──┘
//!  client::Allocation::connect(executor) …  (the manager connection is kept: closing it
//!                                            ends the executor)
//!  LeaseClient::renew(lease) ── POST /v1/leases/{id}/renew ──▶ Lease { parts: fresh tokens }
//!  Leased::renew(part) ── renew{token} ──▶ executor manager ── extends the executor
//!                      ◀── renewed{expires_at} ──┘
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::api::{
    Lease, LeasePart, LeaseRequest, LeaseStatus, ManagerMessage, RenewRequest, UnixMillis,
};
use super::http::{call, CallError};
use crate::client::{AllocateError, Allocation, AllocationOptions, MemoryOptions, RemoteMemory};
use crate::fabric::Fabric;

/// Talks to the resource manager as one client.
#[derive(Clone, Debug)]
pub struct LeaseClient {
    /// `host:port` of the resource manager.
    pub resource_manager: String,
    /// `client-name:secret`, as configured on the resource manager.
    pub credential: String,
}

impl LeaseClient {
    pub fn new(resource_manager: impl Into<String>, client: &str, secret: &str) -> Self {
        Self {
            resource_manager: resource_manager.into(),
            credential: format!("{client}:{secret}"),
        }
    }

    /// Leases resources.
    ///
    /// # Errors
    /// [`CallError`]; `kind() == Some("exhausted")` when the cluster has no room.
    pub fn lease(&self, request: &LeaseRequest) -> Result<Lease, CallError> {
        call(
            &self.resource_manager,
            "POST",
            "/v1/leases",
            &self.credential,
            Some(request),
        )
    }

    /// Extends a lease by `duration` from now.
    ///
    /// # Errors
    /// [`CallError`]; `gone` when it has ended already.
    pub fn renew(&self, lease: u64, duration: Duration) -> Result<Lease, CallError> {
        call(
            &self.resource_manager,
            "POST",
            &format!("/v1/leases/{lease}/renew"),
            &self.credential,
            Some(&RenewRequest {
                duration_ms: duration.as_millis() as u64,
            }),
        )
    }

    /// Ends a lease; its executors are stopped.
    ///
    /// # Errors
    /// [`CallError`].
    pub fn release(&self, lease: u64) -> Result<LeaseStatus, CallError> {
        call::<(), _>(
            &self.resource_manager,
            "DELETE",
            &format!("/v1/leases/{lease}"),
            &self.credential,
            None,
        )
    }
}

/// Allocating on a leased node failed.
#[derive(Debug, thiserror::Error)]
pub enum LeasedAllocateError {
    #[error("cannot reach the executor manager of node {node} at {addr}: {source}")]
    Connect {
        node: String,
        addr: String,
        source: std::io::Error,
    },
    #[error("the executor manager of node {node} refused ({kind}): {message}")]
    Refused {
        node: String,
        kind: String,
        message: String,
    },
    #[error("the executor manager of node {node}: {message}")]
    Protocol { node: String, message: String },
    /// The executor ended while the client was still connecting to it (the lease expired
    /// or ended, the executor died), as its manager said.
    #[error("the executor of node {node} ended before the allocation was ready: {reason}")]
    Ended { node: String, reason: String },
    #[error(transparent)]
    Allocate(#[from] AllocateError),
}

/// An allocation on a leased node: the executor's workers, and the connection to the
/// node's executor manager that keeps the executor alive (dropping this ends it).
pub struct Leased<F: Fabric> {
    pub allocation: Allocation<F>,
    /// Time from the allocate request to the executor listening, as the manager measured.
    pub spawn: Duration,
    /// Time from the allocate request to the allocation being ready to invoke.
    pub ready: Duration,
    /// The manager connection (its reader; the writer is a clone of the same socket).
    manager: BufReader<TcpStream>,
    node: String,
}

/// Renewing an allocation at its executor manager failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("the renewal token is for node {part}, this allocation runs on node {node}")]
    WrongNode { part: String, node: String },
    #[error("the executor manager of node {node} refused the renewal ({kind}): {message}")]
    Refused {
        node: String,
        kind: String,
        message: String,
    },
    #[error("the executor of node {node} ended: {reason}")]
    Ended { node: String, reason: String },
    #[error("the executor manager of node {node}: {message}")]
    Protocol { node: String, message: String },
}

impl<F: Fabric> Leased<F> {
    /// Starts an executor for `part` through its node's manager and allocates all of its
    /// workers (one per leased core) for `functions`.
    ///
    /// # Errors
    /// [`LeasedAllocateError`].
    pub fn allocate(
        fabric: F,
        part: &LeasePart,
        functions: &[&str],
        mode: Option<&str>,
        mut options: AllocationOptions,
    ) -> Result<Self, LeasedAllocateError> {
        let started = Instant::now();
        let (mut manager, executor, spawn_ns) = start_executor(part, mode)?;
        options.workers = part.cores.len().max(1);
        let allocation = Allocation::connect(fabric, executor.as_str(), functions, options)
            .map_err(|e| why_it_failed(&mut manager, part, e.into()))?;
        Ok(Self {
            allocation,
            spawn: Duration::from_nanos(spawn_ns),
            ready: started.elapsed(),
            manager,
            node: part.node_name.clone(),
        })
    }

    /// The name of the node this executor runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Extends the executor's life to the expiry of `part`'s token: `part` is this
    /// allocation's part of the lease as [`LeaseClient::renew`] returned it (a fresh
    /// token). Returns the new expiry the manager granted.
    ///
    /// # Errors
    /// [`RenewError`]: the manager refused the token (`kind` as for an allocation), the
    /// executor ended meanwhile, or the connection failed (10 s without an answer).
    pub fn renew(&mut self, part: &LeasePart) -> Result<UnixMillis, RenewError> {
        if part.node_name != self.node {
            return Err(RenewError::WrongNode {
                part: part.node_name.clone(),
                node: self.node.clone(),
            });
        }
        let node = self.node.clone();
        let protocol = |message: String| RenewError::Protocol {
            node: node.clone(),
            message,
        };
        let mut line = serde_json::to_string(&ManagerMessage::Renew {
            token: part.token.clone(),
        })
        .map_err(|e| protocol(e.to_string()))?;
        line.push('\n');
        let stream = self.manager.get_mut();
        stream
            .write_all(line.as_bytes())
            .map_err(|e| protocol(e.to_string()))?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut answer = String::new();
        let read = self.manager.read_line(&mut answer);
        let _ = self.manager.get_ref().set_read_timeout(None);
        read.map_err(|e| protocol(e.to_string()))?;
        match serde_json::from_str::<ManagerMessage>(&answer) {
            Ok(ManagerMessage::Renewed { expires_at }) => Ok(expires_at),
            Ok(ManagerMessage::Error { kind, message }) => Err(RenewError::Refused {
                node,
                kind,
                message,
            }),
            Ok(ManagerMessage::ExecutorEnded { reason }) => Err(RenewError::Ended { node, reason }),
            Ok(other) => Err(protocol(format!("unexpected answer {other:?}"))),
            Err(e) if answer.is_empty() => Err(protocol(format!("closed the connection ({e})"))),
            Err(e) => Err(protocol(format!("malformed answer {answer:?}: {e}"))),
        }
    }
}

/// The error of an allocation whose connection to its executor failed: when the manager
/// says the executor ended meanwhile (say, the lease expired during a slow start), that,
/// else `error` as it is.
fn why_it_failed(
    manager: &mut BufReader<TcpStream>,
    part: &LeasePart,
    error: LeasedAllocateError,
) -> LeasedAllocateError {
    // An executor that answered (refused, or was asked for nonsense) was alive.
    if matches!(
        error,
        LeasedAllocateError::Allocate(AllocateError::Refused(_) | AllocateError::Invalid(_))
    ) {
        return error;
    }
    // The manager sends its notice before it closes; a live one has nothing to say (and
    // is given half a second to say it).
    let _ = manager
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)));
    let mut line = String::new();
    match manager.read_line(&mut line) {
        Ok(n) if n > 0 => match serde_json::from_str::<ManagerMessage>(&line) {
            Ok(ManagerMessage::ExecutorEnded { reason }) => LeasedAllocateError::Ended {
                node: part.node_name.clone(),
                reason,
            },
            _ => error,
        },
        _ => error,
    }
}

/// Asks `part`'s executor manager to start its executor; returns the manager connection
/// (which keeps the executor alive), the executor's address and its spawn time.
fn start_executor(
    part: &LeasePart,
    mode: Option<&str>,
) -> Result<(BufReader<TcpStream>, String, u64), LeasedAllocateError> {
    let node = part.node_name.clone();
    let protocol = |message: String| LeasedAllocateError::Protocol {
        node: node.clone(),
        message,
    };
    let manager = TcpStream::connect(&part.manager_address).map_err(|source| {
        LeasedAllocateError::Connect {
            node: node.clone(),
            addr: part.manager_address.clone(),
            source,
        }
    })?;
    let _ = manager.set_nodelay(true);
    let mut writer = manager.try_clone().map_err(|e| protocol(e.to_string()))?;
    let request = ManagerMessage::Allocate {
        token: part.token.clone(),
        mode: mode.map(str::to_string),
    };
    let mut line = serde_json::to_string(&request).map_err(|e| protocol(e.to_string()))?;
    line.push('\n');
    writer
        .write_all(line.as_bytes())
        .map_err(|e| protocol(e.to_string()))?;
    let mut reader = BufReader::new(manager.try_clone().map_err(|e| protocol(e.to_string()))?);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .map_err(|e| protocol(e.to_string()))?;
    let (executor, spawn_ns) = match serde_json::from_str::<ManagerMessage>(&answer) {
        Ok(ManagerMessage::Allocated {
            executor, spawn_ns, ..
        }) => (executor, spawn_ns),
        Ok(ManagerMessage::Error { kind, message }) => {
            return Err(LeasedAllocateError::Refused {
                node,
                kind,
                message,
            })
        }
        Ok(other) => return Err(protocol(format!("unexpected answer {other:?}"))),
        Err(e) if answer.is_empty() => {
            return Err(protocol(format!("closed the connection ({e})")))
        }
        Err(e) => return Err(protocol(format!("malformed answer {answer:?}: {e}"))),
    };
    Ok((reader, executor, spawn_ns))
}

/// Remote memory on a leased node: a memory-only allocation of the executor the node's
/// manager starts for the lease (one worker, warm: it never runs a function), and the
/// manager connection that keeps the executor alive. The executor may lease as much memory
/// as the lease holds; dropping this, or the lease's end, releases the memory.
pub struct LeasedMemory<F: Fabric> {
    pub memory: RemoteMemory<F>,
    /// Time from the allocate request to the executor listening, as the manager measured.
    pub spawn: Duration,
    /// Time from the allocate request to the memory being reachable.
    pub ready: Duration,
    _manager: BufReader<TcpStream>,
}

impl<F: Fabric> LeasedMemory<F> {
    /// Starts the executor of `part` (warm) and leases `options.len` bytes of it.
    ///
    /// # Errors
    /// [`LeasedAllocateError`]; more memory than the lease holds is refused by the
    /// executor.
    pub fn allocate(
        fabric: F,
        part: &LeasePart,
        options: MemoryOptions,
    ) -> Result<Self, LeasedAllocateError> {
        let started = Instant::now();
        let (mut manager, executor, spawn_ns) = start_executor(part, Some("warm"))?;
        let memory = RemoteMemory::connect(fabric, executor.as_str(), options)
            .map_err(|e| why_it_failed(&mut manager, part, e.into()))?;
        Ok(Self {
            memory,
            spawn: Duration::from_nanos(spawn_ns),
            ready: started.elapsed(),
            _manager: manager,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::FabricKind;
    use std::net::TcpListener;

    fn part() -> LeasePart {
        LeasePart {
            node: 1,
            node_name: "n1".into(),
            manager_address: String::new(),
            fabric: FabricKind::Shm,
            cores: vec![0],
            memory_mib: 0,
            gpus: vec![],
            token: String::new(),
        }
    }

    /// A connected pair: (the client's reader, the manager's end).
    fn pair() -> (BufReader<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (BufReader::new(client), listener.accept().unwrap().0)
    }

    fn failed() -> LeasedAllocateError {
        LeasedAllocateError::Allocate(AllocateError::Control(crate::control::ControlError::Closed))
    }

    /// A lease that expires while the client still connects to its executor: the
    /// client's error says so (the manager's notice), not only that a connection broke.
    #[test]
    fn the_managers_notice_explains_a_failed_connection() {
        let (mut reader, mut manager) = pair();
        let notice = ManagerMessage::ExecutorEnded {
            reason: "the lease expired".into(),
        };
        writeln!(manager, "{}", serde_json::to_string(&notice).unwrap()).unwrap();
        let e = why_it_failed(&mut reader, &part(), failed());
        assert!(
            matches!(&e, LeasedAllocateError::Ended { reason, .. } if reason == "the lease expired")
        );
        assert!(
            e.to_string()
                .contains("n1 ended before the allocation was ready"),
            "{e}"
        );

        // No notice (a live manager), or something else: the error as it was.
        let (mut reader, manager) = pair();
        assert!(matches!(
            why_it_failed(&mut reader, &part(), failed()),
            LeasedAllocateError::Allocate(_)
        ));
        drop(manager);
        let (mut reader, mut manager) = pair();
        writeln!(manager, "not json").unwrap();
        assert!(matches!(
            why_it_failed(&mut reader, &part(), failed()),
            LeasedAllocateError::Allocate(_)
        ));
        // An executor that refused was alive: the manager is not asked (its line is
        // left unread), so a refusal is reported without waiting for a notice.
        let (mut reader, mut manager) = pair();
        writeln!(manager, "{}", serde_json::to_string(&notice).unwrap()).unwrap();
        let refused = LeasedAllocateError::Allocate(AllocateError::Invalid("no".into()));
        assert!(matches!(
            why_it_failed(&mut reader, &part(), refused),
            LeasedAllocateError::Allocate(AllocateError::Invalid(_))
        ));
        let mut unread = String::new();
        reader.read_line(&mut unread).unwrap();
        assert!(unread.contains("executor_ended"), "{unread:?}");
    }
}
