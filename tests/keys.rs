//! Keys: a blocked key never holds a worker or stands in front of another key
//! (no head-of-line blocking); keys with startable jobs take turns; key limits hold
//! and compose with the pool's without double counting; per-key queues bound;
//! key state is collected so memory stays bounded in keys; key stats count.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use taskgate::{
    BuildError, JobError, Key, KeyLimits, LimitError, Pool, Rate, SubmitError, TrySubmitError,
};
use tokio::time::{Instant, advance};

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

fn keyed_pool(workers: usize, capacity: usize, limits: KeyLimits) -> Pool {
    Pool::builder()
        .workers(workers)
        .queue_capacity(capacity)
        .key_limits(limits)
        .build()
        .unwrap()
}

/// Submits `n` jobs of `key` that each hold `g` for `d`, and returns their handles.
async fn fill(
    pool: &Pool,
    key: &'static str,
    n: usize,
    g: &Gauge,
    d: Duration,
) -> Vec<taskgate::JobHandle<()>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(pool.job(held(g, d)).key(key).submit().await.unwrap());
    }
    v
}

// ---------------------------------------------------------------------------
// No head-of-line blocking
// ---------------------------------------------------------------------------

/// Submits one job of key `b` and checks that it starts at once, without any time
/// passing: `why` names what holds key `a` back.
async fn key_b_starts_at_once(pool: &Pool, why: &str) {
    let t0 = Instant::now();
    let b = pool
        .job(async { Instant::now() })
        .key("b")
        .submit()
        .await
        .unwrap();
    settle().await;
    assert!(b.is_finished(), "{why}");
    assert_eq!(b.await, Ok(t0));
}

/// A key at its concurrency cap with 1000 jobs queued holds one worker (its running
/// job) and no more, and a job of another key starts at once: fails if a capped
/// key's queued jobs park on workers or stand in front of other keys.
#[tokio::test(start_paused = true)]
async fn a_key_at_its_cap_with_a_backlog_does_not_hold_up_another_key() {
    let pool = keyed_pool(4, 2_000, KeyLimits::default().concurrency(1));
    let g = Gauge::default();
    let _a = fill(&pool, "a", 1_001, &g, HOUR).await;
    settle().await;
    assert_eq!(g.started(), 1);
    let s = pool.stats();
    assert_eq!((s.busy, s.queued), (1, 1_000), "{s:?}");

    key_b_starts_at_once(&pool, "key b's job must start while key a is capped").await;
    assert_eq!(g.started(), 1, "key a stays at its cap");
}

/// A key waiting for its rate with 1000 jobs queued holds no worker, and a job of
/// another key starts at once: fails if a rate-limited lane blocks the others or a
/// worker sleeps on the rate.
#[tokio::test(start_paused = true)]
async fn a_key_waiting_for_its_rate_does_not_hold_up_another_key() {
    let pool = keyed_pool(4, 2_000, KeyLimits::default().rate(Rate::per_minute(1)));
    let g = Gauge::default();
    let _a = fill(&pool, "a", 1_001, &g, MS).await;
    settle().await;
    advance(MS).await;
    settle().await;
    assert_eq!(g.started(), 1);
    let s = pool.stats();
    assert_eq!(
        (s.busy, s.queued),
        (0, 1_000),
        "a rate wait holds no worker: {s:?}"
    );

    key_b_starts_at_once(&pool, "key b's job must start while key a waits").await;
}

/// A paused key with 1000 jobs queued holds no worker, and a job of another key
/// starts at once: fails if a paused lane blocks the others.
#[tokio::test(start_paused = true)]
async fn a_paused_key_does_not_hold_up_another_key() {
    let pool = keyed_pool(4, 2_000, KeyLimits::default());
    pool.pause_key_for("a", HOUR);
    let g = Gauge::default();
    let _a = fill(&pool, "a", 1_000, &g, MS).await;
    settle().await;
    assert_eq!(g.started(), 0);
    let s = pool.stats();
    assert_eq!(
        (s.busy, s.queued),
        (0, 1_000),
        "a paused key holds no worker: {s:?}"
    );

    key_b_starts_at_once(&pool, "key b's job must start while key a is paused").await;
}

/// Unkeyed jobs are a lane of their own: a capped key's backlog does not hold them
/// up, and key limits do not apply to them.
#[tokio::test(start_paused = true)]
async fn unkeyed_jobs_are_neither_held_up_by_keys_nor_subject_to_key_limits() {
    let pool = keyed_pool(
        4,
        2_000,
        KeyLimits::default()
            .concurrency(1)
            .rate(Rate::per_minute(1)),
    );
    let g = Gauge::default();
    let _a = fill(&pool, "a", 1_000, &g, HOUR).await;
    let u = Gauge::default();
    let mut unkeyed = Vec::new();
    for _ in 0..3 {
        unkeyed.push(pool.submit(held(&u, HOUR)).await.unwrap());
    }
    settle().await;
    assert_eq!(g.now(), 1);
    assert_eq!(u.now(), 3, "unkeyed jobs start at once, three at a time");
}

/// With one worker busy on a capped key's job, a worker added later goes to another
/// key's job, not to the capped key's 999 queued jobs ahead of it.
#[tokio::test(start_paused = true)]
async fn a_new_worker_goes_to_another_key_not_to_the_capped_backlog() {
    let pool = keyed_pool(1, 2_000, KeyLimits::default().concurrency(1));
    let starts = Starts::<&'static str>::default();
    let mut hs = Vec::new();
    for _ in 0..1_000 {
        hs.push(
            pool.job(starts.job("a", HOUR))
                .key("a")
                .submit()
                .await
                .unwrap(),
        );
    }
    settle().await;
    let b = pool
        .job(starts.job("b", MS))
        .key("b")
        .submit()
        .await
        .unwrap();
    settle().await;
    // The single worker runs a's first job; b waits for the worker, not for key a.
    assert_eq!(starts.tags(), ["a"]);
    pool.resize(2);
    settle().await;
    assert_eq!(starts.tags(), ["a", "b"]);
    assert_eq!(b.await, Ok(()));
}

