//! One client's allocation, from its hello to its disconnect: admit it, create a link per
//! worker it asked for, answer, connect, hand the links to the workers, and tear them down
//! when the control connection closes.

use std::io::BufReader;
use std::net::TcpStream;
use std::sync::Arc;

use crate::control::{read_message, write_message, ControlError};
use crate::fabric::{CompletionQueue, Fabric, FabricKind};
use crate::protocol::{
    ControlMessage, ErrorKind, ErrorMessage, ExecutorReply, ExecutorWorker, HandshakeError,
    PROTOCOL_VERSION,
};

use super::catalog::{Catalog, Target};
use super::link::{ExecutorLink, LinkPlan};
use super::memory::MemoryLease;
use super::placement::Claim;
use super::worker::Command;
use super::Shared;
use crate::function::{FunctionLibrary, FunctionTable};

/// How long a client may take to send its hello and libraries.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves one control connection until the client leaves.
pub(crate) fn run<F: Fabric, C: Catalog>(
    shared: Arc<Shared<F, C>>,
    stream: TcpStream,
    client: u64,
) {
    let _ = stream.set_nodelay(true);
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    if let Ok(handle) = stream.try_clone() {
        shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client, handle);
    }
    serve(&shared, stream, write_half, client, &peer);
    shared
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&client);
}

fn serve<F: Fabric, C: Catalog>(
    shared: &Arc<Shared<F, C>>,
    stream: TcpStream,
    write_half: TcpStream,
    client: u64,
    peer: &str,
) {
    let mut writer = write_half;
    // A client that connects and then says nothing must not hold this thread forever.
    let _ = writer.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let mut reader = BufReader::new(stream);
    let admitted = admit(shared, &mut reader, &mut writer, client);
    let _ = writer.set_read_timeout(None);
    // `_memory` (the leased region, if any) and the claim on the workers live until the
    // control connection closes.
    let (claim, _memory) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            if !matches!(e, SessionError::Control(ControlError::Closed)) {
                eprintln!("rafi executor: allocation from {peer} refused: {e}");
            }
            let _ = write_message(&mut writer, &ControlMessage::Error(e.to_message()));
            return;
        }
    };
    // The allocation lives as long as the control connection: wait for it to close.
    // Nothing is defined after `ready` yet: any line is ignored, the end ends it.
    while read_message(&mut reader).is_ok() {}
    for &w in claim.workers() {
        shared.workers[w].send(Command::Remove(client));
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("{0}")]
    Unavailable(String),
}

impl SessionError {
    fn to_message(&self) -> ErrorMessage {
        match self {
            SessionError::Handshake(e) | SessionError::Control(ControlError::Protocol(e)) => {
                ErrorMessage::from_error(e)
            }
            other => ErrorMessage {
                version: PROTOCOL_VERSION,
                kind: ErrorKind::Unavailable,
                message: other.to_string(),
                unknown_functions: Vec::new(),
            },
        }
    }
}

