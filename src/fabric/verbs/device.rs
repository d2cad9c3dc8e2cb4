//! Opening a device: choosing it by name, querying its port and GID, probing the inline
//! limit. [`Device`] is the verbs [`Fabric`].

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::mem::{offset_of, MaybeUninit};
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys::{
    ibv_context, ibv_device, ibv_device_attr, ibv_gid, ibv_port_attr, ibv_port_state,
    ibv_qp_init_attr, ibv_qp_type, verbs_context,
};

use super::cq::{CompletionChannel, CompletionQueue};
use super::lib::{self, Lib};
use super::memory::ProtectionDomain;
use super::qp::QueuePair;
use super::{verbs_error, MemoryRegion};
use crate::fabric::{Fabric, FabricError, FabricKind, VerbsConfig};

/// `ibv_port_attr.link_layer` of RoCE (the other values: 0 unspecified, 1 InfiniBand).
const LINK_LAYER_ETHERNET: u8 = 2;

/// How to get what is missing, for every "verbs is unavailable" error.
const HINT: &str = "install the verbs runtime and a provider (`apt-get install libibverbs1 \
    ibverbs-providers`) on a host with an RDMA NIC; without one, soft-RoCE works: \
    `sudo scripts/setup-rxe.sh NETDEV` where the kernel has rdma_rxe, or `scripts/rxe-vm.sh \
    COMMAND` to run COMMAND in a qemu guest with rxe0 (docs/soft-roce.md); or use --fabric \
    shm|tcp";

/// An open verbs device, port and GID. Cheap to clone.
#[derive(Clone)]
pub struct Device {
    pub(super) inner: Arc<DeviceInner>,
}

pub(super) struct DeviceInner {
    pub(super) lib: &'static Lib,
    pub(super) ctx: NonNull<ibv_context>,
    pub(super) name: String,
    pub(super) port: u8,
    pub(super) gid_index: u8,
    pub(super) gid: [u8; 16],
    pub(super) lid: u16,
    /// `ibv_mtu` code of the port's active MTU.
    pub(super) mtu: u8,
    /// Whether addresses need a GRH (RoCE always; InfiniBand within a subnet does not).
    pub(super) roce: bool,
    pub(super) max_inline_data: u32,
    pub(super) max_qp_wr: u32,
    pub(super) max_sge: u32,
    pub(super) max_cqe: u32,
    pub(super) max_rd_atomic: u8,
    pub(super) max_dest_rd_atomic: u8,
    pub(super) huge_pages: bool,
}

