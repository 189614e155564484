//! How close a pool's start rate comes to its `Rate`, next to `governor` measured
//! in the same run.
//!
//! For n = 10, 100, 1 000, 5 000 and 20 000 per second, each with a burst of 1 and
//! with the default burst of the fan-out demo (n / 100, at least 1; a row whose
//! two bursts are the same is printed once), over a window of `--secs` seconds
//! (default 5) of real time:
//!
//! - **taskgate**: a 64-worker pool with `Builder::rate_limit(Rate::per_second(n)
//!   .burst(b))` and more no-op jobs queued than the window can start (all
//!   submitted at the window's start, faster than any of these rates); each job
//!   counts its start in an `AtomicU64`, read at the window's end.
//! - **governor**: `RateLimiter::direct(Quota::per_second(n).allow_burst(b))`, and
//!   a loop of `until_ready().await` that counts a no-op start after each, for the
//!   same window.
//!
//! Each column is the starts in the window ÷ (n × window): 1.000 is the rate
//! exactly. A fresh limiter may start `b` at once and then one per `1/n`, so the
//! most GCRA allows is `b + n × window` (b / (n × window) above 1). Below 1 is
//! rate lost to the timer: a start that waits for a limiter is woken by a timer,
//! which fires late (tokio rounds sleeps up to its 1 ms tick and the timer thread
//! parks in whole milliseconds; governor sleeps on futures-timer's thread).
//!
//! Run: `cargo run --release --example rate_accuracy -- --secs 3` (about 2 × 8
//! windows: 50 s at `--secs 3`, 80 s at the default 5).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use governor::{Quota, RateLimiter};
use taskgate::Rate;
use tokio::time::Instant;

const RATES: [u32; 5] = [10, 100, 1_000, 5_000, 20_000];

/// `--secs N` (default 5); exits with a usage line on anything else.
fn window() -> Duration {
    let usage = || -> ! {
        eprintln!("usage: rate_accuracy [--secs N]  (N: whole seconds, at least 1; default 5)");
        std::process::exit(2)
    };
    let mut secs = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = match a.as_str() {
            "--secs" => args.next().unwrap_or_else(|| usage()),
            _ => match a.strip_prefix("--secs=") {
                Some(v) => v.to_string(),
                None => usage(),
            },
        };
        secs = value
            .parse()
            .ok()
            .filter(|&s| s >= 1)
            .unwrap_or_else(|| usage());
    }
    Duration::from_secs(secs)
}

/// Starts a taskgate pool makes in `window` with `rate` and a backlog.
async fn taskgate_starts(rate: Rate, window: Duration) -> u64 {
    let most =
        u64::from(rate.burst_size()) + (f64::from(rate.count()) * window.as_secs_f64()) as u64;
    // Well ahead: a tenth more than the window can start, and then some.
    let jobs = (most + most / 10 + 100) as usize;
    let pool = taskgate::Pool::builder()
        .workers(64)
        .queue_capacity(jobs)
        .rate_limit(rate)
        .build()
        .expect("pool");
    let started = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    for _ in 0..jobs {
        let started = started.clone();
        pool.try_submit(async move {
            started.fetch_add(1, Relaxed);
        })
        .expect("room for every job")
        .detach();
    }
    tokio::time::sleep_until(t0 + window).await;
    let n = started.load(Relaxed);
    pool.abort();
    n
}

/// Starts governor lets through in `window`: `until_ready` in a loop, each
/// followed by a no-op start (a count).
async fn governor_starts(rate: Rate, window: Duration) -> u64 {
    let nz = |v: u32| NonZeroU32::new(v).expect("non-zero");
    let limiter =
        RateLimiter::direct(Quota::per_second(nz(rate.count())).allow_burst(nz(rate.burst_size())));
    let started = AtomicU64::new(0);
    let t0 = Instant::now();
    let _ = tokio::time::timeout_at(t0 + window, async {
        loop {
            limiter.until_ready().await;
            started.fetch_add(1, Relaxed);
        }
    })
    .await;
    started.load(Relaxed)
}

#[tokio::main]
async fn main() {
    let window = window();
    println!(
        "starts in {:?} ÷ (n × {:?}); a fresh limiter may exceed 1 by burst ÷ (n × {:?})\n",
        window, window, window
    );
    println!("| n per s | burst | taskgate started ÷ n | governor started ÷ n |");
    println!("|--------:|------:|---------------------:|---------------------:|");
    for n in RATES {
        let default_burst = (n / 100).max(1);
        let mut bursts = vec![1];
        if default_burst != 1 {
            bursts.push(default_burst);
        }
        for burst in bursts {
            let rate = Rate::per_second(n).burst(burst);
            let ours = taskgate_starts(rate, window).await;
            let theirs = governor_starts(rate, window).await;
            let asked = f64::from(n) * window.as_secs_f64();
            println!(
                "| {:>7} | {burst:>5} | {:>20} | {:>20} |",
                group(u64::from(n)),
                format!("{:.3} ({})", ours as f64 / asked, group(ours)),
                format!("{:.3} ({})", theirs as f64 / asked, group(theirs)),
            );
        }
    }
    println!("\n(in brackets: the starts counted in the window)");
}

/// `20000` as `20 000`.
fn group(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}
