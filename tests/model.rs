//! Model-based tests: random sequences of operations against the real pool on a
//! paused-time runtime, checked after every step against what a simple model allows.
//!
//! Each sequence builds its own pool: 1–3 workers, a queue of 0–3, and optionally a
//! pool rate, default key limits (concurrency 1–2, a rate, a key queue of 1–2) and
//! a priority aging of 1–59 ms. Jobs carry an optional key (`a`, `b`, `c`) and a
//! priority; besides submitting, cancelling, timing, resizing and closing, the
//! operations override or clear one key's limits and pause the pool or one key.
//!
//! Each job checks itself when it starts (its first poll): below the pool's size,
//! below its key's current cap, outside every pause of the pool and its key, and
//! conforming to the pool's and its key's GCRA (tracked from the starts themselves,
//! so a cancelled or expired job that took rate would show). After every step:
//! busy and per-key stats match the running futures; each key's queued count,
//! pause and counters agree with the model; a key has state exactly while it holds
//! a job, a pause or a rate debt; nothing queued that its limits allow waits while
//! a worker is free; no submitter waits while its job would fit; `try_submit`
//! accepts exactly when there is room; no job starts while an older one that
//! outranks it (by priority, or by aging) could surely have started instead. At the
//! end: each job's outcome, the rate bound `burst + floor(span / interval)` over
//! every window of starts, `shutdown_timeout` waiting only for jobs, and no key
//! state once every pause and debt has run out.
//!
//! Adaptive limits: one sequence in four gives the pool an adaptive limit
//! (`Builder::adaptive`, `min`/`initial`/`max` within its workers, a decrease in
//! `[0.5, 1)`, a `max_pause` of 0–49 ms), one in five puts one in the default key
//! limits, and a `SetKeyLimits` carries one in three times (one that does not fit
//! the pool's size now must be refused, and only then). Jobs may be classified
//! (`Success`, `Ignore`, `Overload` with or without a `retry_after`). The model
//! cannot predict the learned limit, so it checks what bounds it: `Stats::limit` is
//! the size, or within the limit's `[min, max]` and at most the size;
//! `KeyStats::limit` is the key's cap, or its adaptive limit within `[min, max]`
//! (capped at the sizes the pool has had) and under its cap. A job never starts
//! with its scope's running jobs at the limit as read in its first poll (the worker
//! took it just before, with no job's end reported in between), counting for a key
//! only the jobs started since its adaptive setting last changed (a new setting
//! restarts the limit). An overload's `retry_after` is modelled as a pause of the
//! job's scope (its key, or the pool for an unkeyed job) where that scope's limit
//! counts the job, from the job's end for `min(retry_after, max_pause)`: no start
//! strictly inside it, and `paused_until` agrees. A key keeps
//! its state at least a second after the last job its limit learned from, and at
//! most ten of its longest run times (1 s to 60 s). Liveness, priority and aging
//! stand down only where an adaptive limit may hold the job back: the scope at its
//! limit, or (for priority) a job of the key ending at that instant.
//!
//! `PROPTEST_CASES` sets the number of sequences (default 64, as in CI); for the long
//! version: `PROPTEST_CASES=5000 cargo test --release --test model -- --nocapture`.
//! `MODEL_SKIP` (comma-separated check names: `cap`, `pause`, `rate`, `priority`,
//! `aging`, `key_state`, `key_gc`, `liveness`, `submit_liveness`, `shutdown`,
//! `keys_end`, `adaptive`) turns checks off, to look past a known failure for the next one; by
//! default every check runs. `MODEL_TRACE=1` prints the pool's state after each step.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use support::settle;
use taskgate::{
    Adaptive, JobError, JobHandle, Key, KeyLimits, KeyStats, Outcome, Pool, Priority, Rate, Stats,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn millis(n: u8) -> Duration {
    Duration::from_millis(u64::from(n))
}
const PANIC_MSG: &str = "model job panic";
const KEYS: [&str; 3] = ["a", "b", "c"];

/// Whether `MODEL_SKIP` names this check.
fn skip(check: &str) -> bool {
    static SKIP: OnceLock<Vec<String>> = OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("MODEL_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
    .iter()
    .any(|s| s == check)
}

#[derive(Clone, Debug)]
enum Kind {
    /// Sleeps this many ms, then returns its id.
    Finish(u8),
    /// Never finishes.
    Hang,
    /// Sleeps this many ms, then panics.
    Panic(u8),
}

#[derive(Clone, Debug)]
enum Via {
    Submit,
    TrySubmit,
    SubmitTimeout(u8),
    Run,
    Spawn,
}

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // KeyLimits with the `redis` feature; test code.
enum Op {
    Job {
        kind: Kind,
        via: Via,
        run_timeout: Option<u8>,
        queue_timeout: Option<u8>,
        key: Option<&'static str>,
        priority: Priority,
        /// What the job reports to an adaptive limit when it returns, if classified.
        classify: Option<Outcome>,
    },
    DropHandle(usize),
    Cancel(usize),
    Detach(usize),
    DropRun(usize),
    Advance(u8),
    Resize(u8),
    Close,
    ShutdownTimeout(u8),
    Abort,
    /// The adaptive limit in the `KeyLimits` too, as the model sees it.
    SetKeyLimits(&'static str, KeyLimits, Option<AdaptiveCfg>),
    ClearKeyLimits(&'static str),
    PauseFor(u8),
    PauseKeyFor(&'static str, u8),
}

/// The pool a sequence runs against.
#[derive(Clone, Debug)]
struct Setup {
    workers: usize,
    capacity: usize,
    rate: Option<Rate>,
    key_limits: KeyLimits,
    /// `priority_aging` in ms; `None` keeps the default (1 s).
    aging: Option<u8>,
    /// The pool's adaptive limit, if it has one.
    adaptive: Option<AdaptiveCfg>,
    /// The adaptive limit in `key_limits`, as the model sees it.
    key_adaptive: Option<AdaptiveCfg>,
}

/// An [`Adaptive`] as the model sees it (the builder's fields are private).
#[derive(Clone, Copy, Debug, PartialEq)]
struct AdaptiveCfg {
    min: usize,
    initial: Option<usize>,
    max: Option<usize>,
    decrease: f64,
    max_pause: Duration,
}

impl AdaptiveCfg {
    fn build(&self) -> Adaptive {
        let mut a = Adaptive::aimd()
            .min(self.min)
            .decrease(self.decrease)
            .max_pause(self.max_pause);
        if let Some(i) = self.initial {
            a = a.initial(i);
        }
        if let Some(m) = self.max {
            a = a.max(m);
        }
        a
    }

    /// Its effective maximum for `workers` workers.
    fn top(&self, workers: usize) -> usize {
        let w = workers.max(1);
        self.max.unwrap_or(w).min(w)
    }

    /// Whether `validate` accepts it for `workers` workers.
    fn valid_for(&self, workers: usize) -> bool {
        let top = self.top(workers);
        self.min <= top && self.initial.is_none_or(|i| self.min <= i && i <= top)
    }
}

/// Raw numbers for an adaptive limit: min, initial, max, decrease (index), max pause (ms).
type AdaptiveRaw = (usize, Option<usize>, Option<usize>, usize, u8);

fn adaptive_raw() -> impl Strategy<Value = AdaptiveRaw> {
    (
        1usize..=3,
        proptest::option::of(1usize..=3),
        proptest::option::of(1usize..=5),
        0usize..6,
        0u8..50,
    )
}

/// An adaptive limit from raw numbers, valid for `workers` workers (a `max` above
/// them is kept: the pool caps it).
fn adaptive_for((min, initial, max, dec, pause): AdaptiveRaw, workers: usize) -> AdaptiveCfg {
    const DECREASES: [f64; 6] = [0.5, 0.6, 0.7, 0.8, 0.9, 0.99];
    let w = workers.max(1);
    let min = min.min(w);
    let max = max.map(|m| m.max(min));
    let top = max.unwrap_or(w).min(w);
    AdaptiveCfg {
        min,
        initial: initial.map(|i| i.clamp(min, top)),
        max,
        decrease: DECREASES[dec],
        max_pause: millis(pause),
    }
}

fn rate() -> impl Strategy<Value = Rate> {
    (1u32..=4, 5u64..=60, 1u32..=3)
        .prop_map(|(n, per, burst)| Rate::new(n, Duration::from_millis(per)).burst(burst))
}

fn key_limits(max: usize) -> impl Strategy<Value = KeyLimits> {
    (
        proptest::option::of(1..=max),
        proptest::option::of(rate()),
        proptest::option::of(1..=max),
    )
        .prop_map(|(concurrency, rate, queue_capacity)| {
            let mut l = KeyLimits::default();
            if let Some(n) = concurrency {
                l = l.concurrency(n);
            }
            if let Some(r) = rate {
                l = l.rate(r);
            }
            if let Some(n) = queue_capacity {
                l = l.queue_capacity(n);
            }
            l
        })
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        (1usize..4, 0usize..4),
        proptest::option::of(rate()),
        key_limits(2),
        proptest::option::of(1u8..60),
        // An adaptive limit for the pool in one sequence of four, and for every key
        // (the default key limits) in one of five.
        prop_oneof![3 => Just(None), 1 => adaptive_raw().prop_map(Some)],
        prop_oneof![4 => Just(None), 1 => adaptive_raw().prop_map(Some)],
    )
        .prop_map(
            |((workers, capacity), rate, mut key_limits, aging, pool_adaptive, key_adaptive)| {
                let key_adaptive = key_adaptive.map(|raw| adaptive_for(raw, workers));
                if let Some(a) = key_adaptive {
                    key_limits = key_limits.adaptive(a.build());
                }
                Setup {
                    workers,
                    capacity,
                    rate,
                    key_limits,
                    aging,
                    adaptive: pool_adaptive.map(|raw| adaptive_for(raw, workers)),
                    key_adaptive,
                }
            },
        )
}

/// Key limits for `SetKeyLimits`, with an adaptive limit in one of three, drawn for
/// up to 3 workers: one that does not fit the pool's size now is refused.
fn key_override() -> impl Strategy<Value = (KeyLimits, Option<AdaptiveCfg>)> {
    (
        key_limits(3),
        prop_oneof![2 => Just(None), 1 => adaptive_raw().prop_map(Some)],
    )
        .prop_map(|(l, raw)| {
            let cfg = raw.map(|raw| adaptive_for(raw, 3));
            (
                cfg.map_or(l.clone(), |c| l.clone().adaptive(c.build())),
                cfg,
            )
        })
}

fn outcome() -> impl Strategy<Value = Option<Outcome>> {
    prop_oneof![
        5 => Just(None),
        1 => Just(Some(Outcome::Success)),
        1 => Just(Some(Outcome::Ignore)),
        1 => Just(Some(Outcome::Overload { retry_after: None })),
        2 => (0u64..40).prop_map(|ms| Some(Outcome::Overload {
            retry_after: Some(Duration::from_millis(ms))
        })),
    ]
}

fn key() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just("c")]
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        4 => (1u8..20).prop_map(Kind::Finish),
        1 => Just(Kind::Hang),
        1 => (0u8..10).prop_map(Kind::Panic),
    ];
    let via = prop_oneof![
        Just(Via::Submit),
        Just(Via::TrySubmit),
        (0u8..20).prop_map(Via::SubmitTimeout),
        Just(Via::Run),
        Just(Via::Spawn),
    ];
    let job_key = prop_oneof![2 => Just(None), 2 => Just(Some("a")), 1 => Just(Some("b")), 1 => Just(Some("c"))];
    let priority = prop_oneof![
        Just(Priority::Low),
        Just(Priority::Normal),
        Just(Priority::High)
    ];
    // Every operation but the three that end the pool's life (close, shutdown, abort)
    // weighs twice what it did, so that a sequence runs for a while before it ends.
    let w = 2;
    prop_oneof![
        12 * w => (
            (kind, via),
            (proptest::option::of(0u8..30), proptest::option::of(0u8..30)),
            (job_key, priority, outcome()),
        )
            .prop_map(
                |((kind, via), (run_timeout, queue_timeout), (key, priority, classify))| Op::Job {
                    kind,
                    via,
                    run_timeout,
                    queue_timeout,
                    key,
                    priority,
                    classify,
                }
            ),
        2 * w => any::<usize>().prop_map(Op::DropHandle),
        2 * w => any::<usize>().prop_map(Op::Cancel),
        w => any::<usize>().prop_map(Op::Detach),
        w => any::<usize>().prop_map(Op::DropRun),
        5 * w => (1u8..30).prop_map(Op::Advance),
        2 * w => (0u8..5).prop_map(Op::Resize),
        1 => Just(Op::Close),
        1 => (0u8..20).prop_map(Op::ShutdownTimeout),
        1 => Just(Op::Abort),
        w => (key(), key_override()).prop_map(|(k, (l, a))| Op::SetKeyLimits(k, l, a)),
        w => key().prop_map(Op::ClearKeyLimits),
        w => (0u8..40).prop_map(Op::PauseFor),
        2 * w => (key(), 0u8..40).prop_map(|(k, ms)| Op::PauseKeyFor(k, ms)),
    ]
}

/// What one job is, and what its future saw.
struct Log {
    id: usize,
    key: Option<&'static str>,
    priority: Priority,
    queue_timeout: Option<Duration>,
    /// When the job was made: no later than when the pool accepted it.
    created: Instant,
    /// The model sees when the pool accepts this job (every way but `run`).
    acceptance_seen: bool,
    /// When the pool accepted it, if it did and `acceptance_seen`.
    accepted: Mutex<Option<Instant>>,
    /// Its submit call returned (accepted or refused): it no longer waits for space.
    submit_done: AtomicBool,
    /// A `run` whose job fitted when it was called, so was accepted then (the
    /// model cannot see when a `run` that waited for space was accepted).
    fit_at_call: AtomicBool,
    started: Mutex<Option<Instant>>,
    dropped: Mutex<Option<Instant>>,
    /// `cancel()` or a handle drop happened while the job had not started.
    cancelled_unstarted: AtomicBool,
    /// Its caller asked for a cancel (cancel, handle drop, run dropped).
    cancel_requested: AtomicBool,
    /// What it reports to an adaptive limit if it returns (`classify`).
    classify: Option<Outcome>,
    /// Its future returned its output: the pool saw it complete (and classified it).
    returned: AtomicBool,
    /// It started while its key had an adaptive limit: it holds a ticket of the
    /// key's limit (which learns from its end while the key still has one).
    key_ticket: AtomicBool,
    /// ... and that ticket belongs to the key's limit as it is now: no new
    /// adaptive setting restarted it since (a restarted limit ignores old tickets).
    key_tracked: AtomicBool,
}

impl Log {
    fn accepted(&self) -> Option<Instant> {
        *self.accepted.lock().unwrap()
    }
    fn started(&self) -> Option<Instant> {
        *self.started.lock().unwrap()
    }
    fn dropped(&self) -> Option<Instant> {
        *self.dropped.lock().unwrap()
    }
    fn accept(&self) {
        *self.accepted.lock().unwrap() = Some(Instant::now());
    }
}

/// GCRA, as documented for [`Rate`]: a start at `now` conforms when
/// `now >= tat - interval × (burst - 1)`, and moves `tat` to `max(tat, now) + interval`,
/// except that a job queued by the time its start became due that starts at most
/// `LATE_WINDOW` after `tat` moves it to `max(tat, now - LATENESS) + interval` (up
/// to `LATENESS` of the timer's lateness is given back).
fn conforms_from(r: Rate, tat: Option<Instant>) -> Option<Instant> {
    let tolerance = r
        .interval()
        .saturating_mul(r.burst_size().saturating_sub(1));
    tat.and_then(|t| t.checked_sub(tolerance))
}
fn conforms(r: Rate, tat: Option<Instant>, now: Instant) -> bool {
    conforms_from(r, tat).is_none_or(|e| now >= e)
}
fn take(r: Rate, tat: Option<Instant>, now: Instant, since: Instant) -> Option<Instant> {
    let base = match tat {
        None => now,
        Some(t) => {
            let waited = conforms_from(r, tat).is_some_and(|due| since <= due);
            if waited && now.saturating_duration_since(t) <= LATE_WINDOW {
                t.max(now.checked_sub(LATENESS).unwrap_or(now))
            } else {
                t.max(now)
            }
        }
    };
    Some(base + r.interval())
}

/// How late a rate's timer may fire: the `ε` of the documented bound
/// `burst + (t + ε) / interval`, and the most lateness a start is given back.
const LATENESS: Duration = Duration::from_millis(2);
/// A start later than this after `tat` gets nothing back.
const LATE_WINDOW: Duration = Duration::from_millis(10);

/// The model's view of one key.
#[derive(Default)]
struct KeyModel {
    /// Set by `set_key_limits`, cleared by `clear_key_limits`.
    over: Option<KeyLimits>,
    /// Jobs of the key whose future is running.
    running: usize,
    /// The key's GCRA state, from the starts the jobs saw.
    tat: Option<Instant>,
    /// The end of its pause (the latest asked for).
    pause: Option<Instant>,
    /// Bumped whenever the key's rate changes: rate windows stay within one epoch.
    epoch: u32,
    /// The adaptive limit of `over`, as the model sees it.
    over_adaptive: Option<AdaptiveCfg>,
    /// Pauses set by its jobs' `retry_after`s: no start strictly inside one (a start
    /// at the instant one is set may come before the job's end was reported).
    ra: Vec<(Instant, Instant)>,
    /// Since when the key has had an adaptive limit (any setting: a new setting
    /// keeps what the old one learned about when its last job ended).
    adaptive_since: Option<Instant>,
}

struct Start {
    job: usize,
    key: Option<&'static str>,
    at: Instant,
    key_rate: Option<Rate>,
    epoch: u32,
}

/// What the limits allow, updated by the operations and by the jobs as they start.
struct Model {
    base: Instant,
    /// The pool's adaptive limit.
    pool_adaptive: Option<AdaptiveCfg>,
    /// Pauses set by `retry_after`s in the pool's limit (see `KeyModel::ra`).
    pool_ra: Vec<(Instant, Instant)>,
    /// The adaptive limit of `defaults`.
    default_adaptive: Option<AdaptiveCfg>,
    /// The fewest and the most workers the pool has been sized to (a key's adaptive
    /// limit is capped at the size when its state was made).
    targets: (usize, usize),
    /// A rate-limited job started whose acceptance time the model does not know
    /// (a `run` that waited for space): the pool may have charged it from its due
    /// time or from its start, so the rates' exact state is unknown from then on,
    /// and the checks that need it (conformance, liveness under a rate, key rate
    /// debt) stand down. The window bounds are still checked.
    rate_unsure: bool,
    defaults: KeyLimits,
    pool_rate: Option<Rate>,
    pool_tat: Option<Instant>,
    pool_pause: Option<Instant>,
    aging: Duration,
    keys: BTreeMap<&'static str, KeyModel>,
    logs: Vec<Arc<Log>>,
    starts: Vec<Start>,
    /// The last step boundary: every timer due by then has fired and every task has
    /// run to a standstill. (A timer due later may still be unseen when a job starts
    /// at the same turn of the clock.)
    settled_at: Instant,
    /// Off while time passes on its own (shutdown), when `settled_at` says nothing.
    check_priority: bool,
    /// Jobs that could have started before another that did: (job, when, what).
    outranked: Vec<(usize, Instant, String)>,
}

impl Model {
    fn limits(&self, k: &str) -> KeyLimits {
        self.keys[k].over.clone().unwrap_or(self.defaults.clone())
    }

    fn at(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.base)
    }

    /// Key `k`'s adaptive limit now, as the model sees it.
    fn adaptive(&self, k: &str) -> Option<AdaptiveCfg> {
        let km = &self.keys[k];
        if km.over.is_some() {
            km.over_adaptive
        } else {
            self.default_adaptive
        }
    }

    fn set_override(&mut self, k: &str, over: Option<(KeyLimits, Option<AdaptiveCfg>)>) {
        let old = self.limits(k).rate;
        let old_adaptive = self.adaptive(k);
        let km = self.keys.get_mut(k).unwrap();
        km.over = over.clone().map(|o| o.0);
        km.over_adaptive = over.and_then(|o| o.1);
        let new = self.limits(k).rate;
        let new_adaptive = self.adaptive(k);
        let km = self.keys.get_mut(k).unwrap();
        if old != new {
            km.epoch += 1;
            // A new rate keeps what was spent; adding or removing one starts afresh.
            if old.is_none() || new.is_none() {
                km.tat = None;
            }
        }
        if old_adaptive != new_adaptive {
            // A new setting restarts the key's limit (or drops it): the tickets of
            // the jobs running now no longer count in it.
            for l in self.logs.iter().filter(|l| l.key == Some(k)) {
                l.key_tracked.store(false, SeqCst);
            }
            km.adaptive_since = match (old_adaptive, new_adaptive) {
                (_, None) => None,
                (None, Some(_)) => Some(Instant::now()),
                (Some(_), Some(_)) => km.adaptive_since,
            };
        }
    }

    /// Until when the pool is paused (by `pause_for` or a `retry_after`).
    fn pool_pause_until(&self) -> Option<Instant> {
        let ra = self.pool_ra.iter().map(|r| r.1).max();
        self.pool_pause.max(ra)
    }

    /// Until when key `k` is paused (by `pause_key_for` or a `retry_after`).
    fn key_pause_until(&self, k: &str) -> Option<Instant> {
        let km = &self.keys[k];
        km.pause.max(km.ra.iter().map(|r| r.1).max())
    }

    /// Jobs of `k` running that count in its adaptive limit now.
    fn tracked_running(&self, k: &str) -> usize {
        self.logs
            .iter()
            .filter(|l| {
                l.key == Some(k)
                    && l.started().is_some()
                    && l.dropped().is_none()
                    && l.key_tracked.load(SeqCst)
            })
            .count()
    }

    /// How long key `k` must keep its state for what its adaptive limit learned
    /// (ten smoothed run times, at least 1 s: until a second after the last job
    /// that it learned from ended), and how long it may (ten of the longest run
    /// times of its jobs, at most 60 s, after the last job of the key that ended).
    fn learned_until(&self, k: &str) -> (Option<Instant>, Option<Instant>) {
        let Some(since) = self.keys[k].adaptive_since else {
            return (None, None);
        };
        let jobs = || {
            self.logs
                .iter()
                .filter(move |l| l.key == Some(k) && l.dropped().is_some_and(|d| d >= since))
        };
        // A job that ended at the instant the limit was set may have ended before.
        let must = jobs()
            .filter(|l| l.dropped() > Some(since))
            .filter(|l| l.started().is_some() && l.key_ticket.load(SeqCst))
            .filter_map(|l| l.dropped())
            .max()
            .map(|t| t + Duration::from_secs(1));
        let longest = self
            .logs
            .iter()
            .filter(|l| l.key == Some(k))
            .filter_map(|l| Some(l.dropped()?.saturating_duration_since(l.started()?)))
            .max()
            .unwrap_or_default();
        let keep = (longest * 10 + Duration::from_millis(1))
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let may = jobs().filter_map(|l| l.dropped()).max().map(|t| t + keep);
        (must, may)
    }

    /// Whether a job of `k` could certainly start now as far as its key goes: its
    /// pause and rate wait ended by the last step boundary (so their timers have
    /// fired), and it is below its cap even counting jobs that ended just now (their
    /// workers may not have reported back yet).
    fn key_surely_startable(&self, k: &str, now: Instant, snap: &Snap) -> bool {
        let km = &self.keys[k];
        let lim = self.limits(k);
        if self.key_pause_until(k).is_some_and(|p| p > self.settled_at) {
            return false;
        }
        if self.adaptive(k).is_some() {
            // Below its adaptive limit as it is now, with no job of the key ending
            // now (whose report may still cut the limit, or pause the key).
            let ending = self
                .logs
                .iter()
                .any(|l| l.key == Some(k) && l.dropped() == Some(now));
            let limit = snap.key(k).and_then(|ks| ks.limit);
            if ending || limit.is_none_or(|l| self.tracked_running(k) >= l) {
                return false;
            }
        }
        if let Some(cap) = lim.concurrency {
            let ending = self
                .logs
                .iter()
                .filter(|l| l.key == Some(k) && l.started().is_some() && l.dropped() == Some(now))
                .count();
            if km.running + ending >= cap {
                return false;
            }
        }
        if let Some(r) = lim.rate
            && conforms_from(r, km.tat).is_some_and(|e| e > self.settled_at)
        {
            return false;
        }
        true
    }

    /// A queued job that outranks `j` and could surely have started instead.
    fn outranked(
        &self,
        j: &Log,
        now: Instant,
        tally: &Tally,
        snap: &Snap,
    ) -> Option<(usize, String)> {
        // `j` ranks at most: `High` if it may have aged (from its earliest acceptance).
        let j_rank = match j.accepted().unwrap_or(j.created).checked_add(self.aging) {
            Some(due) if now >= due => Priority::High,
            _ => j.priority,
        };
        let mut choice = false;
        for q in &self.logs {
            // Outranked by an older job of a lower priority only through aging: that
            // part of the check is named `aging`. Aging never reorders jobs of one
            // priority (their lanes take turns), so an equal priority never outranks.
            if q.id == j.id
                || q.priority == j.priority
                || (q.priority < j.priority && skip("aging"))
            {
                continue;
            }
            let Some(acc) = q.accepted() else { continue };
            if q.started().is_some()
                || q.dropped().is_some()
                || q.cancel_requested.load(SeqCst)
                || q.queue_timeout.is_some_and(|t| acc + t <= now)
            {
                continue;
            }
            if !choice && q.priority != j.priority {
                choice = true;
                Tally::bump(&tally.priority_choices);
            }
            // `q` ranks at least: `High` once it has surely aged.
            let q_rank = match acc.checked_add(self.aging) {
                Some(due) if now > due => Priority::High,
                _ => q.priority,
            };
            if q_rank <= j_rank {
                continue;
            }
            if let Some(k) = q.key
                && !self.key_surely_startable(k, now, snap)
            {
                continue;
            }
            return Some((
                q.id,
                format!(
                    "job {} ({:?}, key {:?}) started at {:?} while job {} ({:?}, key {:?}, queued since {:?}) could start and ranks higher, and it did not start then",
                    j.id,
                    j.priority,
                    j.key,
                    self.at(now),
                    q.id,
                    q.priority,
                    q.key,
                    self.at(acc),
                ),
            ));
        }
        None
    }
}

