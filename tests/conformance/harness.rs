//! What every conformance test needs, generic over the backend: opening the device (or
//! skipping verbs where there is none), connected queue pairs within one process, regions,
//! and waits for completions that give up with a clear message instead of hanging.

use std::time::{Duration, Instant};

use rafi::fabric::{
    Access, CompletionQueue, Fabric, FabricConfig, FabricKind, FabricUser, ProtectionDomain,
    QpConfig, QueuePair, RecvWr, SendWr, Sge, WorkCompletion,
};

/// How long any wait of the suite lasts before the test fails. Generous: nothing in the
/// suite needs more than a fraction of it, except a dead peer on verbs (the transport's
/// retry timeout).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Completions a test's queue holds at most (verbs sizes its queues; the mock ones grow).
const CQ_CAPACITY: u32 = 4096;

/// Opens the `kind` device and runs `test` on it. A verbs device that cannot be opened
/// skips the test, unless the environment says verbs must be there (see
/// [`verbs_required`]).
pub fn run<U: FabricUser<Output = ()>>(kind: FabricKind, test: U) {
    let config = FabricConfig::new(kind);
    let checked = Checked { test };
    if let Err(e) = rafi::fabric::open(&config, checked) {
        #[cfg(feature = "verbs")]
        if kind == FabricKind::Verbs && !verbs_required() {
            println!("skipped: no verbs device ({e}); set RAFI_REQUIRE_VERBS=1 to fail instead");
            return;
        }
        panic!("cannot open the {kind} fabric: {e}");
    }
}

/// Runs the test after checking that the device is the one the environment asks for.
struct Checked<U> {
    test: U,
}

impl<U: FabricUser<Output = ()>> FabricUser for Checked<U> {
    type Output = ();
    fn run<F: Fabric>(self, fabric: F) {
        #[cfg(feature = "verbs")]
        if fabric.kind() == FabricKind::Verbs {
            check_rxe_vm(&fabric);
        }
        self.test.run(fabric)
    }
}

