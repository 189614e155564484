//! The adaptive limit's control law: [`Controller`], the learned limit of one
//! downstream (the pool's, or one key's).
//!
//! [`Adaptive`](super::Adaptive) is the configuration, checked into a
//! [`Resolved`](super::adaptive::Resolved) one, and [`Controller`] is the learned
//! state. The controller is a pure state machine: it reads no clock and
//! spawns nothing. The caller passes the time of every event as a [`Nanos`], an
//! offset from an origin of its choosing (for example `Instant::now() - origin`);
//! times must not go backwards.
//!
//! # The control law
//!
//! Time is cut into *windows* of about one smoothed run time (an EWMA, weight 0.4,
//! of each window's mean run time of successful jobs). At the end of a window the
//! limit
//!
//! * doubles (slow start, until the first decrease) or grows by one when the
//!   jobs in flight reached the limit during the window, no job was overloaded,
//!   no running job has taken more than three smoothed run times (a hang), and
//!   the run time is not a slow-down;
//! * is cut when the run time is a *slow-down*: the smaller of the smoothed run
//!   time and this window's mean is more than 1.3 times the baseline (the lowest
//!   smoothed run time), while at least half the limit was in flight. The cut is
//!   proportional, `limit * min(decrease, 1.3 * baseline / run time)`, never below
//!   half. If slow-down cuts have halved the limit since the run time peaked and
//!   jobs that started after the old limit's jobs had all ended are still as slow,
//!   the slow-down is not ours (the downstream got slower): the baseline moves up.
//!
//! An [`Outcome::Overload`] cuts the limit at once, by the decrease factor, and when
//! the last window shows that the downstream completed far fewer jobs than the
//! limit allows, straight down to what it completed (1.25 times the completed
//! concurrency, rate times run time). Overloads of jobs that started before the
//! last decrease belong to the burst that caused it and do not cut again. The
//! first hung job (see above) that started after the last decrease counts as an
//! overload. A `retry_after` pauses starts until `now + min(retry_after,
//! max_pause)`; later ones extend the pause, never shorten it.
//!
//! The limit always stays in `[min, max]`. Decisions are taken in
//! [`Controller::on_release`] only.
//!
//! Every call is O(1) amortized and allocates nothing in steady state.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::adaptive::{Outcome, Resolved};

/// A point in time: the offset from an origin the caller chooses.
pub(crate) type Nanos = Duration;

/// A running job, from [`Controller::on_start`]; hand it back to
/// [`Controller::on_release`] exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Ticket(u64);

/// What a release changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Release {
    /// The limit changed (up or down).
    pub(crate) limit_changed: bool,
    /// This release set or extended a pause: start nothing before this time.
    pub(crate) pause_until: Option<Nanos>,
}

/// EWMA weight of one window's mean run time (Vector's default).
const ALPHA: f64 = 0.4;
/// A job running longer than this many smoothed run times is hung.
const HANG_FACTOR: f64 = 3.0;
/// A run time above this many times its baseline is a slow-down.
const SLOWDOWN_FACTOR: f64 = 1.3;
/// When slow-down cuts in a row have halved the limit since the run time peaked and
/// it is still above this fraction of the peak, the baseline is stale.
const STALE_GAIN: f64 = 0.9;
/// Headroom over the completed concurrency when an overload cuts deep.
const HEADROOM: f64 = 1.25;
/// The longest hold on growth after cuts that came with a `retry_after`, in
/// windows.
const MAX_HOLD: u32 = 64;
/// The shortest window.
const MIN_WINDOW: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug)]
struct Slot {
    start: Nanos,
    live: bool,
}

