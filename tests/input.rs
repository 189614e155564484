//! Bad input: every builder value and argument at its edges ends in a typed error or
//! documented behaviour, never a panic or an overflow.

mod support;

use std::time::Duration;

use support::*;
use taskgate::{BuildError, JobError, Pool, SubmitError};
use tokio::time::advance;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn workers_zero_one_and_max() {
    assert_eq!(
        Pool::builder().workers(0).build().unwrap_err(),
        BuildError::ZeroWorkers
    );
    let one = Pool::builder().workers(1).build().unwrap();
    assert_eq!(one.run(async { 1 }).await, Ok(1));
    // usize::MAX workers: valid (workers are spawned only as jobs need them), and the
    // default queue capacity saturates instead of overflowing.
    let max = Pool::builder().workers(usize::MAX).build().unwrap();
    assert_eq!(max.stats().workers, usize::MAX);
    let g = Gauge::default();
    let mut hs = Vec::new();
    for _ in 0..100 {
        hs.push(max.submit(held(&g, MS)).await.unwrap());
    }
    settle().await;
    assert_eq!(g.now(), 100, "no limit in practice");
    for h in hs {
        h.await.unwrap();
    }
    max.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn queue_capacity_zero_one_and_max() {
    for cap in [0usize, 1, usize::MAX] {
        let pool = Pool::builder()
            .workers(1)
            .queue_capacity(cap)
            .build()
            .unwrap();
        let _busy = pool.submit(std::future::pending::<()>()).await.unwrap();
        settle().await;
        let mut accepted = 0usize;
        // Bounded: at most 1000 tries, so usize::MAX does not run forever.
        for _ in 0..1000 {
            match pool.try_submit(async {}) {
                Ok(h) => {
                    h.detach();
                    accepted += 1;
                }
                Err(e) => {
                    assert!(e.is_full());
                    break;
                }
            }
        }
        assert_eq!(accepted, cap.min(1000), "capacity {cap}");
        pool.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn resize_zero_one_and_max() {
    let pool = pool(2, 10);
    pool.resize(0);
    assert_eq!(pool.stats().workers, 0);
    pool.resize(usize::MAX);
    assert_eq!(pool.stats().workers, usize::MAX);
    assert_eq!(pool.run(async { 2 }).await, Ok(2));
    pool.resize(1);
    assert_eq!(pool.run(async { 3 }).await, Ok(3));
}

#[tokio::test(start_paused = true)]
async fn run_timeouts_zero_tiny_and_max() {
    let pool = pool(1, 10);
    // Zero: one poll; a ready result wins, anything else times out.
    assert_eq!(
        pool.job(async { 1 }).timeout(Duration::ZERO).run().await,
        Ok(1)
    );
    let r = pool
        .job(tokio::task::yield_now())
        .timeout(Duration::ZERO)
        .run()
        .await;
    assert_eq!(r, Err(JobError::TimedOut));
    // Tiny: 1 ns, rounded up to the timer's 1 ms resolution.
    let r = pool
        .job(tokio::time::sleep(Duration::from_secs(1)))
        .timeout(Duration::from_nanos(1))
        .run()
        .await;
    assert_eq!(r, Err(JobError::TimedOut));
    // Max: no overflow; effectively no timeout.
    let r = pool
        .job(async {
            tokio::time::sleep(Duration::from_secs(365 * 86_400)).await;
            4
        })
        .timeout(Duration::MAX)
        .run()
        .await;
    assert_eq!(r, Ok(4));
}

#[tokio::test(start_paused = true)]
async fn queue_timeouts_zero_tiny_and_max() {
    let pool = pool(1, 10);
    let _busy = pool.submit(std::future::pending::<()>()).await.unwrap();
    settle().await;
    // Zero or tiny: expires at the next timer tick unless a worker takes it first.
    let zero = pool
        .job(async {})
        .queue_timeout(Duration::ZERO)
        .submit()
        .await
        .unwrap();
    let tiny = pool
        .job(async {})
        .queue_timeout(Duration::from_nanos(1))
        .submit()
        .await
        .unwrap();
    let max = pool
        .job(async {})
        .queue_timeout(Duration::MAX)
        .submit()
        .await
        .unwrap();
    advance(MS).await;
    assert_eq!(zero.await, Err(JobError::QueueTimedOut));
    assert_eq!(tiny.await, Err(JobError::QueueTimedOut));
    advance(Duration::from_secs(86_400)).await;
    settle().await;
    assert!(!max.is_finished(), "Duration::MAX means no queue timeout");
    // A builder-wide zero queue timeout is accepted the same way.
    assert!(
        Pool::builder()
            .queue_timeout(Duration::ZERO)
            .build()
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn submit_waits_zero_and_max() {
    let pool = pool(1, 0);
    let _busy = pool.submit(std::future::pending::<()>()).await.unwrap();
    settle().await;
    assert!(matches!(
        pool.submit_timeout(async {}, Duration::ZERO).await,
        Err(SubmitError::Timeout(_))
    ));
    // Duration::MAX: waits without a limit (until space frees or the pool closes).
    let p = pool.clone();
    let waiter =
        tokio::spawn(async move { p.submit_timeout(async {}, Duration::MAX).await.is_ok() });
    advance(Duration::from_secs(86_400)).await;
    settle().await;
    assert!(!waiter.is_finished());
    pool.close();
    assert!(!waiter.await.unwrap(), "closed, not accepted");
}

#[tokio::test(start_paused = true)]
async fn shutdown_grace_zero_and_max() {
    let pool = pool(2, 10);
    pool.spawn(std::future::pending::<()>()).await.unwrap();
    pool.spawn(async {}).await.unwrap();
    settle().await;
    // Zero grace: whatever has not ended is cancelled at once.
    let report = pool.shutdown_timeout(Duration::ZERO).await;
    assert_eq!((report.completed, report.cancelled), (0, 1));

    let pool = self::pool(1, 10);
    pool.spawn(tokio::time::sleep(Duration::from_secs(3600)))
        .await
        .unwrap();
    // Duration::MAX grace: waits like shutdown().
    let report = pool.shutdown_timeout(Duration::MAX).await;
    assert_eq!((report.completed, report.cancelled), (1, 0));
}

#[tokio::test]
async fn names_may_be_anything() {
    for name in ["", "a", "µ-service/with spaces and ünïcode"] {
        let pool = Pool::builder().name(name).build().unwrap();
        assert_eq!(pool.name(), name);
        assert_eq!(pool.run(async { 1 }).await, Ok(1));
    }
}
