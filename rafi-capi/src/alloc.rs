//! An allocation of the C API: one executor per node of a lease, the functions resolved
//! once, blocking invocations round robin over the nodes, and fan-out of many inputs over
//! every worker of every node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rafi::client::{AllocationOptions, FunctionId, InvokeError};
use rafi::cluster::api::Lease;

use crate::part::{with_allocation, AnyBuffer, AnyLeased};
use crate::status::{Code, Failure};

/// One node's executor and the handles of the allocation's functions there.
struct Part {
    leased: Mutex<AnyLeased>,
    functions: Vec<FunctionId>,
    workers: usize,
}

/// The executors of one allocation (shared with its progress thread).
pub struct Allocation {
    /// The lease it was made on.
    lease: u64,
    parts: Vec<Part>,
    functions: Vec<String>,
    max_payload: usize,
    next_part: AtomicUsize,
}

/// One input of a fan-out, the caller's output buffer for it, and its outcome.
pub struct Item<'a> {
    pub input: &'a [u8],
    pub output: &'a mut [u8],
    pub outcome: Option<Result<usize, Failure>>,
}

impl Allocation {
    /// Starts an executor on every node of `lease` for `functions`.
    pub fn create(
        lease: &Lease,
        functions: &[&str],
        mode: Option<&str>,
        options: &AllocationOptions,
    ) -> Result<Self, Failure> {
        if functions.is_empty() {
            return Err(Failure::arg("an allocation needs at least one function"));
        }
        if lease.parts.is_empty() {
            return Err(Failure::new(
                Code::Lease,
                "the lease has no part on any node",
            ));
        }
        let mut parts = Vec::with_capacity(lease.parts.len());
        let mut max_payload = usize::MAX;
        for part in &lease.parts {
            let mut leased = AnyLeased::allocate(part, functions, mode, options.clone())?;
            max_payload = max_payload.min(leased.max_payload());
            parts.push(Part {
                functions: leased.resolve(functions)?,
                workers: leased.workers(),
                leased: Mutex::new(leased),
            });
        }
        Ok(Self {
            lease: lease.lease,
            parts,
            functions: functions.iter().map(|f| f.to_string()).collect(),
            max_payload,
            next_part: AtomicUsize::new(0),
        })
    }

