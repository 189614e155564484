//! Per-job overhead: taskgate against the usual ways to bound concurrency.
//!
//! Every approach runs the same N jobs with at most K running at once, on a
//! multi-thread runtime, in one criterion group so the report shows them side by side.
//! Run: `cargo bench --bench overhead`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

const N: usize = 10_000;
const K: usize = 64;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[inline(never)]
async fn noop(i: usize) -> usize {
    std::hint::black_box(i)
}

async fn taskgate_submit(n: usize) -> usize {
    let pool = taskgate::Pool::builder().workers(K).build().unwrap();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        handles.push(pool.submit(noop(i)).await.unwrap());
    }
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    sum
}

type BoxJob = (
    Pin<Box<dyn Future<Output = usize> + Send>>,
    oneshot::Sender<usize>,
);

/// The floor: K worker tasks sharing one receiver, a oneshot per job.
async fn hand_rolled(n: usize) -> usize {
    let (tx, rx) = mpsc::channel::<BoxJob>(K * 10);
    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::new();
    for _ in 0..K {
        let rx = rx.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let job = rx.lock().await.recv().await;
                let Some((fut, reply)) = job else { break };
                let _ = reply.send(fut.await);
            }
        }));
    }
    let mut rxs = Vec::with_capacity(n);
    for i in 0..n {
        let (otx, orx) = oneshot::channel();
        tx.send((Box::pin(noop(i)), otx)).await.ok().unwrap();
        rxs.push(orx);
    }
    let mut sum = 0;
    for r in rxs {
        sum += r.await.unwrap();
    }
    drop(tx);
    for w in workers {
        w.await.unwrap();
    }
    sum
}

async fn semaphore_spawn(n: usize) -> usize {
    let sem = Arc::new(Semaphore::new(K));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        handles.push(tokio::spawn(async move {
            let r = noop(i).await;
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

async fn spawn_all(n: usize) -> usize {
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        handles.push(tokio::spawn(noop(i)));
    }
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    sum
}

/// Runs `f` as a task on the runtime, as a caller inside a service would.
fn drive<Fut>(rt: &tokio::runtime::Runtime, f: Fut) -> usize
where
    Fut: Future<Output = usize> + Send + 'static,
{
    rt.block_on(async { tokio::spawn(f).await.unwrap() })
}

fn overhead(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("noop");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("taskgate_submit", |b| {
        b.iter(|| drive(&rt, taskgate_submit(N)))
    });
    g.bench_function("hand_rolled_floor", |b| {
        b.iter(|| drive(&rt, hand_rolled(N)))
    });
    g.bench_function("semaphore_spawn", |b| {
        b.iter(|| drive(&rt, semaphore_spawn(N)))
    });
    g.bench_function("tokio_spawn", |b| b.iter(|| drive(&rt, spawn_all(N))));
    g.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
