//! The measuring loop shared by the blocking baselines: warm-up, then timed round trips,
//! each reply checked after its timer stops.

use std::time::Instant;

use rafi::bench::LatencyRecorder;

/// One kind of round trip, driven by [`measure`].
pub trait RoundTrip {
    /// The error of a failed exchange or check.
    type Error;

    /// Readies round `round`'s request (stamps the payload); not timed.
    fn prepare(&mut self, round: u64);
    /// Sends the request and waits for the whole reply: the timed part.
    fn exchange(&mut self) -> Result<(), Self::Error>;
    /// Checks the reply of round `round` against its request; not timed.
    fn check(&mut self, round: u64) -> Result<(), Self::Error>;
}

/// Runs `warmup` untimed and then `iters` timed round trips, checking every reply (warm-up
/// included). Timed with [`Instant`], as rafi's own benchmarks are.
///
/// # Errors
/// The first failed exchange or check.
pub fn measure<R: RoundTrip>(
    trip: &mut R,
    iters: u64,
    warmup: u64,
) -> Result<LatencyRecorder, R::Error> {
    let mut recorder = LatencyRecorder::new();
    for round in 0..warmup + iters {
        trip.prepare(round);
        let t0 = Instant::now();
        trip.exchange()?;
        let elapsed = t0.elapsed();
        trip.check(round)?;
        if round >= warmup {
            recorder.record(elapsed);
        }
    }
    Ok(recorder)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting {
        exchanges: u64,
        fail_at: Option<u64>,
        round: u64,
    }

    impl RoundTrip for Counting {
        type Error = String;
        fn prepare(&mut self, round: u64) {
            self.round = round;
        }
        fn exchange(&mut self) -> Result<(), String> {
            self.exchanges += 1;
            Ok(())
        }
        fn check(&mut self, round: u64) -> Result<(), String> {
            match self.fail_at {
                Some(r) if r == round => Err(format!("bad {round}")),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn warmup_is_not_recorded_but_checked() {
        let mut t = Counting {
            exchanges: 0,
            fail_at: None,
            round: 0,
        };
        let rec = measure(&mut t, 5, 3).unwrap();
        assert_eq!((rec.len(), t.exchanges, t.round), (5, 8, 7));
        let mut t = Counting {
            exchanges: 0,
            fail_at: Some(1),
            round: 0,
        };
        assert_eq!(measure(&mut t, 5, 3).unwrap_err(), "bad 1");
    }
}
