//! The admission seam: [`Limiter`], which every limit on job starts implements,
//! and [`Gate`], the set of limiters a lane (a key, or the unkeyed jobs) or the pool
//! puts in front of its jobs.
//!
//! The scheduler asks a lane's gate and the pool's gate whether the lane's next job
//! may start (`check`, which takes nothing), and only when both say yes does it take
//! from each (`acquire`). When the job ends, its lane's gate hears the outcome
//! (`release`). So a job counts once against every limit, and a job that never
//! starts counts against none.
//!
//! The limiters: [`ConcurrencyLimit`] (`concurrency.rs`), [`Pause`] (`pause.rs`),
//! the GCRA rate, [`Gcra`] (`rate.rs`, with the public [`Rate`]), and the
//! adaptive limit, [`AdaptiveLimit`] (`adaptive.rs`, with the public [`Adaptive`]
//! and [`Outcome`]; its law in `controller.rs`). The public
//! per-key settings, [`Key`], [`KeyLimits`] and [`KeyStats`], are in `key.rs`.
//!
//! # Adding a limiter
//!
//! A new kind of limit is a new file here with
//! a type that implements [`Limiter`], and one more field in [`Gate`]
//! (`gate.rs`), checked in `Gate::check` and taken in `Gate::acquire`: no change
//! to the scheduler's `pick`. Rules: `check` must not block (it runs under the
//! pool lock), and takes nothing; `acquire` takes. A limit whose state lives
//! outside the process (Redis, for the `redis` feature) implements [`Remote`]
//! instead (`remote.rs`): it answers from units leased earlier, and a background
//! request wakes its lane through the timer path.
//! What the adaptive limit (`adaptive.rs`, `controller.rs`) added, a new limiter
//! can use: `Gate::acquire` may hand out a ticket the worker keeps until the job
//! ends; `Gate::release` gets the job's end time and [`Outcome`] ([`Done`]) and may
//! pause the gate; and a limiter that answers [`Admit::OnRelease`] adds its "below
//! the limit again" test to `Gate::has_room`, which the scheduler asks when a job
//! ends (`Sched::finish`, `sched/lanes.rs`). The public setting goes into
//! [`KeyLimits`] (per key) or the `Builder` (the pool), and from there into
//! `Gate::new`.

mod adaptive;
mod concurrency;
mod controller;
mod gate;
mod key;
mod pause;
mod rate;
mod remote;

pub(crate) use adaptive::AdaptiveLimit;
pub use adaptive::{Adaptive, AdaptiveError, Outcome};
pub(crate) use controller::Ticket;
pub(crate) use gate::Done;

pub(crate) use concurrency::ConcurrencyLimit;
pub(crate) use gate::Gate;
pub use key::{Key, KeyLimits, KeyStats};
pub(crate) use pause::Pause;
pub use rate::Rate;
pub(crate) use rate::{Gcra, after, far_future};
pub(crate) use remote::{Remote, RemoteSpec, Rouse, Wake};

use tokio::time::Instant;

use crate::stats::Ending;

/// The scheduler's clock for one decision: read at most once, and only if a
/// limiter needs it, so that jobs without time-based limits never read it.
#[derive(Default)]
pub(crate) struct Clock {
    now: Option<Instant>,
    /// A recent reading the caller had anyway (a finishing worker's end time),
    /// good enough where a few microseconds do not matter: an adaptive limit's
    /// start times. Never used for a rate or a pause, which must not see a time
    /// earlier than now (a rate would charge from it and admit early).
    hint: Option<Instant>,
}

impl Clock {
    pub(crate) fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    pub(crate) fn at(now: Instant) -> Clock {
        Clock {
            now: Some(now),
            hint: None,
        }
    }

    /// A clock that may answer [`approx`](Clock::approx) with `hint`.
    pub(crate) fn with_hint(hint: Option<Instant>) -> Clock {
        Clock { now: None, hint }
    }

    /// Now, or the hint if the clock was not read: for start times that
    /// measure run times, not for limits that admit by time.
    pub(crate) fn approx(&mut self) -> Instant {
        match (self.now, self.hint) {
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => self.now(),
        }
    }

    /// The time read so far, if anything needed it.
    pub(crate) fn read(&self) -> Option<Instant> {
        self.now
    }
}

/// What a limiter says about starting one more job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Now,
    /// Not before this time; the scheduler sets a timer.
    At(Instant),
    /// Not until a running job is released.
    OnRelease,
}

/// One limit on job starts.
pub(crate) trait Limiter {
    /// Whether one more job may start, without taking anything.
    fn check(&self, clock: &mut Clock) -> Admit;
    /// A job passed every limiter and starts now: count it. `queued_since` is
    /// when the job was accepted, given where a rate applies (a rate charges a
    /// job that was already waiting when its start became due from then, up to
    /// the timer's granularity: see `Gcra::take`).
    fn acquire(&mut self, clock: &mut Clock, queued_since: Option<Instant>);
    /// A job this limiter counted has ended with `outcome`.
    fn release(&mut self, outcome: Ending);
    /// Until when the limiter holds state that would be lost if its lane were
    /// removed (a pause, a rate debt); `None` if it holds none past now.
    fn holds_until(&self, clock: &mut Clock) -> Option<Instant>;
}
