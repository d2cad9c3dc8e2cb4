//! Control messages of the allocation handshake, carried as JSON lines over TCP.
//!
//! ```text
//!  client                                         executor
//!  create one QP + response region per worker
//!  ── {"type":"hello", version, client, functions, slots, slot_size, workers:[…]} ──▶
//!                                                 ClientHello::admit: version, geometry,
//!                                                 workers, fabric, regions, functions
//!                                                 create QPs + request regions
//!  ◀── {"type":"accept", version, functions:[{name,index}], workers:[…]} ──
//!      or {"type":"error", version, kind, message, unknown_functions?}
//!  ExecutorReply::check
//!  both sides connect worker i's QPs with each other's endpoints
//! ```

use std::collections::HashSet;

use crate::fabric::{Endpoint, FabricKind};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::geometry::{GeometryError, SlotGeometry};

/// Version of the wire protocol (slot layout, immediates, status codes, these messages).
/// Both sides must speak the same one.
pub const PROTOCOL_VERSION: u32 = 2;

/// Longest control line a reader should accept, newline excluded (1 MiB).
pub const MAX_CONTROL_LINE: usize = 1 << 20;

/// A registered memory region as a peer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegionDesc {
    /// Virtual address of the first byte (what goes into a remote address).
    pub addr: u64,
    /// Remote key.
    pub rkey: u32,
    /// Length in bytes.
    pub len: u64,
}

impl RegionDesc {
    /// The remote address of byte `offset` (for example a slot's offset).
    pub fn at(&self, offset: u64) -> u64 {
        self.addr.wrapping_add(offset)
    }
}

/// What a client brings for one worker: its queue pair and its response region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientWorker {
    /// The client's queue pair for this worker.
    pub endpoint: Endpoint,
    /// The client's response slots for this worker: `slots * slot_size` bytes at least,
    /// remote write access.
    pub response_region: RegionDesc,
}

/// The first message: a client asks for workers and functions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// [`PROTOCOL_VERSION`] of the client.
    pub version: u32,
    /// A name for logs and accounting (for example `"app-rank-3"`).
    pub client: String,
    /// Functions the client will invoke; the reply gives index `i` to `functions[i]`.
    pub functions: Vec<String>,
    /// Slots per worker connection.
    pub slots: u32,
    /// Bytes per slot (a power of two, 128 B to 1 GiB).
    pub slot_size: u32,
    /// One entry per worker wanted.
    pub workers: Vec<ClientWorker>,
    /// Function libraries the client ships with the allocation: their bytes follow this
    /// line on the control connection, raw, in this order. Their functions are found
    /// before the executor's own. Executors accept them only when configured to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub libraries: Vec<LibraryDesc>,
    /// Remote memory the client leases with this allocation (a memory-only allocation
    /// names no workers and no functions). Absent in hellos of clients that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryRequest>,
}

/// The remote rights a client asks for on leased memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemoryAccess {
    /// RDMA READ (`get`).
    #[serde(default)]
    pub read: bool,
    /// RDMA WRITE (`put`).
    #[serde(default)]
    pub write: bool,
    /// FETCH_ADD and CMP_SWAP.
    #[serde(default)]
    pub atomic: bool,
}

impl MemoryAccess {
    /// Every right: read, write, atomics.
    pub const ALL: MemoryAccess = MemoryAccess {
        read: true,
        write: true,
        atomic: true,
    };
    /// Reads only.
    pub const READ_ONLY: MemoryAccess = MemoryAccess {
        read: true,
        write: false,
        atomic: false,
    };

    /// Whether no right at all is asked for.
    pub fn is_empty(self) -> bool {
        !(self.read || self.write || self.atomic)
    }

    /// Whether every right of `other` is in `self`.
    pub fn contains(self, other: MemoryAccess) -> bool {
        (self.read || !other.read) && (self.write || !other.write) && (self.atomic || !other.atomic)
    }
}

impl std::fmt::Display for MemoryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = [
            (self.read, "read"),
            (self.write, "write"),
            (self.atomic, "atomic"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join("+"))
        }
    }
}

/// Leased memory a hello asks for: `len` bytes with `access`, reached from the client's
/// queue pair `endpoint` (dedicated to memory operations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRequest {
    pub len: u64,
    pub access: MemoryAccess,
    pub endpoint: Endpoint,
}