/// The learned limit of one downstream. See the [module docs](self) for the law.
#[derive(Clone, Debug)]
pub(crate) struct Controller {
    cfg: Resolved,
    limit: usize,
    in_flight: usize,
    /// Start times of the jobs from ticket `head` on; released ones are flagged
    /// and popped once they reach the front, so the front is the oldest running job.
    ring: VecDeque<Slot>,
    /// Jobs still running whose slots were moved out of the ring's front because
    /// the ring had grown far past the jobs in flight (one long job would
    /// otherwise keep every later slot alive): ticket to start. Few, and only
    /// the longest-running.
    evicted: BTreeMap<u64, Nanos>,
    head: u64,
    next: u64,
    /// Overloads of tickets below this belong to the burst already answered.
    cut_seq: u64,
    /// Tickets from this one on started after every job of the old limit had
    /// ended (`u64::MAX` until then).
    settled_seq: u64,
    slow_start: bool,
    /// Windows left in which the limit does not grow: after a cut that came with
    /// a `retry_after`, a probe above the limit costs a pause, so probing backs
    /// off. Each such cut doubles `backoff` (up to `MAX_HOLD`) and holds growth
    /// for that many windows; twice as many clean windows halve it again.
    hold: u32,
    backoff: u32,
    clean: u32,
    pause_until: Option<Nanos>,
    /// When the current pause began (it may have been extended since).
    pause_from: Nanos,
    // Estimates, in seconds. `avg == 0` until the first success.
    avg: f64,
    base: f64,
    /// The highest run time level during the slow-down cuts in a row, and the
    /// limit then (limit 0: the last window was not slow).
    slow_ref_limit: usize,
    slow_ref: f64,
    /// Completions per second in the last window (negative: none measured yet).
    last_rate: f64,
    // The current window.
    win_start: Nanos,
    win_end: Nanos,
    win_sum: f64,
    win_n: u32,
    win_done: u32,
    win_peak: usize,
    win_overload: bool,
    win_settled_sum: f64,
    win_settled_n: u32,
}

impl Controller {
    /// A controller starting at `cfg.initial()`.
    pub(crate) fn new(cfg: Resolved) -> Self {
        Controller {
            cfg,
            limit: cfg.initial,
            in_flight: 0,
            ring: VecDeque::new(),
            evicted: BTreeMap::new(),
            head: 0,
            next: 0,
            cut_seq: 0,
            settled_seq: 0,
            slow_start: true,
            hold: 0,
            backoff: 0,
            clean: 0,
            pause_until: None,
            pause_from: Duration::ZERO,
            avg: 0.0,
            base: 0.0,
            slow_ref_limit: 0,
            slow_ref: 0.0,
            last_rate: -1.0,
            win_start: Duration::ZERO,
            win_end: Duration::MAX,
            win_sum: 0.0,
            win_n: 0,
            win_done: 0,
            win_peak: 0,
            win_overload: false,
            win_settled_sum: 0.0,
            win_settled_n: 0,
        }
    }

    /// Starts over with `cfg`, as a new controller whose tickets come after every
    /// ticket given so far: those still out are ignored when they come back.
    pub(crate) fn restart(&mut self, cfg: Resolved) {
        *self = Controller::starting_at(cfg, self.next);
    }

    /// A new controller whose first ticket is `first`: tickets below it (given by
    /// a controller this one replaces) are ignored when they come back.
    pub(crate) fn starting_at(cfg: Resolved, first: u64) -> Self {
        let mut c = Controller::new(cfg);
        c.head = first;
        c.next = first;
        c.cut_seq = first;
        c.settled_seq = first;
        c
    }

    /// The number the next ticket will have.
    pub(crate) fn next_ticket(&self) -> u64 {
        self.next
    }

    /// The current limit on jobs in flight.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The smoothed run time, once a job has succeeded.
    pub(crate) fn smoothed_run_time(&self) -> Option<Duration> {
        (self.avg > 0.0).then(|| Duration::from_secs_f64(self.avg))
    }

    /// Jobs started and not yet released.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Until when starts are paused by a `retry_after`, if ever set (may be past).
    #[cfg(test)]
    pub(crate) fn paused_until(&self) -> Option<Nanos> {
        self.pause_until
    }

    /// Whether a job may start at `now`: below the limit and not paused.
    #[cfg(test)]
    pub(crate) fn admits(&self, now: Nanos) -> bool {
        self.in_flight < self.limit && self.pause_until.is_none_or(|p| now >= p)
    }

    /// The start time of the oldest job still running.
    #[cfg(test)]
    pub(crate) fn oldest_start(&self) -> Option<Nanos> {
        self.oldest_running()
    }

