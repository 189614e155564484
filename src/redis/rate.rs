//! [`SharedRate`]: a GCRA rate kept in Redis and shared by every process that
//! uses its name; and its limiter, which leases tokens in batches.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::client::{GcraParams, RedisLimits};
use super::health::{Counters, Health, after, spec_id};
use super::names::KeyKind;
use super::{OnError, SharedStats};
use crate::error::LimitError;
use crate::limit::{Admit, Clock, Gcra, Key, Limiter, Rate, Remote, RemoteSpec, Rouse};

/// A rate shared by every process that uses the same name (and prefix) on one
/// Redis: "100 calls per second to this API, across the fleet". Made with
/// [`RedisLimits::rate`]; applied to a pool with
/// [`Builder::shared_rate`](crate::Builder::shared_rate) or to each key with
/// [`KeyLimits::shared_rate`](crate::KeyLimits::shared_rate) (then each key has
/// its own shared rate: "5 per second per host, across the fleet").
///
/// **How.** The rate is a GCRA whose state (one timestamp) is kept in Redis and
/// moved by a Lua script that reads the server's `TIME`, never the hosts'
/// clocks. A process takes tokens in batches, a *lease* of up to
/// [`effective_lease`](SharedRate::effective_lease) per round trip, and starts
/// jobs from its batch without asking Redis; when the batch is spent it asks for
/// more in the background and the jobs wait in the queue (other keys keep
/// starting). A request that finds fewer tokens left gets those (a partial
/// grant, possibly none, never a wait for the whole lease), and the process asks
/// again when about half a lease has come due.
///
/// **The bound.** Over any window of length `t`, the fleet starts at most
/// `burst + r·t + P·lease` jobs, where `P` is the number of gates bound to the
/// name: one per pool (in any process) for [`Builder::shared_rate`](crate::Builder::shared_rate),
/// one per pool and key for [`KeyLimits::shared_rate`](crate::KeyLimits::shared_rate).
/// Each may start the tokens it leased before the window inside it.
///
/// **Delivery.** The lease is at most the burst (Redis never holds more than
/// `burst` tokens), so give the rate a burst of at least the lease you want.
/// With a burst of 1, each token costs a round trip or two, and each is taken
/// late by the round trip and the timer's lateness (tokio's timer ticks in
/// milliseconds) and that lateness is lost: one process delivers about
/// `1 / (interval + lateness)`, under the rate. A burst of 10 ms of the rate,
/// e.g. `Rate::per_second(10_000).burst(100)`, lets a saturated process reach
/// its rate with a round trip per tens of starts; with several processes
/// competing, give it about 20 ms (twice the default lease), so that a process
/// asking a little late does not find the bucket overflowed (BENCHMARKS.md,
/// "Shared limits").
///
/// **With a local rate.** A pool (or key) with both [`Builder::rate_limit`] and a
/// shared rate starts a job when both allow it, and the job counts once against
/// each. A key's state, with the tokens it leased and has not started, is
/// kept up to a second after the lease came, for its next jobs. Tokens not
/// started by then, or when the process exits, are lost: the fleet under-uses,
/// never over-uses.
///
/// **When Redis fails**, the [`OnError`] policy applies ([`on_error`](SharedRate::on_error),
/// default [`OnError::Local`]: this rate, enforced in the process alone).
///
/// Cheap to clone; clones share their counters ([`stats`](SharedRate::stats)).
///
/// # Jobs that leave, and drop
///
/// A job takes a token only when it starts: one cancelled, or timed out in the
/// queue, takes none. A token is spent when its job starts, whatever the job
/// does next. Dropping a `SharedRate` drops only the setting; pools built with
/// it keep their limit. Tokens a pool leased and did not start are lost when
/// the pool goes, or when the key's state goes (kept up to a second after the
/// lease came, while it holds unused tokens).
///
/// [`Builder::rate_limit`]: crate::Builder::rate_limit
#[derive(Clone)]
pub struct SharedRate {
    client: RedisLimits,
    name: Arc<str>,
    rate: Rate,
    lease: Option<u32>,
    on_error: OnError,
    counters: Arc<Counters>,
}

impl fmt::Debug for SharedRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRate")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("lease", &self.effective_lease())
            .field("on_error", &self.on_error)
            .finish()
    }
}

impl PartialEq for SharedRate {
    /// The same setting: the same name, rate, lease and policy on the same
    /// [`RedisLimits`] handle.
    fn eq(&self, other: &SharedRate) -> bool {
        self.client == other.client
            && self.name == other.name
            && self.rate == other.rate
            && self.lease == other.lease
            && self.on_error == other.on_error
    }
}

impl Eq for SharedRate {}

/// How long a default lease covers: about 10 ms of the rate.
const LEASE_SPAN: Duration = Duration::from_millis(10);
/// How long a key's unused tokens keep its state after the grant that brought
/// them, for its next jobs. A lane holds at most a lease however long it is
/// kept, so the fleet bound holds; what it costs is a key's state (a few
/// hundred bytes) for this long after its last job.
const KEEP_TOKENS: Duration = Duration::from_secs(1);

