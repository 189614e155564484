//! The adaptive limit inside the real pool, against a simulated downstream: the
//! bands of the prototype's simulation (`adaptive/tests/sim.rs`, DESIGN.md), ported
//! from its discrete-event engine to a pool on a paused Tokio clock.
//!
//! The downstream has a capacity `C` (it can change during a run), a base latency
//! of 100 ms with 10% exponential jitter from a seeded RNG, and one behaviour above
//! capacity: (a) `Refuse`, it answers "overloaded" after 10 ms (classified
//! `Overload { retry_after: None }`); (b) `Hang`, it never answers, and the job's
//! 1 s run timeout ends it (an unclassified overload); (c) `Slow`, every call gets
//! slower in proportion to `active / C` and succeeds. Caller tasks loop
//! `pool.job(call).timeout(1 s).classify(..).run().await`. A sampler reads the
//! limit every 10 ms of virtual time, so the mean of the samples is the
//! time-weighted mean of the limit.
//!
//! Every test runs on a current-thread runtime with paused time: the same seed
//! gives the same run. Run with `--nocapture` to see each measured figure next to
//! its bound.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::Rng;
use taskgate::{
    Adaptive, AdaptiveError, BuildError, JobError, Key, KeyLimits, LimitError, Outcome, Pool,
};
use tokio::time::{Instant, sleep, sleep_until};

const WORKERS: usize = 64;
/// How often the sampler reads the limit.
const TICK: Duration = Duration::from_millis(10);
/// Every job's run timeout.
const TIMEOUT: Duration = Duration::from_secs(1);
/// How fast mode (a) refuses a call above capacity.
const REJECT: Duration = Duration::from_millis(10);
/// Base latency, seconds.
const BASE: f64 = 0.100;
/// Exponential jitter, as a fraction of `BASE` (mean-centred: mean latency = BASE).
const JITTER: f64 = 0.10;
const SEED: u64 = 7;

// ------------------------------------------------------------------ downstream

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// (a) Above capacity: refused after 10 ms, no Retry-After.
    Refuse,
    /// (b) Above capacity: hangs until the job's run timeout.
    Hang,
    /// (c) Latency grows with active / C; always succeeds (unless past the timeout).
    Slow,
}

const MODES: [Mode; 3] = [Mode::Refuse, Mode::Hang, Mode::Slow];

/// What the downstream answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Ok,
    Busy(Option<Duration>),
}

/// How a caller's job ended, as the test counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Success,
    /// Refused by the downstream, or timed out.
    Overload,
    Other,
}

struct Downstream {
    mode: Mode,
    cap: AtomicUsize,
    /// Calls being served (those that hold capacity).
    active: AtomicUsize,
    rng: Mutex<Rng>,
    /// Calls arriving in `[from, to)` are answered `Busy(Some(retry_after))` after
    /// a normal latency.
    burst: Option<(Instant, Instant, Duration)>,
    /// When calls arrived (started on a worker).
    starts: Mutex<Vec<Instant>>,
    /// When calls of the burst answered.
    burst_ends: Mutex<Vec<Instant>>,
}

