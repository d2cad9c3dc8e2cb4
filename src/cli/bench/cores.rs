//! A core list flag (`2,3`, `2-5`) for the bench subcommands.

use rafi::bench::cpus::parse_cpu_list;

/// A list of cores as one flag value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreArg(pub Vec<usize>);

pub fn parse_core_list(s: &str) -> Result<CoreArg, String> {
    parse_cpu_list(s)
        .filter(|c| !c.is_empty())
        .map(CoreArg)
        .ok_or_else(|| format!("'{s}' is not a core list (e.g. 1,2 or 1-4)"))
}
