//! Billing, the manager's side: the node's fabric device, and per executor a counter
//! region that the executor's accountant FETCH_ADDs into and a queue pair it does so
//! through. The manager only reads the counters (atomically) at each heartbeat.
//!
//! The fabric is opened once per manager through [`fabric::open`]; its backend type is
//! erased behind [`Billing`] / [`Station`] / [`Meter`] (dynamic dispatch, off every hot
//! path), so that the manager's threads stay non-generic.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::executor::billing::{BillingTarget, Counters, BUSY_NS, HOT_NS, INVOCATIONS};
use crate::fabric::{
    self, Access, Endpoint, Fabric, FabricConfig, FabricError, FabricUser, MemoryRegion,
    ProtectionDomain, QpConfig, QueuePair,
};

use super::config::ManagerConfig;

/// Reads one executor's counters.
pub(crate) trait Meter: Send + Sync + std::fmt::Debug {
    /// The totals the executor has added so far.
    fn read(&self) -> Counters;
}

/// The billing side of one executor: its counters and the queue pair they are reached
/// through. Keep it until the executor is gone.
pub(crate) trait Station: Send {
    /// What the executor is told (`--billing`).
    fn target(&self) -> BillingTarget;
    /// Connects to the executor's accountant (blocks until it connects too, on the mock
    /// fabrics).
    fn connect(&mut self, executor: &Endpoint) -> Result<(), FabricError>;
    fn meter(&self) -> Arc<dyn Meter>;
}

/// The node's fabric, for billing.
pub(crate) trait Billing: Send + Sync {
    /// Registers counters and creates a queue pair for one executor.
    fn station(&self) -> Result<Box<dyn Station>, FabricError>;
}

/// Opens the node's fabric for billing (on tcp: listening on the executors' IP).
pub(crate) fn open(config: &ManagerConfig) -> Result<Arc<dyn Billing>, FabricError> {
    let mut c = FabricConfig::new(config.fabric);
    c.tcp_listen = SocketAddr::new(config.executor_ip(), 0);
    fabric::open(&c, Open)?
}

struct Open;

impl FabricUser for Open {
    type Output = Result<Arc<dyn Billing>, FabricError>;

    fn run<F: Fabric>(self, fabric: F) -> Self::Output {
        let pd = fabric.alloc_pd()?;
        Ok(Arc::new(Device { fabric, pd }))
    }
}

struct Device<F: Fabric> {
    fabric: F,
    pd: F::Pd,
}

impl<F: Fabric> Billing for Device<F> {
    fn station(&self) -> Result<Box<dyn Station>, FabricError> {
        // The manager posts nothing: the queue pair only answers the executor's atomics.
        let cq = self.fabric.create_cq(4, None)?;
        let qp = self.pd.create_qp(
            &cq,
            &cq,
            QpConfig {
                max_send_wr: 1,
                max_recv_wr: 1,
                max_sge: 1,
                max_inline_data: 0,
                ..QpConfig::default()
            },
        )?;
        // One page per executor: its rkey reaches its own counters and no one else's.
        let region = self
            .pd
            .register(4096, Access::LOCAL_WRITE | Access::REMOTE_ATOMIC)?;
        Ok(Box::new(StationOf::<F> {
            _cq: cq,
            qp,
            counters: Arc::new(Region(region)),
        }))
    }
}

struct StationOf<F: Fabric> {
    _cq: F::Cq,
    qp: F::Qp,
    counters: Arc<Region<F::Mr>>,
}

impl<F: Fabric> Station for StationOf<F> {
    fn target(&self) -> BillingTarget {
        BillingTarget {
            endpoint: self.qp.endpoint(),
            addr: self.counters.0.addr() + BUSY_NS as u64,
            rkey: self.counters.0.rkey(),
        }
    }

    fn connect(&mut self, executor: &Endpoint) -> Result<(), FabricError> {
        self.qp.connect(executor)
    }

    fn meter(&self) -> Arc<dyn Meter> {
        self.counters.clone()
    }
}

#[derive(Debug)]
struct Region<M: MemoryRegion>(M);

impl<M: MemoryRegion> Meter for Region<M> {
    fn read(&self) -> Counters {
        let word = |offset| {
            self.0
                .atomic_u64(offset)
                .load(std::sync::atomic::Ordering::Acquire)
        };
        Counters {
            busy_ns: word(BUSY_NS),
            hot_ns: word(HOT_NS),
            invocations: word(INVOCATIONS),
        }
    }
}
