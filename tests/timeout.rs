//! Semantic 4: run timeouts and queue timeouts, and submit timeouts.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use taskgate::{JobError, Pool, SubmitError};
use tokio::time::{Instant, advance};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn job_timeout_drops_a_hung_job_at_its_deadline_and_frees_the_slot() {
    let pool = Pool::builder()
        .workers(1)
        .job_timeout(100 * MS)
        .build()
        .unwrap();
    let (job, dropped) = pending_job();
    let hung = pool.submit(job).await.unwrap();
    let next = pool.submit(async { Instant::now() }).await.unwrap();
    let t0 = Instant::now();
    settle().await;
    advance(99 * MS).await;
    settle().await;
    assert!(!hung.is_finished(), "not before its deadline");
    assert!(!dropped.load(Ordering::SeqCst));
    advance(MS).await;
    assert_eq!(hung.await, Err(JobError::TimedOut));
    assert!(dropped.load(Ordering::SeqCst), "dropped at once");
    // The freed slot runs the next job straight away.
    let started = next.await.unwrap();
    assert_eq!(started - t0, 100 * MS);
    let s = pool.stats();
    assert_eq!((s.timed_out, s.completed), (1, 1));
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn a_ready_result_wins_over_its_timeout() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let h = pool
        .job(async { 1 })
        .timeout(Duration::ZERO)
        .submit()
        .await
        .unwrap();
    assert_eq!(h.await, Ok(1));
    let slow = pool
        .job(tokio::time::sleep(MS))
        .timeout(Duration::ZERO)
        .run()
        .await;
    assert_eq!(slow, Err(JobError::TimedOut));
}

#[tokio::test(start_paused = true)]
async fn per_job_timeout_overrides_the_pool_default() {
    let pool = Pool::builder()
        .workers(3)
        .job_timeout(10 * MS)
        .build()
        .unwrap();
    let long = pool
        .job(async {
            tokio::time::sleep(50 * MS).await;
            "long"
        })
        .timeout(100 * MS)
        .submit()
        .await
        .unwrap();
    let unlimited = pool
        .job(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "unlimited"
        })
        .no_timeout()
        .submit()
        .await
        .unwrap();
    let default = pool.run(tokio::time::sleep(20 * MS)).await;
    assert_eq!(default, Err(JobError::TimedOut));
    assert_eq!(long.await, Ok("long"));
    assert_eq!(unlimited.await, Ok("unlimited"));
}

#[tokio::test(start_paused = true)]
async fn queue_timeout_expires_a_queued_job_without_starting_it() {
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(10)
        .queue_timeout(50 * MS)
        .build()
        .unwrap();
    let g = Gauge::default();
    let running = pool
        .job(held(&g, 200 * MS))
        .no_queue_timeout()
        .submit()
        .await
        .unwrap();
    settle().await;
    let (flag, dropped) = drop_flag();
    let queued = pool
        .submit(async move {
            let _f = flag;
            unreachable!("an expired job must never start")
        })
        .await
        .unwrap();
    advance(49 * MS).await;
    settle().await;
    assert!(!queued.is_finished(), "not before its deadline");
    assert_eq!(pool.stats().queued, 1);
    advance(MS).await;
    assert_eq!(queued.await, Err(JobError::QueueTimedOut));
    assert!(dropped.load(Ordering::SeqCst));
    let s = pool.stats();
    assert_eq!((s.queued, s.queue_timed_out), (0, 1));
    assert_eq!(running.await, Ok(()));
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn queue_timeouts_expire_in_deadline_order_not_queue_order() {
    let pool = pool(1, 10);
    let _blocker = pool.submit(std::future::pending::<()>()).await.unwrap();
    settle().await;
    let late = pool
        .job(async {})
        .queue_timeout(30 * MS)
        .submit()
        .await
        .unwrap();
    let early = pool
        .job(async {})
        .queue_timeout(10 * MS)
        .submit()
        .await
        .unwrap();
    let none = pool.submit(async {}).await.unwrap();
    advance(10 * MS).await;
    settle().await;
    assert!(early.is_finished());
    assert!(!late.is_finished());
    advance(20 * MS).await;
    settle().await;
    assert!(late.is_finished());
    assert!(!none.is_finished());
    assert_eq!(early.await, Err(JobError::QueueTimedOut));
    assert_eq!(late.await, Err(JobError::QueueTimedOut));
    assert_eq!(pool.stats().queued, 1);
}

#[tokio::test(start_paused = true)]
async fn queue_timeout_counts_from_acceptance_not_from_the_wait_for_space() {
    let pool = pool(1, 0);
    let blocker = pool.submit(tokio::time::sleep(100 * MS)).await.unwrap();
    settle().await;
    let p = pool.clone();
    let waiter = tokio::spawn(async move {
        p.job(async { "ran" })
            .queue_timeout(10 * MS)
            .submit()
            .await
            .unwrap()
            .await
    });
    // It waits 100 ms for space, longer than its queue timeout, and still runs.
    advance(100 * MS).await;
    assert_eq!(blocker.await, Ok(()));
    assert_eq!(waiter.await.unwrap(), Ok("ran"));
}

#[tokio::test(start_paused = true)]
async fn huge_timeouts_mean_no_timeout() {
    let pool = Pool::builder()
        .workers(1)
        .job_timeout(Duration::MAX)
        .queue_timeout(Duration::MAX)
        .build()
        .unwrap();
    let h = pool
        .submit(async {
            tokio::time::sleep(Duration::from_secs(86_400)).await;
            1
        })
        .await
        .unwrap();
    assert_eq!(h.await, Ok(1));
    let p = pool.clone();
    let r = p.submit_timeout(async { 2 }, Duration::MAX).await.unwrap();
    assert_eq!(r.await, Ok(2));
}

#[tokio::test(start_paused = true)]
async fn submit_timeout_returns_the_future_when_no_space_frees() {
    let pool = pool(1, 0);
    let _busy = pool.submit(std::future::pending::<()>()).await.unwrap();
    settle().await;
    let t0 = Instant::now();
    let err = pool
        .submit_timeout(async { 42 }, 25 * MS)
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(Instant::now() - t0, 25 * MS);
    assert_eq!(err.to_string(), "timed out waiting for queue space");
    // The job comes back, whole.
    assert_eq!(err.into_inner().await, 42);
    let zero = pool.submit_timeout(async {}, Duration::ZERO).await;
    assert!(matches!(zero, Err(SubmitError::Timeout(_))));
    assert_eq!(pool.stats().rejected, 2);
}

#[tokio::test(start_paused = true)]
async fn submit_timeout_succeeds_when_space_frees_in_time() {
    let pool = pool(1, 0);
    let busy = pool.submit(tokio::time::sleep(10 * MS)).await.unwrap();
    settle().await;
    let h = pool.submit_timeout(async { 1 }, 20 * MS).await.unwrap();
    assert_eq!(busy.await, Ok(()));
    assert_eq!(h.await, Ok(1));
    assert_eq!(pool.stats().rejected, 0);
}
