//! Which cores the two processes of a benchmark run on, and pinning to them.
//!
//! Each side pins its whole process before it opens the fabric, so the fabric's helper
//! threads (the shm agent, the tcp progress thread) share that core, as the ping-pong of
//! `rdma-mock/examples/pingpong.rs` does by default.

use std::str::FromStr;

/// Pinning or choosing cores failed.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("pinning the {who} to cpu {cpu} (cpus online: {online}; see --cpus)")]
    Pin {
        who: &'static str,
        cpu: usize,
        online: String,
        source: std::io::Error,
    },
    #[error("cpu {cpu} is not available to this process (it may use cpus {allowed}; see --cpus)")]
    NotAllowed { cpu: usize, allowed: String },
    #[error("'{0}' is not a pair of cpu numbers like 0,1")]
    Parse(String),
}

/// The cores of the measuring side (`client`) and of its peer (`server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuPair {
    pub client: usize,
    pub server: usize,
}

impl CpuPair {
    /// The first two cores this process may run on (its affinity list, which `taskset` and
    /// cpusets narrow); the same core twice when only one is allowed, `0,1` when the list
    /// cannot be read.
    pub fn default_for_this_process() -> Self {
        match allowed_cpus().as_deref() {
            Some([a, b, ..]) => Self {
                client: *a,
                server: *b,
            },
            Some([a]) => Self {
                client: *a,
                server: *a,
            },
            _ => Self {
                client: 0,
                server: 1,
            },
        }
    }

    /// Whether both sides share one core (latencies then measure the scheduler).
    pub fn shared(&self) -> bool {
        self.client == self.server
    }
}

impl FromStr for CpuPair {
    type Err = CpuError;

    /// `A,B`: the client on core A, the peer on core B.
    fn from_str(s: &str) -> Result<Self, CpuError> {
        let bad = || CpuError::Parse(s.into());
        let (a, b) = s.split_once(',').ok_or_else(bad)?;
        Ok(Self {
            client: a.trim().parse().map_err(|_| bad())?,
            server: b.trim().parse().map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for CpuPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.client, self.server)
    }
}

/// The cores this process may run on, from `Cpus_allowed_list` in `/proc/self/status`;
/// `None` when it cannot be read.
pub fn allowed_cpus() -> Option<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(list.trim())
}

/// Parses a kernel cpu list such as `0-3,8,10-11`.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Pins the calling thread (and so the threads it starts afterwards) to `cpu`; `who` names
/// the side in the error.
///
/// # Errors
/// When the core does not exist or is not allowed to this process.
pub fn pin(cpu: usize, who: &'static str) -> Result<(), CpuError> {
    rdma_mock::pin_current_thread(cpu).map_err(|source| CpuError::Pin {
        who,
        cpu,
        online: std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into()),
        source,
    })
}

/// Checks that both cores are among those this process may use (when that can be read),
/// so that a bad `--cpus` fails before any process starts.
///
/// # Errors
/// [`CpuError::NotAllowed`] naming the first core that is not.
pub fn check_allowed(pair: CpuPair) -> Result<(), CpuError> {
    let Some(allowed) = allowed_cpus() else {
        return Ok(());
    };
    for cpu in [pair.client, pair.server] {
        if !allowed.contains(&cpu) {
            return Err(CpuError::NotAllowed {
                cpu,
                allowed: format_cpu_list(&allowed),
            });
        }
    }
    Ok(())
}

/// Formats cores as a kernel cpu list (`0-3,8`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}-{}", sorted[i], sorted[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert!(allowed_cpus().is_some_and(|c| !c.is_empty()));
        assert_eq!(format_cpu_list(&[8, 0, 1, 2, 3, 10]), "0-3,8,10");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn cpu_pairs() {
        let p: CpuPair = "2, 5".parse().unwrap();
        assert_eq!((p.client, p.server), (2, 5));
        assert_eq!(p.to_string(), "2,5");
        assert!("2".parse::<CpuPair>().is_err());
        assert!("a,b".parse::<CpuPair>().is_err());
        assert!("3,3".parse::<CpuPair>().unwrap().shared());
    }
}
