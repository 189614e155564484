//! What a shared limit does while Redis fails ([`OnError`]), how it knows it is
//! failing (`Health`), and what it counts ([`SharedStats`], `Counters`).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::client::RedisLimits;
use super::error::RedisError;

/// What a shared limit does while Redis does not answer (a call failed or
/// missed its [`call_timeout`](super::RedisConfig::call_timeout)), until a call
/// succeeds again.
///
/// While it applies, the limit keeps asking Redis, at most every 200 ms and only
/// while jobs wait for it; the first answer ends it, so shared limiting resumes
/// within a second of Redis coming back, without a restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnError {
    /// Start jobs as if the shared limit were not there (other limits still
    /// apply). For a limit that protects nothing critical.
    Open,
    /// Start nothing that needs the shared limit until Redis answers. Jobs wait
    /// in the queue, where their queue timeouts and cancels still apply; a
    /// `shutdown` waits for them too (only a queue timeout, a
    /// `shutdown_timeout` or `abort` bounds that wait).
    Closed,
    /// Enforce the same limit in this process alone: a fleet of P processes may
    /// then reach P times the limit. The default.
    #[default]
    Local,
}

/// Counters of one shared limit ([`SharedRate::stats`](super::SharedRate::stats),
/// [`SharedConcurrency::stats`](super::SharedConcurrency::stats)), summed over
/// every pool and key that uses it in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedStats {
    /// Calls to Redis that got an answer (leases, slot acquires, renewals and
    /// releases).
    pub round_trips: u64,
    /// Calls to Redis that failed or timed out.
    pub errors: u64,
    /// Jobs started with the [`OnError`] policy in force instead of the shared
    /// limit.
    pub started_on_error: u64,
    /// Time spent under the [`OnError`] policy, in spells that have ended (one
    /// per pool or key that fell back).
    pub time_on_error: Duration,
    /// Pools or keys under the [`OnError`] policy now.
    pub on_error_now: usize,
    /// Tokens (a rate) or slots (a concurrency limit) taken from Redis.
    pub granted: u64,
    /// Slots found expired on renewal (a concurrency limit: Redis was
    /// unreachable for longer than the TTL, or the process was paused).
    pub lost: u64,
}

