//! The queue and the scheduler state shared by a pool's handles and workers: [`Inner`].
//!
//! One `std::sync::Mutex<State>` guards the queue, the worker accounting and the
//! counters that producers update. It is held only for a few field updates and a
//! `VecDeque` push or pop, never across an `.await`, a user callback, a wake, or a
//! drop of user data. Per job it is taken twice: once to push, and once by the
//! worker to finish its previous job and pop this one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::error::JobError;
use crate::job::{Canceller, Job, Pos, Task, Work};
use crate::limit::{Adaptive, Rate};
use crate::limit::{Clock, Done};
use crate::limit::{Key, KeyLimits};
use crate::limit::{RemoteSpec, Wake};
use crate::sched::Priority;
use crate::sched::{Gone, Queued, RemoteEnv, Sched, Tickets};
use crate::sched::{Ticket, Waiters, Wakers};

use super::state::{Action, State, TimerAct};
use crate::stats::Shard;
use crate::stats::Telemetry;

/// The job a worker holds a slot for, reported back when it ends.
#[derive(Clone, Copy)]
pub(crate) struct Held {
    pub(crate) lane: u32,
    /// It counts against its limits (it was not found cancelled as it was taken).
    pub(crate) counted: bool,
    /// Its adaptive limits' tickets, if any counted it.
    pub(crate) tickets: Tickets,
}

/// Where a new job goes: its key's lane and its priority.
pub(crate) struct Place<'a> {
    pub(crate) key: Option<&'a Key>,
    pub(crate) priority: Priority,
}

/// The scheduling settings a pool is built with.
pub(crate) struct SchedConfig {
    pub(crate) rate: Option<Rate>,
    /// The pool's adaptive limit (`Builder::adaptive`), checked.
    pub(crate) adaptive: Option<Adaptive>,
    pub(crate) key_limits: KeyLimits,
    /// The pool's remote limits (shared through Redis).
    pub(crate) remote: Vec<Arc<dyn RemoteSpec>>,
    /// The share of the pool's places a key may hold (`Builder::key_queue_share`).
    pub(crate) key_share: f64,
    pub(crate) aging: std::time::Duration,
}

/// How a push that finds the queue full is accounted.
pub(crate) enum Waiting<'a> {
    /// A `try_submit`: count a rejection.
    No,
    /// An internal probe that will wait next (the stream adapters): count nothing.
    Probe,
    /// A waiting submitter, with its registration in the waiters, if it has one
    /// (made on the first refusal), and the waker to wake it by when a place is
    /// granted to it.
    Yes(&'a mut Option<Ticket>, &'a Waker),
}

/// Why a push was refused.
pub(crate) enum Refused {
    Full,
    Closed,
}

/// Aligns its content to two cache lines (the unit the adjacent-line prefetcher
/// pulls in), so that it shares no line with its neighbours.
#[repr(align(128))]
pub(super) struct Padded<T>(T);

/// The pool itself, shared by every [`Pool`](crate::Pool) clone, every
/// [`JobHandle`](crate::JobHandle) and every worker.
pub(crate) struct Inner {
    /// On its own cache lines: producers and workers bounce this line between
    /// cores on every job, and the read-mostly fields below should not ride along.
    pub(super) state: Padded<Mutex<State>>,
    /// Progress towards drained (a worker exited, the queue shrank while closed),
    /// for `shutdown`.
    pub(super) drained: Notify,
    /// A new earliest timer (queue deadline, end of a rate wait or pause), or close,
    /// for the timer task.
    pub(super) reaper: Notify,
    pub(crate) aborted: AtomicBool,
    pub(super) closed: AtomicBool,
    pub(super) rt: Handle,
    pub(super) tracker: TaskTracker,
    pub(crate) name: Arc<str>,
    pub(crate) capacity: usize,
    pub(crate) job_timeout: Option<Duration>,
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) telemetry: Telemetry,
    /// How to spawn a worker or the timer task, from the pool layer.
    spawner: Spawner,
    /// The `Arc` this lives in, for a spawn asked for through `&self` (a cancel
    /// from a handle that starts the timer task).
    this: Weak<Inner>,
}