impl SharedRate {
    pub(super) fn new(client: RedisLimits, name: String, rate: Rate) -> SharedRate {
        let counters = Arc::new(Counters::new("rate", &name));
        SharedRate {
            client,
            name: name.into(),
            rate,
            lease: None,
            on_error: OnError::default(),
            counters,
        }
    }

    /// Takes up to `n` tokens per round trip to Redis (default: about 10 ms of
    /// the rate, at least 1). Capped at the rate's burst: see
    /// [`effective_lease`](SharedRate::effective_lease). Must be at least 1.
    pub fn lease(mut self, n: u32) -> SharedRate {
        self.lease = Some(n);
        self
    }

    /// What to do while Redis does not answer (default [`OnError::Local`]).
    pub fn on_error(mut self, policy: OnError) -> SharedRate {
        self.on_error = policy;
        self
    }

    /// The tokens taken per round trip: the [`lease`](SharedRate::lease) (or its
    /// default, about 10 ms of the rate), at most the rate's burst, at least 1.
    /// The fleet bound, `burst + r·t + P·lease`, uses this figure.
    pub fn effective_lease(&self) -> u32 {
        let default = || {
            let per_span = u128::from(self.rate.count()) * LEASE_SPAN.as_nanos();
            let n = per_span.div_ceil(self.rate.period().as_nanos().max(1));
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        self.lease
            .unwrap_or_else(default)
            .min(self.rate.burst_size())
            .max(1)
    }

    /// The name the processes share.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The policy while Redis fails.
    pub fn policy(&self) -> OnError {
        self.on_error
    }

    /// This process's counters for the rate, over every pool and key using it
    /// (and its clones). Limits set again with an equal setting built anew (a
    /// reloaded configuration) keep the limiter bound first, which counts on
    /// the first setting's counters.
    pub fn stats(&self) -> SharedStats {
        self.counters.snapshot()
    }

    pub(crate) fn validate(&self) -> Result<(), LimitError> {
        self.rate.validate()?;
        if self.lease == Some(0) {
            return Err(LimitError::ZeroLease);
        }
        if GcraParams::of(self.rate).is_none() {
            return Err(LimitError::SharedRateOutOfRange);
        }
        Ok(())
    }
}

impl RemoteSpec for SharedRate {
    fn bind(&self, key: Option<&Key>, rouse: Rouse, _running: usize) -> Box<dyn Remote> {
        let now = Instant::now();
        let params = GcraParams::of(self.rate).expect("validated when the limit was set");
        Box::new(RateLimiter {
            cell: Arc::new(Cell {
                client: self.client.clone(),
                key: self
                    .client
                    .key_of(KeyKind::Rate, &self.name, key.map(Key::as_str)),
                params,
                lease: u64::from(self.effective_lease()),
                counters: self.counters.clone(),
                rouse,
                state: Mutex::new(State {
                    tokens: 0,
                    keep_until: None,
                    next_ask: None,
                    health: Health::new(now),
                    local: Gcra::new(self.rate),
                    retired: false,
                    misses: 0,
                    seed: self.client.seed(),
                }),
            }),
            on_error: self.on_error,
        })
    }

