//! The HTTP service: tokio accepts connections and reads requests; the routing, the state
//! and the database run on tokio's blocking pool under one lock, so that each request is
//! applied and persisted (one transaction) before its answer goes out. A background task
//! ticks expiry and node liveness.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::auth::{Credentials, Principal};
use super::config::ResourceManagerConfig;
use super::metrics;
use super::request::{parse_head, Head, RequestError, Response};
use super::state::{State, StateConfig, StateError};
use super::store::{Store, StoreError};
use crate::cluster::api::{ApiError, Heartbeat, LeaseRequest, NodeRegistration, RenewRequest};
use crate::cluster::token::now_millis;

/// Starting the resource manager failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("resource manager configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the resource manager's runtime: {0}")]
    Runtime(std::io::Error),
}

/// The state and its database, under one lock.
struct Core {
    state: State,
    store: Store,
}

impl Core {
    /// Runs `op` on the state and writes what it changed. When the write fails, the state
    /// is reloaded from the database (so memory never runs ahead of it) and the request
    /// fails as internal.
    fn apply<T>(
        &mut self,
        op: impl FnOnce(&mut State) -> Result<T, StateError>,
    ) -> Result<T, Failure> {
        let result = op(&mut self.state);
        let dirty = self.state.take_dirty();
        if let Err(e) = self.store.save(&self.state, &dirty) {
            eprintln!("rafi resource manager: writing the database failed: {e}");
            let config = self.state.config().clone();
            match self.store.load(config, now_millis()) {
                Ok(state) => self.state = state,
                Err(e) => eprintln!("rafi resource manager: reloading the database failed: {e}"),
            }
            return Err(Failure::new(500, "internal", format!("database: {e}")));
        }
        result.map_err(Failure::from)
    }
}

/// What the service shares between requests.
struct Shared {
    core: Mutex<Core>,
    credentials: Credentials,
    max_request_bytes: usize,
    request_timeout: Duration,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves a consistent state (every change is
        // persisted or reloaded), so a poisoned lock is still usable.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A refused request: status and [`ApiError`].
struct Failure {
    status: u16,
    error: ApiError,
}

impl Failure {
    fn new(status: u16, kind: &str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            error: ApiError {
                kind: kind.into(),
                message: message.into(),
            },
        }
    }

    fn response(&self) -> Response {
        Response::json(self.status, json(&self.error))
    }
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Failure {
        let status = match e.kind() {
            "bad_request" => 400,
            "forbidden" => 403,
            "not_found" => 404,
            "exhausted" => 409,
            "gone" => 410,
            _ => 500,
        };
        Failure::new(status, e.kind(), e.to_string())
    }
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Failure {
        Failure::new(e.status(), "bad_request", e.to_string())
    }
}

fn json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // The API types are plain data and always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

/// A running resource manager. [`ResourceManager::shutdown`] stops it; dropping it stops
/// it too, without waiting.
pub struct ResourceManager {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for ResourceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceManager")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl ResourceManager {
    /// Opens the database, binds the listener and serves on a runtime of its own (two
    /// worker threads), until [`ResourceManager::shutdown`]. Callable from any thread,
    /// inside a tokio runtime or not.
    ///
    /// # Errors
    /// [`StartError`]: a bad configuration (empty secret, a client name with `:` or an
    /// empty client secret, zero intervals), the database, the address.
    pub fn start(config: ResourceManagerConfig) -> Result<ResourceManager, StartError> {
        validate(&config)?;
        let state_config = StateConfig {
            secret: config.secret.as_bytes().to_vec(),
            heartbeat_interval_ms: config.heartbeat_interval.as_millis().max(1) as u64,
            max_lease_ms: config.max_lease.as_millis().max(1) as u64,
        };
        let mut store = Store::open(&config.database)?;
        let mut state = store.load(state_config, now_millis())?;
        state.tick(now_millis());
        let dirty = state.take_dirty();
        store.save(&state, &dirty)?;
        let listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rafi-resource-manager")
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let shared = Arc::new(Shared {
            core: Mutex::new(Core { state, store }),
            credentials: Credentials::new(&config.secret, &config.clients),
            max_request_bytes: config.max_request_bytes,
            request_timeout: config.request_timeout,
        });
        let (stop, stopped) = watch::channel(false);
        {
            let _entered = runtime.enter();
            let listener = TcpListener::from_std(listener).map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
            runtime.spawn(accept(listener, shared.clone(), stopped.clone()));
            runtime.spawn(ticker(shared, config.tick_interval, stopped));
        }
        Ok(ResourceManager {
            address,
            stop,
            runtime: Some(runtime),
        })
    }

