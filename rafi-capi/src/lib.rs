//! # librafi: the C API of rafi
//!
//! `include/rafi.h` declares these functions; `include/rafi.f90` binds them for Fortran;
//! docs/mpi.md is the guide. The life cycle:
//!
//! ```text
//!  rafi_connect ── client (resource manager address, credential)
//!   └ rafi_lease_create ── POST /v1/leases ──▶ lease (cores on nodes, signed tokens)
//!      └ rafi_alloc_create ── one executor per node of the lease, functions resolved
//!         ├ rafi_invoke                      blocking, round robin over the nodes
//!         ├ rafi_invoke_start → rafi_request  queued for the allocation's progress
//!         │   rafi_test / rafi_wait / rafi_waitall     thread, which fans them out
//!         └ rafi_invoke_many                 many inputs over every worker of every node
//!      rafi_alloc_free, rafi_lease_release, rafi_disconnect
//! ```
//!
//! Every function returns a status code (`RAFI_OK` or `RAFI_ERR_*`) and records a message
//! for the calling thread (`rafi_last_error`); none aborts the process: bad arguments are
//! errors and a panic inside is caught and returned as `RAFI_ERR_BUG`.

#![deny(unsafe_op_in_unsafe_fn)]

mod alloc;
mod ffi;
mod part;
mod request;
mod status;

use std::ffi::{c_char, c_int};
use std::sync::Arc;
use std::time::Duration;

use rafi::cluster::api::{Lease, LeaseRequest};
use rafi::cluster::lease::LeaseClient;

use ffi::{check_buffer, handle, into_handle, optional_text, put, put_optional, take_handle, text};
use request::{slice, slice_mut, Buffers, Progress, Request};
use status::{guard, Code, Failure};

/// `rafi_client`: the resource manager and the client's credential.
pub struct Client {
    leases: LeaseClient,
}

/// `rafi_lease`: a granted lease and the client that holds it.
pub struct LeaseHandle {
    leases: LeaseClient,
    lease: Lease,
}

/// `rafi_alloc`: executors on the nodes of a lease, and the progress of its requests.
/// `progress` is dropped first: its thread ends before the executors do.
pub struct AllocHandle {
    progress: Progress,
    allocation: Arc<alloc::Allocation>,
}

/// `rafi_buffer`: registered input memory of one node of an allocation. The buffer is
/// dropped before the allocation it keeps alive (its memory is registered there).
pub struct BufferHandle {
    buffer: part::AnyBuffer,
    part: usize,
    allocation: Arc<alloc::Allocation>,
}

/// `rafi_request`: a non-blocking invocation.
pub struct RequestHandle(Arc<Request>);

/// `rafi_alloc_config`, as `rafi.h` declares it.
#[repr(C)]
pub struct AllocConfig {
    pub functions: *const c_char,
    pub library: *const c_char,
    pub mode: *const c_char,
    pub slots: u32,
    pub slot_size: u32,
    pub timeout_s: f64,
    pub spin_us: f64,
}

/// The fixed description of a status code.
#[no_mangle]
pub extern "C" fn rafi_strerror(code: c_int) -> *const c_char {
    status::describe(code).as_ptr()
}

/// The message of the calling thread's last failed call ("" if none failed yet).
#[no_mangle]
pub extern "C" fn rafi_last_error() -> *const c_char {
    status::last_error()
}

/// Connects to the resource manager at `resource_manager` (`host:port`) as `client`.
///
/// # Safety
/// The strings are NUL-terminated; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_connect(
    resource_manager: *const c_char,
    client: *const c_char,
    secret: *const c_char,
    out: *mut *mut Client,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller (documented in rafi.h).
        let (address, name, secret) = unsafe {
            (
                text(resource_manager, "resource_manager")?,
                text(client, "client")?,
                text(secret, "secret")?,
            )
        };
        connect(address, name, secret, out)
    })
}

/// Connects with `RAFI_RESOURCE_MANAGER`, `RAFI_CLIENT` and `RAFI_CLIENT_SECRET`.
///
/// # Safety
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_connect_env(out: *mut *mut Client) -> c_int {
    guard(|| {
        let var = |name: &str| {
            std::env::var(name)
                .map_err(|_| Failure::arg(format!("the environment variable {name} is not set")))
        };
        let address = var("RAFI_RESOURCE_MANAGER")?;
        let name = var("RAFI_CLIENT")?;
        let secret = var("RAFI_CLIENT_SECRET")?;
        connect(&address, &name, &secret, out)
    })
}