    /// The start of the oldest job still running: a long one moved out of the
    /// ring, or the ring's front (released slots never stay at the front).
    fn oldest_running(&self) -> Option<Nanos> {
        let evicted = self.evicted.values().min().copied();
        let front = self.ring.front().map(|s| s.start);
        match (evicted, front) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A job starts at `now`. The caller checks that fewer than `limit` are in
    /// flight first; the controller counts the job either way.
    pub(crate) fn on_start(&mut self, now: Nanos) -> Ticket {
        let t = Ticket(self.next);
        self.next += 1;
        self.ring.push_back(Slot {
            start: now,
            live: true,
        });
        if self.ring.len() > 2 * self.in_flight + 128 {
            self.compact();
        }
        self.in_flight += 1;
        if self.in_flight > self.win_peak {
            self.win_peak = self.in_flight;
        }
        t
    }

    /// The job of `ticket` ended at `now` with `outcome`. A ticket that is unknown
    /// or already released changes nothing.
    pub(crate) fn on_release(&mut self, ticket: Ticket, now: Nanos, outcome: Outcome) -> Release {
        let Some(start) = self.retire(ticket) else {
            return Release::default();
        };
        let before = self.limit;
        let mut pause_until = None;
        match outcome {
            Outcome::Success => {
                let rtt = now.saturating_sub(start).as_secs_f64();
                self.win_done += 1;
                self.win_sum += rtt;
                self.win_n += 1;
                if ticket.0 >= self.settled_seq {
                    self.win_settled_sum += rtt;
                    self.win_settled_n += 1;
                }
                if self.avg <= 0.0 && rtt > 0.0 {
                    self.avg = rtt;
                    self.base = rtt;
                    self.reset_window(now);
                }
            }
            Outcome::Ignore => self.win_done += 1,
            Outcome::Overload { retry_after } => {
                self.win_overload = true;
                if let Some(after) = retry_after {
                    pause_until = self.extend_pause(now, after);
                }
                if ticket.0 >= self.cut_seq {
                    self.cut(now, true);
                    if retry_after.is_some() {
                        // Each probe that ends in a pause makes the next one wait
                        // twice as long.
                        self.backoff = (self.backoff * 2).clamp(1, MAX_HOLD);
                        self.hold = self.backoff;
                    }
                }
            }
        }
        if now >= self.win_end {
            self.end_window(now);
        }
        Release {
            limit_changed: self.limit != before,
            pause_until,
        }
    }

    fn retire(&mut self, ticket: Ticket) -> Option<Nanos> {
        let start = match ticket.0.checked_sub(self.head) {
            Some(idx) => {
                let slot = self.ring.get_mut(usize::try_from(idx).ok()?)?;
                if !slot.live {
                    return None;
                }
                slot.live = false;
                slot.start
            }
            // Before the ring: a long job moved out of it, or unknown.
            None => self.evicted.remove(&ticket.0)?,
        };
        self.in_flight -= 1;
        while self.ring.front().is_some_and(|s| !s.live) {
            self.ring.pop_front();
            self.head += 1;
        }
        if self.settled_seq == u64::MAX
            && self.head >= self.cut_seq
            && self
                .evicted
                .keys()
                .next()
                .is_none_or(|&t| t >= self.cut_seq)
        {
            self.settled_seq = self.next;
        }
        Some(start)
    }

    /// Keeps the ring within a few times the jobs in flight: a job that runs for
    /// much longer than the jobs after it would otherwise keep all their released
    /// slots behind it. Its slot moves to `evicted`, and the released ones after
    /// it go.
    fn compact(&mut self) {
        let keep = 2 * self.in_flight + 64;
        while self.ring.len() > keep {
            let Some(slot) = self.ring.pop_front() else {
                break;
            };
            if slot.live {
                self.evicted.insert(self.head, slot.start);
            }
            self.head += 1;
            while self.ring.front().is_some_and(|s| !s.live) {
                self.ring.pop_front();
                self.head += 1;
            }
        }
    }

    fn extend_pause(&mut self, now: Nanos, after: Duration) -> Option<Nanos> {
        let after = after.min(self.cfg.max_pause);
        if after.is_zero() {
            return None;
        }
        let until = now.saturating_add(after);
        if self.pause_until.is_some_and(|p| p >= until) {
            return None;
        }
        if self.pause_until.is_none_or(|p| p < now) {
            self.pause_from = now;
        }
        self.pause_until = Some(until);
        Some(until)
    }

    fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(self.cfg.min).min(self.cfg.max);
    }

    /// A multiplicative decrease by the configured factor.
    fn cut(&mut self, now: Nanos, deep: bool) {
        self.cut_by(now, self.cfg.decrease, deep);
    }

    /// Multiplies the limit by `factor` (< 1); `deep` lets it go down to the
    /// completed concurrency of the last window.
    fn cut_by(&mut self, now: Nanos, factor: f64, deep: bool) {
        // `as` saturates; the product is below `limit`, so this always goes down by one or more.
        let mut next = (self.limit as f64 * factor) as usize;
        if deep && self.last_rate >= 0.0 {
            let done = (self.last_rate * self.avg * HEADROOM).ceil() as usize;
            next = next.min(done);
        }
        self.set_limit(next);
        self.slow_start = false;
        self.cut_seq = self.next;
        self.settled_seq = if self.head >= self.cut_seq {
            self.next
        } else {
            u64::MAX
        };
        self.reset_window(now);
    }

