//! Leased remote memory end to end: a real executor (its session threads register the
//! memory) and real clients (`RemoteMemory`) over every backend. Each test is written once,
//! generic over the fabric, and instantiated per backend (`cargo test --test remote_memory
//! shm::`; verbs in the soft-RoCE guest: `scripts/test.sh`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rafi::client::{AllocateError, MemoryError, MemoryOptions, RemoteMemory};
use rafi::executor::{Catalog, Executor, ExecutorConfig, Outcome};
use rafi::fabric::{Fabric, FabricKind, WcStatus};
use rafi::protocol::{HandshakeError, MemoryAccess};
use rdma_mock::alloc_counter::{allocations, CountingAllocator};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn open_shm() -> rdma_mock::Device {
    rdma_mock::Device::open(rdma_mock::DeviceConfig::new(rdma_mock::Fabric::Shm)).expect("shm")
}

fn open_tcp() -> rdma_mock::Device {
    rdma_mock::Device::open(rdma_mock::DeviceConfig::new(rdma_mock::Fabric::Tcp)).expect("tcp")
}

#[cfg(feature = "verbs")]
fn open_verbs() -> rafi::fabric::verbs::Device {
    rafi::fabric::verbs::Device::open(&rafi::fabric::VerbsConfig::from_env()).expect("verbs")
}

/// Whether a verbs device is here; where one is required (the soft-RoCE VM, or
/// RAFI_REQUIRE_VERBS) its absence fails the test instead of skipping it.
#[cfg(feature = "verbs")]
fn verbs_available() -> bool {
    use rafi::fabric::verbs::Device;
    let required = ["RAFI_RXE_VM", "RAFI_REQUIRE_VERBS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    match Device::open(&rafi::fabric::VerbsConfig::from_env()) {
        Ok(device) => {
            if std::env::var_os("RAFI_RXE_VM").is_some() {
                assert_eq!(
                    device.name(),
                    "rxe0",
                    "inside the VM the device must be rxe0"
                );
            }
            true
        }
        Err(e) if !required => {
            println!("skipped: no verbs device ({e}); set RAFI_REQUIRE_VERBS=1 to fail instead");
            false
        }
        Err(e) => panic!("a verbs device is required here: {e}"),
    }
}

macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod shm { $( #[test] fn $name() { super::$name(super::open_shm) } )* }
        mod tcp { $( #[test] fn $name() { super::$name(super::open_tcp) } )* }
        #[cfg(feature = "verbs")]
        mod verbs {
            $( #[test] fn $name() {
                if super::verbs_available() {
                    super::$name(super::open_verbs)
                }
            } )*
        }
    };
}

for_each_backend!(
    put_get_of_every_size,
    chunked_transfers_at_odd_offsets,
    in_place_transfers,
    atomics,
    async_operations_on_tokio,
    out_of_bounds_and_misaligned_refused_before_sending,
    rights_are_enforced,
    foreign_and_released_regions_are_refused_by_the_fabric,
    executor_ending_the_lease_is_a_clear_error,
    memory_over_the_limit_is_refused,
    many_clients_concurrently,
    operations_allocate_nothing,
);

/// An executor without functions: memory only.
struct NoFunctions;

impl Catalog for NoFunctions {
    fn resolve(&self, _: &str) -> Option<u32> {
        None
    }
    fn call(&self, _: u32, _: &[u8], _: &mut [u8]) -> Outcome {
        Outcome::Failed(-1)
    }
}

fn executor<F: Fabric>(open: fn() -> F, max_memory: u64) -> Executor<F, NoFunctions> {
    let mut config = ExecutorConfig::new(1);
    config.max_memory = max_memory;
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Executor::start(open(), listen, config, Arc::new(NoFunctions)).expect("executor")
}

fn lease<F: Fabric>(open: fn() -> F, at: SocketAddr, options: MemoryOptions) -> RemoteMemory<F> {
    RemoteMemory::connect(open(), at, options).expect("memory lease")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// 1 B to 16 MiB, each written at offset 0 and read back byte for byte; the largest spans
/// several staging chunks.
fn put_get_of_every_size<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 64 << 20);
    let mut m = lease(open, ex.address(), MemoryOptions::new(16 << 20));
    assert_eq!(m.size(), 16 << 20);
    assert_eq!(ex.memory_in_use(), 16 << 20);
    let mut size = 1usize;
    while size <= 16 << 20 {
        let data = pattern(size, size as u8);
        m.put(0, &data).unwrap();
        let mut back = vec![0u8; size];
        m.get(0, &mut back).unwrap();
        assert!(back == data, "{size} B came back different");
        size *= 4;
    }
    let data = pattern(16 << 20, 3);
    m.put(0, &data).unwrap();
    let mut back = vec![0u8; 16 << 20];
    m.get(0, &mut back).unwrap();
    assert!(back == data, "16 MiB came back different");
    // Empty transfers are no-ops, also at the very end.
    m.put(16 << 20, &[]).unwrap();
    m.get(16 << 20, &mut []).unwrap();
    drop(m);
    wait_until(
        || ex.memory_in_use() == 0,
        "the lease's memory to be released",
    );
}