fn connect(address: &str, name: &str, secret: &str, out: *mut *mut Client) -> Result<(), Failure> {
    if address.is_empty() || name.is_empty() {
        return Err(Failure::arg(
            "the resource manager address and client name are required",
        ));
    }
    let client = Client {
        leases: LeaseClient::new(address, name, secret),
    };
    // The first call checks address and credential at once (a wrong secret fails here).
    rafi::cluster::http::call::<(), serde_json::Value>(
        &client.leases.resource_manager,
        "GET",
        "/v1/nodes",
        &client.leases.credential,
        None,
    )?;
    // SAFETY: `out` is valid for a write by the caller's promise.
    unsafe { put(out, into_handle(client), "out") }
}

/// Frees a client (its leases stay valid) and sets `*client` to NULL.
///
/// # Safety
/// `client` points to a handle from `rafi_connect` or NULL.
#[no_mangle]
pub unsafe extern "C" fn rafi_disconnect(client: *mut *mut Client) -> c_int {
    // SAFETY: forwarded from the caller.
    guard(|| unsafe { take_handle(client, "client") }.map(drop))
}

/// A lease's duration in seconds: positive and finite.
fn lease_duration(duration_s: f64) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(duration_s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| Failure::arg(format!("duration_s = {duration_s} is not a duration")))
}

/// Leases `cores` cores for `duration_s` seconds.
///
/// # Safety
/// `client` is a live handle; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_lease_create(
    client: *const Client,
    cores: c_int,
    duration_s: f64,
    out: *mut *mut LeaseHandle,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let client = unsafe { handle(client, "client") }?;
        if out.is_null() {
            return Err(Failure::arg("out is NULL"));
        }
        let cores = u32::try_from(cores)
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| Failure::arg(format!("cores = {cores}: a lease needs at least one")))?;
        let duration = lease_duration(duration_s)?;
        let lease = client.leases.lease(&LeaseRequest {
            cores,
            memory_mib: 0,
            gpus: 0,
            duration_ms: duration.as_millis().try_into().unwrap_or(u64::MAX),
            fabric: None,
        })?;
        let handle = LeaseHandle {
            leases: client.leases.clone(),
            lease,
        };
        // SAFETY: valid for a write by the caller's promise.
        unsafe { put(out, into_handle(handle), "out") }
    })
}

/// Extends the lease to `duration_s` seconds from now at the resource manager; the handle
/// takes the fresh tokens. Executors already started on it end at the old expiry unless
/// their allocation is renewed too (`rafi_alloc_renew`).
///
/// # Safety
/// `lease` is a live handle, not used by another thread meanwhile.
#[no_mangle]
pub unsafe extern "C" fn rafi_lease_renew(lease: *mut LeaseHandle, duration_s: f64) -> c_int {
    guard(|| {
        // SAFETY: NULL or live and unshared by the caller's promise.
        let l = unsafe { lease.as_mut() }.ok_or_else(|| Failure::arg("lease is NULL"))?;
        let duration = lease_duration(duration_s)?;
        l.lease = l.leases.renew(l.lease.lease, duration)?;
        Ok(())
    })
}

/// Hands the renewed lease's tokens to the executor managers of `alloc` (made on that
/// lease), so that its executors live on to the new expiry.
///
/// # Safety
/// `alloc` and `lease` are live handles.
#[no_mangle]
pub unsafe extern "C" fn rafi_alloc_renew(
    alloc: *const AllocHandle,
    lease: *const LeaseHandle,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let a = unsafe { handle(alloc, "alloc") }?;
        // SAFETY: forwarded from the caller.
        let l = unsafe { handle(lease, "lease") }?;
        a.allocation.renew(&l.lease)
    })
}

/// The lease's id and its cores on all nodes.
///
/// # Safety
/// `lease` is a live handle; the outputs are NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_lease_info(
    lease: *const LeaseHandle,
    id: *mut u64,
    cores: *mut c_int,
    nodes: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let l = &unsafe { handle(lease, "lease") }?.lease;
        let core_count: usize = l.parts.iter().map(|p| p.cores.len()).sum();
        // SAFETY: each is NULL or valid by the caller's promise.
        unsafe {
            put_optional(id, l.lease);
            put_optional(cores, c_int::try_from(core_count).unwrap_or(c_int::MAX));
            put_optional(nodes, c_int::try_from(l.parts.len()).unwrap_or(c_int::MAX));
        }
        Ok(())
    })
}

