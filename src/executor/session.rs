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

use super::catalog::Catalog;
use super::link::ExecutorLink;
use super::worker::Command;
use super::Shared;

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
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    let workers = match admit(&shared, &mut reader, &mut writer, client) {
        Ok(workers) => workers,
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
    for w in workers {
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

/// The handshake; returns the workers that now serve this client.
fn admit<F: Fabric, C: Catalog>(
    shared: &Shared<F, C>,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    client: u64,
) -> Result<Vec<usize>, SessionError> {
    let hello = read_message(reader)?.into_hello()?;
    let admission = hello.admit(shared.fabric.kind(), shared.workers.len() as u32, |name| {
        shared.catalog.resolve(name)
    })?;
    if !shared.config.allows(admission.geometry) {
        return Err(SessionError::Unavailable(format!(
            "{} slots of {} B exceed this executor's limit of {} slots of {} B",
            admission.geometry.slots(),
            admission.geometry.slot_size(),
            shared.config.max_slots,
            shared.config.max_slot_size
        )));
    }
    let functions: Arc<[u32]> = admission.functions.into();
    let private_inputs = shared.config.private_inputs.unwrap_or(matches!(
        shared.fabric.kind(),
        FabricKind::Tcp | FabricKind::Verbs
    ));
    // Clients take turns at which worker serves their first connection, so that
    // single-worker allocations spread over the workers.
    let n = shared.workers.len();
    let assigned: Vec<usize> = (0..hello.workers.len())
        .map(|i| (client as usize + i) % n)
        .collect();
    let mut links = Vec::with_capacity(hello.workers.len());
    for &w in &assigned {
        let link = ExecutorLink::create(
            &shared.fabric,
            &shared.pd,
            &shared.workers[w].channel,
            client,
            admission.geometry,
            functions.clone(),
            private_inputs,
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
    write_message(
        writer,
        &ControlMessage::Accept(ExecutorReply::new(&hello, described)),
    )
    .map_err(ControlError::Io)?;
    for (link, theirs) in links.iter_mut().zip(&hello.workers) {
        link.connect(&theirs.endpoint, theirs.response_region)
            .map_err(|e| SessionError::Unavailable(format!("connecting: {e}")))?;
    }
    for (&w, mut link) in assigned.iter().zip(links) {
        // Armed before the hand-over: a worker asleep on its channel wakes on this link's
        // first request even before it has looked at its inbox.
        link.cq.arm();
        shared.workers[w].send(Command::Add(Box::new(link)));
    }
    write_message(
        writer,
        &ControlMessage::Ready {
            version: PROTOCOL_VERSION,
        },
    )
    .map_err(ControlError::Io)?;
    Ok(assigned)
}