/// Frees a unit of the downstream's capacity when dropped (also when the job
/// is dropped at its run timeout).
struct Slot(Arc<Downstream>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Seeds the xorshift generator through splitmix64, so that small seeds differ.
fn rng(seed: u64) -> Rng {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Rng(if z == 0 { 1 } else { z })
}

impl Downstream {
    fn new(mode: Mode, cap: usize, seed: u64) -> Arc<Downstream> {
        Arc::new(Downstream {
            mode,
            cap: AtomicUsize::new(cap),
            active: AtomicUsize::new(0),
            rng: Mutex::new(rng(seed)),
            burst: None,
            starts: Mutex::default(),
            burst_ends: Mutex::default(),
        })
    }

    /// Base latency with 10% exponential jitter, mean `BASE`.
    fn latency(&self) -> f64 {
        let mut r = self.rng.lock().unwrap();
        let u = (r.next() >> 11) as f64 / (1u64 << 53) as f64;
        let exp = -(1.0 - u).ln();
        BASE * (1.0 - JITTER + JITTER * exp)
    }

    async fn call(self: Arc<Self>) -> Reply {
        let now = Instant::now();
        self.starts.lock().unwrap().push(now);
        let lat = self.latency();
        if let Some((from, to, after)) = self.burst
            && now >= from
            && now < to
        {
            sleep(Duration::from_secs_f64(lat)).await;
            self.burst_ends.lock().unwrap().push(Instant::now());
            return Reply::Busy(Some(after));
        }
        let cap = self.cap.load(Ordering::SeqCst);
        let full = self.active.load(Ordering::SeqCst) >= cap;
        match self.mode {
            Mode::Refuse if full => {
                sleep(REJECT).await;
                return Reply::Busy(None);
            }
            // A hung call holds no capacity; the job's run timeout drops it.
            Mode::Hang if full => std::future::pending::<()>().await,
            _ => {}
        }
        let n = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        let slot = Slot(self.clone());
        let lat = match self.mode {
            Mode::Slow => lat * (n as f64 / cap as f64).max(1.0),
            _ => lat,
        };
        sleep(Duration::from_secs_f64(lat)).await;
        // Free the capacity before the caller hears back (and retries).
        drop(slot);
        Reply::Ok
    }
}

fn classify(r: &Reply) -> Outcome {
    match *r {
        Reply::Ok => Outcome::Success,
        Reply::Busy(retry_after) => Outcome::Overload { retry_after },
    }
}

// ------------------------------------------------------------------ scenario

/// One group of callers, on one key (or none) and its own downstream.
#[derive(Clone, Debug)]
struct Lane {
    key: Option<&'static str>,
    callers: usize,
    mode: Mode,
    /// (from ms, capacity); the first is at 0. Changes must fall on a tick.
    caps: Vec<(u64, usize)>,
}

#[derive(Clone, Debug)]
struct Scenario {
    seed: u64,
    /// The pool's adaptive limit.
    pool: Option<Adaptive>,
    /// Every key's adaptive limit.
    keys: Option<Adaptive>,
    lanes: Vec<Lane>,
    end_ms: u64,
    /// Classify every answer as `Ignore`.
    ignore_all: bool,
    /// Calls arriving in `[from ms, from + len ms)` answer Retry-After.
    burst: Option<(u64, u64, Duration)>,
}

impl Scenario {
    fn single(
        mode: Mode,
        initial: usize,
        callers: usize,
        caps: &[(u64, usize)],
        end_s: u64,
    ) -> Self {
        Scenario {
            seed: SEED,
            pool: Some(Adaptive::aimd().initial(initial)),
            keys: None,
            lanes: vec![Lane {
                key: None,
                callers,
                mode,
                caps: caps.to_vec(),
            }],
            end_ms: end_s * 1000,
            ignore_all: false,
            burst: None,
        }
    }
}

#[derive(Debug, Default, PartialEq)]
struct Run {
    /// `stats().limit` at every tick (`pool_limits[i]` at `i * TICK`).
    pool_limits: Vec<usize>,
    /// `key_stats(key).limit` of each lane's key at every tick.
    key_limits: Vec<Vec<Option<usize>>>,
    /// `paused_until()` at every tick, as an offset from the start.
    paused: Vec<Option<Duration>>,
    /// Every job's end, as seen by its caller.
    ends: Vec<(Duration, End)>,
    /// `stats().limit` at every tick and at the end of every answered call, in
    /// order: a fine record of the limit's changes.
    observed: Vec<(Duration, usize)>,
    /// When each call reached the downstream.
    starts: Vec<Duration>,
    /// When the burst's calls answered.
    burst_ends: Vec<Duration>,
    /// The most jobs running at once, counted inside the jobs.
    max_running: usize,
    /// The most `stats().busy` seen by the sampler.
    max_busy: usize,
}

impl Run {
    fn index(t: f64) -> usize {
        (t / TICK.as_secs_f64()).round() as usize
    }

    /// The time-weighted mean of the pool's limit over `[from, to)` seconds.
    fn mean(&self, from: f64, to: f64) -> f64 {
        mean(&self.pool_limits[Self::index(from)..Self::index(to)])
    }

    /// The time-weighted mean of lane `k`'s key limit over `[from, to)` seconds.
    fn key_mean(&self, k: usize, from: f64, to: f64) -> f64 {
        let s = &self.key_limits[k][Self::index(from)..Self::index(to)];
        let v: Vec<usize> = s
            .iter()
            .map(|l| l.expect("the key has state while its callers run"))
            .collect();
        mean(&v)
    }

    /// Seconds from `from` until the pool's limit first satisfies `ok` (infinite
    /// if it never does).
    fn time_until(&self, from: f64, ok: impl Fn(usize) -> bool) -> f64 {
        let i0 = Self::index(from);
        self.pool_limits[i0..]
            .iter()
            .position(|&l| ok(l))
            .map_or(f64::INFINITY, |i| i as f64 * TICK.as_secs_f64())
    }

    fn count(&self, from: f64, to: f64, what: impl Fn(End) -> bool) -> usize {
        let (from, to) = (Duration::from_secs_f64(from), Duration::from_secs_f64(to));
        self.ends
            .iter()
            .filter(|&&(t, e)| t >= from && t < to && what(e))
            .count()
    }

    fn successes_per_s(&self, from: f64, to: f64) -> f64 {
        self.count(from, to, |e| e == End::Success) as f64 / (to - from)
    }

    fn overload_share(&self, from: f64, to: f64) -> f64 {
        let all = self.count(from, to, |_| true);
        self.count(from, to, |e| e == End::Overload) as f64 / all.max(1) as f64
    }
}

fn mean(v: &[usize]) -> f64 {
    v.iter().sum::<usize>() as f64 / v.len().max(1) as f64
}

/// Decreases in a sequence of limits.
fn decreases(v: impl IntoIterator<Item = usize>) -> usize {
    let v: Vec<usize> = v.into_iter().collect();
    v.windows(2).filter(|w| w[1] < w[0]).count()
}

/// Runs `s` on a pool of `WORKERS` workers, on the current (paused) runtime.
async fn run(s: &Scenario) -> Run {
    let mut b = Pool::builder().workers(WORKERS);
    if let Some(a) = s.pool {
        b = b.adaptive(a);
    }
    if let Some(a) = s.keys {
        b = b.key_limits(KeyLimits::default().adaptive(a));
    }
    let pool = b.build().unwrap();
    let t0 = Instant::now();
    let end = t0 + Duration::from_millis(s.end_ms);
    let ends = Arc::new(Mutex::new(Vec::new()));
    let observed = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));

    let mut downstreams = Vec::new();
    let mut callers = Vec::new();
    for (k, lane) in s.lanes.iter().enumerate() {
        let mut ds = Downstream::new(lane.mode, lane.caps[0].1, s.seed.wrapping_add(k as u64));
        if let Some((from, len, after)) = s.burst {
            let from = t0 + Duration::from_millis(from);
            Arc::get_mut(&mut ds).unwrap().burst =
                Some((from, from + Duration::from_millis(len), after));
        }
        downstreams.push(ds.clone());
        for _ in 0..lane.callers {
            let (pool, ds, ends, observed) =
                (pool.clone(), ds.clone(), ends.clone(), observed.clone());
            let (running, max_running) = (running.clone(), max_running.clone());
            let (key, ignore_all) = (lane.key, s.ignore_all);
            callers.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let (ds, observer) = (ds.clone(), pool.clone());
                    let (observed, running, max_running) =
                        (observed.clone(), running.clone(), max_running.clone());
                    let job = async move {
                        let n = running.fetch_add(1, Ordering::SeqCst) + 1;
                        max_running.fetch_max(n, Ordering::SeqCst);
                        let _running = Decr(running);
                        let r = ds.call().await;
                        // Before this job's own release: the limit after every
                        // release so far.
                        observed
                            .lock()
                            .unwrap()
                            .push((Instant::now() - t0, observer.stats().limit));
                        r
                    };
                    let mut j = pool.job(job).timeout(TIMEOUT);
                    if let Some(k) = key {
                        j = j.key(k);
                    }
                    let r = if ignore_all {
                        j.classify(|_: &Reply| Outcome::Ignore).run().await
                    } else {
                        j.classify(classify).run().await
                    };
                    let e = match r {
                        Ok(Reply::Ok) => End::Success,
                        Ok(Reply::Busy(_)) | Err(JobError::TimedOut) => End::Overload,
                        Err(_) => End::Other,
                    };
                    ends.lock().unwrap().push((Instant::now() - t0, e));
                }
            }));
        }
    }

    let keys: Vec<Option<Key>> = s.lanes.iter().map(|l| l.key.map(Key::from)).collect();
    let mut out = Run {
        key_limits: vec![Vec::new(); s.lanes.len()],
        ..Run::default()
    };
    let ticks = s.end_ms / TICK.as_millis() as u64;
    for i in 0..ticks {
        let now_ms = i * TICK.as_millis() as u64;
        sleep_until(t0 + Duration::from_millis(now_ms)).await;
        for (lane, ds) in s.lanes.iter().zip(&downstreams) {
            for &(from, cap) in &lane.caps {
                if from == now_ms {
                    ds.cap.store(cap, Ordering::SeqCst);
                }
            }
        }
        let st = pool.stats();
        out.pool_limits.push(st.limit);
        out.max_busy = out.max_busy.max(st.busy);
        out.paused
            .push(pool.paused_until().map(|p| p.saturating_duration_since(t0)));
        observed
            .lock()
            .unwrap()
            .push((Instant::now() - t0, st.limit));
        for (k, key) in keys.iter().enumerate() {
            out.key_limits[k].push(key.as_ref().and_then(|key| pool.key_stats(key)?.limit));
        }
    }
    for c in &callers {
        c.abort();
    }
    for c in callers {
        let _ = c.await;
    }
    out.ends = std::mem::take(&mut *ends.lock().unwrap());
    out.observed = std::mem::take(&mut *observed.lock().unwrap());
    for ds in &downstreams {
        let since = |v: &Mutex<Vec<Instant>>| -> Vec<Duration> {
            v.lock().unwrap().iter().map(|&t| t - t0).collect()
        };
        out.starts.extend(since(&ds.starts));
        out.burst_ends.extend(since(&ds.burst_ends));
    }
    out.max_running = max_running.load(Ordering::SeqCst);
    out
}