/// The lease as JSON text (to hand to another process, e.g. with MPI_Bcast), NUL-terminated
/// in `buffer`; `*len` is its length without the NUL (also when `buffer` is too small).
///
/// # Safety
/// `lease` is a live handle; `buffer` is NULL or valid for `capacity` bytes; `len` is NULL
/// or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_lease_export(
    lease: *const LeaseHandle,
    buffer: *mut c_char,
    capacity: usize,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let l = unsafe { handle(lease, "lease") }?;
        check_buffer(buffer, capacity, "buffer")?;
        let json = serde_json::to_string(&l.lease)
            .map_err(|e| Failure::new(Code::Bug, format!("encoding the lease: {e}")))?;
        // SAFETY: NULL or valid by the caller's promise.
        unsafe { put_optional(len, json.len()) };
        if json.len() + 1 > capacity {
            return Err(Failure::new(
                Code::Truncated,
                format!(
                    "the lease takes {} B with its NUL; the buffer has {capacity}",
                    json.len() + 1
                ),
            ));
        }
        // SAFETY: the buffer holds `capacity` > json.len() bytes.
        let out = unsafe { slice_mut(buffer.cast::<u8>(), capacity) };
        out[..json.len()].copy_from_slice(json.as_bytes());
        out[json.len()] = 0;
        Ok(())
    })
}

/// A lease from the text `rafi_lease_export` made, held by `client` (which releases it).
///
/// # Safety
/// `client` is a live handle; `json` is NUL-terminated; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_lease_import(
    client: *const Client,
    json: *const c_char,
    out: *mut *mut LeaseHandle,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (client, json) = unsafe { (handle(client, "client")?, text(json, "json")?) };
        let lease: Lease = serde_json::from_str(json)
            .map_err(|e| Failure::arg(format!("not a lease from rafi_lease_export: {e}")))?;
        let handle = LeaseHandle {
            leases: client.leases.clone(),
            lease,
        };
        // SAFETY: valid for a write by the caller's promise.
        unsafe { put(out, into_handle(handle), "out") }
    })
}

/// Ends the lease at the resource manager (its executors stop), frees the handle and sets
/// `*lease` to NULL. The handle is freed even when the resource manager cannot be reached.
///
/// # Safety
/// `lease` points to a handle from `rafi_lease_create`/`rafi_lease_import` or NULL.
#[no_mangle]
pub unsafe extern "C" fn rafi_lease_release(lease: *mut *mut LeaseHandle) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let Some(l) = (unsafe { take_handle(lease, "lease") })? else {
            return Ok(());
        };
        l.leases.release(l.lease.lease)?;
        Ok(())
    })
}

/// Frees a lease handle without ending the lease (another handle, or another process, may
/// hold it) and sets `*lease` to NULL.
///
/// # Safety
/// `lease` points to a handle from `rafi_lease_create`/`rafi_lease_import` or NULL.
#[no_mangle]
pub unsafe extern "C" fn rafi_lease_free(lease: *mut *mut LeaseHandle) -> c_int {
    // SAFETY: forwarded from the caller.
    guard(|| unsafe { take_handle(lease, "lease") }.map(drop))
}

/// Starts an executor on every node of `lease` for the comma-separated `functions`, with
/// the defaults of `rafi_alloc_config`.
///
/// # Safety
/// `lease` is a live handle; `functions` is NUL-terminated; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_alloc_create(
    lease: *const LeaseHandle,
    functions: *const c_char,
    out: *mut *mut AllocHandle,
) -> c_int {
    let config = AllocConfig {
        functions,
        library: std::ptr::null(),
        mode: std::ptr::null(),
        slots: 0,
        slot_size: 0,
        timeout_s: 0.0,
        spin_us: 0.0,
    };
    // SAFETY: forwarded from the caller; the config lives for the call.
    unsafe { rafi_alloc_create_ex(lease, &config, out) }
}

/// Like `rafi_alloc_create`, with every setting of `config`.
///
/// # Safety
/// `lease` is a live handle; `config` is valid and its strings NUL-terminated or NULL;
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_alloc_create_ex(
    lease: *const LeaseHandle,
    config: *const AllocConfig,
    out: *mut *mut AllocHandle,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (l, c) = unsafe { (handle(lease, "lease")?, handle(config, "config")?) };
        if out.is_null() {
            return Err(Failure::arg("out is NULL"));
        }
        // SAFETY: the config's strings are NUL-terminated or NULL (caller's promise).
        let (functions, library, mode) = unsafe {
            (
                text(c.functions, "config.functions")?,
                optional_text(c.library, "config.library")?,
                optional_text(c.mode, "config.mode")?,
            )
        };
        let names: Vec<&str> = functions
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        let mut options = part::options(c.slots, c.slot_size, c.timeout_s, c.spin_us)?;
        if let Some(path) = library {
            let shipped = rafi::client::ShippedLibrary::from_file(path)
                .map_err(|e| Failure::arg(format!("reading the function library {path}: {e}")))?;
            options.libraries.push(shipped);
        }
        let allocation = alloc::Allocation::create(&l.lease, &names, mode, &options)?;
        let handle = AllocHandle {
            progress: Progress::new(),
            allocation: Arc::new(allocation),
        };
        // SAFETY: valid for a write by the caller's promise.
        unsafe { put(out, into_handle(handle), "out") }
    })
}

