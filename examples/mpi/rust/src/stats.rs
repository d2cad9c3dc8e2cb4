//! Summaries of repeated measurements.

use std::time::Duration;

/// The median of `samples` in seconds (the lower middle one of an even count); 0 when
/// there are none.
pub fn median_secs(samples: &[Duration]) -> f64 {
    let mut s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n => s[(n - 1) / 2],
    }
}

/// `a / b`, or 0 when `b` is not positive (nothing measured).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// How much of the shorter of two activities was hidden by running them at once:
/// (alone_a + alone_b − together) / min(alone_a, alone_b). 1 is perfect overlap, 0 none;
/// below 0, running them together cost more than one after the other.
pub fn overlap_fraction(alone_a: f64, alone_b: f64, together: f64) -> f64 {
    ratio(alone_a + alone_b - together, alone_a.min(alone_b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median_secs(&ms(&[30, 10, 20])), 0.020);
        assert_eq!(median_secs(&ms(&[40, 10, 30, 20])), 0.020);
        assert_eq!(median_secs(&[]), 0.0);
    }

    #[test]
    fn overlap_fraction_spans_none_to_full() {
        assert_eq!(overlap_fraction(2.0, 1.0, 2.0), 1.0);
        assert_eq!(overlap_fraction(2.0, 1.0, 3.0), 0.0);
        assert_eq!(overlap_fraction(2.0, 1.0, 2.5), 0.5);
        assert!(overlap_fraction(2.0, 1.0, 4.0) < 0.0);
        assert_eq!(overlap_fraction(0.0, 1.0, 1.0), 0.0);
    }
}
