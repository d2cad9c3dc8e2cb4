//! A cheap cycle counter for timing on the hot path, where even reading the clock may be a
//! system call (on some virtual machines `clock_gettime` leaves the vDSO).
//!
//! [`cycles`] reads the time-stamp counter on x86_64 (`rdtsc`: no system call, allowed
//! under seccomp strict mode) and falls back to nanoseconds since a process-wide epoch
//! through [`std::time::Instant`] elsewhere. Its unit is unspecified: callers convert it
//! to nanoseconds with a ratio they calibrate against `Instant` off the hot path. The
//! counter only ever moves forward on one core; across cores of a modern x86_64 (invariant,
//! synchronised TSC) it agrees closely enough for accounting, not for ordering events.

/// The current value of the cycle counter (see the module docs for its unit).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn cycles() -> u64 {
    // SAFETY: `rdtsc` exists on every x86_64 processor, reads a counter and touches no
    // memory; `_rdtsc` is only `unsafe` because it is an intrinsic.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The current value of the cycle counter: on this architecture, nanoseconds since the
/// first call in this process.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn cycles() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::cycles;

    #[test]
    fn moves_forward() {
        let a = cycles();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = cycles();
        assert!(b > a, "{a} then {b}");
    }
}
