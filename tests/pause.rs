//! Pauses: `pause_for` starts nothing until it ends and `pause_key_for` holds only
//! its key; running jobs are untouched, submissions still accepted, paused jobs hold
//! no worker; pauses extend to the latest end and never shorten; they compose with
//! the other limits, and the lifecycle (cancel, queue timeout, shutdown) still holds.

mod support;

use std::time::Duration;

use support::*;
use taskgate::{JobError, KeyLimits, Pool, Rate, TrySubmitError};
use tokio::time::{Instant, advance};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Advances the paused clock in 1 ms steps for `d`.
async fn step(d: Duration) {
    let end = Instant::now() + d;
    settle().await;
    while Instant::now() < end {
        advance(MS).await;
        settle().await;
    }
}

/// Runs `n` jobs at once to completion, so that `n` workers exist and are idle.
async fn warm_up(pool: &Pool, n: usize) {
    let mut hs = Vec::new();
    for _ in 0..n {
        hs.push(pool.submit(tokio::time::sleep(MS)).await.unwrap());
    }
    for h in hs {
        h.await.unwrap();
    }
    settle().await;
}

/// `pause_for` starts nothing until it ends, then everything that may start starts
/// at that very instant.
#[tokio::test(start_paused = true)]
async fn pause_for_delays_every_start_until_it_ends() {
    let pool = pool(4, 100);
    let t0 = Instant::now();
    pool.pause_for(2 * SEC);
    let starts = Starts::<u32>::default();
    for i in 0..3 {
        pool.spawn(starts.job(i, MS)).await.unwrap();
    }
    step(2 * SEC - MS).await;
    assert_eq!(starts.len(), 0);
    let s = pool.stats();
    assert_eq!((s.busy, s.queued), (0, 3), "a paused pool holds no worker");
    step(MS).await;
    assert_eq!(starts.times(), [t0 + 2 * SEC; 3]);
}

/// A pause leaves running jobs alone: they finish at their own time, and the next
/// queued job waits for the pause to end.
#[tokio::test(start_paused = true)]
async fn pause_for_leaves_running_jobs_alone() {
    let pool = pool(1, 100);
    let t0 = Instant::now();
    let (flag, dropped) = drop_flag();
    let running = pool
        .submit(async move {
            let _f = flag;
            tokio::time::sleep(100 * MS).await;
            Instant::now()
        })
        .await
        .unwrap();
    settle().await;
    pool.pause_for(SEC);
    let next = pool.submit(async { Instant::now() }).await.unwrap();
    assert_eq!(running.await, Ok(t0 + 100 * MS));
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(next.await, Ok(t0 + SEC));
}

/// A paused pool still accepts submissions up to its queue's capacity, and refuses
/// beyond it.
#[tokio::test(start_paused = true)]
async fn submissions_are_accepted_while_paused_up_to_capacity() {
    let pool = pool(1, 3);
    pool.pause_for(HOUR);
    let mut hs = Vec::new();
    // Capacity 3, plus the free worker's place.
    for _ in 0..4 {
        hs.push(pool.try_submit(async {}).unwrap());
    }
    assert!(matches!(
        pool.try_submit(async {}),
        Err(TrySubmitError::Full(_))
    ));
    assert_eq!(pool.stats().queued, 4);
}

/// Pauses extend to the latest end: a shorter pause after a longer one does not cut
/// it short, and a longer one extends it.
#[tokio::test(start_paused = true)]
async fn pauses_extend_to_the_latest_end_and_never_shorten() {
    let pool = pool(2, 100);
    let t0 = Instant::now();
    assert_eq!(pool.paused_until(), None);
    pool.pause_for(5 * SEC);
    pool.pause_for(SEC);
    assert_eq!(pool.paused_until(), Some(t0 + 5 * SEC));
    let h = pool.submit(async { Instant::now() }).await.unwrap();
    advance(3 * SEC).await;
    pool.pause_for(4 * SEC);
    assert_eq!(pool.paused_until(), Some(t0 + 7 * SEC));
    assert_eq!(h.await, Ok(t0 + 7 * SEC));
    assert_eq!(pool.paused_until(), None);
}