struct Decr(Arc<AtomicUsize>);

impl Drop for Decr {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A current-thread runtime with paused time, as `#[tokio::test(start_paused = true)]`.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Checks a band, printing the figure either way.
fn check(failures: &mut Vec<String>, what: &str, measured: f64, ok: bool, bound: &str) {
    println!(
        "{what:<55} {measured:>9.3}  {bound:<16} {}",
        if ok { "ok" } else { "FAIL" }
    );
    if !ok {
        failures.push(format!("{what}: measured {measured:.3}, expected {bound}"));
    }
}

fn assert_none(failures: Vec<String>) {
    assert!(failures.is_empty(), "bands failed: {failures:#?}");
}

// ------------------------------------------------------------------ bands

/// Band 1: from initial(1), C = 20: the limit reaches 16 within 4 s.
#[tokio::test(start_paused = true)]
async fn band1_slow_start_reaches_capacity() {
    let mut f = Vec::new();
    for mode in MODES {
        let r = run(&Scenario::single(mode, 1, 100, &[(0, 20)], 6)).await;
        let t = r.time_until(0.0, |l| l >= 16);
        check(
            &mut f,
            &format!("1 ({mode:?}) s to limit >= 16 from 1"),
            t,
            t <= 4.0,
            "<= 4",
        );
        check(
            &mut f,
            &format!("1 ({mode:?}) busy never above workers"),
            r.max_busy as f64,
            r.max_busy <= WORKERS,
            "<= 64",
        );
    }
    assert_none(f);
}

/// Band 2: steady state at C = 20, measured over 20 s after a 5 s warm-up.
#[tokio::test(start_paused = true)]
async fn band2_steady_state() {
    let mut f = Vec::new();
    for mode in MODES {
        let r = run(&Scenario::single(mode, 1, 100, &[(0, 20)], 25)).await;
        let m = r.mean(5.0, 25.0);
        let good = r.successes_per_s(5.0, 25.0);
        let over = r.overload_share(5.0, 25.0);
        if mode == Mode::Slow {
            check(
                &mut f,
                "2 (Slow) mean limit 5..25 s",
                m,
                (14.0..=32.0).contains(&m),
                "in [14, 32]",
            );
            println!("2 (Slow) goodput /s (info)                              {good:>9.3}");
        } else {
            let bound = (14.0..=26.0).contains(&m);
            check(
                &mut f,
                &format!("2 ({mode:?}) mean limit 5..25 s"),
                m,
                bound,
                "in [14, 26]",
            );
            check(
                &mut f,
                &format!("2 ({mode:?}) goodput /s"),
                good,
                good >= 160.0,
                ">= 160",
            );
            check(
                &mut f,
                &format!("2 ({mode:?}) overload share"),
                over,
                over <= 0.10,
                "<= 0.10",
            );
        }
    }
    assert_none(f);
}

/// Band 3: capacity 20 -> 5 at 10 s, 5 -> 20 at 20 s.
#[tokio::test(start_paused = true)]
async fn band3_capacity_steps() {
    let mut f = Vec::new();
    for mode in MODES {
        let caps = [(0, 20), (10_000, 5), (20_000, 20)];
        let r = run(&Scenario::single(mode, 1, 100, &caps, 26)).await;
        let up = r.time_until(20.0, |l| l >= 16);
        if mode == Mode::Refuse {
            let down = r.time_until(10.0, |l| l <= 7);
            check(
                &mut f,
                "3 (Refuse) s to limit <= 7 after C 20->5",
                down,
                down <= 1.5,
                "<= 1.5",
            );
            check(
                &mut f,
                "3 (Refuse) s to limit >= 16 after C 5->20",
                up,
                up <= 3.0,
                "<= 3",
            );
        } else {
            let m = r.mean(10.0, 20.0);
            check(
                &mut f,
                &format!("3 ({mode:?}) mean limit while C=5"),
                m,
                m <= 10.0,
                "<= 10",
            );
            check(
                &mut f,
                &format!("3 ({mode:?}) s to limit >= 16 after C 5->20"),
                up,
                up <= 4.0,
                "<= 4",
            );
        }
    }
    assert_none(f);
}

/// Band 4: no signal, no change: only `Ignore` outcomes; or demand below half
/// the limit.
#[tokio::test(start_paused = true)]
async fn band4_no_signal_no_change() {
    let mut f = Vec::new();
    let changes =
        |r: &Run, initial: usize| r.observed.iter().filter(|&&(_, l)| l != initial).count() as f64;
    for initial in [1, 20] {
        let mut s = Scenario::single(Mode::Refuse, initial, 100, &[(0, 20)], 20);
        s.ignore_all = true;
        let r = run(&s).await;
        let c = changes(&r, initial);
        check(
            &mut f,
            &format!("4 Ignore only, initial {initial}: limits != initial"),
            c,
            c == 0.0,
            "== 0",
        );
        assert!(r.count(0.0, 20.0, |_| true) > 100, "the jobs ran");
    }
    for mode in MODES {
        let r = run(&Scenario::single(mode, 20, 9, &[(0, 40)], 20)).await;
        let c = changes(&r, 20);
        check(
            &mut f,
            &format!("4 ({mode:?}) 9 callers vs limit 20: limits != 20"),
            c,
            c == 0.0,
            "== 0",
        );
    }
    assert_none(f);
}

/// Band 5: a Retry-After of 2 s, with ample capacity: the calls that start in a
/// 50 ms window at 5 s answer `Overload { retry_after: 2 s }`.
#[tokio::test(start_paused = true)]
async fn band5_retry_after_pauses_and_cuts_once() {
    let mut s = Scenario::single(Mode::Refuse, 1, 32, &[(0, 1000)], 12);
    s.burst = Some((5000, 50, Duration::from_secs(2)));
    let r = run(&s).await;
    let mut f = Vec::new();

    let first = *r.burst_ends.iter().min().expect("the burst answered");
    println!("5 burst: {} calls answered Retry-After", r.burst_ends.len());
    assert!(r.burst_ends.len() >= 2, "several jobs report the burst");
    let next = r
        .starts
        .iter()
        .copied()
        .filter(|&t| t > first)
        .min()
        .unwrap_or(Duration::from_secs(12));
    let gap = (next - first).as_secs_f64();
    check(
        &mut f,
        "5 s without a start after Retry-After 2 s",
        gap,
        gap >= 2.0,
        ">= 2",
    );

    let pause = r
        .paused
        .iter()
        .enumerate()
        .filter(|&(i, _)| TICK * i as u32 > first)
        .find_map(|(_, p)| *p)
        .expect("paused_until() is set after the overload");
    let off = pause.as_secs_f64() - (first + Duration::from_secs(2)).as_secs_f64();
    check(
        &mut f,
        "5 paused_until - (first overload + 2 s), s",
        off,
        (0.0..0.050).contains(&off),
        "in [0, 0.05)",
    );

    let d = decreases(r.observed.iter().map(|o| o.1)) as f64;
    check(
        &mut f,
        "5 decreases of the limit (whole run)",
        d,
        d == 1.0,
        "== 1",
    );
    assert_none(f);
}

/// Band 6: the same seed gives the same trace. Each run gets a fresh paused
/// runtime, so that both start from the same clock and timer state.
#[test]
fn band6_same_seed_same_trace() {
    let s = Scenario::single(
        Mode::Hang,
        1,
        100,
        &[(0, 20), (10_000, 5), (20_000, 20)],
        26,
    );
    let go = |s: &Scenario| paused_runtime().block_on(run(s));
    let a = go(&s);
    let b = go(&s);
    let diff = a
        .pool_limits
        .iter()
        .zip(&b.pool_limits)
        .filter(|(x, y)| x != y)
        .count();
    println!(
        "6 same seed: {diff} of {} samples differ",
        a.pool_limits.len()
    );
    assert_eq!(
        a.pool_limits, b.pool_limits,
        "same seed, different limit trace"
    );
    assert_eq!(a.ends, b.ends, "same seed, different job endings");
    let other = go(&Scenario {
        seed: SEED + 1,
        ..s
    });
    let differ = other.pool_limits != a.pool_limits;
    println!("6 another seed gives another trace: {differ}");
    assert!(differ, "the seed drives the downstream");
}

/// Band 7: each key learns its own downstream's capacity.
async fn band7(mode: Mode) {
    let mut f = Vec::new();
    let s = Scenario {
        seed: SEED,
        pool: None,
        keys: Some(Adaptive::aimd()),
        lanes: vec![
            Lane {
                key: Some("a"),
                callers: 32,
                mode,
                caps: vec![(0, 5)],
            },
            Lane {
                key: Some("b"),
                callers: 64,
                mode,
                caps: vec![(0, 40)],
            },
        ],
        end_ms: 25_000,
        ignore_all: false,
        burst: None,
    };
    let r = run(&s).await;
    let hi = if mode == Mode::Refuse { 1.3 } else { 1.6 };
    for (k, c) in [(0, 5.0), (1, 40.0)] {
        let m = r.key_mean(k, 5.0, 25.0);
        let (lo, hi) = (0.7 * c, hi * c);
        check(
            &mut f,
            &format!(
                "7 ({mode:?}) key {} C={c} mean limit 5..25 s",
                ["a", "b"][k]
            ),
            m,
            m >= lo && m <= hi,
            &format!("in [{lo}, {hi}]"),
        );
    }
    check(
        &mut f,
        &format!("7 ({mode:?}) most jobs running at once"),
        r.max_running as f64,
        r.max_running <= WORKERS,
        "<= 64",
    );
    assert!(r.max_busy <= WORKERS);
    // No pool-wide adaptive limit: the pool's limit is its size.
    assert!(r.pool_limits.iter().all(|&l| l == WORKERS));
    assert_none(f);
}

#[tokio::test(start_paused = true)]
async fn band7a_per_key_limits_refuse() {
    band7(Mode::Refuse).await;
}

#[tokio::test(start_paused = true)]
async fn band7b_per_key_limits_hang() {
    band7(Mode::Hang).await;
}

#[tokio::test(start_paused = true)]
async fn band7c_per_key_limits_slow() {
    band7(Mode::Slow).await;
}

// ------------------------------------------------------------------ semantics

/// A job running when the limit is cut below the jobs in flight completes; new
/// jobs wait until the running ones fall below the new limit.
#[tokio::test(start_paused = true)]
async fn shrinking_never_interrupts_running_jobs() {
    let pool = Pool::builder()
        .workers(16)
        .adaptive(Adaptive::aimd().initial(10).decrease(0.5))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let mut long = Vec::new();
    for i in 0..9u32 {
        let p = pool.clone();
        long.push(tokio::spawn(async move {
            p.job(async move {
                sleep(Duration::from_secs(2)).await;
                i
            })
            .run()
            .await
        }));
    }
    sleep(Duration::from_millis(1)).await;
    assert_eq!(pool.stats().busy, 9);
    let busy = pool
        .job(async {
            sleep(Duration::from_millis(10)).await;
            503u16
        })
        .classify(|_: &u16| Outcome::Overload { retry_after: None })
        .run()
        .await;
    assert_eq!(busy, Ok(503));
    let s = pool.stats();
    println!("shrink: limit {} with {} running", s.limit, s.busy);
    assert_eq!(s.limit, 5, "10 x 0.5");
    assert_eq!(s.busy, 9, "the cut interrupts nothing");
    let late = pool.run(async { Instant::now() }).await.unwrap();
    assert!(
        late >= t0 + Duration::from_secs(2),
        "a new job waits for the running ones to fall below the limit: started after {:?}",
        late - t0
    );
    for (i, h) in long.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), Ok(i as u32));
    }
    support::assert_accounted(&pool);
}