/// Ends the allocation's executors, frees the handle and sets `*alloc` to NULL. Requests
/// still queued complete with `RAFI_ERR_CANCELLED`.
///
/// # Safety
/// `alloc` points to a handle from `rafi_alloc_create` or NULL.
#[no_mangle]
pub unsafe extern "C" fn rafi_alloc_free(alloc: *mut *mut AllocHandle) -> c_int {
    // SAFETY: forwarded from the caller.
    guard(|| unsafe { take_handle(alloc, "alloc") }.map(drop))
}

/// The index of function `name` in the allocation (its place in the list it was created
/// with), for the invoke calls.
///
/// # Safety
/// `alloc` is a live handle; `name` is NUL-terminated; `function` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_function(
    alloc: *const AllocHandle,
    name: *const c_char,
    function: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let (a, name) = unsafe { (handle(alloc, "alloc")?, text(name, "name")?) };
        let index = a.allocation.function(name)?;
        // SAFETY: valid for a write by the caller's promise.
        unsafe { put(function, index as c_int, "function") }
    })
}

/// The largest input one invocation carries, and the workers of all nodes.
///
/// # Safety
/// `alloc` is a live handle; the outputs are NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_alloc_info(
    alloc: *const AllocHandle,
    max_input: *mut usize,
    workers: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let a = unsafe { handle(alloc, "alloc") }?;
        // SAFETY: NULL or valid by the caller's promise.
        unsafe {
            put_optional(max_input, a.allocation.max_payload());
            put_optional(
                workers,
                c_int::try_from(a.allocation.workers()).unwrap_or(c_int::MAX),
            );
        }
        Ok(())
    })
}

fn function_index(function: c_int) -> Result<usize, Failure> {
    usize::try_from(function).map_err(|_| Failure::arg(format!("function index {function}")))
}

/// Invokes `function` on `input` and waits; the output goes into `output` (at most
/// `capacity` bytes), its length into `*output_len` (also, as the length needed, on
/// `RAFI_ERR_TRUNCATED`).
///
/// # Safety
/// `alloc` is a live handle; `input` is valid for `input_len` bytes, `output` for
/// `capacity` bytes (either may be NULL with a zero length); `output_len` is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn rafi_invoke(
    alloc: *const AllocHandle,
    function: c_int,
    input: *const u8,
    input_len: usize,
    output: *mut u8,
    capacity: usize,
    output_len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let a = unsafe { handle(alloc, "alloc") }?;
        check_buffer(input, input_len, "input")?;
        check_buffer(output, capacity, "output")?;
        // SAFETY: valid for these lengths by the caller's promise (null only when empty).
        let (input, output) = unsafe { (slice(input, input_len), slice_mut(output, capacity)) };
        let mut needed = 0;
        let result = a
            .allocation
            .invoke(function_index(function)?, input, output, &mut needed);
        // SAFETY: NULL or valid by the caller's promise.
        unsafe { put_optional(output_len, *result.as_ref().unwrap_or(&needed)) };
        result.map(drop)
    })
}

/// Registers `size` bytes (at least 1) of input memory with one node of the allocation
/// (round robin over its nodes): fill it through `rafi_buffer_data` and invoke from it
/// with `rafi_invoke_buffer` as often as needed; the request's RDMA write reads the input
/// where it lies, with no copy into rafi's own slots. The buffer keeps its allocation's
/// executors alive until `rafi_buffer_free`.
///
/// # Safety
/// `alloc` is a live handle; `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_buffer_create(
    alloc: *const AllocHandle,
    size: usize,
    out: *mut *mut BufferHandle,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let a = unsafe { handle(alloc, "alloc") }?;
        let (part, buffer) = a.allocation.input_buffer(size)?;
        let handle = BufferHandle {
            buffer,
            part,
            allocation: a.allocation.clone(),
        };
        // SAFETY: valid for a write by the caller's promise (checked non-null in put).
        unsafe { put(out, into_handle(handle), "out") }
    })
}

