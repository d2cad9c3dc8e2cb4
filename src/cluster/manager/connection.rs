//! One client connection of the allocation service: read `allocate`, check the token,
//! start the executor, answer `allocated`, then supervise the executor until it exits, the
//! client leaves, the lease expires or someone ends it, and tell the client why it ended.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::cluster::api::ManagerMessage;
use crate::cluster::token::{self, Claims};

use super::billing::Station;
use super::spawn::{self, Event, Spawned};
use super::{AllocateError, Shared};

/// How long a client may take to send its `allocate` line.
const FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest line read from a client.
const MAX_LINE: u64 = 64 << 10;
/// How often the supervisor looks at the process and the clock without an event.
const POLL: Duration = Duration::from_millis(50);

/// Serves one connection until its executor ends (or the allocation is refused).
pub(crate) fn serve(shared: &Shared, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_read_timeout(Some(FIRST_LINE_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    let mut line = String::new();
    match (&mut reader).take(MAX_LINE).read_line(&mut line) {
        Ok(0) => return,
        Ok(_) => {}
        Err(e) => {
            let _ = send(
                &mut writer,
                &refusal(&AllocateError::BadRequest(format!("no allocate line: {e}"))),
            );
            return;
        }
    }
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let Admitted {
        id,
        claims,
        mut spawned,
        station: _station,
    } = match allocate(shared, &line, tx.clone()) {
        Ok(a) => a,
        Err(e) => {
            if shared.stopping() {
                // Quietly: a refusal during shutdown is expected.
            } else {
                eprintln!("rafi executor-manager: allocation from {peer} refused: {e}");
            }
            let _ = send(&mut writer, &refusal(&e));
            return;
        }
    };
    let allocated = ManagerMessage::Allocated {
        executor: spawned.address.clone(),
        cores: claims.cores.clone(),
        spawn_ns: started.elapsed().as_nanos() as u64,
    };
    eprintln!(
        "rafi executor-manager: lease {} of {:?} (from {peer}): executor {} on cores {:?}",
        claims.lease, claims.client, spawned.address, claims.cores
    );
    let client_gone = send(&mut writer, &allocated).is_err();
    if client_gone {
        let _ = tx.send(Event::ClientClosed);
    } else {
        let _ = reader.get_ref().set_read_timeout(None);
        let lease = claims.lease;
        let tx = tx.clone();
        let _ = std::thread::Builder::new()
            .name(format!("rafi-manager-client-{id}"))
            .spawn(move || watch_client(reader, lease, tx));
    }
    drop(tx);
    let end = {
        let mut renew = |token: &str| {
            let answer = match renew(shared, id, claims.lease, token) {
                Ok(expires_at) => ManagerMessage::Renewed { expires_at },
                Err(e) => {
                    eprintln!(
                        "rafi executor-manager: lease {}: renewal refused: {e}",
                        claims.lease
                    );
                    refusal(&e)
                }
            };
            let _ = send(&mut writer, &answer);
            match answer {
                ManagerMessage::Renewed { expires_at } => Some(expires_at),
                _ => None,
            }
        };
        supervise(&mut spawned.child, &rx, claims.expires_at, &mut renew)
    };
    let status = match end {
        End::Exited(status) => Some(status),
        End::ClientClosed | End::Stop(_) => stop(&mut spawned.child),
    };
    shared.ledger().finish(id, Instant::now());
    drop(spawned.group.take());
    let reason = match &end {
        End::Exited(status) => format!("the executor exited ({status})"),
        End::ClientClosed => "the client closed the connection".to_string(),
        End::Stop(reason) => reason.clone(),
    };
    eprintln!(
        "rafi executor-manager: lease {} executor ended: {reason}{}",
        claims.lease,
        status
            .filter(|_| !matches!(end, End::Exited(_)))
            .map(|s| format!(" (stopped: {s})"))
            .unwrap_or_default()
    );
    if !matches!(end, End::ClientClosed) {
        let _ = send(&mut writer, &ManagerMessage::ExecutorEnded { reason });
    }
    // Ends the client watcher's read.
    let _ = writer.shutdown(Shutdown::Both);
}

/// How long a billed executor may take to flush and exit once its stdin is closed.
const GRACE: Duration = Duration::from_millis(500);

/// Stops the executor: a billed one (its stdin is piped) is asked first by closing its
/// stdin, so that it bills its last moments; killed when it does not exit in time.
fn stop(child: &mut Child) -> Option<ExitStatus> {
    if child.stdin.take().is_some() {
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => break,
            }
        }
    }
    let _ = child.kill();
    child.wait().ok()
}

/// An allocation whose executor listens.
struct Admitted {
    /// The ledger's id of it.
    id: u64,
    claims: Claims,
    spawned: Spawned,
    /// Its billing counters and queue pair (kept until the executor is gone).
    station: Option<Box<dyn Station>>,
}

/// Checks a `renew` token for allocation `id` of `lease`; its new expiry.
fn renew(shared: &Shared, id: u64, lease: u64, token: &str) -> Result<u64, AllocateError> {
    let node = shared.node().ok_or(AllocateError::NotRegistered)?;
    let now = token::now_millis();
    let claims = token::verify(shared.config.secret.as_bytes(), token, node, now)?;
    if claims.lease != lease {
        return Err(AllocateError::BadRequest(format!(
            "the token is for lease {}, this connection's executor runs lease {lease}",
            claims.lease
        )));
    }
    shared.ledger().renew(id, &claims, now)?;
    Ok(claims.expires_at)
}

