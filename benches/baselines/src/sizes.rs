//! Payload sizes on the command line (`1,8,64,1K,64K,1M,4M`) and the default warm-up.

/// Largest payload the baselines send: 4 MiB, the largest size of rafi's benchmarks.
pub const MAX_SIZE: usize = 4 << 20;

/// Warm-up bytes each way are kept under this when the default warm-up is used, so that a
/// 4 MiB run does not spend minutes warming up.
const WARMUP_BYTE_BUDGET: u64 = 256 << 20;
/// The fewest warm-up round trips a size gets by default.
const MIN_WARMUP: u64 = 16;

/// A size that is not a byte count from 1 B to 4 MiB.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("'{0}' is not a size: expected a number of bytes, optionally with K or M (powers of 1024), e.g. 64, 1K, 4M")]
    Syntax(String),
    #[error("size {0} is out of range: sizes go from 1 B to 4M (4194304 B)")]
    Range(String),
    #[error("the size list is empty: give sizes like 1,8,64,1K")]
    Empty,
}

/// Parses one size: digits with an optional `K`/`KiB` or `M`/`MiB` suffix (case-insensitive).
///
/// # Errors
/// When it is not a number, or not within 1 B ..= 4 MiB.
pub fn parse_size(text: &str) -> Result<usize, SizeError> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let (digits, unit) = if let Some(d) = lower.strip_suffix("kib").or(lower.strip_suffix('k')) {
        (d, 1usize << 10)
    } else if let Some(d) = lower.strip_suffix("mib").or(lower.strip_suffix('m')) {
        (d, 1 << 20)
    } else {
        (lower.strip_suffix('b').unwrap_or(&lower), 1)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SizeError::Syntax(t.into()));
    }
    let n: usize = digits.parse().map_err(|_| SizeError::Range(t.into()))?;
    let bytes = n
        .checked_mul(unit)
        .ok_or_else(|| SizeError::Range(t.into()))?;
    if bytes == 0 || bytes > MAX_SIZE {
        return Err(SizeError::Range(t.into()));
    }
    Ok(bytes)
}

/// The sizes of one run, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeList(pub Vec<usize>);

impl SizeList {
    /// The largest size (buffers are allocated once for it).
    pub fn max(&self) -> usize {
        self.0.iter().copied().max().unwrap_or(1)
    }
}

impl std::str::FromStr for SizeList {
    type Err = SizeError;

    /// A comma-separated list of sizes, e.g. `1,8,64,1K,64K,1M,4M`.
    fn from_str(s: &str) -> Result<Self, SizeError> {
        let sizes = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(parse_size)
            .collect::<Result<Vec<_>, _>>()?;
        if sizes.is_empty() {
            return Err(SizeError::Empty);
        }
        Ok(Self(sizes))
    }
}

/// The warm-up of one size: `requested` if given, else the larger of `iters/10` and 1000,
/// lowered for large payloads so that warm-up moves at most 256 MiB each way (and at least
/// 16 round trips).
pub fn warmup_for(requested: Option<u64>, iters: u64, size: usize) -> u64 {
    if let Some(w) = requested {
        return w;
    }
    let wanted = (iters / 10).max(1000);
    let budget = (WARMUP_BYTE_BUDGET / size.max(1) as u64).max(MIN_WARMUP);
    wanted.min(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("1"), Ok(1));
        assert_eq!(parse_size("64B"), Ok(64));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert!(matches!(parse_size("0"), Err(SizeError::Range(_))));
        assert!(matches!(parse_size("5M"), Err(SizeError::Range(_))));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Range(_))
        ));
        assert!(matches!(parse_size("x"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("-1"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("K"), Err(SizeError::Syntax(_))));
    }

    #[test]
    fn size_lists() {
        let l: SizeList = "1,8,64,1K,64K,1M,4M".parse().unwrap();
        assert_eq!(l.0, vec![1, 8, 64, 1024, 65536, 1 << 20, 4 << 20]);
        assert_eq!(l.max(), 4 << 20);
        assert_eq!("".parse::<SizeList>(), Err(SizeError::Empty));
        assert!("64,abc".parse::<SizeList>().is_err());
    }

    #[test]
    fn default_warmup() {
        assert_eq!(warmup_for(Some(3), 100_000, 64), 3);
        assert_eq!(warmup_for(None, 100_000, 64), 10_000);
        assert_eq!(warmup_for(None, 50, 64), 1000);
        assert_eq!(warmup_for(None, 100_000, 4 << 20), 64);
        assert_eq!(warmup_for(None, 100_000, 1 << 20), 256);
    }
}
