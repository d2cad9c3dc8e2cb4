//! rdma-mock's shm and tcp fabrics behind the fabric interface: thin forwarding.

use std::os::fd::RawFd;
use std::time::Duration;

use super::{
    Access, Endpoint, Fabric, FabricConfig, FabricError, FabricKind, PostError, QpConfig, QpState,
    RecvWr, SendWr, WaitError, WorkCompletion,
};

pub(super) fn open(config: &FabricConfig) -> Result<rdma_mock::Device, FabricError> {
    let fabric = match config.kind {
        FabricKind::Shm => rdma_mock::Fabric::Shm,
        FabricKind::Tcp => rdma_mock::Fabric::Tcp,
        FabricKind::Verbs => unreachable!("verbs is not a mock fabric"),
    };
    let mut c = rdma_mock::DeviceConfig::new(fabric);
    c.tcp_listen = config.tcp_listen;
    c.arena_size = config.arena_size;
    c.connect_timeout = config.connect_timeout;
    Ok(rdma_mock::Device::open(c)?)
}

impl Fabric for rdma_mock::Device {
    type Pd = rdma_mock::ProtectionDomain;
    type Mr = rdma_mock::MemoryRegion;
    type Channel = rdma_mock::CompletionChannel;
    type Cq = rdma_mock::CompletionQueue;
    type Qp = rdma_mock::QueuePair;

    fn kind(&self) -> FabricKind {
        self.fabric().into()
    }

    fn device_name(&self) -> &str {
        self.fabric().name()
    }

    fn max_inline_data(&self) -> u32 {
        rdma_mock::MAX_INLINE_DATA
    }

    fn alloc_pd(&self) -> Result<Self::Pd, FabricError> {
        Ok(rdma_mock::Device::alloc_pd(self)?)
    }

    fn create_channel(&self) -> Result<Self::Channel, FabricError> {
        Ok(rdma_mock::Device::create_channel(self)?)
    }

    /// The mock queues hold every completion of their queue pairs, whatever `capacity`.
    fn create_cq(
        &self,
        _capacity: u32,
        channel: Option<&Self::Channel>,
    ) -> Result<Self::Cq, FabricError> {
        Ok(rdma_mock::Device::create_cq(self, channel)?)
    }
}

impl super::ProtectionDomain for rdma_mock::ProtectionDomain {
    type Fabric = rdma_mock::Device;

    fn register(&self, len: usize, access: Access) -> Result<rdma_mock::MemoryRegion, FabricError> {
        Ok(rdma_mock::ProtectionDomain::register(self, len, access)?)
    }

    fn create_qp(
        &self,
        send_cq: &rdma_mock::CompletionQueue,
        recv_cq: &rdma_mock::CompletionQueue,
        config: QpConfig,
    ) -> Result<rdma_mock::QueuePair, FabricError> {
        Ok(rdma_mock::ProtectionDomain::create_qp(
            self, send_cq, recv_cq, config,
        )?)
    }
}

// SAFETY: rdma-mock regions are page-aligned ranges of the domain's arena mapping, valid
// until the region is dropped (rdma-mock's MemoryRegion documents the same contract).
unsafe impl super::MemoryRegion for rdma_mock::MemoryRegion {
    fn addr(&self) -> u64 {
        rdma_mock::MemoryRegion::addr(self)
    }
    fn len(&self) -> usize {
        rdma_mock::MemoryRegion::len(self)
    }
    fn lkey(&self) -> u32 {
        rdma_mock::MemoryRegion::lkey(self)
    }
    fn rkey(&self) -> u32 {
        rdma_mock::MemoryRegion::rkey(self)
    }
    fn access(&self) -> Access {
        rdma_mock::MemoryRegion::access(self)
    }
    fn as_ptr(&self) -> *mut u8 {
        rdma_mock::MemoryRegion::as_ptr(self)
    }
}

impl super::CompletionChannel for rdma_mock::CompletionChannel {
    fn get_event(&self, timeout: Option<Duration>) -> Result<u64, WaitError> {
        rdma_mock::CompletionChannel::get_event(self, timeout)
    }
    fn as_raw_fd(&self) -> RawFd {
        rdma_mock::CompletionChannel::as_raw_fd(self)
    }
}

impl super::CompletionQueue for rdma_mock::CompletionQueue {
    #[inline]
    fn poll(&mut self, out: &mut [WorkCompletion]) -> usize {
        rdma_mock::CompletionQueue::poll(self, out)
    }
    fn arm(&mut self) {
        rdma_mock::CompletionQueue::arm(self)
    }
    fn wait(
        &mut self,
        out: &mut [WorkCompletion],
        timeout: Option<Duration>,
    ) -> Result<usize, WaitError> {
        rdma_mock::CompletionQueue::wait(self, out, timeout)
    }
}

impl super::QueuePair for rdma_mock::QueuePair {
    fn qp_num(&self) -> u32 {
        rdma_mock::QueuePair::qp_num(self)
    }
    fn state(&self) -> QpState {
        rdma_mock::QueuePair::state(self)
    }
    fn endpoint(&self) -> Endpoint {
        Endpoint::Mock(rdma_mock::QueuePair::endpoint(self))
    }
    fn connect(&mut self, remote: &Endpoint) -> Result<(), FabricError> {
        match remote {
            Endpoint::Mock(e) => Ok(rdma_mock::QueuePair::connect(self, e)?),
            other => Err(FabricError::FabricMismatch {
                local: rdma_mock::QueuePair::endpoint(self).fabric.into(),
                remote: other.kind(),
            }),
        }
    }
    #[inline]
    fn post_send(&mut self, wr: &SendWr<'_>) -> Result<(), PostError> {
        rdma_mock::QueuePair::post_send(self, wr)
    }
    #[inline]
    fn post_recv(&mut self, wr: &RecvWr<'_>) -> Result<(), PostError> {
        rdma_mock::QueuePair::post_recv(self, wr)
    }
    fn set_error(&mut self) {
        rdma_mock::QueuePair::set_error(self)
    }
}
