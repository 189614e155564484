//! Model-based tests: random sequences of operations against the real pool on a
//! paused-time runtime, checked after every step against what a simple model allows.
//!
//! `PROPTEST_CASES` sets the number of sequences (default 64, as in CI); for the long
//! version: `PROPTEST_CASES=5000 cargo test --release --test model -- --nocapture`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use proptest::prelude::*;
use support::settle;
use taskgate::{JobError, JobHandle, Pool};
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn millis(n: u8) -> Duration {
    Duration::from_millis(u64::from(n))
}
const PANIC_MSG: &str = "model job panic";

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
enum Op {
    Job {
        kind: Kind,
        via: Via,
        run_timeout: Option<u8>,
        queue_timeout: Option<u8>,
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
    prop_oneof![
        12 => (kind, via, proptest::option::of(0u8..30), proptest::option::of(0u8..30)).prop_map(
            |(kind, via, run_timeout, queue_timeout)| Op::Job { kind, via, run_timeout, queue_timeout }
        ),
        2 => any::<usize>().prop_map(Op::DropHandle),
        2 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Detach),
        1 => any::<usize>().prop_map(Op::DropRun),
        5 => (1u8..30).prop_map(Op::Advance),
        2 => (0u8..5).prop_map(Op::Resize),
        1 => Just(Op::Close),
        1 => (0u8..20).prop_map(Op::ShutdownTimeout),
        1 => Just(Op::Abort),
    ]
}

/// What one job's future saw.
#[derive(Default)]
struct Log {
    started: Mutex<Option<Instant>>,
    dropped: Mutex<Option<Instant>>,
    /// `cancel()` or a handle drop happened while the job had not started.
    cancelled_unstarted: AtomicBool,
    /// Its caller asked for a cancel (cancel, handle drop, run dropped).
    cancel_requested: AtomicBool,
}

/// Shared by all jobs of one sequence.
#[derive(Default)]
struct World {
    running: AtomicUsize,
    alive: AtomicUsize,
    /// The size last passed to the pool, as the jobs see it when they start.
    target: AtomicUsize,
    /// A job started while `running >= target`.
    violation: Mutex<Option<String>>,
}

struct Alive(Arc<World>, Arc<Log>);
impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, SeqCst);
        *self.1.dropped.lock().unwrap() = Some(Instant::now());
    }
}
struct Running(Arc<World>);
impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