/// A small staging region: transfers of many chunks, at offsets that are not chunk or word
/// aligned, pieces read back across the boundaries of what was written.
fn chunked_transfers_at_odd_offsets<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1 << 20);
    let mut options = MemoryOptions::new(300_001);
    options.staging = 8192;
    let mut m = lease(open, ex.address(), options);
    let data = pattern(250_000, 9);
    m.put(12_345, &data).unwrap();
    let mut whole = vec![0u8; 300_001];
    m.get(0, &mut whole).unwrap();
    assert!(
        whole[..12_345].iter().all(|&b| b == 0),
        "bytes before were touched"
    );
    assert!(whole[12_345..262_345] == data[..]);
    assert!(
        whole[262_345..].iter().all(|&b| b == 0),
        "bytes after were touched"
    );
    let mut piece = vec![0u8; 10_007];
    m.get(12_345 + 4_093, &mut piece).unwrap();
    assert!(piece[..] == data[4_093..4_093 + 10_007]);
    // The last byte of the lease.
    m.put(300_000, &[0xAB]).unwrap();
    let mut last = [0u8; 1];
    m.get(300_000, &mut last).unwrap();
    assert_eq!(last, [0xAB]);
}

/// put_with builds the bytes in the staging memory the WRITE goes from, get_with reads
/// them where the READ put them; both agree with put/get; beyond one chunk they refuse.
fn in_place_transfers<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1 << 20);
    let mut options = MemoryOptions::new(100_000);
    options.staging = 64 << 10;
    let mut m = lease(open, ex.address(), options);
    assert_eq!(m.max_in_place(), 32 << 10);
    let data = pattern(30_000, 5);
    m.put_with(777, data.len(), |area| area.copy_from_slice(&data))
        .unwrap();
    let mut back = vec![0u8; 30_000];
    m.get(777, &mut back).unwrap();
    assert!(back == data);
    let same = m.get_with(777, 30_000, |bytes| bytes == &data[..]).unwrap();
    assert!(same, "get_with saw other bytes");
    let sum = m
        .get_with(777 + 10, 100, |bytes| {
            bytes.iter().map(|&b| b as u64).sum::<u64>()
        })
        .unwrap();
    assert_eq!(sum, data[10..110].iter().map(|&b| b as u64).sum::<u64>());
    m.put(50_000, &data[..1000]).unwrap();
    assert!(m.get_with(50_000, 1000, |b| b == &data[..1000]).unwrap());
    let err = m.put_with(0, (32 << 10) + 1, |_| {}).unwrap_err();
    assert_eq!(
        err,
        MemoryError::TooLargeInPlace {
            len: (32 << 10) + 1,
            max: 32 << 10
        }
    );
    assert!(matches!(
        m.get_with(99_999, 2, |_| ()),
        Err(MemoryError::OutOfBounds { .. })
    ));
    assert_eq!(m.get_with(0, 0, <[u8]>::len).unwrap(), 0);
}

