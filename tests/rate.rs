//! Rates: starts never exceed `burst + n × t / period` over any window, pool-wide
//! and per key, and reach that bound when nothing else holds them back; rates
//! limit starts (a waiting job holds no worker); limits compose without double
//! counting; a job that never starts spends no rate.

mod support;

use std::time::Duration;

use support::*;
use taskgate::{JobError, KeyLimits, Pool, Rate};
use tokio::time::{Instant, advance};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Advances the paused clock in 1 ms steps until `starts` has `n` entries (or
/// `limit` has passed).
async fn run_until<T: Clone + Send + 'static>(starts: &Starts<T>, n: usize, limit: Duration) {
    let end = Instant::now() + limit;
    settle().await;
    while starts.len() < n && Instant::now() < end {
        advance(MS).await;
        settle().await;
    }
}

/// Start instants of the jobs tagged `tag`, in order.
fn times_of<T: PartialEq + Clone>(all: &[(T, Instant)], tag: T) -> Vec<Instant> {
    all.iter().filter(|e| e.0 == tag).map(|e| e.1).collect()
}

/// The instants a fresh, saturated limiter allows: `burst` at `t0`, then one per
/// interval.
fn ideal(t0: Instant, rate: Rate, n: usize) -> Vec<Instant> {
    let burst = rate.burst_size() as usize;
    (0..n)
        .map(|i| t0 + rate.interval() * (i.saturating_sub(burst - 1)) as u32)
        .collect()
}

#[test]
fn rate_accessors_and_interval_rounding() {
    let r = Rate::per_second(3).burst(4);
    assert_eq!((r.count(), r.period(), r.burst_size()), (3, SEC, 4));
    // Rounded up so the rate is never exceeded.
    assert_eq!(r.interval(), Duration::from_nanos(333_333_334));
    assert_eq!(Rate::per_minute(600).interval(), 100 * MS);
    assert_eq!(Rate::new(7, 7 * MS).interval(), MS);
    assert_eq!(Rate::per_second(1).burst_size(), 1, "default burst");
}

/// A pool-wide rate (10/s, burst 3) with 40 jobs on 8 workers: every window obeys
/// the bound, and the starts are exactly the ideal schedule (3 at once, then one
/// every 100 ms).
#[tokio::test(start_paused = true)]
async fn pool_rate_is_never_exceeded_and_is_reached() {
    let rate = Rate::per_second(10).burst(3);
    let pool = Pool::builder()
        .workers(8)
        .queue_capacity(100)
        .rate_limit(rate)
        .build()
        .unwrap();
    let starts = Starts::<u32>::default();
    let t0 = Instant::now();
    for i in 0..40 {
        pool.spawn(starts.job(i, 5 * MS)).await.unwrap();
    }
    run_until(&starts, 40, 10 * SEC).await;
    let times = starts.times();
    assert_within_rate(&times, rate, "pool");
    assert_eq!(times, ideal(t0, rate, 40));
    assert_eq!(starts.tags(), (0..40).collect::<Vec<_>>(), "FIFO");
}

/// A rate limits starts, not running jobs: long jobs under a fast rate run many at
/// once, and jobs waiting for the rate hold no worker.
#[tokio::test(start_paused = true)]
async fn a_rate_limits_starts_not_concurrency_and_waiting_holds_no_worker() {
    let pool = Pool::builder()
        .workers(10)
        .rate_limit(Rate::per_second(10))
        .build()
        .unwrap();
    let g = Gauge::default();
    let mut hs = Vec::new();
    for _ in 0..20 {
        hs.push(pool.submit(held(&g, HOUR)).await.unwrap());
    }
    settle().await;
    assert_eq!(
        pool.stats().busy,
        1,
        "jobs waiting for the rate hold no worker"
    );
    for _ in 0..450 {
        advance(MS).await;
        settle().await;
    }
    assert_eq!(g.now(), 5);
    assert_eq!(pool.stats().busy, 5);
    pool.abort();
}

