//! The manager's book, without I/O or clocks (callers pass the time): which token nonces
//! were used, which leases the resource manager ended, which cores and GPUs running
//! executors hold, and the usage and ended leases the next heartbeat reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::cluster::api::{Heartbeat, LeaseUsage, UnixMillis};
use crate::cluster::token::Claims;

use super::billing::Meter;
use super::AllocateError;
use crate::executor::billing::Counters;

/// How long a lease the resource manager ended stays refused (its tokens expire sooner).
const ENDED_KEPT_MS: u64 = 24 * 3600 * 1000;

/// One running (or starting) executor.
#[derive(Debug)]
struct Running<T> {
    lease: u64,
    cores: Vec<usize>,
    gpus: Vec<String>,
    hot: bool,
    pid: Option<u32>,
    /// Usage is counted up to here (from the executor listening).
    accounted_to: Option<Instant>,
    /// The executor's billing counters, when it bills through the fabric; without them
    /// a hot executor's wall time × cores is its hot time.
    meter: Option<Arc<dyn Meter>>,
    /// What the counters said at the last heartbeat.
    metered: Counters,
    /// How to reach the connection that supervises it.
    contact: T,
}

/// What a running executor looks like from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningExecutor {
    /// The manager's id of the allocation.
    pub allocation: u64,
    pub lease: u64,
    pub cores: Vec<usize>,
    pub gpus: Vec<String>,
    /// The process id (of the sandbox wrapper, when one is configured); `None` while it
    /// starts.
    pub pid: Option<u32>,
}

/// The book. `T` is how a running executor's supervisor is reached (a channel).
#[derive(Debug)]
pub(crate) struct Ledger<T> {
    spare_cores: BTreeSet<usize>,
    gpus: BTreeSet<String>,
    nonces: HashMap<u64, UnixMillis>,
    ended: HashMap<u64, UnixMillis>,
    running: BTreeMap<u64, Running<T>>,
    next: u64,
    usage: BTreeMap<u64, LeaseUsage>,
    ended_report: BTreeSet<u64>,
}

impl<T: Clone> Ledger<T> {
    pub(crate) fn new(spare_cores: &[usize], gpus: &[String]) -> Self {
        Self {
            spare_cores: spare_cores.iter().copied().collect(),
            gpus: gpus.iter().cloned().collect(),
            nonces: HashMap::new(),
            ended: HashMap::new(),
            running: BTreeMap::new(),
            next: 1,
            usage: BTreeMap::new(),
            ended_report: BTreeSet::new(),
        }
    }

    /// Admits a verified token: refuses a used nonce, a lease the resource manager ended,
    /// cores or GPUs this node does not offer or a running executor holds. On success the
    /// nonce is used and the cores and GPUs are held until [`Ledger::finish`] or
    /// [`Ledger::abandon`].
    pub(crate) fn admit(
        &mut self,
        claims: &Claims,
        hot: bool,
        contact: T,
        now: UnixMillis,
    ) -> Result<u64, AllocateError> {
        self.nonces.retain(|_, &mut expiry| expiry > now);
        self.ended
            .retain(|_, &mut when| when.saturating_add(ENDED_KEPT_MS) > now);
        if self.nonces.contains_key(&claims.nonce) {
            return Err(AllocateError::Token(
                crate::cluster::token::TokenError::Reused {
                    nonce: claims.nonce,
                },
            ));
        }
        if self.ended.contains_key(&claims.lease) {
            return Err(AllocateError::Ended {
                lease: claims.lease,
            });
        }
        if claims.cores.is_empty() {
            return Err(AllocateError::BadRequest(
                "the lease token names no cores".into(),
            ));
        }
        let foreign: Vec<usize> = claims
            .cores
            .iter()
            .copied()
            .filter(|c| !self.spare_cores.contains(c))
            .collect();
        if !foreign.is_empty() {
            return Err(AllocateError::NotSpare {
                cores: foreign,
                spare: self.spare_cores.iter().copied().collect(),
            });
        }
        let busy: BTreeSet<usize> = self
            .running
            .values()
            .flat_map(|r| r.cores.iter().copied())
            .collect();
        let taken: Vec<usize> = claims
            .cores
            .iter()
            .copied()
            .filter(|c| busy.contains(c))
            .collect();
        if !taken.is_empty() {
            return Err(AllocateError::BusyCores { cores: taken });
        }
        let unknown: Vec<String> = claims
            .gpus
            .iter()
            .filter(|g| !self.gpus.contains(*g))
            .cloned()
            .collect();
        let busy_gpus: BTreeSet<&String> = self.running.values().flat_map(|r| &r.gpus).collect();
        let taken_gpus: Vec<String> = claims
            .gpus
            .iter()
            .filter(|g| busy_gpus.contains(g))
            .cloned()
            .collect();
        if !unknown.is_empty() || !taken_gpus.is_empty() {
            return Err(AllocateError::BusyGpus {
                unknown,
                taken: taken_gpus,
            });
        }
        self.nonces.insert(claims.nonce, claims.expires_at);
        let id = self.next;
        self.next += 1;
        self.running.insert(
            id,
            Running {
                lease: claims.lease,
                cores: claims.cores.clone(),
                gpus: claims.gpus.clone(),
                hot,
                pid: None,
                accounted_to: None,
                meter: None,
                metered: Counters::default(),
                contact,
            },
        );
        Ok(id)
    }

