//! Why taskgate's GCRA is hand-written: `governor` measured against what the
//! scheduler needs from a rate limit. Three experiments (the fourth, the cost of
//! one check, is `cargo bench --bench gcra`):
//!
//! 1. **Two limits, one start.** A job must pass its key's rate and the pool's
//!    rate, and should take from each only when it passes both. governor's `check()`
//!    and `check_key()` take a cell whenever they say yes, so chaining them
//!    (`key.check_key(k).is_ok() && pool.check().is_ok()`) spends a cell of the
//!    first limiter each time the second refuses. A 60 s simulation (on tokio's
//!    paused clock, 1 ms ticks) counts the starts and the lost cells of each way,
//!    against taskgate's check-then-take (a copy of `src/limit/rate.rs`), and a governor
//!    state store written to make a peek possible.
//! 2. **The clock.** Whether governor can follow tokio's paused clock (taskgate's
//!    tests run on it), and at what cost in code.
//! 3. **Memory for many keys.** Live heap bytes (a counting allocator) after
//!    1 000 000 distinct keys pass through governor's keyed limiter, before and after
//!    `retain_recent` and `shrink_to_fit`, and through a taskgate pool with and
//!    without a key rate.
//!
//! Run: `cargo run --release --example governor_gcra` (about 10 s).

use std::alloc::{GlobalAlloc, Layout, System};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use governor::clock::{Clock, ReasonablyRealtime};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use taskgate::{Key, KeyLimits, Rate};
use tokio::time::Instant;

// ---- a counting allocator: live and peak heap bytes ----

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n as i64, Relaxed) + n as i64;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: forwards to the system allocator unchanged, and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        grew(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Relaxed)
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

// ---- taskgate's GCRA (a copy, since it is crate-private) ----

#[path = "support/gcra.rs"]
mod gcra;
use gcra::Gcra;

/// The governor quota equal to a taskgate `Rate` (governor's `Quota::per_second(n)`
/// would also allow a burst of `n`; taskgate's default burst is 1).
fn quota(rate: Rate) -> Quota {
    Quota::with_period(rate.interval())
        .expect("non-zero interval")
        .allow_burst(NonZeroU32::new(rate.burst_size()).expect("non-zero burst"))
}

// ---- experiment 2's answer, used by experiment 1: governor on tokio's clock ----

/// A governor clock that reads tokio's clock, so that it follows
/// `tokio::time::pause` and `advance`. This is all it takes.
#[derive(Clone, Copy, Debug, Default)]
struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;
    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

impl ReasonablyRealtime for TokioClock {}

// ---- a governor state store that can be asked without taking ----

/// A direct state store whose `check()` computes the new state but keeps it
/// pending: `commit()` applies it. With it, a caller can ask two limiters and take
/// from both only when both allow. The caller keeps a clone to commit through,
/// since a `RateLimiter` does not lend out its store. (Not for concurrent use: the
/// checks and the commits would need one lock around them, as taskgate's
/// scheduler has.)
#[derive(Clone, Default)]
struct Peekable(Arc<PeekState>);

#[derive(Default)]
struct PeekState {
    tat: AtomicU64,
    pending: AtomicU64,
}

impl StateStore for Peekable {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let prev = NonZeroU64::new(self.0.tat.load(Relaxed)).map(|n| Nanos::from(n.get()));
        let (out, next) = f(prev)?;
        self.0.pending.store(next.into(), Relaxed);
        Ok(out)
    }
}

type PeekLimiter = RateLimiter<NotKeyed, Peekable, TokioClock, NoOpMiddleware<std::time::Instant>>;

impl Peekable {
    fn limiter(rate: Rate) -> (Peekable, PeekLimiter) {
        let store = Peekable::default();
        (
            store.clone(),
            RateLimiter::new(quota(rate), store, TokioClock),
        )
    }

    fn commit(&self) {
        self.0.tat.store(self.0.pending.load(Relaxed), Relaxed);
    }
}

// ---- experiment 1: two limits, one start ----

const SIM_KEYS: usize = 4;
const SIM_SECS: u64 = 60;
const TICK: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug)]
enum Way {
    /// taskgate: check the pool and the key, take from both only if both pass.
    HandWritten,
    /// governor: `key.check_key(k).is_ok() && pool.check().is_ok()`.
    GovernorKeyFirst,
    /// governor: `pool.check().is_ok() && key.check_key(k).is_ok()`.
    GovernorPoolFirst,
    /// governor with the `Peekable` store: check both, then commit both.
    GovernorPeek,
}