/// A key's rate (5/s, burst 2) is exact for each of two saturated keys at once:
/// every window per key obeys the bound and each follows the ideal schedule, so
/// together they start twice as often as one.
#[tokio::test(start_paused = true)]
async fn key_rate_is_never_exceeded_and_is_reached_per_key() {
    let rate = Rate::per_second(5).burst(2);
    let pool = Pool::builder()
        .workers(4)
        .queue_capacity(100)
        .key_limits(KeyLimits::default().rate(rate))
        .build()
        .unwrap();
    let starts = Starts::<&'static str>::default();
    let t0 = Instant::now();
    for _ in 0..12 {
        for key in ["a", "b"] {
            pool.job(starts.job(key, 50 * MS))
                .key(key)
                .spawn()
                .await
                .unwrap();
        }
    }
    run_until(&starts, 24, 10 * SEC).await;
    let all = starts.all();
    for key in ["a", "b"] {
        let times = times_of(&all, key);
        assert_within_rate(&times, rate, key);
        assert_eq!(times, ideal(t0, rate, 12), "key {key}");
    }
}

/// A key whose rate changes keeps what it has spent (the start already taken still
/// counts), and follows the new rate from then on.
#[tokio::test(start_paused = true)]
async fn changing_a_key_rate_keeps_what_was_spent() {
    let pool = Pool::builder()
        .workers(4)
        .key_limits(KeyLimits::default().rate(Rate::per_second(1)))
        .build()
        .unwrap();
    let starts = Starts::<u32>::default();
    let t0 = Instant::now();
    for i in 0..4 {
        pool.job(starts.job(i, MS)).key("a").spawn().await.unwrap();
    }
    settle().await;
    assert_eq!(starts.len(), 1);
    pool.set_key_limits("a", KeyLimits::default().rate(Rate::per_second(10)))
        .unwrap();
    run_until(&starts, 4, 5 * SEC).await;
    let times = starts.times();
    assert_eq!(times.len(), 4);
    assert_within_rate(&times, Rate::per_second(10), "new rate");
    // The second start waits at least the new interval after the first, and no
    // longer than the old rate would have made it.
    assert!(
        times[1] >= t0 + 100 * MS && times[1] <= t0 + SEC,
        "{:?}",
        times[1] - t0
    );
    assert_eq!(times[2] - times[1], 100 * MS);
    assert_eq!(times[3] - times[2], 100 * MS);
}

/// Limits compose without double counting: under a pool rate of 10/s, key a's own
/// rate (1/s) holds a back without taking the pool's starts, so key b gets a start
/// at every pool interval, and a's second job starts at exactly 1 s.
#[tokio::test(start_paused = true)]
async fn pool_and_key_rates_compose_without_double_counting() {
    let pool = Pool::builder()
        .workers(4)
        .rate_limit(Rate::per_second(10))
        .build()
        .unwrap();
    pool.set_key_limits("a", KeyLimits::default().rate(Rate::per_second(1)))
        .unwrap();
    let starts = Starts::<&'static str>::default();
    let t0 = Instant::now();
    for _ in 0..2 {
        pool.job(starts.job("a", MS))
            .key("a")
            .spawn()
            .await
            .unwrap();
    }
    for _ in 0..5 {
        pool.job(starts.job("b", MS))
            .key("b")
            .spawn()
            .await
            .unwrap();
    }
    run_until(&starts, 7, 5 * SEC).await;
    let ms = |n: u32| t0 + n * MS;
    assert_eq!(
        starts.all(),
        [
            ("a", ms(0)),
            ("b", ms(100)),
            ("b", ms(200)),
            ("b", ms(300)),
            ("b", ms(400)),
            ("b", ms(500)),
            ("a", ms(1_000)),
        ]
    );
}

