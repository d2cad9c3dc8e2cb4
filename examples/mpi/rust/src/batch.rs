//! Batches of European options: a reproducible generator, and pricing on local threads
//! with the same formula the function library runs remotely.

use std::ops::Range;

use rafi_example_functions::{call_price, OptionsView};

/// Options as five parallel arrays (the layout of the function's input).
#[derive(Clone, Debug, Default)]
pub struct OptionBatch {
    pub spot: Vec<f64>,
    pub strike: Vec<f64>,
    pub time: Vec<f64>,
    pub rate: Vec<f64>,
    pub volatility: Vec<f64>,
}

impl OptionBatch {
    /// `n` options with parameters drawn from `seed` (the same seed gives the same batch):
    /// spot and strike 10–200, expiry 0.1–3 years, rate 0–10 %, volatility 5–60 %.
    pub fn generate(n: usize, seed: u64) -> Self {
        let mut rng = SplitMix64(seed);
        let mut b = OptionBatch {
            spot: Vec::with_capacity(n),
            strike: Vec::with_capacity(n),
            time: Vec::with_capacity(n),
            rate: Vec::with_capacity(n),
            volatility: Vec::with_capacity(n),
        };
        for _ in 0..n {
            b.spot.push(rng.uniform(10.0, 200.0));
            b.strike.push(rng.uniform(10.0, 200.0));
            b.time.push(rng.uniform(0.1, 3.0));
            b.rate.push(rng.uniform(0.0, 0.1));
            b.volatility.push(rng.uniform(0.05, 0.6));
        }
        b
    }

    pub fn len(&self) -> usize {
        self.spot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spot.is_empty()
    }

    /// The options of `range`, borrowed, archived as the function's input type (no copy
    /// until they are serialized, straight into a request slot).
    pub fn view(&self, range: Range<usize>) -> OptionsView<'_> {
        OptionsView {
            spot: &self.spot[range.clone()],
            strike: &self.strike[range.clone()],
            time: &self.time[range.clone()],
            rate: &self.rate[range.clone()],
            volatility: &self.volatility[range],
        }
    }

    /// Prices the options of `range` into `out` (as long as the range) on this thread.
    pub fn price_into(&self, range: Range<usize>, out: &mut [f64]) {
        debug_assert_eq!(range.len(), out.len());
        for (price, i) in out.iter_mut().zip(range) {
            *price = call_price(
                self.spot[i],
                self.strike[i],
                self.time[i],
                self.rate[i],
                self.volatility[i],
            );
        }
    }

    /// Prices the options of `range` into `out` on `threads` threads (at least one), each
    /// an equal contiguous share.
    pub fn price_parallel(&self, range: Range<usize>, out: &mut [f64], threads: usize) {
        let share = range.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|s| {
            for (k, part) in out.chunks_mut(share).enumerate() {
                let start = range.start + k * share;
                s.spawn(move || self.price_into(start..start + part.len(), part));
            }
        });
    }
}

/// A small, fast, reproducible generator (SplitMix64); good enough for test data.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self, low: f64, high: f64) -> f64 {
        // 53 random bits: a uniform double in [0, 1).
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        low + unit * (high - low)
    }
}

/// How far `prices` are from `reference`: the largest relative difference (relative to
/// max(1, |reference|)), and the first index beyond `tolerance` (a NaN on either side is
/// beyond any tolerance).
pub fn compare(prices: &[f64], reference: &[f64], tolerance: f64) -> Comparison {
    let mut max_error = 0.0f64;
    let mut first_mismatch = None;
    if prices.len() != reference.len() {
        first_mismatch = Some(prices.len().min(reference.len()));
    }
    for (i, (p, r)) in prices.iter().zip(reference).enumerate() {
        let error = (p - r).abs() / r.abs().max(1.0);
        if error.is_nan() || error > tolerance {
            first_mismatch.get_or_insert(i);
        }
        if error > max_error || error.is_nan() {
            max_error = if error.is_nan() { f64::INFINITY } else { error };
        }
    }
    Comparison {
        max_error,
        first_mismatch,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison {
    pub max_error: f64,
    pub first_mismatch: Option<usize>,
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.first_mismatch.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_batch_and_another_seed_another() {
        let a = OptionBatch::generate(100, 7);
        let b = OptionBatch::generate(100, 7);
        let c = OptionBatch::generate(100, 8);
        assert_eq!(a.spot, b.spot);
        assert_eq!(a.volatility, b.volatility);
        assert_ne!(a.spot, c.spot);
        assert!(a.spot.iter().all(|s| (10.0..200.0).contains(s)));
        assert!(a.time.iter().all(|t| (0.1..3.0).contains(t)));
    }

    #[test]
    fn parallel_pricing_matches_one_thread_for_any_thread_count() {
        let b = OptionBatch::generate(1001, 1);
        let mut one = vec![0.0; 900];
        b.price_into(50..950, &mut one);
        assert!(one.iter().all(|p| p.is_finite() && *p >= 0.0));
        for threads in [1, 2, 3, 7, 2000] {
            let mut many = vec![f64::NAN; 900];
            b.price_parallel(50..950, &mut many, threads);
            assert_eq!(one, many, "{threads} threads");
        }
    }

    #[test]
    fn compare_finds_the_first_mismatch_and_nan() {
        let r = [1.0, 2.0, 300.0];
        assert!(compare(&r, &r, 0.0).ok());
        let c = compare(&[1.0, 2.0 + 1e-6, 300.0 * (1.0 + 1e-12)], &r, 1e-9);
        assert_eq!(c.first_mismatch, Some(1));
        assert!((c.max_error - 0.5e-6).abs() < 1e-12); // relative to |2.0|
        assert_eq!(
            compare(&[1.0, f64::NAN, 300.0], &r, 1.0).first_mismatch,
            Some(1)
        );
        assert_eq!(compare(&[1.0], &r, 1.0).first_mismatch, Some(1));
    }
}
