//! How close a pool's start rate comes to its `Rate`.
//!
//! For each rate, queues two seconds' worth of no-op jobs on a 64-worker pool with
//! `Builder::rate_limit(rate)`, lets it run for one second, and counts the jobs
//! started. GCRA allows at most `burst + n × t` starts in a window of `t` from the
//! first submit; the table shows how many the pool made, and the starts per second
//! after the burst as a share of the rate.
//!
//! Run: `cargo run --release --example rate_accuracy` (about 10 s).

use std::time::Duration;

use taskgate::Rate;
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() {
    println!(
        "{:>8} {:>6} {:>9} {:>9} {:>11} {:>9}",
        "rate/s", "burst", "allowed", "started", "started/s", "of rate"
    );
    for (n, burst) in [
        (10, 1),
        (100, 1),
        (200, 1),
        (1_000, 1),
        (1_000, 2),
        (5_000, 1),
        (5_000, 5),
        (5_000, 50),
        (20_000, 1),
        (20_000, 200),
    ] {
        let rate = Rate::per_second(n).burst(burst);
        let jobs = 2 * n as usize + burst as usize;
        let pool = taskgate::Pool::builder()
            .workers(64)
            .queue_capacity(jobs)
            .rate_limit(rate)
            .build()
            .expect("pool");
        let t0 = Instant::now();
        for _ in 0..jobs {
            pool.try_submit(async {}).expect("room for all").detach();
        }
        tokio::time::sleep_until(t0 + WINDOW).await;
        let started = pool.stats().completed;
        let t = t0.elapsed().as_secs_f64();
        pool.abort();
        let allowed = u64::from(burst) + (f64::from(n) * t) as u64;
        let per_sec = started.saturating_sub(u64::from(burst)) as f64 / t;
        println!(
            "{n:>8} {burst:>6} {allowed:>9} {started:>9} {per_sec:>11.0} {:>8.0}%",
            100.0 * per_sec / f64::from(n)
        );
    }
}