/// A job of a key under both a key rate and a pool rate of the same speed takes
/// one place from each: jobs start every 100 ms, not every 200 ms.
#[tokio::test(start_paused = true)]
async fn a_start_takes_one_place_from_each_rate() {
    let rate = Rate::per_second(10);
    let pool = Pool::builder()
        .workers(4)
        .rate_limit(rate)
        .key_limits(KeyLimits::default().rate(rate).concurrency(1))
        .build()
        .unwrap();
    let starts = Starts::<u32>::default();
    let t0 = Instant::now();
    for i in 0..5 {
        pool.job(starts.job(i, MS)).key("a").spawn().await.unwrap();
    }
    run_until(&starts, 5, 5 * SEC).await;
    assert_eq!(starts.times(), ideal(t0, rate, 5));
}

/// A queued job cancelled by its caller spends no rate: key rate 1/s, job 1 starts
/// at 0, job 2 is cancelled while it waits, job 3 starts at exactly 1 s (not 2 s).
#[tokio::test(start_paused = true)]
async fn a_cancelled_queued_job_spends_no_key_rate() {
    let pool = Pool::builder()
        .workers(4)
        .key_limits(KeyLimits::default().rate(Rate::per_second(1)))
        .build()
        .unwrap();
    let starts = Starts::<u32>::default();
    let t0 = Instant::now();
    let one = pool.job(starts.job(1, MS)).key("a").submit().await.unwrap();
    settle().await;
    let two = pool.job(starts.job(2, MS)).key("a").submit().await.unwrap();
    settle().await;
    drop(two);
    let three = pool.job(starts.job(3, MS)).key("a").submit().await.unwrap();
    one.await.unwrap();
    three.await.unwrap();
    assert_eq!(starts.all(), [(1, t0), (3, t0 + SEC)]);
    let ks = pool.key_stats(&"a".into()).unwrap();
    assert_eq!((ks.completed, ks.cancelled), (2, 1));
}

/// The same for a job cancelled while waiting for the pool's rate.
#[tokio::test(start_paused = true)]
async fn a_cancelled_queued_job_spends_no_pool_rate() {
    let pool = Pool::builder()
        .workers(4)
        .rate_limit(Rate::per_second(1))
        .build()
        .unwrap();
    let starts = Starts::<u32>::default();
    let t0 = Instant::now();
    let one = pool.submit(starts.job(1, MS)).await.unwrap();
    let two = pool.submit(starts.job(2, MS)).await.unwrap();
    let three = pool.submit(starts.job(3, MS)).await.unwrap();
    settle().await;
    advance(300 * MS).await;
    two.cancel();
    assert_eq!(two.await, Err(JobError::Cancelled));
    one.await.unwrap();
    three.await.unwrap();
    assert_eq!(starts.all(), [(1, t0), (3, t0 + SEC)]);
}

/// A job whose queue timeout expires while it waits for its key's rate spends no
/// rate: the next job starts when the rate allows, as if it had never been queued.
#[tokio::test(start_paused = true)]
async fn a_queue_timed_out_job_spends_no_rate() {
    let pool = Pool::builder()
        .workers(4)
        .rate_limit(Rate::per_second(2))
        .key_limits(KeyLimits::default().rate(Rate::per_second(1)))
        .build()
        .unwrap();
    let starts = Starts::<u32>::default();
    let t0 = Instant::now();
    let one = pool.job(starts.job(1, MS)).key("a").submit().await.unwrap();
    let two = pool
        .job(starts.job(2, MS))
        .key("a")
        .queue_timeout(300 * MS)
        .submit()
        .await
        .unwrap();
    let three = pool.job(starts.job(3, MS)).key("a").submit().await.unwrap();
    assert_eq!(two.await, Err(JobError::QueueTimedOut));
    assert_eq!(pool.key_stats(&"a".into()).unwrap().queue_timed_out, 1);
    one.await.unwrap();
    three.await.unwrap();
    assert_eq!(starts.all(), [(1, t0), (3, t0 + SEC)]);
}