/// The pool's limits as a job sees them when it starts (read only where an
/// adaptive limit may be in force).
#[derive(Default)]
struct Snap {
    /// `Stats::limit`.
    pool_limit: Option<usize>,
    keys: Vec<(&'static str, Option<KeyStats>)>,
}

impl Snap {
    fn key(&self, k: &str) -> Option<KeyStats> {
        self.keys.iter().find(|(kk, _)| *kk == k).and_then(|x| x.1)
    }
}

/// Shared by all jobs of one sequence.
struct World {
    /// The pool, for the jobs to read its limits when they start (taken out at
    /// the end of the sequence).
    pool: Mutex<Option<Pool>>,
    /// Some adaptive limit was set (for the pool or a key): the jobs read them.
    adaptive: AtomicBool,
    running: AtomicUsize,
    alive: AtomicUsize,
    /// The size last passed to the pool, as the jobs see it when they start.
    target: AtomicUsize,
    /// The first limit a job broke when it started.
    violation: Mutex<Option<String>>,
    model: Mutex<Model>,
    tally: Tally,
}

/// How often the new limits were in play, to see that the checks bite: job starts,
/// starts while a job of another priority was queued, and step ends at which a
/// queued job was held back by a rate, a pause, or its key's cap.
#[derive(Default)]
struct Tally {
    starts: AtomicU64,
    priority_choices: AtomicU64,
    held_by_rate: AtomicU64,
    held_by_pause: AtomicU64,
    held_by_cap: AtomicU64,
    /// Starts under an adaptive limit (the pool's or the key's).
    adaptive_starts: AtomicU64,
    /// Step ends with a queued job held by an adaptive limit (its scope at it).
    held_by_adaptive: AtomicU64,
    /// Pauses set by a `retry_after`.
    retry_after_pauses: AtomicU64,
}

impl Tally {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, SeqCst);
    }

    fn add_to(&self, total: &Tally) {
        for (from, to) in [
            (&self.starts, &total.starts),
            (&self.priority_choices, &total.priority_choices),
            (&self.held_by_rate, &total.held_by_rate),
            (&self.held_by_pause, &total.held_by_pause),
            (&self.held_by_cap, &total.held_by_cap),
            (&self.adaptive_starts, &total.adaptive_starts),
            (&self.held_by_adaptive, &total.held_by_adaptive),
            (&self.retry_after_pauses, &total.retry_after_pauses),
        ] {
            to.fetch_add(from.load(SeqCst), SeqCst);
        }
    }
}

