//! Semantic 3: when the caller goes away, a queued job never starts and a running
//! job is dropped, its slot freed before the worker takes another job.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use taskgate::JobError;
use tokio::time::advance;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn dropped_queued_job_never_starts_and_frees_its_slot_at_once() {
    let pool = pool(1, 1);
    let g = Gauge::default();
    let running = pool.submit(held(&g, 10 * MS)).await.unwrap();
    settle().await;
    let (flag, dropped) = drop_flag();
    let queued = pool
        .submit(async move {
            let _f = flag;
            unreachable!("a cancelled queued job must never start");
        })
        .await
        .unwrap();
    // The queue (capacity 1) is full.
    assert!(pool.try_submit(async {}).unwrap_err().is_full());
    drop(queued);
    // Dropped at once: its future is gone and its queue slot is free.
    assert!(dropped.load(Ordering::SeqCst));
    let s = pool.stats();
    assert_eq!((s.queued, s.cancelled), (0, 1));
    pool.try_submit(async {}).unwrap().detach();
    assert_eq!(running.await, Ok(()));
    pool.shutdown().await;
    assert_eq!(g.started(), 1);
    let s = pool.stats();
    assert_eq!((s.completed, s.cancelled), (2, 1));
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn dropped_running_job_is_dropped_before_the_worker_takes_another() {
    let pool = pool(1, 10);
    let (job, dropped) = pending_job();
    let running = pool.submit(job).await.unwrap();
    let dropped2 = dropped.clone();
    let next = pool
        .submit(async move { dropped2.load(Ordering::SeqCst) })
        .await
        .unwrap();
    settle().await;
    assert_eq!(pool.stats().busy, 1);
    assert!(!dropped.load(Ordering::SeqCst));
    drop(running);
    // The next job observes that the cancelled one's future was already dropped.
    assert_eq!(next.await, Ok(true));
    let s = pool.stats();
    assert_eq!((s.cancelled, s.completed, s.busy), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_run_future_cancels_the_job() {
    let pool = pool(1, 10);
    let (flag, dropped) = drop_flag();
    let run = pool.run(async move {
        let _f = flag;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    // Poll it for a while, then give up on it.
    assert!(tokio::time::timeout(10 * MS, run).await.is_err());
    settle().await;
    assert!(dropped.load(Ordering::SeqCst));
    let s = pool.stats();
    assert_eq!((s.busy, s.cancelled), (0, 1));
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn cancel_resolves_the_handle_as_cancelled() {
    let pool = pool(1, 10);
    let a = pool.submit(std::future::pending::<u8>()).await.unwrap();
    let b = pool.submit(async { 1u8 }).await.unwrap();
    settle().await;
    a.cancel();
    b.cancel(); // queued
    b.cancel(); // twice is harmless
    assert_eq!(a.await, Err(JobError::Cancelled));
    assert_eq!(b.await, Err(JobError::Cancelled));
    let s = pool.stats();
    assert_eq!((s.cancelled, s.completed), (2, 0));
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn cancel_after_completion_keeps_the_result() {
    let pool = pool(1, 10);
    let h = pool.submit(async { 9 }).await.unwrap();
    settle().await;
    assert!(h.is_finished());
    h.cancel();
    assert_eq!(h.await, Ok(9));
    assert_eq!(pool.stats().cancelled, 0);
}

#[tokio::test(start_paused = true)]
async fn detach_lets_the_job_finish() {
    let pool = pool(1, 10);
    let g = Gauge::default();
    pool.submit(held(&g, 10 * MS)).await.unwrap().detach();
    settle().await;
    advance(10 * MS).await;
    pool.shutdown().await;
    assert_eq!(g.started(), 1);
    let s = pool.stats();
    assert_eq!((s.completed, s.cancelled), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn cancel_storm_while_workers_are_busy() {
    let pool = pool(4, 10_000);
    let g = Gauge::default();
    let busy: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(pool.submit(held(&g, 10 * MS)).await.unwrap());
        }
        v
    };
    settle().await;
    let mut queued = Vec::new();
    for _ in 0..5_000 {
        queued.push(pool.submit(held(&g, MS)).await.unwrap());
    }
    assert_eq!(pool.stats().queued, 5_000);
    drop(queued);
    let s = pool.stats();
    assert_eq!((s.queued, s.cancelled), (0, 5_000));
    for h in busy {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.started(), 4);
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn a_job_cancelled_while_it_waits_in_a_select_is_not_lost() {
    // Polling a handle in select! and then dropping only the select keeps the job.
    let pool = pool(1, 10);
    let mut h = pool
        .submit(async {
            tokio::time::sleep(10 * MS).await;
            3
        })
        .await
        .unwrap();
    tokio::select! {
        _ = &mut h => unreachable!(),
        _ = tokio::time::sleep(MS) => {}
    }
    assert_eq!(h.await, Ok(3));
}
