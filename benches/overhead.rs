//! Per-job overhead: taskgate against the usual ways to bound concurrency.
//!
//! Every approach runs the same N jobs with at most K running at once on a
//! multi-thread runtime (2 worker threads), driven from a task on that runtime. Each
//! workload is one criterion group holding every approach, so one run gives the
//! ratios side by side. Run: `cargo bench --bench overhead`.
//!
//! `buffer_unordered` polls all its futures on the one task that drives the
//! stream: it has no parallelism, which is why it is cheap for trivial jobs.
//!
//! The `keyed/noop` group compares the scheduler's paths in one run: unkeyed, one
//! hot key, many keys, a pool rate and key limits (none of which binds), next to
//! the floor. Run: `cargo bench --bench overhead -- keyed/`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use taskgate::{Key, KeyLimits, Rate};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tower::{Service, ServiceBuilder, ServiceExt};

const N: usize = 100_000;
const K: usize = 64;

#[path = "support/mod.rs"]
mod support;
use support::{BoxJob, Load, job, mutex_mpsc_workers};

fn pool() -> taskgate::Pool {
    taskgate::Pool::builder().workers(K).build().unwrap()
}

async fn taskgate_submit(load: Load) -> usize {
    submit_and_await(pool(), load).await
}

/// Submits every job, then awaits every handle.
async fn submit_and_await(pool: taskgate::Pool, load: Load) -> usize {
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        handles.push(pool.submit(job(load, i)).await.unwrap());
    }
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    sum
}

async fn taskgate_spawn(load: Load) -> usize {
    let pool = pool();
    for i in 0..N {
        pool.spawn(job(load, i)).await.unwrap();
    }
    pool.shutdown().await;
    pool.stats().completed as usize
}

async fn taskgate_run_k_callers(load: Load) -> usize {
    let pool = pool();
    let mut callers = Vec::with_capacity(K);
    for c in 0..K {
        let pool = pool.clone();
        callers.push(tokio::spawn(async move {
            let mut sum = 0;
            for i in (c..N).step_by(K) {
                sum += pool.run(job(load, i)).await.unwrap();
            }
            sum
        }));
    }
    let mut sum = 0;
    for c in callers {
        sum += c.await.unwrap();
    }
    sum
}

async fn taskgate_with_timeout(load: Load) -> usize {
    let pool = taskgate::Pool::builder()
        .workers(K)
        .job_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    submit_and_await(pool, load).await
}

async fn tokio_spawn(load: Load) -> usize {
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        handles.push(tokio::spawn(job(load, i)));
    }
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    sum
}

async fn semaphore_spawn(load: Load) -> usize {
    let sem = Arc::new(Semaphore::new(K));
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        let permit = sem.clone().acquire_owned().await.unwrap();
        handles.push(tokio::spawn(async move {
            let r = job(load, i).await;
            drop(permit);
            r
        }));
    }
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    sum
}

async fn joinset(load: Load) -> usize {
    let mut set = tokio::task::JoinSet::new();
    let mut sum = 0;
    for i in 0..N {
        if set.len() >= K {
            sum += set.join_next().await.unwrap().unwrap();
        }
        set.spawn(job(load, i));
    }
    while let Some(r) = set.join_next().await {
        sum += r.unwrap();
    }
    sum
}

async fn buffer_unordered(load: Load) -> usize {
    futures::stream::iter(0..N)
        .map(|i| job(load, i))
        .buffer_unordered(K)
        .fold(0, |a, b| async move { a + b })
        .await
}

async fn tower_buffer_limit(load: Load) -> usize {
    let svc = ServiceBuilder::new()
        .buffer(1024)
        .concurrency_limit(K)
        .service(tower::service_fn(move |i: usize| async move {
            Ok::<_, std::convert::Infallible>(job(load, i).await)
        }));
    let mut callers = Vec::with_capacity(K);
    for c in 0..K {
        let mut svc = svc.clone();
        callers.push(tokio::spawn(async move {
            let mut sum = 0;
            for i in (c..N).step_by(K) {
                sum += svc.ready().await.unwrap().call(i).await.unwrap();
            }
            sum
        }));
    }
    let mut sum = 0;
    for c in callers {
        sum += c.await.unwrap();
    }
    sum
}