// ---------------------------------------------------------------------------
// Fairness
// ---------------------------------------------------------------------------

/// With one worker, a key with 10 000 queued jobs and a key with 3 take turns: the
/// small key's jobs are the 2nd, 4th and 6th to start. Fails if lanes are served
/// FIFO across keys (b would wait for 10 000 jobs) or the rotation is broken.
#[tokio::test(start_paused = true)]
async fn keys_take_turns_however_long_their_backlog() {
    // The whole queue to one key: by default a key may hold only half of it.
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(10_010)
        .key_queue_share(1.0)
        .build()
        .unwrap();
    let starts = Starts::<&'static str>::default();
    for _ in 0..10_000 {
        pool.job(starts.job("a", Duration::ZERO))
            .key("a")
            .spawn()
            .await
            .unwrap();
    }
    for _ in 0..3 {
        pool.job(starts.job("b", Duration::ZERO))
            .key("b")
            .spawn()
            .await
            .unwrap();
    }
    pool.shutdown().await;
    let tags = starts.tags();
    assert_eq!(tags.len(), 10_003);
    assert_eq!(&tags[..7], ["a", "b", "a", "b", "a", "b", "a"]);
    assert_accounted(&pool);
}

/// Three keys and the unkeyed lane with uneven backlogs rotate strictly, each
/// dropping out as it empties: fails if one lane gets two turns in a row while
/// another waits.
#[tokio::test(start_paused = true)]
async fn lanes_rotate_round_robin_and_drop_out_when_empty() {
    let pool = pool(1, 100);
    let starts = Starts::<&'static str>::default();
    for (key, n) in [("a", 4), ("b", 1), ("c", 2)] {
        for _ in 0..n {
            pool.job(starts.job(key, Duration::ZERO))
                .key(key)
                .spawn()
                .await
                .unwrap();
        }
    }
    for _ in 0..3 {
        pool.spawn(starts.job("-", Duration::ZERO)).await.unwrap();
    }
    pool.shutdown().await;
    assert_eq!(
        starts.tags(),
        ["a", "b", "c", "-", "a", "c", "-", "a", "-", "a"]
    );
}

/// Under steady load from a busy key, a key that submits now and then is served
/// within a round: fails if a newly active key goes to the back of the busy key's
/// backlog rather than the back of the ring.
#[tokio::test(start_paused = true)]
async fn a_key_that_arrives_late_is_served_within_one_round() {
    let pool = pool(1, 10_000);
    let starts = Starts::<&'static str>::default();
    for _ in 0..5_000 {
        pool.job(starts.job("a", MS))
            .key("a")
            .spawn()
            .await
            .unwrap();
    }
    settle().await;
    advance(10 * MS).await;
    settle().await;
    let before = starts.len();
    let b = pool
        .job(starts.job("b", MS))
        .key("b")
        .submit()
        .await
        .unwrap();
    b.await.unwrap();
    let tags = starts.tags();
    let pos = tags.iter().position(|&t| t == "b").unwrap();
    assert!(
        pos <= before + 1,
        "b started {} starts after it was submitted",
        pos - before
    );
    pool.abort();
}

// ---------------------------------------------------------------------------
// Key limits, and how they compose
// ---------------------------------------------------------------------------

/// A key's concurrency cap holds, and other keys fill the remaining workers: key a
/// (cap 2) never runs more than 2, and the pool runs 6 at once.
#[tokio::test(start_paused = true)]
async fn key_concurrency_cap_holds_while_other_keys_use_the_rest() {
    let pool = keyed_pool(6, 1_000, KeyLimits::default());
    pool.set_key_limits("a", KeyLimits::default().concurrency(2))
        .unwrap();
    let ga = Gauge::default();
    let gall = Gauge::default();
    let mut hs = Vec::new();
    for i in 0..60u32 {
        let (ga, gall) = (ga.clone(), gall.clone());
        let key = if i % 2 == 0 { "a" } else { "b" };
        let job = async move {
            let _all = gall.enter();
            let _a = (key == "a").then(|| ga.enter());
            tokio::time::sleep((1 + i % 3) * MS).await;
        };
        hs.push(pool.job(job).key(key).submit().await.unwrap());
    }
    settle().await;
    assert_eq!((ga.now(), gall.now()), (2, 6));
    for h in hs {
        h.await.unwrap();
        assert!(ga.now() <= 2 && gall.now() <= 6);
    }
    assert_eq!((ga.peak(), gall.peak()), (2, 6));
    assert_eq!(gall.started(), 60);
    assert_accounted(&pool);
}

/// A job counts once against the pool's workers and once against its key's cap: a
/// key with cap 2 on a 2-worker pool runs 2 at once (not 1).
#[tokio::test(start_paused = true)]
async fn a_job_counts_once_against_workers_and_its_key_cap() {
    let pool = keyed_pool(2, 100, KeyLimits::default().concurrency(2));
    let g = Gauge::default();
    let t0 = Instant::now();
    let hs = fill(&pool, "a", 6, &g, 10 * MS).await;
    settle().await;
    assert_eq!(g.now(), 2);
    assert_eq!(pool.key_stats(&"a".into()).unwrap().busy, 2);
    for h in hs {
        h.await.unwrap();
    }
    assert_eq!(g.peak(), 2);
    // Three rounds of two, back to back: nothing was counted twice or leaked.
    assert_eq!(t0.elapsed(), 30 * MS);
    assert_accounted(&pool);
}