impl World {
    fn violate(&self, msg: String) {
        self.violation.lock().unwrap().get_or_insert(msg);
    }

    /// The limits as they are now, if an adaptive limit may be in force. Read in a
    /// job's first poll: the worker took the job just before, with nothing else run
    /// in between, so no job's end has changed a limit since it was checked.
    fn snap(&self) -> Snap {
        if !self.adaptive.load(SeqCst) {
            return Snap::default();
        }
        let Some(pool) = self.pool.lock().unwrap().clone() else {
            return Snap::default();
        };
        Snap {
            pool_limit: Some(pool.stats().limit),
            keys: KEYS
                .iter()
                .map(|&k| (k, pool.key_stats(&Key::from(k))))
                .collect(),
        }
    }

    /// A job's first poll, with `before` jobs running: check it against every
    /// limit that applies to it, and count it against them.
    fn on_start(&self, log: &Log, before: usize) {
        let now = Instant::now();
        let mut found = Vec::new();
        let snap = self.snap();
        let mut m = self.model.lock().unwrap();
        let id = log.id;
        // When the pool accepted it, where the model knows.
        let since = if log.acceptance_seen {
            log.accepted()
        } else {
            log.fit_at_call.load(SeqCst).then_some(log.created)
        };
        let rated = m.pool_rate.is_some() || log.key.is_some_and(|k| m.limits(k).rate.is_some());
        if since.is_none() && rated {
            m.rate_unsure = true;
        }
        let since = since.unwrap_or(now);
        let t = m.at(now);
        if m.check_priority
            && !skip("priority")
            && let Some((q, v)) = m.outranked(log, now, &self.tally, &snap)
        {
            // Judged at the step's end: if `q` also started at this instant, the
            // order within the instant does not matter.
            m.outranked.push((q, now, v));
        }
        if let Some(p) = m.pool_pause
            && now < p
            && !skip("pause")
        {
            found.push(format!(
                "job {id} started at {t:?} while the pool is paused until {:?}",
                m.at(p)
            ));
        }
        if let Some(&(from, until)) = m.pool_ra.iter().find(|r| r.0 < now && now < r.1)
            && !skip("pause")
        {
            found.push(format!(
                "job {id} started at {t:?} while the pool is paused by a retry_after from {:?} until {:?}",
                m.at(from),
                m.at(until)
            ));
        }
        let mut adaptive = false;
        if m.pool_adaptive.is_some() {
            adaptive = true;
            // Every running job holds a ticket of the pool's limit (it never restarts).
            let limit = snap.pool_limit.unwrap_or(0);
            if before >= limit && !skip("adaptive") {
                found.push(format!(
                    "job {id} started at {t:?} with {before} running and the pool's adaptive limit at {limit}"
                ));
            }
        }
        if let Some(r) = m.pool_rate {
            if !conforms(r, m.pool_tat, now) && !m.rate_unsure && !skip("rate") {
                found.push(format!(
                    "job {id} started at {t:?} against the pool rate {r:?} (tat {:?})",
                    m.pool_tat.map(|x| m.at(x))
                ));
            }
            m.pool_tat = take(r, m.pool_tat, now, since);
        }
        let (mut key_rate, mut epoch) = (None, 0);
        if let Some(k) = log.key {
            let lim = m.limits(k);
            let base = m.base;
            let at = |x: Instant| x.saturating_duration_since(base);
            let unsure = m.rate_unsure;
            if m.adaptive(k).is_some() {
                adaptive = true;
                log.key_ticket.store(true, SeqCst);
                log.key_tracked.store(true, SeqCst);
                // The jobs of the key running under its limit as it is now (not
                // counting this one, whose `started` is not set yet).
                let tracked = m.tracked_running(k);
                let limit = snap.key(k).and_then(|ks| ks.limit);
                if limit.is_none_or(|l| tracked >= l) && !skip("adaptive") {
                    found.push(format!(
                        "job {id} of key {k} started at {t:?} with {tracked} of the key running under its adaptive limit, which is at {limit:?}"
                    ));
                }
            }
            let km = m.keys.get_mut(k).unwrap();
            if let Some(&(from, until)) = km.ra.iter().find(|r| r.0 < now && now < r.1)
                && !skip("pause")
            {
                found.push(format!(
                    "job {id} started at {t:?} while key {k} is paused by a retry_after from {:?} until {:?}",
                    at(from),
                    at(until)
                ));
            }
            if let Some(p) = km.pause
                && now < p
                && !skip("pause")
            {
                found.push(format!(
                    "job {id} started at {t:?} while key {k} is paused until {:?}",
                    at(p)
                ));
            }
            if let Some(cap) = lim.concurrency
                && km.running >= cap
                && !skip("cap")
            {
                found.push(format!(
                    "job {id} of key {k} started at {t:?} with {} of the key running and a cap of {cap}",
                    km.running
                ));
            }
            km.running += 1;
            if let Some(r) = lim.rate {
                if !conforms(r, km.tat, now) && !unsure && !skip("rate") {
                    found.push(format!(
                        "job {id} of key {k} started at {t:?} against its rate {r:?} (tat {:?})",
                        km.tat.map(at)
                    ));
                }
                km.tat = take(r, km.tat, now, since);
            }
            (key_rate, epoch) = (lim.rate, km.epoch);
        }
        Tally::bump(&self.tally.starts);
        if adaptive {
            Tally::bump(&self.tally.adaptive_starts);
        }
        m.starts.push(Start {
            job: id,
            key: log.key,
            at: now,
            key_rate,
            epoch,
        });
        drop(m);
        for v in found {
            self.violate(v);
        }
    }
}

