//! rafi: RDMA-accelerated function invocation for HPC clusters.
//!
//! An MPI rank leases idle cores, and invokes functions there by writing its payload straight
//! into executor memory with one-sided RDMA writes. This crate will hold the
//! executors, client and managers (see `../shared/DESIGN.md` and the open issues); today it
//! holds the foundation they run on: [`rdma_mock`], the software fabric with verbs semantics
//! that runs on hosts without RDMA hardware (shared memory on one host, TCP across hosts);
//! [`protocol`], the sans-IO wire format of the invocation path (slots, immediates,
//! invocation ids, credits, status codes, the allocation handshake; see `docs/protocol.md`);
//! and [`function`], the function layer an executor calls: C-ABI libraries loaded by path or
//! from bytes, built-in Rust functions, and the name table (see `docs/functions.md`).
// Unsafe code lives only in `fabric` (the verbs backend and raw region access) and in
// `function` (dlopen and the call into a loaded library), each
// block with a SAFETY comment; everything else is safe Rust.
#![deny(unsafe_code)]

pub mod bench;
pub mod client;
pub mod control;
pub mod executor;
pub mod fabric;

pub mod function;

pub mod protocol;