/// How the core starts the tasks that run it. The scheduler decides when a worker
/// or the timer task must be spawned; the pool layer supplies how
/// (`worker::spawn`, `worker::spawn_reaper`) when it builds the pool, so that the
/// scheduler does not import the worker. Called only where a task is spawned,
/// never per job.
#[derive(Clone, Copy)]
pub(crate) struct Spawner {
    /// Spawns worker `idx`'s loop, with its stats shard.
    pub(crate) worker: fn(&Arc<Inner>, &TaskTracker, &Handle, usize, Arc<Shard>),
    /// Spawns the pool's timer task.
    pub(crate) reaper: fn(&Arc<Inner>, &TaskTracker, &Handle),
}

impl Inner {
    /// The pool's core, in the `Arc` that its handles and workers share. Only the
    /// builder calls this, with the settings it has validated.
    #[allow(clippy::too_many_arguments)] // One call site, all fields of `Builder`.
    pub(crate) fn new(
        rt: Handle,
        name: Arc<str>,
        workers: usize,
        capacity: usize,
        job_timeout: Option<Duration>,
        queue_timeout: Option<Duration>,
        sched: SchedConfig,
        spawner: Spawner,
    ) -> Arc<Self> {
        let telemetry = Telemetry::new(&name);
        telemetry.gauges(workers, 0, 0);
        Arc::new_cyclic(|this| Inner {
            state: Padded(Mutex::new(State {
                sched: Sched::new(
                    RemoteEnv {
                        wake: this.clone() as Weak<dyn Wake>,
                        rt: rt.clone(),
                    },
                    &sched.remote,
                    sched.rate,
                    sched.adaptive,
                    sched.key_limits,
                    sched.key_share,
                    capacity,
                    workers,
                    sched.aging,
                ),
                next_id: 1,
                closed: false,
                target: workers,
                live: 0,
                busy: 0,
                searching: 0,
                idle: Vec::new(),
                slots: Vec::new(),
                free_slots: Vec::new(),
                waiters: Waiters::default(),
                reaper_running: false,
                submitted: 0,
                rejected: 0,
                cancelled: 0,
                aborted: 0,
                queue_timed_out: 0,
                retired: Shard::new(),
            })),
            drained: Notify::new(),
            reaper: Notify::new(),
            aborted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            rt,
            tracker: TaskTracker::new(),
            telemetry,
            name,
            capacity,
            job_timeout,
            queue_timeout,
            spawner,
            this: this.clone(),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held, but a poisoned lock must not turn
        // one failure into a cascade.
        self.state.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The runtime the pool's tasks run on.
    pub(crate) fn runtime(&self) -> &Handle {
        &self.rt
    }

    /// A token that `shutdown` waits for like a worker task, held by a worker
    /// while it runs on a blocking thread.
    pub(crate) fn tracker_token(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.tracker.token()
    }

    /// Spawns a worker's loop as a task (a worker coming back from a blocking
    /// thread).
    pub(crate) fn spawn_worker_task<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn_on(fut, &self.rt);
    }

    pub(super) fn act(self: &Arc<Self>, action: Action) {
        match action {
            Action::Wake(w) => w.wake(),
            Action::Spawn(idx, shard) => {
                (self.spawner.worker)(self, &self.tracker, &self.rt, idx, shard)
            }
        }
    }

    pub(super) fn timer(&self, act: TimerAct) {
        match act {
            TimerAct::None => {}
            TimerAct::Spawn => {
                // Always there: `&self` is borrowed from a live `Arc`.
                if let Some(this) = self.this.upgrade() {
                    (self.spawner.reaper)(&this, &self.tracker, &self.rt)
                }
            }
            TimerAct::Notify => self.reaper.notify_one(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Accepts a task into the queue, or hands it back.
    ///
    /// A waiting submitter (`Waiting::Yes`) is registered in the waiters, with its
    /// waker, on its first `Full`, and uses the place granted to it, if it holds
    /// one: a refusal then gives the grant back, and the place goes to the next
    /// waiter. One that is registered and holds no grant yet is refused `Full`
    /// at once, its waker kept: it keeps its turn, and is woken when a place is
    /// granted to it. So a wait costs two acquisitions of the lock, the refusal
    /// and the push that uses the grant.
    pub(crate) fn push<W, T>(
        self: &Arc<Self>,
        task: Box<Task<W, T>>,
        deadline: Option<Instant>,
        waiting: Waiting<'_>,
        place: &Place<'_>,
        now: Instant,
    ) -> Result<Pos, (Refused, Box<Task<W, T>>)>
    where
        W: Work<Output = T>,
        T: Send + 'static,
    {
        let mut st = self.lock();
        if st.closed {
            return Err((Refused::Closed, task));
        }
        // A waiter steps out of line (giving back any grant) while its push is
        // decided, so that its own reserved place counts as free for it.
        let ticket = match &waiting {
            Waiting::Yes(t, w) => {
                if let Some(t) = **t
                    && st.waiters.keep_waiting(t, w)
                {
                    // Not its turn yet (a wake that was not a grant).
                    return Err((Refused::Full, task));
                }
                **t
            }
            _ => None,
        };
        let gave_back = ticket.is_some_and(|t| st.waiters.step_out(t));
        let pool_room = st.has_space(self.capacity);
        let lane = if pool_room {
            st.sched.lane_for(place.key)
        } else {
            None
        };
        let Some(lane) = lane else {
            // Refused by its key's queue, not the pool's.
            let key_full = pool_room;
            match waiting {
                Waiting::Yes(t, w) => {
                    let t = match *t {
                        Some(t) => {
                            st.waiters.step_in(t, key_full);
                            t
                        }
                        None => *t.insert(st.waiters.register(place.key, key_full)),
                    };
                    st.waiters.keep_waiting(t, w);
                    if key_full && let Some(k) = place.key {
                        st.sched.watch(k);
                    }
                }
                Waiting::No => st.count_rejected(&self.telemetry),
                Waiting::Probe => {}
            }
            let mut wakers = Wakers::default();
            if gave_back {
                st.grant(self.capacity, &mut wakers);
            }
            drop(st);
            wakers.wake();
            return Err((Refused::Full, task));
        };
        if let Some(t) = ticket {
            st.waiters.leave(t);
            if let Waiting::Yes(slot, _) = waiting {
                *slot = None;
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        st.submitted += 1;
        let prio = place.priority.index() as u8;
        st.sched.push(
            Queued {
                id,
                deadline,
                job: Box::into_pin(task as Box<dyn Job>),
                lane,
                prio,
                claim: None,
                inline: W::INLINE,
            },
            now,
        );
        let mut wakers = Wakers::default();
        if !st.waiters.is_empty() {
            if st.waiters.granted > 0 && st.take_back(self.capacity, place.key) {
                st.grant(self.capacity, &mut wakers);
            }
            if let Some(k) = place.key
                && st.waiters.blocked(k)
            {
                // A key whose waiters are held by its queue must report when it frees.
                st.sched.watch(k);
            }
        }
        let action = st.dispatch();
        let timer = st.timer_act();
        st.publish(&self.telemetry);
        drop(st);
        if let Some(a) = action {
            self.act(a);
        }
        self.timer(timer);
        wakers.wake();
        Ok(Pos { id, lane, prio })
    }

    /// A waiting submitter's call ended (dropped, timed out, closed out): it
    /// leaves the line, and a place granted to it goes to the next waiter.
    pub(crate) fn leave(&self, ticket: Ticket) {
        let mut wakers = Wakers::default();
        {
            let mut st = self.lock();
            if st.waiters.leave(ticket) {
                st.grant(self.capacity, &mut wakers);
            }
        }
        wakers.wake();
    }

    pub(crate) fn count_rejected(&self) {
        self.lock().count_rejected(&self.telemetry);
    }

    /// Called by a worker to finish its previous job (`held`, which ended as
    /// `done` says) and take the next one. `Ready(None)` tells the worker to exit;
    /// it has been unregistered. `read_at` comes in as the time the previous job
    /// ended, if the worker has run nothing since (a hint for start times, see
    /// [`Clock::approx`]), and goes out as the time the scheduler read, if it read
    /// one (the next job's start).
    pub(crate) fn next_job(
        self: &Arc<Self>,
        idx: usize,
        held: &mut Option<Held>,
        done: &Done,
        read_at: &mut Option<Instant>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Queued>> {
        let mut st = self.lock();
        let mut clock = Clock::default();
        if let Some(h) = held.take() {
            // The worker read the clock when the job ended, just before this (and
            // has run nothing since): close enough to now for an adaptive limit's
            // start time, which saves it a read. A rate or a pause still reads.
            clock = Clock::with_hint(*read_at);
            st.busy -= 1;
            st.sched
                .finish(h.lane, h.counted, done, h.tickets, &mut clock);
        }
        let result = self.next_locked(&mut st, idx, held, &mut clock, cx);
        // If a limit read the clock to decide, the worker reuses that reading as
        // the job's start time instead of reading it again.
        *read_at = clock.read();
        // A finish frees a place in the pool's queue (which counts free workers,
        // so a take alone frees none there), and taking a keyed job frees one in
        // its key's queue: either may be granted to a waiting submitter.
        let mut wakers = Wakers::default();
        st.grant(self.capacity, &mut wakers);
        st.publish(&self.telemetry);
        // A worker that took a job hands the search on if more are queued; one
        // that exits may leave a start slot that an idle worker can use.
        let action = if result.is_ready() {
            st.dispatch()
        } else {
            None
        };
        let timer = st.timer_act();
        let exited = matches!(result, Poll::Ready(None));
        st.release_idle_if_drained(&mut wakers);
        drop(st);
        if let Some(a) = action {
            self.act(a);
        }
        wakers.wake();
        self.timer(timer);
        if exited {
            self.drained.notify_waiters();
        }
        result
    }

    pub(super) fn next_locked(
        &self,
        st: &mut State,
        idx: usize,
        held: &mut Option<Held>,
        clock: &mut Clock,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Queued>> {
        let slot = st.slots[idx].as_mut().expect("worker slot exists");
        slot.running = None;
        slot.inline = None;
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        if slot.parked {
            // Woken by something other than the scheduler (a finished job's
            // leftover waker): stay parked.
            return Poll::Pending;
        }
        if slot.woken {
            slot.woken = false;
            st.searching -= 1;
        }
        if st.live > st.target || (st.closed && st.sched.queued == 0) {
            st.live -= 1;
            st.remove_slot(idx);
            return Poll::Ready(None);
        }
        let mut tickets = Tickets::default();
        if st.busy < st.target
            && let Some(q) = st.sched.pick(clock, &mut tickets)
        {
            st.busy += 1;
            *held = Some(Held {
                lane: q.lane,
                counted: q.counted(),
                tickets,
            });
            if st.closed && st.sched.queued == 0 && st.reaper_running {
                // Let the timer task see it has nothing left, so shutdown need not
                // wait for a stale timer.
                self.reaper.notify_one();
            }
            if let Some(slot) = st.slots[idx].as_mut() {
                slot.running = Some(q.id);
                if q.inline {
                    slot.inline = q.job.inline_cell();
                }
            }
            return Poll::Ready(Some(q));
        }
        let slot = st.slots[idx].as_mut().expect("worker slot exists");
        slot.parked = true;
        st.idle.push(idx);
        Poll::Pending
    }
}

/// A handle's way back into the pool to cancel its job.
impl Canceller for Inner {
    /// Wakes the worker running job `id`, so that it sees the job's cancel flag.
    /// A scan of the workers, but only when a running job is cancelled.
    fn wake_running(&self, id: u64) {
        let waker = {
            let st = self.lock();
            st.slots
                .iter()
                .flatten()
                .find(|s| s.running == Some(id))
                .and_then(|s| s.waker.clone())
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes a queued job out because its caller cancelled it.
    fn cancel_queued(&self, pos: Pos) {
        let mut st = self.lock();
        let mut clock = Clock::default();
        let Some((q, _)) = st
            .sched
            .take(pos.lane, pos.prio, pos.id, Gone::Cancelled, &mut clock)
        else {
            return;
        };
        if st.closed && st.sched.queued == 0 && st.reaper_running {
            self.reaper.notify_one();
        }
        st.count_cancelled(&self.telemetry, 1, false);
        st.publish(&self.telemetry);
        let mut wakers = Wakers::default();
        st.grant(self.capacity, &mut wakers);
        st.release_idle_if_drained(&mut wakers);
        let timer = st.timer_act();
        let closed = st.closed;
        drop(st);
        wakers.wake();
        self.timer(timer);
        if closed {
            self.drained.notify_waiters();
        }
        tracing::debug!(pool = %self.name, job = pos.id, "taskgate: queued job cancelled by its caller");
        let mut job = q.job;
        job.as_mut().resolve_unstarted(JobError::Cancelled);
    }
}