/// The floor: K worker tasks sharing one receiver, a oneshot per job, no
/// cancellation, timeouts or stats.
async fn hand_rolled(load: Load) -> usize {
    let (tx, rx) = mpsc::channel::<BoxJob>(K * 10);
    let workers = mutex_mpsc_workers(rx, K);
    let mut replies = Vec::with_capacity(N);
    for i in 0..N {
        let (otx, orx) = oneshot::channel();
        if tx.send((Box::pin(job(load, i)), otx)).await.is_err() {
            unreachable!("workers outlive the sender");
        }
        replies.push(orx);
    }
    let mut sum = 0;
    for r in replies {
        sum += r.await.unwrap();
    }
    drop(tx);
    for w in workers {
        w.await.unwrap();
    }
    sum
}

/// How many distinct keys the many-keys rows cycle through.
const KEYS: usize = 1024;

/// `KEYS` keys, built once so that string formatting and allocation are not
/// measured: cloning one is a reference-count increment.
fn many_keys() -> &'static [Key] {
    static KEYS_CELL: OnceLock<Vec<Key>> = OnceLock::new();
    KEYS_CELL.get_or_init(|| (0..KEYS).map(|i| Key::from(format!("key-{i}"))).collect())
}

/// A rate that never binds here: one start per nanosecond (`interval()` is 1 ns),
/// burst 1. It would refuse a start only if two starts read the clock within the
/// same nanosecond; the scheduler reads it once per start, under the pool lock.
const NEVER_BINDING: Rate = Rate::per_second(u32::MAX);

/// Key limits that never bind: a concurrency cap above the pool's K workers (and
/// optionally the never-binding rate).
fn loose_key_limits(rate: bool) -> KeyLimits {
    let l = KeyLimits::default().concurrency(2 * K);
    if rate { l.rate(NEVER_BINDING) } else { l }
}

/// As `submit_and_await`, with every job tagged by `key(i)`.
async fn submit_keyed(pool: taskgate::Pool, load: Load, key: impl Fn(usize) -> Key) -> usize {
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        let h = pool.job(job(load, i)).key(key(i)).submit().await;
        handles.push(h.unwrap());
    }
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    sum
}

/// (b) One hot key, default key limits (none).
async fn keyed_hot(load: Load) -> usize {
    let hot = Key::from("hot");
    submit_keyed(pool(), load, move |_| hot.clone()).await
}

/// (c) Key `i % KEYS`, default key limits (none).
async fn keyed_many(load: Load) -> usize {
    let keys = many_keys();
    submit_keyed(pool(), load, |i| keys[i % KEYS].clone()).await
}

/// (d) Unkeyed, with a pool rate limit that never binds.
async fn pool_rate(load: Load) -> usize {
    let pool = taskgate::Pool::builder()
        .workers(K)
        .rate_limit(NEVER_BINDING)
        .build()
        .unwrap();
    submit_and_await(pool, load).await
}

/// (d2) As (d), with a burst so large that the rate provably never binds.
async fn pool_rate_burst(load: Load) -> usize {
    let pool = taskgate::Pool::builder()
        .workers(K)
        .rate_limit(NEVER_BINDING.burst(u32::MAX))
        .build()
        .unwrap();
    submit_and_await(pool, load).await
}

/// (e) One hot key with a key concurrency cap of 2K (never reached).
async fn keyed_hot_limits(load: Load) -> usize {
    let pool = taskgate::Pool::builder()
        .workers(K)
        .key_limits(loose_key_limits(false))
        .build()
        .unwrap();
    let hot = Key::from("hot");
    submit_keyed(pool, load, move |_| hot.clone()).await
}

