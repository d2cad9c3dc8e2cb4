//! The function layer: the C examples (built with `cc` at test time) and the Rust example
//! cdylib (built with a nested `cargo build` into its own target directory), loaded by path
//! and from bytes, called, and checked against Rust references; every load error; every
//! call error; panics; allocation-free calls; concurrent calls.
//!
//! Needs a C compiler (`cc`, or `$CC`) and cargo with the dependencies already fetched
//! (the nested build runs `--offline`; `cargo test` of this workspace fetched them).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rafi::function::{CallError, FunctionLibrary, FunctionTable, LoadError, NameError};
use rafi::protocol::Status;
use rafi_example_functions::{Options, Prices, Product, Tile};
use rkyv::Archived;

#[path = "support/libraries.rs"]
mod libraries;
use libraries::{c_dir, c_example, cc, cc_with, rust_example};

#[global_allocator]
static GLOBAL: rdma_mock::alloc_counter::CountingAllocator =
    rdma_mock::alloc_counter::CountingAllocator;

use rdma_mock::alloc_counter::allocations;

// ---------------------------------------------------------------------------------------
// Building the libraries.
// ---------------------------------------------------------------------------------------

/// A slot-like buffer: 64-byte aligned, as the executor's payloads are.
#[repr(C, align(64))]
struct Slot([u8; 1 << 16]);

fn slot() -> Box<Slot> {
    Box::new(Slot([0; 1 << 16]))
}

fn table_of(lib: FunctionLibrary) -> FunctionTable {
    let mut t = FunctionTable::new();
    t.add_library(lib).unwrap();
    t
}

fn call(
    t: &FunctionTable,
    name: &str,
    input: &[u8],
    output: &mut [u8],
) -> Result<usize, CallError> {
    let id = t.id(name).unwrap_or_else(|| panic!("no function {name}"));
    t.get(id).call(input, output)
}

// ---------------------------------------------------------------------------------------
// References.
// ---------------------------------------------------------------------------------------

fn reference_call_price(s: f64, k: f64, t: f64, r: f64, sigma: f64) -> f64 {
    let n = |x: f64| 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
    let d1 = ((s / k).ln() + (r + sigma * sigma / 2.0) * t) / (sigma * t.sqrt());
    let d2 = d1 - sigma * t.sqrt();
    s * n(d1) - k * (-r * t).exp() * n(d2)
}

fn options(n: usize) -> Options {
    let f = |i: usize, a: f64, b: f64| a + b * ((i * 7919 % 101) as f64 / 100.0);
    Options {
        spot: (0..n).map(|i| f(i, 80.0, 40.0)).collect(),
        strike: (0..n).map(|i| f(i + 3, 90.0, 20.0)).collect(),
        time: (0..n).map(|i| f(i + 5, 0.25, 2.0)).collect(),
        rate: (0..n).map(|i| f(i + 7, 0.0, 0.05)).collect(),
        volatility: (0..n).map(|i| f(i + 11, 0.1, 0.4)).collect(),
    }
}

fn assert_prices(o: &Options, prices: &[f64]) {
    assert_eq!(prices.len(), o.spot.len());
    for (i, &p) in prices.iter().enumerate() {
        let want = reference_call_price(
            o.spot[i],
            o.strike[i],
            o.time[i],
            o.rate[i],
            o.volatility[i],
        );
        assert!(
            ((p - want) / want).abs() <= 1e-9,
            "option {i}: {p} vs reference {want}"
        );
    }
}

/// The C layout of blackscholes.c: n, then S, K, T, r, sigma.
fn c_options(o: &Options) -> Vec<u8> {
    let mut v = (o.spot.len() as u64).to_le_bytes().to_vec();
    for arr in [&o.spot, &o.strike, &o.time, &o.rate, &o.volatility] {
        for x in arr.iter() {
            v.extend_from_slice(&x.to_le_bytes());
        }
    }
    v
}