struct Alive(Arc<World>, Arc<Log>);
impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, SeqCst);
        *self.1.dropped.lock().unwrap() = Some(Instant::now());
    }
}
struct Running(Arc<World>, Arc<Log>);
impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
        let log = &self.1;
        let mut m = self.0.model.lock().unwrap();
        if let Some(k) = log.key {
            m.keys.get_mut(k).unwrap().running -= 1;
        }
        // A job that returned reports its classification: an overload with a
        // `retry_after` pauses the job's own scope (its key's, or the pool's for an
        // unkeyed job) if that scope's adaptive limit counts it, from now (the
        // worker reports the job's end after this) for at most `max_pause`.
        let Some(Outcome::Overload {
            retry_after: Some(d),
        }) = log.classify
        else {
            return;
        };
        if !log.returned.load(SeqCst) {
            return;
        }
        let now = Instant::now();
        // The pool pauses only for an unkeyed job; a keyed one pauses its key.
        if log.key.is_none()
            && let Some(a) = m.pool_adaptive
        {
            let d = d.min(a.max_pause);
            if !d.is_zero() {
                m.pool_ra.push((now, now + d));
                Tally::bump(&self.0.tally.retry_after_pauses);
            }
        }
        if let Some(k) = log.key
            && let Some(a) = m.adaptive(k)
            && log.key_tracked.load(SeqCst)
        {
            let d = d.min(a.max_pause);
            if !d.is_zero() {
                m.keys.get_mut(k).unwrap().ra.push((now, now + d));
                Tally::bump(&self.0.tally.retry_after_pauses);
            }
        }
    }
}

fn job(
    world: &Arc<World>,
    log: &Arc<Log>,
    kind: Kind,
) -> impl Future<Output = u32> + Send + 'static {
    world.alive.fetch_add(1, SeqCst);
    let alive = Alive(world.clone(), log.clone());
    let (world, log) = (world.clone(), log.clone());
    async move {
        let _alive = alive;
        let id = log.id as u32;
        let before = world.running.fetch_add(1, SeqCst);
        let target = world.target.load(SeqCst);
        if before >= target {
            world.violate(format!(
                "job {id} started with {before} running and {target} workers"
            ));
        }
        world.on_start(&log, before);
        let _running = Running(world.clone(), log.clone());
        *log.started.lock().unwrap() = Some(Instant::now());
        match kind {
            Kind::Finish(ms) => {
                tokio::time::sleep(millis(ms)).await;
                log.returned.store(true, SeqCst);
                id
            }
            Kind::Hang => std::future::pending().await,
            Kind::Panic(ms) => {
                tokio::time::sleep(millis(ms)).await;
                panic!("{PANIC_MSG}")
            }
        }
    }
}

struct JobRec {
    kind: Kind,
    via: Via,
    run_timeout: Option<u8>,
    queue_timeout: Option<u8>,
    log: Arc<Log>,
    /// Some(result) once observed.
    result: Option<Result<u32, JobError>>,
    /// The submission was refused (the job came back in the error).
    refused: bool,
    /// A `run` dropped before we could tell whether the pool had accepted it.
    unknown: bool,
}

type Waiter = JoinHandle<(usize, Option<Result<u32, JobError>>, bool)>;

struct Run {
    world: Arc<World>,
    pool: Pool,
    setup: Setup,
    jobs: Vec<JobRec>,
    handles: Vec<(usize, JobHandle<u32>)>,
    waiters: Vec<(usize, Waiter)>,
    aborted: bool,
    closed: bool,
}

fn with_opts<'p, F>(
    pool: &'p Pool,
    fut: F,
    job: &Log,
    run_timeout: Option<u8>,
) -> taskgate::JobBuilder<'p, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut b = pool.job(fut).priority(job.priority);
    if let Some(t) = run_timeout {
        b = b.timeout(millis(t));
    }
    if let Some(t) = job.queue_timeout {
        b = b.queue_timeout(t);
    }
    if let Some(k) = job.key {
        b = b.key(k);
    }
    if let Some(o) = job.classify {
        b = b.classify(move |_| o);
    }
    b
}

impl Run {
    fn observe(&mut self, idx: usize, r: Result<u32, JobError>) {
        assert!(self.jobs[idx].result.is_none(), "job {idx} resolved twice");
        if r == Err(JobError::Closed) {
            // `run` on a closed pool: never accepted.
            self.jobs[idx].refused = true;
        }
        self.jobs[idx].result = Some(r);
    }

    fn request_cancel(&self, idx: usize) {
        let log = &self.jobs[idx].log;
        log.cancel_requested.store(true, SeqCst);
        if log.started().is_none() {
            log.cancelled_unstarted.store(true, SeqCst);
        }
    }