/// The executor's side of leased memory: its queue pair for the client's memory queue
/// pair, and the region (its rkey reaches nothing else). It lives as long as the
/// allocation's control connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryGrant {
    pub endpoint: Endpoint,
    pub region: RegionDesc,
    pub access: MemoryAccess,
}

/// A function library shipped after the hello: `len` raw bytes of a shared object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryDesc {
    /// A name for logs and errors (e.g. the file name).
    pub name: String,
    pub len: u64,
}

/// One line of the function table: `name` is invoked with function index `index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FunctionEntry {
    pub name: String,
    pub index: u32,
}

/// What the executor provides for one worker: its queue pair and its request region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorWorker {
    /// The executor's queue pair for this worker and client.
    pub endpoint: Endpoint,
    /// The request slots of this worker for this client: `slots * slot_size` bytes at
    /// least, remote write access.
    pub request_region: RegionDesc,
}

/// The executor's positive answer to a [`ClientHello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorReply {
    /// [`PROTOCOL_VERSION`] of the executor.
    pub version: u32,
    /// The function table of this connection, in the order of the hello.
    pub functions: Vec<FunctionEntry>,
    /// One entry per worker, in the order of the hello.
    pub workers: Vec<ExecutorWorker>,
    /// The leased memory, when the hello asked for some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryGrant>,
}

/// What kind of error an [`ErrorMessage`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// Some function names are not known to the executor.
    UnknownFunctions,
    /// The message was malformed or inconsistent.
    BadRequest,
    /// More workers were asked for than the executor has.
    TooManyWorkers,
    /// The executor cannot serve now (shutting down, out of resources).
    Unavailable,
    /// A fault inside the executor.
    Internal,
}

/// A refusal. Its shape never changes between versions, so that peers of different
/// versions can still tell each other why they refuse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    pub kind: ErrorKind,
    /// Human-readable explanation.
    pub message: String,
    /// With [`ErrorKind::UnknownFunctions`]: every name that was not found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_functions: Vec<String>,
}

/// One line of the control connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    Hello(ClientHello),
    Accept(ExecutorReply),
    Error(ErrorMessage),
    /// The executor's last handshake line: its queue pairs are connected and their
    /// receives posted, so the client may send (on verbs, a request sent earlier would be
    /// dropped and retransmitted after the transport timeout).
    Ready {
        version: u32,
    },
}

/// Why a handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    /// The slot geometry asked for is invalid.
    #[error("invalid slot geometry: {0}")]
    Geometry(#[from] GeometryError),
    /// The hello asks for no worker.
    #[error("no workers requested")]
    NoWorkers,
    /// More workers than the executor has.
    #[error("{wanted} workers requested, but only {available} are available")]
    TooManyWorkers { wanted: usize, available: u32 },
    /// A memory request that cannot be granted as asked (zero bytes, no rights).
    #[error("invalid memory request: {reason}")]
    InvalidMemory { reason: String },
    /// The reply's memory grant does not match the hello's request.
    #[error("memory grant mismatch: {detail}")]
    MemoryMismatch { detail: String },
    /// The reply describes another number of workers than the hello asked for.
    #[error("{wanted} workers requested, but the reply describes {got}")]
    WorkerCountMismatch { wanted: usize, got: usize },
    /// The hello asks for no function.
    #[error("no functions requested")]
    NoFunctions,
    /// A function name appears twice in the hello.
    #[error("function {name:?} requested twice")]
    DuplicateFunction { name: String },
    /// Function names the executor does not know.
    #[error("unknown function(s): {}", .names.join(", "))]
    UnknownFunctions { names: Vec<String> },
    /// The reply's function table is not the one the hello asked for.
    #[error("function table mismatch at entry {position}: {detail}")]
    FunctionTableMismatch { position: usize, detail: String },
    /// A worker's queue pair is on another fabric.
    #[error("worker {worker}: endpoint on fabric {theirs}, but this side runs {ours}")]
    FabricMismatch {
        worker: usize,
        ours: &'static str,
        theirs: &'static str,
    },
    /// A region is smaller than `slots * slot_size`.
    #[error(
        "worker {worker}: {role} region of {len} B is smaller than the {needed} B its slots need"
    )]
    RegionTooSmall {
        worker: usize,
        role: &'static str,
        len: u64,
        needed: u64,
    },
    /// The executor refused with an [`ErrorMessage`].
    #[error("executor refused ({kind:?}): {message}")]
    Refused { kind: ErrorKind, message: String },
    /// A control line longer than [`MAX_CONTROL_LINE`].
    #[error("control line of {len} B exceeds the {max} B limit")]
    LineTooLong { len: usize, max: usize },
    /// A control line that is not a valid message.
    #[error("malformed control message: {reason}")]
    Decode { reason: String },
    /// A valid message of the wrong type at this point of the handshake.
    #[error("expected a {expected} message, got a {found} message")]
    UnexpectedMessage {
        expected: &'static str,
        found: &'static str,
    },
}