/// The workers bound holds across many keys, each with a cap above it.
#[tokio::test(start_paused = true)]
async fn the_worker_limit_holds_across_many_keys() {
    let pool = keyed_pool(3, 1_000, KeyLimits::default().concurrency(5));
    let g = Gauge::default();
    let mut hs = Vec::new();
    for i in 0..100u32 {
        let key = format!("k{}", i % 20);
        hs.push(
            pool.job(held(&g, (1 + i % 4) * MS))
                .key(key)
                .submit()
                .await
                .unwrap(),
        );
    }
    for h in hs {
        h.await.unwrap();
        assert!(g.now() <= 3);
    }
    assert_eq!(g.peak(), 3);
    assert_eq!(g.started(), 100);
    assert_accounted(&pool);
}

/// A queued job cancelled while its key is at its cap takes no place against the
/// cap: when the running job ends, the job queued after the cancelled one starts at
/// that very moment.
#[tokio::test(start_paused = true)]
async fn a_job_cancelled_while_capped_consumes_no_concurrency() {
    let pool = keyed_pool(4, 100, KeyLimits::default().concurrency(1));
    let starts = Starts::<u32>::default();
    let t0 = Instant::now();
    let first = pool
        .job(starts.job(1, 10 * MS))
        .key("a")
        .submit()
        .await
        .unwrap();
    let second = pool
        .job(starts.job(2, 10 * MS))
        .key("a")
        .submit()
        .await
        .unwrap();
    let third = pool
        .job(starts.job(3, 10 * MS))
        .key("a")
        .submit()
        .await
        .unwrap();
    settle().await;
    drop(second);
    assert_eq!(first.await, Ok(()));
    assert_eq!(third.await, Ok(()));
    assert_eq!(starts.all(), [(1, t0), (3, t0 + 10 * MS)]);
    assert_accounted(&pool);
}

/// A running keyed job cancelled by its caller frees its key's place at once.
#[tokio::test(start_paused = true)]
async fn cancelling_a_running_keyed_job_frees_its_key_place() {
    let pool = keyed_pool(4, 100, KeyLimits::default().concurrency(1));
    let (job, dropped) = pending_job();
    let running = pool.job(job).key("a").submit().await.unwrap();
    let next = pool
        .job(async { Instant::now() })
        .key("a")
        .submit()
        .await
        .unwrap();
    settle().await;
    assert!(!next.is_finished());
    advance(5 * MS).await;
    let t = Instant::now();
    drop(running);
    settle().await;
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(next.await, Ok(t));
}

/// A job whose queue timeout expires while its key is capped resolves as
/// `QueueTimedOut`, is counted in the key's and the pool's stats, and consumes no
/// concurrency.
#[tokio::test(start_paused = true)]
async fn queue_timeout_while_blocked_by_a_key_limit() {
    let pool = keyed_pool(4, 100, KeyLimits::default().concurrency(1));
    let g = Gauge::default();
    let running = pool
        .job(held(&g, 100 * MS))
        .key("a")
        .submit()
        .await
        .unwrap();
    let waiting = pool
        .job(held(&g, MS))
        .key("a")
        .queue_timeout(10 * MS)
        .submit()
        .await
        .unwrap();
    let after = pool.job(held(&g, MS)).key("a").submit().await.unwrap();
    settle().await;
    assert_eq!(waiting.await, Err(JobError::QueueTimedOut));
    let ks = pool.key_stats(&"a".into()).unwrap();
    assert_eq!(
        (ks.busy, ks.queued, ks.queue_timed_out),
        (1, 1, 1),
        "{ks:?}"
    );
    assert_eq!(pool.stats().queue_timed_out, 1);
    assert_eq!(running.await, Ok(()));
    assert_eq!(after.await, Ok(()));
    assert_eq!(g.started(), 2);
    assert_accounted(&pool);
}

/// Dropping the handle of a job waiting on its key's cap cancels it: its future is
/// dropped at once, it never starts, and the key counts it cancelled.
#[tokio::test(start_paused = true)]
async fn cancel_on_drop_while_waiting_on_a_key_limit() {
    let pool = keyed_pool(4, 100, KeyLimits::default().concurrency(1));
    let g = Gauge::default();
    let running = pool.job(held(&g, 10 * MS)).key("a").submit().await.unwrap();
    let (flag, dropped) = drop_flag();
    let waiting = pool
        .job(async move {
            let _f = flag;
            unreachable!("a cancelled queued job must never start");
        })
        .key("a")
        .submit()
        .await
        .unwrap();
    settle().await;
    drop(waiting);
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    let ks = pool.key_stats(&"a".into()).unwrap();
    assert_eq!((ks.busy, ks.queued, ks.cancelled), (1, 0, 1), "{ks:?}");
    assert_eq!(running.await, Ok(()));
    settle().await;
    let s = pool.stats();
    assert_eq!((s.completed, s.cancelled), (1, 1));
    assert_accounted(&pool);
}

// ---------------------------------------------------------------------------
// Per-key queue capacity
// ---------------------------------------------------------------------------