    fn reset_window(&mut self, now: Nanos) {
        self.win_start = now;
        self.win_end = if self.avg > 0.0 {
            now.saturating_add(Duration::from_secs_f64(self.avg).max(MIN_WINDOW))
        } else {
            Duration::MAX
        };
        self.win_sum = 0.0;
        self.win_n = 0;
        self.win_done = 0;
        self.win_peak = self.in_flight;
        self.win_overload = false;
        self.win_settled_sum = 0.0;
        self.win_settled_n = 0;
    }

    fn end_window(&mut self, now: Nanos) {
        // No latency cut while fewer than half the limit were in flight.
        let busy = self.win_peak * 2 >= self.limit;
        let reached = self.win_peak >= self.limit;
        let fresh = self.win_n > 0;
        let mean = if fresh {
            self.win_sum / f64::from(self.win_n)
        } else {
            0.0
        };
        if fresh {
            self.avg += ALPHA * (mean - self.avg);
            self.base = self.base.min(self.avg);
        }
        // The completion rate counts only the time starts were allowed: a window
        // spent mostly paused by a `retry_after` completed little because nothing
        // started, not because the downstream is slow (taken as its capacity, it
        // cut the limit to 1 or 2 after every pause).
        let paused = self.pause_until.map_or(Duration::ZERO, |until| {
            until
                .min(now)
                .saturating_sub(self.pause_from.max(self.win_start))
        });
        let elapsed = now
            .saturating_sub(self.win_start)
            .saturating_sub(paused)
            .as_secs_f64();
        if elapsed > 0.0 && paused < now.saturating_sub(self.win_start) / 2 {
            self.last_rate = f64::from(self.win_done) / elapsed;
        }
        // The run time level: the smoothed one, unless the jobs started since the
        // last cut already show better (the average lags behind a cut).
        let level = self.avg.min(mean);
        let slow = fresh && level > SLOWDOWN_FACTOR * self.base;
        let hung = self
            .oldest_running()
            .is_some_and(|start| now.saturating_sub(start).as_secs_f64() > HANG_FACTOR * self.avg);
        if !slow {
            self.slow_ref_limit = 0;
        }

        if self.win_overload {
            // Already cut when the overload came (once per burst): no growth.
        } else if busy && slow {
            // In proportion to the slow-down, by at least `decrease`, at most half.
            let factor = self
                .cfg
                .decrease
                .min(SLOWDOWN_FACTOR * self.base / level)
                .max(0.5);
            if self.slow_ref_limit == 0 || level > self.slow_ref {
                self.slow_ref_limit = self.limit;
                self.slow_ref = level;
            }
            if self.limit <= self.cfg.min
                || (self.limit.saturating_mul(2) <= self.slow_ref_limit
                    && self.win_settled_n > 0
                    && self.win_settled_sum / f64::from(self.win_settled_n)
                        >= STALE_GAIN * self.slow_ref)
            {
                // Halving the limit did not bring the run time down, for jobs that
                // started after every job of the old limit had ended: the
                // slow-down is not ours, the downstream got slower. Learn its new
                // baseline.
                self.base = level;
                self.slow_ref_limit = 0;
                self.reset_window(now);
                return;
            }
            self.cut_by(now, factor, false);
            return;
        } else if hung {
            // A hang blocks growth, and the first one since the last cut counts as
            // an overload: the oldest running job (the hung one) started after
            // the cut. Its ticket is the first evicted one if it was moved out
            // of the ring, else the ring's head.
            let oldest = self.evicted.keys().next().copied().unwrap_or(self.head);
            if oldest >= self.cut_seq {
                self.cut(now, true);
                return;
            }
        } else if reached {
            if self.hold > 0 {
                self.hold -= 1;
            } else {
                let next = if self.slow_start {
                    self.limit.saturating_mul(2)
                } else {
                    self.limit.saturating_add(1)
                };
                self.set_limit(next);
            }
        }
        if self.win_overload {
            self.clean = 0;
        } else if self.backoff > 0 {
            self.clean += 1;
            if self.clean >= 2 * self.backoff {
                self.backoff /= 2;
                self.clean = 0;
            }
        }
        self.reset_window(now);
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