/// (g) The pool's limit adaptive, pinned at `K` (`min` = `initial` = `max`), so it
/// never binds but does all its per-job work (issue 14: at most 10 % over (a)).
async fn pool_adaptive(load: Load) -> usize {
    let pool = taskgate::Pool::builder()
        .workers(K)
        .adaptive(taskgate::Adaptive::aimd().initial(K).min(K))
        .build()
        .unwrap();
    submit_and_await(pool, load).await
}

/// (f) Every limit at once, none binding: key `i % KEYS` with a key concurrency
/// cap and a key rate, and a pool rate.
async fn keyed_many_all_limits(load: Load) -> usize {
    let pool = taskgate::Pool::builder()
        .workers(K)
        .rate_limit(NEVER_BINDING)
        .key_limits(loose_key_limits(true))
        .build()
        .unwrap();
    let keys = many_keys();
    submit_keyed(pool, load, |i| keys[i % KEYS].clone()).await
}

type Approach = fn(Load) -> Pin<Box<dyn Future<Output = usize> + Send>>;

fn approaches() -> Vec<(&'static str, Approach)> {
    vec![
        ("taskgate_submit", |l| Box::pin(taskgate_submit(l))),
        ("taskgate_spawn", |l| Box::pin(taskgate_spawn(l))),
        ("taskgate_run_k_callers", |l| {
            Box::pin(taskgate_run_k_callers(l))
        }),
        ("taskgate_job_timeout", |l| {
            Box::pin(taskgate_with_timeout(l))
        }),
        ("hand_rolled_floor", |l| Box::pin(hand_rolled(l))),
        ("tokio_spawn", |l| Box::pin(tokio_spawn(l))),
        ("semaphore_spawn", |l| Box::pin(semaphore_spawn(l))),
        ("joinset", |l| Box::pin(joinset(l))),
        ("buffer_unordered", |l| Box::pin(buffer_unordered(l))),
        ("tower_buffer_limit", |l| Box::pin(tower_buffer_limit(l))),
    ]
}

/// The scheduler's paths, against the unkeyed path and the floor.
fn keyed_approaches() -> Vec<(&'static str, Approach)> {
    vec![
        ("a_unkeyed_submit", |l| Box::pin(taskgate_submit(l))),
        ("b_one_hot_key", |l| Box::pin(keyed_hot(l))),
        ("c_1024_keys", |l| Box::pin(keyed_many(l))),
        ("d_pool_rate", |l| Box::pin(pool_rate(l))),
        ("d2_pool_rate_huge_burst", |l| Box::pin(pool_rate_burst(l))),
        ("e_hot_key_limits", |l| Box::pin(keyed_hot_limits(l))),
        ("f_1024_keys_all_limits", |l| {
            Box::pin(keyed_many_all_limits(l))
        }),
        ("g_pool_adaptive", |l| Box::pin(pool_adaptive(l))),
        ("hand_rolled_floor", |l| Box::pin(hand_rolled(l))),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn overhead(c: &mut Criterion) {
    let rt = runtime();
    for load in [Load::Noop, Load::Yield, Load::Cpu] {
        let mut g = c.benchmark_group(format!("overhead/{}", load.name()));
        g.throughput(Throughput::Elements(N as u64));
        g.sample_size(10);
        g.warm_up_time(Duration::from_secs(1));
        g.measurement_time(Duration::from_secs(3));
        for (name, f) in approaches() {
            g.bench_with_input(BenchmarkId::from_parameter(name), &load, |b, &load| {
                // Driven from a task on the runtime, as a caller inside a service is.
                b.iter(|| rt.block_on(async move { tokio::spawn(f(load)).await.unwrap() }))
            });
        }
        g.finish();
    }
}

fn keyed(c: &mut Criterion) {
    let rt = runtime();
    many_keys();
    let load = Load::Noop;
    let mut g = c.benchmark_group(format!("keyed/{}", load.name()));
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    for (name, f) in keyed_approaches() {
        g.bench_with_input(BenchmarkId::from_parameter(name), &load, |b, &load| {
            b.iter(|| rt.block_on(async move { tokio::spawn(f(load)).await.unwrap() }))
        });
    }
    g.finish();
}

criterion_group!(benches, overhead, keyed);
criterion_main!(benches);
