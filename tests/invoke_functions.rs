//! Real function libraries through the whole invocation path: an executor with the C
//! examples and the Rust example cdylib (typed with rkyv), clients invoking them with raw
//! bytes and with rkyv archives viewed in place, a panicking Rust function, and libraries
//! shipped by the client at allocation. Over shm and tcp.

#[path = "support/libraries.rs"]
mod libraries;

use std::path::Path;
use std::sync::Arc;

use libraries::{c_example, rust_example};
use rafi::client::{AllocateError, Allocation, AllocationOptions, InvokeError, ShippedLibrary};
use rafi::executor::{Executor, ExecutorConfig, Polling};
use rafi::fabric::Fabric;
use rafi::function::{FunctionLibrary, FunctionTable};
use rafi::protocol::SlotGeometry;
use rafi_example_functions::{Options, Prices, Product, Tile};
use rkyv::Archived;

fn open_shm() -> rdma_mock::Device {
    rdma_mock::Device::open(rdma_mock::DeviceConfig::new(rdma_mock::Fabric::Shm)).expect("shm")
}

fn open_tcp() -> rdma_mock::Device {
    rdma_mock::Device::open(rdma_mock::DeviceConfig::new(rdma_mock::Fabric::Tcp)).expect("tcp")
}

macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod shm { $( #[test] fn $name() { super::$name(super::open_shm) } )* }
        mod tcp { $( #[test] fn $name() { super::$name(super::open_tcp) } )* }
    };
}

for_each_backend!(
    c_libraries_by_path,
    typed_rust_functions_with_archives_in_place,
    shipped_libraries,
);

/// An executor whose table holds the built-ins and `libraries`.
fn executor_with<F: Fabric>(
    open: fn() -> F,
    libraries: &[&Path],
    accept_libraries: bool,
) -> Executor<F, FunctionTable> {
    let mut table = FunctionTable::with_builtins();
    for path in libraries {
        table
            .add_library(FunctionLibrary::open(path).expect("library"))
            .expect("add library");
    }
    let mut config = ExecutorConfig::new(1);
    config.polling = Polling::Hot;
    config.accept_libraries = accept_libraries;
    Executor::start(
        open(),
        "127.0.0.1:0".parse().unwrap(),
        config,
        Arc::new(table),
    )
    .expect("executor")
}

fn options() -> AllocationOptions {
    AllocationOptions {
        geometry: SlotGeometry::new(4, 1 << 20).unwrap(),
        ..AllocationOptions::default()
    }
}

fn c_libraries_by_path<F: Fabric>(open: fn() -> F) {
    let ex = executor_with(
        open,
        &[
            c_example("echo"),
            c_example("blackscholes"),
            c_example("matmul"),
        ],
        false,
    );
    let mut a = Allocation::connect(
        open(),
        ex.address(),
        &["echo", "noop", "blackscholes", "matmul"],
        options(),
    )
    .unwrap();
    assert_eq!(a.invoke("echo", b"from C").unwrap(), b"from C");
    assert_eq!(a.invoke("noop", b"ignored").unwrap(), b"");
    // One option, S=100 K=100 T=1 r=5% sigma=20%: the textbook price 10.4506.
    let mut input = 1u64.to_le_bytes().to_vec();
    for x in [100.0f64, 100.0, 1.0, 0.05, 0.2] {
        input.extend_from_slice(&x.to_le_bytes());
    }
    let out = a.invoke("blackscholes", &input).unwrap();
    let price = f64::from_le_bytes(out[..8].try_into().unwrap());
    assert!((price - 10.450_583_572_185_565).abs() < 1e-9, "{price}");
    // A malformed batch is the function's refusal, and the worker goes on.
    assert_eq!(
        a.invoke("blackscholes", b"short"),
        Err(InvokeError::ValidationFailed)
    );
    // 2x2 matmul.
    let mut input = 2u64.to_le_bytes().to_vec();
    for x in [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0] {
        input.extend_from_slice(&x.to_le_bytes());
    }
    let out = a.invoke("matmul", &input).unwrap();
    let c: Vec<f64> = out
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
}

fn typed_rust_functions_with_archives_in_place<F: Fabric>(open: fn() -> F) {
    let ex = executor_with(open, &[rust_example()], false);
    let mut a = Allocation::connect(
        open(),
        ex.address(),
        &["blackscholes", "matmul", "panic", "echo"],
        options(),
    )
    .unwrap();
    let blackscholes = a.function("blackscholes").unwrap();
    let n = 500;
    let options = Options {
        spot: (0..n).map(|i| 80.0 + (i % 40) as f64).collect(),
        strike: vec![100.0; n],
        time: (0..n).map(|i| 0.25 + (i % 4) as f64 * 0.25).collect(),
        rate: vec![0.03; n],
        volatility: (0..n).map(|i| 0.1 + (i % 10) as f64 * 0.02).collect(),
    };
    {
        let view = a.invoke_typed(blackscholes, &options).unwrap();
        let prices = view.archived::<Archived<Prices>>().unwrap();
        assert_eq!(prices.call.len(), n);
        for i in 0..n {
            let expected = rafi_example_functions::call_price(
                options.spot[i],
                options.strike[i],
                options.time[i],
                options.rate[i],
                options.volatility[i],
            );
            let got = prices.call[i].to_native();
            assert!(((got - expected) / expected).abs() < 1e-12, "option {i}");
        }
        // The wrong archive type is refused in place, not misread.
        assert!(view.archived::<Archived<Product>>().is_err());
    }
    let matmul = a.function("matmul").unwrap();
    let tile = Tile {
        n: 3,
        a: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        b: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    };
    {
        let view = a.invoke_typed(matmul, &tile).unwrap();
        let product = view.archived::<Archived<Product>>().unwrap();
        assert_eq!(product.n.to_native(), 3);
        let c: Vec<f64> = product.c.iter().map(|x| x.to_native()).collect();
        assert_eq!(c, tile.a);
    }
    // Bytes that are not an archive of the input type are refused by bytecheck in the
    // executor before the function runs.
    assert_eq!(
        a.invoke("blackscholes", &[0xff; 40]),
        Err(InvokeError::ValidationFailed)
    );
    // A panicking Rust function is a status; the worker survives.
    assert_eq!(a.invoke("panic", b""), Err(InvokeError::FunctionPanicked));
    assert_eq!(a.invoke("echo", b"after").unwrap(), b"after");
}

fn shipped_libraries<F: Fabric>(open: fn() -> F) {
    let echo = ShippedLibrary::from_file(c_example("echo")).unwrap();
    let matmul = ShippedLibrary::from_file(c_example("matmul")).unwrap();
    // Refused unless the executor accepts shipped code, with a message that says so.
    let closed = executor_with(open, &[], false);
    let refused = Allocation::connect(
        open(),
        closed.address(),
        &["echo"],
        AllocationOptions {
            libraries: vec![echo.clone()],
            ..options()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&refused, AllocateError::Refused(_))
            && refused.to_string().contains("accept-libraries"),
        "{refused}"
    );
    // Accepted: the shipped functions are this allocation's, found before the built-ins.
    let open_ex = executor_with(open, &[], true);
    let mut a = Allocation::connect(
        open(),
        open_ex.address(),
        &["echo", "matmul", "rafi.echo"],
        AllocationOptions {
            libraries: vec![echo, matmul],
            ..options()
        },
    )
    .unwrap();
    assert_eq!(a.invoke("echo", b"shipped").unwrap(), b"shipped");
    assert_eq!(a.invoke("rafi.echo", b"built in").unwrap(), b"built in");
    let mut input = 1u64.to_le_bytes().to_vec();
    input.extend_from_slice(&3.0f64.to_le_bytes());
    input.extend_from_slice(&4.0f64.to_le_bytes());
    let out = a.invoke("matmul", &input).unwrap();
    assert_eq!(f64::from_le_bytes(out[..8].try_into().unwrap()), 12.0);
    // Another client of the same executor does not see them.
    let other = Allocation::connect(open(), open_ex.address(), &["echo"], options()).unwrap_err();
    assert!(matches!(other, AllocateError::Refused(_)), "{other}");
    // Garbage shipped as a library is refused with the loader's reason.
    let garbage = ShippedLibrary {
        name: "garbage.so".into(),
        bytes: vec![0u8; 100].into(),
    };
    let err = Allocation::connect(
        open(),
        open_ex.address(),
        &["echo"],
        AllocationOptions {
            libraries: vec![garbage],
            ..options()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("garbage.so"), "{err}");
}
