//! Which workers serve a new allocation: the least loaded ones.
//!
//! Each worker polls the links of every client it serves, so two busy clients on one worker
//! halve each other's rate while another worker idles. An allocation of `k` workers takes
//! the `k` that serve the fewest links now; among equally loaded workers, successive
//! clients start at successive workers, so single-worker allocations still take turns.
//! Several client threads that each allocate a share of the workers (the throughput
//! benchmark's `--client-threads`) thereby get disjoint workers.

use std::sync::Mutex;

/// Links served per worker, kept under a lock taken once per allocation and once per end.
pub(crate) struct WorkerLoads(Mutex<Vec<usize>>);

/// Workers claimed by one allocation; dropping it gives them back.
pub(crate) struct Claim<'a> {
    loads: &'a WorkerLoads,
    workers: Vec<usize>,
}

impl WorkerLoads {
    pub(crate) fn new(workers: usize) -> Self {
        Self(Mutex::new(vec![0; workers]))
    }

    /// Claims `k` distinct workers (at most as many as there are), least loaded first;
    /// ties are broken by distance from `start` (modulo the number of workers).
    pub(crate) fn claim(&self, k: usize, start: usize) -> Claim<'_> {
        let mut loads = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = loads.len();
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n.max(1)).collect();
        // Stable: equal loads keep the rotation's order.
        order.sort_by_key(|&w| loads[w]);
        order.truncate(k.min(n));
        for &w in &order {
            loads[w] += 1;
        }
        Claim {
            loads: self,
            workers: order,
        }
    }

    #[cfg(test)]
    fn snapshot(&self) -> Vec<usize> {
        self.0.lock().unwrap().clone()
    }
}

impl Claim<'_> {
    /// The claimed workers, in the order the allocation's links use them.
    pub(crate) fn workers(&self) -> &[usize] {
        &self.workers
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut loads = self.loads.0.lock().unwrap_or_else(|e| e.into_inner());
        for &w in &self.workers {
            loads[w] -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_worker_allocations_take_turns() {
        let loads = WorkerLoads::new(3);
        let a = loads.claim(1, 0);
        let b = loads.claim(1, 1);
        let c = loads.claim(1, 2);
        assert_eq!([a.workers(), b.workers(), c.workers()], [[0], [1], [2]]);
        // Every worker has one now: the fourth shares, starting from its own turn.
        let d = loads.claim(1, 4);
        assert_eq!(d.workers(), [1]);
    }

    #[test]
    fn shares_of_the_workers_are_disjoint_whatever_the_start() {
        let loads = WorkerLoads::new(14);
        let a = loads.claim(7, 1);
        let b = loads.claim(7, 2);
        let mut all: Vec<usize> = a.workers().iter().chain(b.workers()).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..14).collect::<Vec<_>>());
    }

    #[test]
    fn the_least_loaded_are_taken_and_an_end_gives_them_back() {
        let loads = WorkerLoads::new(4);
        let busy = loads.claim(2, 0);
        assert_eq!(busy.workers(), [0, 1]);
        let next = loads.claim(3, 0);
        assert_eq!(next.workers(), [2, 3, 0]);
        assert_eq!(loads.snapshot(), [2, 1, 1, 1]);
        drop(busy);
        assert_eq!(loads.snapshot(), [1, 0, 1, 1]);
        drop(next);
        assert_eq!(loads.snapshot(), [0, 0, 0, 0]);
        // More than there are: each once.
        assert_eq!(loads.claim(9, 2).workers(), [2, 3, 0, 1]);
    }
}
