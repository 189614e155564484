//! The queue and the scheduler state shared by a pool's handles and workers: [`Inner`].
//!
//! One `std::sync::Mutex<State>` guards the queue, the worker accounting and the
//! counters that producers update. It is held only for a few field updates and a
//! `VecDeque` push or pop, never across an `.await`, a user callback, a wake, or a
//! drop of user data. Per job it is taken twice: once to push, and once by the
//! worker to finish its previous job and pop this one.

use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::error::JobError;
use crate::job::{Job, Task, Work};
use crate::stats::{Shard, Stats, Totals};
use crate::telemetry::Telemetry;

/// One accepted job waiting in the queue.
pub(crate) struct Queued {
    /// Ids are assigned under the lock in push order, so the queue is sorted by id
    /// and a job can be found by binary search.
    pub(crate) id: u64,
    /// When the job's queue timeout expires, if it has one.
    pub(crate) deadline: Option<Instant>,
    pub(crate) job: Pin<Box<dyn Job>>,
}

/// How a push that finds the queue full is accounted.
pub(crate) enum Waiting<'a> {
    /// A `try_submit`: count a rejection.
    No,
    /// An internal probe that will wait next (the stream adapters): count nothing.
    Probe,
    /// A waiting submitter; the flag is its registration in `submit_waiters`.
    Yes(&'a mut bool),
}

/// Why a push was refused.
pub(crate) enum Refused {
    Full,
    Closed,
}

/// A worker's entry in the scheduler.
struct Slot {
    /// The worker task's waker: to unpark it, or to interrupt its job on abort.
    waker: Option<Waker>,
    /// In the idle stack, waiting for a job.
    parked: bool,
    /// Woken (or spawned) to look for a job, and not yet checked in.
    woken: bool,
    /// The id of the job this worker holds, so a cancel can find and wake it.
    running: Option<u64>,
    shard: Arc<Shard>,
}

/// Something to do once the lock is released.
enum Action {
    Wake(Waker),
    Spawn(usize, Arc<Shard>),
}

// `repr(C)` with the fields every job touches first: they share the lock's cache
// line and the next one (the pair `Padded` aligns), so a critical section moves
// two lines between cores rather than four or five.
#[repr(C)]
pub(crate) struct State {
    queue: VecDeque<Queued>,
    /// Jobs running now.
    busy: usize,
    next_id: u64,
    submitted: u64,
    /// Workers wanted (set by the builder and `resize`).
    target: usize,
    /// Workers woken or spawned that have not checked in yet.
    searching: usize,
    /// Submitters waiting for queue space.
    submit_waiters: usize,
    /// Worker tasks alive and not yet decided to exit.
    live: usize,
    closed: bool,
    reaper_running: bool,
    /// Parked workers, most recently parked last (reused first: its cache is warm).
    idle: Vec<usize>,
    slots: Vec<Option<Slot>>,
    /// Queue-timeout deadlines of queued jobs, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    free_slots: Vec<usize>,
    rejected: u64,
    /// Jobs cancelled while queued (by their caller, or by abort).
    cancelled: u64,
    /// Of `cancelled`, those cancelled by abort.
    aborted: u64,
    queue_timed_out: u64,
    /// Counters of workers that have exited.
    retired: Shard,
}

impl State {
    /// Sets the exported gauges; called under the lock, so the last value set is
    /// the current one. Nothing when the `metrics` feature is off.
    #[inline]
    fn publish(&self, t: &Telemetry) {
        t.gauges(self.target.max(self.busy), self.busy, self.queue.len());
    }

    /// Counts `n` queued jobs cancelled (`by_abort`: by abort or a lost worker).
    fn count_cancelled(&mut self, t: &Telemetry, n: u64, by_abort: bool) {
        self.cancelled += n;
        if by_abort {
            self.aborted += n;
        }
        t.cancelled(n);
    }

    fn count_queue_timed_out(&mut self, t: &Telemetry) {
        self.queue_timed_out += 1;
        t.queue_timed_out(1);
    }

    fn count_rejected(&mut self, t: &Telemetry) {
        self.rejected += 1;
        t.rejected();
    }

    fn has_space(&self, capacity: usize) -> bool {
        let free_workers = self.target.saturating_sub(self.busy);
        self.queue.len() < capacity.saturating_add(free_workers)
    }