/// FETCH_ADD and CMP_SWAP return the old value; a failed compare leaves the word; words
/// wrap; puts and atomics see each other's results.
fn atomics<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1 << 20);
    let mut m = lease(open, ex.address(), MemoryOptions::new(4096));
    assert_eq!(m.fetch_add(8, 5).unwrap(), 0);
    assert_eq!(m.fetch_add(8, 7).unwrap(), 5);
    assert_eq!(m.compare_swap(8, 11, 100).unwrap(), 12, "a failed compare");
    assert_eq!(m.fetch_add(8, 0).unwrap(), 12, "left unchanged");
    assert_eq!(
        m.compare_swap(8, 12, 100).unwrap(),
        12,
        "a successful compare"
    );
    assert_eq!(m.fetch_add(8, u64::MAX).unwrap(), 100, "wraps");
    assert_eq!(m.fetch_add(8, 0).unwrap(), 99);
    // A put is seen by atomics, atomics by a get (little-endian words on all hosts here).
    m.put(4088, &u64::MAX.to_ne_bytes()).unwrap();
    assert_eq!(m.fetch_add(4088, 2).unwrap(), u64::MAX);
    let mut word = [0u8; 8];
    m.get(4088, &mut word).unwrap();
    assert_eq!(u64::from_ne_bytes(word), 1);
    // Neighbouring words are untouched.
    let mut around = [0u8; 16];
    m.get(0, &mut around).unwrap();
    assert_eq!(&around[..8], &[0; 8]);
    assert_eq!(u64::from_ne_bytes(around[8..].try_into().unwrap()), 99);
}

/// Every operation through its future, on a current-thread runtime, checked against the
/// blocking API on the same lease.
fn async_operations_on_tokio<F: Fabric>(open: fn() -> F) {
    const WORD: u64 = (2 << 20) - 8;
    let ex = executor(open, 8 << 20);
    let mut options = MemoryOptions::new(2 << 20);
    options.staging = 64 << 10; // several chunks per transfer
    let mut m = lease(open, ex.address(), options);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = pattern(1 << 20, 77);
    runtime.block_on(async {
        m.put_async(100, &data).await.unwrap();
        let mut back = vec![0u8; 1 << 20];
        m.get_async(100, &mut back).await.unwrap();
        assert!(back == data);
        assert_eq!(m.fetch_add_async(WORD, 3).await.unwrap(), 0);
        assert_eq!(m.compare_swap_async(WORD, 3, 9).await.unwrap(), 3);
        let err = m.fetch_add_async(3, 1).await.unwrap_err();
        assert_eq!(err, MemoryError::Misaligned { offset: 3 });
        let err = m.put_async(2 << 20, &[1]).await.unwrap_err();
        assert!(matches!(err, MemoryError::OutOfBounds { .. }), "{err}");
    });
    assert_eq!(m.fetch_add(WORD, 0).unwrap(), 9);
    let mut back = vec![0u8; 1 << 20];
    m.get(100, &mut back).unwrap();
    assert!(back == data);
}

/// Ranges past the end (also by overflow), and misaligned atomics, are refused by the
/// client with errors that say so; nothing was sent, so the lease keeps working.
fn out_of_bounds_and_misaligned_refused_before_sending<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1 << 20);
    let mut m = lease(open, ex.address(), MemoryOptions::new(1000));
    let err = m.put(999, &[1, 2]).unwrap_err();
    assert_eq!(
        err,
        MemoryError::OutOfBounds {
            offset: 999,
            len: 2,
            size: 1000
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("outside the 1000 B") && text.contains("nothing was sent"),
        "{text}"
    );
    let mut out = [0u8; 8];
    assert!(matches!(
        m.get(1000, &mut out[..1]),
        Err(MemoryError::OutOfBounds { .. })
    ));
    assert!(matches!(
        m.get(u64::MAX, &mut out),
        Err(MemoryError::OutOfBounds { .. })
    ));
    // The registered region is a page: the client refuses what the fabric would allow.
    assert!(matches!(
        m.fetch_add(1000, 1),
        Err(MemoryError::OutOfBounds { .. })
    ));
    assert!(matches!(
        m.fetch_add(996, 1),
        Err(MemoryError::OutOfBounds { .. })
    ));
    let err = m.compare_swap(4, 0, 1).unwrap_err();
    assert_eq!(err, MemoryError::Misaligned { offset: 4 });
    assert!(err.to_string().contains("not 8-byte aligned"), "{err}");
    // Nothing broke.
    m.put(992, &[7; 8]).unwrap();
    m.get(992, &mut out).unwrap();
    assert_eq!(out, [7; 8]);
    assert_eq!(m.fetch_add(992, 1).unwrap(), u64::from_ne_bytes([7; 8]));
}