/// The buffer's first byte (NULL for a NULL buffer). Write the input there; leave it alone
/// while an invocation from it runs.
///
/// # Safety
/// `buffer` is a live handle or NULL.
#[no_mangle]
pub unsafe extern "C" fn rafi_buffer_data(buffer: *const BufferHandle) -> *mut u8 {
    // SAFETY: NULL or live by the caller's promise.
    match unsafe { buffer.as_ref() } {
        Some(b) => b.buffer.as_ptr(),
        None => std::ptr::null_mut(),
    }
}

/// The buffer's size in bytes (0 for a NULL buffer).
///
/// # Safety
/// `buffer` is a live handle or NULL.
#[no_mangle]
pub unsafe extern "C" fn rafi_buffer_size(buffer: *const BufferHandle) -> usize {
    // SAFETY: NULL or live by the caller's promise.
    unsafe { buffer.as_ref() }.map_or(0, |b| b.buffer.len())
}

/// Invokes `function` on the `len` bytes at `offset` of `buffer`, read in place, and
/// waits; the output goes into `output` (at most `capacity` bytes), its length into
/// `*output_len` (also, as the length needed, on `RAFI_ERR_TRUNCATED`). A range outside
/// the buffer, or a buffer of another allocation, is `RAFI_ERR_ARG`; a range larger than a
/// slot `RAFI_ERR_TOO_LARGE`; nothing is sent then.
///
/// # Safety
/// `alloc` and `buffer` are live handles; `output` is valid for `capacity` bytes (NULL
/// with 0); `output_len` is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn rafi_invoke_buffer(
    alloc: *const AllocHandle,
    function: c_int,
    buffer: *const BufferHandle,
    offset: usize,
    len: usize,
    output: *mut u8,
    capacity: usize,
    output_len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let a = unsafe { handle(alloc, "alloc") }?;
        // SAFETY: forwarded from the caller.
        let b = unsafe { handle(buffer, "buffer") }?;
        if !Arc::ptr_eq(&a.allocation, &b.allocation) {
            return Err(Failure::arg(
                "the buffer was created with another allocation",
            ));
        }
        check_buffer(output, capacity, "output")?;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= b.buffer.len())
            .ok_or_else(|| {
                Failure::arg(format!(
                    "bytes {offset}..{offset}+{len} are outside the buffer's {} B",
                    b.buffer.len()
                ))
            })?;
        // SAFETY: valid for this length by the caller's promise (null only when empty).
        let output = unsafe { slice_mut(output, capacity) };
        let mut needed = 0;
        let result = a.allocation.invoke_from(
            function_index(function)?,
            (b.part, &b.buffer),
            offset..end,
            output,
            &mut needed,
        );
        // SAFETY: NULL or valid by the caller's promise.
        unsafe { put_optional(output_len, *result.as_ref().unwrap_or(&needed)) };
        result.map(drop)
    })
}

/// Frees the buffer and sets `*buffer` to NULL (a NULL handle is fine).
///
/// # Safety
/// `buffer` points to a handle from `rafi_buffer_create` or NULL.
#[no_mangle]
pub unsafe extern "C" fn rafi_buffer_free(buffer: *mut *mut BufferHandle) -> c_int {
    // SAFETY: forwarded from the caller.
    guard(|| unsafe { take_handle(buffer, "buffer") }.map(drop))
}

/// Starts invoking `function` on `input` and returns at once with a request; complete it
/// with `rafi_test`, `rafi_wait` or `rafi_waitall`. Until then the caller leaves `input`
/// and `output` alone. An input larger than a slot is refused here, before anything is
/// sent.
///
/// # Safety
/// As for `rafi_invoke`, and the buffers stay valid until the request completes; `request`
/// is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn rafi_invoke_start(
    alloc: *const AllocHandle,
    function: c_int,
    input: *const u8,
    input_len: usize,
    output: *mut u8,
    capacity: usize,
    request: *mut *mut RequestHandle,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let a = unsafe { handle(alloc, "alloc") }?;
        if request.is_null() {
            return Err(Failure::arg("request is NULL"));
        }
        check_buffer(input, input_len, "input")?;
        check_buffer(output, capacity, "output")?;
        let function = function_index(function)?;
        a.allocation.check(function, input_len)?;
        let buffers = Buffers {
            input,
            input_len,
            output,
            output_len: capacity,
        };
        let started = a.progress.start(&a.allocation, function, buffers)?;
        // SAFETY: checked non-null; valid by the caller's promise.
        unsafe { put(request, into_handle(RequestHandle(started)), "request") }
    })
}

