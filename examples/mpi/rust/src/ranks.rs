//! What ranks agree on through MPI. Every rank runs the same sequence of collectives
//! whatever happened to it, so a rank that failed never leaves the others waiting: it
//! takes part in the next agreement with `false`, and all of them stop.

use std::process::ExitCode;

use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
use rafi::fabric::FabricError;

use crate::cluster::ClusterArgs;

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

/// The `main` of the applications: initializes MPI, runs `open` with the world
/// communicator (it opens the fabric of `cluster` with `rafi::fabric::open` and runs the
/// application there), and turns the outcome into the exit code, each failed rank printing
/// its error in one write (the lines of several ranks reach mpirun's stderr interleaved).
/// MPI is finalized before the return.
pub fn run_on_fabric(
    name: &str,
    cluster: &ClusterArgs,
    open: impl FnOnce(&SimpleCommunicator) -> Result<anyhow::Result<()>, FabricError>,
) -> ExitCode {
    let Some(universe) = mpi::initialize() else {
        eprintln!("{name}: error: MPI was initialized already");
        return ExitCode::FAILURE;
    };
    let world = universe.world();
    let rank = world.rank();
    let outcome = match open(&world) {
        Ok(outcome) => outcome,
        Err(e) => {
            // Take part in the setup agreement the other ranks wait in, as a failure.
            let own =
                Err(anyhow::Error::from(e)
                    .context(format!("opening the {} fabric", cluster.fabric)));
            all_succeeded(&world, false);
            Err(own_or_other_failure(own, "setting up the remote workers"))
        }
    };
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{name}: rank {rank}: error: {e:#}\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
            ExitCode::FAILURE
        }
    };
    drop(universe); // MPI_Finalize before exiting
    code
}