/// `try_submit` beyond a key's queue capacity is refused with the future handed
/// back, counted as a rejection, while other keys are still accepted.
#[tokio::test(start_paused = true)]
async fn try_submit_beyond_a_key_queue_capacity_is_refused_with_the_future() {
    let pool = keyed_pool(
        1,
        100,
        KeyLimits::default().concurrency(1).queue_capacity(2),
    );
    let g = Gauge::default();
    let _running = pool.job(held(&g, HOUR)).key("a").submit().await.unwrap();
    settle().await;
    let _q1 = pool.job(async { 1 }).key("a").try_submit().unwrap();
    let _q2 = pool.job(async { 2 }).key("a").try_submit().unwrap();
    match pool.job(async { 42 }).key("a").try_submit() {
        Err(TrySubmitError::Full(fut)) => assert_eq!(fut.await, 42),
        other => panic!("expected Full, got {:?}", other.map(|_| ())),
    }
    assert_eq!(pool.stats().rejected, 1);
    // Another key is not affected by a's full queue.
    pool.job(async {}).key("b").try_submit().unwrap().detach();
    assert_eq!(pool.key_stats(&"a".into()).unwrap().queued, 2);
}

/// A `submit` that finds its key's queue full waits, and is accepted as soon as a
/// place in that queue frees (here: the key's rate lets a queued job start at 1 s,
/// while every running job runs for an hour).
#[tokio::test(start_paused = true)]
async fn submit_waits_for_key_queue_space_and_proceeds_when_it_frees() {
    let pool = keyed_pool(
        4,
        100,
        KeyLimits::default()
            .queue_capacity(1)
            .rate(Rate::per_second(1)),
    );
    let g = Gauge::default();
    let t0 = Instant::now();
    let _a1 = pool.job(held(&g, HOUR)).key("a").submit().await.unwrap();
    settle().await;
    let _a2 = pool.job(held(&g, HOUR)).key("a").submit().await.unwrap();
    let p = pool.clone();
    let waiter = tokio::spawn(async move {
        let h = p.job(async {}).key("a").submit().await.ok().unwrap();
        h.detach();
        Instant::now()
    });
    settle().await;
    assert!(!waiter.is_finished(), "a's queue is full: submit waits");
    // Another key's submission does not wait behind it.
    pool.job(async {}).key("b").try_submit().unwrap().detach();
    let accepted = tokio::time::timeout(HOUR / 2, waiter).await;
    assert_eq!(accepted.unwrap().unwrap(), t0 + Duration::from_secs(1));
}

/// A waiting `submit` for a full key queue is also released by a cancel in that
/// key, and `submit_timeout` gives the future back when nothing frees in time.
#[tokio::test(start_paused = true)]
async fn key_queue_waiters_are_released_by_a_cancel_or_time_out() {
    let pool = keyed_pool(
        1,
        100,
        KeyLimits::default().concurrency(1).queue_capacity(1),
    );
    let g = Gauge::default();
    let _running = pool.job(held(&g, HOUR)).key("a").submit().await.unwrap();
    settle().await;
    let queued = pool.job(held(&g, MS)).key("a").submit().await.unwrap();
    match pool.job(async { 7 }).key("a").submit_timeout(10 * MS).await {
        Err(SubmitError::Timeout(fut)) => assert_eq!(fut.await, 7),
        other => panic!("expected Timeout, got {:?}", other.map(|_| ())),
    }
    let p = pool.clone();
    let waiter = tokio::spawn(async move { p.job(async {}).key("a").submit().await.is_ok() });
    settle().await;
    assert!(!waiter.is_finished());
    drop(queued);
    settle().await;
    assert!(waiter.is_finished());
    assert!(waiter.await.unwrap());
}

// ---------------------------------------------------------------------------
// Changing limits at runtime; invalid limits
// ---------------------------------------------------------------------------

/// Raising a key's cap at runtime starts its waiting jobs at once.
#[tokio::test(start_paused = true)]
async fn raising_a_key_cap_at_runtime_starts_waiting_jobs_at_once() {
    let pool = keyed_pool(8, 100, KeyLimits::default().concurrency(1));
    let g = Gauge::default();
    let _hs = fill(&pool, "a", 5, &g, HOUR).await;
    settle().await;
    assert_eq!(g.now(), 1);
    pool.set_key_limits("a", KeyLimits::default().concurrency(3))
        .unwrap();
    settle().await;
    assert_eq!(g.now(), 3);
    // Clearing the override goes back to the default cap: nothing running is
    // interrupted, and nothing more starts.
    pool.clear_key_limits("a");
    settle().await;
    assert_eq!(g.now(), 3);
    assert_eq!(g.started(), 3);
}

/// Lowering a key's cap interrupts nothing, and new starts wait until the key is
/// below the new cap.
#[tokio::test(start_paused = true)]
async fn lowering_a_key_cap_stops_new_starts_without_interrupting() {
    let pool = keyed_pool(8, 100, KeyLimits::default().concurrency(3));
    let g = Gauge::default();
    let mut hs = fill(&pool, "a", 3, &g, 10 * MS).await;
    hs.extend(fill(&pool, "a", 3, &g, 10 * MS).await);
    settle().await;
    assert_eq!(g.now(), 3);
    pool.set_key_limits("a", KeyLimits::default().concurrency(1))
        .unwrap();
    advance(10 * MS).await;
    settle().await;
    assert_eq!(g.now(), 1);
    assert_eq!(g.started(), 4);
    for h in hs {
        h.await.unwrap();
        assert!(g.now() <= 1);
    }
}

/// A key override set before any job of the key is used when its jobs arrive.
#[tokio::test(start_paused = true)]
async fn an_override_set_before_the_key_has_state_applies_to_its_jobs() {
    let pool = keyed_pool(8, 100, KeyLimits::default());
    pool.set_key_limits("a", KeyLimits::default().concurrency(2))
        .unwrap();
    assert_eq!(pool.key_stats(&"a".into()), None);
    let g = Gauge::default();
    let _hs = fill(&pool, "a", 5, &g, HOUR).await;
    settle().await;
    assert_eq!(g.now(), 2);
}

