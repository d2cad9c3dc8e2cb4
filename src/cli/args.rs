//! Flags that several subcommands share.

use clap::Args;
use rafi::bench::CpuPair;
use rafi::fabric::FabricKind;

/// Which fabric to use; the verbs device and GID index default to `RAFI_RDMA_DEVICE` and
/// `RAFI_RDMA_GID_INDEX`.
#[derive(Debug, Clone, Args)]
pub struct FabricArgs {
    /// Fabric: shm (processes of one host), tcp (hosts without RDMA) or verbs (InfiniBand,
    /// RoCE, soft-RoCE; needs a build with --features verbs).
    #[arg(long, value_parser = parse_fabric, default_value = "shm")]
    pub fabric: FabricKind,
    /// verbs: the RDMA device, as `ibv_devices` lists it [default: $RAFI_RDMA_DEVICE, else
    /// the first]. Ignored by shm and tcp.
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,
    /// verbs: the GID index [default: $RAFI_RDMA_GID_INDEX, else the first RoCE v2 IPv4
    /// GID]. Ignored by shm and tcp.
    #[arg(long, value_name = "N")]
    pub gid_index: Option<u8>,
}

fn parse_fabric(s: &str) -> Result<FabricKind, String> {
    s.parse()
}

/// Where the two processes run and how results are printed.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Cores of the measuring process and of its peer, e.g. 0,1 [default: the first two
    /// cores this process may use].
    #[arg(long, value_name = "A,B", value_parser = parse_cpus)]
    pub cpus: Option<CpuPair>,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_cpus(s: &str) -> Result<CpuPair, String> {
    s.parse().map_err(|e: rafi::bench::CpuError| e.to_string())
}

/// A byte count: digits with an optional unit K/KiB, M/MiB, G/GiB (powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size in bytes (e.g. 0, 64, 4K, 1MiB)"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown unit in '{s}' (use K, M or G)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("x").is_err());
        assert!(parse_size("5T").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
