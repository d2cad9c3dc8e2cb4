//! Example rafi function library in Rust: the same functions as the C examples beside it,
//! exported with [`rafi_function::export!`].
//!
//! | name | kind | input | output |
//! |---|---|---|---|
//! | `noop` | raw | anything | nothing |
//! | `echo` | raw | bytes | the same bytes |
//! | `blackscholes` | typed | [`Options`] | [`Prices`] (European call prices) |
//! | `matmul` | typed | [`Tile`] (two n×n matrices) | [`Product`] (their product) |
//! | `panic` | raw | anything | panics: shows that a panic becomes `ERR_PANIC` |
//!
//! Build with `cargo build -p rafi-example-functions --release`; the library is
//! `target/release/librafi_example_functions.so`. Clients use the types here (this crate
//! is also an rlib) with [`rafi_function::encode`] and [`rafi_function::decode`].
// No unsafe code here; the `export!` invocation at the end expands to the ABI symbols
// (`#[no_mangle]`, `unsafe extern "C"` wrappers), whose unsafe code is rafi-function's.

use rafi_function::abi::{ERR_INVALID_INPUT, ERR_OUTPUT_TOO_SMALL};
use rkyv::{Archive, Serialize};

/// A batch of European options, one per index: five arrays of the same length.
#[derive(Archive, Serialize, Clone, Debug, PartialEq)]
pub struct Options {
    /// Spot price of the underlying, S.
    pub spot: Vec<f64>,
    /// Strike price, K.
    pub strike: Vec<f64>,
    /// Time to expiry in years, T.
    pub time: Vec<f64>,
    /// Risk-free interest rate (continuous), r.
    pub rate: Vec<f64>,
    /// Volatility, σ.
    pub volatility: Vec<f64>,
}

/// Call prices of a batch, in the batch's order.
#[derive(Archive, Serialize, Clone, Debug, PartialEq)]
pub struct Prices {
    /// Price of each call.
    pub call: Vec<f64>,
}

/// A tile to multiply: two `n`×`n` row-major matrices.
#[derive(Archive, Serialize, Clone, Debug, PartialEq)]
pub struct Tile {
    /// Rows (and columns) of each matrix.
    pub n: u32,
    /// Left operand, `n * n` values, row-major.
    pub a: Vec<f64>,
    /// Right operand, `n * n` values, row-major.
    pub b: Vec<f64>,
}

/// The product of a [`Tile`]'s matrices.
#[derive(Archive, Serialize, Clone, Debug, PartialEq)]
pub struct Product {
    /// Rows (and columns).
    pub n: u32,
    /// `a × b`, `n * n` values, row-major.
    pub c: Vec<f64>,
}

/// The standard normal cumulative distribution function.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// The Black-Scholes price of one European call (the formula the C example uses too).
pub fn call_price(s: f64, k: f64, t: f64, r: f64, sigma: f64) -> f64 {
    let sqrt_t = t.sqrt();
    let d1 = ((s / k).ln() + (r + 0.5 * sigma * sigma) * t) / (sigma * sqrt_t);
    let d2 = d1 - sigma * sqrt_t;
    s * normal_cdf(d1) - k * (-r * t).exp() * normal_cdf(d2)
}

/// Prices a batch; the five arrays must have the same length.
///
/// # Errors
/// `ERR_INVALID_INPUT` when the arrays differ in length.
pub fn price_batch(o: &ArchivedOptions) -> Result<Prices, i64> {
    let n = o.spot.len();
    if [&o.strike, &o.time, &o.rate, &o.volatility]
        .iter()
        .any(|v| v.len() != n)
    {
        return Err(ERR_INVALID_INPUT);
    }
    let call = (0..n)
        .map(|i| {
            call_price(
                o.spot[i].to_native(),
                o.strike[i].to_native(),
                o.time[i].to_native(),
                o.rate[i].to_native(),
                o.volatility[i].to_native(),
            )
        })
        .collect();
    Ok(Prices { call })
}

/// Multiplies a tile's matrices.
///
/// # Errors
/// `ERR_INVALID_INPUT` when `a` or `b` does not hold `n * n` values.
pub fn multiply(t: &ArchivedTile) -> Result<Product, i64> {
    let n = t.n.to_native() as usize;
    let nn = n.checked_mul(n).ok_or(ERR_INVALID_INPUT)?;
    if t.a.len() != nn || t.b.len() != nn {
        return Err(ERR_INVALID_INPUT);
    }
    let mut c = vec![0.0; nn];
    for i in 0..n {
        for k in 0..n {
            let aik = t.a[i * n + k].to_native();
            for j in 0..n {
                c[i * n + j] += aik * t.b[k * n + j].to_native();
            }
        }
    }
    Ok(Product { n: n as u32, c })
}

/// Copies the input to the output.
///
/// # Errors
/// `ERR_OUTPUT_TOO_SMALL` when the output is shorter than the input.
pub fn echo(input: &[u8], output: &mut [u8]) -> Result<usize, i64> {
    output
        .get_mut(..input.len())
        .ok_or(ERR_OUTPUT_TOO_SMALL)?
        .copy_from_slice(input);
    Ok(input.len())
}

/// Does nothing: the smallest invocation.
///
/// # Errors
/// Never.
pub fn noop(_input: &[u8], _output: &mut [u8]) -> Result<usize, i64> {
    Ok(0)
}

/// Always panics (a demonstration: the wrapper returns `ERR_PANIC`, the caller survives).
///
/// # Errors
/// Never returns.
pub fn always_panic(_input: &[u8], _output: &mut [u8]) -> Result<usize, i64> {
    panic!("this function always panics")
}

rafi_function::export! {
    "noop" => raw noop,
    "echo" => raw echo,
    "blackscholes" => fallible price_batch,
    "matmul" => fallible multiply,
    "panic" => raw always_panic,
}
