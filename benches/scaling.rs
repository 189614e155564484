//! Scaling with runtime threads: taskgate against hand-rolled pools and the usual
//! ways to bound concurrency, on multi-thread runtimes of 1, 2, 4, 8 and 16
//! worker threads.
//!
//! Two shapes, each with at most K = 64 jobs running at once and N = 20 000 jobs per
//! iteration:
//!
//! - `submit`: one producer task submits every job and awaits every result, holding
//!   at most `WINDOW` result handles: when the window is full it awaits the oldest
//!   before submitting the next. The window is larger than K plus the queue, so the
//!   pool's queue bound, not the window, is what makes the producer wait.
//! - `callers`: `CALLERS` = 256 concurrent tasks each call and await one job at a
//!   time (`pool.run`) until N jobs have run in total (caller `c` runs jobs
//!   `c, c + 256, ...`).
//!
//! Two workloads, as in `benches/overhead.rs`: `noop` (returns at once) and `yield`
//! (one `yield_now`). Every approach builds its pool, channels or semaphore inside
//! the iteration and stops its workers at the end (`Pool::shutdown`, or dropping
//! the sender and joining the worker tasks).
//!
//! Each (shape, workload, thread count) is one criterion group holding every
//! approach, named like `scaling/submit/noop/t2`, so one run gives the ratios side
//! by side. Run: `cargo bench --bench scaling`; pick thread counts with
//! `SCALING_THREADS=1,2,4` (default `1,2,4,8,16`). Draw the chart with
//! `cargo run --release --example scaling_chart`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Jobs per iteration.
const N: usize = 20_000;
/// Jobs running at once: the pools' workers, the semaphores' permits.
const K: usize = 64;
/// Queue capacity of taskgate and of the hand-rolled pools' channels.
const Q: usize = 4 * K;
/// Result handles the `submit` producer holds at most.
const WINDOW: usize = 1024;
/// Concurrent caller tasks in the `callers` shape.
const CALLERS: usize = 256;
/// Runtime worker threads measured when `SCALING_THREADS` is unset.
const DEFAULT_THREADS: [usize; 5] = [1, 2, 4, 8, 16];

#[path = "support/mod.rs"]
mod support;
use support::{BoxJob, Load, job, mutex_mpsc_workers};

// ---------------------------------------------------------------------------
// The two shapes, generic over the approach.
// ---------------------------------------------------------------------------

/// An approach in the `submit` shape: hand a job over, get something to await.
trait Submit {
    type Handle: Send;
    fn submit(&self, load: Load, i: usize) -> impl Future<Output = Self::Handle> + Send;
    fn wait(handle: Self::Handle) -> impl Future<Output = usize> + Send;
}

/// An approach in the `callers` shape: run one job and wait for its output.
trait Call: Clone + Send + Sync + 'static {
    fn call(&self, load: Load, i: usize) -> impl Future<Output = usize> + Send;
}

/// One producer: submits jobs `0..N`, holding at most `WINDOW` handles.
async fn produce<S: Submit + Sync>(s: &S, load: Load) -> usize {
    let mut window = VecDeque::with_capacity(WINDOW);
    let mut sum = 0;
    for i in 0..N {
        if window.len() == WINDOW {
            sum += S::wait(window.pop_front().unwrap()).await;
        }
        window.push_back(s.submit(load, i).await);
    }
    for h in window {
        sum += S::wait(h).await;
    }
    sum
}

/// `CALLERS` tasks, each calling one job at a time until `N` jobs have run.
async fn callers<C: Call>(c: &C, load: Load) -> usize {
    let mut tasks = Vec::with_capacity(CALLERS);
    for first in 0..CALLERS {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut sum = 0;
            for i in (first..N).step_by(CALLERS) {
                sum += c.call(load, i).await;
            }
            sum
        }));
    }
    let mut sum = 0;
    for t in tasks {
        sum += t.await.unwrap();
    }
    sum
}

// ---------------------------------------------------------------------------
// taskgate
// ---------------------------------------------------------------------------

fn pool() -> taskgate::Pool {
    taskgate::Pool::builder()
        .workers(K)
        .queue_capacity(Q)
        .build()
        .unwrap()
}

impl Submit for taskgate::Pool {
    type Handle = taskgate::JobHandle<usize>;
    async fn submit(&self, load: Load, i: usize) -> Self::Handle {
        taskgate::Pool::submit(self, job(load, i)).await.unwrap()
    }
    async fn wait(handle: Self::Handle) -> usize {
        handle.await.unwrap()
    }
}

impl Call for taskgate::Pool {
    async fn call(&self, load: Load, i: usize) -> usize {
        self.run(job(load, i)).await.unwrap()
    }
}

