//! One part of an allocation: the executor started on one node of a lease, on the fabric
//! that node runs, behind a lock (calls on one allocation may come from several threads).

use std::time::Duration;

use rafi::client::{AllocationOptions, FunctionId, InputBuffer, InvokeError};
use rafi::cluster::api::LeasePart;
use rafi::cluster::lease::Leased;
use rafi::fabric::FabricKind;

use crate::status::{Code, Failure};

/// A leased executor on one of the fabrics this library was built with.
pub enum AnyLeased {
    Mock(Leased<rdma_mock::Device>),
    #[cfg(feature = "verbs")]
    Verbs(Leased<rafi::fabric::verbs::Device>),
}

/// Runs `$body` with `$a` bound to the `&mut Allocation` of whichever fabric it is on.
macro_rules! with_allocation {
    ($leased:expr, $a:ident => $body:expr) => {
        match $leased {
            $crate::part::AnyLeased::Mock(l) => {
                let $a = &mut l.allocation;
                $body
            }
            #[cfg(feature = "verbs")]
            $crate::part::AnyLeased::Verbs(l) => {
                let $a = &mut l.allocation;
                $body
            }
        }
    };
}
pub(crate) use with_allocation;

impl AnyLeased {
    /// Starts the executor of `part` through its node's manager, on the part's fabric.
    pub fn allocate(
        part: &LeasePart,
        functions: &[&str],
        mode: Option<&str>,
        options: AllocationOptions,
    ) -> Result<Self, Failure> {
        let fabric_failure = |e: &dyn std::fmt::Display| {
            Failure::new(
                Code::Fabric,
                format!("opening the {} fabric: {e}", part.fabric),
            )
        };
        match part.fabric {
            FabricKind::Shm | FabricKind::Tcp => {
                let kind = if part.fabric == FabricKind::Shm {
                    rdma_mock::Fabric::Shm
                } else {
                    rdma_mock::Fabric::Tcp
                };
                let mut config = rdma_mock::DeviceConfig::new(kind);
                if let Some(listen) = tcp_listen()? {
                    config.tcp_listen = listen;
                }
                let device = rdma_mock::Device::open(config).map_err(|e| fabric_failure(&e))?;
                Ok(Self::Mock(Leased::allocate(
                    device, part, functions, mode, options,
                )?))
            }
            FabricKind::Verbs => Self::allocate_verbs(part, functions, mode, options),
        }
    }

    #[cfg(feature = "verbs")]
    fn allocate_verbs(
        part: &LeasePart,
        functions: &[&str],
        mode: Option<&str>,
        options: AllocationOptions,
    ) -> Result<Self, Failure> {
        let config = rafi::fabric::FabricConfig::new(FabricKind::Verbs);
        let device = rafi::fabric::verbs::open(&config)
            .map_err(|e| Failure::new(Code::Fabric, format!("opening the verbs fabric: {e}")))?;
        Ok(Self::Verbs(Leased::allocate(
            device, part, functions, mode, options,
        )?))
    }

    #[cfg(not(feature = "verbs"))]
    fn allocate_verbs(
        part: &LeasePart,
        _: &[&str],
        _: Option<&str>,
        _: AllocationOptions,
    ) -> Result<Self, Failure> {
        Err(Failure::new(
            Code::Fabric,
            format!(
                "node {} runs the verbs fabric, but this librafi was built without it \
                 (scripts/install-capi.sh --verbs)",
                part.node_name
            ),
        ))
    }

    /// The node this part runs on.
    pub fn node(&self) -> &str {
        match self {
            AnyLeased::Mock(l) => l.node(),
            #[cfg(feature = "verbs")]
            AnyLeased::Verbs(l) => l.node(),
        }
    }

    /// Hands the renewed `part` (its fresh token) to this node's executor manager.
    pub fn renew(&mut self, part: &LeasePart) -> Result<(), Failure> {
        match self {
            AnyLeased::Mock(l) => l.renew(part)?,
            #[cfg(feature = "verbs")]
            AnyLeased::Verbs(l) => l.renew(part)?,
        };
        Ok(())
    }

    pub fn workers(&mut self) -> usize {
        with_allocation!(self, a => a.workers())
    }

    pub fn max_payload(&mut self) -> usize {
        with_allocation!(self, a => a.max_payload())
    }

    /// The handle of each function named, in that order.
    pub fn resolve(&mut self, functions: &[&str]) -> Result<Vec<FunctionId>, Failure> {
        with_allocation!(self, a => functions
            .iter()
            .map(|f| a.function(f).map_err(Failure::from))
            .collect())
    }

    /// Blocking invocation into the caller's buffer; on `Truncated`, `needed` is set to the
    /// output's length.
    pub fn invoke_into(
        &mut self,
        f: FunctionId,
        input: &[u8],
        output: &mut [u8],
        needed: &mut usize,
    ) -> Result<usize, Failure> {
        let result = with_allocation!(self, a => a.invoke_into(f, input, output));
        result.map_err(|e| {
            if let InvokeError::OutputBufferTooSmall { len, .. } = e {
                *needed = len;
            }
            Failure::from(e)
        })
    }
}