    async fn apply(&mut self, op: &Op) {
        match op.clone() {
            Op::Job {
                kind,
                via,
                run_timeout,
                queue_timeout,
                key,
                priority,
                classify,
            } => {
                let idx = self.jobs.len();
                let log = Arc::new(Log {
                    id: idx,
                    key,
                    priority,
                    queue_timeout: queue_timeout.map(millis),
                    created: Instant::now(),
                    acceptance_seen: !matches!(via, Via::Run),
                    accepted: Mutex::new(None),
                    submit_done: AtomicBool::new(false),
                    fit_at_call: AtomicBool::new(false),
                    started: Mutex::new(None),
                    dropped: Mutex::new(None),
                    cancelled_unstarted: AtomicBool::new(false),
                    cancel_requested: AtomicBool::new(false),
                    classify,
                    returned: AtomicBool::new(false),
                    key_ticket: AtomicBool::new(false),
                    key_tracked: AtomicBool::new(false),
                });
                self.world.model.lock().unwrap().logs.push(log.clone());
                let fut = job(&self.world, &log, kind.clone());
                self.jobs.push(JobRec {
                    kind,
                    via: via.clone(),
                    run_timeout,
                    queue_timeout,
                    log: log.clone(),
                    result: None,
                    refused: false,
                    unknown: false,
                });
                let pool = self.pool.clone();
                match via {
                    Via::TrySubmit => {
                        // Nothing runs between this look and the call: it must take
                        // the job exactly when there is room in the pool's queue and
                        // in the job's key's.
                        let room = self.room_for(key);
                        let submitted = with_opts(&pool, fut, &log, run_timeout).try_submit();
                        log.submit_done.store(true, SeqCst);
                        match submitted {
                            Ok(h) => {
                                assert!(
                                    room.is_ok() || skip("key_state"),
                                    "try_submit of job {idx} (key {key:?}) accepted with {}",
                                    room.unwrap_err()
                                );
                                log.accept();
                                self.handles.push((idx, h));
                            }
                            Err(e) => {
                                assert!(e.is_full() || (e.is_closed() && self.closed));
                                assert!(
                                    e.is_closed() || room.is_err() || skip("key_state"),
                                    "try_submit of job {idx} (key {key:?}) refused as full with room in the pool and its key"
                                );
                                self.jobs[idx].refused = true;
                            }
                        }
                    }
                    Via::Submit | Via::SubmitTimeout(_) => {
                        // Waiting for space would block this sequence: wait in a task.
                        let wait = match via {
                            Via::SubmitTimeout(n) => Some(millis(n)),
                            _ => None,
                        };
                        self.waiters.push((
                            idx,
                            tokio::spawn(async move {
                                let b = with_opts(&pool, fut, &log, run_timeout);
                                let submitted = match wait {
                                    Some(w) => b.submit_timeout(w).await,
                                    None => b.submit().await,
                                };
                                log.submit_done.store(true, SeqCst);
                                match submitted {
                                    Ok(h) => {
                                        log.accept();
                                        (idx, Some(h.await), false)
                                    }
                                    Err(_) => (idx, None, true),
                                }
                            }),
                        ));
                    }
                    Via::Run => {
                        // No waiter holds a grant between steps, so a job that fits
                        // now is accepted by the call.
                        log.fit_at_call
                            .store(!self.closed && self.room_for(key).is_ok(), SeqCst);
                        self.waiters.push((
                            idx,
                            tokio::spawn(async move {
                                let r = with_opts(&pool, fut, &log, run_timeout).run().await;
                                (idx, Some(r), false)
                            }),
                        ));
                    }
                    Via::Spawn => {
                        self.waiters.push((
                            idx,
                            tokio::spawn(async move {
                                let submitted =
                                    with_opts(&pool, fut, &log, run_timeout).spawn().await;
                                log.submit_done.store(true, SeqCst);
                                if submitted.is_ok() {
                                    log.accept();
                                }
                                (idx, None, submitted.is_err())
                            }),
                        ));
                    }
                }
            }
            Op::DropHandle(i) | Op::Cancel(i) | Op::Detach(i) if !self.handles.is_empty() => {
                let pos = i % self.handles.len();
                let (idx, h) = self.handles.swap_remove(pos);
                match op {
                    Op::DropHandle(_) => {
                        if !h.is_finished() {
                            self.request_cancel(idx);
                        }
                        drop(h);
                    }
                    Op::Cancel(_) => {
                        if !h.is_finished() {
                            self.request_cancel(idx);
                        }
                        h.cancel();
                        let r = h.await;
                        self.observe(idx, r);
                    }
                    _ => h.detach(),
                }
            }
            Op::DropRun(i) => {
                let runs: Vec<usize> = (0..self.waiters.len())
                    .filter(|&w| matches!(self.jobs[self.waiters[w].0].via, Via::Run))
                    .collect();
                if !runs.is_empty() {
                    let (idx, w) = self.waiters.swap_remove(runs[i % runs.len()]);
                    if !w.is_finished() {
                        self.request_cancel(idx);
                        self.jobs[idx].unknown = true;
                        w.abort();
                    }
                    if let Ok((_, Some(r), _)) = w.await {
                        self.observe(idx, r);
                    }
                }
            }
            Op::Advance(ms) => tokio::time::advance(millis(ms)).await,
            Op::Resize(n) => {
                self.set_target(n as usize);
                self.pool.resize(n as usize);
            }
            Op::Close => {
                self.closed = true;
                self.pool.close();
            }
            Op::ShutdownTimeout(ms) => {
                self.closed = true;
                // Time passes on its own here: no step boundary to judge priorities by.
                self.world.model.lock().unwrap().check_priority = false;
                // Waits (in paused time) for the drain, then cancels the rest.
                self.set_target(self.world.target.load(SeqCst).max(1));
                self.pool.resize(self.world.target.load(SeqCst));
                let report = self.shutdown_timeout(millis(ms)).await;
                if report.cancelled > 0 {
                    self.aborted = true;
                }
                let s = self.pool.stats();
                assert_eq!((s.busy, s.queued), (0, 0), "after shutdown_timeout: {s:?}");
            }
            Op::Abort => {
                self.closed = true;
                self.aborted = true;
                self.pool.abort();
            }
            Op::SetKeyLimits(k, limits, adaptive) => {
                // An adaptive limit is checked against the pool's size now. (No job
                // starts during the call: the model may follow it.)
                let workers = self.pool.stats().workers;
                let r = self.pool.set_key_limits(k, limits.clone());
                let valid = adaptive.is_none_or(|a| a.valid_for(workers));
                match r {
                    Ok(()) => {
                        assert!(
                            valid,
                            "set_key_limits({k}, {limits:?}) accepted with {workers} workers"
                        );
                        self.world
                            .model
                            .lock()
                            .unwrap()
                            .set_override(k, Some((limits, adaptive)));
                    }
                    Err(e) => assert!(
                        !valid && matches!(e, taskgate::LimitError::InvalidAdaptive(_)),
                        "set_key_limits({k}, {limits:?}) refused with {workers} workers: {e}"
                    ),
                }
                if adaptive.is_some() {
                    self.world.adaptive.store(true, SeqCst);
                }
            }
            Op::ClearKeyLimits(k) => {
                self.world.model.lock().unwrap().set_override(k, None);
                self.pool.clear_key_limits(k);
            }
            Op::PauseFor(ms) => {
                if ms > 0 {
                    let end = Instant::now() + millis(ms);
                    let mut m = self.world.model.lock().unwrap();
                    m.pool_pause = Some(m.pool_pause.map_or(end, |p| p.max(end)));
                }
                self.pool.pause_for(millis(ms));
            }
            Op::PauseKeyFor(k, ms) => {
                if ms > 0 {
                    let end = Instant::now() + millis(ms);
                    let mut m = self.world.model.lock().unwrap();
                    let km = m.keys.get_mut(k).unwrap();
                    km.pause = Some(km.pause.map_or(end, |p| p.max(end)));
                }
                self.pool.pause_key_for(k, millis(ms));
            }
            _ => {}
        }
    }

    /// `shutdown_timeout`, checked: it runs to its deadline only if some job was
    /// still there at the deadline (running, or queued behind a limit), to be
    /// cancelled. Otherwise it waited for nothing: a worker or the timer task did
    /// not see that the closed pool had drained.
    async fn shutdown_timeout(&self, grace: Duration) -> taskgate::ShutdownReport {
        let deadline = Instant::now() + grace;
        let report = self.pool.shutdown_timeout(grace).await;
        if Instant::now() >= deadline && !grace.is_zero() && !skip("shutdown") {
            let last = self.jobs.iter().filter_map(|j| j.log.dropped()).max();
            let m = self.world.model.lock().unwrap();
            assert!(
                last.is_some_and(|t| t >= deadline),
                "shutdown_timeout({grace:?}) ran to its deadline at {:?}, but the last job ended at {:?}: {report:?}, {:?}",
                m.at(deadline),
                last.map(|t| m.at(t)),
                self.pool.stats()
            );
        }
        report
    }

    /// The pool's size as passed to `resize`.
    fn set_target(&self, n: usize) {
        self.world.target.store(n, SeqCst);
        let mut m = self.world.model.lock().unwrap();
        m.targets = (m.targets.0.min(n), m.targets.1.max(n));
    }

    /// `Stats::limit`: the pool's size, or with an adaptive limit at most that and
    /// within the limit's `[min, max]` (the size caps both).
    fn check_pool_limit(&self, op: &Op, s: &Stats) {
        let target = self.world.target.load(SeqCst);
        let m = self.world.model.lock().unwrap();
        match m.pool_adaptive {
            None => assert_eq!(s.limit, target, "Stats::limit after {op:?}: {s:?}"),
            Some(a) if !skip("adaptive") => {
                let top = a.top(self.setup.workers);
                assert!(
                    s.limit <= target && s.limit <= top && s.limit >= a.min.min(target),
                    "Stats::limit after {op:?} with {target} workers and {a:?} (max {top}): {s:?}"
                );
            }
            Some(_) => {}
        }
    }