/// The handshake; returns the workers that now serve this client and its leased memory.
#[allow(clippy::type_complexity)]
fn admit<'s, F: Fabric, C: Catalog>(
    shared: &'s Shared<F, C>,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    client: u64,
) -> Result<(Claim<'s>, Option<MemoryLease<F>>), SessionError> {
    let hello = read_message(reader)?.into_hello()?;
    let shipped = receive_libraries(shared, &hello, reader)?;
    let admission = hello.admit(shared.fabric.kind(), shared.workers.len() as u32, |name| {
        let in_shipped = shipped
            .as_ref()
            .and_then(|t| t.id(name))
            .map(Target::Shipped);
        in_shipped.or_else(|| shared.catalog.resolve(name).map(Target::Catalog))
    })?;
    let shipped = shipped.map(Arc::new);
    if !shared.config.allows(admission.geometry) {
        return Err(SessionError::Unavailable(format!(
            "{} slots of {} B exceed this executor's limit of {} slots of {} B",
            admission.geometry.slots(),
            admission.geometry.slot_size(),
            shared.config.max_slots,
            shared.config.max_slot_size
        )));
    }
    let mut memory = match &hello.memory {
        None => None,
        Some(request) => {
            let limit = shared.config.max_memory;
            let reservation = shared.memory.reserve(request.len, limit).ok_or_else(|| {
                SessionError::Unavailable(format!(
                    "{} B of memory requested, but this executor leases at most {} B and \
                     {} B are in use (`rafi executor --max-memory` sets the limit)",
                    request.len,
                    limit,
                    shared.memory.in_use()
                ))
            })?;
            let lease = MemoryLease::create(&shared.fabric, request, reservation).map_err(|e| {
                SessionError::Unavailable(format!(
                    "cannot register {} B of memory: {e}",
                    request.len
                ))
            })?;
            Some(lease)
        }
    };
    let functions: Arc<[Target]> = admission.functions.into();
    let private_inputs = shared.config.private_inputs.unwrap_or(matches!(
        shared.fabric.kind(),
        FabricKind::Tcp | FabricKind::Verbs
    ));
    // The least loaded workers; equally loaded ones take turns by client (placement.rs).
    let claim = shared.loads.claim(hello.workers.len(), client as usize);
    let assigned = claim.workers();
    let plan = LinkPlan {
        client,
        geometry: admission.geometry,
        functions,
        shipped,
        private_inputs,
    };
    let mut links = Vec::with_capacity(hello.workers.len());
    for &w in assigned {
        let link = ExecutorLink::create(
            &shared.fabric,
            &shared.pd,
            &shared.workers[w].channel,
            &plan,
        )
        .map_err(|e| SessionError::Unavailable(format!("worker {w}: {e}")))?;
        links.push(link);
    }
    let described = links
        .iter()
        .map(|l| ExecutorWorker {
            endpoint: l.endpoint(),
            request_region: l.request_region(),
        })
        .collect();
    let mut reply = ExecutorReply::new(&hello, described);
    reply.memory = memory.as_ref().map(MemoryLease::grant);
    write_message(writer, &ControlMessage::Accept(reply)).map_err(ControlError::Io)?;
    if let (Some(lease), Some(request)) = (memory.as_mut(), hello.memory.as_ref()) {
        lease
            .connect(&request.endpoint)
            .map_err(|e| SessionError::Unavailable(format!("connecting memory: {e}")))?;
    }
    for (link, theirs) in links.iter_mut().zip(&hello.workers) {
        link.connect(&theirs.endpoint, theirs.response_region)
            .map_err(|e| SessionError::Unavailable(format!("connecting: {e}")))?;
    }
    for (&w, mut link) in assigned.iter().zip(links) {
        // Armed before the hand-over: a worker asleep on its channel wakes on this link's
        // first request even before it has looked at its inbox.
        link.slots.cq.arm();
        shared.workers[w].send(Command::Add(Box::new(link)));
    }
    write_message(
        writer,
        &ControlMessage::Ready {
            version: PROTOCOL_VERSION,
        },
    )
    .map_err(ControlError::Io)?;
    Ok((claim, memory))
}

/// The most bytes of refused libraries read (and dropped) before the refusal is sent.
const MAX_DRAIN: u64 = 1 << 30;

/// Reads the libraries the hello announces (their bytes follow it) and loads them into a
/// table of this allocation's own; `None` when none were shipped.
fn receive_libraries<F: Fabric, C: Catalog>(
    shared: &Shared<F, C>,
    hello: &crate::protocol::ClientHello,
    reader: &mut BufReader<TcpStream>,
) -> Result<Option<FunctionTable>, SessionError> {
    if hello.libraries.is_empty() {
        return Ok(None);
    }
    let refusal = if !shared.config.accept_libraries {
        Some(
            "this executor does not accept shipped function libraries (it runs with \
             accept_libraries off; `rafi executor --accept-libraries` turns it on)"
                .to_string(),
        )
    } else {
        hello
            .libraries
            .iter()
            .find(|l| l.len > shared.config.max_library_len)
            .map(|l| {
                format!(
                    "shipped library {} is {} bytes, more than this executor's limit of {}",
                    l.name, l.len, shared.config.max_library_len
                )
            })
    };
    if let Some(refusal) = refusal {
        // Read what the client is sending before answering: closing a socket with unread
        // data resets it, and the client could lose the answer that says why.
        let total: u64 = hello.libraries.iter().map(|l| l.len).sum();
        let _ = std::io::copy(
            &mut std::io::Read::take(&mut *reader, total.min(MAX_DRAIN)),
            &mut std::io::sink(),
        );
        return Err(SessionError::Unavailable(refusal));
    }
    let mut table = FunctionTable::new();
    for library in &hello.libraries {
        let mut bytes = vec![0u8; library.len as usize];
        std::io::Read::read_exact(reader, &mut bytes).map_err(ControlError::Io)?;
        let loaded = FunctionLibrary::from_bytes(&library.name, &bytes)
            .map_err(|e| SessionError::Unavailable(format!("shipped library: {e}")))?;
        table
            .add_library(loaded)
            .map_err(|e| SessionError::Unavailable(format!("shipped library: {e}")))?;
    }
    Ok(Some(table))
}