/// What the executor learns from an admitted hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission<T> {
    /// The slot geometry of every worker connection of this client.
    pub geometry: SlotGeometry,
    /// The resolved functions: connection function index `i` is `functions[i]`.
    pub functions: Vec<T>,
}

fn check_version(theirs: u32) -> Result<(), HandshakeError> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

fn check_region(
    worker: usize,
    role: &'static str,
    region: &RegionDesc,
    geometry: SlotGeometry,
) -> Result<(), HandshakeError> {
    let needed = geometry.region_len();
    if region.len < needed {
        return Err(HandshakeError::RegionTooSmall {
            worker,
            role,
            len: region.len,
            needed,
        });
    }
    Ok(())
}

fn check_fabric(worker: usize, ours: FabricKind, theirs: &Endpoint) -> Result<(), HandshakeError> {
    if theirs.kind() != ours {
        return Err(HandshakeError::FabricMismatch {
            worker,
            ours: ours.name(),
            theirs: theirs.kind().name(),
        });
    }
    Ok(())
}

impl ClientHello {
    /// A hello of the current [`PROTOCOL_VERSION`].
    pub fn new(
        client: impl Into<String>,
        functions: Vec<String>,
        geometry: SlotGeometry,
        workers: Vec<ClientWorker>,
    ) -> ClientHello {
        ClientHello {
            version: PROTOCOL_VERSION,
            client: client.into(),
            functions,
            slots: geometry.slots(),
            slot_size: geometry.slot_size(),
            workers,
            libraries: Vec::new(),
            memory: None,
        }
    }

    /// A memory-only hello: no workers, no functions, `memory` leased.
    pub fn memory_only(client: impl Into<String>, memory: MemoryRequest) -> ClientHello {
        ClientHello {
            version: PROTOCOL_VERSION,
            client: client.into(),
            functions: Vec::new(),
            // A valid geometry for the checks; no slot is ever created for it.
            slots: 1,
            slot_size: 4096,
            workers: Vec::new(),
            libraries: Vec::new(),
            memory: Some(memory),
        }
    }

