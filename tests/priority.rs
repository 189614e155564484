//! Priorities: among jobs that may start now, a higher priority starts first;
//! within a priority, lanes take turns and each lane is FIFO; a job that has
//! waited longer than `priority_aging` ranks as `High`, so nothing starves;
//! priority never lifts a job over its key's limits.

mod support;

use std::time::Duration;

use support::*;
use taskgate::{JobError, KeyLimits, Pool, Priority};
use tokio::time::{Instant, advance};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

use Priority::{High, Low, Normal};

/// A one-worker pool whose worker is held by a job tagged `"x"` for `d`.
async fn blocked_pool(d: Duration, starts: &Starts<&'static str>) -> Pool {
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(1_000)
        .build()
        .unwrap();
    pool.spawn(starts.job("x", d)).await.unwrap();
    settle().await;
    pool
}

async fn submit_tagged(
    pool: &Pool,
    starts: &Starts<&'static str>,
    tag: &'static str,
    key: Option<&'static str>,
    prio: Priority,
) {
    let mut b = pool.job(starts.job(tag, Duration::ZERO)).priority(prio);
    if let Some(k) = key {
        b = b.key(k);
    }
    b.spawn().await.unwrap();
}

#[test]
fn default_priority_is_normal_and_ordered() {
    assert_eq!(Priority::default(), Normal);
    assert!(Low < Normal && Normal < High);
}

/// With the only worker busy, Low, Normal and High jobs queued in that order start
/// High, Normal, Low.
#[tokio::test(start_paused = true)]
async fn higher_priority_starts_first() {
    let starts = Starts::default();
    let pool = blocked_pool(10 * MS, &starts).await;
    submit_tagged(&pool, &starts, "low", None, Low).await;
    submit_tagged(&pool, &starts, "normal", None, Normal).await;
    submit_tagged(&pool, &starts, "high", None, High).await;
    pool.shutdown().await;
    assert_eq!(starts.tags(), ["x", "high", "normal", "low"]);
}

/// Priority orders starts across lanes too: a High job of one key starts before a
/// Normal unkeyed job, which starts before a Low job of another key.
#[tokio::test(start_paused = true)]
async fn higher_priority_starts_first_across_keys() {
    let starts = Starts::default();
    let pool = blocked_pool(10 * MS, &starts).await;
    submit_tagged(&pool, &starts, "low", Some("a"), Low).await;
    submit_tagged(&pool, &starts, "normal", None, Normal).await;
    submit_tagged(&pool, &starts, "high", Some("b"), High).await;
    pool.shutdown().await;
    assert_eq!(starts.tags(), ["x", "high", "normal", "low"]);
}

/// A job without a priority is `Normal`: it runs FIFO with explicit `Normal` jobs,
/// after `High` and before `Low`.
#[tokio::test(start_paused = true)]
async fn no_priority_means_normal() {
    let starts = Starts::default();
    let pool = blocked_pool(10 * MS, &starts).await;
    submit_tagged(&pool, &starts, "low", None, Low).await;
    pool.spawn(starts.job("n1", Duration::ZERO)).await.unwrap();
    submit_tagged(&pool, &starts, "n2", None, Normal).await;
    pool.spawn(starts.job("n3", Duration::ZERO)).await.unwrap();
    submit_tagged(&pool, &starts, "high", None, High).await;
    pool.shutdown().await;
    assert_eq!(starts.tags(), ["x", "high", "n1", "n2", "n3", "low"]);
}

/// Within one priority, lanes take turns (and each lane is FIFO), whatever the
/// jobs of other priorities in between.
#[tokio::test(start_paused = true)]
async fn within_a_priority_lanes_take_turns_and_each_is_fifo() {
    let starts = Starts::default();
    let pool = blocked_pool(10 * MS, &starts).await;
    for (tag, key, prio) in [
        ("a1", "a", High),
        ("a2", "a", High),
        ("an", "a", Normal),
        ("a3", "a", High),
        ("b1", "b", High),
        ("bn", "b", Normal),
        ("b2", "b", High),
    ] {
        submit_tagged(&pool, &starts, tag, Some(key), prio).await;
    }
    pool.shutdown().await;
    assert_eq!(
        starts.tags(),
        ["x", "a1", "b1", "a2", "b2", "a3", "an", "bn"]
    );
}