#[derive(Default)]
struct SimResult {
    starts: u64,
    /// Cells taken from a limiter for a job that did not start.
    lost: u64,
}

/// Every key always has work queued. Each 1 ms tick, the scheduler offers a start
/// to every key in turn (starting one key further each tick); a key starts a job
/// if the way under test lets it through both limits.
async fn simulate(way: Way, key_rate: Rate, pool_rate: Rate) -> SimResult {
    let keys: Vec<Key> = (0..SIM_KEYS).map(|i| Key::from(format!("k{i}"))).collect();
    let mut r = SimResult::default();
    // Hand-written state.
    let mut pool_g = Gcra::new(pool_rate);
    let mut key_g = [Gcra::new(key_rate); SIM_KEYS];
    // governor state.
    let pool_gov = RateLimiter::direct_with_clock(quota(pool_rate), TokioClock);
    let key_gov = RateLimiter::dashmap_with_clock(quota(key_rate), TokioClock);
    let pool_peek = Peekable::limiter(pool_rate);
    let key_peek: Vec<_> = (0..SIM_KEYS).map(|_| Peekable::limiter(key_rate)).collect();

    let ticks = SIM_SECS * 1000;
    for tick in 0..ticks {
        for j in 0..SIM_KEYS {
            let k = (tick as usize + j) % SIM_KEYS;
            let started = match way {
                Way::HandWritten => {
                    let now = Instant::now();
                    let ok = pool_g.check(now).is_none() && key_g[k].check(now).is_none();
                    if ok {
                        pool_g.take(now);
                        key_g[k].take(now);
                    }
                    ok
                }
                Way::GovernorKeyFirst => {
                    let key_ok = key_gov.check_key(&keys[k]).is_ok();
                    let ok = key_ok && pool_gov.check().is_ok();
                    r.lost += u64::from(key_ok && !ok);
                    ok
                }
                Way::GovernorPoolFirst => {
                    let pool_ok = pool_gov.check().is_ok();
                    let ok = pool_ok && key_gov.check_key(&keys[k]).is_ok();
                    r.lost += u64::from(pool_ok && !ok);
                    ok
                }
                Way::GovernorPeek => {
                    let ok = pool_peek.1.check().is_ok() && key_peek[k].1.check().is_ok();
                    if ok {
                        pool_peek.0.commit();
                        key_peek[k].0.commit();
                    }
                    ok
                }
            };
            r.starts += u64::from(started);
        }
        tokio::time::advance(TICK).await;
    }
    r
}

fn experiment_1(rt: &tokio::runtime::Runtime) {
    println!(
        "1. Two limits, one start: {SIM_KEYS} keys with work always queued, {SIM_SECS} s on tokio's paused clock, 1 ms ticks"
    );
    for (key_rate, pool_rate) in [
        (Rate::per_second(5), Rate::per_second(10)),
        (Rate::per_second(10), Rate::per_second(10)),
        (
            Rate::per_second(10).burst(5),
            Rate::per_second(20).burst(10),
        ),
    ] {
        let ideal = (u64::from(pool_rate.count()) * SIM_SECS)
            .min(SIM_KEYS as u64 * u64::from(key_rate.count()) * SIM_SECS);
        println!(
            "\n   key rate {}/s burst {}, pool rate {}/s burst {}: at most about {ideal} starts",
            key_rate.count(),
            key_rate.burst_size(),
            pool_rate.count(),
            pool_rate.burst_size()
        );
        println!("   {:<44} {:>7} {:>11}", "way", "starts", "lost cells");
        for way in [
            Way::HandWritten,
            Way::GovernorKeyFirst,
            Way::GovernorPoolFirst,
            Way::GovernorPeek,
        ] {
            let r = rt.block_on(simulate(way, key_rate, pool_rate));
            let name = match way {
                Way::HandWritten => "taskgate: check both, then take both",
                Way::GovernorKeyFirst => "governor: check_key(k) && pool.check()",
                Way::GovernorPoolFirst => "governor: pool.check() && check_key(k)",
                Way::GovernorPeek => "governor + Peekable store: check, commit",
            };
            println!("   {name:<44} {:>7} {:>11}", r.starts, r.lost);
        }
    }
}

// ---- experiment 2: the clock ----

