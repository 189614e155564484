//! Per-check cost of a GCRA rate limit: `governor` against a copy of taskgate's
//! hand-written GCRA (`src/rate.rs` as of commit 03c1678, now `src/limit/rate.rs`;
//! crate-private, so copied below unchanged but for visibility), in one criterion
//! group. Run: `cargo bench --bench gcra`.
//!
//! Rows:
//! - `*_allow`: a rate that never refuses (one start per nanosecond, read the clock
//!   each time), so every call takes the conforming path and updates the state.
//! - `*_deny`: a rate that refuses after its first start (1 per hour), so every
//!   call takes the refusing path.
//! - `taskgate_gcra_*`: `check(now)` then `take(now)` on the copy, with `now` from
//!   `tokio::time::Instant::now()` as the scheduler reads it; `_no_clock` rows pass a
//!   precomputed `now` to show the arithmetic alone.
//! - `governor_*`: `RateLimiter::direct(quota).check()`, with governor's default
//!   clock (quanta) and with its `MonotonicClock` (std `Instant`, what tokio's clock
//!   reads); governor's state is an `AtomicU64` updated by compare-and-swap, since
//!   its limiters are shared between threads. taskgate's `Gcra` lives under the pool
//!   lock that the scheduler already holds, so it needs no atomics.
//! - `*_keyed_1024`: one rate per key, cycling through 1 024 keys: governor's keyed
//!   limiter (`DashMap`) against a `HashMap<Key, Gcra>` with the copy (taskgate keeps
//!   a key's `Gcra` in its lane, found through a `HashMap<Key, u32>`).

use std::collections::HashMap;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use governor::clock::MonotonicClock;
use governor::{Quota, RateLimiter};
use taskgate::{Key, Rate};
use tokio::time::Instant;

#[path = "../examples/support/gcra.rs"]
mod gcra;
use gcra::Gcra;

/// Check, and take if it conforms: one admission decision.
#[inline]
fn admit(g: &mut Gcra, now: Instant) -> bool {
    match g.check(now) {
        None => {
            g.take(now);
            true
        }
        Some(_) => false,
    }
}

/// Never refuses: one start per nanosecond, burst 1 (as `Rate::per_second(u32::MAX)`).
const OPEN: Rate = Rate::per_second(u32::MAX);
/// Refuses after the first start for an hour.
const SHUT: Rate = Rate::new(1, Duration::from_secs(3600));

/// The governor quota equal to a taskgate `Rate`: one cell per `interval()`,
/// with the same burst. (Governor's `Quota::per_second(n)` would also allow a
/// burst of `n`.)
fn quota(rate: Rate) -> Quota {
    Quota::with_period(rate.interval())
        .expect("non-zero interval")
        .allow_burst(NonZeroU32::new(rate.burst_size()).expect("non-zero burst"))
}

const KEYS: usize = 1024;

fn gcra(c: &mut Criterion) {
    let mut g = c.benchmark_group("gcra/check");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));

    // Refusals seen by the rows that should never refuse, printed at the end.
    let mut refused: Vec<(&str, u64)> = Vec::new();

    // taskgate's copy, allowing.
    let mut open = Gcra::new(OPEN);
    let mut no = 0;
    g.bench_function("taskgate_gcra_allow", |b| {
        b.iter(|| {
            let ok = admit(&mut open, Instant::now());
            no += u64::from(!ok);
            black_box(ok)
        })
    });
    refused.push(("taskgate_gcra_allow", no));
    let mut open = Gcra::new(OPEN);
    let mut now = Instant::now();
    g.bench_function("taskgate_gcra_allow_no_clock", |b| {
        b.iter(|| {
            now += Duration::from_nanos(2);
            black_box(admit(&mut open, black_box(now)))
        })
    });
    // taskgate's copy, refusing.
    let mut shut = Gcra::new(SHUT);
    assert!(admit(&mut shut, Instant::now()));
    g.bench_function("taskgate_gcra_deny", |b| {
        b.iter(|| black_box(admit(&mut shut, Instant::now())))
    });
    let now = Instant::now();
    g.bench_function("taskgate_gcra_deny_no_clock", |b| {
        b.iter(|| black_box(admit(&mut shut, black_box(now))))
    });

    // governor, allowing and refusing, with its default clock (quanta).
    let open = RateLimiter::direct(quota(OPEN));
    let mut no = 0;
    g.bench_function("governor_allow", |b| {
        b.iter(|| {
            let ok = open.check().is_ok();
            no += u64::from(!ok);
            black_box(ok)
        })
    });
    refused.push(("governor_allow", no));
    let shut = RateLimiter::direct(quota(SHUT));
    assert!(shut.check().is_ok());
    g.bench_function("governor_deny", |b| {
        b.iter(|| black_box(shut.check().is_ok()))
    });
    // governor with std's monotonic clock, the clock tokio's `Instant` reads.
    let open = RateLimiter::direct_with_clock(quota(OPEN), MonotonicClock);
    let mut no = 0;
    g.bench_function("governor_allow_std_clock", |b| {
        b.iter(|| {
            let ok = open.check().is_ok();
            no += u64::from(!ok);
            black_box(ok)
        })
    });
    refused.push(("governor_allow_std_clock", no));
    let shut = RateLimiter::direct_with_clock(quota(SHUT), MonotonicClock);
    assert!(shut.check().is_ok());
    g.bench_function("governor_deny_std_clock", |b| {
        b.iter(|| black_box(shut.check().is_ok()))
    });

    // One rate per key, 1 024 keys, allowing.
    let keys: Vec<Key> = (0..KEYS).map(|i| Key::from(format!("key-{i}"))).collect();
    let mut map: HashMap<Key, Gcra> = keys.iter().map(|k| (k.clone(), Gcra::new(OPEN))).collect();
    let mut i = 0;
    let mut no = 0;
    g.bench_function("taskgate_gcra_keyed_1024", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let g = map.get_mut(&keys[i]).expect("key present");
            let ok = admit(g, Instant::now());
            no += u64::from(!ok);
            black_box(ok)
        })
    });
    refused.push(("taskgate_gcra_keyed_1024", no));
    let keyed = RateLimiter::keyed(quota(OPEN));
    for k in &keys {
        assert!(keyed.check_key(k).is_ok());
    }
    let mut i = 0;
    let mut no = 0;
    g.bench_function("governor_keyed_1024", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let ok = keyed.check_key(&keys[i]).is_ok();
            no += u64::from(!ok);
            black_box(ok)
        })
    });
    refused.push(("governor_keyed_1024", no));
    g.finish();
    for (row, n) in refused {
        println!("refusals in {row} (should be 0): {n}");
    }
}

criterion_group!(benches, gcra);
criterion_main!(benches);
