//! The demo workload of `rafi up --demo`: real functions through a leased allocation, each
//! result checked against a local computation, and what happened printed.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rafi::client::Allocation;
use rafi::fabric::Fabric;

/// Runs the demo on `a`. With `examples` the allocation holds the C example functions
/// (`echo`, `blackscholes`, `matmul`), else only the built-ins. Returns how many
/// invocations ran a function (what the executor bills).
pub fn run<F: Fabric>(a: &mut Allocation<F>, examples: bool) -> anyhow::Result<u64> {
    let mut calls = 0u64;
    let echo = if examples { "echo" } else { "rafi.echo" };
    let out = a.invoke(echo, b"hello from rafi")?;
    calls += 1;
    println!(
        "  {echo}(\"hello from rafi\") = {:?}",
        String::from_utf8_lossy(&out)
    );

    if examples {
        // Black-Scholes (C) on a batch of options.
        let n = 2000;
        let (input, expected) = option_batch(n);
        let t0 = Instant::now();
        let out = a.invoke("blackscholes", &input)?;
        let took = t0.elapsed();
        calls += 1;
        let prices = f64s(&out);
        let worst = prices
            .iter()
            .zip(&expected)
            .map(|(p, e)| ((p - e) / e).abs())
            .fold(0.0f64, f64::max);
        println!(
            "  blackscholes: {n} options ({} KiB in, {} KiB out) priced remotely in {:.0} us, \
             worst relative error against a local computation {worst:.1e}",
            input.len() / 1024,
            out.len() / 1024,
            took.as_secs_f64() * 1e6,
        );
        if prices.len() != n || worst > 1e-9 {
            bail!("Black-Scholes results differ from the local computation");
        }
        // matmul (C): a 32x32 tile, exact.
        let m = 32;
        let (input, expected) = matmul_tile(m);
        let product = f64s(&a.invoke("matmul", &input)?);
        calls += 1;
        println!(
            "  matmul: {m}x{m} tile, C[0][0] = {}, exact: {}",
            product[0],
            product == expected
        );
        if product != expected {
            bail!("matmul results differ from the local computation");
        }
        // An error is a status; the worker goes on.
        // The function runs (and refuses the input): a billed invocation too.
        calls += 1;
        match a.invoke("blackscholes", b"not an option batch") {
            Err(e) => println!("  blackscholes(garbage) -> {e} (the worker keeps serving)"),
            Ok(_) => bail!("garbage input was accepted"),
        }
    }

    // Fan-out: many small invocations over every worker, pipelined.
    let f = a.function(echo)?;
    let inputs: Vec<[u8; 8]> = (0..20_000u64).map(u64::to_le_bytes).collect();
    let mut ok = 0;
    let t0 = Instant::now();
    a.invoke_many(f, inputs.iter().map(|i| &i[..]), |i, r| {
        if r.is_ok_and(|out| out == inputs[i]) {
            ok += 1;
        }
    })?;
    let took = t0.elapsed();
    calls += inputs.len() as u64;
    println!(
        "  fan-out: {ok} of {} invocations correct over {} worker(s), {:.2} M invocations/s",
        inputs.len(),
        a.workers(),
        inputs.len() as f64 / took.as_secs_f64() / 1e6
    );

    // Latency of a blocking no-op.
    let noop = a.function("rafi.noop")?;
    let mut samples = Vec::with_capacity(20_000);
    let mut sink = [0u8; 64];
    for i in 0..30_000 {
        let t0 = Instant::now();
        a.invoke_into(noop, &[7u8; 64], &mut sink)
            .context("timing rafi.noop")?;
        if i >= 10_000 {
            samples.push(t0.elapsed());
        }
    }
    calls += 30_000;
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "  rafi.noop, 64 B in: p50 {} ns, p99 {} ns over {} calls",
        nanos(pct(0.5)),
        nanos(pct(0.99)),
        samples.len()
    );
    Ok(calls)
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos()
}

fn f64s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
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