/// Whether a missing verbs device fails the verbs tests instead of skipping them: inside
/// the soft-RoCE VM (`RAFI_RXE_VM`, set by scripts/rxe-vm.sh) and wherever
/// `RAFI_REQUIRE_VERBS` is set.
#[cfg(feature = "verbs")]
fn verbs_required() -> bool {
    ["RAFI_RXE_VM", "RAFI_REQUIRE_VERBS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// Inside the soft-RoCE VM the suite must prove it ran on soft-RoCE: the device the verbs
/// backend opened is `rxe0`, not whichever device happened to be listed first.
#[cfg(feature = "verbs")]
fn check_rxe_vm<F: Fabric>(fabric: &F) {
    if std::env::var_os("RAFI_RXE_VM").is_none() {
        return;
    }
    assert_eq!(
        fabric.device_name(),
        "rxe0",
        "RAFI_RXE_VM is set, so the verbs tests must run on rxe0 (RAFI_RDMA_DEVICE={:?})",
        std::env::var("RAFI_RDMA_DEVICE").ok()
    );
}

/// Whether `fabric` is one of rdma-mock's fabrics, for the few checks of behaviour that
/// rdma-mock promises beyond what verbs does (each use says why).
pub fn is_mock<F: Fabric>(fabric: &F) -> bool {
    matches!(fabric.kind(), FabricKind::Shm | FabricKind::Tcp)
}

/// One end of a connection: a protection domain, a completion queue (for sends and
/// receives) with its channel, and a queue pair. Fields drop in order: the queue pair
/// before what it uses.
pub struct Side<F: Fabric> {
    pub qp: F::Qp,
    pub cq: F::Cq,
    pub channel: F::Channel,
    pub pd: F::Pd,
    pub fabric: F,
}

impl<F: Fabric> Side<F> {
    /// A side with its own protection domain.
    pub fn new(fabric: &F, config: QpConfig) -> Self {
        Self::in_pd(fabric, fabric.alloc_pd().expect("alloc pd"), config)
    }

    /// A side in an existing protection domain (several queue pairs to one region).
    pub fn in_pd(fabric: &F, pd: F::Pd, config: QpConfig) -> Self {
        let channel = fabric.create_channel().expect("create channel");
        let cq = fabric
            .create_cq(CQ_CAPACITY, Some(&channel))
            .expect("create cq");
        let qp = pd.create_qp(&cq, &cq, config).expect("create qp");
        Side {
            qp,
            cq,
            channel,
            pd,
            fabric: fabric.clone(),
        }
    }

    /// A region with every access right.
    pub fn region(&self, len: usize) -> F::Mr {
        self.pd.register(len, Access::ALL).expect("register")
    }

    /// Waits for exactly one completion.
    pub fn next_wc(&mut self) -> WorkCompletion {
        next_wc(&mut self.cq)
    }

    /// Asserts that no completion arrives for `quiet` (a check of absence, not a wait for
    /// something to happen).
    pub fn expect_no_wc(&mut self, quiet: Duration) {
        let mut wc = [WorkCompletion::default(); 1];
        let until = Instant::now() + quiet;
        while Instant::now() < until {
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

/// Polls until one completion arrives; panics after [`TIMEOUT`].
pub fn next_wc<C: CompletionQueue>(cq: &mut C) -> WorkCompletion {
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

/// Two sides connected to each other, with default settings.
pub fn pair<F: Fabric>(fabric: &F) -> (Side<F>, Side<F>) {
    pair_with(fabric, QpConfig::default(), QpConfig::default())
}

/// Two sides, each in its own protection domain, connected to each other.
pub fn pair_with<F: Fabric>(fabric: &F, a: QpConfig, b: QpConfig) -> (Side<F>, Side<F>) {
    let mut a = Side::new(fabric, a);
    let b = Side::new(fabric, b);
    let b = connect(&mut a, b);
    (a, b)
}

/// Connects `a` and `b`, each from its own thread: the mock fabrics' `connect` returns only
/// once the peer's has been called, verbs' does not wait.
pub fn connect<F: Fabric>(a: &mut Side<F>, mut b: Side<F>) -> Side<F> {
    let (ea, eb) = (a.qp.endpoint(), b.qp.endpoint());
    let t = std::thread::spawn(move || {
        b.qp.connect(&ea).expect("connect b");
        b
    });
    a.qp.connect(&eb).expect("connect a");
    t.join().expect("connect thread")
}

/// Spins until `f` holds; panics after [`TIMEOUT`] (for effects of unsignaled requests).
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// Recognisable bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Posts `op` and checks that it fails with `status`, that the queue pair is then in the
/// error state, and that a request posted after it is flushed.
pub fn expect_failure<F: Fabric>(
    a: &mut Side<F>,
    op: rafi::fabric::SendOp,
    sgl: &[Sge],
    status: rafi::fabric::WcStatus,
) {
    a.post(SendWr::new(50, op, sgl));
    let wc = a.next_wc();
    assert_eq!((wc.wr_id, wc.status), (50, status), "{op:?}");
    assert_eq!(a.qp.state(), rafi::fabric::QpState::Error);
    a.post(SendWr::inline(51, rafi::fabric::SendOp::Send, b"after"));
    let wc = a.next_wc();
    assert_eq!(
        (wc.wr_id, wc.status),
        (51, rafi::fabric::WcStatus::WrFlushError)
    );
}

/// Checks the byte count of a send-side completion. Verbs defines `byte_len` for receive
/// completions only (providers differ on the rest: rxe reports every length, mlx5 only
/// READ and atomics), so only rdma-mock, which reports it for every request, is held to it.
pub fn assert_send_byte_len<F: Fabric>(fabric: &F, wc: &WorkCompletion, len: u32) {
    if is_mock(fabric) {
        assert_eq!(wc.byte_len, len, "byte_len of {wc:?}");
    }
}