async fn taskgate_submit(load: Load) -> usize {
    let pool = pool();
    let sum = produce(&pool, load).await;
    pool.shutdown().await;
    sum
}

async fn taskgate_callers(load: Load) -> usize {
    let pool = pool();
    let sum = callers(&pool, load).await;
    pool.shutdown().await;
    sum
}

// ---------------------------------------------------------------------------
// Hand-rolled pools: K worker tasks on one bounded queue of capacity Q, a
// oneshot per job; no cancellation, timeouts or stats.
// ---------------------------------------------------------------------------

fn boxed(load: Load, i: usize) -> (BoxJob, oneshot::Receiver<usize>) {
    let (tx, rx) = oneshot::channel();
    ((Box::pin(job(load, i)), tx), rx)
}

/// The sending half of a hand-rolled pool.
trait Enqueue: Clone + Send + Sync + 'static {
    /// Starts K workers; returns the sender and the workers, which exit once every
    /// sender is dropped.
    fn start() -> (Self, Vec<JoinHandle<()>>);
    fn enqueue(&self, job: BoxJob) -> impl Future<Output = ()> + Send;
}

/// K workers on one `flume` MPMC receiver: every worker awaits `recv_async` on its
/// own clone of the receiver.
#[derive(Clone)]
struct Flume(flume::Sender<BoxJob>);

impl Enqueue for Flume {
    fn start() -> (Self, Vec<JoinHandle<()>>) {
        let (tx, rx) = flume::bounded::<BoxJob>(Q);
        let workers = (0..K)
            .map(|_| {
                let rx = rx.clone();
                tokio::spawn(async move {
                    while let Ok((fut, reply)) = rx.recv_async().await {
                        let _ = reply.send(fut.await);
                    }
                })
            })
            .collect();
        (Flume(tx), workers)
    }
    async fn enqueue(&self, job: BoxJob) {
        if self.0.send_async(job).await.is_err() {
            unreachable!("workers outlive the sender");
        }
    }
}

/// K workers sharing one `tokio::sync::mpsc` receiver behind a
/// `tokio::sync::Mutex`, as `hand_rolled` in `benches/overhead.rs`.
#[derive(Clone)]
struct MutexMpsc(mpsc::Sender<BoxJob>);

impl Enqueue for MutexMpsc {
    fn start() -> (Self, Vec<JoinHandle<()>>) {
        let (tx, rx) = mpsc::channel::<BoxJob>(Q);
        (MutexMpsc(tx), mutex_mpsc_workers(rx, K))
    }
    async fn enqueue(&self, job: BoxJob) {
        if self.0.send(job).await.is_err() {
            unreachable!("workers outlive the sender");
        }
    }
}

/// A hand-rolled pool over either queue.
#[derive(Clone)]
struct HandRolled<E>(E);

impl<E: Enqueue> Submit for HandRolled<E> {
    type Handle = oneshot::Receiver<usize>;
    async fn submit(&self, load: Load, i: usize) -> Self::Handle {
        let (job, reply) = boxed(load, i);
        self.0.enqueue(job).await;
        reply
    }
    async fn wait(handle: Self::Handle) -> usize {
        handle.await.unwrap()
    }
}

impl<E: Enqueue> Call for HandRolled<E> {
    async fn call(&self, load: Load, i: usize) -> usize {
        let (job, reply) = boxed(load, i);
        self.0.enqueue(job).await;
        reply.await.unwrap()
    }
}

/// Drops the last sender, then joins the workers.
async fn stop(tx: impl Enqueue, workers: Vec<JoinHandle<()>>) {
    drop(tx);
    for w in workers {
        w.await.unwrap();
    }
}

async fn hand_rolled_submit<E: Enqueue>(load: Load) -> usize {
    let (tx, workers) = E::start();
    let sum = produce(&HandRolled(tx.clone()), load).await;
    stop(tx, workers).await;
    sum
}

async fn hand_rolled_callers<E: Enqueue>(load: Load) -> usize {
    let (tx, workers) = E::start();
    let sum = callers(&HandRolled(tx.clone()), load).await;
    stop(tx, workers).await;
    sum
}

// ---------------------------------------------------------------------------
// Semaphore + tokio::spawn, Semaphore around the call, tokio::spawn everything.
// ---------------------------------------------------------------------------

/// `acquire_owned` a permit, then `tokio::spawn` the job holding it.
#[derive(Clone)]
struct SemaphoreSpawn(Arc<Semaphore>);

