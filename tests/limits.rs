//! Semantics 1, 9 and 10: the worker limit holds, including across resizes;
//! resize(0) pauses; queue_capacity(0) works; blocking jobs share the limit.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use taskgate::{Pool, TrySubmitError};
use tokio::time::advance;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn at_most_workers_run_at_once() {
    let pool = pool(3, 100);
    let g = Gauge::default();
    let mut handles = Vec::new();
    for _ in 0..30 {
        handles.push(pool.submit(held(&g, 10 * MS)).await.unwrap());
    }
    settle().await;
    assert_eq!(g.now(), 3);
    assert_eq!(pool.stats().busy, 3);
    assert_eq!(pool.stats().queued, 27);
    for h in handles {
        h.await.unwrap();
        assert!(g.now() <= 3);
    }
    assert_eq!(g.peak(), 3);
    assert_eq!(g.started(), 30);
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn shrink_never_cancels_and_no_job_starts_while_busy_at_limit() {
    let pool = pool(4, 100);
    let g = Gauge::default();
    let mut handles = Vec::new();
    for _ in 0..12 {
        handles.push(pool.submit(held(&g, 10 * MS)).await.unwrap());
    }
    settle().await;
    assert_eq!(g.now(), 4);

    pool.resize(2);
    settle().await;
    // The four running jobs keep running; none is interrupted.
    assert_eq!(g.now(), 4);
    let s = pool.stats();
    assert_eq!(s.busy, 4);
    assert!(s.workers >= s.busy, "{s:?}");
    assert_eq!(g.started(), 4, "no job may start while busy >= workers");

    advance(10 * MS).await;
    settle().await;
    // The four finished; only two start in their place.
    assert_eq!(g.now(), 2);
    assert_eq!(g.started(), 6);
    assert_eq!(pool.stats().workers, 2);

    for h in handles {
        assert_eq!(h.await, Ok(()));
        assert!(g.now() <= 2);
    }
    assert_eq!(pool.stats().completed, 12);
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn grow_starts_queued_jobs_at_once() {
    let pool = pool(1, 100);
    let g = Gauge::default();
    let mut handles = Vec::new();
    for _ in 0..6 {
        handles.push(pool.submit(held(&g, 10 * MS)).await.unwrap());
    }
    settle().await;
    assert_eq!(g.now(), 1);
    pool.resize(4);
    settle().await;
    assert_eq!(g.now(), 4);
    assert_eq!(pool.stats().workers, 4);
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(g.peak(), 4);
}

#[tokio::test(start_paused = true)]
async fn limit_holds_across_many_resizes() {
    let pool = pool(5, 1000);
    let g = Gauge::default();
    let mut handles = Vec::new();
    for i in 0..200u32 {
        handles.push(pool.submit(held(&g, (1 + i % 7) * MS)).await.unwrap());
    }
    let sizes = [1usize, 7, 0, 3, 9, 2, 0, 0, 5, 1, 8];
    for (step, &n) in sizes.iter().cycle().take(60).enumerate() {
        let before = pool.stats();
        pool.resize(n);
        settle().await;
        let s = pool.stats();
        assert!(s.busy <= s.workers, "step {step}: {s:?}");
        // Nothing starts above the new size; running jobs may stay above it.
        assert!(
            g.now() <= n.max(before.busy),
            "step {step}: {} > {n}",
            g.now()
        );
        advance(MS).await;
        settle().await;
    }
    pool.resize(4);
    for h in handles {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.started(), 200);
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn resize_zero_pauses_and_resize_resumes() {
    let pool = pool(2, 10);
    pool.resize(0);
    let g = Gauge::default();
    let mut handles = Vec::new();
    for _ in 0..5 {
        handles.push(pool.submit(held(&g, MS)).await.unwrap());
    }
    advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(g.started(), 0, "a paused pool starts nothing");
    let s = pool.stats();
    assert_eq!((s.workers, s.busy, s.queued), (0, 0, 5));
    // The queue still bounds a paused pool.
    for _ in 0..5 {
        pool.try_submit(async {}).unwrap().detach();
    }
    assert!(matches!(
        pool.try_submit(async {}),
        Err(TrySubmitError::Full(_))
    ));

    pool.resize(2);
    for h in handles {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.peak(), 2);
    pool.shutdown().await;
    assert_eq!(pool.stats().completed, 10);
}

#[tokio::test(start_paused = true)]
async fn pausing_a_busy_pool_lets_running_jobs_finish() {
    let pool = pool(2, 10);
    let g = Gauge::default();
    let a = pool.submit(held(&g, 5 * MS)).await.unwrap();
    let b = pool.submit(held(&g, 5 * MS)).await.unwrap();
    let c = pool.submit(held(&g, 5 * MS)).await.unwrap();
    settle().await;
    pool.resize(0);
    assert_eq!(a.await, Ok(()));
    assert_eq!(b.await, Ok(()));
    settle().await;
    assert_eq!(g.started(), 2);
    assert_eq!(pool.stats().queued, 1);
    pool.resize(1);
    assert_eq!(c.await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn queue_capacity_zero_is_a_rendezvous() {
    let pool = pool(2, 0);
    let g = Gauge::default();
    // Two free workers: two submissions are taken at once.
    let a = pool.try_submit(held(&g, 10 * MS)).unwrap();
    let b = pool.try_submit(held(&g, 10 * MS)).unwrap();
    // No free worker and no queue: the third must wait.
    assert!(matches!(
        pool.try_submit(async {}),
        Err(TrySubmitError::Full(_))
    ));
    let p = pool.clone();
    let g2 = g.clone();
    let waiter = tokio::spawn(async move { p.submit(held(&g2, MS)).await.unwrap().await });
    settle().await;
    assert!(!waiter.is_finished());
    assert_eq!(g.started(), 2);
    advance(10 * MS).await;
    a.await.unwrap();
    b.await.unwrap();
    assert_eq!(waiter.await.unwrap(), Ok(()));
    assert_eq!(g.peak(), 2);
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn full_queue_applies_backpressure() {
    let pool = pool(1, 2);
    let g = Gauge::default();
    let _running = pool.submit(held(&g, 10 * MS)).await.unwrap();
    settle().await;
    let _q1 = pool.submit(held(&g, MS)).await.unwrap();
    let _q2 = pool.submit(held(&g, MS)).await.unwrap();
    let p = pool.clone();
    let blocked = tokio::spawn(async move { p.submit(async { 7 }).await.map(|h| h.detach()) });
    settle().await;
    assert!(!blocked.is_finished(), "a full queue makes submit wait");
    advance(10 * MS).await;
    settle().await;
    assert!(blocked.await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_jobs_share_the_limit_with_async_jobs() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();

    // One blocking job holds a slot until released.
    let (ru, pk) = (running.clone(), peak.clone());
    let blocking = pool
        .submit_blocking(move || {
            let n = ru.fetch_add(1, Ordering::SeqCst) + 1;
            pk.fetch_max(n, Ordering::SeqCst);
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            ru.fetch_sub(1, Ordering::SeqCst);
            "blocking done"
        })
        .await
        .unwrap();
    started_rx.await.unwrap();
    // Async jobs now get one slot between them.
    let mut handles = Vec::new();
    for _ in 0..10 {
        let (ru, pk) = (running.clone(), peak.clone());
        handles.push(
            pool.submit(async move {
                let n = ru.fetch_add(1, Ordering::SeqCst) + 1;
                pk.fetch_max(n, Ordering::SeqCst);
                tokio::task::yield_now().await;
                ru.fetch_sub(1, Ordering::SeqCst);
            })
            .await
            .unwrap(),
        );
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "blocking + async <= workers"
    );
    // A worker leaves `busy` just after its job's handle resolves; let the last
    // async job's worker get there (bounded, no sleeping).
    for _ in 0..10_000 {
        if pool.stats().busy == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        pool.stats().busy,
        1,
        "the blocking job still holds its slot"
    );
    release_tx.send(()).unwrap();
    assert_eq!(blocking.await, Ok("blocking done"));
    pool.shutdown().await;
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_blocking_job_keeps_its_slot_until_it_returns() {
    let pool = Pool::builder()
        .workers(1)
        .job_timeout(10 * MS)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let h = pool
        .submit_blocking(move || rx.recv().unwrap())
        .await
        .unwrap();
    let next = pool.submit(async { 5 }).await.unwrap();
    settle().await;
    advance(10 * MS).await;
    assert_eq!(h.await, Err(taskgate::JobError::TimedOut));
    // The closure is still running: the only slot is taken, and the job counts
    // as running until it returns.
    settle().await;
    let s = pool.stats();
    assert_eq!((s.busy, s.timed_out, s.queued), (1, 0, 1));
    assert!(!next.is_finished());
    tx.send(()).unwrap();
    assert_eq!(next.await, Ok(5));
    let s = pool.stats();
    assert_eq!((s.timed_out, s.completed), (1, 1));
}