    /// The index of function `name` (its position in the allocation's list).
    pub fn function(&self, name: &str) -> Result<usize, Failure> {
        self.functions
            .iter()
            .position(|f| f == name)
            .ok_or_else(|| {
                Failure::arg(format!(
                    "function '{name}' is not part of this allocation ({})",
                    self.functions.join(", ")
                ))
            })
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    pub fn workers(&self) -> usize {
        self.parts.iter().map(|p| p.workers).sum()
    }

    /// Refuses an unknown function index or an input no slot holds, before anything is sent.
    pub fn check(&self, function: usize, input_len: usize) -> Result<(), Failure> {
        if function >= self.functions.len() {
            return Err(Failure::arg(format!(
                "function index {function}: this allocation has {} functions",
                self.functions.len()
            )));
        }
        if input_len > self.max_payload {
            return Err(InvokeError::PayloadTooLarge {
                len: input_len,
                max: self.max_payload,
            }
            .into());
        }
        Ok(())
    }

    /// Invokes `function` on `input` on the next node, round robin; the output goes into
    /// `output`. On `Truncated`, `needed` holds the output's length.
    pub fn invoke(
        &self,
        function: usize,
        input: &[u8],
        output: &mut [u8],
        needed: &mut usize,
    ) -> Result<usize, Failure> {
        self.check(function, input.len())?;
        let part = &self.parts[self.next_part.fetch_add(1, Ordering::Relaxed) % self.parts.len()];
        let f = part.functions[function];
        lock(&part.leased).invoke_into(f, input, output, needed)
    }

    /// Hands the fresh tokens of `lease` (renewed at the resource manager) to the executor
    /// manager of every node of this allocation, so that its executors live on to the new
    /// expiry.
    pub fn renew(&self, lease: &Lease) -> Result<(), Failure> {
        if lease.lease != self.lease {
            return Err(Failure::arg(format!(
                "the allocation was made on lease {}, not lease {}",
                self.lease, lease.lease
            )));
        }
        for part in &self.parts {
            let mut leased = lock(&part.leased);
            let renewed = lease
                .parts
                .iter()
                .find(|p| p.node_name == leased.node())
                .ok_or_else(|| {
                    Failure::new(
                        Code::Lease,
                        format!(
                            "lease {} no longer holds node {}",
                            lease.lease,
                            leased.node()
                        ),
                    )
                })?;
            leased.renew(renewed)?;
        }
        Ok(())
    }

    /// Registers `len` bytes of input memory with the next node's executor, round robin;
    /// invocations from it run on that node. Returns the node's index and the buffer.
    pub fn input_buffer(&self, len: usize) -> Result<(usize, AnyBuffer), Failure> {
        let index = self.next_part.fetch_add(1, Ordering::Relaxed) % self.parts.len();
        let buffer = lock(&self.parts[index].leased).input_buffer(len)?;
        Ok((index, buffer))
    }

    /// Invokes `function` on bytes `range` of `buffer` (registered with node `part`), read
    /// in place; the output goes into `output`. On `Truncated`, `needed` holds the output's
    /// length.
    pub fn invoke_from(
        &self,
        function: usize,
        (part, buffer): (usize, &AnyBuffer),
        range: std::ops::Range<usize>,
        output: &mut [u8],
        needed: &mut usize,
    ) -> Result<usize, Failure> {
        self.check(function, range.len())?;
        let part = self
            .parts
            .get(part)
            .ok_or_else(|| Failure::arg("the buffer belongs to another allocation"))?;
        let f = part.functions[function];
        lock(&part.leased).invoke_from_into(f, buffer, range, output, needed)
    }

    /// Invokes `function` once per item, spread over every worker of every node (each
    /// node's share in proportion to its workers, the nodes in parallel); every item gets
    /// its outcome.
    pub fn invoke_many(&self, function: usize, items: &mut [Item<'_>]) {
        if let Err(e) = self.check(function, 0) {
            items
                .iter_mut()
                .for_each(|i| i.outcome = Some(Err(e.clone())));
            return;
        }
        for item in items.iter_mut() {
            if let Err(e) = self.check(function, item.input.len()) {
                item.outcome = Some(Err(e));
            }
        }
        if self.parts.len() == 1 {
            run_on_part(&self.parts[0], function, items);
            return;
        }
        let total_workers = self.workers().max(1);
        let mut rest = items;
        std::thread::scope(|scope| {
            let count = rest.len();
            for (i, part) in self.parts.iter().enumerate() {
                let share = if i + 1 == self.parts.len() {
                    rest.len()
                } else {
                    (count * part.workers)
                        .div_ceil(total_workers)
                        .min(rest.len())
                };
                let (mine, others) = std::mem::take(&mut rest).split_at_mut(share);
                rest = others;
                scope.spawn(move || run_on_part(part, function, mine));
            }
        });
    }
}

/// Where one fan-out result goes: the caller's output buffer and the item's outcome.
type Destination<'b> = (&'b mut [u8], &'b mut Option<Result<usize, Failure>>);

/// Runs the items that have no outcome yet on one node with the client's fan-out.
fn run_on_part(part: &Part, function: usize, items: &mut [Item<'_>]) {
    let f = part.functions[function];
    let (inputs, mut outputs): (Vec<&[u8]>, Vec<Destination<'_>>) = items
        .iter_mut()
        .filter(|i| i.outcome.is_none())
        .map(|i| (i.input, (&mut *i.output, &mut i.outcome)))
        .unzip();
    let mut leased = lock(&part.leased);
    let whole = with_allocation!(&mut *leased, a => a.invoke_many(f, inputs.iter().copied(), |index, result| {
        let (output, outcome) = &mut outputs[index];
        **outcome = Some(match result {
            Ok(bytes) if bytes.len() <= output.len() => {
                output[..bytes.len()].copy_from_slice(bytes);
                Ok(bytes.len())
            }
            Ok(bytes) => Err(InvokeError::OutputBufferTooSmall {
                len: bytes.len(),
                capacity: output.len(),
            }
            .into()),
            Err(e) => Err(e.into()),
        });
    }));
    if let Err(e) = whole {
        // No worker was left: the inputs never sent get the allocation's error.
        let failure = Failure::from(e);
        for (_, outcome) in outputs {
            outcome.get_or_insert_with(|| Err(failure.clone()));
        }
    }
}

/// A part's lock; a panic of another thread holding it does not make it unusable (the
/// allocation's state is kept consistent by the client library itself).
fn lock(m: &Mutex<AnyLeased>) -> MutexGuard<'_, AnyLeased> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