fn job(
    world: &Arc<World>,
    log: &Arc<Log>,
    id: u32,
    kind: Kind,
) -> impl Future<Output = u32> + Send + 'static {
    world.alive.fetch_add(1, SeqCst);
    let alive = Alive(world.clone(), log.clone());
    let (world, log) = (world.clone(), log.clone());
    async move {
        let _alive = alive;
        let before = world.running.fetch_add(1, SeqCst);
        let _running = Running(world.clone());
        let target = world.target.load(SeqCst);
        if before >= target {
            *world.violation.lock().unwrap() = Some(format!(
                "job {id} started with {before} running and {target} workers"
            ));
        }
        *log.started.lock().unwrap() = Some(Instant::now());
        match kind {
            Kind::Finish(ms) => {
                tokio::time::sleep(millis(ms)).await;
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
    jobs: Vec<JobRec>,
    handles: Vec<(usize, JobHandle<u32>)>,
    waiters: Vec<(usize, Waiter)>,
    aborted: bool,
    closed: bool,
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
        if log.started.lock().unwrap().is_none() {
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
            } => {
                let idx = self.jobs.len();
                let log = Arc::new(Log::default());
                let fut = job(&self.world, &log, idx as u32, kind.clone());
                self.jobs.push(JobRec {
                    kind,
                    via: via.clone(),
                    run_timeout,
                    queue_timeout,
                    log,
                    result: None,
                    refused: false,
                    unknown: false,
                });
                let pool = self.pool.clone();
                fn with_opts_fn<F>(
                    pool: &Pool,
                    fut: F,
                    run_timeout: Option<u8>,
                    queue_timeout: Option<u8>,
                ) -> taskgate::JobBuilder<'_, F>
                where
                    F: Future + Send + 'static,
                    F::Output: Send + 'static,
                {
                    let mut b = pool.job(fut);
                    if let Some(t) = run_timeout {
                        b = b.timeout(millis(t));
                    }
                    if let Some(t) = queue_timeout {
                        b = b.queue_timeout(millis(t));
                    }
                    b
                }
                match via {
                    Via::TrySubmit => {
                        match with_opts_fn(&pool, fut, run_timeout, queue_timeout).try_submit() {
                            Ok(h) => self.handles.push((idx, h)),
                            Err(e) => {
                                assert!(e.is_full() || (e.is_closed() && self.closed));
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
                                let b = with_opts_fn(&pool, fut, run_timeout, queue_timeout);
                                let submitted = match wait {
                                    Some(w) => b.submit_timeout(w).await,
                                    None => b.submit().await,
                                };
                                match submitted {
                                    Ok(h) => (idx, Some(h.await), false),
                                    Err(_) => (idx, None, true),
                                }
                            }),
                        ));
                    }
                    Via::Run => {
                        self.waiters.push((
                            idx,
                            tokio::spawn(async move {
                                (
                                    idx,
                                    Some(
                                        with_opts_fn(&pool, fut, run_timeout, queue_timeout)
                                            .run()
                                            .await,
                                    ),
                                    false,
                                )
                            }),
                        ));
                    }
                    Via::Spawn => {
                        self.waiters.push((
                            idx,
                            tokio::spawn(async move {
                                let refused = with_opts_fn(&pool, fut, run_timeout, queue_timeout)
                                    .spawn()
                                    .await
                                    .is_err();
                                (idx, None, refused)
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
                self.world.target.store(n as usize, SeqCst);
                self.pool.resize(n as usize);
            }
            Op::Close => {
                self.closed = true;
                self.pool.close();
            }
            Op::ShutdownTimeout(ms) => {
                self.closed = true;
                // Waits (in paused time) for the drain, then cancels the rest.
                self.world
                    .target
                    .store(self.world.target.load(SeqCst).max(1), SeqCst);
                self.pool.resize(self.world.target.load(SeqCst));
                let report = self.pool.shutdown_timeout(millis(ms)).await;
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
            _ => {}
        }
    }

    fn check_step(&self, op: &Op) {
        if let Some(v) = self.world.violation.lock().unwrap().as_ref() {
            panic!("limit broken after {op:?}: {v}");
        }
        let s = self.pool.stats();
        assert!(s.busy <= s.workers, "after {op:?}: {s:?}");
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
    }

    fn check_job(&self, idx: usize) {
        let j = &self.jobs[idx];
        let started = *j.log.started.lock().unwrap();
        let dropped = *j.log.dropped.lock().unwrap();
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
}

static STEPS: AtomicU64 = AtomicU64::new(0);
static JOBS: AtomicU64 = AtomicU64::new(0);
static SEQUENCES: AtomicU64 = AtomicU64::new(0);

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

fn run_sequence(workers: usize, capacity: usize, ops: Vec<Op>) {
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
        let world = Arc::new(World::default());
        world.target.store(workers, SeqCst);
        let pool = Pool::builder()
            .workers(workers)
            .queue_capacity(capacity)
            .build()
            .unwrap();
        let mut run = Run {
            world: world.clone(),
            pool,
            jobs: Vec::new(),
            handles: Vec::new(),
            waiters: Vec::new(),
            aborted: false,
            closed: false,
        };
        for op in &ops {
            run.apply(op).await;
            settle().await;
            run.check_step(op);
            STEPS.fetch_add(1, SeqCst);
        }
        // Wind down: make sure something can run, drain for a while, cancel the rest.
        let target = world.target.load(SeqCst).max(1);
        world.target.store(target, SeqCst);
        run.pool.resize(target);
        run.closed = true;
        if run
            .pool
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
        for idx in 0..run.jobs.len() {
            run.check_job(idx);
        }
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
        JOBS.fetch_add(run.jobs.len() as u64, SeqCst);
        SEQUENCES.fetch_add(1, SeqCst);
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
    let strategy = (1usize..4, 0usize..4, proptest::collection::vec(op(), 1..40));
    // A failure panics with the shrunk, minimal sequence of operations.
    if let Err(e) = runner.run(&strategy, |(workers, capacity, ops)| {
        run_sequence(workers, capacity, ops);
        Ok(())
    }) {
        panic!("{e}");
    }
    let (sequences, steps, jobs) = (
        SEQUENCES.load(SeqCst),
        STEPS.load(SeqCst),
        JOBS.load(SeqCst),
    );
    // The counts quoted in RELIABILITY.md.
    eprintln!("model: {sequences} sequences, {steps} steps, {jobs} jobs");
    assert!(
        sequences >= u64::from(cases) && steps >= sequences && jobs > 0,
        "every generated sequence must run to its final checks"
    );
}