    fn id(&self) -> u64 {
        spec_id(
            &self.client,
            (&*self.name, self.rate, self.lease, self.on_error),
        )
    }
}

/// The limiter for one gate: what it holds, shared with its background request.
struct RateLimiter {
    cell: Arc<Cell>,
    on_error: OnError,
}

struct Cell {
    client: RedisLimits,
    key: String,
    params: GcraParams,
    lease: u64,
    counters: Arc<Counters>,
    rouse: Rouse,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Tokens leased and not yet started.
    tokens: u64,
    /// Until when unused tokens keep a key's lane (and so the tokens) for its
    /// next jobs: `KEEP_TOKENS` after the last grant. A lane collected later
    /// drops them.
    keep_until: Option<Instant>,
    /// Redis said no more tokens (or only part of a lease) until then: do not
    /// ask before.
    next_ask: Option<Instant>,
    health: Health,
    /// The same rate in this process alone, for [`OnError::Local`].
    local: Gcra,
    /// The gate was dropped: a request in flight wakes nothing.
    retired: bool,
    /// Recent requests that were granted nothing (decays by half on a grant).
    misses: u32,
    /// A xorshift state for the jitter of `pace`.
    seed: u64,
}

/// The most a run of empty grants backs off, in leases.
const MAX_MISSES: u32 = 4;
/// The most jitter and back-off add to a wait, per miss (plus one).
const MAX_EXTRA: Duration = Duration::from_millis(5);

impl State {
    /// A number in `[0, 1)`.
    fn random(&mut self) -> f64 {
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Cell {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a lease request in the background; the caller holds the state
    /// (and maybe the pool lock): nothing here waits.
    fn ask(self: &Arc<Self>, st: &mut State, now: Instant) -> Instant {
        let deadline = after(now, self.client.call_timeout());
        st.health.ask(deadline);
        let cell = self.clone();
        self.rouse
            .runtime()
            .spawn(async move { cell.refill().await });
        deadline
    }

    /// When to ask again after a grant of `granted` with the next token due
    /// in `wait` (on the server's clock). With tokens left on the server
    /// (`wait` zero), as soon as this batch is spent. Otherwise when about half
    /// a lease has come due, so that a round trip brings many tokens and none
    /// is lost to a full bucket (the lease is at most the burst); later after
    /// grants of nothing (other processes are taking the tokens: asking as often
    /// as they do would cost every process a round trip per token), and with
    /// some jitter, so that processes told the same `wait` do not all ask at
    /// once.
    fn pace(&self, st: &mut State, granted: u64, wait: Duration) -> Option<Instant> {
        if granted == 0 {
            st.misses = (st.misses + 1).min(MAX_MISSES);
        } else {
            st.misses /= 2;
        }
        if wait.is_zero() {
            return None;
        }
        let emission = Duration::from_micros(self.params.emission_us);
        let half = u32::try_from(self.lease.div_ceil(2)).unwrap_or(u32::MAX);
        let base = wait + emission.saturating_mul(half - 1);
        // Up to a quarter lease of jitter (none for a lease of 1, where the
        // bucket holds one token and any delay loses rate), plus a lease per
        // miss: asking at half a lease, the bucket never overflows.
        let span = emission.saturating_mul(half);
        let jitter = if half > 1 {
            span.mul_f64(st.random() * 0.5)
        } else {
            Duration::ZERO
        };
        let backoff = span
            .saturating_mul(2 * st.misses)
            .mul_f64(0.5 + st.random());
        // Round trips matter at high rates, where a lease spans milliseconds;
        // at a slow rate (a token a second) a lease of delay would be felt and
        // a round trip costs nothing: the extra delay is capped.
        let extra = (jitter + backoff).min(MAX_EXTRA.saturating_mul(1 + st.misses));
        Some(after(Instant::now(), base.saturating_add(extra)))
    }

    async fn refill(self: Arc<Self>) {
        let result = self.client.lease(&self.key, self.params, self.lease).await;
        let mut st = self.lock();
        if st.retired {
            // Nothing waits for it: the tokens are lost (under-use).
            if let Ok((granted, _)) = result {
                self.counters.answered(granted);
            }
            return;
        }
        match result {
            Ok((granted, wait)) => {
                self.counters.answered(granted);
                st.health.answered(&self.counters);
                st.tokens += granted;
                st.keep_until = Some(after(Instant::now(), KEEP_TOKENS));
                st.next_ask = self.pace(&mut st, granted, wait);
            }
            Err(e) => st.health.failed(&e, &self.counters, "shared rate"),
        }
        drop(st);
        self.rouse.rouse();
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRateLimiter")
            .field("lease", &self.cell.lease)
            .field("state", &*self.cell.lock())
            .finish()
    }
}

impl Remote for RateLimiter {
    fn check(&self, clock: &mut Clock) -> Admit {
        let mut st = self.cell.lock();
        if st.tokens > 0 {
            return Admit::Now;
        }
        let now = clock.now();
        if st.health.failing.is_some() {
            if st.health.probe_due(now) {
                self.cell.ask(&mut st, now);
            }
            return match self.on_error {
                OnError::Open => Admit::Now,
                OnError::Local => Limiter::check(&st.local, clock),
                OnError::Closed => Admit::At(st.health.closed_until(now)),
            };
        }
        match st.health.wait(st.next_ask, now) {
            Some(t) => Admit::At(t),
            None => Admit::At(self.cell.ask(&mut st, now)),
        }
    }

    fn acquire(&mut self, clock: &mut Clock) {
        let mut st = self.cell.lock();
        if st.tokens > 0 {
            st.tokens -= 1;
            return;
        }
        // Only a failing limit says `Now` without a token.
        self.cell.counters.started_on_error();
        if self.on_error == OnError::Local {
            Limiter::acquire(&mut st.local, clock, None);
        }
    }

    fn release(&mut self) {}

    fn has_room(&self) -> bool {
        true
    }

    fn holds_until(&self, clock: &mut Clock) -> Option<Instant> {
        // What the in-process rate owes (it is only charged under
        // `OnError::Local`), kept like a local rate's debt so that a key idle
        // between jobs does not get a fresh burst each time; when to ask
        // Redis next, so that its next job does not ask early for nothing; and
        // tokens leased and not yet used, kept until `keep_until`, so that a
        // key whose jobs come one at a time uses its lease instead of dropping
        // it with its lane (and taking a fresh one from the fleet's bucket for
        // every job).
        let now = clock.now();
        let st = self.cell.lock();
        let owed = st.local.owed_until(now);
        let leased = st.keep_until.filter(|&t| st.tokens > 0 && t > now);
        owed.max(st.next_ask.filter(|&t| t > now)).max(leased)
    }
}

impl Drop for RateLimiter {
    fn drop(&mut self) {
        let mut st = self.cell.lock();
        st.retired = true;
        st.health.retire(&self.cell.counters);
    }
}