fn experiment_2(paused: &tokio::runtime::Runtime) {
    println!(
        "\n2. The clock: a 1 per second limit, used once, then tokio::time::advance(1 s) on a paused runtime"
    );
    paused.block_on(async {
        let q = quota(Rate::per_second(1));
        let default = RateLimiter::direct(q);
        let tokio_clock = RateLimiter::direct_with_clock(q, TokioClock);
        let mut hand = Gcra::new(Rate::per_second(1));
        let t0 = Instant::now();
        assert!(default.check().is_ok() && tokio_clock.check().is_ok());
        hand.take(t0);
        tokio::time::advance(Duration::from_secs(1)).await;
        let yes_no = |b: bool| if b { "allowed" } else { "refused" };
        println!(
            "   governor, default clock (quanta):  {}",
            yes_no(default.check().is_ok())
        );
        println!(
            "   governor, TokioClock (7 lines):    {}",
            yes_no(tokio_clock.check().is_ok())
        );
        println!(
            "   taskgate's Gcra (tokio Instant):   {}",
            yes_no(hand.check(Instant::now()).is_none())
        );
        // governor's own waiting (`until_ready`) sleeps on futures-timer's thread, in
        // real time, whatever the clock: the paused runtime, idle, jumps its clock
        // to the next tokio timer instead.
        let wall = std::time::Instant::now();
        let waited =
            tokio::time::timeout(Duration::from_secs(10), tokio_clock.until_ready()).await;
        println!(
            "   governor until_ready() under tokio::time::timeout(10 s): {} after {:?} of tokio time, {:?} of real time",
            if waited.is_ok() { "ready" } else { "timed out" },
            Instant::now() - t0 - Duration::from_secs(1),
            wall.elapsed()
        );
    });
}

// ---- experiment 3: memory for many keys ----

const MANY: usize = 1_000_000;

fn experiment_3() {
    println!(
        "\n3. Memory for {MANY} distinct keys, each used once (live heap bytes, counting allocator)"
    );
    // governor's keyed limiter (DashMap), 10 per second per key.
    {
        let base = live();
        let lim = RateLimiter::keyed(quota(Rate::per_second(10)));
        for i in 0..MANY {
            let _ = lim.check_key(&Key::from(format!("key-{i}")));
        }
        let after = live() - base;
        println!(
            "   governor keyed, after the keys:            {:>10} ({} keys held, {:.0} B/key)",
            mib(after),
            lim.len(),
            after as f64 / MANY as f64
        );
        // Long enough for every key to be back to fresh (two intervals).
        std::thread::sleep(Duration::from_millis(300));
        println!(
            "   governor keyed, 300 ms later, untouched:   {:>10} ({} keys held)",
            mib(live() - base),
            lim.len()
        );
        lim.retain_recent();
        println!(
            "   governor keyed, after retain_recent():     {:>10} ({} keys held)",
            mib(live() - base),
            lim.len()
        );
        lim.shrink_to_fit();
        println!(
            "   governor keyed, after shrink_to_fit():     {:>10} ({} keys held)",
            mib(live() - base),
            lim.len()
        );
    }
    // taskgate: the same keys through a pool, without and with a key rate.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for limits in [
        KeyLimits::default(),
        KeyLimits::default().rate(Rate::per_second(10)),
    ] {
        let label = if limits.rate.is_some() {
            "taskgate, key rate 10/s"
        } else {
            "taskgate, no key limits"
        };
        rt.block_on(async {
            let base = live();
            PEAK.store(base, Relaxed);
            let pool = taskgate::Pool::builder()
                .workers(64)
                .key_limits(limits)
                .build()
                .expect("pool");
            let mut peak_keys = 0;
            for i in 0..MANY {
                let job = pool.job(async {}).key(format!("key-{i}"));
                job.spawn().await.expect("open");
                if i % 4096 == 0 {
                    peak_keys = peak_keys.max(pool.stats().keys);
                }
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while (pool.stats().completed < MANY as u64 || pool.stats().keys > 0)
                && std::time::Instant::now() < deadline
            {
                peak_keys = peak_keys.max(pool.stats().keys);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let s = pool.stats();
            let peak = PEAK.load(Relaxed) - base;
            println!("   {label}:");
            println!(
                "     peak while running:    {:>10} (most keys with state seen: {peak_keys})",
                mib(peak)
            );
            println!(
                "     after, pool still up:  {:>10} ({} keys with state)",
                mib(live() - base),
                s.keys
            );
            pool.shutdown().await;
        });
    }
}

fn main() {
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    experiment_1(&paused);
    experiment_2(&paused);
    experiment_3();
}
