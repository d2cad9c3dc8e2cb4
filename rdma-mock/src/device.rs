//! Devices and protection domains.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cq::{CompletionChannel, CompletionQueue};
use crate::error::{AllocError, ConnectError, OpenError};
use crate::memory::{Arena, MemoryRegion};
use crate::qp::{QpShared, QueuePair};
use crate::types::{Access, QpConfig};
use crate::{shm, tcp};

/// Which software fabric a device runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fabric {
    /// Processes on one host: one-sided operations are direct copies into the peer's
    /// shared mapping, with no help from the peer's threads.
    Shm,
    /// Processes on different hosts: a progress thread per connection on the target applies
    /// incoming operations to its memory.
    Tcp,
}

impl Fabric {
    pub fn name(self) -> &'static str {
        match self {
            Fabric::Shm => "shm",
            Fabric::Tcp => "tcp",
        }
    }
}

impl std::str::FromStr for Fabric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shm" => Ok(Fabric::Shm),
            "tcp" => Ok(Fabric::Tcp),
            other => Err(format!("unknown fabric '{other}' (expected shm or tcp)")),
        }
    }
}

impl std::fmt::Display for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of a device.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub fabric: Fabric,
    /// Virtual size of each protection domain's arena: the most memory its regions can hold
    /// together. The arena is sparse: only pages that regions touch use memory.
    pub arena_size: usize,
    /// tcp: where the device listens for connections (port 0 picks a free one).
    pub tcp_listen: SocketAddr,
    /// How long `QueuePair::connect` waits for the peer's side of the handshake.
    pub connect_timeout: Duration,
}