/// `Stats::limit` is the pool's size without an adaptive limit, and never above the
/// workers with one (even with `max` above them).
#[tokio::test(start_paused = true)]
async fn stats_limit_is_the_size_or_at_most_the_workers() {
    let plain = Pool::builder().workers(8).build().unwrap();
    assert_eq!(plain.stats().limit, 8);
    plain.resize(12);
    assert_eq!(plain.stats().limit, 12);

    let pool = Pool::builder()
        .workers(8)
        .adaptive(Adaptive::aimd().initial(8).max(1000))
        .build()
        .unwrap();
    let ds = Downstream::new(Mode::Slow, 1000, SEED);
    let mut callers = Vec::new();
    for _ in 0..50 {
        let (pool, ds) = (pool.clone(), ds.clone());
        callers.push(tokio::spawn(async move {
            for _ in 0..20 {
                let r = pool.job(ds.clone().call()).classify(classify).run().await;
                assert_eq!(r, Ok(Reply::Ok));
            }
        }));
    }
    let mut most = 0;
    for _ in 0..300 {
        sleep(TICK).await;
        let s = pool.stats();
        assert!(s.limit <= s.workers && s.limit <= 8, "{s:?}");
        most = most.max(s.limit);
    }
    for c in callers {
        c.await.unwrap();
    }
    println!("limit with workers 8 and max 1000: at most {most}");
    assert_eq!(most, 8);
}