/// Checks the `allocate` line and starts its executor (with its billing station, when the
/// manager bills through the fabric).
fn allocate(shared: &Shared, line: &str, events: Sender<Event>) -> Result<Admitted, AllocateError> {
    let (token, mode) = match serde_json::from_str::<ManagerMessage>(line.trim()) {
        Ok(ManagerMessage::Allocate { token, mode }) => (token, mode),
        Ok(_) => {
            return Err(AllocateError::BadRequest(
                "the first line must be an allocate message".into(),
            ))
        }
        Err(e) => {
            return Err(AllocateError::BadRequest(format!(
                "not a manager message: {e}"
            )))
        }
    };
    let hot = match mode.as_deref() {
        None | Some("warm") => false,
        Some("hot") => true,
        Some(other) => {
            return Err(AllocateError::BadRequest(format!(
                "mode {other:?} (expected hot or warm)"
            )))
        }
    };
    let node = shared.node().ok_or(AllocateError::NotRegistered)?;
    let now = token::now_millis();
    let claims = token::verify(shared.config.secret.as_bytes(), &token, node, now)?;
    let id = admit_when_free(shared, &claims, hot, &events, now)?;
    if shared.stopping() {
        shared.ledger().abandon(id, claims.nonce);
        return Err(AllocateError::Spawn(
            "the executor manager is shutting down".into(),
        ));
    }
    let mut station = shared.billing.as_ref().and_then(|b| match b.station() {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!(
                "rafi executor-manager: lease {}: no billing counters ({e}); billing its \
                 wall time",
                claims.lease
            );
            None
        }
    });
    let target = station.as_ref().map(|s| s.target());
    match spawn::spawn(
        &shared.config,
        &claims,
        hot,
        id,
        shared.cgroup.as_deref(),
        shared.advertised_host(),
        events,
        target.as_ref(),
    ) {
        Ok(mut spawned) => {
            let meter = match (&mut station, spawned.billing.take()) {
                (Some(s), Some(executor)) => match s.connect(&executor) {
                    Ok(()) => Some(s.meter()),
                    Err(e) => {
                        eprintln!(
                            "rafi executor-manager: lease {}: cannot connect the billing \
                             queue pair ({e}); billing its wall time",
                            claims.lease
                        );
                        None
                    }
                },
                (Some(_), None) => {
                    eprintln!(
                        "rafi executor-manager: lease {}: the executor announced no billing \
                         endpoint; billing its wall time",
                        claims.lease
                    );
                    None
                }
                (None, _) => None,
            };
            shared
                .ledger()
                .started(id, spawned.child.id(), Instant::now(), meter);
            Ok(Admitted {
                id,
                claims,
                spawned,
                station,
            })
        }
        Err(why) => {
            shared.ledger().abandon(id, claims.nonce);
            Err(AllocateError::Spawn(why))
        }
    }
}

/// Why supervision ended.
enum End {
    Exited(ExitStatus),
    ClientClosed,
    Stop(String),
}

/// Waits for the executor to exit, the client to leave, the lease to expire or an end;
/// `renew` answers a renewal and returns the new expiry when it is granted.
/// How long an allocation waits for cores (or GPUs) an ending executor still holds: the
/// resource manager grants a released or expired lease's cores at once, while the
/// executor that had them may take some milliseconds more to exit and be reaped.
const BUSY_GRACE: Duration = Duration::from_secs(2);

/// Admits `claims`, waiting up to [`BUSY_GRACE`] while its cores or GPUs are still held by
/// an executor on its way out.
fn admit_when_free(
    shared: &Shared,
    claims: &Claims,
    hot: bool,
    events: &Sender<Event>,
    now: u64,
) -> Result<u64, AllocateError> {
    let deadline = Instant::now() + BUSY_GRACE;
    loop {
        // Bound first: the ledger's lock must not be held while this waits.
        let admitted = shared.ledger().admit(claims, hot, events.clone(), now);
        match admitted {
            Err(AllocateError::BusyCores { .. } | AllocateError::BusyGpus { .. })
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn supervise(
    child: &mut Child,
    events: &Receiver<Event>,
    mut expires_at: u64,
    renew: &mut dyn FnMut(&str) -> Option<u64>,
) -> End {
    let mut poll = POLL;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return End::Exited(status),
            Ok(None) => {}
            Err(e) => return End::Stop(format!("cannot watch the executor: {e}")),
        }
        let now = token::now_millis();
        if now >= expires_at {
            return End::Stop("the lease expired".into());
        }
        match events.recv_timeout(poll.min(Duration::from_millis(expires_at - now))) {
            Ok(Event::ClientClosed) => return End::ClientClosed,
            // It is exiting: look at it often until it is gone.
            Ok(Event::OutputClosed) => poll = Duration::from_millis(1),
            Ok(Event::End(reason)) => return End::Stop(reason),
            Ok(Event::Renew(token)) => {
                if let Some(e) = renew(&token) {
                    expires_at = e;
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
    }
}

/// Reads the client's connection until it closes, passing `renew` lines on.
fn watch_client(mut reader: BufReader<TcpStream>, lease: u64, events: Sender<Event>) {
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => match serde_json::from_str::<ManagerMessage>(line.trim()) {
                Ok(ManagerMessage::Renew { token }) => {
                    if events.send(Event::Renew(token)).is_err() {
                        return;
                    }
                }
                _ => eprintln!(
                    "rafi executor-manager: lease {lease}: ignoring a line from the client: {}",
                    line.trim()
                ),
            },
        }
    }
    let _ = events.send(Event::ClientClosed);
}

fn refusal(e: &AllocateError) -> ManagerMessage {
    ManagerMessage::Error {
        kind: e.kind().into(),
        message: e.to_string(),
    }
}

fn send(writer: &mut TcpStream, message: &ManagerMessage) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line)?;
    writer.flush()
}
