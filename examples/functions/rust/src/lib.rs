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
use rkyv::rancor::Fallible;
use rkyv::ser::{Allocator, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{munge::munge, Archive, Place, Serialize};

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

/// A batch of options borrowed from the caller's arrays, archived exactly as [`Options`]
/// (its archived type is [`ArchivedOptions`]): a client serializes it straight from its
/// own data into a request slot (`Allocation::invoke_many_with` with
/// [`rafi_function::encode`]) without first copying the arrays into an `Options`.
#[derive(Clone, Copy, Debug)]
pub struct OptionsView<'a> {
    pub spot: &'a [f64],
    pub strike: &'a [f64],
    pub time: &'a [f64],
    pub rate: &'a [f64],
    pub volatility: &'a [f64],
}

/// Where [`OptionsView`]'s five arrays were written.
pub struct OptionsViewResolver {
    spot: VecResolver,
    strike: VecResolver,
    time: VecResolver,
    rate: VecResolver,
    volatility: VecResolver,
}

impl Archive for OptionsView<'_> {
    type Archived = ArchivedOptions;
    type Resolver = OptionsViewResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        munge!(let ArchivedOptions { spot, strike, time, rate, volatility } = out);
        ArchivedVec::resolve_from_slice(self.spot, resolver.spot, spot);
        ArchivedVec::resolve_from_slice(self.strike, resolver.strike, strike);
        ArchivedVec::resolve_from_slice(self.time, resolver.time, time);
        ArchivedVec::resolve_from_slice(self.rate, resolver.rate, rate);
        ArchivedVec::resolve_from_slice(self.volatility, resolver.volatility, volatility);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for OptionsView<'_> {
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok(OptionsViewResolver {
            spot: ArchivedVec::serialize_from_slice(self.spot, s)?,
            strike: ArchivedVec::serialize_from_slice(self.strike, s)?,
            time: ArchivedVec::serialize_from_slice(self.time, s)?,
            rate: ArchivedVec::serialize_from_slice(self.rate, s)?,
            volatility: ArchivedVec::serialize_from_slice(self.volatility, s)?,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rkyv::util::AlignedVec;

    /// The same archive as the owned type, byte for byte, so the function (which checks
    /// and reads an `ArchivedOptions`) cannot tell them apart.
    #[test]
    fn an_options_view_archives_exactly_as_options() {
        let n = 1000;
        let column = |k: f64| (0..n).map(|i| k + i as f64 * 0.01).collect::<Vec<_>>();
        let owned = Options {
            spot: column(100.0),
            strike: column(95.0),
            time: column(0.5),
            rate: column(0.01),
            volatility: column(0.2),
        };
        let view = OptionsView {
            spot: &owned.spot,
            strike: &owned.strike,
            time: &owned.time,
            rate: &owned.rate,
            volatility: &owned.volatility,
        };
        let mut a = AlignedVec::<16>::with_capacity(64 << 10);
        a.resize(64 << 10, 0);
        let mut b = a.clone();
        let len_a = rafi_function::encode(&owned, &mut a).unwrap();
        let len_b = rafi_function::encode(&view, &mut b).unwrap();
        assert_eq!(a[..len_a], b[..len_b]);
        let archived = rafi_function::decode::<ArchivedOptions>(&b[..len_b]).unwrap();
        let prices = price_batch(archived).unwrap();
        assert_eq!(prices.call.len(), n);
        assert_eq!(
            prices.call[7],
            call_price(
                owned.spot[7],
                owned.strike[7],
                owned.time[7],
                0.01 + 0.07,
                0.2 + 0.07
            )
        );
    }
}