/// A burst is earned back by a quiet spell but never beyond its size: after a long
/// idle time, a burst-3 rate allows exactly 3 starts at once, then one per interval.
#[tokio::test(start_paused = true)]
async fn a_quiet_spell_earns_back_the_burst_and_no_more() {
    let rate = Rate::per_second(10).burst(3);
    let pool = Pool::builder().workers(4).rate_limit(rate).build().unwrap();
    let starts = Starts::<u32>::default();
    for i in 0..3 {
        pool.spawn(starts.job(i, MS)).await.unwrap();
    }
    run_until(&starts, 3, SEC).await;
    advance(HOUR).await;
    let t1 = Instant::now();
    for i in 3..10 {
        pool.spawn(starts.job(i, MS)).await.unwrap();
    }
    run_until(&starts, 10, 5 * SEC).await;
    let times = starts.times();
    assert_within_rate(&times, rate, "pool");
    assert_eq!(times[3..], ideal(t1, rate, 7)[..]);
}

/// A key's rate debt survives the key's state being otherwise idle: after one
/// start, a key with rate 10/s burst 2 allows only one more start before 100 ms
/// (a key that forgot its debt when idle would allow two).
#[tokio::test(start_paused = true)]
async fn a_key_rate_debt_is_kept_while_the_key_is_idle() {
    let rate = Rate::per_second(10).burst(2);
    let pool = Pool::builder()
        .workers(4)
        .key_limits(KeyLimits::default().rate(rate))
        .build()
        .unwrap();
    let starts = Starts::<u32>::default();
    let t0 = Instant::now();
    pool.job(starts.job(0, Duration::ZERO))
        .key("a")
        .run()
        .await
        .unwrap();
    advance(50 * MS).await;
    settle().await;
    for i in 1..4 {
        pool.job(starts.job(i, Duration::ZERO))
            .key("a")
            .spawn()
            .await
            .unwrap();
    }
    run_until(&starts, 4, SEC).await;
    let times = starts.times();
    assert_within_rate(&times, rate, "key a");
    assert_eq!(times, [t0, t0 + 50 * MS, t0 + 100 * MS, t0 + 200 * MS]);
}

/// Many keys under one pool rate: the pool bound holds over every window, and the
/// keys take turns.
#[tokio::test(start_paused = true)]
async fn a_pool_rate_is_shared_fairly_by_keys() {
    let rate = Rate::per_second(20).burst(2);
    let pool = Pool::builder()
        .workers(16)
        .queue_capacity(1_000)
        .rate_limit(rate)
        .build()
        .unwrap();
    let starts = Starts::<u32>::default();
    for i in 0..120u32 {
        let key = i % 4;
        pool.job(starts.job(key, 30 * MS))
            .key(format!("k{key}"))
            .spawn()
            .await
            .unwrap();
    }
    run_until(&starts, 120, 20 * SEC).await;
    let all = starts.all();
    assert_within_rate(&starts.times(), rate, "pool");
    // Every 4 consecutive starts cover the 4 keys.
    for (n, w) in all.chunks(4).enumerate() {
        let mut keys: Vec<_> = w.iter().map(|e| e.0).collect();
        keys.sort();
        assert_eq!(keys, [0, 1, 2, 3], "round {n}");
    }
}

/// An interval that is not a whole number of timer ticks (300/s: 3.33 ms) is still
/// reached with a burst of 2, whose tolerance absorbs the millisecond rounding of
/// timers: 2 + 600 starts in 2 s, less at most one for rounding at the end, and
/// never more than the bound in any window. (With burst 1 the bound cannot be
/// reached on millisecond timers without exceeding it in some window: the pool
/// then starts one job per 4 ms, 250/s.)
#[tokio::test(start_paused = true)]
async fn a_fractional_millisecond_interval_is_reached_with_a_burst_of_two() {
    let rate = Rate::per_second(300).burst(2);
    let pool = Pool::builder()
        .workers(8)
        .queue_capacity(1_000)
        .rate_limit(rate)
        .build()
        .unwrap();
    let starts = Starts::<u32>::default();
    for i in 0..900 {
        pool.spawn(starts.job(i, Duration::ZERO)).await.unwrap();
    }
    let t0 = Instant::now();
    run_until(&starts, 900, 2 * SEC).await;
    let times = starts.times();
    assert_within_rate(&times, rate, "pool");
    let within = times.iter().filter(|&&t| t <= t0 + 2 * SEC).count();
    assert!(within >= 601, "{within} starts in 2 s, bound 602");
    pool.abort();
}