/// Priority never lifts a job over its key's limits, and a blocked High job does
/// not hold up a startable Low job of another key.
#[tokio::test(start_paused = true)]
async fn priority_does_not_lift_a_job_over_its_key_limits() {
    let pool = Pool::builder()
        .workers(4)
        .key_limits(KeyLimits::default().concurrency(1))
        .build()
        .unwrap();
    let starts = Starts::default();
    pool.job(starts.job("a0", HOUR))
        .key("a")
        .spawn()
        .await
        .unwrap();
    settle().await;
    submit_tagged(&pool, &starts, "a-high", Some("a"), High).await;
    submit_tagged(&pool, &starts, "b-low", Some("b"), Low).await;
    settle().await;
    assert_eq!(starts.tags(), ["a0", "b-low"]);
    pool.abort();
}

/// A Low job that has waited longer than `priority_aging` (1 s) ranks as High and
/// starts before High jobs submitted after it: L at 0, H1 and H2 at 0.5 s, worker
/// free at 2 s: L, H1, H2 (without aging: H1, H2, L).
#[tokio::test(start_paused = true)]
async fn an_aged_low_job_starts_before_newer_high_jobs() {
    let starts = Starts::default();
    let pool = blocked_pool(2 * SEC, &starts).await;
    submit_tagged(&pool, &starts, "L", None, Low).await;
    advance(500 * MS).await;
    submit_tagged(&pool, &starts, "H1", None, High).await;
    submit_tagged(&pool, &starts, "H2", None, High).await;
    pool.shutdown().await;
    assert_eq!(starts.tags(), ["x", "L", "H1", "H2"]);
}

/// Before it has waited `priority_aging`, a Low job still ranks Low: worker free at
/// 0.9 s, so H (0.5 s) starts before L (0 s).
#[tokio::test(start_paused = true)]
async fn a_low_job_not_yet_aged_still_ranks_low() {
    let starts = Starts::default();
    let pool = blocked_pool(900 * MS, &starts).await;
    submit_tagged(&pool, &starts, "L", None, Low).await;
    advance(500 * MS).await;
    submit_tagged(&pool, &starts, "H", None, High).await;
    pool.shutdown().await;
    assert_eq!(starts.tags(), ["x", "H", "L"]);
}

/// Aged Low and Normal jobs keep their submission order among themselves and go
/// ahead of newer High jobs.
#[tokio::test(start_paused = true)]
async fn aged_jobs_keep_submission_order() {
    let starts = Starts::default();
    let pool = blocked_pool(3 * SEC, &starts).await;
    submit_tagged(&pool, &starts, "L", None, Low).await;
    advance(200 * MS).await;
    submit_tagged(&pool, &starts, "N", None, Normal).await;
    advance(200 * MS).await;
    submit_tagged(&pool, &starts, "L2", None, Low).await;
    advance(1_000 * MS).await;
    submit_tagged(&pool, &starts, "H", None, High).await;
    pool.shutdown().await;
    assert_eq!(starts.tags(), ["x", "L", "N", "L2", "H"]);
}

/// `priority_aging` is configurable: with 100 ms, a Low job queued 150 ms before
/// the worker frees starts before a High job queued after it.
#[tokio::test(start_paused = true)]
async fn priority_aging_is_configurable() {
    let pool = Pool::builder()
        .workers(1)
        .priority_aging(100 * MS)
        .build()
        .unwrap();
    let starts = Starts::default();
    pool.spawn(starts.job("x", 150 * MS)).await.unwrap();
    settle().await;
    submit_tagged(&pool, &starts, "L", None, Low).await;
    advance(50 * MS).await;
    submit_tagged(&pool, &starts, "H", None, High).await;
    pool.shutdown().await;
    assert_eq!(starts.tags(), ["x", "L", "H"]);
}

/// An aging period too long for the clock means no aging, not a panic.
#[tokio::test(start_paused = true)]
async fn an_aging_period_too_long_for_the_clock_never_ages() {
    let pool = Pool::builder()
        .workers(1)
        .priority_aging(Duration::MAX)
        .build()
        .unwrap();
    let starts = Starts::default();
    pool.spawn(starts.job("x", 10 * HOUR)).await.unwrap();
    settle().await;
    submit_tagged(&pool, &starts, "L", None, Low).await;
    advance(HOUR).await;
    submit_tagged(&pool, &starts, "H", None, High).await;
    pool.shutdown().await;
    assert_eq!(starts.tags(), ["x", "H", "L"]);
}