/// `KeyStats::limit`: the cap for a key with only a concurrency cap, `None` with
/// no limit, the lower of the two with both.
#[tokio::test(start_paused = true)]
async fn key_stats_limit() {
    let pool = Pool::builder()
        .workers(8)
        .key_limits(KeyLimits::default().concurrency(3))
        .build()
        .unwrap();
    pool.set_key_limits("free", KeyLimits::default()).unwrap();
    pool.set_key_limits(
        "both",
        KeyLimits::default()
            .concurrency(3)
            .adaptive(Adaptive::aimd().initial(5)),
    )
    .unwrap();
    pool.set_key_limits(
        "adaptive",
        KeyLimits::default().adaptive(Adaptive::aimd().initial(5)),
    )
    .unwrap();
    let mut held = Vec::new();
    for key in ["capped", "free", "both", "adaptive"] {
        let (fut, _) = support::pending_job();
        held.push(pool.job(fut).key(key).submit().await.unwrap());
    }
    support::settle().await;
    let limit = |k: &'static str| pool.key_stats(&Key::from(k)).unwrap().limit;
    assert_eq!(limit("capped"), Some(3));
    assert_eq!(limit("free"), None);
    assert_eq!(limit("both"), Some(3));
    assert_eq!(limit("adaptive"), Some(5));
    drop(held);
}

