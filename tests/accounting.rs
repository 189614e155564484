//! Semantic 2 (nothing is lost), the stats identity, outcome-before-resolve, the
//! latency histograms, job ids, and the tracing span.

mod support;

use std::time::Duration;

use support::*;
use taskgate::{JobError, Pool, TrySubmitError};
use tokio::time::advance;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn every_accepted_job_resolves_exactly_once_with_the_right_outcome() {
    let pool = Pool::builder()
        .workers(3)
        .queue_capacity(100)
        .build()
        .unwrap();
    let blocker = pool.submit(tokio::time::sleep(5 * MS)).await.unwrap();
    let mut expected = Vec::new();
    let mut handles = Vec::new();
    for i in 0..60u32 {
        let (h, want) = match i % 6 {
            0 => (pool.submit(async move { i }).await.unwrap(), Ok(i)),
            1 => (
                pool.job(std::future::pending::<u32>())
                    .timeout(10 * MS)
                    .submit()
                    .await
                    .unwrap(),
                Err(JobError::TimedOut),
            ),
            2 => (
                pool.submit(async move {
                    tokio::task::yield_now().await;
                    panic!("p{i}")
                })
                .await
                .unwrap(),
                Err(JobError::Panicked(format!("p{i}"))),
            ),
            3 => {
                let h = pool.submit(async move { i }).await.unwrap();
                h.cancel();
                (h, Err(JobError::Cancelled))
            }
            4 => (
                pool.job(async move { i })
                    .queue_timeout(Duration::ZERO)
                    .submit()
                    .await
                    .unwrap(),
                // Expires unless a worker takes it first; both are fine, but it
                // resolves exactly once.
                Err(JobError::QueueTimedOut),
            ),
            _ => (
                pool.submit(async move {
                    tokio::time::sleep(MS).await;
                    i
                })
                .await
                .unwrap(),
                Ok(i),
            ),
        };
        handles.push(h);
        expected.push(want);
    }
    let mut seen = 0;
    for (h, want) in handles.into_iter().zip(expected) {
        let got = h.await;
        if want == Err(JobError::QueueTimedOut) && got.is_ok() {
            // Taken by a worker before the reaper ran.
        } else {
            assert_eq!(got, want);
        }
        seen += 1;
    }
    assert_eq!(blocker.await, Ok(()));
    assert_eq!(seen, 60);
    pool.shutdown().await;
    assert_accounted(&pool);
    let s = pool.stats();
    assert_eq!(s.submitted, 61);
    assert_eq!((s.timed_out, s.panicked, s.cancelled), (10, 10, 10));
}

#[tokio::test(start_paused = true)]
async fn a_refused_job_comes_back_inside_the_error() {
    let pool = pool(1, 0);
    let _busy = pool.submit(std::future::pending::<()>()).await.unwrap();
    settle().await;
    let v = [1, 2, 3];
    let err = pool.try_submit(async move { v.len() }).unwrap_err();
    assert!(matches!(err, TrySubmitError::Full(_)));
    assert_eq!(err.to_string(), "queue full");
    assert_eq!(err.into_inner().await, 3);
    assert_eq!(pool.stats().rejected, 1);
    assert_eq!(pool.stats().submitted, 1);
}

#[tokio::test(start_paused = true)]
async fn an_outcome_is_counted_before_its_handle_resolves() {
    let pool = Pool::builder().workers(4).build().unwrap();
    for round in 0..20u64 {
        let ok = pool
            .submit(async { tokio::task::yield_now().await })
            .await
            .unwrap();
        let timeout = pool
            .job(std::future::pending::<()>())
            .timeout(MS)
            .submit()
            .await
            .unwrap();
        let panic = pool.submit(async { panic!("x") }).await.unwrap();
        let cancelled = pool.submit(std::future::pending::<()>()).await.unwrap();
        cancelled.cancel();
        ok.await.unwrap();
        assert!(pool.stats().completed > round);
        panic.await.unwrap_err();
        assert!(pool.stats().panicked > round);
        cancelled.await.unwrap_err();
        assert!(pool.stats().cancelled > round);
        timeout.await.unwrap_err();
        assert!(pool.stats().timed_out > round);
    }
}

#[tokio::test(start_paused = true)]
async fn stats_report_queue_wait_and_run_time() {
    let pool = pool(1, 10);
    let mut handles = Vec::new();
    for _ in 0..4 {
        // The sleep is created when the job starts, not when it is submitted.
        handles.push(
            pool.submit(async { tokio::time::sleep(100 * MS).await })
                .await
                .unwrap(),
        );
    }
    for h in handles {
        h.await.unwrap();
    }
    let s = pool.stats();
    // Run times are all 100 ms; the histogram reports within a quarter, never above max.
    assert_eq!(s.run_time.max, 100 * MS);
    assert_eq!(s.run_time.p50, 100 * MS, "{s:?}");
    // Queue waits are 0, 100, 200 and 300 ms.
    assert_eq!(s.queue_wait.max, 300 * MS);
    assert!(
        s.queue_wait.p50 >= 100 * MS && s.queue_wait.p50 <= 125 * MS,
        "{s:?}"
    );
    assert!(s.queue_wait.p99 >= 300 * MS);
}

#[tokio::test(start_paused = true)]
async fn job_ids_are_unique_and_increasing() {
    let pool = pool(2, 10);
    let a = pool.submit(async {}).await.unwrap();
    let b = pool.submit(async {}).await.unwrap();
    assert!(b.id() > a.id());
    assert_eq!(a.id().to_string(), a.id().as_u64().to_string());
    let mut set = std::collections::HashSet::new();
    assert!(set.insert(a.id()));
    assert!(set.insert(b.id()));
    assert!(format!("{a:?}").contains("JobHandle"));
}

#[tokio::test(start_paused = true)]
async fn a_queued_job_timed_out_or_cancelled_consumes_no_slot() {
    let pool = pool(1, 2);
    let busy = pool.submit(tokio::time::sleep(10 * MS)).await.unwrap();
    settle().await;
    let a = pool.job(async {}).queue_timeout(MS).submit().await.unwrap();
    let b = pool.submit(async {}).await.unwrap();
    assert!(pool.try_submit(async {}).is_err());
    advance(MS).await;
    settle().await;
    drop(b);
    assert_eq!(a.await, Err(JobError::QueueTimedOut));
    // Both queue slots are free again.
    pool.try_submit(async {}).unwrap().detach();
    pool.try_submit(async {}).unwrap().detach();
    busy.await.unwrap();
}