/// Zero limits are typed errors from `set_key_limits` (changing nothing) and
/// from `build`, never panics.
#[tokio::test(start_paused = true)]
async fn invalid_limits_are_typed_errors() {
    let pool = keyed_pool(2, 10, KeyLimits::default());
    let cases = [
        (
            KeyLimits::default().concurrency(0),
            LimitError::ZeroConcurrency,
        ),
        (
            KeyLimits::default().queue_capacity(0),
            LimitError::ZeroQueueCapacity,
        ),
        (
            KeyLimits::default().rate(Rate::per_second(0)),
            LimitError::ZeroRate,
        ),
        (
            KeyLimits::default().rate(Rate::new(1, Duration::ZERO)),
            LimitError::ZeroPeriod,
        ),
        (
            KeyLimits::default().rate(Rate::per_second(1).burst(0)),
            LimitError::ZeroBurst,
        ),
    ];
    for (limits, err) in cases {
        assert_eq!(pool.set_key_limits("a", limits.clone()), Err(err));
        let built = Pool::builder().workers(1).key_limits(limits).build();
        assert_eq!(built.err(), Some(BuildError::InvalidLimit(err)));
    }
    for (rate, err) in [
        (Rate::per_minute(0), LimitError::ZeroRate),
        (Rate::new(3, Duration::ZERO), LimitError::ZeroPeriod),
        (Rate::per_second(3).burst(0), LimitError::ZeroBurst),
    ] {
        let built = Pool::builder().workers(1).rate_limit(rate).build();
        assert_eq!(built.err(), Some(BuildError::InvalidLimit(err)));
    }
    // A refused override changed nothing: key a is still unlimited.
    let g = Gauge::default();
    let _hs = fill(&pool, "a", 2, &g, HOUR).await;
    settle().await;
    assert_eq!(g.now(), 2);
}

// ---------------------------------------------------------------------------
// Keys: identity and state
// ---------------------------------------------------------------------------

/// A key made from a `&'static str`, a `String` or an `Arc<str>` with the same text
/// is one key: one lane, one set of limits and stats.
#[tokio::test(start_paused = true)]
async fn keys_with_equal_text_are_one_key_however_made() {
    let pool = keyed_pool(8, 100, KeyLimits::default().concurrency(1));
    let g = Gauge::default();
    let _h1 = pool
        .job(held(&g, HOUR))
        .key("tenant")
        .submit()
        .await
        .unwrap();
    let _h2 = pool
        .job(held(&g, HOUR))
        .key(String::from("tenant"))
        .submit()
        .await
        .unwrap();
    let _h3 = pool
        .job(held(&g, HOUR))
        .key(Arc::<str>::from("tenant"))
        .submit()
        .await
        .unwrap();
    settle().await;
    assert_eq!(g.now(), 1, "one key, capped at 1");
    let k = Key::from(String::from("tenant"));
    assert_eq!(k.as_str(), "tenant");
    assert_eq!(k.to_string(), "tenant");
    assert_eq!(format!("{k:?}"), "\"tenant\"");
    let ks = pool.key_stats(&k).unwrap();
    assert_eq!((ks.busy, ks.queued), (1, 2));
    assert_eq!(pool.stats().keys, 1);
}

/// A key's state goes when its last job ends (no pause, no rate): `key_stats` is
/// `None` and `stats().keys` is 0.
#[tokio::test(start_paused = true)]
async fn key_state_goes_when_its_last_job_ends() {
    let pool = keyed_pool(2, 100, KeyLimits::default().concurrency(1));
    let g = Gauge::default();
    let hs = fill(&pool, "a", 3, &g, 10 * MS).await;
    assert_eq!(pool.stats().keys, 1);
    for h in hs {
        assert!(pool.key_stats(&"a".into()).is_some());
        h.await.unwrap();
    }
    settle().await;
    assert_eq!(pool.key_stats(&"a".into()), None);
    assert_eq!(pool.stats().keys, 0);
    // And comes back fresh.
    let h = pool.job(async {}).key("a").submit().await.unwrap();
    let ks = pool.key_stats(&"a".into()).unwrap();
    assert_eq!((ks.queued, ks.completed), (1, 0));
    h.await.unwrap();
    settle().await;
    assert_eq!(pool.stats().keys, 0);
}

/// The last job of a key being cancelled (queued) or timing out in the queue also
/// removes the key's state.
#[tokio::test(start_paused = true)]
async fn key_state_goes_when_its_last_job_is_cancelled_or_expires() {
    let pool = keyed_pool(1, 100, KeyLimits::default());
    pool.resize(0);
    let cancelled = pool.job(async {}).key("a").submit().await.unwrap();
    let _expiring = pool
        .job(async {})
        .key("b")
        .queue_timeout(10 * MS)
        .submit()
        .await
        .unwrap();
    assert_eq!(pool.stats().keys, 2);
    drop(cancelled);
    assert_eq!(pool.key_stats(&"a".into()), None);
    advance(10 * MS).await;
    settle().await;
    assert_eq!(pool.key_stats(&"b".into()), None);
    assert_eq!(pool.stats().keys, 0);
    assert_accounted(&pool);
}

/// One million distinct keys pass through a pool, one job each: the number of keys
/// with state never exceeds the jobs queued and running, and returns to 0. Fails
/// if key state leaks (memory grows with the number of keys ever seen).
#[tokio::test(start_paused = true)]
async fn a_million_keys_pass_through_and_leave_no_state() {
    const KEYS: usize = 1_000_000;
    let pool = Pool::builder()
        .workers(64)
        .queue_capacity(4_096)
        .key_limits(KeyLimits::default().concurrency(1).queue_capacity(1))
        .build()
        .unwrap();
    let mut max_keys = 0;
    for i in 0..KEYS {
        pool.job(async {})
            .key(format!("k{i}"))
            .spawn()
            .await
            .unwrap();
        if i % 4_096 == 0 {
            let s = pool.stats();
            assert!(s.keys <= s.queued + s.busy, "{s:?}");
            max_keys = max_keys.max(s.keys);
        }
    }
    pool.shutdown().await;
    let s = pool.stats();
    assert_eq!(s.completed, KEYS as u64);
    assert_eq!(s.keys, 0, "{s:?}");
    assert!(max_keys <= 4_096 + 64, "{max_keys}");
    assert_accounted(&pool);
}

