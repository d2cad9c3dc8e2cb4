//! Starting one executor process: `rafi executor` pinned to the lease's cores, with the
//! lease's GPUs visible and no others, through the sandbox prefix and the cgroup wrapper
//! when configured; then waiting for its `listening` line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Sender};

use crate::cluster::token::Claims;
use crate::executor::billing::BillingTarget;
use crate::fabric::{Endpoint, FabricKind};

use super::cgroup::ExecutorGroup;
use super::config::ManagerConfig;

/// What a supervisor of one allocation hears about.
#[derive(Debug)]
pub(crate) enum Event {
    /// The client's connection closed.
    ClientClosed,
    /// The executor's stdout closed: it is exiting.
    OutputClosed,
    /// Stop the executor, for this reason.
    End(String),
    /// The client sent `renew` with this token.
    Renew(String),
}

/// A started executor.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub child: Child,
    /// Where clients reach it.
    pub address: String,
    /// Its cgroup (removed after the process is reaped).
    pub group: Option<ExecutorGroup>,
    /// Its accountant's queue pair, when it bills (its `listening` line's `billing`).
    pub billing: Option<Endpoint>,
}

/// What an executor's `listening` line says.
#[derive(Debug, PartialEq)]
pub(crate) struct Listening {
    pub address: String,
    pub billing: Option<Endpoint>,
}

/// The argument vector of an executor for `claims`: `prefix` (sandbox, cgroup wrapper),
/// then `rafi executor …`.
pub(crate) fn argv(
    config: &ManagerConfig,
    claims: &Claims,
    hot: bool,
    prefix: &[String],
    billing: Option<&BillingTarget>,
) -> Vec<String> {
    let ip = config.executor_ip();
    let cores: Vec<String> = claims.cores.iter().map(usize::to_string).collect();
    let mut args = prefix.to_vec();
    args.push(config.executor_binary.display().to_string());
    args.extend([
        "executor".into(),
        "--fabric".into(),
        config.fabric.name().into(),
        "--listen".into(),
        SocketAddr::new(ip, 0).to_string(),
        "--cores".into(),
        cores.join(","),
        "--mode".into(),
        if hot { "hot" } else { "warm" }.into(),
        // The lease's memory is what its clients may lease as remote memory.
        "--max-memory".into(),
        format!("{}M", claims.memory_mib),
    ]);
    if config.fabric == FabricKind::Tcp {
        args.extend(["--tcp-listen".into(), SocketAddr::new(ip, 0).to_string()]);
    }
    if let Some(target) = billing {
        let json = serde_json::to_string(target).expect("a billing target serializes");
        args.extend(["--billing".into(), json]);
    }
    args.extend(config.executor_args.iter().cloned());
    args
}

/// Starts the executor of allocation `allocation` and waits (up to the spawn timeout) for
/// it to listen. `events` hears [`Event::OutputClosed`] when its stdout closes.
///
/// # Errors
/// A sentence saying why no executor listens (it is killed and reaped first).
#[allow(clippy::too_many_arguments)] // one call site, each argument a different thing
pub(crate) fn spawn(
    config: &ManagerConfig,
    claims: &Claims,
    hot: bool,
    allocation: u64,
    cgroup: Option<&Path>,
    advertised_host: &str,
    events: Sender<Event>,
    billing: Option<&BillingTarget>,
) -> Result<Spawned, String> {
    let group = match cgroup {
        Some(parent) => match ExecutorGroup::create(parent, allocation, claims.memory_mib) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!(
                    "rafi executor-manager: no cgroup for allocation {allocation} ({e}); \
                     running it without a memory limit"
                );
                None
            }
        },
        None => None,
    };
    let mut prefix = config.sandbox.clone();
    if let Some(g) = &group {
        prefix.extend(g.wrapper());
    }
    let args = argv(config, claims, hot, &prefix, billing);
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .env("CUDA_VISIBLE_DEVICES", claims.gpus.join(","))
        // A billed executor ends (after a last flush) when its stdin closes.
        .stdin(if billing.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args[0]))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (first, listening) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("rafi-exec-out-{allocation}"))
        .spawn(move || watch_output(stdout, first, events))
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let fail = |child: &mut Child, why: String| {
        let _ = child.kill();
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        format!("{why} ({status})")
    };
    let line = match listening.recv_timeout(config.spawn_timeout) {
        Ok(line) => line,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            return Err(fail(
                &mut child,
                format!(
                    "the executor did not listen within {:?}",
                    config.spawn_timeout
                ),
            ));
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            return Err(fail(
                &mut child,
                "the executor ended before it listened".into(),
            ));
        }
    };
    Ok(Spawned {
        child,
        address: reachable(&line.address, advertised_host),
        group,
        billing: line.billing,
    })
}