    /// Wakes or spawns one worker if queued jobs have nobody coming for them.
    ///
    /// At most one worker is searching at a time: a worker that takes a job wakes
    /// the next one if more are queued (see `next_job`). A burst of submissions
    /// therefore wakes workers one hop at a time, as many as the jobs keep busy,
    /// instead of waking every idle worker at once only for most to find nothing.
    fn dispatch(&mut self) -> Option<Action> {
        if self.queue.is_empty() || self.searching > 0 || self.busy >= self.target {
            return None;
        }
        if let Some(idx) = self.idle.pop() {
            let slot = self.slots[idx].as_mut().expect("idle slot exists");
            slot.parked = false;
            slot.woken = true;
            self.searching += 1;
            return slot.waker.clone().map(Action::Wake);
        }
        if self.live < self.target {
            self.live += 1;
            self.searching += 1;
            let shard = Arc::new(Shard::new());
            let slot = Slot {
                waker: None,
                parked: false,
                woken: true,
                running: None,
                shard: shard.clone(),
            };
            let idx = match self.free_slots.pop() {
                Some(i) => {
                    self.slots[i] = Some(slot);
                    i
                }
                None => {
                    self.slots.push(Some(slot));
                    self.slots.len() - 1
                }
            };
            return Some(Action::Spawn(idx, shard));
        }
        None
    }

    /// Unparks every parked worker (to exit, or to re-check after close) and
    /// returns their wakers, to wake once the lock is released.
    fn unpark_all(&mut self, out: &mut Vec<Waker>) {
        while let Some(idx) = self.idle.pop() {
            let slot = self.slots[idx].as_mut().expect("idle slot exists");
            slot.parked = false;
            slot.woken = true;
            self.searching += 1;
            out.extend(slot.waker.clone());
        }
    }

    /// Sums the counters of every worker, live and retired.
    fn totals(&self) -> Totals {
        let mut totals = Totals::new();
        totals.add(&self.retired);
        for slot in self.slots.iter().flatten() {
            totals.add(&slot.shard);
        }
        totals
    }

    fn remove_slot(&mut self, idx: usize) {
        if let Some(slot) = self.slots[idx].take() {
            self.retired.merge_from(&slot.shard);
            if slot.woken {
                self.searching -= 1;
            }
            self.idle.retain(|&i| i != idx);
            self.free_slots.push(idx);
        }
    }

    fn take_queued(&mut self, id: u64) -> Option<Queued> {
        let pos = self.queue.binary_search_by_key(&id, |q| q.id).ok()?;
        let q = self.queue.remove(pos)?;
        if let Some(d) = q.deadline {
            self.deadlines.remove(&(d, q.id));
        }
        Some(q)
    }
}

/// Aligns its content to two cache lines (the unit the adjacent-line prefetcher
/// pulls in), so that it shares no line with its neighbours.
#[repr(align(128))]
struct Padded<T>(T);

/// The pool itself, shared by every [`Pool`](crate::Pool) clone, every
/// [`JobHandle`](crate::JobHandle) and every worker.
pub(crate) struct Inner {
    /// On its own cache lines: producers and workers bounce this line between
    /// cores on every job, and the read-mostly fields below should not ride along.
    state: Padded<Mutex<State>>,
    /// Submitters waiting for queue space.
    space: Notify,
    /// Progress towards drained (a worker exited, the queue shrank while closed),
    /// for `shutdown`.
    drained: Notify,
    /// New earliest queue deadline, or close, for the reaper.
    reaper: Notify,
    pub(crate) aborted: AtomicBool,
    closed: AtomicBool,
    rt: Handle,
    tracker: TaskTracker,
    pub(crate) name: Arc<str>,
    pub(crate) capacity: usize,
    pub(crate) job_timeout: Option<Duration>,
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) telemetry: Telemetry,
}