/// A key whose last job has ended but that still owes its rate keeps its state
/// (so the rate cannot be reset by letting the key go) until the debt ends, and
/// then goes without any further activity.
#[tokio::test(start_paused = true)]
async fn a_key_with_rate_debt_stays_until_the_debt_ends() {
    let pool = keyed_pool(2, 100, KeyLimits::default().rate(Rate::per_second(1)));
    pool.job(async {}).key("a").run().await.unwrap();
    settle().await;
    assert_eq!(pool.stats().keys, 1);
    let ks = pool
        .key_stats(&"a".into())
        .expect("rate debt keeps the key");
    assert_eq!((ks.busy, ks.queued, ks.completed), (0, 0, 1));
    advance(999 * MS).await;
    settle().await;
    assert!(pool.key_stats(&"a".into()).is_some());
    advance(MS).await;
    settle().await;
    assert_eq!(pool.key_stats(&"a".into()), None);
    assert_eq!(pool.stats().keys, 0);
}

/// A paused key with no jobs keeps its state until the pause ends, then goes.
#[tokio::test(start_paused = true)]
async fn a_paused_key_stays_until_the_pause_ends() {
    let pool = keyed_pool(2, 100, KeyLimits::default());
    let t0 = Instant::now();
    pool.pause_key_for("a", 500 * MS);
    assert_eq!(pool.stats().keys, 1);
    let ks = pool.key_stats(&"a".into()).expect("a pause keeps the key");
    assert_eq!(ks.paused_until, Some(t0 + 500 * MS));
    advance(499 * MS).await;
    settle().await;
    assert!(pool.key_stats(&"a".into()).is_some());
    advance(MS).await;
    settle().await;
    assert_eq!(pool.key_stats(&"a".into()), None);
    assert_eq!(pool.stats().keys, 0);
}

// ---------------------------------------------------------------------------
// Key stats and core semantics with keys
// ---------------------------------------------------------------------------

/// A key's counters count each outcome of its jobs: completed, cancelled (queued
/// and running), timed out, queue timed out and panicked; busy and queued are live.
#[tokio::test(start_paused = true)]
async fn key_stats_count_each_outcome() {
    let pool = keyed_pool(8, 100, KeyLimits::default().concurrency(4));
    let k = Key::from("a");
    // Holds the key's state (and one of its places) throughout.
    let (hold, _) = pending_job();
    let _hold = pool.job(hold).key("a").submit().await.unwrap();
    pool.job(async {}).key("a").run().await.unwrap();
    pool.job(async {}).key("a").run().await.unwrap();
    let timed = pool
        .job(tokio::time::sleep(HOUR))
        .key("a")
        .timeout(10 * MS)
        .run()
        .await;
    assert_eq!(timed, Err(JobError::TimedOut));
    let panicked = pool.job(async { panic!("boom") }).key("a").run().await;
    assert!(matches!(panicked, Err(JobError::Panicked(_))));
    let running = pool
        .job(tokio::time::sleep(HOUR))
        .key("a")
        .submit()
        .await
        .unwrap();
    settle().await;
    running.cancel();
    assert_eq!(running.await, Err(JobError::Cancelled));
    // Fill the cap, then one queued job cancelled and one expiring in the queue.
    let g = Gauge::default();
    let _busy = fill(&pool, "a", 3, &g, HOUR).await;
    let queued = pool.job(async {}).key("a").submit().await.unwrap();
    let expiring = pool
        .job(async {})
        .key("a")
        .queue_timeout(5 * MS)
        .submit()
        .await
        .unwrap();
    let waiting = pool.job(async {}).key("a").submit().await.unwrap();
    settle().await;
    drop(queued);
    assert_eq!(expiring.await, Err(JobError::QueueTimedOut));
    settle().await;
    let ks = pool.key_stats(&k).unwrap();
    assert_eq!(ks.busy, 4, "{ks:?}");
    assert_eq!(ks.queued, 1, "{ks:?}");
    assert_eq!(ks.completed, 2, "{ks:?}");
    assert_eq!(ks.cancelled, 2, "{ks:?}");
    assert_eq!(ks.timed_out, 1, "{ks:?}");
    assert_eq!(ks.queue_timed_out, 1, "{ks:?}");
    assert_eq!(ks.panicked, 1, "{ks:?}");
    assert_eq!(ks.paused_until, None);
    drop(waiting);
}

/// `stats().keys` counts keys with state, and `busy`/`queued` in key stats sum to
/// the pool's.
#[tokio::test(start_paused = true)]
async fn key_stats_add_up_to_the_pool_stats() {
    let pool = keyed_pool(5, 100, KeyLimits::default().concurrency(2));
    let g = Gauge::default();
    let mut hs = Vec::new();
    for key in ["a", "b", "c"] {
        hs.extend(fill(&pool, key, 4, &g, HOUR).await);
    }
    hs.push(pool.submit(held(&g, HOUR)).await.unwrap());
    settle().await;
    let s = pool.stats();
    assert_eq!(s.keys, 3);
    let (mut busy, mut queued) = (0, 0);
    for key in ["a", "b", "c"] {
        let ks = pool.key_stats(&key.into()).unwrap();
        assert!(ks.busy <= 2);
        busy += ks.busy;
        queued += ks.queued;
    }
    assert_eq!(busy + 1, s.busy, "{s:?}");
    assert_eq!(queued, s.queued, "{s:?}");
    assert_eq!(s.busy, 5);
}