/// Registered input memory of one part's allocation, on whichever fabric it is.
pub enum AnyBuffer {
    Mock(InputBuffer<rdma_mock::Device>),
    #[cfg(feature = "verbs")]
    Verbs(InputBuffer<rafi::fabric::verbs::Device>),
}

impl AnyBuffer {
    pub fn as_ptr(&self) -> *mut u8 {
        match self {
            AnyBuffer::Mock(b) => b.as_ptr(),
            #[cfg(feature = "verbs")]
            AnyBuffer::Verbs(b) => b.as_ptr(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            AnyBuffer::Mock(b) => b.len(),
            #[cfg(feature = "verbs")]
            AnyBuffer::Verbs(b) => b.len(),
        }
    }
}

impl AnyLeased {
    /// Registers `len` bytes of input memory with this part's allocation.
    pub fn input_buffer(&self, len: usize) -> Result<AnyBuffer, Failure> {
        match self {
            AnyLeased::Mock(l) => Ok(AnyBuffer::Mock(l.allocation.input_buffer(len)?)),
            #[cfg(feature = "verbs")]
            AnyLeased::Verbs(l) => Ok(AnyBuffer::Verbs(l.allocation.input_buffer(len)?)),
        }
    }

    /// Invokes `f` on bytes `range` of `buffer`, read in place; the output goes into
    /// `output`. On `Truncated`, `needed` holds the output's length.
    pub fn invoke_from_into(
        &mut self,
        f: FunctionId,
        buffer: &AnyBuffer,
        range: std::ops::Range<usize>,
        output: &mut [u8],
        needed: &mut usize,
    ) -> Result<usize, Failure> {
        let view = match (self, buffer) {
            (AnyLeased::Mock(l), AnyBuffer::Mock(b)) => l
                .allocation
                .invoke_from(f, b, range)
                .map(|v| copy_out(&v, output)),
            #[cfg(feature = "verbs")]
            (AnyLeased::Verbs(l), AnyBuffer::Verbs(b)) => l
                .allocation
                .invoke_from(f, b, range)
                .map(|v| copy_out(&v, output)),
            #[cfg(feature = "verbs")]
            _ => Err(InvokeError::BadBuffer(
                "it was registered on another fabric".into(),
            )),
        };
        match view {
            Ok(Ok(len)) => Ok(len),
            Ok(Err(len)) => {
                *needed = len;
                Err(InvokeError::OutputBufferTooSmall {
                    len,
                    capacity: output.len(),
                }
                .into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Copies an output into `output`: its length, or `Err(length)` when it does not fit.
fn copy_out(view: &[u8], output: &mut [u8]) -> Result<usize, usize> {
    let out = output.get_mut(..view.len()).ok_or(view.len())?;
    out.copy_from_slice(view);
    Ok(view.len())
}

/// Where the client's tcp-fabric device listens: `RAFI_TCP_LISTEN` (`ip:port`, port 0 for
/// any), else loopback, which reaches executors on this host only.
fn tcp_listen() -> Result<Option<std::net::SocketAddr>, Failure> {
    match std::env::var("RAFI_TCP_LISTEN") {
        Err(_) => Ok(None),
        Ok(text) => text.parse().map(Some).map_err(|e| {
            Failure::arg(format!(
                "RAFI_TCP_LISTEN={text} is not an ip:port address: {e}"
            ))
        }),
    }
}

/// The options of an allocation from the C configuration's values (zero: the default).
pub fn options(
    slots: u32,
    slot_size: u32,
    timeout_s: f64,
    spin_us: f64,
) -> Result<AllocationOptions, Failure> {
    let mut options = AllocationOptions {
        client_name: format!("librafi-{}", std::process::id()),
        ..AllocationOptions::default()
    };
    if slots != 0 || slot_size != 0 {
        let slots = if slots == 0 {
            options.geometry.slots()
        } else {
            slots
        };
        let size = if slot_size == 0 {
            rafi::protocol::SlotGeometry::DEFAULT_SLOT_SIZE
        } else {
            slot_size
        };
        options.geometry = rafi::protocol::SlotGeometry::new(slots, size)
            .map_err(|e| Failure::arg(format!("slots {slots} of {size} B: {e}")))?;
    }
    options.timeout = seconds(timeout_s, "timeout_s")?.unwrap_or(options.timeout);
    // Spin a short while, then sleep on the completion channel: MPI ranks often share
    // cores with other processes. A negative value spins for the whole timeout.
    options.spin = if spin_us < 0.0 || spin_us.is_nan() {
        None
    } else if spin_us == 0.0 {
        Some(Duration::from_micros(100))
    } else {
        Some(seconds(spin_us / 1e6, "spin_us")?.unwrap_or_default())
    };
    Ok(options)
}

/// `value` seconds as a duration; `None` for zero; an error when negative or not finite.
fn seconds(value: f64, what: &str) -> Result<Option<Duration>, Failure> {
    if value == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(value)
        .map(Some)
        .map_err(|_| Failure::arg(format!("{what} = {value} is not a valid duration")))
}
