//! The client half of `scripts/demo.sh`: allocates workers of a running `rafi executor`
//! (shm fabric) that loaded the C example libraries, invokes real functions and prints
//! what happened.
//!
//! ```sh
//! rafi executor --fabric shm --cores 1 --library libecho.so --library libblackscholes.so \
//!     --library libmatmul.so &
//! cargo run --release --example demo -- 127.0.0.1:7700
//! ```

use std::time::{Duration, Instant};

use rafi::client::{Allocation, AllocationOptions};
use rafi::fabric::{self, Fabric, FabricConfig, FabricKind, FabricUser};
use rafi::protocol::SlotGeometry;

fn main() {
    let executor = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7700".into());
    let workers = std::env::args()
        .nth(2)
        .and_then(|w| w.parse().ok())
        .unwrap_or(1);
    let config = FabricConfig::new(FabricKind::Shm);
    match fabric::open(&config, Demo { executor, workers }) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("demo: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("demo: opening the shm fabric: {e}");
            std::process::exit(1);
        }
    }
}

struct Demo {
    executor: String,
    workers: usize,
}

impl FabricUser for Demo {
    type Output = Result<(), String>;

    fn run<F: Fabric>(self, fabric: F) -> Result<(), String> {
        let functions = ["echo", "blackscholes", "matmul", "rafi.noop"];
        let started = Instant::now();
        let mut a = Allocation::connect(
            fabric,
            self.executor.as_str(),
            &functions,
            AllocationOptions {
                client_name: "demo".into(),
                workers: self.workers,
                geometry: SlotGeometry::new(8, 1 << 20).map_err(|e| e.to_string())?,
                ..AllocationOptions::default()
            },
        )
        .map_err(|e| {
            format!(
                "allocating {} worker(s) of {}: {e}",
                self.workers, self.executor
            )
        })?;
        println!(
            "allocated {} worker(s) of the executor at {} in {:.1} ms: functions {:?}",
            a.workers(),
            self.executor,
            started.elapsed().as_secs_f64() * 1e3,
            functions
        );

        // echo (C): the bytes come back.
        let out = a
            .invoke("echo", b"hello from rafi")
            .map_err(|e| e.to_string())?;
        println!(
            "echo(\"hello from rafi\") = {:?}",
            String::from_utf8_lossy(&out)
        );

        // Black-Scholes (C) on a batch of options, checked against a local computation.
        let n = 2000;
        let (input, expected) = option_batch(n);
        let t0 = Instant::now();
        let out = a
            .invoke("blackscholes", &input)
            .map_err(|e| e.to_string())?;
        let took = t0.elapsed();
        let prices: Vec<f64> = out
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let worst = prices
            .iter()
            .zip(&expected)
            .map(|(p, e)| ((p - e) / e).abs())
            .fold(0.0f64, f64::max);
        println!(
            "blackscholes: {n} options ({} KiB in, {} KiB out) priced remotely in {:.1} us; \
             first call {:.4}, worst relative error vs local {worst:.1e}",
            input.len() / 1024,
            out.len() / 1024,
            took.as_secs_f64() * 1e6,
            prices[0]
        );
        if prices.len() != n || worst > 1e-9 {
            return Err("Black-Scholes results differ from the local computation".into());
        }

        // matmul (C): a 32x32 tile of small integers, exact.
        let m = 32;
        let (input, expected) = matmul_tile(m);
        let out = a.invoke("matmul", &input).map_err(|e| e.to_string())?;
        let product: Vec<f64> = out
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        println!(
            "matmul: {m}x{m} tile, C[0][0] = {}, C[{l}][{l}] = {}, exact: {}",
            product[0],
            product[m * m - 1],
            product == expected,
            l = m - 1
        );
        if product != expected {
            return Err("matmul results differ from the local computation".into());
        }

        // Errors are statuses, and the worker keeps serving.
        match a.invoke("blackscholes", b"not an option batch") {
            Err(e) => println!("blackscholes(garbage) -> error, as it should: {e}"),
            Ok(_) => return Err("garbage input was accepted".into()),
        }

        // Fan-out: many small invocations over every worker, pipelined.
        let echo = a.function("echo").map_err(|e| e.to_string())?;
        let inputs: Vec<[u8; 8]> = (0..20_000u64).map(u64::to_le_bytes).collect();
        let mut ok = 0;
        let t0 = Instant::now();
        a.invoke_many(echo, inputs.iter().map(|i| &i[..]), |i, r| {
            if r.is_ok_and(|out| out == inputs[i]) {
                ok += 1;
            }
        })
        .map_err(|e| e.to_string())?;
        let took = t0.elapsed();
        println!(
            "fan-out: {ok} of {} echo invocations correct, {:.2} M invocations/s",
            inputs.len(),
            inputs.len() as f64 / took.as_secs_f64() / 1e6
        );

        // Latency of one blocking no-op invocation, 64 B in.
        let noop = a.function("rafi.noop").map_err(|e| e.to_string())?;
        let mut samples = Vec::with_capacity(20_000);
        let mut sink = [0u8; 64];
        for i in 0..30_000 {
            let t0 = Instant::now();
            a.invoke_into(noop, &[7u8; 64], &mut sink)
                .map_err(|e| e.to_string())?;
            if i >= 10_000 {
                samples.push(t0.elapsed());
            }
        }
        samples.sort();
        let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        println!(
            "rafi.noop, 64 B in: p50 {} ns, p99 {} ns over {} calls",
            nanos(pct(0.5)),
            nanos(pct(0.99)),
            samples.len()
        );
        Ok(())
    }
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos()
}

