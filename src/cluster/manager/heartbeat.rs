//! Registration with the resource manager (retried with backoff while it is unreachable or
//! refuses) and the heartbeat loop: usage deltas and ended leases out, leases to end back.
//! A 404 means the resource manager no longer knows this node (it restarted without it or
//! marked it down and ended its leases): the manager stops its executors and registers
//! again.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::cluster::api::{Heartbeat, HeartbeatReply, NodeRegistered, NodeRegistration};
use crate::cluster::http::{self, CallError};
use crate::cluster::token;

use super::Shared;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `stop` fires (or its sender is dropped); then sends a last heartbeat.
pub(crate) fn run(shared: &Shared, stop: &Receiver<()>) {
    loop {
        let Some(registered) = register(shared, stop) else {
            return;
        };
        let node = registered.node;
        shared.set_node(Some(node));
        let mut interval = Duration::from_millis(registered.heartbeat_interval_ms.max(1));
        if let Some(mine) = shared.config.heartbeat {
            interval = interval.min(mine);
        }
        eprintln!("rafi executor-manager: registered as node {node}, heartbeat every {interval:?}");
        loop {
            let stopped = sleep(stop, interval);
            let heartbeat = shared.ledger().take_heartbeat(Instant::now());
            match send(shared, node, &heartbeat) {
                Ok(reply) => {
                    for lease in reply.end {
                        let contacts = shared.ledger().end_lease(lease, token::now_millis());
                        for c in contacts {
                            let _ = c.send(super::spawn::Event::End(
                                "the resource manager ended the lease".into(),
                            ));
                        }
                    }
                }
                Err(CallError::Refused { status: 404, .. }) if !stopped => {
                    eprintln!(
                        "rafi executor-manager: the resource manager does not know node \
                         {node} any more; stopping its executors and registering again"
                    );
                    shared.set_node(None);
                    shared.end_all("the resource manager no longer knows this node");
                    break;
                }
                Err(e) => {
                    if !stopped {
                        eprintln!("rafi executor-manager: heartbeat of node {node}: {e}");
                    }
                    shared.ledger().restore(heartbeat);
                }
            }
            if stopped {
                return;
            }
        }
    }
}

/// Registers, retrying with exponential backoff; `None` when stopped first.
fn register(shared: &Shared, stop: &Receiver<()>) -> Option<NodeRegistered> {
    let c = &shared.config;
    let registration = NodeRegistration {
        name: c.node_name.clone(),
        manager_address: shared.advertise.clone(),
        fabric: c.fabric,
        spare_cores: c.spare_cores.clone(),
        memory_mib: c.memory_mib,
        gpus: c.gpus.clone(),
    };
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u64;
    loop {
        match http::call::<_, NodeRegistered>(
            &c.resource_manager,
            "POST",
            "/v1/nodes",
            &c.secret,
            Some(&registration),
        ) {
            Ok(r) => return Some(r),
            Err(e) => {
                // The first failure, then one in ten: an absent resource manager is normal
                // while a cluster starts.
                if failures % 10 == 0 {
                    eprintln!(
                        "rafi executor-manager: registering with {}: {e}; retrying in {backoff:?}",
                        c.resource_manager
                    );
                }
                failures += 1;
            }
        }
        if sleep(stop, backoff) {
            return None;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn send(shared: &Shared, node: u64, heartbeat: &Heartbeat) -> Result<HeartbeatReply, CallError> {
    http::call(
        &shared.config.resource_manager,
        "POST",
        &format!("/v1/nodes/{node}/heartbeat"),
        &shared.config.secret,
        Some(heartbeat),
    )
}

/// Sleeps for `d`; true when told to stop.
fn sleep(stop: &Receiver<()>, d: Duration) -> bool {
    match stop.recv_timeout(d) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
        Err(RecvTimeoutError::Timeout) => false,
    }
}
