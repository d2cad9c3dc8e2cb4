//! Benchmarks that the `rafi bench` command runs, as a library: the scenarios and the pieces
//! they share.
//!
//! | module | what |
//! |---|---|
//! | [`cold`] | cold starts: lease → spawn → connect → first result, on a cluster of this host |
//! | [`invoke`] | function invocations through the whole stack, against a `rafi executor` process |
//! | [`memory`] | leased remote memory: put/get against raw WRITE/READ, in one process |
//! | [`pingpong`] | raw fabric round trips (WRITE_WITH_IMM or SEND) between two processes, no rafi layer |
//! | [`report`] | latency samples → [`LatencyReport`]: one JSON line or one table row |
//! | [`control`] | re-executing this binary as the peer process, JSON-line control channel over its stdin/stdout |
//! | [`cpus`] | which cores the two sides use, pinning |
//! | [`throughput`] | pipelined invocations over N workers: invocations per second |
//! | [`clients`] | several clients, each its own connection, against one executor |
//! | [`plot`] | SVG line plots: latency vs payload, throughput vs workers, CDFs |
//! | [`summary`] | JSON lines of a whole comparison → markdown tables with ratios, plots |
//! | [`progress`] | a progress bar on stderr, when it is a terminal |
//!
//! A two-process scenario looks like [`pingpong`]: the measuring side pins itself, opens the
//! fabric through [`crate::fabric::open`] (so the measured code is generic over
//! [`crate::fabric::Fabric`] and statically dispatched), starts the peer with
//! [`PeerProcess::spawn`], sends it the settings, exchanges endpoints and region
//! descriptors, measures into a [`LatencyRecorder`] and returns a [`LatencyReport`].

pub mod clients;
pub mod cold;
pub mod control;
pub mod cpus;
pub mod invoke;
pub mod memory;
pub mod pingpong;
pub mod plot;
pub mod progress;
pub mod report;
pub mod summary;
pub mod throughput;

pub use control::{ControlChannel, ControlError, PeerProcess};
pub use cpus::{check_allowed, pin, CpuError, CpuPair};
pub use report::{LatencyRecorder, LatencyReport, OutputFormat, ReportPrinter};