fn f64s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn small_int_matrices(n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let a: Vec<f64> = (0..n * n)
        .map(|i| ((i * 5 + 3) % 11) as f64 - 5.0)
        .collect();
    let b: Vec<f64> = (0..n * n).map(|i| ((i * 3 + 1) % 7) as f64 - 3.0).collect();
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            c[i * n + j] = (0..n).map(|k| a[i * n + k] * b[k * n + j]).sum();
        }
    }
    (a, b, c)
}

/// Copies `bytes` to the start of a fresh slot.
fn in_slot(bytes: &[u8]) -> Box<Slot> {
    let mut s = slot();
    s.0[..bytes.len()].copy_from_slice(bytes);
    s
}

// ---------------------------------------------------------------------------------------
// C examples.
// ---------------------------------------------------------------------------------------

#[test]
fn c_echo_and_noop_by_path_and_from_bytes() {
    let path = c_example("echo");
    let bytes = std::fs::read(path).unwrap();
    for lib in [
        FunctionLibrary::open(path).unwrap(),
        FunctionLibrary::from_bytes("echo", &bytes).unwrap(),
    ] {
        let names: Vec<&str> = lib.functions().iter().map(|f| f.name()).collect();
        assert_eq!(names, ["echo", "noop"]);
        let t = table_of(lib);
        let mut out = slot();
        assert_eq!(call(&t, "echo", b"hello rafi", &mut out.0), Ok(10));
        assert_eq!(&out.0[..10], b"hello rafi");
        assert_eq!(call(&t, "echo", b"", &mut out.0), Ok(0));
        assert_eq!(call(&t, "noop", b"ignored", &mut out.0), Ok(0));
        let e = call(&t, "echo", b"hello rafi", &mut out.0[..9]).unwrap_err();
        assert_eq!(e, CallError::OutputTooSmall { capacity: 9 });
        assert_eq!(e.status(), Status::OutputTooLarge);
    }
}

#[test]
fn c_blackscholes_matches_the_reference() {
    let t = table_of(FunctionLibrary::open(c_example("blackscholes")).unwrap());
    let o = options(200);
    let input = in_slot(&c_options(&o));
    let len = c_options(&o).len();
    let mut out = slot();
    let n = call(&t, "blackscholes", &input.0[..len], &mut out.0).unwrap();
    assert_eq!(n, 8 * 200);
    assert_prices(&o, &f64s(&out.0[..n]));
    // Wrong lengths, a huge n, and too small an output.
    assert_eq!(
        call(&t, "blackscholes", &input.0[..len - 1], &mut out.0),
        Err(CallError::InvalidInput)
    );
    assert_eq!(
        call(&t, "blackscholes", &input.0[..4], &mut out.0),
        Err(CallError::InvalidInput)
    );
    let mut huge = input.0[..len].to_vec();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(
        call(&t, "blackscholes", &in_slot(&huge).0[..len], &mut out.0),
        Err(CallError::InvalidInput)
    );
    assert_eq!(
        call(
            &t,
            "blackscholes",
            &input.0[..len],
            &mut out.0[..8 * 200 - 1]
        ),
        Err(CallError::OutputTooSmall {
            capacity: 8 * 200 - 1
        })
    );
}

#[test]
fn c_matmul_is_exact_on_small_integers() {
    let t = table_of(FunctionLibrary::open(c_example("matmul")).unwrap());
    for n in [0usize, 1, 2, 5, 16] {
        let (a, b, c) = small_int_matrices(n);
        let mut input = (n as u64).to_le_bytes().to_vec();
        for x in a.iter().chain(&b) {
            input.extend_from_slice(&x.to_le_bytes());
        }
        let mut out = slot();
        let len = call(&t, "matmul", &in_slot(&input).0[..input.len()], &mut out.0).unwrap();
        assert_eq!(f64s(&out.0[..len]), c, "n = {n}");
    }
    let mut out = slot();
    let mut bad = 3u64.to_le_bytes().to_vec();
    bad.extend_from_slice(&[0; 8 * 17]);
    assert_eq!(
        call(&t, "matmul", &bad, &mut out.0),
        Err(CallError::InvalidInput)
    );
    let mut overflow = (1u64 << 33).to_le_bytes().to_vec();
    overflow.extend_from_slice(&[0; 16]);
    assert_eq!(
        call(&t, "matmul", &overflow, &mut out.0),
        Err(CallError::InvalidInput)
    );
}