/// A classifier that panics counts as `Ignore`: the job's result is still `Ok`
/// and the limit does not move, where the same jobs classified `Success` grow it.
#[tokio::test(start_paused = true)]
async fn panicking_classifier_counts_as_ignore() {
    let pool = Pool::builder()
        .workers(8)
        .adaptive(Adaptive::aimd())
        .build()
        .unwrap();
    for _ in 0..10 {
        let r = pool
            .job(async {
                sleep(Duration::from_millis(100)).await;
                7u8
            })
            .classify(|_: &u8| -> Outcome { panic!("classifier bug") })
            .run()
            .await;
        assert_eq!(r, Ok(7));
    }
    let after_panics = pool.stats().limit;
    for _ in 0..10 {
        let r = pool
            .job(async {
                sleep(Duration::from_millis(100)).await;
                7u8
            })
            .classify(|_: &u8| Outcome::Success)
            .run()
            .await;
        assert_eq!(r, Ok(7));
    }
    let after_successes = pool.stats().limit;
    println!(
        "limit after 10 panicking classifiers {after_panics}, after 10 successes {after_successes}"
    );
    assert_eq!(after_panics, 1, "a panicking classifier is Ignore");
    assert!(
        after_successes > 1,
        "the same jobs as Success grow the limit"
    );
    support::assert_accounted(&pool);
}