    /// Whether a job of `key` would fit now: `Err` says where it would not.
    fn room_for(&self, key: Option<&'static str>) -> Result<(), String> {
        let s = self.pool.stats();
        let target = self.world.target.load(SeqCst);
        if s.queued >= self.setup.capacity + target.saturating_sub(s.busy) {
            return Err(format!(
                "the pool's queue full (capacity {}, {target} workers): {s:?}",
                self.setup.capacity
            ));
        }
        let Some(k) = key else { return Ok(()) };
        // A key's own queue capacity, or its default share of the pool's (half).
        let cap = Some(self.key_capacity(k));
        let ks = self.pool.key_stats(&Key::from(k));
        match (cap, ks) {
            (Some(cap), Some(ks)) if ks.queued >= cap => {
                Err(format!("key {k}'s queue full (capacity {cap}): {ks:?}"))
            }
            _ => Ok(()),
        }
    }

    fn check_step(&self, op: &Op) {
        let outranked = std::mem::take(&mut self.world.model.lock().unwrap().outranked);
        for (q, at, v) in outranked {
            if self.jobs[q].log.started() != Some(at) {
                self.world.violate(v);
            }
        }
        if let Some(v) = self.world.violation.lock().unwrap().as_ref() {
            panic!("limit broken after {op:?}: {v}");
        }
        let s = self.pool.stats();
        assert!(s.busy <= s.workers, "after {op:?}: {s:?}");
        self.check_pool_limit(op, &s);
        assert_eq!(
            s.busy,
            self.world.running.load(SeqCst),
            "busy must match the job futures running, after {op:?}: {s:?}"
        );
        if matches!(op, Op::Abort | Op::ShutdownTimeout(_)) {
            assert_eq!(
                self.world.alive.load(SeqCst),
                0,
                "job futures alive after {op:?}: {s:?}"
            );
        }
        let keys = self.check_keys(op, &s);
        self.check_liveness(op, &s, &keys);
        self.check_submitters(op, &s, &keys);
    }

    /// Each key's stats against the model: its running jobs, its queued jobs (within
    /// what the model can tell), its pause; state kept exactly while the key holds
    /// something (a job queued or running, a pause, a rate debt).
    fn check_keys(&self, op: &Op, s: &Stats) -> Vec<(&'static str, Option<KeyStats>)> {
        let now = Instant::now();
        let m = self.world.model.lock().unwrap();
        let tally = &self.world.tally;
        let mut out = Vec::new();
        let (mut known_unkeyed, mut possible_unkeyed) = (0, 0);
        for j in &self.jobs {
            let l = &j.log;
            if l.started().is_some() || l.dropped().is_some() {
                continue;
            }
            if !l.acceptance_seen {
                if l.key.is_none() {
                    possible_unkeyed += 1;
                }
            } else if l.accepted().is_some() && l.key.is_none() {
                known_unkeyed += 1;
            }
        }
        for k in KEYS {
            let ks = self.pool.key_stats(&Key::from(k));
            out.push((k, ks));
            if skip("key_state") {
                continue;
            }
            let km = &m.keys[k];
            let (mut known, mut possible) = (0, 0);
            let (mut ended, mut done) = ([0u64; 4], 0u64);
            for j in self.jobs.iter().filter(|j| j.log.key == Some(k)) {
                let l = &j.log;
                match (l.started(), l.dropped()) {
                    (None, None) if !l.acceptance_seen => possible += 1,
                    (None, None) if l.accepted().is_some() => known += 1,
                    (_, Some(_)) => {
                        // Upper bounds for each of the key's counters.
                        done += 1;
                        let ran = l.started().is_some();
                        ended[0] += u64::from(ran && matches!(j.kind, Kind::Finish(_)));
                        ended[1] += u64::from(ran && matches!(j.kind, Kind::Panic(_)));
                        ended[2] += u64::from(ran && j.run_timeout.is_some());
                        ended[3] += u64::from(!ran && j.queue_timeout.is_some());
                    }
                    _ => {}
                }
            }
            let pause = m.key_pause_until(k).filter(|&p| p > now);
            let debt = km.tat.filter(|&t| t > now);
            let adaptive = m.adaptive(k);
            let tracked = m.tracked_running(k);
            let (must_keep, may_keep) = m.learned_until(k);
            let must_keep = must_keep.filter(|&t| t > now);
            let may_keep = may_keep.filter(|&t| t > now);
            if let Some(ks) = ks.filter(|ks| ks.queued > 0) {
                let lim = m.limits(k);
                if pause.is_some() {
                    Tally::bump(&tally.held_by_pause);
                } else if lim.concurrency.is_some_and(|c| km.running >= c) {
                    Tally::bump(&tally.held_by_cap);
                } else if adaptive.is_some() && ks.limit.is_some_and(|l| tracked >= l) {
                    Tally::bump(&tally.held_by_adaptive);
                } else if lim.rate.is_some_and(|r| !conforms(r, km.tat, now)) {
                    Tally::bump(&tally.held_by_rate);
                }
            }
            let at = |t: Option<Instant>| t.map(|t| m.at(t));
            let what = format!(
                "key {k} at {:?} after {op:?}: model running {} ({tracked} under its adaptive limit {adaptive:?}), queued {known} (+{possible} maybe), pause until {:?}, rate debt until {:?}, learned state kept until {:?} (at most {:?}); pool: {ks:?}",
                m.at(now),
                km.running,
                at(pause),
                at(debt),
                at(must_keep),
                at(may_keep),
            );
            match ks {
                None => assert!(
                    km.running == 0
                        && known == 0
                        && pause.is_none()
                        && (debt.is_none() || m.rate_unsure)
                        && must_keep.is_none(),
                    "key state missing: {what}"
                ),
                Some(ks) => {
                    // Its limit: the adaptive one within its `[min, max]` (capped at
                    // the pool's size when the key's state was made), under its cap.
                    let cap = m.limits(k).concurrency;
                    match adaptive {
                        None => assert_eq!(ks.limit, cap, "KeyStats::limit: {what}"),
                        Some(a) if !skip("adaptive") => {
                            let (lo, hi) = m.targets;
                            let top = a.top(hi);
                            let bottom = a.min.min(a.top(lo)).min(cap.unwrap_or(usize::MAX));
                            assert!(
                                ks.limit.is_some_and(|l| {
                                    bottom <= l && l <= top && cap.is_none_or(|c| l <= c)
                                }),
                                "KeyStats::limit outside [{bottom}, {top}] for {a:?}, cap {cap:?}: {what}"
                            );
                        }
                        Some(_) => {}
                    }
                    assert_eq!(ks.busy, km.running, "key busy: {what}");
                    assert!(
                        known <= ks.queued && ks.queued <= known + possible,
                        "key queued: {what}"
                    );
                    assert_eq!(ks.paused_until, pause, "key pause: {what}");
                    assert!(
                        ks.busy > 0
                            || ks.queued > 0
                            || pause.is_some()
                            || debt.is_some()
                            || may_keep.is_some()
                            || m.rate_unsure
                            || skip("key_gc"),
                        "key state kept with nothing to hold: {what}"
                    );
                    assert!(
                        ks.completed <= ended[0]
                            && ks.panicked <= ended[1]
                            && ks.timed_out <= ended[2]
                            && ks.queue_timed_out <= ended[3]
                            && ks.completed
                                + ks.panicked
                                + ks.timed_out
                                + ks.queue_timed_out
                                + ks.cancelled
                                <= done,
                        "key counters above the jobs that ended ({ended:?} of {done}): {what}"
                    );
                }
            }
        }
        if s.queued > 0 && m.pool_pause_until().is_some_and(|p| p > now) {
            Tally::bump(&tally.held_by_pause);
        } else if s.queued > 0
            && m.pool_adaptive.is_some()
            && self.world.running.load(SeqCst) >= s.limit
        {
            Tally::bump(&tally.held_by_adaptive);
        } else if s.queued > 0 && m.pool_rate.is_some_and(|r| !conforms(r, m.pool_tat, now)) {
            Tally::bump(&tally.held_by_rate);
        }
        if !skip("key_state") {
            let with_state = out.iter().filter(|(_, ks)| ks.is_some()).count();
            assert_eq!(s.keys, with_state, "stats.keys after {op:?}: {s:?}");
            let keyed: usize = out
                .iter()
                .filter_map(|(_, ks)| ks.map(|ks| ks.queued))
                .sum();
            let unkeyed = s.queued.checked_sub(keyed);
            let pool_pause = m.pool_pause_until().filter(|&p| p > now);
            assert_eq!(
                self.pool.paused_until(),
                pool_pause,
                "paused_until after {op:?}: the model says {:?}",
                pool_pause.map(|p| m.at(p))
            );
            assert!(
                unkeyed
                    .is_some_and(|u| known_unkeyed <= u && u <= known_unkeyed + possible_unkeyed),
                "unkeyed queued after {op:?}: {known_unkeyed} (+{possible_unkeyed} maybe), keys {keyed}: {s:?}"
            );
        }
        out
    }