// ---------------------------------------------------------------------------------------
// The Rust example.
// ---------------------------------------------------------------------------------------

#[test]
fn rust_example_by_path_and_from_bytes() {
    let path = rust_example();
    let bytes = std::fs::read(path).unwrap();
    for lib in [
        FunctionLibrary::open(path).unwrap(),
        FunctionLibrary::from_bytes("rafi-example-functions", &bytes).unwrap(),
    ] {
        let names: Vec<&str> = lib.functions().iter().map(|f| f.name()).collect();
        assert_eq!(names, ["noop", "echo", "blackscholes", "matmul", "panic"]);
        let t = table_of(lib);
        let (mut input, mut out) = (slot(), slot());

        // Black-Scholes, typed: archive in, archive out, both in slot-like buffers.
        let o = options(100);
        let len = rafi_function::encode(&o, &mut input.0).unwrap();
        let n = call(&t, "blackscholes", &input.0[..len], &mut out.0).unwrap();
        let prices = rafi_function::decode::<Archived<Prices>>(&out.0[..n]).unwrap();
        let prices: Vec<f64> = prices.call.iter().map(|p| p.to_native()).collect();
        assert_prices(&o, &prices);
        // The output slot too small for the archive.
        assert_eq!(
            call(&t, "blackscholes", &input.0[..len], &mut out.0[..n - 1]),
            Err(CallError::OutputTooSmall { capacity: n - 1 })
        );
        // Arrays of different lengths: the function's own validation.
        let mut short = o.clone();
        short.rate.pop();
        let len = rafi_function::encode(&short, &mut input.0).unwrap();
        assert_eq!(
            call(&t, "blackscholes", &input.0[..len], &mut out.0),
            Err(CallError::InvalidInput)
        );

        // Matrix multiply, typed.
        let (a, b, c) = small_int_matrices(8);
        let len = rafi_function::encode(&Tile { n: 8, a, b }, &mut input.0).unwrap();
        let n = call(&t, "matmul", &input.0[..len], &mut out.0).unwrap();
        let p = rafi_function::decode::<Archived<Product>>(&out.0[..n]).unwrap();
        assert_eq!(p.n.to_native(), 8);
        assert_eq!(p.c.iter().map(|x| x.to_native()).collect::<Vec<_>>(), c);

        // Raw functions.
        assert_eq!(call(&t, "echo", b"bytes", &mut out.0), Ok(5));
        assert_eq!(&out.0[..5], b"bytes");
        assert_eq!(call(&t, "noop", b"bytes", &mut out.0), Ok(0));
    }
}