impl Inner {
    pub(crate) fn new(
        rt: Handle,
        name: Arc<str>,
        workers: usize,
        capacity: usize,
        job_timeout: Option<Duration>,
        queue_timeout: Option<Duration>,
    ) -> Self {
        let telemetry = Telemetry::new(&name);
        telemetry.gauges(workers, 0, 0);
        Inner {
            state: Padded(Mutex::new(State {
                queue: VecDeque::new(),
                next_id: 1,
                closed: false,
                target: workers,
                live: 0,
                busy: 0,
                searching: 0,
                idle: Vec::new(),
                slots: Vec::new(),
                free_slots: Vec::new(),
                submit_waiters: 0,
                deadlines: BTreeSet::new(),
                reaper_running: false,
                submitted: 0,
                rejected: 0,
                cancelled: 0,
                aborted: 0,
                queue_timed_out: 0,
                retired: Shard::new(),
            })),
            space: Notify::new(),
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
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held, but a poisoned lock must not turn
        // one failure into a cascade.
        self.state.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn act(self: &Arc<Self>, action: Action) {
        match action {
            Action::Wake(w) => w.wake(),
            Action::Spawn(idx, shard) => {
                crate::worker::spawn(self, &self.tracker, &self.rt, idx, shard)
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Accepts a task into the queue, or hands it back.
    ///
    /// `waiting` is the caller's registration as a waiting submitter: set on the
    /// first `Full`, so that workers know to notify `space` when a slot frees.
    pub(crate) fn push<W, T>(
        self: &Arc<Self>,
        task: Box<Task<W, T>>,
        deadline: Option<Instant>,
        waiting: Waiting<'_>,
    ) -> Result<u64, (Refused, Box<Task<W, T>>)>
    where
        W: Work<Output = T>,
        T: Send + 'static,
    {
        let mut st = self.lock();
        if st.closed {
            return Err((Refused::Closed, task));
        }
        if !st.has_space(self.capacity) {
            match waiting {
                Waiting::Yes(w) => {
                    if !*w {
                        *w = true;
                        st.submit_waiters += 1;
                    }
                }
                Waiting::No => st.count_rejected(&self.telemetry),
                Waiting::Probe => {}
            }
            return Err((Refused::Full, task));
        }
        let id = st.next_id;
        st.next_id += 1;
        st.submitted += 1;
        let mut wake_reaper = false;
        let mut spawn_reaper = false;
        if let Some(d) = deadline {
            wake_reaper = st.deadlines.first().is_none_or(|&(first, _)| d < first);
            st.deadlines.insert((d, id));
            if !st.reaper_running {
                st.reaper_running = true;
                spawn_reaper = true;
            }
        }
        st.queue.push_back(Queued {
            id,
            deadline,
            job: Box::into_pin(task as Box<dyn Job>),
        });
        let action = st.dispatch();
        st.publish(&self.telemetry);
        drop(st);
        if let Some(a) = action {
            self.act(a);
        }
        if spawn_reaper {
            crate::worker::spawn_reaper(self, &self.tracker, &self.rt);
        } else if wake_reaper {
            self.reaper.notify_one();
        }
        Ok(id)
    }

    /// A waiting submitter gives up its registration.
    pub(crate) fn stop_waiting(&self) {
        self.lock().submit_waiters -= 1;
    }

    pub(crate) fn count_rejected(&self) {
        self.lock().count_rejected(&self.telemetry);
    }

    /// A future that completes when queue space may have freed, or the pool closed.
    pub(crate) fn space(&self) -> tokio::sync::futures::Notified<'_> {
        self.space.notified()
    }

    /// Called by a worker to finish its previous job (if `holds_slot`) and take the
    /// next one. `Ready(None)` tells the worker to exit; it has been unregistered.
    pub(crate) fn next_job(
        self: &Arc<Self>,
        idx: usize,
        holds_slot: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Queued>> {
        let mut st = self.lock();
        let mut notify_space = false;
        if *holds_slot {
            *holds_slot = false;
            st.busy -= 1;
            notify_space = st.submit_waiters > 0;
        }
        let result = self.next_locked(&mut st, idx, holds_slot, cx);
        st.publish(&self.telemetry);
        // A worker that took a job hands the search on if more are queued; one
        // that exits may leave a start slot that an idle worker can use.
        let action = if result.is_ready() {
            st.dispatch()
        } else {
            None
        };
        let exited = matches!(result, Poll::Ready(None));
        drop(st);
        if let Some(a) = action {
            self.act(a);
        }
        if notify_space {
            self.space.notify_one();
        }
        if exited {
            self.drained.notify_waiters();
        }
        result
    }

    fn next_locked(
        &self,
        st: &mut State,
        idx: usize,
        holds_slot: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Queued>> {
        let slot = st.slots[idx].as_mut().expect("worker slot exists");
        slot.running = None;
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
        if st.live > st.target || (st.closed && st.queue.is_empty()) {
            st.live -= 1;
            st.remove_slot(idx);
            return Poll::Ready(None);
        }
        if st.busy < st.target
            && let Some(q) = st.queue.pop_front()
        {
            st.busy += 1;
            *holds_slot = true;
            if let Some(d) = q.deadline {
                st.deadlines.remove(&(d, q.id));
                if st.closed && st.deadlines.is_empty() {
                    // Let the reaper see it has nothing left, so shutdown need not
                    // wait for a stale deadline.
                    self.reaper.notify_one();
                }
            }
            if let Some(slot) = st.slots[idx].as_mut() {
                slot.running = Some(q.id);
            }
            return Poll::Ready(Some(q));
        }
        let slot = st.slots[idx].as_mut().expect("worker slot exists");
        slot.parked = true;
        st.idle.push(idx);
        Poll::Pending
    }

    /// A worker task was dropped without exiting through `next_job`: its runtime is
    /// shutting down. Nothing queued can run any more, so abort the pool; every
    /// handle still awaited resolves as cancelled.
    pub(crate) fn worker_lost(self: &Arc<Self>, idx: usize, holds_slot: bool, mid_job: bool) {
        {
            let mut st = self.lock();
            if holds_slot {
                st.busy -= 1;
            }
            if mid_job {
                // Its job ends as cancelled when the guard drops it, just after this.
                st.count_cancelled(&self.telemetry, 1, true);
            }
            st.live -= 1;
            st.remove_slot(idx);
        }
        // Also wakes a shutdown waiting for the pool to drain.
        self.abort();
    }

    /// Wakes the worker running job `id`, so that it sees the job's cancel flag.
    /// A scan of the workers, but only when a running job is cancelled.
    pub(crate) fn wake_running(&self, id: u64) {
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
    pub(crate) fn cancel_queued(&self, id: u64) {
        let mut st = self.lock();
        let Some(q) = st.take_queued(id) else {
            return;
        };
        if q.deadline.is_some() && st.closed && st.deadlines.is_empty() {
            self.reaper.notify_one();
        }
        st.count_cancelled(&self.telemetry, 1, false);
        st.publish(&self.telemetry);
        let notify = st.submit_waiters > 0;
        let closed = st.closed;
        drop(st);
        if notify {
            self.space.notify_one();
        }
        if closed {
            self.drained.notify_waiters();
        }
        tracing::debug!(pool = %self.name, job = id, "taskgate: queued job cancelled by its caller");
        let mut job = q.job;
        job.as_mut().resolve_unstarted(JobError::Cancelled);
    }

    /// Expires due queue deadlines. Returns the next deadline, and whether the
    /// reaper should exit.
    pub(crate) fn reap(&self) -> (Option<Instant>, bool) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut st = self.lock();
        while let Some(&(d, id)) = st.deadlines.first() {
            if d > now {
                break;
            }
            st.deadlines.pop_first();
            if let Some(q) = st.take_queued(id) {
                // A cancel that raced the deadline wins: the caller asked first.
                if q.job.cancel_requested() {
                    st.count_cancelled(&self.telemetry, 1, false);
                } else {
                    st.count_queue_timed_out(&self.telemetry);
                }
                expired.push(q);
            }
        }
        if !expired.is_empty() {
            st.publish(&self.telemetry);
        }
        let next = st.deadlines.first().map(|&(d, _)| d);
        // After close no deadline can be added: once none is left, nothing is left
        // to expire.
        let exit = st.closed && st.deadlines.is_empty();
        if exit {
            st.reaper_running = false;
        }
        let notify = !expired.is_empty() && st.submit_waiters > 0;
        let closed = st.closed;
        drop(st);
        if notify {
            self.space.notify_waiters();
        }
        if closed && (exit || !expired.is_empty()) {
            self.drained.notify_waiters();
        }
        for q in expired {
            let mut job = q.job;
            if job.cancel_requested() {
                tracing::debug!(pool = %self.name, job = q.id, "taskgate: queued job cancelled by its caller");
                job.as_mut().resolve_unstarted(JobError::Cancelled);
            } else {
                tracing::debug!(pool = %self.name, job = q.id, "taskgate: job timed out in the queue");
                job.as_mut().resolve_unstarted(JobError::QueueTimedOut);
            }
        }
        (next, exit)
    }

    /// The reaper task was dropped without exiting normally.
    pub(crate) fn reaper_lost(&self) {
        self.lock().reaper_running = false;
        self.drained.notify_waiters();
    }

    pub(crate) fn reaper_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.reaper.notified()
    }

    pub(crate) fn close(&self) {
        let mut wakers = Vec::new();
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            st.closed = true;
            self.closed.store(true, Ordering::Release);
            st.unpark_all(&mut wakers);
        }
        self.tracker.close();
        for w in wakers {
            w.wake();
        }
        self.space.notify_waiters();
        self.reaper.notify_one();
        tracing::debug!(pool = %self.name, "taskgate: pool closed");
    }

    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        let mut wakers = Vec::new();
        let drained: Vec<Queued> = {
            let mut st = self.lock();
            st.closed = true;
            self.closed.store(true, Ordering::Release);
            let drained: Vec<Queued> = st.queue.drain(..).collect();
            st.deadlines.clear();
            st.count_cancelled(&self.telemetry, drained.len() as u64, true);
            st.publish(&self.telemetry);
            st.unpark_all(&mut wakers);
            // Interrupt running jobs: their workers see `aborted` at the next poll.
            for slot in st.slots.iter().flatten() {
                if let Some(w) = &slot.waker {
                    wakers.push(w.clone());
                }
            }
            drained
        };
        self.tracker.close();
        if !drained.is_empty() {
            tracing::debug!(pool = %self.name, jobs = drained.len(), "taskgate: pool aborted; queued jobs cancelled");
        }
        for q in drained {
            let mut job = q.job;
            job.as_mut().resolve_unstarted(JobError::Cancelled);
        }
        for w in wakers {
            w.wake();
        }
        self.space.notify_waiters();
        self.reaper.notify_one();
        self.drained.notify_waiters();
    }

    pub(crate) fn resize(self: &Arc<Self>, workers: usize) {
        let mut wakers = Vec::new();
        let mut actions = Vec::new();
        let notify_space;
        {
            let mut st = self.lock();
            let grew = workers > st.target;
            st.target = workers;
            if st.live > workers {
                // Wake idle workers so the surplus can exit; busy ones exit when
                // their job ends. Running jobs are never interrupted.
                st.unpark_all(&mut wakers);
            }
            while let Some(a) = st.dispatch() {
                actions.push(a);
            }
            st.publish(&self.telemetry);
            notify_space = grew && st.submit_waiters > 0;
        }
        for w in wakers {
            w.wake();
        }
        for a in actions {
            self.act(a);
        }
        if notify_space {
            self.space.notify_waiters();
        }
        self.drained.notify_waiters();
        tracing::debug!(pool = %self.name, workers, "taskgate: pool resized");
    }

    /// Notified whenever the pool may have become drained.
    pub(crate) fn drained(&self) -> tokio::sync::futures::Notified<'_> {
        self.drained.notified()
    }

    /// Whether nothing is queued, no worker is alive or being spawned, and the
    /// reaper is not running or being spawned. (`live` and `reaper_running` are set
    /// under the lock before the spawn, so a spawn in flight counts.)
    pub(crate) fn is_drained(&self) -> bool {
        let st = self.lock();
        st.queue.is_empty() && st.live == 0 && st.busy == 0 && !st.reaper_running
    }

    pub(crate) async fn wait_workers(&self) {
        self.tracker.wait().await;
    }

    pub(crate) fn stats(&self) -> Stats {
        let st = self.lock();
        let totals = st.totals();
        Stats {
            workers: st.target.max(st.busy),
            busy: st.busy,
            queued: st.queue.len(),
            submitted: st.submitted,
            completed: totals.completed,
            cancelled: totals.cancelled + st.cancelled,
            timed_out: totals.timed_out,
            queue_timed_out: st.queue_timed_out,
            panicked: totals.panicked,
            rejected: st.rejected,
            queue_wait: totals.queue_wait(),
            run_time: totals.run_time(),
        }
    }

    /// Jobs cancelled by abort so far, queued and running.
    pub(crate) fn aborted_count(&self) -> u64 {
        let st = self.lock();
        st.aborted + st.totals().aborted
    }
}