    /// Nothing waits that could start: with a worker free and the pool neither
    /// paused nor over its rate, no lane holds a queued job its limits allow now.
    fn check_liveness(&self, op: &Op, s: &Stats, keys: &[(&'static str, Option<KeyStats>)]) {
        let target = self.world.target.load(SeqCst);
        if self.aborted || skip("liveness") || s.busy >= target || s.queued == 0 {
            return;
        }
        let now = Instant::now();
        let m = self.world.model.lock().unwrap();
        // At its adaptive limit, the pool starts nothing. (Every job's end has been
        // reported by now: the limit counts the jobs running.)
        if m.pool_adaptive.is_some() && s.busy >= s.limit {
            return;
        }
        if m.pool_pause_until().is_some_and(|p| p > now)
            || m.pool_rate
                .is_some_and(|r| m.rate_unsure || !conforms(r, m.pool_tat, now))
        {
            return;
        }
        let keyed: usize = keys
            .iter()
            .filter_map(|(_, ks)| ks.map(|ks| ks.queued))
            .sum();
        assert!(
            s.queued <= keyed,
            "an unkeyed job waits with {} of {target} workers busy at {:?}, after {op:?}: {s:?}",
            s.busy,
            m.at(now)
        );
        for &(k, ks) in keys {
            let Some(ks) = ks.filter(|ks| ks.queued > 0) else {
                continue;
            };
            let km = &m.keys[k];
            let lim = m.limits(k);
            let free = m.key_pause_until(k).is_none_or(|p| p <= now)
                && lim.concurrency.is_none_or(|c| km.running < c)
                && (m.adaptive(k).is_none() || ks.limit.is_some_and(|l| m.tracked_running(k) < l))
                && lim
                    .rate
                    .is_none_or(|r| !m.rate_unsure && conforms(r, km.tat, now));
            assert!(
                !free,
                "a job of key {k} waits with {} of {target} workers busy at {:?} and its limits {lim:?} allow it, after {op:?}: {ks:?}, {s:?}",
                s.busy,
                m.at(now)
            );
        }
    }

    /// No submitter waits for queue space while its job would fit (in the pool's
    /// queue and its key's), or after the pool closed.
    fn check_submitters(&self, op: &Op, s: &Stats, keys: &[(&'static str, Option<KeyStats>)]) {
        if skip("submit_liveness") {
            return;
        }
        let target = self.world.target.load(SeqCst);
        let pool_room = s.queued < self.setup.capacity + target.saturating_sub(s.busy);
        let m = self.world.model.lock().unwrap();
        for (idx, w) in &self.waiters {
            let log = &self.jobs[*idx].log;
            if w.is_finished() || !log.acceptance_seen || log.submit_done.load(SeqCst) {
                continue;
            }
            let key_room = log.key.is_none_or(|k| {
                let cap = m
                    .limits(k)
                    .queue_capacity
                    .unwrap_or(((self.setup.capacity + target) / 2).max(1));
                let ks = keys.iter().find(|(kk, _)| *kk == k).unwrap().1;
                ks.is_none_or(|ks| ks.queued < cap)
            });
            assert!(
                !(self.closed || (pool_room && key_room)),
                "job {idx} (key {:?}) still waits to be accepted at {:?} after {op:?}: closed {}, room in the pool {pool_room}, room for its key {key_room}; {s:?}",
                log.key,
                m.at(Instant::now()),
                self.closed,
            );
        }
    }

    fn check_job(&self, idx: usize) {
        let j = &self.jobs[idx];
        let started = j.log.started();
        let dropped = j.log.dropped();
        assert!(dropped.is_some(), "job {idx}: its future is still alive");
        if j.log.cancelled_unstarted.load(SeqCst) {
            // Cancelled while queued: it must never have started... unless the
            // cancel lost a race it cannot lose on one thread.
            assert!(
                started.is_none(),
                "job {idx} started after a cancel while queued"
            );
        }
        let Some(r) = &j.result else { return };
        match r {
            Ok(v) => {
                assert!(
                    matches!(j.kind, Kind::Finish(_)),
                    "job {idx}: Ok from {:?}",
                    j.kind
                );
                assert_eq!(*v as usize, idx);
            }
            Err(JobError::Panicked(m)) => {
                assert!(
                    matches!(j.kind, Kind::Panic(_)),
                    "job {idx}: panic from {:?}",
                    j.kind
                );
                assert_eq!(m, PANIC_MSG);
            }
            Err(JobError::TimedOut) => {
                let t = j.run_timeout.expect("timed out without a run timeout");
                let (s, d) = (
                    started.expect("timed out but never started"),
                    dropped.unwrap(),
                );
                assert!(
                    d - s >= millis(t),
                    "job {idx} timed out before its deadline"
                );
            }
            Err(JobError::QueueTimedOut) => {
                assert!(j.queue_timeout.is_some(), "queue timeout without one set");
                assert!(
                    started.is_none(),
                    "job {idx} queue-timed-out after starting"
                );
            }
            Err(JobError::Cancelled) => assert!(
                self.aborted || j.log.cancel_requested.load(SeqCst),
                "job {idx} cancelled without a cancel or an abort"
            ),
            Err(JobError::Closed) => assert!(self.closed && matches!(j.via, Via::Run)),
            Err(e) => panic!("job {idx}: unexpected {e}"),
        }
    }

    /// How many jobs key `k` may have queued: its own queue capacity, or by
    /// default half of the pool's places, queue and workers
    /// (`Builder::key_queue_share`'s default).
    fn key_capacity(&self, k: &str) -> usize {
        let target = self.world.target.load(SeqCst);
        let m = self.world.model.lock().unwrap();
        m.limits(k)
            .queue_capacity
            .unwrap_or(((self.setup.capacity + target) / 2).max(1))
    }

    /// Over every window of recorded starts, at most
    /// `burst + floor((span + LATENESS) / interval)` starts (the bound in [`Rate`]'s
    /// docs; the exact `burst + floor(span / interval)` is checked by the fixed
    /// tests in `tests/rate.rs`): the pool's rate over all starts, and each key's
    /// rate over the starts of one epoch (a stretch in which its rate did not change).
    fn check_rate_windows(&self) {
        if skip("rate") {
            return;
        }
        let m = self.world.model.lock().unwrap();
        let mut series: Vec<(String, Rate, Vec<&Start>)> = Vec::new();
        if let Some(r) = m.pool_rate {
            series.push(("the pool".into(), r, m.starts.iter().collect()));
        }
        for k in KEYS {
            let mut epochs: BTreeMap<u32, (Rate, Vec<&Start>)> = BTreeMap::new();
            for st in m.starts.iter().filter(|st| st.key == Some(k)) {
                if let Some(r) = st.key_rate {
                    epochs.entry(st.epoch).or_insert((r, Vec::new())).1.push(st);
                }
            }
            for (e, (r, starts)) in epochs {
                series.push((format!("key {k} (epoch {e})"), r, starts));
            }
        }
        for (what, r, starts) in series {
            let interval = r.interval().as_nanos();
            let burst = u128::from(r.burst_size());
            for i in 0..starts.len() {
                for j in i..starts.len() {
                    let n = (j - i + 1) as u128;
                    let span = starts[j].at.saturating_duration_since(starts[i].at);
                    let bound = burst + (span + LATENESS).as_nanos() / interval;
                    assert!(
                        n <= bound,
                        "{what} with {r:?}: {n} starts from {:?} (job {}) to {:?} (job {}), at most {bound} allowed",
                        m.at(starts[i].at),
                        starts[i].job,
                        m.at(starts[j].at),
                        starts[j].job,
                    );
                }
            }
        }
    }
}

/// What the random sequences did, summed (the fixed sequences below do not count).
struct Totals {
    sequences: AtomicU64,
    steps: AtomicU64,
    jobs: AtomicU64,
    tally: Tally,
}

static TOTALS: Totals = Totals {
    sequences: AtomicU64::new(0),
    steps: AtomicU64::new(0),
    jobs: AtomicU64::new(0),
    tally: Tally {
        starts: AtomicU64::new(0),
        priority_choices: AtomicU64::new(0),
        held_by_rate: AtomicU64::new(0),
        held_by_pause: AtomicU64::new(0),
        held_by_cap: AtomicU64::new(0),
        adaptive_starts: AtomicU64::new(0),
        held_by_adaptive: AtomicU64::new(0),
        retry_after_pauses: AtomicU64::new(0),
    },
};

fn quiet_model_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .payload()
                .downcast_ref::<&str>()
                .is_none_or(|m| *m != PANIC_MSG)
                && info
                    .payload()
                    .downcast_ref::<String>()
                    .is_none_or(|m| m != PANIC_MSG)
            {
                default(info);
            }
        }));
    });
}

