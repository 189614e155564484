//! Stream adapters: order, parallelism, progress while the consumer is busy
//! (futures-rs#2387), the window, and cancel on drop.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use support::*;
use taskgate::{JobError, PoolStreamExt};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn map_pooled_keeps_input_order() {
    let pool = pool(4, 10);
    let out: Vec<u64> = futures::stream::iter(0..20u64)
        .map_pooled(&pool, |i| async move {
            tokio::time::sleep(MS * (20 - i) as u32).await;
            i * 10
        })
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(out, (0..20).map(|i| i * 10).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn map_pooled_unordered_yields_as_jobs_finish() {
    let pool = pool(4, 10);
    let out: Vec<u64> = futures::stream::iter([30u64, 10, 20])
        .map_pooled_unordered(&pool, |d| async move {
            tokio::time::sleep(MS * d as u32).await;
            d
        })
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(out, [10, 20, 30]);
}

#[tokio::test(start_paused = true)]
async fn jobs_progress_while_the_consumer_is_busy() {
    // futures-rs#2387: with `buffer_unordered`, a consumer that awaits something
    // between items stalls the buffered futures. Here they run on the workers.
    let pool = pool(4, 10);
    let t0 = Instant::now();
    let finished = Arc::new(Mutex::new(Vec::new()));
    let f2 = finished.clone();
    let mut s = futures::stream::iter(0..4u64).map_pooled_unordered(&pool, move |i| {
        let f = f2.clone();
        async move {
            tokio::time::sleep(10 * MS).await;
            f.lock().unwrap().push(Instant::now() - t0);
            i
        }
    });
    let first = s.next().await.unwrap().unwrap();
    assert!(first < 4);
    // A slow consumer: 100 ms of its own work before asking for the next item.
    tokio::time::sleep(100 * MS).await;
    let rest: Vec<_> = s.collect().await;
    assert_eq!(rest.len(), 3);
    let done = finished.lock().unwrap().clone();
    assert_eq!(done.len(), 4);
    assert!(
        done.iter().all(|&d| d == 10 * MS),
        "every job finished at 10 ms, during the consumer's pause: {done:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_window_bounds_jobs_in_flight() {
    let pool = pool(8, 100);
    let g = Gauge::default();
    let g2 = g.clone();
    let n = futures::stream::iter(0..40)
        .map_pooled(&pool, move |_| held(&g2, MS))
        .window(3)
        .count()
        .await;
    assert_eq!(n, 40);
    assert_eq!(g.peak(), 3);
    // The default window is the pool's size.
    let g3 = g.clone();
    let s = futures::stream::iter(0..40).map_pooled_unordered(&pool, move |_| held(&g3, MS));
    assert!(format!("{s:?}").contains("window: 8"));
    assert_eq!(s.count().await, 40);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_stream_cancels_its_jobs() {
    let pool = pool(2, 10);
    let (first, dropped) = pending_job();
    let mut jobs = vec![first];
    for _ in 0..3 {
        jobs.push(pending_job().0);
    }
    let mut s = futures::stream::iter(jobs).map_pooled(&pool, |j| j);
    // Start them.
    assert!(tokio::time::timeout(MS, s.next()).await.is_err());
    settle().await;
    assert_eq!(pool.stats().busy, 2);
    drop(s);
    settle().await;
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    // The window (the pool's size, 2) held two jobs; the other items were never
    // pulled from the input.
    let st = pool.stats();
    assert_eq!(
        (st.submitted, st.busy, st.queued, st.cancelled),
        (2, 0, 0, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_closed_pool_yields_closed_errors_in_order() {
    let pool = pool(2, 10);
    pool.close();
    let out: Vec<_> = futures::stream::iter(0..3)
        .map_pooled(&pool, |i| async move { i })
        .collect()
        .await;
    assert_eq!(out, vec![Err(JobError::Closed); 3]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_applies_backpressure_to_the_stream() {
    // Window larger than the pool can accept: the stream waits for space.
    let pool = pool(1, 1);
    let out: Vec<u32> = futures::stream::iter(0..10u32)
        .map_pooled(&pool, |i| async move {
            tokio::time::sleep(MS).await;
            i
        })
        .window(10)
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(out, (0..10).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn backpressure_in_a_stream_is_not_counted_as_rejections() {
    let pool = pool(1, 1);
    let n = futures::stream::iter(0..10u32)
        .map_pooled(&pool, |i| async move {
            tokio::time::sleep(MS).await;
            i
        })
        .window(10)
        .count()
        .await;
    assert_eq!(n, 10);
    let s = pool.stats();
    assert_eq!((s.submitted, s.rejected), (10, 0), "{s:?}");
}
