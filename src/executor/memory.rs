//! Leased remote memory, executor side: a region registered per memory allocation with the
//! rights its client asked for, in a protection domain of its own, with one queue pair that
//! only that client's memory queue pair is connected to: the region's rkey is good through
//! that queue pair and no other (not the workers' links, not another lease's queue pair). The executor never posts on it: the client's one-sided
//! operations are served by the device (verbs), the peer's own copy (shm) or the fabric's
//! progress thread (tcp). Dropping the lease deregisters the region: the rkey is dead, and
//! its bytes go back to the executor's memory budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::fabric::{
    Access, Endpoint, Fabric, FabricError, MemoryRegion, ProtectionDomain, QpConfig, QueuePair,
};
use crate::protocol::{MemoryAccess, MemoryGrant, MemoryRequest, RegionDesc};

/// Bytes of leased memory in use, shared by the sessions of one executor.
#[derive(Debug, Default)]
pub(crate) struct MemoryBudget {
    in_use: AtomicU64,
}

impl MemoryBudget {
    /// Reserves `len` bytes if that stays within `limit`; the reservation ends with the
    /// returned guard.
    pub(crate) fn reserve(self: &Arc<Self>, len: u64, limit: u64) -> Option<Reservation> {
        let mut current = self.in_use.load(Ordering::Relaxed);
        loop {
            let next = current.checked_add(len).filter(|&n| n <= limit)?;
            match self.in_use.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Reservation {
                        budget: self.clone(),
                        len,
                    })
                }
                Err(seen) => current = seen,
            }
        }
    }

    pub(crate) fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }
}

/// Bytes of the budget held until drop.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<MemoryBudget>,
    len: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(self.len, Ordering::AcqRel);
    }
}

/// One client's leased memory. Field order is drop order: the queue pair goes first (no
/// operation reaches the region after it), then the region, then the reservation.
pub(crate) struct MemoryLease<F: Fabric> {
    qp: F::Qp,
    _cq: F::Cq,
    region: F::Mr,
    /// The bytes leased (the region may be rounded up to a page).
    len: u64,
    access: MemoryAccess,
    _reservation: Reservation,
    _pd: F::Pd,
}

/// The fabric access flags for `access` (local write always: verbs needs it for remote
/// writes and atomics, and the executor zeroes nothing after registration anyway).
pub(crate) fn fabric_access(access: MemoryAccess) -> Access {
    let mut flags = Access::LOCAL_WRITE;
    if access.read {
        flags |= Access::REMOTE_READ;
    }
    if access.write {
        flags |= Access::REMOTE_WRITE;
    }
    if access.atomic {
        flags |= Access::REMOTE_ATOMIC;
    }
    flags
}

impl<F: Fabric> MemoryLease<F> {
    /// Registers the region and creates the queue pair of `request`.
    pub(crate) fn create(
        fabric: &F,
        request: &MemoryRequest,
        reservation: Reservation,
    ) -> Result<Self, FabricError> {
        let len = usize::try_from(request.len)
            .map_err(|_| FabricError::Config(format!("{} B do not fit", request.len)))?;
        let pd = fabric.alloc_pd()?;
        let region = pd.register(len, fabric_access(request.access))?;
        // Nothing is ever posted here; the smallest queues the backends accept.
        let cq = fabric.create_cq(4, None)?;
        let config = QpConfig {
            max_send_wr: 1,
            max_recv_wr: 1,
            max_sge: 1,
            max_inline_data: 0,
            ..QpConfig::default()
        };
        let qp = pd.create_qp(&cq, &cq, config)?;
        Ok(Self {
            qp,
            _cq: cq,
            region,
            len: request.len,
            access: request.access,
            _reservation: reservation,
            _pd: pd,
        })
    }

    /// What the accept reply tells the client.
    pub(crate) fn grant(&self) -> MemoryGrant {
        MemoryGrant {
            endpoint: self.qp.endpoint(),
            region: RegionDesc {
                addr: self.region.addr(),
                rkey: self.region.rkey(),
                len: self.len,
            },
            access: self.access,
        }
    }

    /// Connects to the client's memory queue pair.
    pub(crate) fn connect(&mut self, client: &Endpoint) -> Result<(), FabricError> {
        self.qp.connect(client)
    }
}