/// A zero pause does nothing: no pause, no key state.
#[tokio::test(start_paused = true)]
async fn a_zero_pause_does_nothing() {
    let pool = pool(2, 100);
    pool.pause_for(Duration::ZERO);
    pool.pause_key_for("a", Duration::ZERO);
    assert_eq!(pool.paused_until(), None);
    assert_eq!(pool.key_stats(&"a".into()), None);
    assert_eq!(pool.stats().keys, 0);
    let t0 = Instant::now();
    assert_eq!(
        pool.job(async { Instant::now() }).key("a").run().await,
        Ok(t0)
    );
}

/// A pause too long for the clock pauses for a very long time rather than panic or
/// wrap around; shutdown_timeout then cancels what waits behind it.
#[tokio::test(start_paused = true)]
async fn a_pause_too_long_for_the_clock_does_not_panic() {
    let pool = pool(2, 100);
    let t0 = Instant::now();
    pool.pause_for(Duration::MAX);
    pool.pause_key_for("a", Duration::MAX);
    let until = pool.paused_until().expect("paused");
    assert!(until > t0 + 365 * 24 * HOUR, "{:?}", until - t0);
    let ks = pool.key_stats(&"a".into()).unwrap();
    assert!(ks.paused_until.unwrap() > t0 + 365 * 24 * HOUR);
    let h = pool.job(async {}).key("a").submit().await.unwrap();
    step(10 * MS).await;
    assert!(!h.is_finished());
    let report = pool.shutdown_timeout(SEC).await;
    assert_eq!((report.completed, report.cancelled), (0, 1));
    assert_eq!(h.await, Err(JobError::Cancelled));
}

/// Resizing a paused pool starts nothing before the pause ends.
#[tokio::test(start_paused = true)]
async fn resize_does_not_end_a_pause() {
    let pool = pool(1, 100);
    let t0 = Instant::now();
    pool.pause_for(SEC);
    let starts = Starts::<u32>::default();
    for i in 0..4 {
        pool.spawn(starts.job(i, MS)).await.unwrap();
    }
    pool.resize(8);
    step(SEC - MS).await;
    assert_eq!(starts.len(), 0);
    step(MS).await;
    assert_eq!(starts.times(), [t0 + SEC; 4]);
}

/// A job's queue timeout still expires while the pool is paused, and a cancel while
/// paused takes the job out at once.
#[tokio::test(start_paused = true)]
async fn queue_timeout_and_cancel_still_work_while_paused() {
    let pool = pool(2, 100);
    pool.pause_for(HOUR);
    let expiring = pool
        .job(async {})
        .queue_timeout(SEC)
        .submit()
        .await
        .unwrap();
    let (flag, dropped) = drop_flag();
    let cancelled = pool
        .submit(async move {
            let _f = flag;
        })
        .await
        .unwrap();
    drop(cancelled);
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    let t0 = Instant::now();
    assert_eq!(expiring.await, Err(JobError::QueueTimedOut));
    assert_eq!(t0.elapsed(), SEC);
    let s = pool.stats();
    assert_eq!((s.queued, s.cancelled, s.queue_timed_out), (0, 1, 1));
    assert_accounted(&pool);
}

/// `pause_key_for` holds only its key: the key's jobs start at the pause's end,
/// other keys' and unkeyed jobs at once, and the paused key's jobs hold no worker.
#[tokio::test(start_paused = true)]
async fn pause_key_for_holds_only_that_key() {
    let pool = pool(2, 100);
    let t0 = Instant::now();
    pool.pause_key_for("a", SEC);
    let starts = Starts::<&'static str>::default();
    for _ in 0..3 {
        pool.job(starts.job("a", MS))
            .key("a")
            .spawn()
            .await
            .unwrap();
    }
    pool.job(starts.job("b", MS))
        .key("b")
        .spawn()
        .await
        .unwrap();
    pool.spawn(starts.job("-", MS)).await.unwrap();
    settle().await;
    let s = pool.stats();
    assert_eq!((s.busy, s.queued), (2, 3), "{s:?}");
    step(SEC + MS).await;
    let all = starts.all();
    assert_eq!(all.len(), 5);
    assert!(all[..2].iter().all(|e| e.0 != "a" && e.1 == t0), "{all:?}");
    // Two workers: a's three jobs start two at the pause's end, then one after.
    assert_eq!(
        all[2..],
        [("a", t0 + SEC), ("a", t0 + SEC), ("a", t0 + SEC + MS)]
    );
}

