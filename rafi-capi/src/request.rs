//! Non-blocking invocations: a request handle like MPI's. Starting one queues it for the
//! allocation's progress thread (started on first use), which sends everything queued as
//! one fan-out over all workers and completes each request with its outcome; test and wait
//! look at the request, so the caller computes meanwhile.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::alloc::{Allocation, Item};
use crate::status::{Code, Failure};

/// The completion of one request, shared by its handle and the progress thread.
#[derive(Default)]
pub struct Request {
    outcome: Mutex<Option<Result<usize, Failure>>>,
    done: Condvar,
}

impl Request {
    fn complete(&self, outcome: Result<usize, Failure>) {
        *relock(self.outcome.lock()) = Some(outcome);
        self.done.notify_all();
    }

    /// The outcome if the request has completed.
    pub fn test(&self) -> Option<Result<usize, Failure>> {
        relock(self.outcome.lock()).clone()
    }

    /// Waits for the outcome.
    pub fn wait(&self) -> Result<usize, Failure> {
        let mut outcome = relock(self.outcome.lock());
        loop {
            if let Some(o) = outcome.as_ref() {
                return o.clone();
            }
            outcome = relock(self.done.wait(outcome));
        }
    }
}

/// The caller's buffers of a request in flight. The caller keeps them valid and untouched
/// until the request completes (the contract of `rafi_invoke_start`, as for MPI_Isend).
pub struct Buffers {
    pub input: *const u8,
    pub input_len: usize,
    pub output: *mut u8,
    pub output_len: usize,
}

// SAFETY: the pointers are only dereferenced by the progress thread while the request is
// in flight, during which the caller promised not to use the buffers.
unsafe impl Send for Buffers {}

struct Job {
    function: usize,
    buffers: Buffers,
    request: Arc<Request>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    stopping: bool,
}

/// The queue of an allocation's requests and its progress thread.
pub struct Progress {
    shared: Arc<(Mutex<Queue>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            shared: Arc::default(),
            thread: Mutex::new(None),
        }
    }

    /// Queues an invocation (already checked against the allocation) and returns its
    /// request; starts the progress thread the first time.
    pub fn start(
        &self,
        allocation: &Arc<Allocation>,
        function: usize,
        buffers: Buffers,
    ) -> Result<Arc<Request>, Failure> {
        let mut thread = relock(self.thread.lock());
        if thread.is_none() {
            let shared = Arc::clone(&self.shared);
            let allocation = Arc::clone(allocation);
            let spawned = std::thread::Builder::new()
                .name("rafi-progress".into())
                .spawn(move || progress_loop(&shared, &allocation))
                .map_err(|e| {
                    Failure::new(Code::Bug, format!("cannot start the progress thread: {e}"))
                })?;
            *thread = Some(spawned);
        }
        let request = Arc::new(Request::default());
        let (queue, wake) = &*self.shared;
        relock(queue.lock()).jobs.push_back(Job {
            function,
            buffers,
            request: Arc::clone(&request),
        });
        wake.notify_one();
        Ok(request)
    }
}

impl Drop for Progress {
    /// Stops the progress thread after its current batch; requests still queued complete
    /// as cancelled.
    fn drop(&mut self) {
        let (queue, wake) = &*self.shared;
        relock(queue.lock()).stopping = true;
        wake.notify_all();
        if let Some(thread) = relock(self.thread.lock()).take() {
            let _ = thread.join();
        }
    }
}

fn progress_loop(shared: &(Mutex<Queue>, Condvar), allocation: &Allocation) {
    let (queue, wake) = shared;
    loop {
        let batch: Vec<Job> = {
            let mut q = relock(queue.lock());
            while q.jobs.is_empty() && !q.stopping {
                q = relock(wake.wait(q));
            }
            if q.stopping {
                for job in q.jobs.drain(..) {
                    job.request.complete(Err(Failure::new(
                        Code::Cancelled,
                        "the request's allocation was freed before it ran",
                    )));
                }
                return;
            }
            q.jobs.drain(..).collect()
        };
        run_batch(allocation, batch);
    }
}

/// Sends a batch as one fan-out per function and completes every request of it.
fn run_batch(allocation: &Allocation, mut batch: Vec<Job>) {
    batch.sort_by_key(|j| j.function);
    for group in batch.chunk_by(|a, b| a.function == b.function) {
        let mut items: Vec<Item<'_>> = group
            .iter()
            .map(|job| {
                let b = &job.buffers;
                Item {
                    // SAFETY: the caller passed buffers valid for these lengths (checked
                    // non-null when non-empty) and leaves them alone until the request
                    // completes, which happens only after this batch.
                    input: unsafe { slice(b.input, b.input_len) },
                    // SAFETY: as above; no other request may share this output buffer.
                    output: unsafe { slice_mut(b.output, b.output_len) },
                    outcome: None,
                }
            })
            .collect();
        allocation.invoke_many(group[0].function, &mut items);
        for (job, item) in group.iter().zip(items) {
            let outcome = item.outcome.unwrap_or_else(|| {
                Err(Failure::new(
                    Code::Bug,
                    "an invocation was left without outcome",
                ))
            });
            job.request.complete(outcome);
        }
    }
}

/// A byte slice of the caller's memory; empty for a null pointer or zero length.
///
/// # Safety
/// `ptr` is valid for reads of `len` bytes for `'a` when both are non-zero.
pub unsafe fn slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller's promise above.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

/// A mutable byte slice of the caller's memory; empty for a null pointer or zero length.
///
/// # Safety
/// `ptr` is valid for writes of `len` bytes for `'a`, aliased by nothing else.
pub unsafe fn slice_mut<'a>(ptr: *mut u8, len: usize) -> &'a mut [u8] {
    if ptr.is_null() || len == 0 {
        &mut []
    } else {
        // SAFETY: the caller's promise above.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

/// A lock's guard, also after a panic of another holder (the data stays consistent: each
/// critical section here is a single assignment or queue operation).
fn relock<G>(r: Result<G, std::sync::PoisonError<G>>) -> G {
    r.unwrap_or_else(std::sync::PoisonError::into_inner)
}