impl DeviceConfig {
    /// Defaults for `fabric`: 16 GiB arenas, tcp on 127.0.0.1 with a free port, 10 s timeout.
    pub fn new(fabric: Fabric) -> Self {
        Self {
            fabric,
            arena_size: 16 << 30,
            tcp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Where a queue pair can be reached: exchange it out of band (it is serde-serializable),
/// then hand it to the peer's [`QueuePair::connect`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub fabric: Fabric,
    /// shm: the device's abstract Unix socket name; tcp: `host:port`.
    pub address: String,
    /// Random identity of the device (so that stale endpoints are recognised).
    pub device: u64,
    pub qpn: u32,
}

/// A link that a connection agent made for one of our QPs, waiting for its `connect`.
pub(crate) struct Accepted {
    pub(crate) peer_device: u64,
    pub(crate) peer_qpn: u32,
    pub(crate) link: Pending,
}

/// A link made by an agent that the QP's `connect` has not taken yet. It does nothing until
/// taken: a tcp connection is not read, and the death of an shm peer does not fail the QP.
pub(crate) enum Pending {
    Shm(shm::ShmLink),
    Tcp(std::net::TcpStream, tcp::PeerHello),
}

/// What the connection agents of a device share with its handles.
#[derive(Default)]
pub(crate) struct Registry {
    qps: Mutex<HashMap<u32, Weak<QpShared>>>,
    accepted: Mutex<HashMap<u32, Offer>>,
    accepted_cv: Condvar,
}

/// A link in the registry: offered (its QP is spoken for) and, once the agent has replied to
/// the dialer, published (the QP's `connect` may take it).
struct Offer {
    accepted: Accepted,
    published: bool,
}

impl Registry {
    pub(crate) fn qp(&self, qpn: u32) -> Option<Arc<QpShared>> {
        self.qps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&qpn)
            .and_then(Weak::upgrade)
    }

    pub(crate) fn insert_qp(&self, qpn: u32, qp: &Arc<QpShared>) {
        self.qps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(qpn, Arc::downgrade(qp));
    }

    pub(crate) fn remove_qp(&self, qpn: u32) {
        self.qps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&qpn);
        self.accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&qpn);
    }

    /// Speaks for `qpn` with a link made by an agent, so that a second dialer is refused.
    /// Returns false (and drops the link, closing its connection) if one is there already.
    /// The QP's `connect` cannot take the link until [`Registry::publish`]: the agent replies
    /// to the dialer in between, and nothing of the QP's may reach the dialer before that
    /// reply (on tcp the two share the connection).
    pub(crate) fn offer(&self, qpn: u32, accepted: Accepted) -> bool {
        let mut map = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&qpn) {
            return false;
        }
        let published = false;
        map.insert(
            qpn,
            Offer {
                accepted,
                published,
            },
        );
        true
    }

    /// Lets the QP's `connect` take the link offered for `qpn` by the given peer.
    pub(crate) fn publish(&self, qpn: u32, peer_device: u64, peer_qpn: u32) {
        let mut map = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(offer) = map.get_mut(&qpn) {
            if offer.accepted.peer_device == peer_device && offer.accepted.peer_qpn == peer_qpn {
                offer.published = true;
                self.accepted_cv.notify_all();
            }
        }
    }

    /// Withdraws the pending link of `qpn` from the given peer (its handshake failed after
    /// the offer); dropping it closes its connection.
    pub(crate) fn withdraw(&self, qpn: u32, peer_device: u64, peer_qpn: u32) {
        let mut map = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&qpn).is_some_and(|o| {
            o.accepted.peer_device == peer_device && o.accepted.peer_qpn == peer_qpn
        }) {
            map.remove(&qpn);
        }
    }

    /// Waits for the link an agent made for `qpn` from the expected peer. A link from any
    /// other peer is discarded (its connection closed, so that peer learns it), and the wait
    /// goes on.
    pub(crate) fn take(
        &self,
        qpn: u32,
        peer: &Endpoint,
        timeout: Duration,
    ) -> Result<Pending, ConnectError> {
        let deadline = Instant::now() + timeout;
        let mut map = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(offer) = map.get(&qpn) {
                let a = &offer.accepted;
                let expected = a.peer_device == peer.device && a.peer_qpn == peer.qpn;
                if !expected {
                    map.remove(&qpn); // a stray dialer: dropping its link closes its connection
                    continue;
                }
                if offer.published {
                    let offer = map.remove(&qpn).expect("looked up under the same lock");
                    return Ok(offer.accepted.link);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ConnectError::Timeout(timeout));
            }
            map = self
                .accepted_cv
                .wait_timeout(map, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

pub(crate) enum Listener {
    Shm(shm::Agent),
    Tcp(tcp::Listener),
}

pub(crate) struct DeviceShared {
    pub(crate) config: DeviceConfig,
    pub(crate) uid: u64,
    pub(crate) registry: Arc<Registry>,
    pub(crate) listener: Listener,
    next_qpn: AtomicU32,
    next_key_tag: AtomicU32,
}

impl DeviceShared {
    /// The high bits of the next region key: non-zero, unique across the device's domains.
    pub(crate) fn next_key_tag(&self) -> u32 {
        let tag = self.next_key_tag.fetch_add(1, Ordering::Relaxed) & ((1 << 20) - 1);
        if tag == 0 {
            self.next_key_tag.fetch_add(1, Ordering::Relaxed) & ((1 << 20) - 1)
        } else {
            tag
        }
    }

    pub(crate) fn address(&self) -> String {
        match &self.listener {
            Listener::Shm(agent) => agent.address(),
            Listener::Tcp(listener) => listener.address(),
        }
    }
}

/// An open device (`ibv_context`). Cheap to clone; everything made from it keeps it alive.
#[derive(Clone)]
pub struct Device {
    shared: Arc<DeviceShared>,
}

impl Device {
    /// Opens a device of the given fabric and starts its connection agent.
    ///
    /// # Errors
    /// When the listening socket or the agent thread cannot be created.
    pub fn open(config: DeviceConfig) -> Result<Self, OpenError> {
        let uid = random_u64();
        let registry = Arc::new(Registry::default());
        let listener = match config.fabric {
            Fabric::Shm => Listener::Shm(shm::Agent::start(uid, registry.clone())?),
            Fabric::Tcp => Listener::Tcp(tcp::Listener::start(uid, &config, registry.clone())?),
        };
        Ok(Self {
            shared: Arc::new(DeviceShared {
                config,
                uid,
                registry,
                listener,
                next_qpn: AtomicU32::new(1),
                next_key_tag: AtomicU32::new(1),
            }),
        })
    }

    pub fn fabric(&self) -> Fabric {
        self.shared.config.fabric
    }

    /// Allocates a protection domain with its own arena.
    ///
    /// # Errors
    /// When the arena's shared memory cannot be created.
    pub fn alloc_pd(&self) -> Result<ProtectionDomain, AllocError> {
        let arena = Arena::create(self.shared.config.arena_size)?;
        Ok(ProtectionDomain {
            shared: Arc::new(PdShared {
                device: self.shared.clone(),
                arena,
            }),
        })
    }

    /// Creates a completion channel for blocking waits.
    ///
    /// # Errors
    /// When the eventfd cannot be created.
    pub fn create_channel(&self) -> Result<CompletionChannel, AllocError> {
        CompletionChannel::new()
    }

    /// Creates a completion queue, optionally signalling `channel` when armed.
    ///
    /// # Errors
    /// When its shared page cannot be created.
    pub fn create_cq(
        &self,
        channel: Option<&CompletionChannel>,
    ) -> Result<CompletionQueue, AllocError> {
        CompletionQueue::new(channel)
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("fabric", &self.shared.config.fabric)
            .field("address", &self.shared.address())
            .finish()
    }
}

pub(crate) struct PdShared {
    pub(crate) device: Arc<DeviceShared>,
    pub(crate) arena: Arena,
}

impl std::fmt::Debug for PdShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdShared")
            .field("arena", &self.arena)
            .finish()
    }
}

/// A protection domain (`ibv_pd`): its regions are reachable only through its QPs.
#[derive(Clone, Debug)]
pub struct ProtectionDomain {
    shared: Arc<PdShared>,
}

impl ProtectionDomain {
    /// Allocates and registers `len` bytes of zeroed, page-aligned shared memory.
    ///
    /// # Errors
    /// When the arena has no room or the region table is full.
    pub fn register(&self, len: usize, access: Access) -> Result<MemoryRegion, AllocError> {
        MemoryRegion::register(self.shared.clone(), len, access)
    }

    /// Creates a reliable-connection queue pair whose completions go to `send_cq` and
    /// `recv_cq` (which may be the same queue).
    ///
    /// # Errors
    /// For an invalid configuration or when its shared memory cannot be created.
    pub fn create_qp(
        &self,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        config: QpConfig,
    ) -> Result<QueuePair, AllocError> {
        let qpn = self.shared.device.next_qpn.fetch_add(1, Ordering::Relaxed);
        QueuePair::create(
            self.shared.clone(),
            qpn,
            send_cq.shared().clone(),
            recv_cq.shared().clone(),
            config,
        )
    }
}

/// A random 64-bit value from the kernel's entropy (device identities, socket names).
pub(crate) fn random_u64() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return nanos ^ ((crate::sys::pid() as u64) << 32);
    }
    u64::from_le_bytes(bytes)
}
