//! [`SharedConcurrency`]: a limit on running jobs kept in Redis and shared by
//! every process that uses its name; and its limiter, which holds slots leased
//! from Redis, renews them while held and gives idle ones back.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::client::RedisLimits;
use super::health::{Counters, Health, after, spec_id};
use super::names::KeyKind;
use super::{OnError, SharedStats};
use crate::error::LimitError;
use crate::limit::{Admit, Clock, Key, Remote, RemoteSpec, Rouse};

/// At most `limit` jobs run at once across every process that uses the same
/// name (and prefix) on one Redis. Made with [`RedisLimits::concurrency`];
/// applied to a pool with
/// [`Builder::shared_concurrency`](crate::Builder::shared_concurrency) or to each
/// key with [`KeyLimits::shared_concurrency`](crate::KeyLimits::shared_concurrency)
/// (then each key has its own: "4 at once per host, across the fleet").
///
/// **How.** Each running job holds a *slot*: a member of a sorted set in Redis,
/// scored with its expiry on the server's clock. A process takes slots with a
/// Lua script that first drops expired ones, renews the slots it holds every
/// third of the [`ttl`](SharedConcurrency::ttl) while they are held, and gives
/// back a slot its jobs no longer need a millisecond after it became idle (a
/// slot freed while another job of the same pool or key waits goes straight to
/// that job, without a round trip). So a job costs at most one round trip to
/// start, and none while the pool stays busy.
///
/// **A process that dies** (SIGKILL, a crash, a partition) stops renewing: its
/// slots come back to the fleet within the TTL plus one renewal period. A
/// process that stalls longer than the TTL (a long GC-like pause, a suspended
/// VM) can find its slots expired and given to others: the fleet may then run
/// more than `limit` until its jobs end. This is a limit for efficiency, not a
/// lock for correctness.
///
/// **With workers.** A job needs a worker of its pool and a shared slot: a pool
/// of `w` workers runs at most `min(w, slots it can get)` jobs.
///
/// **When Redis fails**, the [`OnError`] policy applies
/// ([`on_error`](SharedConcurrency::on_error), default [`OnError::Local`]: at
/// most `limit` at once in this process).
///
/// A refusal (every slot taken) is retried by polling, every 2 ms at first and
/// backing off to 50 ms while refused.
///
/// Cheap to clone; clones share their counters ([`stats`](SharedConcurrency::stats)).
///
/// # Jobs that leave, and drop
///
/// A job takes a slot only when it starts: one cancelled, or timed out in the
/// queue, takes none. A running job gives its slot back when it ends, however
/// it ends: completed, cancelled, timed out or panicked. A blocking closure
/// ([`Pool::submit_blocking`](crate::Pool::submit_blocking)) past its timeout
/// or cancelled keeps its slot until it returns, as it keeps its worker. Dropping a
/// `SharedConcurrency` drops only the setting; pools built with it keep their
/// limit. When a pool, or a key's state, goes, its idle slots are given back
/// at once.
#[derive(Clone)]
pub struct SharedConcurrency {
    client: RedisLimits,
    name: Arc<str>,
    limit: usize,
    ttl: Duration,
    on_error: OnError,
    counters: Arc<Counters>,
}

impl fmt::Debug for SharedConcurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedConcurrency")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("ttl", &self.ttl)
            .field("on_error", &self.on_error)
            .finish()
    }
}

impl PartialEq for SharedConcurrency {
    /// The same setting: the same name, limit, TTL and policy on the same
    /// [`RedisLimits`] handle.
    fn eq(&self, other: &SharedConcurrency) -> bool {
        self.client == other.client
            && self.name == other.name
            && self.limit == other.limit
            && self.ttl == other.ttl
            && self.on_error == other.on_error
    }
}

impl Eq for SharedConcurrency {}

/// The shortest TTL: renewals every third of it must be able to arrive.
const MIN_TTL: Duration = Duration::from_millis(30);
/// The longest TTL: a day (the scripts add it to a millisecond clock, which
/// Lua's numbers and `PEXPIRE` must hold exactly).
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// How long an idle slot is kept for the next job before it goes back.
const LINGER: Duration = Duration::from_millis(1);
/// How long a slot just granted is kept for the jobs that asked for it (they
/// start through the timer task, a few task hops away) before it goes back.
const FRESH_LINGER: Duration = Duration::from_millis(20);
/// Polling a full limit: from this, doubling while refused...
const POLL_MIN: Duration = Duration::from_millis(2);
/// ... up to this.
const POLL_MAX: Duration = Duration::from_millis(50);
/// The most slots one request asks for.
const BATCH_MAX: usize = 16;