/// A read-only lease refuses put and atomics before sending; the executor registered the
/// region read-only, so the fabric would refuse them too (checked through the hidden
/// unchecked put).
fn rights_are_enforced<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1 << 20);
    let mut writer = lease(open, ex.address(), MemoryOptions::new(4096));
    let mut options = MemoryOptions::new(4096);
    options.access = MemoryAccess::READ_ONLY;
    let mut m = lease(open, ex.address(), options);
    assert_eq!(m.access(), MemoryAccess::READ_ONLY);
    let err = m.put(0, &[1]).unwrap_err();
    assert!(
        matches!(err, MemoryError::NotPermitted { op: "put", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("grants read access"), "{err}");
    assert!(matches!(
        m.fetch_add(0, 1),
        Err(MemoryError::NotPermitted { .. })
    ));
    assert!(matches!(
        m.compare_swap(0, 0, 1),
        Err(MemoryError::NotPermitted { .. })
    ));
    let mut out = [1u8; 16];
    m.get(0, &mut out).unwrap();
    assert_eq!(out, [0; 16]);
    // The second line: the region itself lacks REMOTE_WRITE.
    let own = m.region();
    let err = m.put_unchecked(own, 0, &[1]).unwrap_err();
    assert_eq!(
        err,
        MemoryError::RemoteAccess {
            op: "put",
            status: WcStatus::RemoteAccessError
        }
    );
    // A write-only lease cannot get.
    let mut options = MemoryOptions::new(64);
    options.access = MemoryAccess {
        write: true,
        ..MemoryAccess::default()
    };
    let mut w = lease(open, ex.address(), options);
    assert!(matches!(
        w.get(0, &mut out),
        Err(MemoryError::NotPermitted { op: "get", .. })
    ));
    w.put(0, &[1; 64]).unwrap();
    // No right at all is refused at allocation.
    let mut options = MemoryOptions::new(64);
    options.access = MemoryAccess::default();
    let err = RemoteMemory::connect(open(), ex.address(), options).unwrap_err();
    assert!(
        matches!(
            err,
            AllocateError::Refused(
                HandshakeError::Refused { .. } | HandshakeError::InvalidMemory { .. }
            )
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no access right"), "{err}");
    writer.put(0, &[5; 8]).unwrap();
}

/// The fabric is the second line of defence: another lease's region (its rkey is of
/// another protection domain) and a released region (its rkey is dead) are both refused
/// with a remote access error, and the target memory is untouched.
fn foreign_and_released_regions_are_refused_by_the_fabric<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1 << 20);
    let mut a = lease(open, ex.address(), MemoryOptions::new(4096));
    let mut b = lease(open, ex.address(), MemoryOptions::new(4096));
    a.put(0, &[1; 64]).unwrap();
    let err = b.put_unchecked(a.region(), 0, &[9; 8]).unwrap_err();
    assert!(matches!(err, MemoryError::RemoteAccess { .. }), "{err}");
    assert!(err.to_string().contains("refused the put"), "{err}");
    // The failed operation broke b's queue pair: b fails the same way from now on.
    assert_eq!(b.put(0, &[1]).unwrap_err(), err);
    let mut out = [0u8; 64];
    a.get(0, &mut out).unwrap();
    assert_eq!(out, [1; 64], "another lease's write went through");

    // Released: drop a, keep its descriptor, try it from a fresh lease.
    let stale = a.region();
    drop(a);
    drop(b);
    wait_until(|| ex.memory_in_use() == 0, "the leases to be released");
    let mut c = lease(open, ex.address(), MemoryOptions::new(4096));
    let err = c.put_unchecked(stale, 0, &[9; 8]).unwrap_err();
    assert!(matches!(err, MemoryError::RemoteAccess { .. }), "{err}");
}

/// When the executor ends the lease (here: it stops), the next operation fails with
/// `Released`, and so does every one after it.
fn executor_ending_the_lease_is_a_clear_error<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1 << 20);
    let mut options = MemoryOptions::new(4096);
    options.timeout = Duration::from_secs(5);
    let mut m = lease(open, ex.address(), options);
    m.put(0, &[1; 8]).unwrap();
    drop(ex);
    // The session's end reaches the client asynchronously; until then an operation may
    // still land in the (not yet deregistered) region.
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match m.put(0, &[2; 8]) {
            Ok(()) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(()) => panic!("the lease still works 10 s after its executor stopped"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, MemoryError::Released(_)), "{err}");
    assert!(err.to_string().contains("released"), "{err}");
    let mut out = [0u8; 8];
    assert_eq!(m.get(0, &mut out).unwrap_err(), err);
}