/// Runs one sequence and checks it; `counted` adds it to `TOTALS`.
fn run_sequence(setup: Setup, ops: Vec<Op>, counted: bool) {
    quiet_model_panics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let baseline = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let now = Instant::now();
        let world = Arc::new(World {
            pool: Mutex::new(None),
            adaptive: AtomicBool::new(setup.adaptive.is_some() || setup.key_adaptive.is_some()),
            running: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            target: AtomicUsize::new(setup.workers),
            violation: Mutex::new(None),
            tally: Tally::default(),
            model: Mutex::new(Model {
                base: now,
                pool_adaptive: setup.adaptive,
                pool_ra: Vec::new(),
                default_adaptive: setup.key_adaptive,
                targets: (setup.workers, setup.workers),
                defaults: setup.key_limits.clone(),
                pool_rate: setup.rate,
                pool_tat: None,
                rate_unsure: false,
                pool_pause: None,
                aging: setup.aging.map_or(Duration::from_secs(1), millis),
                keys: KEYS
                    .iter()
                    .map(|&k| {
                        let km = KeyModel {
                            adaptive_since: setup.key_adaptive.map(|_| now),
                            ..KeyModel::default()
                        };
                        (k, km)
                    })
                    .collect(),
                logs: Vec::new(),
                starts: Vec::new(),
                settled_at: now,
                check_priority: true,
                outranked: Vec::new(),
            }),
        });
        let mut builder = Pool::builder()
            .workers(setup.workers)
            .queue_capacity(setup.capacity)
            .key_limits(setup.key_limits.clone());
        if let Some(r) = setup.rate {
            builder = builder.rate_limit(r);
        }
        if let Some(a) = setup.aging {
            builder = builder.priority_aging(millis(a));
        }
        if let Some(a) = setup.adaptive {
            builder = builder.adaptive(a.build());
        }
        let pool = builder.build().unwrap();
        *world.pool.lock().unwrap() = Some(pool.clone());
        let mut run = Run {
            world: world.clone(),
            pool,
            setup,
            jobs: Vec::new(),
            handles: Vec::new(),
            waiters: Vec::new(),
            aborted: false,
            closed: false,
        };
        for op in &ops {
            run.apply(op).await;
            settle().await;
            world.model.lock().unwrap().settled_at = Instant::now();
            if std::env::var("MODEL_TRACE").is_ok() {
                let keys: Vec<_> = KEYS
                    .iter()
                    .filter_map(|&k| run.pool.key_stats(&Key::from(k)).map(|ks| (k, ks)))
                    .collect();
                let s = run.pool.stats();
                eprintln!(
                    "{op:?}: busy {} queued {} keys {keys:?}; waiting {:?}",
                    s.busy,
                    s.queued,
                    run.jobs
                        .iter()
                        .filter(|j| j.log.acceptance_seen && !j.log.submit_done.load(SeqCst))
                        .map(|j| j.log.id)
                        .collect::<Vec<_>>()
                );
            }
            run.check_step(op);
            if counted {
                TOTALS.steps.fetch_add(1, SeqCst);
            }
        }
        // Wind down: make sure something can run, drain for a while, cancel the rest.
        world.model.lock().unwrap().check_priority = false;
        let target = world.target.load(SeqCst).max(1);
        world.target.store(target, SeqCst);
        run.pool.resize(target);
        run.closed = true;
        if run
            .shutdown_timeout(Duration::from_millis(200))
            .await
            .cancelled
            > 0
        {
            run.aborted = true;
        }
        for (idx, h) in std::mem::take(&mut run.handles) {
            let r = h.await;
            run.observe(idx, r);
        }
        for (idx, w) in std::mem::take(&mut run.waiters) {
            let (i, r, refused) = w.await.expect("waiter task");
            assert_eq!(i, idx);
            if let Some(r) = r {
                run.observe(idx, r);
            }
            run.jobs[idx].refused |= refused;
        }
        settle().await;
        // The jobs are gone: nothing reads the pool's limits any more.
        world.pool.lock().unwrap().take();
        if let Some(v) = world.violation.lock().unwrap().as_ref() {
            panic!("limit broken in the wind-down: {v}");
        }
        for idx in 0..run.jobs.len() {
            run.check_job(idx);
        }
        run.check_rate_windows();
        let s = run.pool.stats();
        assert_eq!(
            world.alive.load(SeqCst),
            0,
            "job futures still alive: {s:?}"
        );
        assert_eq!(s.busy + s.queued, 0, "{s:?}");
        assert_eq!(s.submitted, s.ended(), "stats identity: {s:?}");
        let accepted = run.jobs.iter().filter(|j| !j.refused && !j.unknown).count() as u64;
        let unknown = run.jobs.iter().filter(|j| j.unknown).count() as u64;
        assert!(
            s.submitted >= accepted && s.submitted <= accepted + unknown,
            "every accepted job counted once: {accepted} accepted (+{unknown} unknown), {s:?}"
        );
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            baseline,
            "worker tasks left on the runtime"
        );
        // Once every pause and rate debt has run out, with nothing queued or running
        // (closed, aborted or not), no key keeps state.
        tokio::time::advance(Duration::from_secs(3600)).await;
        settle().await;
        if !skip("keys_end") {
            let s = run.pool.stats();
            let left: Vec<_> = KEYS
                .iter()
                .filter_map(|&k| run.pool.key_stats(&Key::from(k)).map(|ks| (k, ks)))
                .collect();
            assert!(
                s.keys == 0 && left.is_empty(),
                "keys kept state an hour after the end: {left:?}, {s:?}"
            );
        }
        if counted {
            TOTALS.jobs.fetch_add(run.jobs.len() as u64, SeqCst);
            TOTALS.sequences.fetch_add(1, SeqCst);
            world.tally.add_to(&TOTALS.tally);
        }
    });
}

#[test]
fn random_operation_sequences_keep_every_guarantee() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("tests/model.regressions"),
        )),
        ..ProptestConfig::default()
    });
    let strategy = (setup(), proptest::collection::vec(op(), 1..80));
    // A failure panics with the shrunk, minimal sequence of operations.
    let result = runner.run(&strategy, |(setup, ops)| {
        run_sequence(setup, ops, true);
        Ok(())
    });
    let (sequences, steps, jobs) = (
        TOTALS.sequences.load(SeqCst),
        TOTALS.steps.load(SeqCst),
        TOTALS.jobs.load(SeqCst),
    );
    // The counts quoted in RELIABILITY.md. Printed on a failure too, when they count
    // the sequences that passed every check, shrinking candidates included.
    let t = &TOTALS.tally;
    eprintln!("model: {sequences} sequences, {steps} steps, {jobs} jobs");
    eprintln!(
        "model: {} starts, {} with a job of another priority queued; step ends with a queued job held by a rate {}, a pause {}, a key cap {}",
        t.starts.load(SeqCst),
        t.priority_choices.load(SeqCst),
        t.held_by_rate.load(SeqCst),
        t.held_by_pause.load(SeqCst),
        t.held_by_cap.load(SeqCst),
    );
    eprintln!(
        "model: {} starts under an adaptive limit; step ends with a queued job held by an adaptive limit {}; retry_after pauses {}",
        t.adaptive_starts.load(SeqCst),
        t.held_by_adaptive.load(SeqCst),
        t.retry_after_pauses.load(SeqCst),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        sequences >= u64::from(cases) && steps >= sequences && jobs > 0,
        "every generated sequence must run to its final checks"
    );
}

/// A job that finishes after 1 ms, with no timeouts.
fn quick(via: Via, key: Option<&'static str>, priority: Priority) -> Op {
    Op::Job {
        kind: Kind::Finish(1),
        via,
        run_timeout: None,
        queue_timeout: None,
        key,
        priority,
        classify: None,
    }
}

fn plain(workers: usize, capacity: usize) -> Setup {
    Setup {
        workers,
        capacity,
        rate: None,
        key_limits: KeyLimits::default(),
        aging: None,
        adaptive: None,
        key_adaptive: None,
    }
}

/// The minimal sequences of earlier failures, kept as they are (the seeds in
/// `tests/model.regressions` stand for other sequences once the generator changes).
#[test]
fn earlier_failures_stay_fixed() {
    let normal = Priority::Normal;
    // Both were mistakes in the model, not the pool.
    run_sequence(
        plain(1, 0),
        vec![Op::Close, quick(Via::Run, None, normal)],
        false,
    );
    run_sequence(
        plain(1, 0),
        vec![
            quick(Via::Submit, None, normal),
            quick(Via::Submit, None, normal),
            quick(Via::Run, None, normal),
            Op::Advance(1),
        ],
        false,
    );
}

/// Aging does not reorder lanes of one priority: they take turns. (Key `a`'s lane
/// comes back into the ring behind the unkeyed lane when its pause ends at 8 ms; at
/// 12 ms the worker frees up; job 1 has waited 12 ms of an aging of 10, job 2 only
/// 7, and job 2's lane is first in the ring.) An earlier version lifted job 1,
/// which let one key's aged backlog hold up every other key for the aging time.
#[test]
fn aging_does_not_reorder_lanes_of_one_priority() {
    let normal = Priority::Normal;
    run_sequence(
        Setup {
            aging: Some(10),
            ..plain(1, 3)
        },
        vec![
            Op::Job {
                kind: Kind::Finish(12),
                via: Via::TrySubmit,
                run_timeout: None,
                queue_timeout: None,
                key: None,
                priority: normal,
                classify: None,
            },
            Op::PauseKeyFor("a", 8),
            quick(Via::TrySubmit, Some("a"), normal),
            Op::Advance(5),
            quick(Via::TrySubmit, None, normal),
            Op::Advance(4),
            Op::Advance(3),
        ],
        false,
    );
}

/// A key's state goes once it holds nothing, also on a closed pool: here a pause
/// that ends after the close.
#[test]
fn a_closed_pool_drops_a_key_whose_pause_ended() {
    run_sequence(
        plain(1, 0),
        vec![
            Op::PauseKeyFor("a", 19),
            Op::Advance(13),
            Op::Close,
            Op::Advance(6),
        ],
        false,
    );
}

/// The same for a rate debt that runs out after the close.
#[test]
fn a_closed_pool_drops_a_key_whose_rate_debt_ran_out() {
    run_sequence(
        Setup {
            key_limits: KeyLimits::default().rate(Rate::new(1, Duration::from_millis(50))),
            ..plain(1, 0)
        },
        vec![
            quick(Via::TrySubmit, Some("a"), Priority::Normal),
            Op::Close,
            // The job ends at 10 ms, owing its key's rate until 50.
            Op::Advance(10),
            Op::Advance(50),
        ],
        false,
    );
}

/// And after an abort.
#[test]
fn an_aborted_pool_drops_a_key_whose_pause_ended() {
    run_sequence(
        plain(1, 0),
        vec![Op::PauseKeyFor("a", 10), Op::Abort, Op::Advance(20)],
        false,
    );
}

/// A key's adaptive limit removed and set again while a job of the key runs: that
/// job's end must not count against the new limit's jobs. A real pool bug, found
/// while extending the model (issue 14): `Lane::apply` makes a new `AdaptiveLimit`
/// for the `(None, Some)` case, whose `Controller::new` numbers its tickets from 0
/// again, so job 0's old ticket 0 retires job 1's slot in the new limit (ticket 0
/// too) when job 0 ends at 10 ms; with `in_flight` at 0, job 2 starts beside job 1
/// although the limit is 1 (the `adaptive` check).
#[test]
fn a_key_limit_set_again_ignores_the_tickets_of_the_old_one() {
    let cfg = AdaptiveCfg {
        min: 1,
        initial: Some(1),
        max: None,
        decrease: 0.9,
        max_pause: Duration::ZERO,
    };
    let job = |ms: u8| Op::Job {
        kind: Kind::Finish(ms),
        via: Via::TrySubmit,
        run_timeout: None,
        queue_timeout: None,
        key: Some("a"),
        priority: Priority::Normal,
        classify: None,
    };
    run_sequence(
        Setup {
            key_limits: KeyLimits::default().adaptive(cfg.build()),
            key_adaptive: Some(cfg),
            ..plain(3, 3)
        },
        vec![
            job(10),
            Op::SetKeyLimits("a", KeyLimits::default(), None),
            Op::SetKeyLimits("a", KeyLimits::default().adaptive(cfg.build()), Some(cfg)),
            job(19),
            job(5),
            Op::Advance(10),
            Op::Advance(10),
        ],
        false,
    );
}
