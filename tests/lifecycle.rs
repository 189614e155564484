//! Semantics 6, 7 and 8: close, shutdown, drop of the pool; abort and
//! shutdown_timeout; building errors.

mod support;

use std::time::Duration;

use support::*;
use taskgate::{BuildError, JobError, Pool, SubmitError, TrySubmitError};
use tokio::time::advance;

const MS: Duration = Duration::from_millis(1);

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(start_paused = true)]
async fn close_refuses_new_jobs_and_hands_them_back() {
    let pool = pool(1, 10);
    pool.close();
    assert!(pool.is_closed());
    match pool.submit(async { 1 }).await {
        Err(SubmitError::Closed(f)) => assert_eq!(f.await, 1),
        other => panic!("{other:?}"),
    }
    match pool.try_submit(async { 2 }) {
        Err(TrySubmitError::Closed(f)) => assert_eq!(f.await, 2),
        other => panic!("{other:?}"),
    }
    assert!(pool.spawn(async {}).await.unwrap_err().is_closed());
    assert_eq!(pool.run(async { 3 }).await, Err(JobError::Closed));
    let f = pool.submit_blocking(|| 4).await.unwrap_err().into_inner();
    assert_eq!(f(), 4);
    assert_eq!(pool.stats().submitted, 0);
    pool.close(); // twice is harmless
}