/// Closing a pool keeps keyed jobs that wait on their key's cap: they still run,
/// and new ones are refused.
#[tokio::test(start_paused = true)]
async fn close_keeps_keyed_jobs_that_wait_on_their_cap() {
    let pool = keyed_pool(4, 100, KeyLimits::default().concurrency(1));
    let g = Gauge::default();
    let hs = fill(&pool, "a", 4, &g, 10 * MS).await;
    settle().await;
    pool.close();
    assert!(matches!(
        pool.job(async {}).key("a").try_submit(),
        Err(TrySubmitError::Closed(_))
    ));
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.peak(), 1);
}

/// `shutdown` waits for keyed jobs held back by their key's cap, and returns once
/// they have all run.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_jobs_held_by_a_key_cap() {
    let pool = keyed_pool(4, 100, KeyLimits::default().concurrency(1));
    let g = Gauge::default();
    for _ in 0..4 {
        pool.job(held(&g, 10 * MS)).key("a").spawn().await.unwrap();
        pool.job(held(&g, 10 * MS)).key("b").spawn().await.unwrap();
    }
    let t0 = Instant::now();
    let done = tokio::time::timeout(HOUR, pool.shutdown()).await;
    assert!(done.is_ok(), "shutdown hung: {:?}", pool.stats());
    assert_eq!(t0.elapsed(), 40 * MS);
    assert_eq!(g.started(), 8);
    assert_eq!(pool.stats().keys, 0);
    assert_accounted(&pool);
}

/// `shutdown_timeout` cancels keyed jobs still held by their key's cap at the
/// deadline.
#[tokio::test(start_paused = true)]
async fn shutdown_timeout_cancels_jobs_held_by_a_key_cap() {
    let pool = keyed_pool(4, 100, KeyLimits::default().concurrency(1));
    let g = Gauge::default();
    for _ in 0..5 {
        pool.job(held(&g, 10 * MS)).key("a").spawn().await.unwrap();
    }
    let report = tokio::time::timeout(HOUR, pool.shutdown_timeout(25 * MS))
        .await
        .expect("shutdown_timeout hung");
    // Jobs 1 and 2 completed; job 3 was running at the deadline; 4 and 5 queued.
    assert_eq!((report.completed, report.cancelled), (2, 3));
    assert_eq!(g.started(), 3);
    assert_eq!(pool.stats().keys, 0);
    assert_accounted(&pool);
}

/// Growing the pool starts keyed jobs that were waiting for a worker (not for
/// their key), and shrinking it keeps key limits intact.
#[tokio::test(start_paused = true)]
async fn resize_starts_keyed_jobs_waiting_for_a_worker() {
    let pool = keyed_pool(1, 100, KeyLimits::default().concurrency(2));
    let g = Gauge::default();
    let mut hs = fill(&pool, "a", 4, &g, HOUR).await;
    hs.extend(fill(&pool, "b", 4, &g, HOUR).await);
    settle().await;
    assert_eq!(g.now(), 1);
    pool.resize(8);
    settle().await;
    assert_eq!(g.now(), 4, "two per key, both keys");
    assert_eq!(pool.stats().busy, 4);
    pool.abort();
}

/// After a mixed run with keys (completions, cancels, timeouts, panics, queue
/// timeouts), the stats identity holds and no key state is left.
#[tokio::test(start_paused = true)]
async fn stats_identity_holds_with_keys() {
    let pool = keyed_pool(
        3,
        1_000,
        KeyLimits::default()
            .concurrency(2)
            .rate(Rate::per_second(50).burst(5)),
    );
    let mut hs = Vec::new();
    for i in 0..300u32 {
        let key = format!("k{}", i % 7);
        let job = async move {
            tokio::time::sleep((i % 5) * MS).await;
            if i % 31 == 0 {
                panic!("job {i}");
            }
        };
        let mut b = pool.job(job).key(key);
        if i % 11 == 0 {
            b = b.timeout(2 * MS);
        }
        if i % 13 == 0 {
            b = b.queue_timeout(20 * MS);
        }
        let h = b.submit().await.unwrap();
        if i % 17 == 0 {
            drop(h);
        } else {
            hs.push(h);
        }
    }
    for h in hs {
        let _ = h.await;
    }
    // Waits for the pool to go quiet without shutdown (whose waiting is tested
    // on its own).
    while pool.stats().queued + pool.stats().busy > 0 {
        tokio::time::sleep(MS).await;
    }
    // Keys keep their state while they owe their rate (at most 5 intervals).
    tokio::time::sleep(100 * MS).await;
    settle().await;
    let s = pool.stats();
    assert_eq!(s.submitted, 300);
    assert_eq!(s.submitted, s.ended(), "{s:?}");
    assert!(
        s.panicked > 0 && s.timed_out > 0 && s.cancelled > 0,
        "{s:?}"
    );
    assert!(s.queue_timed_out > 0, "{s:?}");
    assert_eq!(s.keys, 0);
    assert_accounted(&pool);
}