// SAFETY: libibverbs contexts are thread safe (the library locks where it must); the other
// fields are plain data.
unsafe impl Send for DeviceInner {}
// SAFETY: as above.
unsafe impl Sync for DeviceInner {}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        // SAFETY: the context was opened by `open` and everything made from it (which holds
        // an Arc of this) is gone.
        unsafe { (self.lib.ibv_close_device)(self.ctx.as_ptr()) };
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.inner;
        f.debug_struct("verbs::Device")
            .field("name", &d.name)
            .field("port", &d.port)
            .field("gid_index", &d.gid_index)
            .field("gid", &std::net::Ipv6Addr::from(d.gid))
            .field("roce", &d.roce)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Opens the device, port and GID that `config` names.
    ///
    /// # Errors
    /// [`FabricError::Unavailable`] when libibverbs cannot be loaded or there is no RDMA
    /// device (with a hint on how to get one); [`FabricError::Config`] for a device name,
    /// port or GID index that does not exist; [`FabricError::Verbs`] when a query fails.
    pub fn open(config: &VerbsConfig) -> Result<Device, FabricError> {
        let lib = lib::get().map_err(|reason| FabricError::Unavailable {
            backend: FabricKind::Verbs,
            reason: format!("libibverbs is not installed or cannot be loaded ({reason})"),
            hint: HINT.into(),
        })?;
        let (name, ctx) = open_context(lib, config.device.as_deref())?;
        // Until `inner` owns the context, `guard` closes it on every early return.
        let guard = ContextGuard { lib, ctx };
        let attr = query_device(lib, ctx)?;
        if config.port == 0 || config.port > attr.phys_port_cnt {
            return Err(FabricError::Config(format!(
                "{name} has ports 1..={}, not port {}",
                attr.phys_port_cnt, config.port
            )));
        }
        let port_attr = query_port(lib, ctx, config.port)?;
        if port_attr.state != ibv_port_state::IBV_PORT_ACTIVE {
            return Err(FabricError::Unavailable {
                backend: FabricKind::Verbs,
                reason: format!(
                    "port {} of {name} is not active (state {}; `ibv_devinfo -d {name}` \
                     shows why)",
                    config.port, port_attr.state
                ),
                hint: HINT.into(),
            });
        }
        let roce = port_attr.link_layer == LINK_LAYER_ETHERNET;
        let gid_len = u8::try_from(port_attr.gid_tbl_len.max(0)).unwrap_or(u8::MAX);
        let gid_index = match config.gid_index {
            Some(i) if i < gid_len || gid_len == 0 => i,
            Some(i) => {
                return Err(FabricError::Config(format!(
                    "{name} port {} has GIDs 0..{gid_len}, not index {i}",
                    config.port
                )))
            }
            None => default_gid_index(lib, ctx, &name, config.port, gid_len),
        };
        let gid = query_gid(lib, ctx, config.port, gid_index)?;
        if roce && gid == [0; 16] {
            return Err(FabricError::Config(format!(
                "GID index {gid_index} of {name} port {} is empty (`show_gids` or \
                 /sys/class/infiniband/{name}/ports/{}/gids list the valid ones)",
                config.port, config.port
            )));
        }
        let max_inline_data = match config.max_inline_data {
            Some(n) => n,
            None => probe_max_inline(lib, ctx),
        };
        std::mem::forget(guard);
        Ok(Device {
            inner: Arc::new(DeviceInner {
                lib,
                ctx,
                name,
                port: config.port,
                gid_index,
                gid,
                lid: port_attr.lid,
                mtu: port_attr.active_mtu as u8,
                roce,
                max_inline_data,
                max_qp_wr: attr.max_qp_wr.max(1) as u32,
                max_sge: attr.max_sge.max(1) as u32,
                max_cqe: attr.max_cqe.max(1) as u32,
                max_rd_atomic: attr.max_qp_init_rd_atom.clamp(1, 16) as u8,
                max_dest_rd_atomic: attr.max_qp_rd_atom.clamp(1, 16) as u8,
                huge_pages: config.huge_pages,
            }),
        })
    }

    /// The device's name (`rxe0`, `mlx5_0`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The port in use.
    pub fn port(&self) -> u8 {
        self.inner.port
    }

    /// The GID index in use and its GID.
    pub fn gid(&self) -> (u8, [u8; 16]) {
        (self.inner.gid_index, self.inner.gid)
    }

    /// Whether the port is RoCE (Ethernet) rather than InfiniBand.
    pub fn is_roce(&self) -> bool {
        self.inner.roce
    }
}

/// Closes a context on an early return from [`Device::open`].
struct ContextGuard {
    lib: &'static Lib,
    ctx: NonNull<ibv_context>,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        // SAFETY: the context is open and nothing else refers to it yet.
        unsafe { (self.lib.ibv_close_device)(self.ctx.as_ptr()) };
    }
}