    /// The executor's check of a hello: version, slot geometry, worker count against
    /// `available_workers`, every endpoint on `fabric`, every response region large
    /// enough, function names present, distinct and all known to `resolve` (which returns
    /// the executor's handle for a name). Unknown names are reported all at once.
    ///
    /// # Errors
    /// [`HandshakeError`]; answer it with [`ErrorMessage::from_error`].
    pub fn admit<T>(
        &self,
        fabric: FabricKind,
        available_workers: u32,
        mut resolve: impl FnMut(&str) -> Option<T>,
    ) -> Result<Admission<T>, HandshakeError> {
        check_version(self.version)?;
        let geometry = SlotGeometry::new(self.slots, self.slot_size)?;
        if let Some(memory) = &self.memory {
            if memory.len == 0 {
                return Err(HandshakeError::InvalidMemory {
                    reason: "zero bytes requested".into(),
                });
            }
            if memory.access.is_empty() {
                return Err(HandshakeError::InvalidMemory {
                    reason: "no access right requested (read, write or atomic)".into(),
                });
            }
            if memory.endpoint.kind() != fabric {
                return Err(HandshakeError::InvalidMemory {
                    reason: format!(
                        "memory queue pair on fabric {}, but this side runs {}",
                        memory.endpoint.kind().name(),
                        fabric.name()
                    ),
                });
            }
            if self.workers.is_empty() && self.functions.is_empty() {
                // A memory-only allocation.
                return Ok(Admission {
                    geometry,
                    functions: Vec::new(),
                });
            }
        }
        if self.workers.is_empty() {
            return Err(HandshakeError::NoWorkers);
        }
        if self.workers.len() > available_workers as usize {
            return Err(HandshakeError::TooManyWorkers {
                wanted: self.workers.len(),
                available: available_workers,
            });
        }
        for (i, w) in self.workers.iter().enumerate() {
            check_fabric(i, fabric, &w.endpoint)?;
            check_region(i, "response", &w.response_region, geometry)?;
        }
        if self.functions.is_empty() {
            return Err(HandshakeError::NoFunctions);
        }
        let mut seen = HashSet::new();
        for name in &self.functions {
            if !seen.insert(name.as_str()) {
                return Err(HandshakeError::DuplicateFunction { name: name.clone() });
            }
        }
        let mut functions = Vec::with_capacity(self.functions.len());
        let mut unknown = Vec::new();
        for name in &self.functions {
            match resolve(name) {
                Some(f) => functions.push(f),
                None => unknown.push(name.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(HandshakeError::UnknownFunctions { names: unknown });
        }
        Ok(Admission {
            geometry,
            functions,
        })
    }
}

impl ExecutorReply {
    /// The reply to an admitted `hello`: function `i` of the hello gets index `i`.
    pub fn new(hello: &ClientHello, workers: Vec<ExecutorWorker>) -> ExecutorReply {
        ExecutorReply {
            version: PROTOCOL_VERSION,
            functions: hello
                .functions
                .iter()
                .enumerate()
                .map(|(i, name)| FunctionEntry {
                    name: name.clone(),
                    index: i as u32,
                })
                .collect(),
            workers,
            memory: None,
        }
    }

    /// The client's check of a reply to `hello`: version, the function table (entry `i`
    /// names `hello.functions[i]` with index `i`), one worker per worker asked for, each on
    /// the fabric of the client's endpoint and with a request region large enough.
    /// Returns the slot geometry of the connections.
    ///
    /// # Errors
    /// [`HandshakeError`].
    pub fn check(&self, hello: &ClientHello) -> Result<SlotGeometry, HandshakeError> {
        check_version(self.version)?;
        let geometry = SlotGeometry::new(hello.slots, hello.slot_size)?;
        if self.functions.len() != hello.functions.len() {
            return Err(HandshakeError::FunctionTableMismatch {
                position: self.functions.len().min(hello.functions.len()),
                detail: format!(
                    "{} functions requested, {} in the reply",
                    hello.functions.len(),
                    self.functions.len()
                ),
            });
        }
        for (i, (entry, wanted)) in self.functions.iter().zip(&hello.functions).enumerate() {
            if entry.name != *wanted || entry.index as usize != i {
                return Err(HandshakeError::FunctionTableMismatch {
                    position: i,
                    detail: format!(
                        "expected {wanted:?} at index {i}, got {:?} at index {}",
                        entry.name, entry.index
                    ),
                });
            }
        }
        if self.workers.len() != hello.workers.len() {
            return Err(HandshakeError::WorkerCountMismatch {
                wanted: hello.workers.len(),
                got: self.workers.len(),
            });
        }
        for (i, (ours, theirs)) in hello.workers.iter().zip(&self.workers).enumerate() {
            check_fabric(i, ours.endpoint.kind(), &theirs.endpoint)?;
            check_region(i, "request", &theirs.request_region, geometry)?;
        }
        match (&hello.memory, &self.memory) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(HandshakeError::MemoryMismatch {
                    detail: "memory requested, none granted".into(),
                })
            }
            (None, Some(_)) => {
                return Err(HandshakeError::MemoryMismatch {
                    detail: "memory granted, none requested".into(),
                })
            }
            (Some(asked), Some(granted)) => {
                if granted.region.len < asked.len {
                    return Err(HandshakeError::MemoryMismatch {
                        detail: format!(
                            "{} B requested, a region of {} B granted",
                            asked.len, granted.region.len
                        ),
                    });
                }
                if !granted.access.contains(asked.access) {
                    return Err(HandshakeError::MemoryMismatch {
                        detail: format!(
                            "{} access requested, {} granted",
                            asked.access, granted.access
                        ),
                    });
                }
                if granted.endpoint.kind() != asked.endpoint.kind() {
                    return Err(HandshakeError::MemoryMismatch {
                        detail: format!(
                            "memory queue pair on fabric {}, but this side runs {}",
                            granted.endpoint.kind().name(),
                            asked.endpoint.kind().name()
                        ),
                    });
                }
            }
        }
        Ok(geometry)
    }

    /// The index of function `name`, if the table has it.
    pub fn function_index(&self, name: &str) -> Option<u32> {
        self.functions
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.index)
    }
}