/// `n` options in the layout of examples/functions/c/blackscholes.c, and their prices.
fn option_batch(n: usize) -> (Vec<u8>, Vec<f64>) {
    let s: Vec<f64> = (0..n).map(|i| 80.0 + (i % 40) as f64).collect();
    let k: Vec<f64> = (0..n).map(|i| 90.0 + (i % 25) as f64).collect();
    let t: Vec<f64> = (0..n).map(|i| 0.25 + (i % 8) as f64 * 0.25).collect();
    let r: Vec<f64> = (0..n).map(|i| 0.01 + (i % 5) as f64 * 0.005).collect();
    let v: Vec<f64> = (0..n).map(|i| 0.1 + (i % 10) as f64 * 0.03).collect();
    let mut input = (n as u64).to_le_bytes().to_vec();
    for column in [&s, &k, &t, &r, &v] {
        for x in column.iter() {
            input.extend_from_slice(&x.to_le_bytes());
        }
    }
    let expected = (0..n)
        .map(|i| call_price(s[i], k[i], t[i], r[i], v[i]))
        .collect();
    (input, expected)
}

fn call_price(s: f64, k: f64, t: f64, r: f64, sigma: f64) -> f64 {
    let cdf = |x: f64| 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
    let d1 = ((s / k).ln() + (r + 0.5 * sigma * sigma) * t) / (sigma * t.sqrt());
    let d2 = d1 - sigma * t.sqrt();
    s * cdf(d1) - k * (-r * t).exp() * cdf(d2)
}

/// Two `m`x`m` matrices in the layout of examples/functions/c/matmul.c, and their product.
fn matmul_tile(m: usize) -> (Vec<u8>, Vec<f64>) {
    let a: Vec<f64> = (0..m * m).map(|i| (i % 7) as f64).collect();
    let b: Vec<f64> = (0..m * m).map(|i| (i % 5) as f64 - 2.0).collect();
    let mut input = (m as u64).to_le_bytes().to_vec();
    for x in a.iter().chain(&b) {
        input.extend_from_slice(&x.to_le_bytes());
    }
    let mut c = vec![0.0; m * m];
    for i in 0..m {
        for k in 0..m {
            for j in 0..m {
                c[i * m + j] += a[i * m + k] * b[k * m + j];
            }
        }
    }
    (input, c)
}