/// A rate so slow that its arithmetic nears the clock's limits (one start per
/// `Duration::MAX`, burst 2) still allows only its burst: fails if an overflow in
/// `now + tolerance` is taken to mean "conforms".
#[tokio::test(start_paused = true)]
async fn an_extreme_rate_still_allows_only_its_burst() {
    let pool = Pool::builder()
        .workers(8)
        .rate_limit(Rate::new(1, Duration::MAX).burst(2))
        .build()
        .unwrap();
    let g = Gauge::default();
    for _ in 0..5 {
        pool.submit(held(&g, MS)).await.unwrap().detach();
    }
    settle().await;
    advance(SEC).await;
    settle().await;
    assert_eq!(g.started(), 2);
    pool.abort();
}

/// `shutdown` waits for jobs queued behind a key's rate, and returns once they have
/// run: 3 jobs at 1/s end at 2 s.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_rate_limited_jobs() {
    let pool = Pool::builder()
        .workers(4)
        .key_limits(KeyLimits::default().rate(Rate::per_second(1)))
        .build()
        .unwrap();
    let g = Gauge::default();
    for _ in 0..3 {
        pool.job(held(&g, MS)).key("a").spawn().await.unwrap();
    }
    let t0 = Instant::now();
    let done = tokio::time::timeout(HOUR, pool.shutdown()).await;
    assert!(done.is_ok(), "shutdown hung: {:?}", pool.stats());
    assert_eq!(t0.elapsed(), 2 * SEC + MS);
    assert_eq!(pool.stats().completed, 3);
}

/// The same for the pool's rate.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_jobs_held_by_the_pool_rate() {
    let pool = Pool::builder()
        .workers(4)
        .rate_limit(Rate::per_second(1))
        .build()
        .unwrap();
    let g = Gauge::default();
    for _ in 0..3 {
        pool.spawn(held(&g, MS)).await.unwrap();
    }
    let t0 = Instant::now();
    let done = tokio::time::timeout(HOUR, pool.shutdown()).await;
    assert!(done.is_ok(), "shutdown hung: {:?}", pool.stats());
    assert_eq!(t0.elapsed(), 2 * SEC + MS);
    assert_eq!(pool.stats().completed, 3);
}

/// `shutdown_timeout` cancels jobs still waiting for their rate at the deadline,
/// and reports them.
#[tokio::test(start_paused = true)]
async fn shutdown_timeout_cancels_rate_limited_jobs() {
    let pool = Pool::builder()
        .workers(4)
        .key_limits(KeyLimits::default().rate(Rate::per_minute(1)))
        .build()
        .unwrap();
    let g = Gauge::default();
    let mut hs = Vec::new();
    for _ in 0..3 {
        hs.push(pool.job(held(&g, MS)).key("a").submit().await.unwrap());
    }
    let report = tokio::time::timeout(HOUR, pool.shutdown_timeout(SEC))
        .await
        .expect("shutdown_timeout hung");
    assert_eq!((report.completed, report.cancelled), (1, 2));
    let mut results = Vec::new();
    for h in hs {
        results.push(h.await);
    }
    assert_eq!(
        results,
        [Ok(()), Err(JobError::Cancelled), Err(JobError::Cancelled)]
    );
    assert_eq!(g.started(), 1);
    assert_accounted(&pool);
}