impl ErrorMessage {
    /// The message that tells the peer about `error`.
    pub fn from_error(error: &HandshakeError) -> ErrorMessage {
        let kind = match error {
            HandshakeError::VersionMismatch { .. } => ErrorKind::VersionMismatch,
            HandshakeError::UnknownFunctions { .. } => ErrorKind::UnknownFunctions,
            HandshakeError::TooManyWorkers { .. } => ErrorKind::TooManyWorkers,
            HandshakeError::Refused { kind, .. } => *kind,
            _ => ErrorKind::BadRequest,
        };
        let unknown_functions = match error {
            HandshakeError::UnknownFunctions { names } => names.clone(),
            _ => Vec::new(),
        };
        ErrorMessage {
            version: PROTOCOL_VERSION,
            kind,
            message: error.to_string(),
            unknown_functions,
        }
    }

    /// The error a receiver of this message reports.
    pub fn into_error(self) -> HandshakeError {
        match self.kind {
            ErrorKind::VersionMismatch if self.version != PROTOCOL_VERSION => {
                HandshakeError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: self.version,
                }
            }
            ErrorKind::UnknownFunctions if !self.unknown_functions.is_empty() => {
                HandshakeError::UnknownFunctions {
                    names: self.unknown_functions,
                }
            }
            kind => HandshakeError::Refused {
                kind,
                message: self.message,
            },
        }
    }
}

/// The fields read before a full decode, so that a message of another version is
/// reported as a version mismatch even when its shape changed.
#[derive(Deserialize)]
struct Peek {
    #[serde(rename = "type")]
    kind: Option<String>,
    version: Option<u32>,
}

impl ControlMessage {
    /// The message type as it appears in the `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlMessage::Hello(_) => "hello",
            ControlMessage::Accept(_) => "accept",
            ControlMessage::Error(_) => "error",
            ControlMessage::Ready { .. } => "ready",
        }
    }

    /// One JSON line, newline included.
    pub fn to_line(&self) -> String {
        // Serializing these plain structs to a String cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Parses one line (a trailing newline is allowed). A hello or accept of another
    /// protocol version is reported as [`HandshakeError::VersionMismatch`]; error
    /// messages of any version are decoded.
    ///
    /// # Errors
    /// [`HandshakeError::LineTooLong`], [`HandshakeError::VersionMismatch`],
    /// [`HandshakeError::Decode`].
    pub fn from_line(line: &str) -> Result<ControlMessage, HandshakeError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() > MAX_CONTROL_LINE {
            return Err(HandshakeError::LineTooLong {
                len: line.len(),
                max: MAX_CONTROL_LINE,
            });
        }
        let decode = |e: serde_json::Error| HandshakeError::Decode {
            reason: e.to_string(),
        };
        let peek: Peek = serde_json::from_str(line).map_err(decode)?;
        if let (Some("hello" | "accept" | "ready"), Some(v)) = (peek.kind.as_deref(), peek.version)
        {
            check_version(v)?;
        }
        serde_json::from_str(line).map_err(decode)
    }

    /// The executor's reply to a hello, or the error it refused with.
    ///
    /// # Errors
    /// [`HandshakeError::Refused`] (or the typed error an [`ErrorMessage`] maps to) and
    /// [`HandshakeError::UnexpectedMessage`].
    pub fn into_reply(self) -> Result<ExecutorReply, HandshakeError> {
        match self {
            ControlMessage::Accept(reply) => Ok(reply),
            ControlMessage::Error(e) => Err(e.into_error()),
            other => Err(HandshakeError::UnexpectedMessage {
                expected: "accept",
                found: other.kind(),
            }),
        }
    }

    /// The executor's `ready` line, which ends a handshake.
    ///
    /// # Errors
    /// [`HandshakeError::Refused`] (or the typed error an [`ErrorMessage`] maps to) and
    /// [`HandshakeError::UnexpectedMessage`].
    pub fn into_ready(self) -> Result<(), HandshakeError> {
        match self {
            ControlMessage::Ready { .. } => Ok(()),
            ControlMessage::Error(e) => Err(e.into_error()),
            other => Err(HandshakeError::UnexpectedMessage {
                expected: "ready",
                found: other.kind(),
            }),
        }
    }

    /// The hello that opens a handshake.
    ///
    /// # Errors
    /// [`HandshakeError::UnexpectedMessage`].
    pub fn into_hello(self) -> Result<ClientHello, HandshakeError> {
        match self {
            ControlMessage::Hello(hello) => Ok(hello),
            other => Err(HandshakeError::UnexpectedMessage {
                expected: "hello",
                found: other.kind(),
            }),
        }
    }
}
