//! Groups: fan out and collect; errgroup-style `try_join_all`; drop cancels.

mod support;

use std::time::Duration;

use support::*;
use taskgate::{GroupError, JobError};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn join_all_returns_results_in_submission_order() {
    let pool = pool(3, 10);
    let mut group = pool.group();
    for i in 0..10u64 {
        // Later jobs finish first.
        group
            .submit(async move {
                tokio::time::sleep(MS * (10 - i) as u32).await;
                i
            })
            .await
            .unwrap();
    }
    assert_eq!(group.len(), 10);
    let out: Vec<u64> = group
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, (0..10).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn join_next_returns_results_as_they_finish() {
    let pool = pool(4, 10);
    let mut group = pool.group();
    for (i, d) in [30u64, 10, 20].into_iter().enumerate() {
        group
            .submit(async move {
                tokio::time::sleep(MS * d as u32).await;
                i
            })
            .await
            .unwrap();
    }
    let mut order = Vec::new();
    while let Some(r) = group.join_next().await {
        order.push(r.unwrap());
    }
    assert_eq!(order, [1, 2, 0]);
    assert!(group.is_empty());
    assert!(group.join_next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn try_join_all_stops_at_the_first_failure_and_cancels_the_rest() {
    let pool = pool(4, 10);
    let (hang, dropped) = pending_job();
    let mut group = pool.group::<Result<u32, String>>();
    group.submit(async { Ok(1) }).await.unwrap();
    group
        .submit(async {
            tokio::time::sleep(MS).await;
            Err("boom".to_string())
        })
        .await
        .unwrap();
    group
        .submit(async move {
            hang.await;
            Ok(3)
        })
        .await
        .unwrap();
    let err = group.try_join_all().await.unwrap_err();
    assert_eq!(err, GroupError::Job("boom".to_string()));
    assert_eq!(err.to_string(), "job failed: boom");
    settle().await;
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        "the rest is cancelled"
    );
    assert_eq!(pool.stats().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn try_join_all_reports_a_pool_error_and_succeeds_in_order() {
    let pool = pool(2, 10);
    let mut group = pool.group::<Result<u32, String>>();
    group.submit(async { panic!("in a job") }).await.unwrap();
    let err = group.try_join_all().await.unwrap_err();
    assert_eq!(err, GroupError::Pool(JobError::Panicked("in a job".into())));
    assert_eq!(err.to_string(), "job panicked: in a job");

    let mut group = pool.group::<Result<u32, String>>();
    for i in 0..5 {
        group
            .submit(async move {
                tokio::time::sleep(MS * (5 - i)).await;
                Ok(i)
            })
            .await
            .unwrap();
    }
    assert_eq!(group.try_join_all().await, Ok(vec![0, 1, 2, 3, 4]));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_group_cancels_its_jobs() {
    let pool = pool(1, 10);
    let g = Gauge::default();
    let mut group = pool.group();
    let (running, dropped) = pending_job();
    group.submit(running).await.unwrap();
    for _ in 0..5 {
        group.submit(held(&g, MS)).await.unwrap();
    }
    settle().await;
    assert!(format!("{group:?}").contains("len: 6"));
    drop(group);
    settle().await;
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(g.started(), 0, "queued jobs never start");
    let s = pool.stats();
    assert_eq!((s.cancelled, s.queued, s.busy), (6, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_group_is_bounded_by_its_pool() {
    let pool = pool(3, 1000);
    let g = Gauge::default();
    let mut group = pool.group();
    for _ in 0..100 {
        group.submit(held(&g, MS)).await.unwrap();
    }
    assert_eq!(group.join_all().await.len(), 100);
    assert_eq!(g.peak(), 3);
}

#[tokio::test(start_paused = true)]
async fn join_all_after_join_next_keeps_submission_order() {
    let pool = pool(4, 10);
    let mut group = pool.group();
    for (i, d) in [40u32, 30, 10, 20, 50].into_iter().enumerate() {
        group
            .submit(async move {
                tokio::time::sleep(MS * d).await;
                i
            })
            .await
            .unwrap();
    }
    // Take the fastest (index 2) first; the rest are no longer contiguous.
    assert_eq!(group.join_next().await, Some(Ok(2)));
    let rest: Vec<usize> = group
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rest, [0, 1, 3, 4]);

    let mut group = pool.group::<Result<usize, String>>();
    for (i, d) in [30u32, 10, 20].into_iter().enumerate() {
        group
            .submit(async move {
                tokio::time::sleep(MS * d).await;
                Ok(i)
            })
            .await
            .unwrap();
    }
    assert_eq!(group.join_next().await, Some(Ok(Ok(1))));
    assert_eq!(group.try_join_all().await, Ok(vec![0, 2]));
}