/// A key's pauses extend to the latest end and show in its stats; its running jobs
/// are untouched.
#[tokio::test(start_paused = true)]
async fn key_pauses_extend_and_leave_running_jobs_alone() {
    let pool = pool(2, 100);
    let t0 = Instant::now();
    let g = Gauge::default();
    let running = pool
        .job(held(&g, 100 * MS))
        .key("a")
        .submit()
        .await
        .unwrap();
    settle().await;
    pool.pause_key_for("a", 2 * SEC);
    pool.pause_key_for("a", SEC);
    let ks = pool.key_stats(&"a".into()).unwrap();
    assert_eq!(ks.paused_until, Some(t0 + 2 * SEC));
    assert_eq!(ks.busy, 1);
    assert_eq!(pool.paused_until(), None, "a key pause is not a pool pause");
    let next = pool
        .job(async { Instant::now() })
        .key("a")
        .submit()
        .await
        .unwrap();
    assert_eq!(running.await, Ok(()));
    assert_eq!(g.started(), 1);
    assert_eq!(next.await, Ok(t0 + 2 * SEC));
}

/// A key paused while at its concurrency cap starts its next job only when both
/// have cleared: at the pause's end if the cap frees first, at the cap's release if
/// the pause ends first.
#[tokio::test(start_paused = true)]
async fn a_key_pause_and_its_cap_compose() {
    let pool = Pool::builder()
        .workers(4)
        .key_limits(KeyLimits::default().concurrency(1))
        .build()
        .unwrap();
    let g = Gauge::default();
    let t0 = Instant::now();
    // Key a: the cap frees at 100 ms, the pause ends at 1 s.
    pool.job(held(&g, 100 * MS)).key("a").spawn().await.unwrap();
    // Key b: the pause ends at 100 ms, the cap frees at 1 s.
    pool.job(held(&g, SEC)).key("b").spawn().await.unwrap();
    settle().await;
    pool.pause_key_for("a", SEC);
    pool.pause_key_for("b", 100 * MS);
    let a = pool
        .job(async { Instant::now() })
        .key("a")
        .submit()
        .await
        .unwrap();
    let b = pool
        .job(async { Instant::now() })
        .key("b")
        .submit()
        .await
        .unwrap();
    assert_eq!(a.await, Ok(t0 + SEC));
    assert_eq!(b.await, Ok(t0 + SEC));
}

/// Changing a paused key's limits does not end its pause.
#[tokio::test(start_paused = true)]
async fn set_key_limits_does_not_end_a_key_pause() {
    let pool = pool(2, 100);
    let t0 = Instant::now();
    pool.pause_key_for("a", SEC);
    let h = pool
        .job(async { Instant::now() })
        .key("a")
        .submit()
        .await
        .unwrap();
    pool.set_key_limits("a", KeyLimits::default().concurrency(5))
        .unwrap();
    pool.clear_key_limits("a");
    settle().await;
    assert!(!h.is_finished());
    assert_eq!(h.await, Ok(t0 + SEC));
}

/// A pool pause and a key pause compose: key b waits for the pool's pause (1 s),
/// key a for the later of the two (2 s).
#[tokio::test(start_paused = true)]
async fn pool_and_key_pauses_compose() {
    let pool = pool(4, 100);
    let t0 = Instant::now();
    pool.pause_for(SEC);
    pool.pause_key_for("a", 2 * SEC);
    let a = pool
        .job(async { Instant::now() })
        .key("a")
        .submit()
        .await
        .unwrap();
    let b = pool
        .job(async { Instant::now() })
        .key("b")
        .submit()
        .await
        .unwrap();
    assert_eq!(b.await, Ok(t0 + SEC));
    assert_eq!(a.await, Ok(t0 + 2 * SEC));
}

