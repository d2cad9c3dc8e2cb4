//! rafi: RDMA-accelerated function invocation for HPC clusters.
#![forbid(unsafe_code)]
pub use rdma_mock;