impl SharedConcurrency {
    pub(super) fn new(client: RedisLimits, name: String, limit: usize) -> SharedConcurrency {
        let counters = Arc::new(Counters::new("concurrency", &name));
        SharedConcurrency {
            client,
            name: name.into(),
            limit,
            ttl: Duration::from_secs(10),
            on_error: OnError::default(),
            counters,
        }
    }

    /// How long a slot lasts in Redis unless renewed (default 10 s; from 30 ms
    /// to a day); renewed every third of it while held. A crashed process's slots
    /// come back within the TTL plus a third.
    pub fn ttl(mut self, ttl: Duration) -> SharedConcurrency {
        self.ttl = ttl;
        self
    }

    /// What to do while Redis does not answer (default [`OnError::Local`]).
    pub fn on_error(mut self, policy: OnError) -> SharedConcurrency {
        self.on_error = policy;
        self
    }

    /// The name the processes share.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit on running jobs across the fleet.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The TTL of a slot.
    pub fn slot_ttl(&self) -> Duration {
        self.ttl
    }

    /// The policy while Redis fails.
    pub fn policy(&self) -> OnError {
        self.on_error
    }

    /// This process's counters for the limit, over every pool and key using it
    /// (and its clones). Limits set again with an equal setting built anew (a
    /// reloaded configuration) keep the limiter bound first, which counts on
    /// the first setting's counters.
    pub fn stats(&self) -> SharedStats {
        self.counters.snapshot()
    }

    pub(crate) fn validate(&self) -> Result<(), LimitError> {
        if self.limit == 0 {
            return Err(LimitError::ZeroConcurrency);
        }
        if self.ttl < MIN_TTL || self.ttl > MAX_TTL {
            return Err(LimitError::InvalidTtl);
        }
        Ok(())
    }
}

impl RemoteSpec for SharedConcurrency {
    fn bind(&self, key: Option<&Key>, rouse: Rouse, running: usize) -> Box<dyn Remote> {
        let now = Instant::now();
        Box::new(SlotLimiter {
            cell: Arc::new(Cell {
                client: self.client.clone(),
                key: self
                    .client
                    .key_of(KeyKind::Concurrency, &self.name, key.map(Key::as_str)),
                limit: self.limit,
                ttl: self.ttl,
                counters: self.counters.clone(),
                rouse,
                state: Mutex::new(State {
                    free: Vec::new(),
                    busy: Vec::new(),
                    // Jobs started under a limiter this one replaces hold no
                    // slot of it.
                    unheld: running,
                    next_ask: None,
                    poll: POLL_MIN,
                    health: Health::new(now),
                    renewing: false,
                    returning: false,
                    return_at: now,
                    retired: false,
                    orphans: Vec::new(),
                }),
            }),
            on_error: self.on_error,
        })
    }

    fn id(&self) -> u64 {
        spec_id(
            &self.client,
            (&*self.name, self.limit, self.ttl, self.on_error),
        )
    }
}

/// The limiter for one gate.
struct SlotLimiter {
    cell: Arc<Cell>,
    on_error: OnError,
}

struct Cell {
    client: RedisLimits,
    key: String,
    limit: usize,
    ttl: Duration,
    counters: Arc<Counters>,
    rouse: Rouse,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Slots held in Redis that no job uses (kept `LINGER` for the next one).
    free: Vec<String>,
    /// Slots held by running jobs.
    busy: Vec<String>,
    /// Running jobs that hold no slot: started under the `OnError` policy, or
    /// whose slot was found expired on renewal.
    unheld: usize,
    /// A full limit: do not ask before then.
    next_ask: Option<Instant>,
    /// The next poll interval while refused.
    poll: Duration,
    health: Health,
    /// A renewal task is running.
    renewing: bool,
    /// A task will give the idle slots back.
    returning: bool,
    /// When the scheduled return gives the idle slots back.
    return_at: Instant,
    /// The gate was dropped: give back everything, wake nothing.
    retired: bool,
    /// Holder ids of acquires that failed: they may hold slots (a timed-out
    /// call may have run), given back once Redis answers again.
    orphans: Vec<String>,
}

impl State {
    fn held(&self) -> usize {
        self.free.len() + self.busy.len()
    }

    /// Every slot held, to give back.
    fn take_all(&mut self) -> Vec<String> {
        let mut ids = std::mem::take(&mut self.free);
        ids.append(&mut self.busy);
        ids
    }
}