/// Reads the executor's stdout: passes on the address of its `listening` line, then
/// drains the rest and reports the end.
fn watch_output(stdout: impl std::io::Read, first: Sender<Listening>, events: Sender<Event>) {
    let mut lines = BufReader::new(stdout).lines();
    let mut first = Some(first);
    while let Some(Ok(line)) = lines.next() {
        if let Some(tx) = first.take() {
            match listening(&line) {
                Some(l) => {
                    let _ = tx.send(l);
                }
                None => first = Some(tx),
            }
        }
    }
    let _ = events.send(Event::OutputClosed);
}

/// The address (and billing endpoint) of a `{"event":"listening","address":…}` line.
pub(crate) fn listening(line: &str) -> Option<Listening> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("event")?.as_str()? != "listening" {
        return None;
    }
    Some(Listening {
        address: v.get("address")?.as_str()?.to_string(),
        billing: v
            .get("billing")
            .and_then(|b| serde_json::from_value(b.clone()).ok()),
    })
}

/// An executor bound to an unspecified IP (0.0.0.0, ::) is reached at the manager's
/// advertised host.
pub(crate) fn reachable(address: &str, advertised_host: &str) -> String {
    match address.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            if advertised_host.contains(':') && !advertised_host.starts_with('[') {
                format!("[{advertised_host}]:{}", a.port())
            } else {
                format!("{advertised_host}:{}", a.port())
            }
        }
        _ => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let mut config = ManagerConfig::new("rm:1", "s");
        config.executor_binary = "/opt/rafi".into();
        config.fabric = FabricKind::Tcp;
        config.listen = "10.0.0.5:7800".parse().unwrap();
        config.executor_args = vec!["--accept-libraries".into()];
        let claims = Claims {
            lease: 1,
            node: 1,
            client: "c".into(),
            cores: vec![4, 6],
            memory_mib: 0,
            gpus: vec![],
            expires_at: 1,
            nonce: 1,
        };
        let args = argv(
            &config,
            &claims,
            true,
            &["systemd-run".into(), "--scope".into()],
            None,
        );
        assert_eq!(
            args.join(" "),
            "systemd-run --scope /opt/rafi executor --fabric tcp --listen 10.0.0.5:0 \
             --cores 4,6 --mode hot --max-memory 0M --tcp-listen 10.0.0.5:0 --accept-libraries"
        );
    }

    #[test]
    fn listening_lines_and_addresses() {
        let address = |line| listening(line).map(|l| l.address);
        assert_eq!(
            address(r#"{"event":"listening","address":"127.0.0.1:5","fabric":"shm"}"#),
            Some("127.0.0.1:5".into())
        );
        assert_eq!(address(r#"{"event":"other"}"#), None);
        assert_eq!(address("garbage"), None);
        let billed = listening(
            r#"{"event":"listening","address":"a:1","billing":{"backend":"verbs","lid":1,
               "qpn":2,"psn":3,"gid":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"mtu":5}}"#,
        )
        .unwrap();
        assert_eq!(billed.billing.map(|e| e.qpn()), Some(2));
        assert_eq!(
            listening(r#"{"event":"listening","address":"a:1","billing":null}"#)
                .unwrap()
                .billing,
            None
        );
        assert_eq!(reachable("0.0.0.0:9", "node7"), "node7:9");
        assert_eq!(reachable("[::]:9", "fe80::1"), "[fe80::1]:9");
        assert_eq!(reachable("10.1.1.1:9", "node7"), "10.1.1.1:9");
    }
}