/// The atomics behind [`SharedStats`], shared by every limiter made from one
/// setting. Written by the background requests, never per job, except
/// `started_on_error` (only while falling back).
#[derive(Debug, Default)]
pub(super) struct Counters {
    round_trips: AtomicU64,
    errors: AtomicU64,
    started_on_error: AtomicU64,
    time_on_error_us: AtomicU64,
    on_error_now: AtomicUsize,
    granted: AtomicU64,
    lost: AtomicU64,
    #[cfg(feature = "metrics")]
    pub(super) labels: Option<[(&'static str, String); 2]>,
}

impl Counters {
    #[cfg(feature = "metrics")]
    pub(super) fn new(kind: &'static str, name: &str) -> Counters {
        Counters {
            labels: Some([("kind", kind.to_owned()), ("limit", name.to_owned())]),
            ..Counters::default()
        }
    }

    #[cfg(not(feature = "metrics"))]
    pub(super) fn new(_kind: &'static str, _name: &str) -> Counters {
        Counters::default()
    }

    pub(super) fn snapshot(&self) -> SharedStats {
        SharedStats {
            round_trips: self.round_trips.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            started_on_error: self.started_on_error.load(Ordering::Relaxed),
            time_on_error: Duration::from_micros(self.time_on_error_us.load(Ordering::Relaxed)),
            on_error_now: self.on_error_now.load(Ordering::Relaxed),
            granted: self.granted.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }

    pub(super) fn answered(&self, granted: u64) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.granted.fetch_add(granted, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(l) = &self.labels {
            metrics::counter!("taskgate_shared_round_trips_total", l).increment(1);
            metrics::counter!("taskgate_shared_granted_total", l).increment(granted);
        }
    }

    pub(super) fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(l) = &self.labels {
            metrics::counter!("taskgate_shared_errors_total", l).increment(1);
        }
    }

    pub(super) fn started_on_error(&self) {
        self.started_on_error.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(l) = &self.labels {
            metrics::counter!("taskgate_shared_started_on_error_total", l).increment(1);
        }
    }

    pub(super) fn lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    fn enter(&self) {
        self.on_error_now.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(l) = &self.labels {
            metrics::gauge!("taskgate_shared_on_error", l).increment(1.0);
        }
    }

    fn leave(&self, spell: Duration) {
        self.on_error_now.fetch_sub(1, Ordering::Relaxed);
        let us = u64::try_from(spell.as_micros()).unwrap_or(u64::MAX);
        self.time_on_error_us.fetch_add(us, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(l) = &self.labels {
            metrics::gauge!("taskgate_shared_on_error", l).decrement(1.0);
            metrics::counter!("taskgate_shared_on_error_micros_total", l).increment(us);
        }
    }
}

pub(super) use crate::limit::after;

/// A wait until `t`, but at least a millisecond: a request whose deadline has
/// passed while its task has not yet run must not make the lane spin.
fn not_before(t: Instant, now: Instant) -> Instant {
    t.max(now + Duration::from_millis(1))
}

/// A setting's identity (`RemoteSpec::id`): what its `PartialEq` compares, the
/// `RedisLimits` handle and every field. So a setting equal to the one in force,
/// even one built again (a configuration reloaded), keeps the limiter and what
/// it holds, and a changed one is another setting.
pub(super) fn spec_id(client: &RedisLimits, fields: impl Hash) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    client.identity().hash(&mut h);
    fields.hash(&mut h);
    h.finish()
}

/// How often a failing limit asks Redis again, while jobs wait for it.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(200);

/// Whether one limiter's calls to Redis are failing, and its request in flight.
#[derive(Debug)]
pub(super) struct Health {
    /// A request is in flight, with this deadline.
    pub(super) asking: Option<Instant>,
    /// Failing since then: the [`OnError`] policy applies.
    pub(super) failing: Option<Instant>,
    /// While failing: not before then ask again.
    pub(super) next_probe: Instant,
}

impl Health {
    pub(super) fn new(now: Instant) -> Health {
        Health {
            asking: None,
            failing: None,
            next_probe: now,
        }
    }

    /// A request starts now; it answers (or fails) by `deadline`.
    pub(super) fn ask(&mut self, deadline: Instant) {
        self.asking = Some(deadline);
    }

    /// Healthy and holding nothing: when the lane should look again (a
    /// request is in flight, or Redis said when to ask), or `None` if a
    /// request should go out now.
    pub(super) fn wait(&self, next_ask: Option<Instant>, now: Instant) -> Option<Instant> {
        match self.asking {
            Some(deadline) => Some(not_before(deadline, now)),
            None => next_ask.filter(|&t| t > now),
        }
    }

    /// Failing under [`OnError::Closed`]: when the lane should look again (the
    /// probe in flight, or the next one).
    pub(super) fn closed_until(&self, now: Instant) -> Instant {
        not_before(self.asking.unwrap_or(self.next_probe), now)
    }

    /// Whether a probe may go out now (failing, none in flight, and due).
    pub(super) fn probe_due(&self, now: Instant) -> bool {
        self.asking.is_none() && now >= self.next_probe
    }

    /// The request in flight was answered: the policy no longer applies.
    pub(super) fn answered(&mut self, counters: &Counters) {
        self.asking = None;
        if let Some(since) = self.failing.take() {
            counters.leave(since.elapsed());
            tracing::info!("taskgate: redis answers again; shared limiting resumes");
        }
    }

    /// The request in flight failed: the policy applies (from now, if it did
    /// not already).
    pub(super) fn failed(&mut self, err: &RedisError, counters: &Counters, what: &str) {
        self.asking = None;
        counters.failed();
        let now = Instant::now();
        self.next_probe = now + PROBE_EVERY;
        if self.failing.is_none() {
            self.failing = Some(now);
            counters.enter();
            tracing::warn!(limit = what, error = %err, "taskgate: redis call failed; the shared limit's OnError policy applies");
        }
    }

    /// A limiter dropped while failing ends its spell.
    pub(super) fn retire(&mut self, counters: &Counters) {
        if let Some(since) = self.failing.take() {
            counters.leave(since.elapsed());
        }
    }
}
