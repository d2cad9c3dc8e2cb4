//! Errors of the fabric interface's setup calls. The hot path keeps rdma-mock's small,
//! allocation-free [`super::PostError`] and [`super::WaitError`].

use super::FabricKind;

/// Opening a device, allocating a resource or connecting a queue pair failed.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// The backend cannot run here; `hint` says how to get it.
    #[error("the {backend} fabric is not available: {reason}. {hint}")]
    Unavailable {
        backend: FabricKind,
        reason: String,
        hint: String,
    },
    #[error(transparent)]
    MockOpen(#[from] rdma_mock::OpenError),
    #[error(transparent)]
    MockAlloc(#[from] rdma_mock::AllocError),
    #[error(transparent)]
    MockConnect(#[from] rdma_mock::ConnectError),
    /// A verbs call failed.
    #[error("{call} failed: {source}{}", hint_suffix(.hint))]
    Verbs {
        call: &'static str,
        source: std::io::Error,
        /// What usually causes this failure, when known (e.g. the memlock limit).
        hint: Option<&'static str>,
    },
    /// An endpoint of another backend was given to `connect`.
    #[error("endpoint is for the {remote} fabric but this device runs the {local} fabric")]
    FabricMismatch {
        local: FabricKind,
        remote: FabricKind,
    },
    /// The configuration cannot work (bad device name, port, GID index, sizes).
    #[error("invalid fabric configuration: {0}")]
    Config(String),
}

fn hint_suffix(hint: &Option<&'static str>) -> String {
    hint.map(|h| format!(" ({h})")).unwrap_or_default()
}
