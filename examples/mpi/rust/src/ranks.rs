//! What ranks agree on through MPI. Every rank runs the same sequence of collectives
//! whatever happened to it, so a rank that failed never leaves the others waiting: it
//! takes part in the next agreement with `false`, and all of them stop.

use mpi::collective::SystemOperation;
use mpi::traits::{Communicator, CommunicatorCollectives};

/// Whether every rank says `ok`.
pub fn all_succeeded<C: Communicator>(world: &C, ok: bool) -> bool {
    let mine = i32::from(ok);
    let mut all = 0i32;
    world.all_reduce_into(&mine, &mut all, SystemOperation::min());
    all == 1
}

/// The element-wise maximum of `values` over the ranks.
pub fn max_over_ranks<C: Communicator>(world: &C, values: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; values.len()];
    world.all_reduce_into(values, &mut out[..], SystemOperation::max());
    out
}

/// The sum of `value` over the ranks.
pub fn sum_over_ranks<C: Communicator>(world: &C, value: u64) -> u64 {
    let mut out = 0u64;
    world.all_reduce_into(&value, &mut out, SystemOperation::sum());
    out
}

/// This rank's own error if it failed, else one saying that another rank did.
pub fn own_or_other_failure(own: anyhow::Result<()>, what: &str) -> anyhow::Error {
    match own {
        Err(e) => e.context(format!("{what} failed")),
        Ok(()) => anyhow::anyhow!("{what} failed on another rank (see its error)"),
    }
}