impl Cell {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts an acquire request in the background; nothing here waits.
    fn ask(self: &Arc<Self>, st: &mut State, now: Instant) -> Instant {
        let deadline = after(now, self.client.call_timeout());
        st.health.ask(deadline);
        // One more slot than the running jobs hold, up to a batch: a busy
        // gate ramps up in few round trips, and an unused surplus goes back
        // after `LINGER`.
        let room = self.limit.saturating_sub(st.busy.len() + st.unheld);
        let want = (st.busy.len() + 1).min(BATCH_MAX).min(room).max(1);
        let ids: Vec<String> = (0..want).map(|_| self.client.holder_id()).collect();
        let cell = self.clone();
        self.rouse
            .runtime()
            .spawn(async move { cell.acquire(ids).await });
        deadline
    }

    async fn acquire(self: Arc<Self>, mut ids: Vec<String>) {
        let result = self
            .client
            .acquire(&self.key, &ids, self.limit as u64, self.ttl)
            .await;
        if self.settle(result, &mut ids) {
            self.rouse.rouse();
        } else {
            // The gate is gone: what was granted goes back at once.
            self.give_back(ids).await;
        }
    }

    /// Takes an acquire's answer into the state. `false` if the gate was
    /// dropped meanwhile: then `ids` is left holding the granted ids.
    fn settle(
        self: &Arc<Self>,
        result: Result<(usize, Option<Duration>), super::RedisError>,
        ids: &mut Vec<String>,
    ) -> bool {
        let mut st = self.lock();
        if st.retired {
            match result {
                Ok((granted, _)) => {
                    self.counters.answered(granted as u64);
                    ids.truncate(granted);
                }
                Err(_) => ids.clear(),
            }
            return false;
        }
        match result {
            Ok((granted, wait)) => {
                self.counters.answered(granted as u64);
                st.health.answered(&self.counters);
                ids.truncate(granted);
                if granted == 0 {
                    let poll = st.poll;
                    st.poll = (poll * 2).min(POLL_MAX);
                    let wait = wait.map_or(poll, |w| w.min(poll));
                    st.next_ask = Some(Instant::now() + wait);
                } else {
                    st.poll = POLL_MIN;
                    st.next_ask = None;
                }
                st.free.append(ids);
                // Slots no job takes (the jobs that waited were cancelled, or
                // started on slots freed meanwhile) go back like idle ones.
                if !st.free.is_empty() {
                    self.schedule_return(&mut st, FRESH_LINGER);
                }
                // Ids of acquires that failed may hold slots all the same (a
                // call that timed out may have run): Redis answers again, so
                // give them back now rather than at their TTL.
                let orphans = std::mem::take(&mut st.orphans);
                if !orphans.is_empty() {
                    let cell = self.clone();
                    self.rouse
                        .runtime()
                        .spawn(async move { cell.give_back(orphans).await });
                }
                if st.held() > 0 && !st.renewing {
                    st.renewing = true;
                    let cell = self.clone();
                    self.rouse
                        .runtime()
                        .spawn(async move { cell.renew().await });
                }
            }
            Err(e) => {
                st.health.failed(&e, &self.counters, "shared concurrency");
                st.orphans.append(ids);
            }
        }
        true
    }

    /// Gives the idle slots back after `linger`, unless a job takes them first.
    /// A return already scheduled is put off to then if that is later (slots
    /// just granted are kept `FRESH_LINGER` even if a used one was due back
    /// sooner).
    fn schedule_return(self: &Arc<Self>, st: &mut State, linger: Duration) {
        let at = after(Instant::now(), linger);
        if st.returning {
            st.return_at = st.return_at.max(at);
            return;
        }
        st.returning = true;
        st.return_at = at;
        let cell = self.clone();
        self.rouse
            .runtime()
            .spawn(async move { cell.return_idle().await });
    }

