//! Peer baselines for rafi's benchmarks: the round trips rafi's hot invocation is compared
//! with, measured the way their users would write them, with the same payload sizes,
//! pinned cores, warm-up and report format (`rafi::bench::report`) as rafi's own benchmarks.
//!
//! | binary | what one round trip is |
//! |---|---|
//! | `baseline-mpi` | Open MPI between two ranks: a `pingpong` (MPI_Send/MPI_Recv bounce, as the OSU latency test) or `handwork` (a work request to a worker rank, its result back) |
//! | `baseline-tcp` | a length-prefixed request and its response over loopback TCP (TCP_NODELAY, blocking or busy-polled reads) |
//! | `baseline-grpc` | a tonic unary Echo call over loopback HTTP/2 |
//!
//! Each client checks every reply against what it sent (outside the timed region), so a
//! broken server cannot produce a fast, wrong baseline.

#![forbid(unsafe_code)]

pub mod cli;
pub mod frame;
pub mod grpc;
pub mod measure;
pub mod payload;
pub mod sizes;
