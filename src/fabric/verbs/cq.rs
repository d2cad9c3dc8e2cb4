//! Completion channels (an `ibv_comp_channel` fd, non-blocking, slept on with poll(2)) and
//! completion queues (`ibv_poll_cq` and `ibv_req_notify_cq` through the provider's ops, as
//! verbs.h's inlines do: no allocation, no lock, no system call on rxe or mlx5).

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_sys::{ibv_comp_channel, ibv_cq, ibv_wc, ibv_wc_opcode, ibv_wc_status};

use super::convert;
use super::credits::{Credits, Registry, Sides};
use super::device::Device;
use super::verbs_error;
use crate::fabric::{FabricError, WaitError, WorkCompletion};

/// A completion channel. Cheap to clone; its fd is non-blocking.
#[derive(Clone)]
pub struct CompletionChannel {
    inner: Arc<ChannelInner>,
}

struct ChannelInner {
    device: Device,
    ch: NonNull<ibv_comp_channel>,
    fd: RawFd,
}

// SAFETY: libibverbs objects may be used from any thread; `get_event` is documented for
// one waiting thread, and concurrent callers only race for events, harmlessly.
unsafe impl Send for ChannelInner {}
// SAFETY: as above.
unsafe impl Sync for ChannelInner {}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        // SAFETY: the queues that used the channel hold an Arc of it, so none is left.
        unsafe { (self.device.inner.lib.ibv_destroy_comp_channel)(self.ch.as_ptr()) };
    }
}

impl std::fmt::Debug for CompletionChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("verbs::CompletionChannel")
            .field("fd", &self.inner.fd)
            .finish()
    }
}

impl CompletionChannel {
    pub(super) fn new(device: &Device) -> Result<Self, FabricError> {
        let lib = device.inner.lib;
        // SAFETY: an open context.
        let ch = unsafe { (lib.ibv_create_comp_channel)(device.inner.ctx.as_ptr()) };
        let ch = NonNull::new(ch).ok_or_else(|| {
            verbs_error("ibv_create_comp_channel", io::Error::last_os_error(), None)
        })?;
        // SAFETY: a live channel; `fd` is its descriptor.
        let fd = unsafe { (*ch.as_ptr()).fd };
        let inner = Arc::new(ChannelInner {
            device: device.clone(),
            ch,
            fd,
        });
        // Non-blocking, so that an event loop (and `get_event` after a spurious wake-up)
        // never blocks in ibv_get_cq_event.
        // SAFETY: fcntl on a descriptor we own.
        let rc = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                flags
            } else {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
            }
        };
        if rc < 0 {
            return Err(verbs_error(
                "fcntl(O_NONBLOCK) on the completion channel",
                io::Error::last_os_error(),
                None,
            ));
        }
        Ok(Self { inner })
    }

    /// Reads and acknowledges every pending event; how many there were.
    fn drain(&self) -> io::Result<u64> {
        let lib = self.inner.device.inner.lib;
        let mut n = 0;
        loop {
            let mut cq = std::ptr::null_mut();
            let mut ctx = std::ptr::null_mut();
            // SAFETY: a live, non-blocking channel and valid out-pointers.
            let rc = unsafe { (lib.ibv_get_cq_event)(self.inner.ch.as_ptr(), &mut cq, &mut ctx) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(n),
                    io::ErrorKind::Interrupted => continue,
                    _ if n > 0 => Ok(n),
                    _ => Err(e),
                };
            }
            // SAFETY: `cq` is the live queue the event came from (a queue is destroyed only
            // after its events are acknowledged, and every event is acknowledged here).
            unsafe { (lib.ibv_ack_cq_events)(cq, 1) };
            n += 1;
        }
    }
}

impl crate::fabric::CompletionChannel for CompletionChannel {
    fn get_event(&self, timeout: Option<Duration>) -> Result<u64, WaitError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let n = self.drain()?;
            if n > 0 {
                return Ok(n);
            }
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(WaitError::Timeout(timeout.unwrap_or_default()));
                    }
                    // Round up, so a sub-millisecond wait does not spin.
                    i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.inner.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(WaitError::Io(e));
                }
            }
        }
    }

    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd
    }
}

type PollCq = unsafe extern "C" fn(*mut ibv_cq, i32, *mut ibv_wc) -> i32;
type ReqNotifyCq = unsafe extern "C" fn(*mut ibv_cq, i32) -> i32;

/// A completion queue. Queue pairs that report to it hold a reference, so it outlives them.
pub struct CompletionQueue {
    pub(super) inner: Arc<CqInner>,
    /// The provider's functions (verbs.h's inline `ibv_poll_cq` / `ibv_req_notify_cq`).
    poll_cq: PollCq,
    req_notify_cq: ReqNotifyCq,
    /// The queue pairs reporting here, whose queue accounting each completion updates
    /// (see [`super::credits`]). Filled through `&self` by `create_qp`, used through
    /// `&mut self` by `poll`, so never both at once.
    registry: RefCell<Registry>,
}

pub(super) struct CqInner {
    pub(super) device: Device,
    pub(super) cq: NonNull<ibv_cq>,
    channel: Option<CompletionChannel>,
}