    /// The executor of allocation `id` listens (as process `pid`), billing into `meter`
    /// when it has one: usage counts from now.
    pub(crate) fn started(
        &mut self,
        id: u64,
        pid: u32,
        now: Instant,
        meter: Option<Arc<dyn Meter>>,
    ) {
        if let Some(r) = self.running.get_mut(&id) {
            r.pid = Some(pid);
            r.accounted_to = Some(now);
            r.meter = meter;
        }
    }

    /// A renewal token for the running allocation `id` (verified): refuses a used nonce, a
    /// lease the resource manager ended, another lease's token or other cores; on success
    /// the nonce is used.
    pub(crate) fn renew(
        &mut self,
        id: u64,
        claims: &Claims,
        now: UnixMillis,
    ) -> Result<(), AllocateError> {
        self.nonces.retain(|_, &mut expiry| expiry > now);
        if self.nonces.contains_key(&claims.nonce) {
            return Err(AllocateError::Token(
                crate::cluster::token::TokenError::Reused {
                    nonce: claims.nonce,
                },
            ));
        }
        if self.ended.contains_key(&claims.lease) {
            return Err(AllocateError::Ended {
                lease: claims.lease,
            });
        }
        let Some(r) = self.running.get(&id) else {
            return Err(AllocateError::BadRequest(
                "the executor is not running".into(),
            ));
        };
        if r.lease != claims.lease || r.cores != claims.cores || r.gpus != claims.gpus {
            return Err(AllocateError::BadRequest(format!(
                "the token is for lease {} with cores {:?}; this executor runs lease {} on \
                 cores {:?}",
                claims.lease, claims.cores, r.lease, r.cores
            )));
        }
        self.nonces.insert(claims.nonce, claims.expires_at);
        Ok(())
    }

    /// The executor of allocation `id` never started: its cores are free again and its
    /// token may be presented once more.
    pub(crate) fn abandon(&mut self, id: u64, nonce: u64) {
        self.running.remove(&id);
        self.nonces.remove(&nonce);
    }

    /// The executor of allocation `id` is gone: frees its cores, books its last usage and
    /// reports its lease ended in the next heartbeat.
    pub(crate) fn finish(&mut self, id: u64, now: Instant) {
        if let Some(mut r) = self.running.remove(&id) {
            let lease = r.lease;
            Self::account(&mut self.usage, &mut r, now);
            self.ended_report.insert(lease);
        }
    }

    /// The resource manager ended `lease`: refuses its tokens from now on and returns the
    /// supervisors of its running executors, to stop them.
    pub(crate) fn end_lease(&mut self, lease: u64, now: UnixMillis) -> Vec<T> {
        self.ended.insert(lease, now);
        self.running
            .values()
            .filter(|r| r.lease == lease)
            .map(|r| r.contact.clone())
            .collect()
    }

    /// The supervisors of every running executor.
    pub(crate) fn contacts(&self) -> Vec<T> {
        self.running.values().map(|r| r.contact.clone()).collect()
    }