    /// The address it listens on (the real port when the configuration asked for 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting, lets requests in progress finish (up to 5 s) and closes the
    /// database. Every answered request is already persisted. Called inside a tokio
    /// runtime, it does not wait.
    pub fn shutdown(mut self) {
        self.stop_now(Duration::from_secs(5));
    }

    fn stop_now(&mut self, wait: Duration) {
        let _ = self.stop.send(true);
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Blocking inside a runtime would panic.
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(wait);
            }
        }
    }
}

impl Drop for ResourceManager {
    fn drop(&mut self) {
        self.stop_now(Duration::from_secs(1));
    }
}

fn validate(config: &ResourceManagerConfig) -> Result<(), StartError> {
    let bad = |m: String| Err(StartError::Config(m));
    if config.secret.is_empty() {
        return bad("the cluster secret is empty".into());
    }
    for (name, secret) in &config.clients {
        if name.is_empty() || name.contains(':') {
            return bad(format!("client name {name:?}: not empty, no ':'"));
        }
        if secret.is_empty() {
            return bad(format!("client {name:?} has an empty secret"));
        }
    }
    if config.heartbeat_interval.is_zero() || config.tick_interval.is_zero() {
        return bad("the heartbeat and tick intervals must be above zero".into());
    }
    Ok(())
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, shared.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    eprintln!("rafi resource manager: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn ticker(shared: Arc<Shared>, every: Duration, mut stopped: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = interval.tick() => {
                let shared = shared.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = shared.core().apply(|s| {
                        s.tick(now_millis());
                        Ok(())
                    });
                })
                .await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let read = tokio::time::timeout(
        shared.request_timeout,
        read_request(&mut stream, shared.max_request_bytes),
    )
    .await;
    let response = match read {
        Err(_) => Failure::new(408, "bad_request", "the request took too long").response(),
        Ok(Err(None)) => return, // closed before a request
        Ok(Err(Some(e))) => Failure::from(e).response(),
        Ok(Ok((head, body))) => {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || route(&shared, &head, &body))
                .await
                .unwrap_or_else(|_| Failure::new(500, "internal", "the handler failed").response())
        }
    };
    let _ = stream.write_all(&response.to_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads one request; `Err(None)` when the peer closed without sending one.
async fn read_request(
    stream: &mut TcpStream,
    limit: usize,
) -> Result<(Head, Vec<u8>), Option<RequestError>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head, head_len) = loop {
        if let Some(parsed) = parse_head(&buf, limit)? {
            break parsed;
        }
        let n = stream.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err((!buf.is_empty())
                .then(|| RequestError::Malformed("the connection closed mid-request".into())));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut body = buf.split_off(head_len);
    while body.len() < head.content_length {
        let n = stream.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(Some(RequestError::Malformed(
                "the connection closed mid-body".into(),
            )));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(head.content_length);
    Ok((head, body))
}

fn route(shared: &Shared, head: &Head, body: &[u8]) -> Response {
    match handle(shared, head, body) {
        Ok(response) => response,
        Err(failure) => failure.response(),
    }
}

fn handle(shared: &Shared, head: &Head, body: &[u8]) -> Result<Response, Failure> {
    let who = shared
        .credentials
        .authenticate(head.authorization.as_deref())
        .ok_or_else(|| {
            Failure::new(
                401,
                "unauthorized",
                "no or wrong credential: send `Authorization: Bearer <cluster secret>` \
                 or `Bearer <client>:<secret>`",
            )
        })?;
    let segments: Vec<&str> = head.path.trim_matches('/').split('/').collect();
    let method = head.method.as_str();
    let ok = |value: &dyn ErasedJson| Ok(Response::json(200, value.to_json()));
    match (method, segments.as_slice()) {
        ("GET", ["metrics"]) => {
            let m = shared.core().state.metrics(now_millis());
            Ok(Response {
                status: 200,
                content_type: metrics::CONTENT_TYPE,
                body: metrics::render(&m).into_bytes(),
            })
        }
        ("GET", ["v1", "nodes"]) => ok(&shared.core().state.nodes()),
        ("GET", ["v1", "leases"]) => ok(&shared.core().state.leases()),
        ("GET", ["v1", "usage"]) => ok(&shared.core().state.usage(now_millis())),
        ("POST", ["v1", "nodes"]) => {
            manager(&who)?;
            let registration: NodeRegistration = decode(body)?;
            ok(&shared
                .core()
                .apply(|s| s.register(registration, now_millis()))?)
        }
        ("POST", ["v1", "nodes", node, "heartbeat"]) => {
            manager(&who)?;
            let node = id(node, "node")?;
            let heartbeat: Heartbeat = decode(body)?;
            ok(&shared
                .core()
                .apply(|s| s.heartbeat(node, heartbeat, now_millis()))?)
        }
        ("POST", ["v1", "leases"]) => {
            let client = client(&who)?;
            let request: LeaseRequest = decode(body)?;
            ok(&shared
                .core()
                .apply(|s| s.lease(client, &request, now_millis()))?)
        }
        ("POST", ["v1", "leases", lease, "renew"]) => {
            let client = client(&who)?;
            let lease = id(lease, "lease")?;
            let request: RenewRequest = decode(body)?;
            ok(&shared
                .core()
                .apply(|s| s.renew(client, lease, &request, now_millis()))?)
        }
        ("DELETE", ["v1", "leases", lease]) => {
            let client = client(&who)?;
            let lease = id(lease, "lease")?;
            ok(&shared
                .core()
                .apply(|s| s.release(client, lease, now_millis()))?)
        }
        (
            _,
            ["metrics"]
            | ["v1", "nodes"]
            | ["v1", "leases"]
            | ["v1", "usage"]
            | ["v1", "nodes", _, "heartbeat"]
            | ["v1", "leases", _]
            | ["v1", "leases", _, "renew"],
        ) => Err(Failure::new(
            405,
            "bad_request",
            format!("{method} is not allowed on {}", head.path),
        )),
        _ => Err(Failure::new(
            404,
            "not_found",
            format!("no endpoint {method} {}", head.path),
        )),
    }
}

/// Serializes any answer type behind one reference type (keeps `handle` short).
trait ErasedJson {
    fn to_json(&self) -> Vec<u8>;
}

impl<T: Serialize> ErasedJson for T {
    fn to_json(&self) -> Vec<u8> {
        json(self)
    }
}

fn manager(who: &Principal) -> Result<(), Failure> {
    match who {
        Principal::Manager => Ok(()),
        Principal::Client(_) => Err(Failure::new(
            403,
            "forbidden",
            "nodes are registered by executor managers (the cluster secret)",
        )),
    }
}

fn client(who: &Principal) -> Result<&str, Failure> {
    match who {
        Principal::Client(name) => Ok(name),
        Principal::Manager => Err(Failure::new(
            403,
            "forbidden",
            "leases are taken, renewed and released by clients (`Bearer <client>:<secret>`)",
        )),
    }
}

fn id(text: &str, what: &str) -> Result<u64, Failure> {
    text.parse().map_err(|_| {
        Failure::new(
            400,
            "bad_request",
            format!("{what} id {text:?} is not a number"),
        )
    })
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| Failure::new(400, "bad_request", format!("request body: {e}")))
}