// SAFETY: libibverbs objects may be used from any thread.
unsafe impl Send for CqInner {}
// SAFETY: as above; polling is done through `&mut CompletionQueue`, by one thread.
unsafe impl Sync for CqInner {}

impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: queue pairs reporting here hold an Arc of this, so none is left; the
        // channel acknowledges every event as it reads it.
        unsafe { (self.device.inner.lib.ibv_destroy_cq)(self.cq.as_ptr()) };
    }
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("verbs::CompletionQueue")
            .field("channel", &self.inner.channel)
            .finish_non_exhaustive()
    }
}

impl CompletionQueue {
    pub(super) fn new(
        device: &Device,
        capacity: u32,
        channel: Option<&CompletionChannel>,
    ) -> Result<Self, FabricError> {
        let d = &device.inner;
        let cqe = capacity.max(1);
        if cqe > d.max_cqe {
            return Err(FabricError::Config(format!(
                "a completion queue of {cqe} entries exceeds {}'s limit of {}",
                d.name, d.max_cqe
            )));
        }
        let ch = channel.map_or(std::ptr::null_mut(), |c| c.inner.ch.as_ptr());
        // SAFETY: an open context; `ch` is null or a live channel of the same context,
        // kept alive by the clone stored below.
        let cq = unsafe {
            (d.lib.ibv_create_cq)(d.ctx.as_ptr(), cqe as i32, std::ptr::null_mut(), ch, 0)
        };
        let cq = NonNull::new(cq)
            .ok_or_else(|| verbs_error("ibv_create_cq", io::Error::last_os_error(), None))?;
        let inner = Arc::new(CqInner {
            device: device.clone(),
            cq,
            channel: channel.cloned(),
        });
        // SAFETY: every context's ops table has these two (verbs.h calls them unchecked).
        let ops = unsafe { &(*d.ctx.as_ptr()).ops };
        match (ops.poll_cq, ops.req_notify_cq) {
            (Some(poll_cq), Some(req_notify_cq)) => Ok(Self {
                inner,
                poll_cq,
                req_notify_cq,
                registry: RefCell::default(),
            }),
            _ => Err(FabricError::Config(format!(
                "the provider of {} has no poll_cq/req_notify_cq",
                d.name
            ))),
        }
    }
}

impl CompletionQueue {
    /// Lets completions of queue pair `qpn` retire its requests (`sides`: which of its
    /// queues report here).
    pub(super) fn register(&self, qpn: u32, credits: &std::sync::Arc<Credits>, sides: Sides) {
        self.registry.borrow_mut().register(qpn, credits, sides);
    }
}

/// Completions fetched from the provider per call (an array on the stack).
const POLL_BATCH: usize = 16;

impl crate::fabric::CompletionQueue for CompletionQueue {
    #[inline]
    fn poll(&mut self, out: &mut [WorkCompletion]) -> usize {
        let mut wcs = [const { MaybeUninit::<ibv_wc>::uninit() }; POLL_BATCH];
        let mut done = 0;
        while done < out.len() {
            let want = (out.len() - done).min(POLL_BATCH);
            // SAFETY: the provider's poll function for this live queue, writing at most
            // `want` entries into our array.
            let got = unsafe {
                (self.poll_cq)(self.inner.cq.as_ptr(), want as i32, wcs.as_mut_ptr().cast())
            };
            if got <= 0 {
                break; // empty, or a provider error (which verbs leaves to the next poll)
            }
            let got = (got as usize).min(want);
            let registry = self.registry.get_mut();
            for (slot, wc) in out[done..done + got].iter_mut().zip(&wcs[..got]) {
                // SAFETY: the provider initialised the first `got` entries.
                let wc = unsafe { wc.assume_init_ref() };
                registry.completed(
                    wc.qp_num,
                    wc.status == ibv_wc_status::IBV_WC_SUCCESS,
                    wc.opcode & ibv_wc_opcode::IBV_WC_RECV != 0,
                );
                *slot = convert::work_completion(wc);
            }
            done += got;
            if got < want {
                break;
            }
        }
        done
    }

    fn arm(&mut self) {
        // SAFETY: the provider's function for this live queue. Arming can only fail for a
        // queue without a channel, where there is nothing to wake anyway.
        unsafe { (self.req_notify_cq)(self.inner.cq.as_ptr(), 0) };
    }

    fn wait(
        &mut self,
        out: &mut [WorkCompletion],
        timeout: Option<Duration>,
    ) -> Result<usize, WaitError> {
        let n = self.poll(out);
        if n > 0 || out.is_empty() {
            return Ok(n);
        }
        let channel = self.inner.channel.clone().ok_or(WaitError::NoChannel)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            self.arm();
            let n = self.poll(out);
            if n > 0 {
                return Ok(n);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(WaitError::Timeout(timeout.unwrap_or_default()));
            }
            match crate::fabric::CompletionChannel::get_event(&channel, left) {
                Ok(_) => {}
                Err(WaitError::Timeout(_)) => {
                    return Err(WaitError::Timeout(timeout.unwrap_or_default()))
                }
                Err(e) => return Err(e),
            }
            let n = self.poll(out);
            if n > 0 {
                return Ok(n);
            }
        }
    }
}
