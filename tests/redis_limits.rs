#![cfg(feature = "redis")]
//! `taskgate::redis` against a real `redis-server` (one per test, on its own
//! port): what happens while Redis is down or hung, that no Redis call is made
//! under the pool's lock, script reloading and key expiry, key names that must
//! not collide, secrets, and the accounting of tokens and slots.
//!
//! Run: `cargo test --features redis --test redis_limits -- --nocapture`
//! (the measured figures are printed with `eprintln!`). Without redis-server
//! on the PATH every test prints one "skipping" line and passes, unless
//! `TASKGATE_REQUIRE_REDIS=1`.
//!
//! Real time is unavoidable here. Nothing sleeps to wait for something it can
//! observe: it polls with a deadline. Bounds are loose enough for a noisy
//! 2-core machine and tight enough that the mechanism under test is needed to
//! meet them (each test says what a broken implementation would show). Tests
//! whose assertions are about latency hold `TIMING`, so they do not run
//! against each other.
//!
//! The tests at the end are regression tests for bugs this file and a review
//! found (each described above its test, with the fix).

mod support;

#[path = "support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis_server::{PoolLimit, RedisServer, connection as raw, held_job, limited_pool};
use support::{Gauge, held};
use taskgate::redis::{
    OnError, RedisConfig, RedisErrorKind, RedisLimits, SharedConcurrency, SharedRate,
};
use taskgate::{BuildError, JobBuilder, JobError, JobHandle, KeyLimits, LimitError, Pool, Rate};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Serializes the tests whose assertions are about latency (an async mutex:
/// held across awaits; a failed test does not poison it).
static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn timing() -> tokio::sync::MutexGuard<'static, ()> {
    TIMING.lock().await
}

/// A server of the test's own and a handle on it (`RedisLimits::connect`), or
/// `None` where the test is skipped (see `RedisServer::start`).
async fn start_redis() -> Option<(RedisServer, RedisLimits)> {
    let server = RedisServer::start()?;
    let redis = RedisLimits::connect(&server.url()).await.unwrap();
    Some((server, redis))
}

async fn dbsize(c: &mut MultiplexedConnection) -> u64 {
    redis::cmd("DBSIZE").query_async(c).await.unwrap()
}

async fn keys(c: &mut MultiplexedConnection) -> Vec<String> {
    redis_server::keys(c, "*").await
}

/// Concurrency slots held in Redis: the members of every sorted set.
async fn slots(c: &mut MultiplexedConnection) -> u64 {
    let mut n = 0;
    for k in keys(c).await {
        let t: String = redis::cmd("TYPE").arg(&k).query_async(c).await.unwrap();
        if t == "zset" {
            let z: u64 = redis::cmd("ZCARD").arg(&k).query_async(c).await.unwrap();
            n += z;
        }
    }
    n
}

/// How many times Redis ran command `name` (`INFO commandstats`; a subcommand
/// as `script|load`).
async fn calls(c: &mut MultiplexedConnection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    let head = format!("cmdstat_{name}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&head))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

async fn flush_scripts(c: &mut MultiplexedConnection) {
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(c)
        .await
        .unwrap();
}

/// Polls `cond` every 5 ms until it holds; how long that took, or `None` after
/// `limit`.
async fn poll<F: Future<Output = bool>>(
    limit: Duration,
    mut cond: impl FnMut() -> F,
) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if cond().await {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`poll`] with a condition that need not wait.
async fn poll_sync(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    poll(limit, || std::future::ready(cond())).await
}

/// Polls until Redis holds no concurrency slot; how long that took.
async fn slots_drained(url: &str, limit: Duration) -> Option<Duration> {
    let c = raw(url).await;
    poll(limit, || {
        let mut c = c.clone();
        async move { slots(&mut c).await == 0 }
    })
    .await
}

type Log = Arc<Mutex<Vec<Instant>>>;

fn log() -> Log {
    Arc::default()
}

/// A job that records when it started.
fn stamp(log: &Log) -> impl Future<Output = Instant> + Send + 'static {
    let log = log.clone();
    async move {
        let t = Instant::now();
        log.lock().unwrap().push(t);
        t
    }
}

fn sorted(log: &Log) -> Vec<Instant> {
    let mut v = log.lock().unwrap().clone();
    v.sort();
    v
}

/// A job that counts its start in `n`, and returns when it started.
fn counted(n: &Arc<AtomicUsize>) -> impl Future<Output = Instant> + Send + 'static {
    let n = n.clone();
    async move {
        n.fetch_add(1, Ordering::SeqCst);
        Instant::now()
    }
}

/// Submits `n` jobs made by `job` to `pool`.
async fn submit_n<F>(pool: &Pool, n: usize, mut job: impl FnMut() -> F) -> Vec<JobHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut hs = Vec::new();
    for _ in 0..n {
        hs.push(pool.submit(job()).await.unwrap());
    }
    hs
}

/// Submits `n` jobs of `key` made by `job` to `pool`.
async fn submit_keyed<F>(
    pool: &Pool,
    key: &'static str,
    n: usize,
    mut job: impl FnMut() -> F,
) -> Vec<JobHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut hs = Vec::new();
    for _ in 0..n {
        hs.push(pool.job(job()).key(key).submit().await.unwrap());
    }
    hs
}

async fn join<T>(hs: Vec<JobHandle<T>>, limit: Duration) -> Vec<Result<T, JobError>> {
    tokio::time::timeout(limit, futures::future::join_all(hs))
        .await
        .expect("jobs stuck: not all resolved in time")
}