/// Invalid adaptive settings are refused, at build and by `set_key_limits`.
#[tokio::test(start_paused = true)]
async fn invalid_adaptive_is_refused() {
    let e = Pool::builder()
        .workers(8)
        .adaptive(Adaptive::aimd().decrease(1.0))
        .build()
        .unwrap_err();
    assert_eq!(
        e,
        BuildError::InvalidLimit(LimitError::InvalidAdaptive(
            AdaptiveError::DecreaseOutOfRange
        ))
    );
    let e = Pool::builder()
        .workers(8)
        .key_limits(KeyLimits::default().adaptive(Adaptive::aimd().min(0)))
        .build()
        .unwrap_err();
    assert_eq!(
        e,
        BuildError::InvalidLimit(LimitError::InvalidAdaptive(AdaptiveError::MinZero))
    );
    let pool = Pool::new(8);
    assert_eq!(
        pool.set_key_limits(
            "k",
            KeyLimits::default().adaptive(Adaptive::aimd().decrease(0.3))
        ),
        Err(LimitError::InvalidAdaptive(
            AdaptiveError::DecreaseOutOfRange
        ))
    );
    assert_eq!(
        pool.set_key_limits(
            "k",
            KeyLimits::default().adaptive(Adaptive::aimd().initial(9))
        ),
        Err(LimitError::InvalidAdaptive(
            AdaptiveError::InitialOutOfRange {
                initial: 9,
                min: 1,
                max: 8
            }
        ))
    );
    // Nothing was changed: the key has no limit.
    let (fut, _) = support::pending_job();
    let h = pool.job(fut).key("k").submit().await.unwrap();
    support::settle().await;
    assert_eq!(pool.key_stats(&Key::from("k")).unwrap().limit, None);
    drop(h);
}

