//! Protection domains and memory regions: page-aligned zeroed memory from `mmap` (2 MiB huge
//! pages for large regions when asked for, with a fallback), registered with `ibv_reg_mr`.

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys::{ibv_mr, ibv_pd};

use super::convert;
use super::cq::CompletionQueue;
use super::device::Device;
use super::qp::QueuePair;
use super::verbs_error;
use crate::fabric::{Access, FabricError, QpConfig};

const PAGE: usize = 4096;
const HUGE_PAGE: usize = 2 << 20;

/// What usually makes `ibv_reg_mr` fail with ENOMEM or EPERM.
const MEMLOCK_HINT: &str = "registered memory is pinned and counts against the memlock \
    limit: raise it with `ulimit -l unlimited` or a `memlock` line in \
    /etc/security/limits.conf (or LimitMEMLOCK= for a systemd service)";

/// A verbs protection domain. Cheap to clone.
#[derive(Clone)]
pub struct ProtectionDomain {
    pub(super) inner: Arc<PdInner>,
}

pub(super) struct PdInner {
    pub(super) device: Device,
    pub(super) pd: NonNull<ibv_pd>,
}

// SAFETY: libibverbs objects may be used from any thread.
unsafe impl Send for PdInner {}
// SAFETY: as above.
unsafe impl Sync for PdInner {}

impl Drop for PdInner {
    fn drop(&mut self) {
        // SAFETY: regions and queue pairs of this domain hold an Arc of it, so none is left.
        unsafe { (self.device.inner.lib.ibv_dealloc_pd)(self.pd.as_ptr()) };
    }
}

impl std::fmt::Debug for ProtectionDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("verbs::ProtectionDomain")
            .field("device", &self.inner.device.inner.name)
            .finish()
    }
}

impl ProtectionDomain {
    pub(super) fn new(device: &Device) -> Result<Self, FabricError> {
        // SAFETY: an open context.
        let pd = unsafe { (device.inner.lib.ibv_alloc_pd)(device.inner.ctx.as_ptr()) };
        let pd = NonNull::new(pd)
            .ok_or_else(|| verbs_error("ibv_alloc_pd", io::Error::last_os_error(), None))?;
        Ok(Self {
            inner: Arc::new(PdInner {
                device: device.clone(),
                pd,
            }),
        })
    }
}

impl crate::fabric::ProtectionDomain for ProtectionDomain {
    type Fabric = Device;

    fn register(&self, len: usize, access: Access) -> Result<MemoryRegion, FabricError> {
        MemoryRegion::new(self, len, access)
    }

    fn create_qp(
        &self,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        config: QpConfig,
    ) -> Result<QueuePair, FabricError> {
        QueuePair::new(self, send_cq, recv_cq, config)
    }
}

/// Anonymous, zeroed, page-aligned memory; unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// `len` bytes rounded up to pages; with `huge`, 2 MiB pages for regions of at least
    /// 2 MiB when the system has free ones, else normal pages.
    fn new(len: usize, huge: bool) -> io::Result<Mapping> {
        if huge && len >= HUGE_PAGE {
            if let Some(rounded) = round_up(len, HUGE_PAGE) {
                if let Ok(m) = Self::map(rounded, libc::MAP_HUGETLB) {
                    return Ok(m);
                }
            }
        }
        let rounded =
            round_up(len, PAGE).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Self::map(rounded, 0)
    }

    fn map(len: usize, flags: i32) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous private mapping; the kernel picks the address and zeroes
        // the pages.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast())
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; its region was deregistered before.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn round_up(len: usize, to: usize) -> Option<usize> {
    len.checked_add(to - 1).map(|l| l / to * to)
}

/// A registered memory region of a verbs protection domain.
pub struct MemoryRegion {
    mr: NonNull<ibv_mr>,
    // Field order is drop order: deregister (in Drop), then unmap, then release the domain.
    map: Mapping,
    pd: ProtectionDomain,
    len: usize,
    lkey: u32,
    rkey: u32,
    access: Access,
}

// SAFETY: the region is plain memory plus a libibverbs handle usable from any thread.
unsafe impl Send for MemoryRegion {}
// SAFETY: as above; shared access to the bytes goes through raw pointers (the trait's
// contract).
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    fn new(pd: &ProtectionDomain, len: usize, access: Access) -> Result<Self, FabricError> {
        if len == 0 {
            return Err(FabricError::Config(
                "a memory region of zero bytes cannot be registered".into(),
            ));
        }
        let device = &pd.inner.device.inner;
        let map = Mapping::new(len, device.huge_pages)
            .map_err(|e| verbs_error("mmap (memory region)", e, None))?;
        // SAFETY: the mapping is valid for `len` bytes (at least) until after deregistration.
        let mr = unsafe {
            (device.lib.ibv_reg_mr)(
                pd.inner.pd.as_ptr(),
                map.ptr.as_ptr().cast(),
                len,
                convert::access_flags(access),
            )
        };
        let Some(mr) = NonNull::new(mr) else {
            let e = io::Error::last_os_error();
            let hint = matches!(
                e.raw_os_error(),
                Some(libc::ENOMEM | libc::EPERM | libc::EAGAIN)
            )
            .then_some(MEMLOCK_HINT);
            return Err(verbs_error("ibv_reg_mr", e, hint));
        };
        // SAFETY: a registered region returned by the library, valid until deregistered.
        let (lkey, rkey) = unsafe { ((*mr.as_ptr()).lkey, (*mr.as_ptr()).rkey) };
        Ok(Self {
            mr,
            map,
            pd: pd.clone(),
            len,
            lkey,
            rkey,
            access,
        })
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered by `new`, deregistered once; the mapping is unmapped after.
        unsafe { (self.pd.inner.device.inner.lib.ibv_dereg_mr)(self.mr.as_ptr()) };
    }
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("verbs::MemoryRegion")
            .field(
                "addr",
                &format_args!("{:#x}", self.map.ptr.as_ptr() as usize),
            )
            .field("len", &self.len)
            .field("lkey", &self.lkey)
            .field("rkey", &self.rkey)
            .field("access", &self.access)
            .finish()
    }
}

// SAFETY: `as_ptr()` is the start of a private page-aligned mapping of at least `len()`
// bytes that lives (and stays registered) until the region is dropped.
unsafe impl crate::fabric::MemoryRegion for MemoryRegion {
    fn addr(&self) -> u64 {
        self.map.ptr.as_ptr() as u64
    }
    fn len(&self) -> usize {
        self.len
    }
    fn lkey(&self) -> u32 {
        self.lkey
    }
    fn rkey(&self) -> u32 {
        self.rkey
    }
    fn access(&self) -> Access {
        self.access
    }
    fn as_ptr(&self) -> *mut u8 {
        self.map.ptr.as_ptr()
    }
}