/// Opens the device named `want` (or the first one): its name and context.
fn open_context(
    lib: &'static Lib,
    want: Option<&str>,
) -> Result<(String, NonNull<ibv_context>), FabricError> {
    let mut n = 0;
    // SAFETY: `n` is a valid out-pointer; the list is freed below.
    let list = unsafe { (lib.ibv_get_device_list)(&mut n) };
    if list.is_null() {
        return Err(verbs_error(
            "ibv_get_device_list",
            io::Error::last_os_error(),
            Some("is the ib_uverbs kernel module loaded?"),
        ));
    }
    // SAFETY: the list holds `n` valid device pointers until it is freed.
    let devices: &[*mut ibv_device] =
        unsafe { std::slice::from_raw_parts(list, n.max(0) as usize) };
    let names: Vec<String> = devices
        .iter()
        .map(|&d| {
            // SAFETY: `d` is a device of the list; the name is a C string it owns.
            let p = unsafe { (lib.ibv_get_device_name)(d) };
            if p.is_null() {
                String::new()
            } else {
                // SAFETY: a NUL-terminated string valid while the list lives.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        })
        .collect();
    let chosen = match want {
        None => (!devices.is_empty()).then_some(0),
        Some(w) => names.iter().position(|n| n == w),
    };
    let result = match chosen {
        None if devices.is_empty() => Err(FabricError::Unavailable {
            backend: FabricKind::Verbs,
            reason: format!(
                "no RDMA device found ({} loaded, but it lists no device: no RDMA NIC, no \
                 provider for it, or no soft-RoCE device)",
                lib.path
            ),
            hint: HINT.into(),
        }),
        None => Err(FabricError::Config(format!(
            "no RDMA device named {:?}; devices here: {} (set RAFI_RDMA_DEVICE)",
            want.unwrap_or_default(),
            names.join(", ")
        ))),
        Some(i) => {
            // SAFETY: a device of the list; the context stays valid after the list is freed.
            let ctx = unsafe { (lib.ibv_open_device)(devices[i]) };
            match NonNull::new(ctx) {
                Some(ctx) => Ok((names[i].clone(), ctx)),
                None => Err(verbs_error(
                    "ibv_open_device",
                    io::Error::last_os_error(),
                    Some("check the permissions of /dev/infiniband/uverbs*"),
                )),
            }
        }
    };
    // SAFETY: the list came from ibv_get_device_list and is freed once.
    unsafe { (lib.ibv_free_device_list)(list) };
    result
}

fn query_device(lib: &Lib, ctx: NonNull<ibv_context>) -> Result<ibv_device_attr, FabricError> {
    let mut attr = MaybeUninit::<ibv_device_attr>::zeroed();
    // SAFETY: an open context and a writable attribute struct of verbs.h's layout.
    let rc = unsafe { (lib.ibv_query_device)(ctx.as_ptr(), attr.as_mut_ptr()) };
    if rc != 0 {
        return Err(verbs_error("ibv_query_device", errno(rc), None));
    }
    // SAFETY: zero-initialised plain data, filled in by the call.
    Ok(unsafe { attr.assume_init() })
}

/// `ibv_query_port` as verbs.h's inline does it: through the provider's extended
/// `query_port` when the context has one (it fills `link_layer`), else the exported compat
/// function.
fn query_port(
    lib: &Lib,
    ctx: NonNull<ibv_context>,
    port: u8,
) -> Result<ibv_port_attr, FabricError> {
    let mut attr = MaybeUninit::<ibv_port_attr>::zeroed();
    let rc = match extended_query_port(ctx) {
        // SAFETY: the provider's function for this context, with verbs.h's arguments.
        Some(f) => unsafe {
            f(
                ctx.as_ptr(),
                port,
                attr.as_mut_ptr(),
                std::mem::size_of::<ibv_port_attr>(),
            )
        },
        // SAFETY: an open context and a zeroed struct at least as large as the compat one.
        None => unsafe { (lib.ibv_query_port)(ctx.as_ptr(), port, attr.as_mut_ptr()) },
    };
    if rc != 0 {
        return Err(verbs_error("ibv_query_port", errno(rc), None));
    }
    // SAFETY: zero-initialised plain data, filled in by the call.
    Ok(unsafe { attr.assume_init() })
}

type QueryPortEx = unsafe extern "C" fn(*mut ibv_context, u8, *mut ibv_port_attr, usize) -> i32;

/// verbs.h's `verbs_get_ctx_op(ctx, query_port)`.
fn extended_query_port(ctx: NonNull<ibv_context>) -> Option<QueryPortEx> {
    // SAFETY: an open context; `abi_compat` is `-1` exactly when the context is embedded in
    // a `verbs_context` (verbs.h's `verbs_get_ctx`), whose `sz` says which of its
    // operations exist.
    unsafe {
        if (*ctx.as_ptr()).abi_compat as usize != u32::MAX as usize {
            return None;
        }
        let vctx = ctx
            .as_ptr()
            .cast::<u8>()
            .sub(offset_of!(verbs_context, context))
            .cast::<verbs_context>();
        let needed = std::mem::size_of::<verbs_context>() - offset_of!(verbs_context, query_port);
        if (*vctx).sz < needed {
            return None;
        }
        (*vctx).query_port
    }
}

fn query_gid(
    lib: &Lib,
    ctx: NonNull<ibv_context>,
    port: u8,
    index: u8,
) -> Result<[u8; 16], FabricError> {
    let mut gid = MaybeUninit::<ibv_gid>::zeroed();
    // SAFETY: an open context and a writable 16-byte GID.
    let rc = unsafe { (lib.ibv_query_gid)(ctx.as_ptr(), port, index.into(), gid.as_mut_ptr()) };
    if rc != 0 {
        return Err(verbs_error(
            "ibv_query_gid",
            io::Error::last_os_error(),
            None,
        ));
    }
    // SAFETY: filled in by the call; `raw` covers the whole union.
    Ok(unsafe { gid.assume_init().raw })
}

/// The first RoCE v2 GID that maps an IPv4 address (`::ffff:a.b.c.d`), else 0. The GID type
/// comes from sysfs (`gid_attrs/types/N`), which every kernel with RoCE v2 has.
fn default_gid_index(lib: &Lib, ctx: NonNull<ibv_context>, name: &str, port: u8, len: u8) -> u8 {
    let types = format!("/sys/class/infiniband/{name}/ports/{port}/gid_attrs/types");
    (0..len)
        .find(|&i| {
            let Ok(gid) = query_gid(lib, ctx, port, i) else {
                return false;
            };
            let ipv4_mapped = gid[..10].iter().all(|&b| b == 0) && gid[10..12] == [0xff, 0xff];
            ipv4_mapped
                && std::fs::read_to_string(format!("{types}/{i}"))
                    .is_ok_and(|t| t.trim() == "RoCE v2")
        })
        .unwrap_or(0)
}

/// The largest inline payload the device gives an RC queue pair: a throw-away queue pair asks
/// for 1024 bytes, then less until the provider accepts, and the provider answers with what
/// it grants. 0 when nothing works (inline sends are then refused at post time).
fn probe_max_inline(lib: &Lib, ctx: NonNull<ibv_context>) -> u32 {
    // SAFETY: plain create/destroy calls on an open context; every object made is destroyed
    // before returning, in reverse order, and null results are checked.
    unsafe {
        let pd = (lib.ibv_alloc_pd)(ctx.as_ptr());
        if pd.is_null() {
            return 0;
        }
        let cq = (lib.ibv_create_cq)(
            ctx.as_ptr(),
            2,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
        let mut granted = 0;
        if !cq.is_null() {
            for want in [1024, 512, 256, 128, 64] {
                let mut init: ibv_qp_init_attr = std::mem::zeroed();
                init.send_cq = cq;
                init.recv_cq = cq;
                init.qp_type = ibv_qp_type::IBV_QPT_RC;
                init.cap.max_send_wr = 1;
                init.cap.max_recv_wr = 1;
                init.cap.max_send_sge = 1;
                init.cap.max_recv_sge = 1;
                init.cap.max_inline_data = want;
                let qp = (lib.ibv_create_qp)(pd, &mut init);
                if !qp.is_null() {
                    granted = init.cap.max_inline_data.max(want);
                    (lib.ibv_destroy_qp)(qp);
                    break;
                }
            }
            (lib.ibv_destroy_cq)(cq);
        }
        (lib.ibv_dealloc_pd)(pd);
        granted
    }
}

/// An errno that a verbs call returned (they return it rather than set `errno`); some
/// providers return -1 and set `errno` instead.
pub(super) fn errno(rc: i32) -> io::Error {
    if rc > 0 {
        io::Error::from_raw_os_error(rc)
    } else {
        io::Error::last_os_error()
    }
}

impl Fabric for Device {
    type Pd = ProtectionDomain;
    type Mr = MemoryRegion;
    type Channel = CompletionChannel;
    type Cq = CompletionQueue;
    type Qp = QueuePair;

    fn kind(&self) -> FabricKind {
        FabricKind::Verbs
    }

    fn device_name(&self) -> &str {
        self.name()
    }

    fn max_inline_data(&self) -> u32 {
        self.inner.max_inline_data
    }

    fn alloc_pd(&self) -> Result<ProtectionDomain, FabricError> {
        ProtectionDomain::new(self)
    }

    fn create_channel(&self) -> Result<CompletionChannel, FabricError> {
        CompletionChannel::new(self)
    }

    fn create_cq(
        &self,
        capacity: u32,
        channel: Option<&CompletionChannel>,
    ) -> Result<CompletionQueue, FabricError> {
        CompletionQueue::new(self, capacity, channel)
    }
}