/// Whether `*request` has completed (`*done` 1 or 0). When it has, its status is returned,
/// its output length stored, the request freed and `*request` set to NULL; a NULL request
/// counts as completed with RAFI_OK.
///
/// # Safety
/// `request` is valid; `*request` is a live request or NULL; `done` is valid for a write;
/// `output_len` is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn rafi_test(
    request: *mut *mut RequestHandle,
    done: *mut c_int,
    output_len: *mut usize,
) -> c_int {
    guard(|| {
        if request.is_null() || done.is_null() {
            return Err(Failure::arg("request and done must not be NULL"));
        }
        // SAFETY: checked non-null, valid by the caller's promise.
        let current = unsafe { request.read() };
        // SAFETY: a live request or NULL by the caller's promise.
        let outcome = match unsafe { current.as_ref() } {
            None => Some(Ok(0)),
            Some(r) => r.0.test(),
        };
        // SAFETY: checked non-null above.
        unsafe { done.write(c_int::from(outcome.is_some())) };
        match outcome {
            None => Ok(()),
            Some(outcome) => {
                // SAFETY: as above; the completed request is freed once.
                drop(unsafe { take_handle(request, "request") }?);
                finish(outcome, output_len)
            }
        }
    })
}

/// Waits for `*request`, frees it and sets `*request` to NULL; returns its status (a NULL
/// request: RAFI_OK at once).
///
/// # Safety
/// As for `rafi_test`.
#[no_mangle]
pub unsafe extern "C" fn rafi_wait(
    request: *mut *mut RequestHandle,
    output_len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let outcome = match unsafe { take_handle(request, "request") }? {
            None => Ok(0),
            Some(r) => r.0.wait(),
        };
        finish(outcome, output_len)
    })
}

/// Waits for all `count` requests of `requests` (NULL entries count as completed) and frees
/// them. `output_lens` and `statuses` (each NULL or `count` long) receive each request's
/// output length and status. Returns RAFI_OK when all succeeded, else the status of the
/// first that failed (whose message `rafi_last_error` gives).
///
/// # Safety
/// `requests` is valid for `count` entries, each a live request or NULL; `output_lens` and
/// `statuses` are NULL or valid for `count` entries.
#[no_mangle]
pub unsafe extern "C" fn rafi_waitall(
    count: usize,
    requests: *mut *mut RequestHandle,
    output_lens: *mut usize,
    statuses: *mut c_int,
) -> c_int {
    guard(|| {
        check_buffer(requests, count, "requests")?;
        let mut first_failure = None;
        for i in 0..count {
            // SAFETY: `requests` holds `count` entries (caller's promise, checked non-null).
            let slot = unsafe { requests.add(i) };
            // SAFETY: each entry is a live request or NULL.
            let outcome = match unsafe { take_handle(slot, "request") }? {
                None => Ok(0),
                Some(r) => r.0.wait(),
            };
            // SAFETY: NULL or `count` entries long (caller's promise), and `i < count`.
            unsafe { report_outcome(&outcome, i, output_lens, statuses) };
            if let Err(f) = outcome {
                first_failure.get_or_insert(f);
            }
        }
        first_failure.map_or(Ok(()), Err)
    })
}

/// Stores entry `i` of the per-item results of `rafi_waitall` and `rafi_invoke_many`: the
/// output's length (0 on failure) and the status, each where its array is not NULL.
///
/// # Safety
/// `output_lens` and `statuses` are NULL or valid for writes of more than `i` entries.
unsafe fn report_outcome(
    outcome: &Result<usize, Failure>,
    i: usize,
    output_lens: *mut usize,
    statuses: *mut c_int,
) {
    // SAFETY: entry `i` of each non-NULL array is valid by the caller's promise.
    unsafe {
        if !output_lens.is_null() {
            put_optional(output_lens.add(i), *outcome.as_ref().unwrap_or(&0));
        }
        if !statuses.is_null() {
            let code = outcome.as_ref().map_or_else(|f| f.code, |_| Code::Ok);
            put_optional(statuses.add(i), code as c_int);
        }
    }
}