#[test]
fn rust_example_refuses_hostile_input_and_survives_panics() {
    let t = table_of(FunctionLibrary::open(rust_example()).unwrap());
    let (mut input, mut out) = (slot(), slot());
    let o = options(10);
    let len = rafi_function::encode(&o, &mut input.0).unwrap();

    // Garbage, truncations, and every single-byte corruption: an error or a valid result,
    // never a crash.
    assert_eq!(
        call(&t, "blackscholes", &[0xff; 64], &mut out.0),
        Err(CallError::InvalidInput)
    );
    assert_eq!(
        call(&t, "blackscholes", &[], &mut out.0),
        Err(CallError::InvalidInput)
    );
    for cut in 0..len {
        assert!(call(&t, "blackscholes", &input.0[..cut], &mut out.0).is_err() || cut == len);
    }
    for i in 0..len {
        let mut bad = in_slot(&input.0[..len]);
        bad.0[i] ^= 0xa5;
        let _ = call(&t, "blackscholes", &bad.0[..len], &mut out.0);
    }
    // A valid archive at an address that is not 16-byte aligned: refused, not UB.
    let mut shifted = slot();
    shifted.0[8..8 + len].copy_from_slice(&input.0[..len]);
    assert_eq!(
        call(&t, "blackscholes", &shifted.0[8..8 + len], &mut out.0),
        Err(CallError::InvalidInput)
    );

    // A panic is an error status; the library keeps working.
    for _ in 0..3 {
        let e = call(&t, "panic", b"", &mut out.0).unwrap_err();
        assert_eq!(e, CallError::Panicked);
        assert_eq!(e.status(), Status::FunctionPanicked);
        assert!(call(&t, "blackscholes", &input.0[..len], &mut out.0).is_ok());
    }
}

// ---------------------------------------------------------------------------------------
// Load errors.
// ---------------------------------------------------------------------------------------

const TABLE_PRELUDE: &str = "#include \"rafi_function.h\"\n\
    __attribute__((unused)) static int64_t f(const uint8_t *i, size_t il, uint8_t *o, size_t oc) {\n\
        (void)i, (void)il, (void)o, (void)oc; return 0; }\n";

fn bad_lib(name: &str, body: &str) -> PathBuf {
    cc(name, &format!("{TABLE_PRELUDE}{body}\n"))
}

fn load_err(path: &Path) -> LoadError {
    FunctionLibrary::open(path).expect_err("the library loaded")
}

#[test]
fn missing_and_non_library_files() {
    let e = load_err(Path::new("/nonexistent/librafi-nothing.so"));
    assert!(
        matches!(&e, LoadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e}"
    );
    let text = c_dir().join("not-a-library.so");
    std::fs::write(&text, "this is text").unwrap();
    assert!(matches!(load_err(&text), LoadError::NotALibrary { .. }));
    assert!(matches!(load_err(c_dir()), LoadError::NotALibrary { .. }));
    assert!(matches!(
        FunctionLibrary::from_bytes("garbage", b"\x7fELF garbage"),
        Err(LoadError::NotALibrary { .. })
    ));
    assert!(matches!(
        FunctionLibrary::from_bytes("empty", b""),
        Err(LoadError::NotALibrary { .. })
    ));
    assert!(matches!(
        FunctionLibrary::from_bytes("nul\0name", b""),
        Err(LoadError::LibraryName { .. })
    ));
    // The message says what and where.
    let msg = load_err(&text).to_string();
    assert!(msg.contains("not-a-library.so"), "{msg}");
}

