//! Test harness: connected pairs in one process, helpers to wait for completions, and
//! child processes that run a role of the same test binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use rdma_mock::*;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs each listed scenario (a `fn(Fabric)`) once per fabric, as tests `shm::NAME` and
/// `tcp::NAME`.
#[macro_export]
macro_rules! on_both_fabrics {
    ($($name:ident),* $(,)?) => {
        mod shm { $( #[test] fn $name() { super::$name(rdma_mock::Fabric::Shm) } )* }
        mod tcp { $( #[test] fn $name() { super::$name(rdma_mock::Fabric::Tcp) } )* }
    };
}

/// One end of a connection: its own device, domain, channel, queue and QP.
pub struct Side {
    pub dev: Device,
    pub pd: ProtectionDomain,
    pub channel: CompletionChannel,
    pub cq: CompletionQueue,
    pub qp: QueuePair,
}

impl Side {
    pub fn new(fabric: Fabric, config: QpConfig) -> Side {
        Side::on(DeviceConfig::new(fabric), config)
    }

    /// A side on a device with the given settings (for example a tcp listen address).
    pub fn on(device: DeviceConfig, config: QpConfig) -> Side {
        let dev = Device::open(device).expect("open device");
        let pd = dev.alloc_pd().expect("alloc pd");
        let channel = dev.create_channel().expect("channel");
        let cq = dev.create_cq(Some(&channel)).expect("cq");
        let qp = pd.create_qp(&cq, &cq, config).expect("qp");
        Side {
            dev,
            pd,
            channel,
            cq,
            qp,
        }
    }

    pub fn region(&self, len: usize) -> MemoryRegion {
        self.pd.register(len, Access::ALL).expect("register")
    }

    /// Waits for exactly one completion (panics after [`TIMEOUT`]).
    pub fn next_wc(&mut self) -> WorkCompletion {
        next_wc(&mut self.cq)
    }

    /// Asserts that no completion arrives for `quiet`.
    pub fn expect_no_wc(&mut self, quiet: Duration) {
        let mut wc = [WorkCompletion::default(); 1];
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            assert_eq!(
                self.cq.poll(&mut wc),
                0,
                "unexpected completion {:?}",
                wc[0]
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn post(&mut self, wr: SendWr<'_>) {
        self.qp.post_send(&wr).expect("post_send");
    }

    pub fn post_recv(&mut self, wr_id: u64, sgl: &[Sge]) {
        self.qp
            .post_recv(&RecvWr { wr_id, sgl })
            .expect("post_recv");
    }
}

pub fn next_wc(cq: &mut CompletionQueue) -> WorkCompletion {
    let mut wc = [WorkCompletion::default(); 1];
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if cq.poll(&mut wc) == 1 {
            return wc[0];
        }
        assert!(
            Instant::now() < deadline,
            "no completion within {TIMEOUT:?}"
        );
        std::thread::yield_now();
    }
}

/// Two sides connected to each other.
pub fn pair(fabric: Fabric) -> (Side, Side) {
    pair_with(fabric, QpConfig::default(), QpConfig::default())
}

pub fn pair_with(fabric: Fabric, a: QpConfig, b: QpConfig) -> (Side, Side) {
    let mut a = Side::new(fabric, a);
    let mut b = Side::new(fabric, b);
    let (ea, eb) = (a.qp.endpoint(), b.qp.endpoint());
    let t = std::thread::spawn(move || {
        b.qp.connect(&ea).expect("connect b");
        b
    });
    a.qp.connect(&eb).expect("connect a");
    let b = t.join().expect("connect thread");
    (a, b)
}

/// Spins until `f` holds (panics after [`TIMEOUT`]): for effects of unsignaled operations.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---- child processes ----------------------------------------------------------------------

/// Environment variable that makes a test binary run as a child with a role.
pub const ROLE_VAR: &str = "RDMA_MOCK_TEST_ROLE";
/// Lines of the child protocol start with this, so libtest's own output is skipped.
pub const LINE_TAG: &str = "@@ ";

/// A child process running `role` of this test binary (its `child_main` test).
pub struct Peer {
    pub child: Child,
    stdin: ChildStdin,
    /// Tagged lines from the child, read by a thread so that waiting can time out.
    lines: std::sync::mpsc::Receiver<String>,
}

impl Peer {
    pub fn spawn(role: &str, args: &[(&str, String)]) -> Peer {
        Peer::spawn_via(&[], role, args)
    }

    /// The same, started through `wrapper` (for example `ip netns exec NAME`).
    pub fn spawn_via(wrapper: &[&str], role: &str, args: &[(&str, String)]) -> Peer {
        Peer::spawn_with(wrapper, None, role, args)
    }

    /// The same, as user `uid` when given (the caller must be root).
    pub fn spawn_with(
        wrapper: &[&str],
        uid: Option<u32>,
        role: &str,
        args: &[(&str, String)],
    ) -> Peer {
        let exe = std::env::current_exe().expect("current exe");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        cmd.args([
            "child_main",
            "--exact",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(ROLE_VAR, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in args {
            cmd.env(k, v);
        }
        if let Some(uid) = uid {
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        }
        let mut child = cmd.spawn().expect("spawn child");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || forward_tagged_lines(stdout, tx));
        Peer {
            child,
            stdin,
            lines,
        }
    }

    /// The next tagged line from the child (panics after [`TIMEOUT`] or if it exited).
    pub fn recv(&mut self) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("child said nothing for {TIMEOUT:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("child exited before answering")
            }
        }
    }

    pub fn recv_json<T: serde::de::DeserializeOwned>(&mut self) -> T {
        let line = self.recv();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line from child '{line}': {e}"))
    }

    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write child stdin");
        self.stdin.flush().expect("flush child stdin");
    }

    pub fn send_json<T: serde::Serialize>(&mut self, value: &T) {
        let line = serde_json::to_string(value).expect("json");
        self.send(&line);
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_success(&mut self) {
        let status = self.child.wait().expect("wait child");
        assert!(status.success(), "child failed: {status}");
    }
}

fn forward_tagged_lines(mut stdout: BufReader<ChildStdout>, tx: std::sync::mpsc::Sender<String>) {
    let mut line = String::new();
    while matches!(stdout.read_line(&mut line), Ok(n) if n > 0) {
        // libtest may have printed "test child_main ... " on the same line first.
        if let Some(pos) = line.find(LINE_TAG) {
            if tx
                .send(line[pos + LINE_TAG.len()..].trim_end().to_string())
                .is_err()
            {
                return;
            }
        }
        line.clear();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Child side: print a tagged line.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{LINE_TAG}{line}").expect("stdout");
    out.flush().expect("flush");
}

pub fn say_json<T: serde::Serialize>(value: &T) {
    say(&serde_json::to_string(value).expect("json"));
}

/// Child side: read one line from the parent.
pub fn hear() -> String {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("stdin");
    line.trim_end().to_string()
}

pub fn hear_json<T: serde::de::DeserializeOwned>() -> T {
    let line = hear();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line from parent '{line}': {e}"))
}

pub fn fabric_from_env() -> Fabric {
    std::env::var("FABRIC")
        .expect("FABRIC")
        .parse()
        .expect("fabric name")
}

/// A region as described to a peer.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
pub struct RegionInfo {
    pub addr: u64,
    pub rkey: u32,
    pub len: usize,
}

impl RegionInfo {
    pub fn of(mr: &MemoryRegion) -> Self {
        RegionInfo {
            addr: mr.addr(),
            rkey: mr.rkey(),
            len: mr.len(),
        }
    }

    pub fn at(&self, offset: usize) -> RemoteAddr {
        RemoteAddr {
            addr: self.addr + offset as u64,
            rkey: self.rkey,
        }
    }
}