/// Requests beyond the executor's limit, alone or together with live leases, are refused
/// with a message naming the limit; releasing a lease makes room again.
fn memory_over_the_limit_is_refused<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1 << 20);
    let err = RemoteMemory::connect(open(), ex.address(), MemoryOptions::new(2 << 20)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("leases at most 1048576 B"), "{text}");
    let first = lease(open, ex.address(), MemoryOptions::new(768 << 10));
    let err =
        RemoteMemory::connect(open(), ex.address(), MemoryOptions::new(512 << 10)).unwrap_err();
    assert!(err.to_string().contains("786432 B are in use"), "{err}");
    let _small = lease(open, ex.address(), MemoryOptions::new(256 << 10));
    assert_eq!(ex.memory_in_use(), 1 << 20);
    drop(first);
    wait_until(
        || ex.memory_in_use() == 256 << 10,
        "the first lease to be released",
    );
    let _again = lease(open, ex.address(), MemoryOptions::new(768 << 10));
    // Zero bytes is no lease.
    let err = RemoteMemory::connect(open(), ex.address(), MemoryOptions::new(0)).unwrap_err();
    assert!(err.to_string().contains("zero bytes"), "{err}");
}

/// Many clients at once, each a thread with a lease of its own on one executor (a lease is
/// one client's; nothing is shared between leases by design): each writes its own pattern
/// in pieces, hammers a counter with fetch-adds and a lock word with compare-swaps, and
/// reads everything back. Every byte and every count must be exactly its own: no
/// operation of one lease lands in another's memory, none is lost or duplicated.
fn many_clients_concurrently<F: Fabric>(open: fn() -> F) {
    const CLIENTS: usize = 6;
    const LEN: usize = 256 << 10;
    const ROUNDS: u64 = 500;
    let ex = executor(open, 16 << 20);
    let at = ex.address();
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            s.spawn(move || {
                let mut options = MemoryOptions::new(LEN as u64 + 16);
                options.staging = 16 << 10;
                let mut m = lease(open, at, options);
                let data = pattern(LEN, c as u8);
                for (i, piece) in data.chunks(10_000).enumerate() {
                    m.put(16 + (i * 10_000) as u64, piece).unwrap();
                }
                for i in 0..ROUNDS {
                    assert_eq!(m.fetch_add(0, c as u64 + 1).unwrap(), i * (c as u64 + 1));
                    assert_eq!(m.compare_swap(8, i, i + 1).unwrap(), i);
                }
                let mut back = vec![0u8; LEN];
                m.get(16, &mut back).unwrap();
                assert!(back == data, "client {c}: data corrupted");
                assert_eq!(m.fetch_add(0, 0).unwrap(), ROUNDS * (c as u64 + 1));
                assert_eq!(m.fetch_add(8, 0).unwrap(), ROUNDS);
            });
        }
    });
    wait_until(|| ex.memory_in_use() == 0, "every lease to be released");
}

/// After warm-up, puts, gets (several chunks each) and atomics allocate nothing on the
/// client thread (shm and verbs; the tcp mock allocates in its own post path).
fn operations_allocate_nothing<F: Fabric>(open: fn() -> F) {
    let ex = executor(open, 1 << 20);
    let mut options = MemoryOptions::new(64 << 10);
    options.staging = 16 << 10;
    let mut m = lease(open, ex.address(), options);
    let data = pattern(40_000, 1);
    let mut back = vec![0u8; 40_000];
    let mut round = |m: &mut RemoteMemory<F>| {
        m.put(8, &data).unwrap();
        m.get(8, &mut back).unwrap();
        m.fetch_add(0, 1).unwrap();
        m.compare_swap(0, 0, 0).unwrap();
        m.put_with(8, 1000, |area| area.fill(3)).unwrap();
        assert!(m.get_with(8, 1000, |b| b.iter().all(|&x| x == 3)).unwrap());
    };
    for _ in 0..10 {
        round(&mut m);
    }
    let before = allocations();
    for _ in 0..100 {
        round(&mut m);
    }
    let allocated = allocations() - before;
    if m_kind(&ex) != FabricKind::Tcp {
        assert_eq!(allocated, 0, "the memory operations allocated");
    }
    assert!(back == data);
}

fn m_kind<F: Fabric>(ex: &Executor<F, NoFunctions>) -> FabricKind {
    ex.fabric().kind()
}

fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