impl SemaphoreSpawn {
    async fn spawn(&self, load: Load, i: usize) -> JoinHandle<usize> {
        let permit = self.0.clone().acquire_owned().await.unwrap();
        tokio::spawn(async move {
            let r = job(load, i).await;
            drop(permit);
            r
        })
    }
}

impl Submit for SemaphoreSpawn {
    type Handle = JoinHandle<usize>;
    async fn submit(&self, load: Load, i: usize) -> Self::Handle {
        self.spawn(load, i).await
    }
    async fn wait(handle: Self::Handle) -> usize {
        handle.await.unwrap()
    }
}

impl Call for SemaphoreSpawn {
    async fn call(&self, load: Load, i: usize) -> usize {
        self.spawn(load, i).await.await.unwrap()
    }
}

/// The job runs in the calling task while it holds a permit: no task, no channel.
#[derive(Clone)]
struct SemaphoreInline(Arc<Semaphore>);

impl Call for SemaphoreInline {
    async fn call(&self, load: Load, i: usize) -> usize {
        let _permit = self.0.acquire().await.unwrap();
        job(load, i).await
    }
}

/// `tokio::spawn` every job, no limit but the producer's window of handles.
struct Spawn;

impl Submit for Spawn {
    type Handle = JoinHandle<usize>;
    async fn submit(&self, load: Load, i: usize) -> Self::Handle {
        tokio::spawn(job(load, i))
    }
    async fn wait(handle: Self::Handle) -> usize {
        handle.await.unwrap()
    }
}

fn semaphore() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(K))
}

// ---------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------

type Approach = fn(Load) -> Pin<Box<dyn Future<Output = usize> + Send>>;

fn submit_approaches() -> Vec<(&'static str, Approach)> {
    vec![
        ("taskgate", |l| Box::pin(taskgate_submit(l))),
        ("hand_rolled_flume", |l| {
            Box::pin(hand_rolled_submit::<Flume>(l))
        }),
        ("hand_rolled_mutex_mpsc", |l| {
            Box::pin(hand_rolled_submit::<MutexMpsc>(l))
        }),
        ("semaphore_spawn", |l| {
            Box::pin(async move { produce(&SemaphoreSpawn(semaphore()), l).await })
        }),
        ("tokio_spawn", |l| {
            Box::pin(async move { produce(&Spawn, l).await })
        }),
    ]
}

fn callers_approaches() -> Vec<(&'static str, Approach)> {
    vec![
        ("taskgate", |l| Box::pin(taskgate_callers(l))),
        ("hand_rolled_flume", |l| {
            Box::pin(hand_rolled_callers::<Flume>(l))
        }),
        ("hand_rolled_mutex_mpsc", |l| {
            Box::pin(hand_rolled_callers::<MutexMpsc>(l))
        }),
        ("semaphore_spawn", |l| {
            Box::pin(async move { callers(&SemaphoreSpawn(semaphore()), l).await })
        }),
        ("semaphore_inline", |l| {
            Box::pin(async move { callers(&SemaphoreInline(semaphore()), l).await })
        }),
    ]
}

/// `SCALING_THREADS=1,2,4` picks the runtime thread counts; unset or empty means all.
fn thread_counts() -> Vec<usize> {
    match std::env::var("SCALING_THREADS") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|t| {
                t.trim()
                    .parse()
                    .ok()
                    .filter(|&t: &usize| t > 0)
                    .unwrap_or_else(|| panic!("SCALING_THREADS: bad thread count {t:?}"))
            })
            .collect(),
        _ => DEFAULT_THREADS.to_vec(),
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

fn scaling(c: &mut Criterion) {
    let expected: usize = (0..N).sum();
    for threads in thread_counts() {
        let rt = runtime(threads);
        for (shape, approaches) in [
            ("submit", submit_approaches()),
            ("callers", callers_approaches()),
        ] {
            for load in [Load::Noop, Load::Yield] {
                let mut g =
                    c.benchmark_group(format!("scaling/{shape}/{}/t{threads}", load.name()));
                g.throughput(Throughput::Elements(N as u64));
                g.sample_size(10);
                g.warm_up_time(Duration::from_millis(500));
                g.measurement_time(Duration::from_secs(2));
                for (name, f) in &approaches {
                    let f = *f;
                    g.bench_with_input(BenchmarkId::from_parameter(name), &load, |b, &load| {
                        // Driven from a task on the runtime, as a caller inside a service is.
                        b.iter(|| {
                            let sum =
                                rt.block_on(async move { tokio::spawn(f(load)).await.unwrap() });
                            assert_eq!(sum, expected, "{name}: every job ran once");
                            sum
                        })
                    });
                }
                g.finish();
            }
        }
    }
}

criterion_group!(benches, scaling);
criterion_main!(benches);