/// [`join`], and every job ran to its end.
async fn join_ok<T>(hs: Vec<JobHandle<T>>, limit: Duration) -> Vec<T> {
    join(hs, limit)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// Pools of `workers` workers on `rate` and on `conc`, after a job each: the
/// rate has leased, and the concurrency limit's idle slot has gone back to
/// Redis (none is left to start a job with).
async fn rate_and_conc_pools(
    url: &str,
    workers: usize,
    rate: &SharedRate,
    conc: &SharedConcurrency,
) -> (Pool, Pool) {
    let rpool = limited_pool(workers, &[rate]);
    let cpool = limited_pool(workers, &[conc]);
    rpool.run(async {}).await.unwrap();
    cpool.run(async {}).await.unwrap();
    slots_drained(url, Duration::from_secs(2))
        .await
        .expect("idle slot not given back");
    (rpool, cpool)
}

/// A pool of 4 workers with `conc` as its pool-level limit, or (`keyed`) as
/// every key's; its jobs go through [`on_key`].
fn conc_pool(conc: &SharedConcurrency, keyed: bool) -> Pool {
    if keyed {
        limited_pool(4, &[&KeyLimits::new().shared_concurrency(conc.clone())])
    } else {
        limited_pool(4, &[conc])
    }
}

/// `job`, of key "k" if `keyed`.
fn on_key<F>(job: JobBuilder<'_, F>, keyed: bool) -> JobBuilder<'_, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if keyed { job.key("k") } else { job }
}

/// The largest `count - (allow + r·t)` over every window `[s_i, s_j]` of sorted
/// start times: `> 0` where more started than the bound allows.
fn max_excess(starts: &[Instant], per_sec: f64, allow: f64) -> f64 {
    let since: Vec<Duration> = starts.iter().map(|&t| t - starts[0]).collect();
    redis_server::max_excess(&since, per_sec).excess - allow
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------
// 3. Redis down: each OnError policy, kill then restart on the same port.
// ---------------------------------------------------------------------------

/// Open: once Redis is dead, jobs start as if the shared rate were not there
/// (100 jobs at 20/s would take 5 s; they all start within 1.5 s of the kill);
/// when Redis is back, shared limiting resumes within a second, in the same pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_open_starts_jobs_unlimited_then_resumes() {
    let _t = timing().await;
    let Some((mut server, redis)) = start_redis().await else {
        return;
    };
    let rate = redis
        .rate("open", Rate::per_second(20))
        .on_error(OnError::Open);
    assert_eq!(rate.effective_lease(), 1);
    let pool = limited_pool(16, &[&rate]);
    pool.run(async {}).await.unwrap();
    let s = rate.stats();
    assert_eq!(
        (s.granted, s.errors, s.started_on_error),
        (1, 0, 0),
        "{s:?}"
    );

    server.kill();
    let killed = Instant::now();
    let starts = log();
    let hs = submit_n(&pool, 100, || stamp(&starts)).await;
    join_ok(hs, Duration::from_secs(5)).await;
    let all = killed.elapsed();
    let starts = sorted(&starts);
    let first = starts[0] - killed;
    let s = rate.stats();
    eprintln!(
        "open: policy in force {:.0} ms after kill (first start); 100 jobs done {:.0} ms after kill; {s:?}",
        ms(first),
        ms(all)
    );
    assert!(first < Duration::from_millis(1000), "policy took {first:?}");
    assert!(all < Duration::from_millis(1500), "jobs held: {all:?}");
    assert!(s.errors >= 1, "{s:?}");
    assert_eq!(s.on_error_now, 1, "{s:?}");
    assert!(s.started_on_error >= 99, "{s:?}");
    assert_eq!(s.time_on_error, Duration::ZERO, "spell not over: {s:?}");
    assert_eq!(s.granted, 1, "{s:?}");
    let e = redis.ping().await.unwrap_err();
    assert!(e.is_unreachable(), "{e:?}");

    server.restart();
    let restarted = Instant::now();
    // Jobs keep coming; the limit probes Redis while they do.
    let resumed = poll(Duration::from_secs(3), || async {
        pool.run(async {}).await.unwrap();
        rate.stats().on_error_now == 0
    })
    .await
    .expect("shared limiting did not resume within 3 s");
    let s = rate.stats();
    eprintln!("open: resumed {:.0} ms after restart; {s:?}", ms(resumed));
    assert!(resumed < Duration::from_secs(1), "{resumed:?}");
    let down = restarted - killed;
    assert!(
        s.time_on_error <= down + resumed && s.time_on_error + Duration::from_millis(600) >= down,
        "time_on_error {:?} for {down:?} down",
        s.time_on_error
    );

    // Limited again: 8 jobs at 20/s (burst 1, maybe 1 token leased) spread
    // over >= 300 ms, with shared tokens, none started on error.
    let before = rate.stats();
    let starts = log();
    let hs = submit_n(&pool, 8, || stamp(&starts)).await;
    join(hs, Duration::from_secs(3)).await;
    let starts = sorted(&starts);
    let spread = starts[7] - starts[0];
    let after = rate.stats();
    eprintln!("open: after resume 8 jobs spread {:.0} ms", ms(spread));
    assert!(
        spread >= Duration::from_millis(250),
        "not limited: {spread:?}"
    );
    assert_eq!(after.started_on_error, before.started_on_error);
    assert_eq!(after.errors, before.errors);
    assert!(after.granted >= before.granted + 7, "{before:?} {after:?}");
}

/// Closed: nothing that needs the shared limit starts while Redis is dead;
/// queued jobs still time out in the queue and can be cancelled; the rest start
/// within a second of Redis coming back. A rate and a concurrency limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_closed_starts_nothing_queue_timeouts_and_cancels_still_resolve() {
    let _t = timing().await;
    let Some((mut server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    let rate = redis
        .rate("closed", Rate::per_second(100).burst(5))
        .lease(1)
        .on_error(OnError::Closed);
    let conc = redis.concurrency("closed", 4).on_error(OnError::Closed);
    let (rpool, cpool) = rate_and_conc_pools(&url, 8, &rate, &conc).await;

    server.kill();
    let killed = Instant::now();
    let started = Arc::new(AtomicUsize::new(0));
    let mut timed = Vec::new();
    let mut cancelled = Vec::new();
    let mut waiting = Vec::new();
    for pool in [&rpool, &cpool] {
        let qt = pool
            .job(counted(&started))
            .queue_timeout(Duration::from_secs(1))
            .submit()
            .await
            .unwrap();
        timed.push((Instant::now(), qt));
        cancelled.push(pool.submit(counted(&started)).await.unwrap());
        waiting.extend(submit_n(pool, 3, || counted(&started)).await);
    }
    let in_force = poll_sync(Duration::from_secs(3), || {
        rate.stats().on_error_now == 1 && conc.stats().on_error_now == 1
    })
    .await
    .expect("Closed policy not in force within 3 s");
    eprintln!(
        "closed: both limits failing {:.0} ms after kill",
        ms(killed.elapsed())
    );
    assert!(killed.elapsed() < Duration::from_secs(1), "{in_force:?}");

    // Cancels resolve promptly.
    for h in &cancelled {
        h.cancel();
    }
    let t = Instant::now();
    for h in cancelled {
        assert_eq!(h.await, Err(JobError::Cancelled));
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // Queue timeouts resolve on time.
    for (at, h) in timed {
        let r = tokio::time::timeout(Duration::from_secs(3), h)
            .await
            .expect("queue timeout did not fire");
        assert_eq!(r, Err(JobError::QueueTimedOut));
        let took = at.elapsed();
        eprintln!(
            "closed: queue timeout (1 s) resolved after {:.0} ms",
            ms(took)
        );
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_millis(2500),
            "{took:?}"
        );
    }
    assert_eq!(
        started.load(Ordering::SeqCst),
        0,
        "a job started while Closed"
    );
    for (name, s) in [("rate", rate.stats()), ("conc", conc.stats())] {
        assert!(s.errors >= 1, "{name} {s:?}");
        assert_eq!(s.started_on_error, 0, "{name} {s:?}");
        assert_eq!(s.on_error_now, 1, "{name} {s:?}");
    }
    assert_eq!(rpool.stats().queued + cpool.stats().queued, 6);

    server.restart();
    let restarted = Instant::now();
    let results = join_ok(waiting, Duration::from_secs(3)).await;
    let last = results.into_iter().max().unwrap();
    let resumed = last - restarted;
    eprintln!(
        "closed: all 6 waiting jobs started {:.0} ms after restart; rate {:?}; conc {:?}",
        ms(resumed),
        rate.stats(),
        conc.stats()
    );
    assert!(resumed < Duration::from_secs(1), "{resumed:?}");
    for (name, s) in [("rate", rate.stats()), ("conc", conc.stats())] {
        assert_eq!(s.on_error_now, 0, "{name} {s:?}");
        assert_eq!(s.started_on_error, 0, "{name} {s:?}");
        assert!(
            s.time_on_error >= Duration::from_millis(500),
            "{name} {s:?}"
        );
    }
}

/// Local: while Redis is dead the same limits hold in this process (a rate of
/// 20/s burst 2, a concurrency of 2), jobs keep starting, and shared limiting
/// resumes within a second of the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_local_enforces_the_same_limits_in_process() {
    let _t = timing().await;
    let Some((mut server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    let rate = redis.rate("local", Rate::per_second(20).burst(2)).lease(1);
    let conc = redis.concurrency("local", 2);
    assert_eq!(rate.policy(), OnError::Local);
    assert_eq!(conc.policy(), OnError::Local);
    let (rpool, cpool) = rate_and_conc_pools(&url, 16, &rate, &conc).await;

    server.kill();
    let killed = Instant::now();
    let rstarts = log();
    let rhs = submit_n(&rpool, 40, || stamp(&rstarts)).await;
    let g = Gauge::default();
    let chs = submit_n(&cpool, 30, || held(&g, Duration::from_millis(30))).await;
    join_ok(chs, Duration::from_secs(5)).await;
    let conc_done = killed.elapsed();
    let cs = conc.stats();
    eprintln!(
        "local: 30 conc jobs done {:.0} ms after kill, at most {} at once; {cs:?}",
        ms(conc_done),
        g.peak()
    );
    assert_eq!(
        g.peak(),
        2,
        "concurrency 2 not enforced (or not reached) locally"
    );
    assert!(cs.errors >= 1 && cs.on_error_now == 1, "{cs:?}");
    assert!(cs.started_on_error >= 29, "{cs:?}");

    // The rate: at least 15 start, as the local rate allows, within 2.5 s.
    poll_sync(Duration::from_secs(3), || {
        rstarts.lock().unwrap().len() >= 15
    })
    .await
    .expect("Local rate let too few jobs start");
    let starts = sorted(&rstarts);
    let first = starts[0] - killed;
    let excess = max_excess(&starts, 20.0, 2.0 + 1.0);
    let rs = rate.stats();
    eprintln!(
        "local: first rate start {:.0} ms after kill; {} started by {:.0} ms; max window excess {excess:.2}; {rs:?}",
        ms(first),
        starts.len(),
        ms(killed.elapsed())
    );
    assert!(first < Duration::from_millis(1000), "{first:?}");
    // 20/s burst 2 (+1 for timer granularity): a broken Local (unlimited)
    // would start all 40 at once.
    assert!(excess <= 1.0, "local rate exceeded by {excess}");
    assert!(rs.errors >= 1 && rs.on_error_now == 1, "{rs:?}");
    assert!(rs.started_on_error as usize >= starts.len() - 1, "{rs:?}");

    server.restart();
    let restarted = Instant::now();
    // The rate has jobs waiting, which probe Redis; the concurrency limit is
    // probed by new jobs.
    let conc_back = poll(Duration::from_secs(3), || async {
        cpool.run(async {}).await.unwrap();
        conc.stats().on_error_now == 0
    })
    .await;
    let rate_back = poll_sync(Duration::from_secs(3), || rate.stats().on_error_now == 0)
        .await
        .map(|_| restarted.elapsed());
    eprintln!(
        "local: resumed after restart: rate {:?} ms, conc {:?} ms",
        rate_back.map(ms),
        conc_back.map(ms)
    );
    let rate_back = rate_back.expect("shared rate did not resume");
    let conc_back = conc_back.expect("shared concurrency did not resume");
    assert!(rate_back < Duration::from_secs(1), "{rate_back:?}");
    assert!(conc_back < Duration::from_secs(1), "{conc_back:?}");
    // Shared tokens again: the next few starts are granted by Redis.
    let before = rate.stats();
    let n0 = rstarts.lock().unwrap().len();
    poll_sync(Duration::from_secs(2), || {
        rstarts.lock().unwrap().len() >= n0 + 3
    })
    .await
    .expect("rate jobs stopped after the restart");
    let after = rate.stats();
    assert!(after.granted >= before.granted + 2, "{before:?} {after:?}");
    assert!(after.time_on_error > Duration::ZERO);
    drop(rhs); // cancels the rest
}

/// A hung Redis (SIGSTOP): calls time out (the response timeout, 250 ms) rather
/// than fail fast, then the policy applies (Open: a concurrency limit of 1 lets
/// jobs run side by side); after SIGCONT the limit answers again within a
/// second and holds again. (A short TTL here: the acquires that timed out
/// during the stop still run when Redis resumes and leave orphan slots for a
/// TTL unless given back; see `timed_out_acquires_leave_no_orphan_slots`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_times_out_then_policy_then_resumes() {
    let _t = timing().await;
    let Some((server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    let conc = redis
        .concurrency("paused", 1)
        .ttl(Duration::from_millis(300))
        .on_error(OnError::Open);
    let pool = limited_pool(16, &[&conc]);
    pool.run(async {}).await.unwrap();
    slots_drained(&url, Duration::from_secs(2))
        .await
        .expect("idle slot not given back");

    server.pause();
    let paused = Instant::now();
    let g = Gauge::default();
    let starts = log();
    let hs = submit_n(&pool, 8, || {
        let s = stamp(&starts);
        let b = held(&g, Duration::from_millis(150));
        async move {
            s.await;
            b.await
        }
    })
    .await;
    let results = join(hs, Duration::from_secs(3)).await;
    let t = Instant::now();
    let e = redis.ping().await.unwrap_err();
    let ping_failed = t.elapsed();
    server.resume();
    eprintln!("paused: ping failed after {:.0} ms: {e}", ms(ping_failed));
    assert_eq!(e.kind(), RedisErrorKind::Timeout, "{e:?}");
    assert!(ping_failed >= Duration::from_millis(200), "{ping_failed:?}");
    assert!(ping_failed < Duration::from_millis(1000), "{ping_failed:?}");
    let first = sorted(&starts)[0] - paused;
    let s = conc.stats();
    eprintln!(
        "paused: policy in force {:.0} ms after SIGSTOP; {} at once (limit 1); {s:?}",
        ms(first),
        g.peak()
    );
    for r in results {
        r.unwrap();
    }
    // A timeout, not a fast failure; and within the call timeout (+ noise).
    assert!(first >= Duration::from_millis(200), "{first:?}");
    assert!(first < Duration::from_millis(1000), "{first:?}");
    assert!(g.peak() >= 2, "Open did not lift the limit");
    assert!(s.errors >= 1 && s.on_error_now == 1, "{s:?}");
    assert_eq!(s.started_on_error, 8, "{s:?}");

    // Jobs keep coming (not awaited: one may wait for a slot), and probe Redis.
    let resumed_at = Instant::now();
    let mut resumed = None;
    let mut hs = Vec::new();
    while resumed_at.elapsed() < Duration::from_secs(3) {
        hs.push(pool.submit(async {}).await.unwrap());
        if conc.stats().on_error_now == 0 {
            resumed = Some(resumed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let resumed = resumed.expect("did not resume after SIGCONT");
    eprintln!("paused: resumed {:.0} ms after SIGCONT", ms(resumed));
    assert!(resumed < Duration::from_secs(1));
    join_ok(hs, Duration::from_secs(3)).await;
    // The limit holds again.
    let g = Gauge::default();
    let hs = submit_n(&pool, 4, || held(&g, Duration::from_millis(40))).await;
    join_ok(hs, Duration::from_secs(3)).await;
    assert_eq!(g.peak(), 1);
    assert!(conc.stats().time_on_error > Duration::ZERO);
}

// ---------------------------------------------------------------------------
// 4. Never under the lock.
// ---------------------------------------------------------------------------

/// Key "a" has a shared rate with OnError::Closed and Redis is hung (SIGSTOP,
/// response timeout 2 s): its jobs wait, while unkeyed jobs and jobs of key "b"
/// (no shared limit) keep starting promptly, through the call in flight and
/// the probes after it. A Redis call under the pool lock would stall them ~2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_blocks_only_the_key_that_needs_it() {
    let _t = timing().await;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let config = RedisConfig::new()
        .response_timeout(Duration::from_secs(2))
        .call_timeout(Duration::from_secs(3));
    let redis = RedisLimits::connect_with(&server.url(), config)
        .await
        .unwrap();
    let a_rate = redis
        .rate("a", Rate::per_second(100).burst(5))
        .on_error(OnError::Closed);
    let pool = limited_pool(2, &[&KeyLimits::new().shared_rate(a_rate.clone())]);
    pool.set_key_limits("b", KeyLimits::new()).unwrap();
    pool.job(async {}).key("a").run().await.unwrap();

    server.pause();
    let paused = Instant::now();
    let a_started = Arc::new(AtomicUsize::new(0));
    let ahs = submit_keyed(&pool, "a", 4, || counted(&a_started)).await;
    let mut worst = Duration::ZERO;
    let mut ran = 0;
    // 2.6 s: the first call in flight (2 s), its failure, and probes after it.
    while paused.elapsed() < Duration::from_millis(2600) {
        let t = Instant::now();
        pool.run(async {}).await.unwrap();
        worst = worst.max(t.elapsed());
        let t = Instant::now();
        pool.job(async {}).key("b").run().await.unwrap();
        worst = worst.max(t.elapsed());
        ran += 2;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failing = poll_sync(Duration::from_secs(2), || a_rate.stats().on_error_now == 1).await;
    eprintln!(
        "never under the lock: {ran} other jobs while Redis hung, worst latency {:.1} ms; key a failing after {:?}",
        ms(worst),
        failing.map(|d| ms(d + Duration::from_millis(2600)))
    );
    assert!(worst < Duration::from_millis(500), "{worst:?}");
    assert!(failing.is_some(), "{:?}", a_rate.stats());
    assert_eq!(
        a_started.load(Ordering::SeqCst),
        0,
        "Closed let key a start"
    );

    server.resume();
    let resumed = Instant::now();
    join_ok(ahs, Duration::from_secs(4)).await;
    eprintln!(
        "never under the lock: key a's jobs ran {:.0} ms after SIGCONT",
        ms(resumed.elapsed())
    );
    assert!(resumed.elapsed() < Duration::from_secs(2));
}

/// A key out of shared tokens waits in the queue holding no worker: with one
/// worker, key "b" runs at once while key "a" waits ~2 s for its next token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_out_of_shared_tokens_holds_no_worker() {
    let _t = timing().await;
    let Some((_server, redis)) = start_redis().await else {
        return;
    };
    let rate = redis
        .rate("slow", Rate::new(1, Duration::from_secs(2)))
        .on_error(OnError::Closed);
    let pool = limited_pool(1, &[&KeyLimits::new().shared_rate(rate.clone())]);
    pool.set_key_limits("b", KeyLimits::new()).unwrap();
    let a1 = pool
        .job(async { Instant::now() })
        .key("a")
        .run()
        .await
        .unwrap();
    let a2 = pool
        .job(async { Instant::now() })
        .key("a")
        .submit()
        .await
        .unwrap();
    let t = Instant::now();
    let b = pool
        .job(async { Instant::now() })
        .key("b")
        .run()
        .await
        .unwrap();
    let b_latency = b - t;
    let a2 = tokio::time::timeout(Duration::from_secs(4), a2)
        .await
        .expect("key a never got its next token")
        .unwrap();
    eprintln!(
        "no worker held: b started {:.1} ms after submit; a's 2nd job {:.0} ms after its 1st",
        ms(b_latency),
        ms(a2 - a1)
    );
    assert!(b_latency < Duration::from_millis(500), "{b_latency:?}");
    assert!(b < a2);
    assert!(
        a2 - a1 >= Duration::from_millis(1500),
        "shared rate not enforced"
    );
    assert_eq!(rate.stats().errors, 0);
}

// ---------------------------------------------------------------------------
// 5. Scripts and expiry.
// ---------------------------------------------------------------------------

/// SCRIPT FLUSH: the scripts are loaded again (NOSCRIPT), with no error counted.
/// A restart (empty Redis, no scripts): errors only around the restart itself,
/// none once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_reload_after_flush_and_restart() {
    let Some((mut server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    let rate = redis
        .rate("flush", Rate::per_second(1000).burst(10))
        .on_error(OnError::Closed);
    let conc = redis.concurrency("flush", 4).on_error(OnError::Closed);
    let pool = limited_pool(8, &[&rate, &conc]);
    let batch = |n: usize| {
        let pool = pool.clone();
        async move {
            let hs = submit_n(&pool, n, || tokio::time::sleep(Duration::from_millis(2))).await;
            join_ok(hs, Duration::from_secs(5)).await;
        }
    };
    batch(40).await;
    let mut c = raw(&url).await;
    // Sent by SHA, loaded once each (a few more if calls race on NOSCRIPT),
    // never sent whole with EVAL.
    let (evalsha, loads) = (
        calls(&mut c, "evalsha").await,
        calls(&mut c, "script|load").await,
    );
    assert!(evalsha >= 5, "{evalsha}");
    assert!((2..=8).contains(&loads), "{loads} SCRIPT LOADs");
    assert_eq!(calls(&mut c, "eval").await, 0);
    flush_scripts(&mut c).await;
    let t = Instant::now();
    batch(40).await;
    let reloads = calls(&mut c, "script|load").await - loads;
    eprintln!(
        "scripts: {evalsha} EVALSHA and {loads} SCRIPT LOAD for 40 jobs; 40 jobs after SCRIPT FLUSH in {:.0} ms, {reloads} reloads",
        ms(t.elapsed())
    );
    assert!((2..=8).contains(&reloads), "{reloads} SCRIPT LOADs");
    for (name, s) in [("rate", rate.stats()), ("conc", conc.stats())] {
        assert_eq!(s.errors, 0, "{name} {s:?}");
        assert_eq!(s.started_on_error, 0, "{name} {s:?}");
    }
    // The scripts are back in the cache.
    let rs = rate.stats();
    assert!(rs.granted >= 80, "{rs:?}");

    server.kill();
    server.restart();
    let t = Instant::now();
    batch(40).await;
    let after_restart = (rate.stats().errors, conc.stats().errors);
    eprintln!(
        "scripts: 40 jobs after restart in {:.0} ms; errors from the restart {after_restart:?}",
        ms(t.elapsed())
    );
    assert!(after_restart.0 + after_restart.1 <= 6, "{after_restart:?}");
    batch(40).await;
    flush_scripts(&mut raw(&url).await).await;
    batch(40).await;
    assert_eq!(
        (rate.stats().errors, conc.stats().errors),
        after_restart,
        "errors beyond the restart"
    );
    assert_eq!(rate.stats().on_error_now + conc.stats().on_error_now, 0);
    assert_eq!(
        rate.stats().started_on_error + conc.stats().started_on_error,
        0
    );
}

/// Every key expires once idle: 2 000 distinct keys, each with a shared rate
/// and a shared concurrency limit, leave nothing in Redis shortly after their
/// jobs end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_leave_nothing_behind() {
    // Heavy on the CPU: not alongside the timing tests.
    let _t = timing().await;
    let Some((server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    // Rate keys live until their TAT: 500 ms after one token at 2/s.
    let rate = redis
        .rate("exp", Rate::per_second(2))
        .on_error(OnError::Closed);
    let conc = redis
        .concurrency("exp", 2)
        .ttl(Duration::from_millis(300))
        .on_error(OnError::Closed);
    let pool = limited_pool(
        64,
        &[&KeyLimits::new()
            .shared_rate(rate.clone())
            .shared_concurrency(conc.clone())],
    );
    let t = Instant::now();
    let mut hs = Vec::new();
    for i in 0..2000 {
        hs.push(
            pool.job(async {})
                .key(format!("host-{i}"))
                .submit()
                .await
                .unwrap(),
        );
    }
    join_ok(hs, Duration::from_secs(20)).await;
    let ran = t.elapsed();
    let mut c = raw(&url).await;
    let left = dbsize(&mut c).await;
    let drained = poll(Duration::from_secs(6), || {
        let mut c = c.clone();
        async move { dbsize(&mut c).await == 0 }
    })
    .await;
    let (rs, cs) = (rate.stats(), conc.stats());
    eprintln!(
        "expiry: 2000 keys ran in {:.0} ms; {left} Redis keys when they ended; DBSIZE 0 after {:?} ms; rate {rs:?}; conc {cs:?}",
        ms(ran),
        drained.map(ms)
    );
    assert_eq!(rs.errors + cs.errors, 0);
    assert_eq!(rs.granted, 2000, "{rs:?}");
    assert!(left > 0, "no key was ever written?");
    let Some(drained) = drained else {
        let left = keys(&mut c).await;
        panic!("{} keys left, e.g. {:?}", left.len(), left.first());
    };
    assert!(drained < Duration::from_secs(3), "{drained:?}");
    assert!(pool.stats().keys == 0);
}

// ---------------------------------------------------------------------------
// 6. No collisions; secrets.
// ---------------------------------------------------------------------------

/// A rate of 1 per 10 s: one start uses it up for 10 s.
fn one_per_10s() -> Rate {
    Rate::new(1, Duration::from_secs(10))
}

/// Runs one job of `key` (or unkeyed) on a fresh pool with `limits`, with a
/// queue timeout of `qt`: `Ok` if it started, `Err(QueueTimedOut)` if the
/// shared state was used up.
async fn one_job(
    limits: &dyn PoolLimit,
    key: Option<&'static str>,
    qt: Duration,
) -> Result<(), JobError> {
    let pool = limited_pool(2, &[limits]);
    let job = pool.job(async {}).queue_timeout(qt);
    let job = match key {
        Some(k) => job.key(k),
        None => job,
    };
    job.run().await
}

/// Distinct (name, key) pairs never share state: name "a:b" key "c" and name
/// "a" key "b:c"; a pool-level limit "x" and key "" of a per-key limit "x"; a
/// rate and a concurrency limit with the same name. The control (the same pair
/// twice) does share, so the test can see sharing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_names_and_keys_never_share_state() {
    let Some((server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    let quick = Duration::from_millis(800);
    let keyed = |name: &str| {
        let r = redis.rate(name, one_per_10s()).on_error(OnError::Closed);
        KeyLimits::new().shared_rate(r)
    };
    // Name "a:b", key "c": uses the only token.
    one_job(&keyed("a:b"), Some("c"), quick).await.unwrap();
    // Name "a", key "b:c": its own state.
    one_job(&keyed("a"), Some("b:c"), quick).await.unwrap();
    // Name "a", key "b:c" again, from another SharedRate object: shared (control).
    assert_eq!(
        one_job(&keyed("a"), Some("b:c"), quick).await,
        Err(JobError::QueueTimedOut)
    );
    // Control: "a:b"/"c" is used up too.
    assert_eq!(
        one_job(&keyed("a:b"), Some("c"), quick).await,
        Err(JobError::QueueTimedOut)
    );

    // Pool-level "x" vs key "" of per-key "x".
    let pool_x = redis.rate("x", one_per_10s()).on_error(OnError::Closed);
    one_job(&pool_x, None, quick).await.unwrap();
    one_job(&keyed("x"), Some(""), quick).await.unwrap();
    assert_eq!(
        one_job(&pool_x, None, quick).await,
        Err(JobError::QueueTimedOut)
    );

    // A rate and a concurrency limit named "same": the rate used up does not
    // block the concurrency limit, and neither hits the other's Redis type
    // (WRONGTYPE would count an error, and Closed would not start).
    let r = redis.rate("same", one_per_10s()).on_error(OnError::Closed);
    let c = redis.concurrency("same", 1).on_error(OnError::Closed);
    one_job(&r, None, quick).await.unwrap();
    one_job(&c, None, quick).await.unwrap();
    one_job(&c, None, quick).await.unwrap();
    assert_eq!(r.stats().errors, 0, "{:?}", r.stats());
    assert_eq!(c.stats().errors, 0, "{:?}", c.stats());
    let mut conn = raw(&url).await;
    let ks = keys(&mut conn).await;
    eprintln!("collisions: keys {ks:?}");
    assert!(ks.iter().all(|k| k.starts_with("taskgate:")), "{ks:?}");
}

/// The same name under two prefixes: independent; under one prefix: shared.
/// Every key is under its prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_separate_limits() {
    let Some((server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    let p1 = redis.prefix("tenant1");
    let p2 = redis.prefix("tenant2");
    assert_eq!(p1.key_prefix(), "tenant1");
    assert_eq!(redis.key_prefix(), "taskgate");
    let quick = Duration::from_millis(800);
    let api = |h: &RedisLimits| h.rate("api", one_per_10s()).on_error(OnError::Closed);
    one_job(&api(&p1), None, quick).await.unwrap();
    one_job(&api(&p2), None, quick).await.unwrap();
    assert_eq!(
        one_job(&api(&p1), None, quick).await,
        Err(JobError::QueueTimedOut),
        "same prefix and name must share"
    );
    assert_eq!(
        one_job(&api(&p2), None, quick).await,
        Err(JobError::QueueTimedOut)
    );
    // The default prefix is a third namespace.
    one_job(&api(&redis), None, quick).await.unwrap();
    let mut conn = raw(&url).await;
    let ks = keys(&mut conn).await;
    eprintln!("prefixes: keys {ks:?}");
    assert_eq!(ks.len(), 3, "{ks:?}");
    assert!(ks[0].starts_with("taskgate:"), "{ks:?}");
    assert!(ks[1].starts_with("tenant1:"), "{ks:?}");
    assert!(ks[2].starts_with("tenant2:"), "{ks:?}");
}

/// An io::Write into a shared buffer, for capturing logs.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary, from every thread: a global subscriber,
/// set once. (A thread-local `set_default` missed lines under parallel tests:
/// tracing caches a callsite's interest globally, so a callsite first hit on a
/// thread without the subscriber can stay off for the thread that has it.)
fn global_logs() -> Buf {
    static LOGS: std::sync::OnceLock<Buf> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Buf::default();
        let w = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        logs
    })
    .clone()
}

/// A password URL works; a wrong or missing password fails `connect` with
/// `Auth`; the password (as written, percent-encoded, and decoded) is in no
/// `Debug`, no error's `Display`/`Debug`, and no log line of the whole test
/// binary (every test's pools log into the same global capture).
#[tokio::test(flavor = "current_thread")]
async fn password_urls_work_and_never_leak() {
    const PW: &str = "p@ss-W0rd-Zq9";
    const PW_ENC: &str = "p%40ss-W0rd-Zq9";
    const CORE: &str = "W0rd-Zq9";
    let Some(mut server) = RedisServer::start_with(&["--requirepass", PW]) else {
        return;
    };
    let logs = global_logs();

    let port = server.port();
    let good = format!("redis://:{PW_ENC}@127.0.0.1:{port}/");
    let redis = RedisLimits::connect(&good).await.unwrap();
    redis.ping().await.unwrap();
    let rate = redis
        .rate("pw", Rate::per_second(100))
        .on_error(OnError::Closed);
    let conc = redis.concurrency("pw", 2).on_error(OnError::Closed);
    let pool = limited_pool(
        4,
        &[&rate, &conc, &KeyLimits::new().shared_rate(rate.clone())],
    );
    pool.job(async {})
        .queue_timeout(Duration::from_secs(2))
        .run()
        .await
        .unwrap();
    assert_eq!(rate.stats().errors + conc.stats().errors, 0);

    let mut texts = vec![
        format!("{redis:?}"),
        format!("{:?}", redis.prefix("p")),
        format!("{rate:?}"),
        format!("{conc:?}"),
        format!("{:?}", KeyLimits::new().shared_rate(rate.clone())),
        format!("{pool:?}"),
    ];
    assert!(texts[0].contains(&port.to_string()), "{}", texts[0]);

    let check_err = |url: String, want: RedisErrorKind| async move {
        let e = RedisLimits::connect(&url).await.unwrap_err();
        assert_eq!(e.kind(), want, "{e:?}");
        vec![format!("{e}"), format!("{e:?}")]
    };
    // Wrong password, with and without a user name; no password at all.
    texts.extend(
        check_err(
            format!("redis://:Wrong-{PW_ENC}@127.0.0.1:{port}/"),
            RedisErrorKind::Auth,
        )
        .await,
    );
    texts.extend(
        check_err(
            format!("redis://default:Wrong-{PW_ENC}@127.0.0.1:{port}/"),
            RedisErrorKind::Auth,
        )
        .await,
    );
    texts.extend(check_err(format!("redis://127.0.0.1:{port}/"), RedisErrorKind::Auth).await);

    // Redis down: the errors of connect, ping and the limits' calls (logged).
    server.kill();
    let e = RedisLimits::connect(&good).await.unwrap_err();
    assert!(e.is_unreachable(), "{e:?}");
    texts.push(format!("{e} {e:?}"));
    let e = redis.ping().await.unwrap_err();
    texts.push(format!("{e} {e:?}"));
    let r = pool
        .job(async {})
        .queue_timeout(Duration::from_millis(800))
        .run()
        .await;
    assert_eq!(r, Err(JobError::QueueTimedOut));
    assert!(rate.stats().errors + conc.stats().errors >= 1);

    // The failed call that puts the policy in force is logged when it ends
    // (at most the call timeout after the kill; later on a loaded machine).
    let read = || String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    poll_sync(Duration::from_secs(3), || {
        read().contains("redis call failed")
    })
    .await;
    let logged = read();
    assert!(
        logged.contains("redis call failed"),
        "log capture did not work: {logged}; rate {:?}; conc {:?}; pool {pool:?}",
        rate.stats(),
        conc.stats()
    );
    texts.push(logged);
    for t in &texts {
        for secret in [PW, PW_ENC, CORE] {
            assert!(!t.contains(secret), "{secret:?} leaked in: {t}");
        }
    }
    eprintln!("secrets: e.g. {} | {}", texts[0], texts[6]);
}

// ---------------------------------------------------------------------------
// 7. Nothing counted twice, nothing lost.
// ---------------------------------------------------------------------------

/// A job cancelled while waiting for a slot takes none: limit 1 held by A in
/// one pool; B, in another pool (so that it asks Redis: a pool whose own jobs
/// fill the limit does not ask), waits, refused by Redis at least once, and is
/// cancelled; when A ends, C (in B's pool) gets the slot at once. Pool-level
/// and per-key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_while_waiting_for_a_slot_takes_none() {
    let Some((server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    let mut c = raw(&url).await;
    for keyed in [false, true] {
        let conc = redis
            .concurrency(if keyed { "cw-key" } else { "cw-pool" }, 1)
            .on_error(OnError::Closed);
        let (pool_a, pool) = (conc_pool(&conc, keyed), conc_pool(&conc, keyed));
        let (a_job, a_started, a_end) = held_job();
        let a = on_key(pool_a.job(a_job), keyed).submit().await.unwrap();
        a_started.await.unwrap();
        assert_eq!(slots(&mut c).await, 1);
        let rt = conc.stats().round_trips;
        let b = on_key(pool.job(async { Instant::now() }), keyed)
            .submit()
            .await
            .unwrap();
        // B has been refused by Redis at least once.
        poll_sync(Duration::from_secs(2), || {
            conc.stats().round_trips >= rt + 2
        })
        .await
        .expect("B never asked Redis");
        b.cancel();
        assert_eq!(b.await, Err(JobError::Cancelled));
        assert_eq!(slots(&mut c).await, 1, "B took a slot");
        let rt = conc.stats().round_trips;
        let c_job = on_key(pool.job(async { Instant::now() }), keyed)
            .submit()
            .await
            .unwrap();
        // C has asked Redis, and been refused: it has not run.
        poll_sync(Duration::from_secs(2), || conc.stats().round_trips > rt)
            .await
            .expect("C never asked Redis");
        assert!(!c_job.is_finished(), "C ran past the limit");
        let _ = a_end.send(());
        let a_ended = a.await.unwrap();
        let c_started = tokio::time::timeout(Duration::from_secs(2), c_job)
            .await
            .expect("C never got the slot")
            .unwrap();
        let wait = c_started - a_ended;
        let drained = slots_drained(&url, Duration::from_secs(2)).await;
        eprintln!(
            "cancel while waiting (keyed {keyed}): C started {:.1} ms after A ended; slots back in {:?} ms; {:?}",
            ms(wait),
            drained.map(ms),
            conc.stats()
        );
        assert!(wait < Duration::from_millis(300), "{wait:?}");
        assert!(drained.is_some(), "slot left in Redis");
        assert_eq!(conc.stats().errors, 0);
    }
}

/// A job cancelled, timed out or panicking after it took its slot gives the
/// slot back at once (limit 1, TTL 10 s): the next job starts promptly, and
/// Redis holds no slot afterwards. Pool-level and per-key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_given_back_after_cancel_timeout_or_panic() {
    let Some((server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    for keyed in [false, true] {
        let conc = redis
            .concurrency(if keyed { "gb-key" } else { "gb-pool" }, 1)
            .on_error(OnError::Closed);
        assert_eq!(conc.slot_ttl(), Duration::from_secs(10));
        let pool = conc_pool(&conc, keyed);
        for how in ["cancel", "timeout", "panic"] {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let job = pool.job(async move {
                let _ = tx.send(());
                if how == "panic" {
                    panic!("job panics holding its slot");
                }
                std::future::pending::<()>().await;
            });
            let job = on_key(job, keyed);
            let job = if how == "timeout" {
                job.timeout(Duration::from_millis(100))
            } else {
                job
            };
            let h = job.submit().await.unwrap();
            rx.await.unwrap();
            if how == "cancel" {
                h.cancel();
            }
            let r = tokio::time::timeout(Duration::from_secs(2), h)
                .await
                .expect("job did not end");
            match how {
                "cancel" => assert_eq!(r, Err(JobError::Cancelled)),
                "timeout" => assert_eq!(r, Err(JobError::TimedOut)),
                _ => assert!(matches!(r, Err(JobError::Panicked(_))), "{r:?}"),
            }
            let t = Instant::now();
            let next = on_key(pool.job(async { Instant::now() }), keyed);
            let started = tokio::time::timeout(Duration::from_secs(3), next.run())
                .await
                .expect("next job waited for the TTL")
                .unwrap();
            eprintln!(
                "give back after {how} (keyed {keyed}): next job started in {:.1} ms",
                ms(started - t)
            );
            assert!(started - t < Duration::from_millis(500));
        }
        let drained = slots_drained(&url, Duration::from_secs(2)).await;
        assert!(drained.is_some(), "slot left in Redis");
        let s = conc.stats();
        assert_eq!((s.errors, s.started_on_error, s.lost), (0, 0, 0), "{s:?}");
    }
}

/// Fleet-of-one accounting: every start is a token granted by Redis, and the
/// tokens granted but not started are fewer than a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_tokens_match_jobs_started() {
    let Some((_server, redis)) = start_redis().await else {
        return;
    };
    let rate = redis
        .rate("acct", Rate::per_second(1000).burst(20))
        .lease(5)
        .on_error(OnError::Closed);
    assert_eq!(rate.effective_lease(), 5);
    let pool = limited_pool(8, &[&rate]);
    let n = 300u64;
    let hs = submit_n(&pool, n as usize, || async {}).await;
    // Some cancelled while queued: they take nothing.
    let cancelled = 50u64;
    for h in hs.iter().rev().take(cancelled as usize) {
        h.cancel();
    }
    let results = join(hs, Duration::from_secs(5)).await;
    let ran = results.iter().filter(|r| r.is_ok()).count() as u64;
    let s = rate.stats();
    eprintln!("accounting: {ran} jobs ran; {s:?}");
    assert!(ran >= n - cancelled);
    assert_eq!(s.errors, 0);
    assert_eq!(s.started_on_error, 0);
    assert!(s.granted >= ran, "started without a token: {s:?}");
    assert!(s.granted < ran + 5, "tokens granted but unused: {s:?}");
    assert!(s.round_trips >= ran / 5, "{s:?}");
}

// ---------------------------------------------------------------------------
// Basic: rate accuracy and bound; a fleet of two.
// ---------------------------------------------------------------------------

/// r = 200/s, burst 10 from one process: >= 90 % of r over ~1 s, and never
/// more than burst + r·t + lease in any window (+ a few for the jitter between
/// a job's token and its timestamp).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_shared_rate_delivers_its_rate_and_no_more() {
    let _t = timing().await;
    let Some((_server, redis)) = start_redis().await else {
        return;
    };
    let rate = redis.rate("r200", Rate::per_second(200).burst(10));
    let lease = rate.effective_lease();
    assert_eq!(lease, 2);
    let pool = limited_pool(16, &[&rate]);
    let starts = log();
    let hs = submit_n(&pool, 300, || stamp(&starts)).await;
    join(hs, Duration::from_secs(5)).await;
    let s = sorted(&starts);
    let span = s[s.len() - 1] - s[0];
    let in_first_second = s
        .iter()
        .filter(|&&t| t - s[0] <= Duration::from_secs(1))
        .count();
    let achieved = (s.len() as f64 - 10.0) / span.as_secs_f64();
    let excess = max_excess(&s, 200.0, 10.0 + lease as f64);
    let st = rate.stats();
    eprintln!(
        "rate 200/s: {in_first_second} started in the first second; {achieved:.1}/s over {:.0} ms; max window excess over burst+r·t+lease {excess:.2}; {st:?}",
        ms(span)
    );
    assert_eq!(st.errors, 0);
    assert_eq!(st.started_on_error, 0);
    assert!(achieved >= 180.0, "{achieved}");
    assert!(in_first_second >= 190, "{in_first_second}");
    assert!(excess <= 2.0, "bound exceeded by {excess}");
}

/// Two handles (two connections, as two processes would have) sharing one
/// rate name: together they get the rate once, not twice; sharing one
/// concurrency name: never more than the limit at once across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_rate_and_one_concurrency_limit() {
    let _t = timing().await;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let h1 = RedisLimits::connect(&url).await.unwrap();
    let h2 = RedisLimits::connect(&url).await.unwrap();
    let starts = log();
    let mut pools = Vec::new();
    let mut rates = Vec::new();
    for h in [&h1, &h2] {
        let r = h.rate("fleet", Rate::per_second(200).burst(10));
        pools.push(limited_pool(8, &[&r]));
        rates.push(r);
    }
    let mut hs = Vec::new();
    for _ in 0..150 {
        for p in &pools {
            hs.push(p.submit(stamp(&starts)).await.unwrap());
        }
    }
    join(hs, Duration::from_secs(5)).await;
    let s = sorted(&starts);
    let span = s[s.len() - 1] - s[0];
    let achieved = (s.len() as f64 - 10.0) / span.as_secs_f64();
    // burst + r·t + P·lease, P = 2.
    let excess = max_excess(&s, 200.0, 10.0 + 2.0 * 2.0);
    let granted: u64 = rates.iter().map(|r| r.stats().granted).sum();
    eprintln!(
        "fleet of 2, rate 200/s: {achieved:.1}/s together over {:.0} ms; max window excess {excess:.2}; granted {granted}",
        ms(span)
    );
    assert!((170.0..=220.0).contains(&achieved), "{achieved}");
    assert!(excess <= 3.0, "{excess}");
    assert!((300..300 + 2 * 2).contains(&granted), "{granted}");

    let g = Gauge::default();
    let mut concs = Vec::new();
    let mut pools = Vec::new();
    for h in [&h1, &h2] {
        let c = h.concurrency("fleet", 3).on_error(OnError::Closed);
        pools.push(limited_pool(8, &[&c]));
        concs.push(c);
    }
    let mut hs = Vec::new();
    for _ in 0..30 {
        for p in &pools {
            hs.push(p.submit(held(&g, Duration::from_millis(10))).await.unwrap());
        }
    }
    join_ok(hs, Duration::from_secs(10)).await;
    eprintln!(
        "fleet of 2, concurrency 3: at most {} at once; {:?} {:?}",
        g.peak(),
        concs[0].stats(),
        concs[1].stats()
    );
    assert!(g.peak() <= 3, "{}", g.peak());
    assert!(g.peak() >= 2, "never ran side by side");
    assert_eq!(concs[0].stats().errors + concs[1].stats().errors, 0);
    assert!(slots_drained(&url, Duration::from_secs(2)).await.is_some());
}

/// Invalid shared limits are refused by `build` and `set_key_limits`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_shared_limits_are_refused() {
    let Some((server, redis)) = start_redis().await else {
        return;
    };
    let fails = |b: taskgate::Builder| match b.build() {
        Err(BuildError::InvalidLimit(e)) => e,
        other => panic!("expected InvalidLimit, got {other:?}"),
    };
    let r = |rate| redis.rate("x", rate);
    let c = |n| redis.concurrency("x", n);
    assert_eq!(
        fails(Pool::builder().shared_rate(r(Rate::per_second(10)).lease(0))),
        LimitError::ZeroLease
    );
    assert_eq!(
        fails(Pool::builder().shared_rate(r(Rate::per_second(2_000_000)))),
        LimitError::SharedRateOutOfRange
    );
    assert_eq!(
        fails(Pool::builder().shared_rate(r(Rate::per_second(0)))),
        LimitError::ZeroRate
    );
    assert_eq!(
        fails(Pool::builder().shared_concurrency(c(0))),
        LimitError::ZeroConcurrency
    );
    assert_eq!(
        fails(Pool::builder().shared_concurrency(c(1).ttl(Duration::from_millis(29)))),
        LimitError::InvalidTtl
    );
    // A TTL Redis could not hold exactly (the review's 1e17 ms leaked a slot
    // that never expired).
    assert_eq!(
        fails(Pool::builder().shared_concurrency(c(1).ttl(Duration::from_secs(86_401)))),
        LimitError::InvalidTtl
    );
    // A period whose interval does not fit 64-bit microseconds.
    assert_eq!(
        fails(Pool::builder().shared_rate(r(Rate::new(1, Duration::MAX)))),
        LimitError::SharedRateOutOfRange
    );
    assert_eq!(
        fails(
            Pool::builder()
                .key_limits(KeyLimits::new().shared_rate(r(Rate::per_second(10)).lease(0)))
        ),
        LimitError::ZeroLease
    );
    assert_eq!(
        fails(
            Pool::builder().key_limits(
                KeyLimits::new().shared_concurrency(c(1).ttl(Duration::from_millis(1)))
            )
        ),
        LimitError::InvalidTtl
    );
    let pool = limited_pool(2, &[&c(1).ttl(Duration::from_millis(30))]);
    assert_eq!(
        pool.set_key_limits("k", KeyLimits::new().shared_concurrency(c(0))),
        Err(LimitError::ZeroConcurrency)
    );
    assert_eq!(
        pool.set_key_limits(
            "k",
            KeyLimits::new().shared_rate(r(Rate::per_second(3_000_000)))
        ),
        Err(LimitError::SharedRateOutOfRange)
    );
    assert_eq!(
        r(Rate::per_second(10_000).burst(100)).effective_lease(),
        100
    );
    assert_eq!(
        r(Rate::per_second(10_000).burst(20))
            .lease(500)
            .effective_lease(),
        20
    );
    assert_eq!(r(Rate::per_second(10)).effective_lease(), 1);
    pool.run(async {}).await.unwrap();

    // A handle on a connection manager made by the caller.
    let client = redis::Client::open(server.url()).unwrap();
    let cm = redis::aio::ConnectionManager::new(client).await.unwrap();
    let own = RedisLimits::from_connection(cm);
    own.ping().await.unwrap();
    assert!(format!("{own:?}").contains("(from_connection)"));
    let rate = own
        .rate("own", Rate::per_second(100))
        .on_error(OnError::Closed);
    let pool = limited_pool(2, &[&rate]);
    pool.run(async {}).await.unwrap();
    let s = rate.stats();
    assert_eq!((s.granted, s.errors), (1, 0), "{s:?}");
}

// ---------------------------------------------------------------------------
// Regressions: bugs this file found, fixed in the crate.
// ---------------------------------------------------------------------------

/// Was a bug (src/redis/concurrency.rs, `Cell::settle` / `SlotLimiter::release`;
/// fixed: a fresh grant no job takes goes back after `FRESH_LINGER`):
/// a pool-level slot granted for a job that was cancelled while the acquire was
/// in flight is kept by the pool, idle, and renewed forever: it never goes back
/// to Redis (only `release`, i.e. a job of this pool ending, starts the return
/// of idle slots), so with limit 1 every other process is shut out while this
/// one is idle. Contract 7: "a job cancelled while waiting for a shared slot
/// takes none".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_granted_after_cancel_is_given_back() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    // Long timeouts: the acquire stays in flight while Redis is stopped.
    let config = RedisConfig::new()
        .response_timeout(Duration::from_secs(3))
        .call_timeout(Duration::from_secs(4));
    let redis = RedisLimits::connect_with(&url, config).await.unwrap();
    let conc = redis.concurrency("leak", 1).on_error(OnError::Closed);
    let pool = limited_pool(2, &[&conc]);
    pool.run(async {}).await.unwrap();
    slots_drained(&url, Duration::from_secs(2)).await.unwrap();

    server.pause();
    let b = pool.submit(async {}).await.unwrap();
    // Not observable from outside: give the background acquire time to be
    // written to the (stopped) server's socket.
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.cancel();
    assert_eq!(b.await, Err(JobError::Cancelled));
    let rt = conc.stats().round_trips;
    server.resume();
    // The acquire is answered now (a slot for the cancelled job).
    poll_sync(Duration::from_secs(3), || conc.stats().round_trips > rt)
        .await
        .expect("acquire never answered");
    let drained = slots_drained(&url, Duration::from_secs(2)).await;
    // Another process cannot start anything meanwhile.
    let other = RedisLimits::connect(&url).await.unwrap();
    let other_pool = limited_pool(
        2,
        &[&other.concurrency("leak", 1).on_error(OnError::Closed)],
    );
    let r = other_pool
        .job(async {})
        .queue_timeout(Duration::from_secs(1))
        .run()
        .await;
    eprintln!(
        "regression: slot after cancel in flight: drained {:?}; other process's job: {r:?}; {:?}",
        drained.map(ms),
        conc.stats()
    );
    assert!(
        drained.is_some(),
        "the cancelled job's slot is still held in Redis"
    );
    assert_eq!(r, Ok(()));
}

/// Was a bug (src/redis/rate.rs `RateLimiter` + src/sched/keys.rs `collect`;
/// fixed: `Remote::holds_until` keeps the lane while the local rate is owed):
/// with Redis down, a per-key shared rate under OnError::Local is not "the same
/// limit enforced in-process" for a key whose jobs come one after another: the
/// key's lane is removed between jobs (`Gate::holds_until` ignores remote
/// limiters), and with it the limiter's local GCRA, so each job finds a fresh
/// full burst. A key at 1 per 5 s (burst 1) starts a job per failed Redis call
/// instead of 1 (+1) in 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_policy_per_key_rate_kept_between_jobs() {
    let Some((mut server, redis)) = start_redis().await else {
        return;
    };
    let rate = redis.rate("per-key", Rate::new(1, Duration::from_secs(5)));
    assert_eq!(rate.policy(), OnError::Local);
    let pool = limited_pool(4, &[&KeyLimits::new().shared_rate(rate.clone())]);
    // Down before the key's first job: its first request fails, so `Local` is
    // in force from the start (a healthy first lease would leave the key with
    // nothing to ask Redis for during the outage, and nothing under test).
    server.kill();
    let killed = Instant::now();
    let mut started = 0;
    let k: taskgate::Key = "k".into();
    while killed.elapsed() < Duration::from_secs(3) {
        // Jobs of the key come one after another, with the key idle in
        // between (no job queued or running).
        poll_sync(Duration::from_secs(1), || {
            pool.key_stats(&k)
                .is_none_or(|s| s.busy == 0 && s.queued == 0)
        })
        .await
        .expect("key never idle");
        let left = Duration::from_secs(3).saturating_sub(killed.elapsed());
        match pool
            .job(async {})
            .key("k")
            .queue_timeout(left.max(Duration::from_millis(1)))
            .run()
            .await
        {
            Ok(()) => started += 1,
            Err(JobError::QueueTimedOut) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    eprintln!(
        "regression: Local per-key rate 1/5 s, Redis down 3 s, sequential jobs: {started} started; {:?}",
        rate.stats()
    );
    // In-process 1 per 5 s, burst 1: the first at once, then none in 3 s.
    assert!(started <= 2, "{started} jobs started in 3 s at 1 per 5 s");
    assert!(started >= 1, "Local started nothing: {:?}", rate.stats());
    assert!(rate.stats().errors >= 1, "{:?}", rate.stats());
}

/// Was a bug (src/redis/concurrency.rs `Cell::acquire`/`Cell::settle`, the
/// `Err` branch; fixed: a failed acquire's ids are kept as orphans and given
/// back at the next answer), with src/redis/client.rs `RedisLimits::acquire`): an acquire
/// that times out on a hung Redis (SIGSTOP) is still run by Redis when it
/// resumes (the `Timeout` kind's own doc: "Redis may still have run the
/// command"). The slot it grants belongs to a holder id the client has
/// forgotten: nobody renews or releases it, and it blocks the limit for a whole
/// TTL (10 s by default) after Redis is back. Contract 3: shared limiting
/// resumes within a second of Redis coming back. Expected: the ids of a
/// timed-out acquire are released (ZREM) once Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_acquires_leave_no_orphan_slots() {
    let Some((server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    let conc = redis.concurrency("orphan", 1).on_error(OnError::Closed);
    let pool = limited_pool(4, &[&conc]);
    pool.run(async {}).await.unwrap();
    slots_drained(&url, Duration::from_secs(2)).await.unwrap();

    server.pause();
    // One job waits (Closed) while its acquire times out, then gives up.
    let r = pool
        .job(async {})
        .queue_timeout(Duration::from_millis(600))
        .run()
        .await;
    assert_eq!(r, Err(JobError::QueueTimedOut));
    assert!(conc.stats().errors >= 1, "{:?}", conc.stats());
    server.resume();
    let resumed = Instant::now();
    // Nothing runs anywhere: the next job should get the only slot at once.
    let r = pool
        .job(async { Instant::now() })
        .queue_timeout(Duration::from_secs(2))
        .run()
        .await;
    let mut c = raw(&url).await;
    let held = slots(&mut c).await;
    eprintln!(
        "regression: after SIGCONT: next job {:?} ({:.0} ms); {held} slot(s) held in Redis with no job running; {:?}",
        r.as_ref().map(|t| ms(*t - resumed)),
        ms(resumed.elapsed()),
        conc.stats()
    );
    assert!(
        r.is_ok(),
        "limit 1 still blocked after SIGCONT by {held} orphan slot(s)"
    );
}

// ---------------------------------------------------------------------------
// Regressions: the review's findings, fixed in the crate.
// ---------------------------------------------------------------------------

/// Was a bug (src/redis/client.rs `RedisLimits::prefix`; fixed: each handle
/// gets a holder tag of its own): two handles made with `prefix` of the same
/// prefix shared their parent's tag and each counted holder ids from 0, so
/// their first slots had the same holder id: the second acquire found "its"
/// slot already in the set and was granted it, and with a limit of 1 both
/// jobs ran at once (ZCARD 1, two holders).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_handles_never_share_slot_ids() {
    let Some((server, base)) = start_redis().await else {
        return;
    };
    let url = server.url();
    let a = base.prefix("same");
    let b = base.prefix("same");
    let ca = a.concurrency("c", 1).on_error(OnError::Closed);
    let cb = b.concurrency("c", 1).on_error(OnError::Closed);
    let pa = limited_pool(2, &[&ca]);
    let pb = limited_pool(2, &[&cb]);
    let (job, started, end) = held_job();
    let ha = pa.submit(job).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), started)
        .await
        .expect("A never started")
        .unwrap();
    let mut c = raw(&url).await;
    assert_eq!(slots(&mut c).await, 1);

    // B (the other handle, same prefix and name) must wait for A's slot.
    let b_ran = Arc::new(AtomicUsize::new(0));
    let hb = pb
        .job(counted(&b_ran))
        .queue_timeout(Duration::from_millis(500))
        .submit()
        .await
        .unwrap();
    let mut most = 0;
    while !hb.is_finished() {
        most = most.max(slots(&mut c).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rb = hb.await;
    eprintln!(
        "regression: two prefix(\"same\") handles, limit 1: B while A runs: {rb:?}; at most {most} slot(s) in Redis; A {:?}; B {:?}",
        ca.stats(),
        cb.stats()
    );
    assert_eq!(
        rb,
        Err(JobError::QueueTimedOut),
        "B ran beside A at limit 1"
    );
    assert_eq!(b_ran.load(Ordering::SeqCst), 0);
    assert!(most <= 1, "{most} slots held at limit 1");
    assert!(cb.stats().round_trips >= 1, "B never asked Redis");
    assert_eq!(ca.stats().errors + cb.stats().errors, 0);

    // Once A ends, B gets the slot.
    let _ = end.send(());
    let a_ended = ha.await.unwrap();
    let b_started = pb
        .job(async { Instant::now() })
        .queue_timeout(Duration::from_secs(3))
        .run()
        .await
        .expect("B never got the slot after A ended");
    assert!(b_started > a_ended);
    assert!(slots_drained(&url, Duration::from_secs(2)).await.is_some());
}

/// Was a bug (src/sched/lanes.rs `RemoteEnv::bind` + src/redis/concurrency.rs
/// `bind`; fixed: a new limiter counts the gate's running jobs as holding
/// none of its slots): jobs of a key that started before the key was given a
/// shared concurrency limit were released to the new limiter as if they held
/// its slots: each one that ended moved a slot of a new job to the idle list,
/// where another new job took it, so the new jobs ran 4 at once at a limit
/// of 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_key_limits_while_jobs_run_keeps_the_count() {
    let Some((server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    let pool = limited_pool(16, &[]);
    let k: taskgate::Key = "k".into();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let old = submit_keyed(&pool, "k", 4, || {
        let g = gate.clone();
        async move {
            let _ = g.acquire().await;
        }
    })
    .await;
    poll_sync(Duration::from_secs(2), || {
        pool.key_stats(&k).is_some_and(|s| s.busy == 4)
    })
    .await
    .expect("old jobs never all ran");

    let conc = redis.concurrency("rebind", 2).on_error(OnError::Closed);
    pool.set_key_limits(&k, KeyLimits::new().shared_concurrency(conc.clone()))
        .unwrap();
    let g = Gauge::default();
    let new = submit_keyed(&pool, "k", 8, || held(&g, Duration::from_millis(100))).await;
    // Give new jobs the chance to start beside the old ones (the old code
    // started 2, on slots from Redis), then end the old jobs.
    poll_sync(Duration::from_millis(300), || g.now() > 0).await;
    gate.add_permits(4);
    join_ok(old, Duration::from_secs(2)).await;
    let mut c = raw(&url).await;
    let mut most_slots = 0;
    let t = Instant::now();
    while !new.iter().all(JobHandle::is_finished) {
        assert!(t.elapsed() < Duration::from_secs(5), "new jobs stuck");
        most_slots = most_slots.max(slots(&mut c).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    join_ok(new, Duration::from_secs(1)).await;
    let s = conc.stats();
    eprintln!(
        "regression: limit 2 set while 4 jobs ran: new jobs at most {} at once; at most {most_slots} slot(s) in Redis; {s:?}",
        g.peak()
    );
    assert!(g.peak() <= 2, "{} new jobs at once at limit 2", g.peak());
    assert!(most_slots <= 2, "{most_slots} slots at limit 2");
    assert!(g.peak() >= 1);
    assert_eq!(s.errors, 0, "{s:?}");
    assert!(slots_drained(&url, Duration::from_secs(2)).await.is_some());
}

/// Was a bug (src/sched/take.rs, a job's end; fixed: a pool blocked on its
/// shared limit is unblocked when the ending job's slot is idle): a pool-level
/// slot given up by a job that ended was not handed to the next queued job,
/// which waited for a round trip to Redis instead (and the idle slot went
/// back): 200 jobs of 5 ms at limit 2 took 234 round trips at the pool's
/// level against 18 for the same limit per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_level_slot_hands_off_without_round_trips() {
    let _t = timing().await;
    let Some((_server, redis)) = start_redis().await else {
        return;
    };
    let conc = redis.concurrency("handoff", 2).on_error(OnError::Closed);
    let pool = Pool::builder()
        .workers(8)
        .queue_capacity(1000)
        .shared_concurrency(conc.clone())
        .build()
        .unwrap();
    let g = Gauge::default();
    let t = Instant::now();
    let hs = submit_n(&pool, 200, || held(&g, Duration::from_millis(5))).await;
    join_ok(hs, Duration::from_secs(10)).await;
    let took = t.elapsed();
    let s = conc.stats();
    eprintln!(
        "regression: pool-level limit 2, 200 jobs of 5 ms: {:.0} ms, at most {} at once; {s:?}",
        ms(took),
        g.peak()
    );
    assert!(g.peak() <= 2, "{}", g.peak());
    assert_eq!(s.errors, 0, "{s:?}");
    // 100 rounds of 5 ms at 2 at once: 0.5 s, plus timer granularity.
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        s.round_trips <= 60,
        "{} round trips: slots not handed from job to job",
        s.round_trips
    );
}

/// Was a bug (src/redis/concurrency.rs `SlotLimiter::check`; fixed: once
/// Redis answers again, jobs that run holding no slot still count, and only a
/// job ending makes room while they fill the limit): jobs started without a
/// slot under OnError::Local were forgotten once Redis came back: Redis, empty
/// after its restart, granted the whole limit again, and 4 jobs ran at a
/// limit of 2 in this one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_without_a_slot_count_after_an_outage() {
    let Some((mut server, redis)) = start_redis().await else {
        return;
    };
    let url = server.url();
    let conc = redis.concurrency("recover", 2);
    assert_eq!(conc.policy(), OnError::Local);
    let pool = limited_pool(16, &[&KeyLimits::new().shared_concurrency(conc.clone())]);
    pool.job(async {}).key("k").run().await.unwrap();
    slots_drained(&url, Duration::from_secs(2))
        .await
        .expect("idle slot not given back");

    server.kill();
    let g = Gauge::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let old = submit_keyed(&pool, "k", 2, || {
        let (g, gate) = (g.clone(), gate.clone());
        async move {
            let _in = g.enter();
            let _ = gate.acquire().await;
        }
    })
    .await;
    poll_sync(Duration::from_secs(3), || g.now() == 2)
        .await
        .expect("Local did not start the 2 jobs while Redis was down");
    // The failed call that put the policy in force was before this.
    let failed_by = Instant::now();
    assert_eq!(conc.stats().started_on_error, 2, "{:?}", conc.stats());

    server.restart();
    let restarted = Instant::now();
    poll(Duration::from_secs(3), || async {
        redis.ping().await.is_ok()
    })
    .await
    .expect("Redis did not answer after the restart");
    // The next check of the key probes Redis (a failing limit asks again
    // every 200 ms): the new jobs' first check must send that probe, as
    // it would a while after an outage (the probe is granted a slot).
    tokio::time::sleep_until((failed_by + Duration::from_millis(300)).into()).await;
    let new = submit_keyed(&pool, "k", 4, || held(&g, Duration::from_millis(50))).await;
    // The new jobs probe Redis, which answers again.
    let back = poll_sync(Duration::from_secs(3), || conc.stats().on_error_now == 0).await;
    // Nothing to observe if the limit holds: give the new jobs a while to
    // (wrongly) start beside the 2 that hold no slot.
    poll_sync(Duration::from_millis(500), || g.peak() > 2).await;
    let mut c = raw(&url).await;
    let in_redis = slots(&mut c).await;
    let before_end = g.peak();
    eprintln!(
        "regression: Local, 2 jobs started with Redis down: after the restart (back in {:?} ms) at most {before_end} at once (limit 2), {in_redis} slot(s) in Redis; {:?}",
        back.map(|_| ms(restarted.elapsed())),
        conc.stats()
    );
    back.expect("shared limit did not answer again after the restart");
    assert!(
        before_end <= 2,
        "{before_end} jobs at once at limit 2 after Redis came back"
    );
    assert!(
        new.iter().all(|h| !h.is_finished()),
        "a new job ran beside the 2 old ones"
    );

    gate.add_permits(2);
    join_ok(old, Duration::from_secs(2)).await;
    join_ok(new, Duration::from_secs(5)).await;
    eprintln!(
        "regression: after the old jobs ended: at most {} at once; {:?}",
        g.peak(),
        conc.stats()
    );
    assert!(g.peak() <= 2, "{}", g.peak());
    assert!(slots_drained(&url, Duration::from_secs(2)).await.is_some());
}

/// Was a bug (src/redis/concurrency.rs and rate.rs, `RemoteSpec::id`; fixed:
/// the identity covers the whole setting): a setting's identity was its
/// counters' address, which a clone shares, so `set_key_limits` with a clone
/// changed to OnError::Closed kept the key's old limiter, still Local: with
/// Redis down, the key's jobs started anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_clone_of_a_setting_takes_effect() {
    let Some((mut server, redis)) = start_redis().await else {
        return;
    };
    let base = redis.concurrency("clone", 4);
    assert_eq!(base.policy(), OnError::Local);
    let pool = conc_pool(&base, true);
    // A job of the key runs throughout: its lane (and limiter) stays.
    let (job, started, end) = held_job();
    let long = pool.job(job).key("k").submit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), started)
        .await
        .expect("long job never started")
        .unwrap();

    let closed = base.clone().on_error(OnError::Closed);
    assert_eq!(closed.policy(), OnError::Closed);
    pool.set_key_limits("k", KeyLimits::new().shared_concurrency(closed.clone()))
        .unwrap();
    server.kill();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = pool
        .job(counted(&ran))
        .key("k")
        .queue_timeout(Duration::from_millis(800))
        .run()
        .await;
    eprintln!(
        "regression: a clone set to Closed, Redis down: the key's next job {r:?}; {:?}",
        closed.stats()
    );
    assert_eq!(
        r,
        Err(JobError::QueueTimedOut),
        "the key's job started with Redis down under Closed"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert!(closed.stats().errors >= 1, "{:?}", closed.stats());
    let _ = end.send(());
    tokio::time::timeout(Duration::from_secs(2), long)
        .await
        .expect("long job did not end")
        .unwrap();
}

/// Was a bug (src/redis/concurrency.rs and rate.rs `Cell::ask`; fixed: the
/// deadline saturates): a call timeout of `Duration::MAX` overflowed
/// `Instant + Duration` at the first request, a panic in the scheduler's
/// `pick`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_call_timeout_does_not_panic() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let config = RedisConfig::new().call_timeout(Duration::MAX);
    let redis = RedisLimits::connect_with(&url, config).await.unwrap();
    let rate = redis
        .rate("huge", Rate::per_second(10))
        .on_error(OnError::Closed);
    let conc = redis.concurrency("huge", 2).on_error(OnError::Closed);
    let pool = limited_pool(2, &[&rate, &conc]);
    let r = tokio::time::timeout(Duration::from_secs(3), pool.run(async { 7 })).await;
    eprintln!(
        "regression: call_timeout(Duration::MAX): {r:?}; rate {:?}; conc {:?}",
        rate.stats(),
        conc.stats()
    );
    assert_eq!(r.expect("job never ran"), Ok(7));
    assert_eq!(rate.stats().granted, 1, "{:?}", rate.stats());
    assert_eq!(conc.stats().granted, 1, "{:?}", conc.stats());
    assert_eq!(rate.stats().errors + conc.stats().errors, 0);
    assert!(slots_drained(&url, Duration::from_secs(2)).await.is_some());
}

/// Was a bug (src/redis/rate.rs `holds_until`; fixed: unused leased tokens
/// keep a key's lane up to a second after they came): a key whose jobs came
/// one at a time, 30 ms apart, lost its lane, and the lease in it, after every
/// job, so each job took a fresh lease from the fleet's bucket: 50 jobs took
/// 500 tokens in 50 round trips, starving the other processes on the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_uses_its_lease_across_jobs_one_at_a_time() {
    let Some((_server, redis)) = start_redis().await else {
        return;
    };
    // 1 000/s with a burst of 20: a lease of 10 tokens, made in 10 ms.
    let rate = redis.rate("lease-kept", Rate::per_second(1_000).burst(20));
    assert_eq!(rate.effective_lease(), 10);
    let pool = limited_pool(4, &[&KeyLimits::new().shared_rate(rate.clone())]);
    let n = 20;
    for i in 0..n {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            pool.job(async move { i }).key("k").run(),
        )
        .await;
        assert_eq!(r.expect("job never ran"), Ok(i));
        // Pacing, not waiting for anything: jobs well under the rate.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let s = rate.stats();
    eprintln!("regression: {n} jobs one at a time, 30 ms apart, on one key: {s:?}");
    // Lost leases take a round trip and 10 tokens per job.
    assert!(
        s.granted <= n + 2 * u64::from(rate.effective_lease()),
        "{} tokens taken for {n} jobs: {s:?}",
        s.granted
    );
    assert!(
        s.round_trips <= n / 4,
        "{} round trips for {n} jobs: {s:?}",
        s.round_trips
    );
    assert_eq!(s.errors, 0, "{s:?}");
}

/// Was a bug (src/redis/health.rs `spec_id`; fixed: a setting's identity is
/// what its `PartialEq` compares): setting a key's limits again with an equal
/// shared concurrency limit built anew (a configuration reloaded) replaced the
/// limiter, so the slot of the key's running job went back to Redis while the
/// job ran on, and other processes could take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equal_setting_set_again_keeps_the_running_jobs_slot() {
    let Some((server, redis)) = start_redis().await else {
        return;
    };
    let limits = || KeyLimits::new().shared_concurrency(redis.concurrency("eq", 2));
    assert_eq!(limits(), limits());
    let pool = limited_pool(4, &[]);
    pool.set_key_limits("k", limits()).unwrap();
    let (job, started, end) = held_job();
    let h = pool.job(job).key("k").submit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), started)
        .await
        .expect("job never started")
        .unwrap();
    let mut c = raw(&server.url()).await;
    assert_eq!(slots(&mut c).await, 1, "the running job holds a slot");
    pool.set_key_limits("k", limits()).unwrap();
    // A slot given back goes in a background call: give it time to show.
    let gone = poll(Duration::from_millis(300), || {
        let mut c = c.clone();
        async move { slots(&mut c).await == 0 }
    })
    .await;
    let _ = end.send(());
    h.await.unwrap();
    assert!(
        gone.is_none(),
        "the running job's slot went back when an equal setting was set again"
    );
    assert!(
        slots_drained(&server.url(), Duration::from_secs(2))
            .await
            .is_some()
    );
}