#[tokio::test(start_paused = true)]
async fn close_wakes_waiting_submitters_with_their_job_and_keeps_queued_jobs() {
    let pool = pool(1, 1);
    let g = Gauge::default();
    let running = pool.submit(held(&g, 10 * MS)).await.unwrap();
    settle().await;
    let queued = pool.submit(held(&g, MS)).await.unwrap();
    let mut waiters = Vec::new();
    for i in 0..5u32 {
        let p = pool.clone();
        waiters.push(tokio::spawn(async move {
            match p.submit(async move { i }).await {
                Err(SubmitError::Closed(f)) => f.await,
                Ok(_) => panic!("accepted after close"),
                Err(e) => panic!("{e}"),
            }
        }));
    }
    settle().await;
    assert!(waiters.iter().all(|w| !w.is_finished()));
    pool.close();
    for (i, w) in waiters.into_iter().enumerate() {
        assert_eq!(
            w.await.unwrap() as usize,
            i,
            "the refused job comes back whole"
        );
    }
    // Jobs accepted before close still run.
    assert_eq!(running.await, Ok(()));
    assert_eq!(queued.await, Ok(()));
    assert_eq!(g.started(), 2);
    assert_eq!(pool.stats().submitted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_atomic_under_concurrent_submitters() {
    for _ in 0..20 {
        let pool = pool(2, 4);
        let mut submitters = Vec::new();
        for _ in 0..8 {
            let p = pool.clone();
            submitters.push(tokio::spawn(async move {
                let mut accepted = 0u64;
                for _ in 0..200 {
                    match p.submit(async { tokio::task::yield_now().await }).await {
                        Ok(h) => {
                            h.detach();
                            accepted += 1;
                        }
                        Err(e) => {
                            assert!(e.is_closed());
                            // Once one submit saw the close, all later ones do.
                            assert!(p.is_closed());
                            break;
                        }
                    }
                }
                accepted
            }));
        }
        tokio::task::yield_now().await;
        pool.close();
        let after_close = pool.stats().submitted;
        let mut accepted = 0;
        for s in submitters {
            accepted += s.await.unwrap();
        }
        // Nothing was accepted after close() returned.
        assert_eq!(pool.stats().submitted, after_close);
        assert_eq!(accepted, after_close);
        pool.shutdown().await;
        assert_eq!(pool.stats().completed, accepted);
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_every_job_and_every_worker() {
    let base = alive_tasks();
    let pool = pool(4, 100);
    let g = Gauge::default();
    for i in 0..20u32 {
        pool.spawn(held(&g, (1 + i % 5) * MS)).await.unwrap();
    }
    settle().await;
    assert!(alive_tasks() > base);
    pool.shutdown().await;
    assert_eq!(g.started(), 20);
    assert_eq!(g.now(), 0);
    assert_eq!(pool.stats().completed, 20);
    settle().await;
    assert_eq!(alive_tasks(), base, "worker tasks are gone");
    assert!(pool.is_closed());
}

#[tokio::test(start_paused = true)]
async fn shutdown_of_a_paused_pool_waits_for_resize() {
    let pool = pool(1, 10);
    pool.resize(0);
    let h = pool.submit(async { 1 }).await.unwrap();
    let p = pool.clone();
    let shutdown = tokio::spawn(async move { p.shutdown().await });
    settle().await;
    assert!(!shutdown.is_finished());
    pool.resize(1);
    shutdown.await.unwrap();
    assert_eq!(h.await, Ok(1));
}

#[tokio::test(start_paused = true)]
async fn dropping_every_pool_handle_closes_but_runs_accepted_jobs() {
    let base = alive_tasks();
    let pool = pool(2, 10);
    let g = Gauge::default();
    let clone = pool.clone();
    let mut handles = Vec::new();
    for _ in 0..6 {
        handles.push(clone.submit(held(&g, 10 * MS)).await.unwrap());
    }
    pool.spawn(held(&g, 10 * MS)).await.unwrap();
    drop(pool);
    drop(clone);
    for h in handles {
        assert_eq!(h.await, Ok(()), "accepted jobs still run");
    }
    settle().await;
    advance(10 * MS).await;
    settle().await;
    assert_eq!(g.started(), 7);
    assert_eq!(alive_tasks(), base, "workers exit once the queue is empty");
}

#[tokio::test(start_paused = true)]
async fn abort_cancels_queued_and_running_jobs_now() {
    let pool = pool(2, 10);
    let (job, dropped) = pending_job();
    let running = pool.submit(job).await.unwrap();
    let running2 = pool.submit(std::future::pending::<()>()).await.unwrap();
    let queued = pool.submit(async {}).await.unwrap();
    pool.spawn(std::future::pending::<()>()).await.unwrap();
    settle().await;
    pool.abort();
    assert!(pool.is_closed());
    assert_eq!(queued.await, Err(JobError::Cancelled));
    assert_eq!(running.await, Err(JobError::Cancelled));
    assert_eq!(running2.await, Err(JobError::Cancelled));
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    pool.shutdown().await;
    let s = pool.stats();
    assert_eq!((s.cancelled, s.submitted), (4, 4));
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_drains_then_cancels_and_reports() {
    let base = alive_tasks();
    let pool = pool(2, 10);
    let g = Gauge::default();
    pool.spawn(held(&g, 10 * MS)).await.unwrap();
    pool.spawn(held(&g, 20 * MS)).await.unwrap();
    pool.spawn(held(&g, 30 * MS)).await.unwrap(); // starts at 10ms, ends at 40ms
    pool.spawn(std::future::pending::<()>()).await.unwrap(); // starts at 20ms
    pool.spawn(async {}).await.unwrap(); // never gets a worker before the deadline
    let report = pool.shutdown_timeout(25 * MS).await;
    assert_eq!((report.completed, report.cancelled), (2, 3));
    assert_eq!(alive_tasks(), base);
    let s = pool.stats();
    assert_eq!((s.completed, s.cancelled), (2, 3));
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn shutdown_timeout_returns_early_when_drained() {
    let pool = pool(2, 10);
    pool.spawn(tokio::time::sleep(5 * MS)).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let report = pool.shutdown_timeout(Duration::from_secs(60)).await;
    assert_eq!(tokio::time::Instant::now() - t0, 5 * MS);
    assert_eq!((report.completed, report.cancelled), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn submitters_waiting_on_a_full_queue_wake_on_abort_and_drop() {
    let pool = pool(1, 0);
    pool.spawn(std::future::pending::<()>()).await.unwrap();
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.submit(async { 5 }).await.map(|h| h.detach()) });
    settle().await;
    pool.abort();
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!(err.into_inner().await, 5);

    let pool = self::pool(1, 0);
    pool.spawn(std::future::pending::<()>()).await.unwrap();
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.submit(async { 6 }).await.map(|h| h.detach()) });
    settle().await;
    drop(pool); // the waiter's own clone keeps the pool open
    settle().await;
    assert!(!waiter.is_finished());
    waiter.abort();
}

#[test]
fn build_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Pool::builder().build().unwrap_err();
    assert_eq!(err, BuildError::NoRuntime);
    assert!(err.to_string().starts_with("no tokio runtime"));
}

#[tokio::test]
async fn zero_workers_is_an_error() {
    let err = Pool::builder().workers(0).build().unwrap_err();
    assert_eq!(err, BuildError::ZeroWorkers);
    assert!(err.to_string().contains("resize(0)"));
}

#[tokio::test]
#[should_panic(expected = "taskgate::Pool::new(0): workers must be at least 1")]
async fn pool_new_panics_with_a_clear_message() {
    let _ = Pool::new(0);
}

#[tokio::test]
async fn defaults() {
    let pool = Pool::builder().build().unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    let s = pool.stats();
    assert_eq!(s.workers, cores * 8);
    assert_eq!(pool.name(), "taskgate");
    // The default queue holds workers × 10 waiting jobs beyond the free workers,
    // and at least 256.
    pool.resize(0);
    assert_eq!(fill(&pool), (cores * 8 * 10).max(256));
    pool.abort();
    // A small pool gets the floor.
    let pool = Pool::builder().workers(2).build().unwrap();
    pool.resize(0);
    assert_eq!(fill(&pool), 256);
    pool.abort();
    let pool = Pool::builder().workers(100).build().unwrap();
    pool.resize(0);
    assert_eq!(fill(&pool), 1000);
    pool.abort();
}

/// Submits until the queue refuses; returns how many were accepted.
fn fill(pool: &Pool) -> usize {
    let mut n = 0;
    while let Ok(h) = pool.try_submit(async {}) {
        h.detach();
        n += 1;
    }
    n
}

#[test]
fn runtime_shutdown_resolves_every_awaited_handle() {
    // A pool on a runtime that is dropped while jobs are queued and running.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pool, running, queued) = rt.block_on(async {
        let pool = pool(1, 10);
        let running = pool.submit(std::future::pending::<u8>()).await.unwrap();
        let queued = pool.submit(async { 1u8 }).await.unwrap();
        settle().await;
        (pool, running, queued)
    });
    drop(rt);
    // Awaited from another runtime, both handles resolve.
    let other = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    other.block_on(async {
        assert_eq!(running.await, Err(JobError::Cancelled));
        assert_eq!(queued.await, Err(JobError::Cancelled));
    });
    assert!(pool.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_racing_a_submit_from_another_thread_returns() {
    // A submit that decided to spawn the first worker, racing a shutdown that has
    // just started: shutdown must still see the worker and wait for it.
    for _ in 0..300 {
        let pool = pool(1, 10);
        let p = pool.clone();
        let submitter = std::thread::spawn(move || {
            if let Ok(h) = p.try_submit(async {}) {
                h.detach();
            }
        });
        let done = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
        submitter.join().unwrap();
        assert!(done.is_ok(), "shutdown hung");
        assert_accounted(&pool);
    }
}

#[test]
fn a_runtime_without_timers_is_a_build_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt.block_on(async { Pool::builder().workers(1).build().unwrap_err() });
    assert_eq!(err, BuildError::NoTimer);
    assert!(err.to_string().contains("enable_time()"));
}

#[tokio::test(start_paused = true)]
async fn shutdown_does_not_wait_for_a_stale_queue_deadline() {
    // A job with a queue timeout is taken by a worker after close; the reaper must
    // not keep shutdown waiting until that deadline (or forever).
    let pool = pool(1, 10);
    let first = pool.submit(tokio::time::sleep(10 * MS)).await.unwrap();
    let timed = pool
        .job(async {})
        .queue_timeout(Duration::from_secs(3600))
        .submit()
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    pool.shutdown().await;
    assert_eq!(tokio::time::Instant::now() - t0, 10 * MS);
    assert_eq!(first.await, Ok(()));
    assert_eq!(timed.await, Ok(()));
}

#[test]
fn a_worker_lost_mid_job_counts_the_job() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pool, running) = rt.block_on(async {
        let pool = pool(1, 10);
        let running = pool.submit(std::future::pending::<u8>()).await.unwrap();
        settle().await;
        (pool, running)
    });
    drop(rt);
    let other = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(other.block_on(running), Err(JobError::Cancelled));
    let s = pool.stats();
    assert_eq!((s.submitted, s.cancelled, s.busy), (1, 1, 0));
}