/// An aged job in its own key's lane takes turns with the High lanes: it starts
/// within the first round, not after the other key's High backlog.
#[tokio::test(start_paused = true)]
async fn an_aged_job_takes_turns_with_high_lanes() {
    let starts = Starts::default();
    let pool = blocked_pool(2 * SEC, &starts).await;
    submit_tagged(&pool, &starts, "L", Some("a"), Low).await;
    advance(500 * MS).await;
    for _ in 0..20 {
        submit_tagged(&pool, &starts, "H", Some("b"), High).await;
    }
    pool.shutdown().await;
    let tags = starts.tags();
    let at = tags.iter().position(|&t| t == "L").unwrap();
    assert!(at <= 2, "the aged job started {at}th: {tags:?}");
}

/// Nothing starves under a steady stream of High jobs: with one worker, jobs of
/// 100 ms and two new High jobs every 100 ms (the backlog only grows), a Low and a
/// Normal job queued at the start both start within `priority_aging` plus one job.
#[tokio::test(start_paused = true)]
async fn nothing_starves_under_a_steady_stream_of_high_jobs() {
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(1_000)
        .build()
        .unwrap();
    let starts = Starts::<&'static str>::default();
    let t0 = Instant::now();
    for _ in 0..2 {
        pool.job(starts.job("H", 100 * MS))
            .priority(High)
            .spawn()
            .await
            .unwrap();
    }
    pool.job(starts.job("L", 100 * MS))
        .priority(Low)
        .spawn()
        .await
        .unwrap();
    pool.job(starts.job("N", 100 * MS))
        .key("n")
        .spawn()
        .await
        .unwrap();
    for _ in 0..30 {
        for _ in 0..2 {
            pool.job(starts.job("H", 100 * MS))
                .priority(High)
                .spawn()
                .await
                .unwrap();
        }
        for _ in 0..100 {
            advance(MS).await;
            settle().await;
        }
    }
    let all = starts.all();
    for tag in ["L", "N"] {
        let t = all
            .iter()
            .find(|e| e.0 == tag)
            .unwrap_or_else(|| panic!("{tag} starved: {:?}", starts.tags()))
            .1;
        assert!(t <= t0 + SEC + 200 * MS, "{tag} started at {:?}", t - t0);
    }
    pool.abort();
}

/// An aged job moved up to `High` can still be cancelled and still times out in
/// the queue, and is counted once, in its key's stats and the pool's.
#[tokio::test(start_paused = true)]
async fn an_aged_job_can_be_cancelled_and_can_time_out_in_the_queue() {
    let pool = Pool::builder()
        .workers(4)
        .key_limits(KeyLimits::default().concurrency(1))
        .build()
        .unwrap();
    let g = Gauge::default();
    // Keys a and b are at their caps; their queued jobs wait.
    let _a0 = pool.job(held(&g, HOUR)).key("a").submit().await.unwrap();
    let _b0 = pool.job(held(&g, HOUR)).key("b").submit().await.unwrap();
    settle().await;
    let expiring = pool
        .job(async {})
        .key("a")
        .priority(Low)
        .queue_timeout(3 * SEC)
        .submit()
        .await
        .unwrap();
    let cancelled = pool
        .job(async {})
        .key("a")
        .priority(Normal)
        .submit()
        .await
        .unwrap();
    let waiting = pool
        .job(async {})
        .key("b")
        .priority(High)
        .submit()
        .await
        .unwrap();
    // After 1.5 s a worker looks for a job (an unkeyed one arrives): the aged jobs
    // of key a are lifted to High.
    advance(1_500 * MS).await;
    pool.run(async {}).await.unwrap();
    drop(cancelled);
    let ks = pool.key_stats(&"a".into()).unwrap();
    assert_eq!((ks.queued, ks.cancelled), (1, 1), "{ks:?}");
    assert_eq!(expiring.await, Err(JobError::QueueTimedOut));
    let ks = pool.key_stats(&"a".into()).unwrap();
    assert_eq!(
        (ks.busy, ks.queued, ks.queue_timed_out),
        (1, 0, 1),
        "{ks:?}"
    );
    let s = pool.stats();
    assert_eq!(
        (s.queued, s.cancelled, s.queue_timed_out),
        (1, 1, 1),
        "{s:?}"
    );
    assert!(!waiting.is_finished());
    drop(waiting);
    pool.abort();
    pool.shutdown().await;
    assert_accounted(&pool);
}