    pub(crate) fn running(&self) -> Vec<RunningExecutor> {
        self.running
            .iter()
            .map(|(&allocation, r)| RunningExecutor {
                allocation,
                lease: r.lease,
                cores: r.cores.clone(),
                gpus: r.gpus.clone(),
                pid: r.pid,
            })
            .collect()
    }

    /// The next heartbeat: usage since the last one (what the executors' counters gained;
    /// for an executor without counters, its wall time × cores as hot time when hot) and
    /// the leases that ended.
    pub(crate) fn take_heartbeat(&mut self, now: Instant) -> Heartbeat {
        for r in self.running.values_mut() {
            Self::account(&mut self.usage, r, now);
        }
        Heartbeat {
            usage: std::mem::take(&mut self.usage)
                .into_values()
                .filter(|u| u.busy_ns + u.hot_ns + u.invocations > 0)
                .collect(),
            ended: std::mem::take(&mut self.ended_report).into_iter().collect(),
        }
    }

    /// A heartbeat that did not arrive: its content goes into the next one.
    pub(crate) fn restore(&mut self, heartbeat: Heartbeat) {
        for u in heartbeat.usage {
            let e = self.usage.entry(u.lease).or_insert_with(|| LeaseUsage {
                lease: u.lease,
                ..LeaseUsage::default()
            });
            e.busy_ns += u.busy_ns;
            e.hot_ns += u.hot_ns;
            e.invocations += u.invocations;
        }
        self.ended_report.extend(heartbeat.ended);
    }

    fn account(usage: &mut BTreeMap<u64, LeaseUsage>, r: &mut Running<T>, now: Instant) {
        let Some(from) = r.accounted_to else {
            return;
        };
        r.accounted_to = Some(now);
        let gained = match &r.meter {
            Some(meter) => {
                let now = meter.read();
                let gained = now.since(&r.metered);
                r.metered = now;
                gained
            }
            None if r.hot => Counters {
                hot_ns: (now.saturating_duration_since(from).as_nanos() as u64)
                    .saturating_mul(r.cores.len() as u64),
                ..Counters::default()
            },
            None => return,
        };
        let e = usage.entry(r.lease).or_insert_with(|| LeaseUsage {
            lease: r.lease,
            ..LeaseUsage::default()
        });
        e.busy_ns = e.busy_ns.saturating_add(gained.busy_ns);
        e.hot_ns = e.hot_ns.saturating_add(gained.hot_ns);
        e.invocations = e.invocations.saturating_add(gained.invocations);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn claims(lease: u64, nonce: u64, cores: &[usize]) -> Claims {
        Claims {
            lease,
            node: 1,
            client: "c".into(),
            cores: cores.to_vec(),
            memory_mib: 0,
            gpus: vec![],
            expires_at: 10_000,
            nonce,
        }
    }

    fn kind(r: Result<u64, AllocateError>) -> &'static str {
        r.unwrap_err().kind()
    }

    #[test]
    fn cores_are_never_shared_and_nonces_never_reused() {
        let mut l = Ledger::<()>::new(&[1, 2, 3], &["0".into()]);
        let a = l.admit(&claims(1, 10, &[1, 2]), false, (), 0).unwrap();
        assert_eq!(
            kind(l.admit(&claims(2, 11, &[2, 3]), false, (), 0)),
            "busy_cores"
        );
        assert_eq!(kind(l.admit(&claims(2, 10, &[3]), false, (), 0)), "reused");
        assert_eq!(
            kind(l.admit(&claims(2, 12, &[0]), false, (), 0)),
            "busy_cores"
        );
        assert_eq!(
            kind(l.admit(&claims(2, 12, &[]), false, (), 0)),
            "bad_request"
        );
        let mut gpu = claims(2, 13, &[3]);
        gpu.gpus = vec!["1".into()];
        assert_eq!(kind(l.admit(&gpu, false, (), 0)), "busy_cores");
        let b = l.admit(&claims(2, 14, &[3]), false, (), 0).unwrap();
        assert_ne!(a, b);
        l.finish(a, Instant::now());
        l.admit(&claims(3, 15, &[1, 2]), false, (), 0).unwrap();
        // A token whose executor never started may be presented again.
        l.abandon(b, 14);
        l.admit(&claims(2, 14, &[3]), false, (), 0).unwrap();
        // Nonces are forgotten once their token expired (it is refused as expired then).
        l.abandon(b, 99);
        assert!(l.nonces.contains_key(&10));
        l.admit(&claims(9, 16, &[]), false, (), 20_000).unwrap_err();
        assert!(!l.nonces.contains_key(&10));
    }