/// Invokes `function` on `count` inputs of `input_size` bytes each, packed at `inputs`,
/// spread over every worker of every node of the allocation; output `i` goes to `outputs +
/// i * output_size` (at most `output_size` bytes). `output_lens` and `statuses` (NULL or
/// `count` long) receive each output's length and status. Returns RAFI_OK when all
/// succeeded, else the status of the first (lowest index) that failed.
///
/// # Safety
/// `alloc` is a live handle; `inputs` is valid for `count * input_size` bytes, `outputs`
/// for `count * output_size`; `output_lens` and `statuses` are NULL or `count` long.
#[no_mangle]
pub unsafe extern "C" fn rafi_invoke_many(
    alloc: *const AllocHandle,
    function: c_int,
    count: usize,
    inputs: *const u8,
    input_size: usize,
    outputs: *mut u8,
    output_size: usize,
    output_lens: *mut usize,
    statuses: *mut c_int,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let a = unsafe { handle(alloc, "alloc") }?;
        let function = function_index(function)?;
        let too_big = || Failure::arg("count times the input or output size overflows");
        let in_total = count.checked_mul(input_size).ok_or_else(too_big)?;
        let out_total = count.checked_mul(output_size).ok_or_else(too_big)?;
        check_buffer(inputs, in_total, "inputs")?;
        check_buffer(outputs, out_total, "outputs")?;
        // SAFETY: valid for these lengths by the caller's promise (null only when empty).
        let (ins, outs) = unsafe { (slice(inputs, in_total), slice_mut(outputs, out_total)) };
        let mut items: Vec<alloc::Item<'_>> = (0..count)
            .map(|i| alloc::Item {
                input: &ins[i * input_size..(i + 1) * input_size],
                output: &mut [],
                outcome: None,
            })
            .collect();
        if output_size > 0 {
            for (item, out) in items.iter_mut().zip(outs.chunks_mut(output_size)) {
                item.output = out;
            }
        }
        a.allocation.invoke_many(function, &mut items);
        let mut first_failure = None;
        for (i, item) in items.into_iter().enumerate() {
            let outcome = item.outcome.unwrap_or_else(|| {
                Err(Failure::new(Code::Bug, "an input was left without outcome"))
            });
            // SAFETY: NULL or `count` entries long (caller's promise), and `i < count`.
            unsafe { report_outcome(&outcome, i, output_lens, statuses) };
            if let Err(f) = outcome {
                first_failure.get_or_insert(f);
            }
        }
        first_failure.map_or(Ok(()), Err)
    })
}

