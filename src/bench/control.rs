//! The control channel of a two-process benchmark: the measuring process re-executes its
//! own binary as the peer and talks to it in JSON lines over the child's stdin and stdout.
//! The child's stderr is inherited, so its error messages reach the terminal as they are.
//!
//! ```text
//!  parent (measures)                          child (answers)
//!  PeerProcess::spawn(args) ── fork/exec ──▶  ControlChannel::stdio()
//!  send(setup)  ── stdin ──────────────────▶  recv()
//!  recv()       ◀───────────────── stdout ──  send(hello)
//!  …                                          …
//!  finish() (waits for its exit status)
//! ```

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Talking to the other process failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot start the peer process {exe}")]
    Spawn { exe: String, source: std::io::Error },
    #[error("the {peer} closed the control channel{}", status_suffix(.status))]
    Closed {
        peer: &'static str,
        /// The child's exit status, when the parent knows it.
        status: Option<ExitStatus>,
    },
    #[error("the {peer} exited during the run ({status})")]
    Exited {
        peer: &'static str,
        status: ExitStatus,
    },
    #[error("talking to the {peer} over the control channel")]
    Io {
        peer: &'static str,
        source: std::io::Error,
    },
    #[error("bad control message from the {peer} (line {line:?})")]
    Decode {
        peer: &'static str,
        line: String,
        source: serde_json::Error,
    },
    #[error("encoding a control message")]
    Encode(#[source] serde_json::Error),
    /// The peer finished with a failure status after the run.
    #[error("the peer process failed ({0}; see its message above)")]
    PeerFailed(ExitStatus),
}

fn status_suffix(status: &Option<ExitStatus>) -> String {
    match status {
        Some(s) => format!(" and exited ({s}; see its message above, if any)"),
        None => " (see its message above, if any)".into(),
    }
}

/// One end of a control channel: typed messages as JSON lines.
#[derive(Debug)]
pub struct ControlChannel<R, W> {
    reader: R,
    writer: W,
    /// Who is on the other end, for messages: "peer process" or "parent process".
    peer: &'static str,
    line: String,
}

impl ControlChannel<BufReader<std::io::Stdin>, std::io::Stdout> {
    /// The child's end: this process's stdin and stdout. Nothing else may print to stdout
    /// while it is in use.
    pub fn stdio() -> Self {
        Self::new(
            BufReader::new(std::io::stdin()),
            std::io::stdout(),
            "parent process",
        )
    }
}

impl<R: BufRead, W: Write> ControlChannel<R, W> {
    pub fn new(reader: R, writer: W, peer: &'static str) -> Self {
        Self {
            reader,
            writer,
            peer,
            line: String::new(),
        }
    }

    /// Sends one message.
    ///
    /// # Errors
    /// When it cannot be encoded or written (the other process is gone).
    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ControlError> {
        let mut line = serde_json::to_string(msg).map_err(ControlError::Encode)?;
        line.push('\n');
        let peer = self.peer;
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::BrokenPipe => ControlError::Closed { peer, status: None },
                _ => ControlError::Io { peer, source },
            })
    }

    /// Waits for the next message.
    ///
    /// # Errors
    /// [`ControlError::Closed`] at end of input, [`ControlError::Decode`] for a line that is
    /// not a `T`.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, ControlError> {
        let peer = self.peer;
        self.line.clear();
        let n = self
            .reader
            .read_line(&mut self.line)
            .map_err(|source| ControlError::Io { peer, source })?;
        if n == 0 {
            return Err(ControlError::Closed { peer, status: None });
        }
        serde_json::from_str(self.line.trim_end()).map_err(|source| ControlError::Decode {
            peer,
            line: self.line.trim_end().to_owned(),
            source,
        })
    }
}

/// The peer process as its parent sees it: this same executable started with other
/// arguments, its stdin and stdout the control channel. Killed (and reaped) if dropped
/// before [`Self::finish`].
#[derive(Debug)]
pub struct PeerProcess {
    child: Child,
    /// `None` once [`Self::finish`] closed it.
    channel: Option<ControlChannel<BufReader<ChildStdout>, ChildStdin>>,
    finished: bool,
}

impl PeerProcess {
    /// Starts this executable (`std::env::current_exe`) with `args`; it inherits the
    /// environment and stderr.
    ///
    /// # Errors
    /// When the executable cannot be found or started.
    pub fn spawn<I, S>(args: I) -> Result<Self, ControlError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let exe = std::env::current_exe().map_err(|source| ControlError::Spawn {
            exe: "(this executable)".into(),
            source,
        })?;
        Self::spawn_command(Command::new(&exe).args(args))
    }

    /// Starts `command` as the peer (its stdin and stdout become the channel).
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn spawn_command(command: &mut Command) -> Result<Self, ControlError> {
        let exe = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| ControlError::Spawn {
                exe: exe.clone(),
                source,
            })?;
        let pipes = child.stdin.take().zip(child.stdout.take());
        let Some((stdin, stdout)) = pipes else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ControlError::Spawn {
                exe,
                source: std::io::Error::other("the child has no stdin/stdout pipe"),
            });
        };
        Ok(Self {
            child,
            channel: Some(ControlChannel::new(
                BufReader::new(stdout),
                stdin,
                "peer process",
            )),
            finished: false,
        })
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends one message to the peer.
    ///
    /// # Errors
    /// As [`ControlChannel::send`]; a closed channel carries the exit status when known.
    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ControlError> {
        let result = match self.channel.as_mut() {
            Some(ch) => ch.send(msg),
            None => Err(ControlError::Closed {
                peer: "peer process",
                status: None,
            }),
        };
        result.map_err(|e| self.with_status(e))
    }

    /// Waits for the peer's next message.
    ///
    /// # Errors
    /// As [`ControlChannel::recv`]; a closed channel carries the exit status.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, ControlError> {
        let result = match self.channel.as_mut() {
            Some(ch) => ch.recv(),
            None => Err(ControlError::Closed {
                peer: "peer process",
                status: None,
            }),
        };
        result.map_err(|e| self.with_status(e))
    }

    /// Checks, without blocking, that the peer still runs (one `waitpid` system call: for
    /// the cold path of a waiting loop, not for every poll).
    ///
    /// # Errors
    /// [`ControlError::Exited`] once it has exited.
    pub fn check_alive(&mut self) -> Result<(), ControlError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(ControlError::Exited {
                peer: "peer process",
                status,
            }),
            Err(source) => Err(ControlError::Io {
                peer: "peer process",
                source,
            }),
        }
    }

    /// Closes the channel (the peer reads end of input) and waits for the peer to exit.
    ///
    /// # Errors
    /// When it exits with a failure status.
    pub fn finish(mut self) -> Result<(), ControlError> {
        self.finished = true;
        drop(self.channel.take());
        let status = self.child.wait().map_err(|source| ControlError::Io {
            peer: "peer process",
            source,
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(ControlError::PeerFailed(status))
        }
    }

    /// The peer's exit status if it exits within `timeout` (for explaining a failure: a
    /// peer that closed its channel or whose queue pair failed is usually exiting).
    pub fn exit_status_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => return None,
            }
        }
    }

    /// A closed channel gets the exit status: the peer is exiting, so wait for it briefly.
    fn with_status(&mut self, e: ControlError) -> ControlError {
        match e {
            ControlError::Closed { peer, status: None } => ControlError::Closed {
                peer,
                status: self.exit_status_within(Duration::from_secs(2)),
            },
            other => other,
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