#[test]
fn missing_symbols_and_wrong_versions() {
    let no_table = bad_lib(
        "no_table",
        "uint32_t rafi_function_abi_version(void) { return RAFI_FUNCTION_ABI_VERSION; }\n\
         int64_t unused(void) { return f(0, 0, 0, 0); }",
    );
    let e = load_err(&no_table);
    assert!(
        matches!(
            e,
            LoadError::MissingSymbol {
                symbol: "rafi_function_table",
                ..
            }
        ),
        "{e}"
    );
    let no_version = bad_lib(
        "no_version",
        "static const rafi_function_entry t[] = {{\"f\", f}};\n\
         const rafi_function_entry *rafi_function_table(size_t *n) { *n = 1; return t; }",
    );
    let e = load_err(&no_version);
    assert!(
        matches!(
            e,
            LoadError::MissingSymbol {
                symbol: "rafi_function_abi_version",
                ..
            }
        ),
        "{e}"
    );
    let v2 = bad_lib(
        "version2",
        "static const rafi_function_entry t[] = {{\"f\", f}};\n\
         uint32_t rafi_function_abi_version(void) { return 2; }\n\
         const rafi_function_entry *rafi_function_table(size_t *n) { *n = 1; return t; }",
    );
    let e = load_err(&v2);
    assert!(
        matches!(
            e,
            LoadError::AbiVersion {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{e}"
    );
    let bytes = std::fs::read(&v2).unwrap();
    assert!(matches!(
        FunctionLibrary::from_bytes("v2", &bytes),
        Err(LoadError::AbiVersion { found: 2, .. })
    ));
}

/// What a load error should look like.
type Expect = fn(&LoadError) -> bool;

#[test]
fn bad_tables() {
    let cases: [(&str, &str, Expect); 7] = [
        ("dup", "static const rafi_function_entry t[] = {{\"f\", f}, {\"g\", f}, {\"f\", f}};\nRAFI_FUNCTION_EXPORT(t)",
            |e| matches!(e, LoadError::DuplicateName { name, .. } if name == "f")),
        ("empty", "uint32_t rafi_function_abi_version(void) { return 1; }\n\
                   const rafi_function_entry *rafi_function_table(size_t *n) { *n = 0; return 0; }",
            |e| matches!(e, LoadError::NoFunctions { .. })),
        ("null_table", "uint32_t rafi_function_abi_version(void) { return 1; }\n\
                   const rafi_function_entry *rafi_function_table(size_t *n) { *n = 1; return 0; }",
            |e| matches!(e, LoadError::BadTable { .. })),
        ("null_name", "static const rafi_function_entry t[] = {{\"f\", f}, {0, f}};\nRAFI_FUNCTION_EXPORT(t)",
            |e| matches!(e, LoadError::NullName { index: 1, .. })),
        ("null_fn", "static const rafi_function_entry t[] = {{\"f\", 0}};\nRAFI_FUNCTION_EXPORT(t)",
            |e| matches!(e, LoadError::NullFunction { index: 0, .. })),
        ("names", "static const rafi_function_entry t[] = {{\"ok\", f}, {\"\", f}};\nRAFI_FUNCTION_EXPORT(t)",
            |e| matches!(e, LoadError::BadName { index: 1, reason: NameError::Empty, .. })),
        ("utf8", "static const rafi_function_entry t[] = {{\"\\xff\\xfe\", f}};\nRAFI_FUNCTION_EXPORT(t)",
            |e| matches!(e, LoadError::BadName { reason: NameError::NotUtf8, .. })),
    ];
    for (name, body, ok) in cases {
        let e = load_err(&bad_lib(name, body));
        assert!(ok(&e), "{name}: {e}");
    }
    let long = format!(
        "static const rafi_function_entry t[] = {{{{\"{}\", f}}}};\nRAFI_FUNCTION_EXPORT(t)",
        "x".repeat(300)
    );
    let e = load_err(&bad_lib("long", &long));
    assert!(
        matches!(
            e,
            LoadError::BadName {
                reason: NameError::TooLong { len: 256 },
                ..
            }
        ),
        "{e}"
    );
    let ctl = "static const rafi_function_entry t[] = {{\"a\\tb\", f}};\nRAFI_FUNCTION_EXPORT(t)";
    let e = load_err(&bad_lib("ctl", ctl));
    assert!(
        matches!(
            e,
            LoadError::BadName {
                reason: NameError::ControlCharacter,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn duplicate_names_across_a_table_leave_it_unchanged() {
    let mut t = FunctionTable::with_builtins();
    t.add_library(FunctionLibrary::open(c_example("echo")).unwrap())
        .unwrap();
    assert_eq!(t.len(), 4);
    let again =
        FunctionLibrary::from_bytes("echo", &std::fs::read(c_example("echo")).unwrap()).unwrap();
    let e = t.add_library(again).unwrap_err();
    assert!(
        matches!(&e, LoadError::DuplicateName { library, name } if library == "memfd:echo" && name == "echo"),
        "{e}"
    );
    assert_eq!(t.len(), 4);
    let ids = t.resolve(&["noop".into(), "rafi.echo".into()]).unwrap();
    assert_eq!(t.get(ids[0]).name(), "noop");
    assert!(t.get(ids[1]).is_builtin());
}

// ---------------------------------------------------------------------------------------
// Call errors from a misbehaving C library.
// ---------------------------------------------------------------------------------------

#[test]
fn negative_returns_and_overruns() {
    let src = "#include \"rafi_function.h\"\n\
        static int64_t fail(const uint8_t *i, size_t il, uint8_t *o, size_t oc) {\n\
            (void)i, (void)il, (void)o, (void)oc; return -1000; }\n\
        static int64_t huge(const uint8_t *i, size_t il, uint8_t *o, size_t oc) {\n\
            (void)i, (void)il, (void)o, (void)oc; return -5000000000LL; }\n\
        static int64_t over(const uint8_t *i, size_t il, uint8_t *o, size_t oc) {\n\
            (void)i, (void)il, (void)o; return (int64_t)oc + 1; }\n\
        static int64_t panic(const uint8_t *i, size_t il, uint8_t *o, size_t oc) {\n\
            (void)i, (void)il, (void)o, (void)oc; return RAFI_ERR_PANIC; }\n\
        static const rafi_function_entry t[] = {{\"fail\", fail}, {\"huge\", huge}, {\"over\", over}, {\"panic\", panic}};\n\
        RAFI_FUNCTION_EXPORT(t)\n";
    let t = table_of(FunctionLibrary::open(cc("misbehave", src)).unwrap());
    let mut out = [0u8; 32];
    let e = call(&t, "fail", b"", &mut out).unwrap_err();
    assert_eq!(e, CallError::Failed { code: -1000 });
    assert_eq!((e.status(), e.error_code()), (Status::FunctionError, -1000));
    let e = call(&t, "huge", b"", &mut out).unwrap_err();
    assert_eq!(
        (e.status(), e.error_code()),
        (Status::FunctionError, i32::MIN)
    );
    let e = call(&t, "over", b"", &mut out).unwrap_err();
    assert_eq!(
        e,
        CallError::OutputOverrun {
            len: 33,
            capacity: 32
        }
    );
    assert_eq!(e.status(), Status::OutputTooLarge);
    assert_eq!(call(&t, "panic", b"", &mut out), Err(CallError::Panicked));
}

// ---------------------------------------------------------------------------------------
// Lifetimes, memfd reuse, threads.
// ---------------------------------------------------------------------------------------

#[test]
fn a_function_keeps_its_library_loaded() {
    let lib =
        FunctionLibrary::from_bytes("echo", &std::fs::read(c_example("echo")).unwrap()).unwrap();
    let echo = lib.functions()[0].clone();
    let t = table_of(lib);
    drop(t);
    let mut out = [0u8; 8];
    assert_eq!(echo.call(b"alive", &mut out), Ok(5));
}

#[test]
fn libraries_from_bytes_never_alias_each_other() {
    // A library that is never unloaded (here `-z nodelete`; in practice any library that
    // registered thread-local destructors, as Rust ones do) stays known to the loader
    // under its `/proc/self/fd/N` name; a later memfd that got the same fd number must
    // not be taken for it.
    let sticky = cc_with(
        "sticky",
        "#include \"rafi_function.h\"\n\
         static int64_t one(const uint8_t *i, size_t il, uint8_t *o, size_t oc) {\n\
             (void)i, (void)il, (void)o, (void)oc; return 0; }\n\
         static const rafi_function_entry t[] = {{\"sticky\", one}};\n\
         RAFI_FUNCTION_EXPORT(t)\n",
        &["-Wl,-z,nodelete"],
    );
    let sticky = std::fs::read(sticky).unwrap();
    let c = std::fs::read(c_example("echo")).unwrap();
    for _ in 0..4 {
        let s = FunctionLibrary::from_bytes("sticky", &sticky).unwrap();
        assert_eq!(s.functions()[0].name(), "sticky");
        drop(s);
        let e = FunctionLibrary::from_bytes("c", &c).unwrap();
        assert_eq!(
            e.functions()[0].name(),
            "echo",
            "the memfd resolved to another library"
        );
    }
}

#[test]
fn concurrent_calls_from_several_threads() {
    let mut t = FunctionTable::with_builtins();
    t.add_library(FunctionLibrary::open(c_example("matmul")).unwrap())
        .unwrap();
    let t = Arc::new(t);
    let (a, b, c) = small_int_matrices(6);
    let mut input = 6u64.to_le_bytes().to_vec();
    for x in a.iter().chain(&b) {
        input.extend_from_slice(&x.to_le_bytes());
    }
    let input = Arc::new(input);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (t, input, c) = (t.clone(), input.clone(), c.clone());
            std::thread::spawn(move || {
                let id = t.id("matmul").unwrap();
                let slot_in = in_slot(&input);
                let mut out = slot();
                for _ in 0..500 {
                    let n = t
                        .get(id)
                        .call(&slot_in.0[..input.len()], &mut out.0)
                        .unwrap();
                    assert_eq!(f64s(&out.0[..n]), c);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// No allocation on the call path.
// ---------------------------------------------------------------------------------------

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Sum {
    total: f64,
    count: u32,
}

fn sum(o: &Archived<Options>) -> Sum {
    Sum {
        total: o.spot.iter().map(|x| x.to_native()).sum(),
        count: o.spot.len() as u32,
    }
}

#[test]
fn calls_allocate_nothing() {
    let mut t = FunctionTable::with_builtins();
    t.add_library(FunctionLibrary::open(c_example("echo")).unwrap())
        .unwrap();
    t.add_library(FunctionLibrary::open(c_example("blackscholes")).unwrap())
        .unwrap();
    let ids = t
        .resolve(&[
            "rafi.noop".into(),
            "rafi.echo".into(),
            "echo".into(),
            "blackscholes".into(),
        ])
        .unwrap();
    let o = options(50);
    let bs = c_options(&o);
    let (bs_in, mut typed_in, mut out) = (in_slot(&bs), slot(), slot());
    let typed_len = rafi_function::encode(&o, &mut typed_in.0).unwrap();
    let typed_call = |input: &[u8], output: &mut [u8]| {
        // SAFETY: valid, non-overlapping buffers of the given lengths, as the ABI asks.
        unsafe {
            rafi_function::__private::call_typed(
                sum,
                input.as_ptr(),
                input.len(),
                output.as_mut_ptr(),
                output.len(),
            )
        }
    };
    let mut run = || {
        for (id, input) in ids
            .iter()
            .zip([&b"x"[..], b"payload", b"payload", &bs_in.0[..bs.len()]])
        {
            assert!(t.get(*id).call(input, &mut out.0).is_ok());
        }
        let n = typed_call(&typed_in.0[..typed_len], &mut out.0);
        assert!(n > 0);
        assert!(rafi_function::decode::<Archived<Sum>>(&out.0[..n as usize]).is_ok());
        assert!(rafi_function::encode(
            &Sum {
                total: 1.0,
                count: 1
            },
            &mut out.0
        )
        .is_ok());
        // Errors too: invalid input, output too small.
        assert_eq!(typed_call(&typed_in.0[1..typed_len], &mut out.0), -1);
        assert_eq!(typed_call(&typed_in.0[..typed_len], &mut out.0[..4]), -2);
    };
    run(); // warm up (lazy statics, first-call paths)
    let probe = allocations();
    std::hint::black_box(vec![0u8; 1]);
    assert_eq!(allocations(), probe + 1, "the counter counts");
    let before = allocations();
    for _ in 0..100 {
        run();
    }
    assert_eq!(allocations() - before, 0, "the call path allocated");
}
