//! What a limit shared through Redis costs one process: how much of a
//! `SharedRate` it delivers and how many round trips per start, and how many round
//! trips a `SharedConcurrency` costs per job. Against a `redis-server` it starts
//! on loopback (or `REDIS_URL`).
//!
//! ```sh
//! cargo run --release --example shared_cost --features redis
//! cargo run --release --example shared_cost --features redis -- --seconds 1   # short
//! ```
//!
//! Figures: BENCHMARKS.md, "Shared limits (issue 15)".

#[path = "../tests/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::time::{Duration, Instant};

use clap::Parser;
use taskgate::redis::{RedisLimits, SharedConcurrency, SharedRate};
use taskgate::{Pool, Rate};

#[derive(Parser)]
struct Args {
    /// Seconds per rate run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// The shared rate, per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// Jobs per concurrency run.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let _server;
    let url = match std::env::var("REDIS_URL") {
        Ok(url) => url,
        Err(_) => match redis_server::RedisServer::start() {
            Some(s) => {
                let url = s.url();
                _server = s;
                url
            }
            None => return Ok(()),
        },
    };
    let redis = RedisLimits::connect(&url)
        .await?
        .prefix(format!("taskgate-cost-{}", std::process::id()));
    let secs = Duration::from_secs_f64(args.seconds);
    let r = args.rate;

    println!(
        "SharedRate, one process, saturated, {:.1} s each:",
        args.seconds
    );
    println!("| rate | burst | lease | delivered | of the rate | starts per round trip |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for burst in [1, r / 1000, r / 100] {
        let burst = burst.max(1);
        let shared = redis.rate(format!("rate-{burst}"), Rate::per_second(r).burst(burst));
        let (delivered, per_trip) = saturate_rate(shared.clone(), secs).await?;
        println!(
            "| {r}/s | {burst} | {} | {delivered:.0}/s | {:.1} % | {per_trip:.1} |",
            shared.effective_lease(),
            100.0 * delivered / f64::from(r),
        );
    }

    println!();
    println!("SharedConcurrency, one process, {} jobs each:", args.jobs);
    println!(
        "| limit | job | jobs/s | round trips per 1 000 jobs | without the shared limit, jobs/s |"
    );
    println!("|---:|---|---:|---:|---:|");
    for (limit, job_ms) in [(64, 0u64), (64, 1), (8, 1)] {
        let shared = redis.concurrency(format!("conc-{limit}-{job_ms}"), limit);
        let (rate, trips) = run_concurrency(Some(shared), limit, job_ms, args.jobs).await?;
        let (plain, _) = run_concurrency(None, limit, job_ms, args.jobs).await?;
        let job = if job_ms == 0 {
            "no-op".to_owned()
        } else {
            format!("{job_ms} ms sleep")
        };
        println!(
            "| {limit} | {job} | {rate:.0} | {:.1} | {plain:.0} |",
            trips * 1000.0
        );
    }

    // One job at a time, 3 ms apart: longer than a used slot is kept idle
    // (1 ms), shorter than a freshly granted one is (20 ms), so some jobs take a
    // slot from Redis and give it back, and others find one still at hand.
    let shared = redis.concurrency("conc-idle", 8);
    let pool = Pool::builder()
        .workers(8)
        .shared_concurrency(shared.clone())
        .build()?;
    let n = 200;
    let mut runs = Vec::with_capacity(n);
    let mut pings = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        pool.run(async {}).await?;
        runs.push(t.elapsed());
        let t = Instant::now();
        redis.ping().await?;
        pings.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    runs.sort();
    pings.sort();
    let trips = shared.stats().round_trips as f64 / n as f64;
    println!();
    println!(
        "SharedConcurrency, one job at a time, 3 ms apart ({n} jobs): {trips:.2} round trips per job \
         (acquires and releases; a used slot is kept 1 ms, a fresh one 20 ms); a job takes {:?} (median; \
         a PING takes {:?})",
        runs[n / 2],
        pings[n / 2]
    );
    Ok(())
}

/// Keeps a 64-worker pool under `shared` saturated for `secs`; returns the
/// starts per second after the first fifth, and starts per round trip.
async fn saturate_rate(
    shared: SharedRate,
    secs: Duration,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let pool = Pool::builder()
        .workers(64)
        .shared_rate(shared.clone())
        .build()?;
    let before = shared.stats();
    let start = Instant::now();
    let warm = secs / 5;
    let mut handles = std::collections::VecDeque::new();
    let mut started_after_warm = 0u64;
    let mut warm_at = None;
    while start.elapsed() < secs {
        // `submit` waits while the queue is full: the pool stays saturated.
        handles.push_back(pool.submit(async { Instant::now() }).await?);
        while handles.front().is_some_and(|h| h.is_finished()) {
            let at = handles.pop_front().expect("front").await?;
            if at.duration_since(start) >= warm {
                warm_at.get_or_insert(at);
                started_after_warm += 1;
            }
        }
    }
    let end = Instant::now();
    pool.abort();
    let after = shared.stats();
    let window = end.duration_since(warm_at.unwrap_or(end)).as_secs_f64();
    let granted = after.granted - before.granted;
    let trips = (after.round_trips - before.round_trips).max(1);
    Ok((
        started_after_warm as f64 / window.max(1e-9),
        granted as f64 / trips as f64,
    ))
}

/// Runs `jobs` jobs through a pool of `limit` workers, under `shared` if given;
/// returns jobs per second and round trips per job.
async fn run_concurrency(
    shared: Option<SharedConcurrency>,
    limit: usize,
    job_ms: u64,
    jobs: usize,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let mut builder = Pool::builder().workers(limit);
    if let Some(s) = &shared {
        builder = builder.shared_concurrency(s.clone());
    }
    let pool = builder.build()?;
    let before = shared.as_ref().map(|s| s.stats().round_trips).unwrap_or(0);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        handles.push(
            pool.submit(async move {
                if job_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(job_ms)).await;
                }
            })
            .await?,
        );
    }
    for h in handles {
        h.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    pool.shutdown().await;
    let trips = shared.as_ref().map(|s| s.stats().round_trips).unwrap_or(0) - before;
    Ok((jobs as f64 / elapsed, trips as f64 / jobs as f64))
}