/// Changing a key's adaptive settings while its jobs run restarts its learning
/// from the new `initial`; the running jobs complete and nothing is lost.
#[tokio::test(start_paused = true)]
async fn set_key_limits_changes_adaptive_while_running() {
    let pool = Pool::builder()
        .workers(32)
        .key_limits(KeyLimits::default().adaptive(Adaptive::aimd().initial(4)))
        .build()
        .unwrap();
    let ds = Downstream::new(Mode::Refuse, 12, SEED);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(6);
    let ok = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..20 {
        let (pool, ds, ok) = (pool.clone(), ds.clone(), ok.clone());
        callers.push(tokio::spawn(async move {
            while Instant::now() < end {
                let r = pool
                    .job(ds.clone().call())
                    .key("k")
                    .timeout(TIMEOUT)
                    .classify(classify)
                    .run()
                    .await;
                assert!(r.is_ok(), "{r:?}");
                ok.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let k = Key::from("k");
    sleep(Duration::from_secs(3)).await;
    let before = pool.key_stats(&k).unwrap();
    pool.set_key_limits(
        "k",
        KeyLimits::default().adaptive(Adaptive::aimd().initial(2).max(6)),
    )
    .unwrap();
    let right_after = pool.key_stats(&k).unwrap();
    let mut most = 0;
    while Instant::now() < end {
        sleep(TICK).await;
        let l = pool.key_stats(&k).unwrap().limit.unwrap();
        assert!((1..=6).contains(&l), "limit {l} outside the new [1, 6]");
        most = most.max(l);
    }
    for c in callers {
        c.await.unwrap();
    }
    println!(
        "key limit before {:?} (busy {}), right after the change {:?}, then at most {most}; {} jobs ok",
        before.limit,
        before.busy,
        right_after.limit,
        ok.load(Ordering::SeqCst)
    );
    assert!(before.limit.unwrap() > 4, "the first limit had grown");
    assert_eq!(right_after.limit, Some(2), "restarts from the new initial");
    assert!(most > 2, "the new limit learns again");
    support::assert_accounted(&pool);
}