    /// Renews every held slot each third of the TTL, while any is held.
    async fn renew(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            let (ids, done) = {
                let mut st = self.lock();
                if st.held() == 0 || st.retired {
                    st.renewing = false;
                    (st.take_all(), true)
                } else {
                    (st.free.iter().chain(&st.busy).cloned().collect(), false)
                }
            };
            if done {
                self.give_back(ids).await;
                return;
            }
            match self.client.renew(&self.key, &ids, self.ttl).await {
                Ok(flags) => {
                    self.counters.answered(0);
                    let lost: Vec<&String> = ids
                        .iter()
                        .zip(flags)
                        .filter(|(_, held)| !held)
                        .map(|(id, _)| id)
                        .collect();
                    if !lost.is_empty() {
                        // Under the pool lock: a `check` that saw an idle slot
                        // must find it at its `acquire`.
                        let mut gone = 0;
                        self.rouse.locked(&mut || {
                            let mut st = self.lock();
                            // Slots given back meanwhile were not lost.
                            let free = st.free.len();
                            st.free.retain(|id| !lost.contains(&id));
                            let busy = st.busy.len();
                            st.busy.retain(|id| !lost.contains(&id));
                            let busy_lost = busy - st.busy.len();
                            // Their jobs run on, holding no slot.
                            st.unheld += busy_lost;
                            gone = free - st.free.len() + busy_lost;
                        });
                        if gone > 0 {
                            self.counters.lost(gone as u64);
                            tracing::warn!(
                                lost = gone,
                                "taskgate: shared concurrency slots expired before renewal"
                            );
                        }
                    }
                }
                Err(_) => self.counters.failed(),
            }
        }
    }

    /// Gives the idle slots back at `return_at`, unless jobs took them.
    async fn return_idle(self: Arc<Self>) {
        loop {
            let at = {
                let mut st = self.lock();
                if st.free.is_empty() {
                    // Jobs took them: nothing to give back, and no pool lock
                    // to take. A slot that goes idle later schedules anew.
                    st.returning = false;
                    return;
                }
                st.return_at
            };
            tokio::time::sleep_until(at).await;
            let mut ids = Vec::new();
            let mut put_off = false;
            // Under the pool lock: a `check` that saw an idle slot must find it
            // at its `acquire`.
            self.rouse.locked(&mut || {
                let mut st = self.lock();
                if Instant::now() < st.return_at {
                    // Put off while this task slept.
                    put_off = true;
                    return;
                }
                st.returning = false;
                ids = std::mem::take(&mut st.free);
            });
            if !put_off {
                self.give_back(ids).await;
                return;
            }
        }
    }

    async fn give_back(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        match self.client.release(&self.key, &ids).await {
            Ok(()) => self.counters.answered(0),
            // They expire at their TTL.
            Err(_) => self.counters.failed(),
        }
    }
}

impl fmt::Debug for SlotLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedConcurrencyLimiter")
            .field("limit", &self.cell.limit)
            .field("state", &*self.cell.lock())
            .finish()
    }
}

impl Remote for SlotLimiter {
    fn check(&self, clock: &mut Clock) -> Admit {
        let mut st = self.cell.lock();
        // This process's own running jobs, those that hold no slot (started
        // under the policy, or whose slot expired) included.
        let own = st.busy.len() + st.unheld;
        let room = own < self.cell.limit;
        if st.health.failing.is_none() {
            if !room {
                // Only a job ending makes room (an idle slot would take this
                // process over the limit: it goes back).
                return Admit::OnRelease;
            }
            if !st.free.is_empty() {
                // A slot at hand: no clock read on the job's path.
                return Admit::Now;
            }
            let now = clock.now();
            return match st.health.wait(st.next_ask, now) {
                Some(t) => Admit::At(t),
                None => Admit::At(self.cell.ask(&mut st, now)),
            };
        }
        let now = clock.now();
        if st.health.probe_due(now) {
            self.cell.ask(&mut st, now);
        }
        match self.on_error {
            OnError::Open => Admit::Now,
            _ if !room => Admit::OnRelease,
            // Slots held from before the failure are still held.
            _ if !st.free.is_empty() => Admit::Now,
            OnError::Local => Admit::Now,
            OnError::Closed => Admit::At(st.health.closed_until(now)),
        }
    }

    fn acquire(&mut self, _: &mut Clock) {
        let mut st = self.cell.lock();
        match st.free.pop() {
            Some(id) => st.busy.push(id),
            None => {
                // Only a failing limit says `Now` without a slot.
                st.unheld += 1;
                self.cell.counters.started_on_error();
            }
        }
    }

    fn release(&mut self) {
        let mut st = self.cell.lock();
        if st.unheld > 0 {
            st.unheld -= 1;
            return;
        }
        if let Some(id) = st.busy.pop() {
            st.free.push(id);
            self.cell.schedule_return(&mut st, LINGER);
        }
    }

    fn has_room(&self) -> bool {
        let st = self.cell.lock();
        let room = st.busy.len() + st.unheld < self.cell.limit;
        match (st.health.failing, self.on_error) {
            (Some(_), OnError::Open) => true,
            (Some(_), OnError::Closed) => room && !st.free.is_empty(),
            _ => room,
        }
    }

    fn holds_until(&self, _: &mut Clock) -> Option<Instant> {
        None
    }
}

impl Drop for SlotLimiter {
    fn drop(&mut self) {
        let mut st = self.cell.lock();
        st.retired = true;
        st.health.retire(&self.cell.counters);
        let mut ids = st.take_all();
        ids.append(&mut st.orphans);
        drop(st);
        if !ids.is_empty() {
            let cell = self.cell.clone();
            self.cell
                .rouse
                .runtime()
                .spawn(async move { cell.give_back(ids).await });
        }
    }
}