/// A pause does not let a rate bank starts: after a 1 s pause, a pool rate of 10/s
/// with burst 2 allows 2 starts at once and then one per 100 ms, and every window
/// of the whole run obeys the rate.
#[tokio::test(start_paused = true)]
async fn after_a_pause_the_rate_allows_only_its_burst() {
    let rate = Rate::per_second(10).burst(2);
    let pool = Pool::builder().workers(8).rate_limit(rate).build().unwrap();
    let starts = Starts::<u32>::default();
    let t0 = Instant::now();
    pool.spawn(starts.job(0, MS)).await.unwrap();
    settle().await;
    pool.pause_for(SEC);
    for i in 1..8 {
        pool.spawn(starts.job(i, MS)).await.unwrap();
    }
    step(2 * SEC).await;
    let times = starts.times();
    assert_within_rate(&times, rate, "pool");
    let t1 = t0 + SEC;
    assert_eq!(
        times,
        [
            t0,
            t1,
            t1,
            t1 + 100 * MS,
            t1 + 200 * MS,
            t1 + 300 * MS,
            t1 + 400 * MS,
            t1 + 500 * MS
        ]
    );
}

/// `shutdown` waits out a pause and runs what was queued behind it, with workers
/// already idle when the pause began.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_out_a_pause() {
    let pool = pool(4, 100);
    warm_up(&pool, 4).await;
    let t0 = Instant::now();
    pool.pause_for(SEC);
    let g = Gauge::default();
    for _ in 0..3 {
        pool.spawn(held(&g, MS)).await.unwrap();
    }
    let done = tokio::time::timeout(HOUR, pool.shutdown()).await;
    assert!(done.is_ok(), "shutdown hung: {:?}", pool.stats());
    assert_eq!(t0.elapsed(), SEC + MS);
    assert_eq!(g.started(), 3);
    assert_accounted(&pool);
}

/// `shutdown` waits out a key's pause.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_out_a_key_pause() {
    let pool = pool(4, 100);
    warm_up(&pool, 4).await;
    let t0 = Instant::now();
    pool.pause_key_for("a", SEC);
    let g = Gauge::default();
    for _ in 0..3 {
        pool.job(held(&g, MS)).key("a").spawn().await.unwrap();
    }
    let done = tokio::time::timeout(HOUR, pool.shutdown()).await;
    assert!(done.is_ok(), "shutdown hung: {:?}", pool.stats());
    assert_eq!(t0.elapsed(), SEC + MS);
    assert_eq!(g.started(), 3);
}

/// `shutdown_timeout` cancels jobs still held by a pause at its deadline.
#[tokio::test(start_paused = true)]
async fn shutdown_timeout_cancels_jobs_held_by_a_pause() {
    let pool = pool(4, 100);
    warm_up(&pool, 4).await;
    pool.pause_for(HOUR);
    let mut hs = Vec::new();
    for _ in 0..3 {
        hs.push(pool.submit(async {}).await.unwrap());
    }
    let report = tokio::time::timeout(2 * HOUR, pool.shutdown_timeout(SEC))
        .await
        .expect("shutdown_timeout hung");
    assert_eq!((report.completed, report.cancelled), (0, 3));
    for h in hs {
        assert_eq!(h.await, Err(JobError::Cancelled));
    }
    assert_accounted(&pool);
}

/// `shutdown` returns once the last job held by a pause is cancelled by its caller
/// (with workers idle from before): nothing is left to run, so nothing to wait for.
#[tokio::test(start_paused = true)]
async fn shutdown_returns_once_the_last_paused_job_is_cancelled() {
    let pool = pool(2, 100);
    warm_up(&pool, 2).await;
    pool.pause_key_for("a", HOUR);
    let h = pool.job(async {}).key("a").submit().await.unwrap();
    let p = pool.clone();
    let shutdown = tokio::spawn(async move { p.shutdown().await });
    settle().await;
    advance(SEC).await;
    drop(h);
    let done = tokio::time::timeout(SEC, shutdown).await;
    assert!(done.is_ok(), "shutdown hung: {:?}", pool.stats());
    assert_accounted(&pool);
}

/// `shutdown` returns once the last job held by a pause times out in the queue.
#[tokio::test(start_paused = true)]
async fn shutdown_returns_once_the_last_paused_job_times_out_in_the_queue() {
    let pool = pool(2, 100);
    warm_up(&pool, 2).await;
    pool.pause_for(HOUR);
    let h = pool
        .job(async {})
        .queue_timeout(SEC)
        .submit()
        .await
        .unwrap();
    let t0 = Instant::now();
    let done = tokio::time::timeout(10 * SEC, pool.shutdown()).await;
    assert!(done.is_ok(), "shutdown hung: {:?}", pool.stats());
    assert_eq!(t0.elapsed(), SEC);
    assert_eq!(h.await, Err(JobError::QueueTimedOut));
}