    #[test]
    fn ended_leases_are_refused_and_reported() {
        let mut l = Ledger::<u8>::new(&[1, 2], &[]);
        let a = l.admit(&claims(5, 1, &[1]), true, 7, 0).unwrap();
        let t0 = Instant::now();
        l.started(a, 1234, t0, None);
        assert_eq!(l.end_lease(5, 0), vec![7]);
        assert_eq!(kind(l.admit(&claims(5, 2, &[2]), true, 8, 0)), "expired");
        let hb = l.take_heartbeat(t0 + Duration::from_millis(3));
        assert_eq!(hb.usage.len(), 1);
        assert_eq!(hb.usage[0].hot_ns, 3_000_000);
        assert!(hb.ended.is_empty());
        l.finish(a, t0 + Duration::from_millis(5));
        let hb = l.take_heartbeat(t0 + Duration::from_millis(9));
        assert_eq!(hb.usage[0].hot_ns, 2_000_000);
        assert_eq!(hb.ended, [5]);
        l.restore(hb.clone());
        assert_eq!(l.take_heartbeat(t0), hb);
        assert_eq!(l.take_heartbeat(t0), Heartbeat::default());
    }

    #[derive(Debug, Default)]
    struct FakeMeter(std::sync::Mutex<Counters>);

    impl Meter for FakeMeter {
        fn read(&self) -> Counters {
            *self.0.lock().unwrap()
        }
    }

    #[test]
    fn metered_executors_report_what_their_counters_gained() {
        let mut l = Ledger::<()>::new(&[1, 2], &[]);
        let meter = Arc::new(FakeMeter::default());
        let a = l.admit(&claims(5, 1, &[1]), true, (), 0).unwrap();
        let t0 = Instant::now();
        l.started(a, 1, t0, Some(meter.clone()));
        let set = |busy_ns, hot_ns, invocations| {
            *meter.0.lock().unwrap() = Counters {
                busy_ns,
                hot_ns,
                invocations,
            }
        };
        set(10, 100, 3);
        let hb = l.take_heartbeat(t0 + Duration::from_secs(1));
        // The counters, not the wall time (1 s), although the executor is hot.
        assert_eq!(
            hb.usage,
            [LeaseUsage {
                lease: 5,
                busy_ns: 10,
                hot_ns: 100,
                invocations: 3
            }]
        );
        set(15, 180, 4);
        l.finish(a, t0 + Duration::from_secs(2));
        let hb = l.take_heartbeat(t0 + Duration::from_secs(3));
        assert_eq!(
            hb.usage,
            [LeaseUsage {
                lease: 5,
                busy_ns: 5,
                hot_ns: 80,
                invocations: 1
            }]
        );
        assert_eq!(hb.ended, [5]);
    }

    #[test]
    fn renewals_need_a_fresh_token_of_the_same_lease_and_cores() {
        let mut l = Ledger::<()>::new(&[1, 2], &[]);
        let a = l.admit(&claims(5, 1, &[1]), false, (), 0).unwrap();
        assert_eq!(
            l.renew(a, &claims(5, 1, &[1]), 0).unwrap_err().kind(),
            "reused"
        );
        assert_eq!(
            l.renew(a, &claims(6, 2, &[1]), 0).unwrap_err().kind(),
            "bad_request"
        );
        assert_eq!(
            l.renew(a, &claims(5, 3, &[2]), 0).unwrap_err().kind(),
            "bad_request"
        );
        l.renew(a, &claims(5, 4, &[1]), 0).unwrap();
        assert_eq!(
            l.renew(a, &claims(5, 4, &[1]), 0).unwrap_err().kind(),
            "reused"
        );
        l.end_lease(5, 0);
        assert_eq!(
            l.renew(a, &claims(5, 5, &[1]), 0).unwrap_err().kind(),
            "expired"
        );
    }
}