/// Stores a completed request's output length and turns its outcome into the call's.
fn finish(outcome: Result<usize, Failure>, output_len: *mut usize) -> Result<(), Failure> {
    // SAFETY: NULL or valid by the caller's promise (every caller forwards it).
    unsafe { put_optional(output_len, *outcome.as_ref().unwrap_or(&0)) };
    outcome.map(drop)
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;
    use std::ptr::{null, null_mut};

    use super::*;

    fn last() -> String {
        // SAFETY: rafi_last_error returns this thread's NUL-terminated message.
        unsafe { CStr::from_ptr(rafi_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn every_code_has_its_own_description() {
        let texts: Vec<String> = (0..=Code::Bug as c_int)
            .map(|c| {
                // SAFETY: rafi_strerror returns a static NUL-terminated string.
                unsafe { CStr::from_ptr(rafi_strerror(c)) }
                    .to_string_lossy()
                    .into()
            })
            .collect();
        let unique: std::collections::HashSet<&String> = texts.iter().collect();
        assert_eq!(unique.len(), texts.len(), "{texts:?}");
        for unknown in [-1, Code::Bug as c_int + 1, c_int::MAX] {
            // SAFETY: as above.
            let text = unsafe { CStr::from_ptr(rafi_strerror(unknown)) };
            assert_eq!(text.to_str(), Ok("unknown rafi status code"));
        }
    }

    #[test]
    fn null_arguments_are_errors_with_a_message() {
        let mut client = null_mut();
        // SAFETY: NULL strings are what is tested; `client` is a valid out-pointer.
        let rc = unsafe { rafi_connect(null(), c"me".as_ptr(), c"pw".as_ptr(), &mut client) };
        assert_eq!(rc, Code::Arg as c_int);
        assert_eq!(last(), "resource_manager is NULL");
        assert!(client.is_null());
        let mut lease = null_mut();
        // SAFETY: a NULL client handle is what is tested.
        let rc = unsafe { rafi_lease_create(null(), 1, 1.0, &mut lease) };
        assert_eq!(
            (rc, last().as_str()),
            (Code::Arg as c_int, "client is NULL")
        );
        let mut len = 7;
        // SAFETY: a NULL allocation handle and buffers, with zero lengths.
        let rc = unsafe { rafi_invoke(null(), 0, null(), 0, null_mut(), 0, &mut len) };
        assert_eq!(rc, Code::Arg as c_int);
        // SAFETY: a NULL request pointer.
        let rc = unsafe { rafi_wait(null_mut(), &mut len) };
        assert_eq!(
            (rc, last().as_str()),
            (Code::Arg as c_int, "request is NULL")
        );
    }

    #[test]
    fn freeing_null_handles_and_waiting_on_null_requests_succeed() {
        let mut alloc: *mut AllocHandle = null_mut();
        let mut request: *mut RequestHandle = null_mut();
        let mut len = 7;
        let mut done = 0;
        // SAFETY: valid pointers to NULL handles.
        unsafe {
            assert_eq!(rafi_alloc_free(&mut alloc), 0);
            assert_eq!(rafi_wait(&mut request, &mut len), 0);
            assert_eq!(len, 0);
            assert_eq!(rafi_test(&mut request, &mut done, &mut len), 0);
            assert_eq!(done, 1);
            let mut requests = [null_mut(), null_mut()];
            let mut statuses = [9, 9];
            let rc = rafi_waitall(2, requests.as_mut_ptr(), null_mut(), statuses.as_mut_ptr());
            assert_eq!((rc, statuses), (0, [0, 0]));
        }
    }

    #[test]
    fn an_unreachable_resource_manager_is_a_connect_error() {
        let mut client = null_mut();
        // SAFETY: valid strings and out-pointer.
        let rc = unsafe {
            rafi_connect(
                c"127.0.0.1:1".as_ptr(),
                c"me".as_ptr(),
                c"pw".as_ptr(),
                &mut client,
            )
        };
        assert_eq!(rc, Code::Connect as c_int, "{}", last());
        assert!(last().contains("cannot reach the resource manager at 127.0.0.1:1"));
    }

    #[test]
    fn a_panic_is_returned_as_a_bug_not_unwound() {
        let rc = guard(|| panic!("boom"));
        assert_eq!(rc, Code::Bug as c_int);
        assert!(last().contains("boom"), "{}", last());
    }

    #[test]
    fn leases_export_and_import_and_refuse_garbage() {
        let client = Client {
            leases: LeaseClient::new("127.0.0.1:1", "me", "pw"),
        };
        let json = c"{\"lease\":5,\"client\":\"me\",\"expires_at\":1,\"parts\":[]}";
        let mut lease = null_mut();
        // SAFETY: valid client, string and out-pointer.
        let rc = unsafe { rafi_lease_import(&client, json.as_ptr(), &mut lease) };
        assert_eq!(rc, 0);
        let mut small = [0 as c_char; 8];
        let mut len = 0;
        // SAFETY: a live lease; the buffer holds 8 bytes.
        let rc = unsafe { rafi_lease_export(lease, small.as_mut_ptr(), 8, &mut len) };
        assert_eq!(rc, Code::Truncated as c_int);
        let mut buffer = vec![0 as c_char; len + 1];
        // SAFETY: as above, with room for the text and its NUL.
        let rc = unsafe { rafi_lease_export(lease, buffer.as_mut_ptr(), buffer.len(), &mut len) };
        assert_eq!(rc, 0);
        // SAFETY: export wrote a NUL-terminated string.
        let text = unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_str().unwrap();
        assert!(text.contains("\"lease\":5"), "{text}");
        let (mut id, mut cores, mut nodes) = (0, -1, -1);
        // SAFETY: a live lease and valid out-pointers.
        let rc = unsafe { rafi_lease_info(lease, &mut id, &mut cores, &mut nodes) };
        assert_eq!(rc, 0);
        assert_eq!((id, cores, nodes), (5, 0, 0));
        // An allocation on a lease without parts is refused, not attempted.
        let mut alloc = null_mut();
        // SAFETY: a live lease and valid strings.
        let rc = unsafe { rafi_alloc_create(lease, c"echo".as_ptr(), &mut alloc) };
        assert_eq!(rc, Code::Lease as c_int, "{}", last());
        // SAFETY: the lease handle is live; freeing it does not call the resource manager.
        assert_eq!(unsafe { rafi_lease_free(&mut lease) }, 0);
        assert!(lease.is_null());
        // SAFETY: valid client and string.
        let rc = unsafe { rafi_lease_import(&client, c"{\"lease\": \"x\"}".as_ptr(), &mut lease) };
        assert_eq!(rc, Code::Arg as c_int);
        assert!(
            last().starts_with("not a lease from rafi_lease_export"),
            "{}",
            last()
        );
    }

    #[test]
    fn allocation_settings_are_checked() {
        assert!(part::options(0, 0, 0.0, 0.0).is_ok());
        let bad_timeout = part::options(0, 0, -1.0, 0.0).unwrap_err();
        assert_eq!(bad_timeout.code, Code::Arg);
        assert!(bad_timeout.message.contains("timeout_s"), "{bad_timeout:?}");
        assert_eq!(part::options(0, 3, 0.0, 0.0).unwrap_err().code, Code::Arg);
        let o = part::options(4, 4096, 2.5, -1.0).unwrap();
        assert_eq!(
            (o.geometry.slots(), o.timeout, o.spin),
            (4, Duration::from_millis(2500), None)
        );
    }
}