/// Callers cancel queued jobs of one-job keys while workers on other threads take
/// them: a job found cancelled as it is taken counts against nothing and is counted
/// once, and its key's state is removed exactly once. Fails if the lane of a job
/// taken already-cancelled is collected at the take and then used again when the
/// worker reports the job's end (a panic in a worker, which aborts the pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancels_racing_workers_on_one_job_keys_are_counted_once() {
    let pool = Pool::builder()
        .workers(4)
        .queue_capacity(100_000)
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<taskgate::JobHandle<()>>();
    let dropper = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    for i in 0..100_000u32 {
        let h = pool
            .job(async {})
            .key(format!("k{i}"))
            .submit()
            .await
            .expect("the pool closed: a worker panicked");
        tx.send(h).unwrap();
    }
    drop(tx);
    dropper.await.unwrap();
    pool.shutdown().await;
    let s = pool.stats();
    assert_eq!(s.submitted, 100_000);
    assert_eq!(s.submitted, s.ended(), "{s:?}");
    assert_eq!(s.keys, 0, "{s:?}");
    assert_accounted(&pool);
}

// ---------------------------------------------------------------------------
// The key queue share: one key cannot take the whole queue
// ---------------------------------------------------------------------------

/// Key `a` is paused with 10 000 submitters waiting on it: by default it holds at
/// most half of the pool's places (51 of 100 + 2 workers), so a key `b` submit is
/// admitted at once and unkeyed jobs still flow. Fails if a stalled key can fill
/// the pool's queue.
#[tokio::test(start_paused = true)]
async fn a_stalled_key_with_10_000_waiters_leaves_room_for_others() {
    let pool = Pool::builder()
        .workers(2)
        .queue_capacity(100)
        .build()
        .unwrap();
    pool.pause_key_for("a", HOUR);
    let mut waiters = Vec::new();
    for _ in 0..10_000 {
        let p = pool.clone();
        waiters.push(tokio::spawn(async move {
            p.job(async {}).key("a").submit().await.map(|h| h.detach())
        }));
    }
    settle().await;
    let a = pool.key_stats(&Key::from("a")).unwrap();
    assert_eq!(a.queued, 51, "key a holds its share, half of the places");
    let admitted = waiters.iter().filter(|w| w.is_finished()).count();
    assert_eq!(admitted, 51, "the other 9 949 submitters of key a wait");

    // Key b is admitted without waiting, and starts.
    let b = pool.job(async { 7 }).key("b").try_submit();
    let b = b.unwrap_or_else(|_| panic!("key b refused while key a is stalled"));
    assert_eq!(b.await, Ok(7));

    // Unkeyed jobs flow: a thousand of them, through the queue, while a waits.
    let g = Gauge::default();
    for _ in 0..1_000 {
        pool.submit(held(&g, MS)).await.unwrap().detach();
    }
    // Paused time moves on from timer to timer while the jobs run.
    tokio::time::sleep(HOUR / 2).await;
    assert_eq!(g.started(), 1_000, "{:?}", pool.stats());
    assert_eq!(pool.key_stats(&Key::from("a")).unwrap().queued, 51);

    // When the pause ends, every waiter of key a gets in and runs.
    tokio::time::sleep(HOUR).await;
    for w in waiters {
        w.await.unwrap().unwrap();
    }
    pool.shutdown().await;
    assert_eq!(pool.stats().completed, 1 + 1_000 + 10_000);
    assert_accounted(&pool);
}

/// By default a key queues at most `⌊(capacity + workers) / 2⌋` jobs (half of the
/// places the pool's queue admits); `try_submit` beyond that is refused for the key
/// alone; `key_queue_share` and a key's own `queue_capacity` change the limit. On
/// a rendezvous pool (`queue_capacity(0)`) a key gets its share of the workers.
#[tokio::test(start_paused = true)]
async fn a_key_queues_at_most_its_share() {
    for (workers, capacity, share, own, expect) in [
        (1, 10, None, None, 5),
        (1, 10, Some(0.3), None, 3),
        (1, 10, Some(1.0), None, 11),
        (1, 10, Some(0.01), None, 1),
        (1, 10, None, Some(8), 8),
        (1, 10, Some(0.3), Some(2), 2),
        (4, 0, None, None, 2),
        (4, 0, Some(1.0), None, 4),
    ] {
        let mut b = Pool::builder().workers(workers).queue_capacity(capacity);
        if let Some(s) = share {
            b = b.key_queue_share(s);
        }
        if let Some(c) = own {
            b = b.key_limits(KeyLimits::default().queue_capacity(c));
        }
        let pool = b.build().unwrap();
        pool.pause_key_for("a", HOUR);
        let mut n = 0;
        while let Ok(h) = pool.job(async {}).key("a").try_submit() {
            h.detach();
            n += 1;
        }
        assert_eq!(
            n, expect,
            "{workers} workers, queue {capacity}, share {share:?}, own capacity {own:?}"
        );
        if share == Some(1.0) {
            // The whole queue: nothing else gets in.
            assert!(pool.job(async {}).key("b").try_submit().is_err());
            pool.abort();
            continue;
        }
        // The refusal is the key's: another key and unkeyed jobs get in.
        let b = pool.job(async { 1 }).key("b").try_submit();
        assert_eq!(b.ok().unwrap().await, Ok(1));
        let u = pool.try_submit(async { 2 });
        assert_eq!(u.ok().unwrap().await, Ok(2));
        pool.abort();
    }
}

/// A share outside `(0, 1]` is a typed build error, never a panic.
#[tokio::test]
async fn a_bad_key_queue_share_is_a_typed_error() {
    for s in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        let e = Pool::builder().key_queue_share(s).build().unwrap_err();
        assert!(
            matches!(e, BuildError::InvalidLimit(LimitError::InvalidQueueShare)),
            "share {s}: {e:?}"
        );
        assert_eq!(
            LimitError::InvalidQueueShare.to_string(),
            "key queue share must be in (0, 1]"
        );
    }
    assert!(Pool::builder().key_queue_share(1.0).build().is_ok());
}
