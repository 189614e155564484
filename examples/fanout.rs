//! The fan-out demo: R requests to a rate-limited HTTP API, three ways.
//!
//! Starts an HTTP server on 127.0.0.1 (in this process) that serves `capacity`
//! requests at a time, each taking `service-ms`, and answers `429 Too Many Requests`
//! with `Retry-After` above that, like a real rate-limited API. Then fans out
//! `requests` GETs with one shared reqwest client:
//!
//! - `spawn`: one unbounded `tokio::spawn` per request;
//! - `semaphore`: `Semaphore::acquire_owned` before each `tokio::spawn`, `workers` permits;
//! - `taskgate`: a pool of `workers` workers (`pool.submit`), with
//!   `Builder::rate_limit` if `--rate` is given.
//!
//! With `--mode retry-after`, the server also enforces a request rate
//! (`--server-rate` per second, bursts of `--server-burst`) and answers requests
//! beyond it with `429` and `Retry-After` (whole seconds). Each request is retried
//! after a 429, at most `--max-attempts` times in all, three ways, all on a
//! taskgate pool of `workers`:
//!
//! - `taskgate-retry-now`: ignores `Retry-After` and resubmits at once;
//! - `taskgate-pause`: calls `pool.pause_for(retry_after)` and resubmits, so no job
//!   starts until the server said to come back;
//! - `taskgate-rate`: `Builder::rate_limit(--rate, default the server's rate)`, and
//!   `pause_for` on a 429 too.
//!
//! Each approach runs in a child process of this one, so that its peak RSS is its
//! own. A request's latency is measured from the moment the loop asks for it (before
//! spawning, acquiring or submitting) until its response arrives (its last
//! attempt's, with retries).
//!
//! Run: `cargo run --release --example fanout` (`-- --help` for the flags), and
//! `cargo run --release --example fanout -- --mode retry-after`.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use support::{ServerRate, fmt_dur, fmt_mib, peak_rss_kib, quantile, start_limited_server};
use taskgate::Rate;

/// The longest `Retry-After` the demo honours, so that a run stays bounded in time.
const MAX_PAUSE: Duration = Duration::from_secs(10);

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Fan out HTTP requests to a rate-limited API: unbounded spawn vs Semaphore vs taskgate"
)]
struct Args {
    /// How many requests to send.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// How many requests the server serves at once before it answers 429.
    #[arg(long, default_value_t = 64)]
    capacity: usize,
    /// The limit for the semaphore and the pool (default: the server's capacity).
    #[arg(long)]
    workers: Option<usize>,
    /// The server's service time per request, in milliseconds.
    #[arg(long, default_value_t = 5)]
    service_ms: u64,
    /// The pool's queue capacity (default: the pool's default, workers × 10). The
    /// loop runs ahead of the workers by this many requests; 0 makes each submit
    /// wait for a free worker, like the semaphore.
    #[arg(long)]
    queue: Option<usize>,
    /// `capacity`: the server limits concurrency only (429 above `capacity`), and
    /// each request is sent once. `retry-after`: the server also limits the request
    /// rate, and the taskgate runs retry 429s, ignoring or honouring Retry-After.
    #[arg(long, value_enum, default_value_t = Mode::Capacity)]
    mode: Mode,
    /// A pool-wide limit on job starts per second for the taskgate pool
    /// (`Builder::rate_limit`). In retry-after mode, the `taskgate-rate` run uses it
    /// (default: the server's rate).
    #[arg(long)]
    rate: Option<u32>,
    /// The burst for `--rate` (default: a hundredth of the rate, at least 1). Any
    /// burst reaches the rate; a server that enforces the same rate with no burst
    /// refuses starts that come up to 2 ms early (see `Rate` and
    /// examples/rate_accuracy.rs), which a burst of 10 ms of the rate absorbs.
    #[arg(long)]
    burst: Option<u32>,
    /// Retry-after mode: the server's rate limit, requests per second.
    #[arg(long, default_value_t = 5_000)]
    server_rate: u32,
    /// Retry-after mode: the server's burst (default: one second's worth, the rate).
    #[arg(long)]
    server_burst: Option<u32>,
    /// Retry-after mode: attempts per request, the first included; a request still
    /// refused after that many is given up.
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
    /// Which approach to run.
    #[arg(long, value_enum, default_value_t = Approach::All)]
    approach: Approach,
    /// Internal: run one approach against the server at this address and print a
    /// result line (the parent process does this for each approach).
    #[arg(long, hide = true)]
    child: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Capacity,
    RetryAfter,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Approach {
    All,
    Spawn,
    Semaphore,
    Taskgate,
    TaskgateRetryNow,
    TaskgatePause,
    TaskgateRate,
}

impl Approach {
    fn name(self) -> &'static str {
        match self {
            Approach::All => "all",
            Approach::Spawn => "spawn",
            Approach::Semaphore => "semaphore",
            Approach::Taskgate => "taskgate",
            Approach::TaskgateRetryNow => "taskgate-retry-now",
            Approach::TaskgatePause => "taskgate-pause",
            Approach::TaskgateRate => "taskgate-rate",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Approach::All => "all",
            Approach::Spawn => "(a) unbounded tokio::spawn",
            Approach::Semaphore => "(b) Semaphore + spawn",
            Approach::Taskgate => "(c) taskgate pool",
            Approach::TaskgateRetryNow => "(d) taskgate, retry at once",
            Approach::TaskgatePause => "(e) taskgate + pause_for",
            Approach::TaskgateRate => "(f) taskgate + rate + pause",
        }
    }
}

/// How one request ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    TooMany,
    Error,
}

/// One GET. A 429 comes with its `Retry-After`, if it had one in seconds.
async fn get_once(client: &reqwest::Client, url: &str) -> (Outcome, Option<Duration>) {
    match client.get(url).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
            let retry_after = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let _ = r.bytes().await;
            (Outcome::TooMany, retry_after)
        }
        Ok(r) if r.status().is_success() => match r.bytes().await {
            Ok(_) => (Outcome::Ok, None),
            Err(_) => (Outcome::Error, None),
        },
        _ => (Outcome::Error, None),
    }
}

async fn get(client: &reqwest::Client, url: &str) -> Outcome {
    get_once(client, url).await.0
}

/// The pool-wide rate for the taskgate runs, if any: `--rate`, or in retry-after
/// mode the server's rate for the `taskgate-rate` run.
fn pool_rate(args: &Args) -> Option<Rate> {
    let n = match (args.approach, args.rate) {
        (Approach::TaskgateRate, r) => r.unwrap_or(args.server_rate),
        (Approach::Taskgate, Some(r)) => r,
        _ => return None,
    };
    let burst = args.burst.unwrap_or((n / 100).max(1));
    Some(Rate::per_second(n).burst(burst))
}

/// One request with retries on 429, at most `max_attempts` attempts, each attempt
/// a job on the pool. With `honour`, a 429's `Retry-After` pauses the pool's starts
/// (`pause_for`) before the retry is submitted. Returns how the last attempt ended,
/// the attempts made and the 429s among them.
async fn get_with_retries(
    pool: &taskgate::Pool,
    client: &reqwest::Client,
    url: &str,
    max_attempts: u32,
    honour: bool,
) -> (Outcome, u32, u32) {
    let mut attempts = 0;
    let mut refused = 0;
    loop {
        attempts += 1;
        let (client, url) = (client.clone(), url.to_string());
        let (outcome, retry_after) = pool
            .run(async move { get_once(&client, &url).await })
            .await
            .unwrap_or((Outcome::Error, None));
        if outcome != Outcome::TooMany {
            return (outcome, attempts, refused);
        }
        refused += 1;
        if attempts >= max_attempts {
            return (outcome, attempts, refused);
        }
        if honour {
            pool.pause_for(retry_after.unwrap_or(Duration::from_secs(1)).min(MAX_PAUSE));
        }
    }
}

/// One approach, in the child process. Prints `RESULT key=value ...` on stdout.
async fn child(args: &Args, addr: &str) {
    let url = format!("http://{addr}/api");
    let workers = args.workers.unwrap_or(args.capacity);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client");
    let bar = ProgressBar::new(args.requests as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{:<28} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}}",
            args.approach.label()
        ))
        .expect("template")
        .progress_chars("=> "),
    );
    let start = Instant::now();
    // (how the request ended, its latency); attempts and 429s over all requests.
    let mut results: Vec<(Outcome, Duration)> = Vec::with_capacity(args.requests);
    let (mut attempts, mut refused) = (0u64, 0u64);
    match args.approach {
        Approach::Spawn => {
            let mut handles = Vec::with_capacity(args.requests);
            for _ in 0..args.requests {
                let (client, url, bar) = (client.clone(), url.clone(), bar.clone());
                let asked = Instant::now();
                handles.push(tokio::spawn(async move {
                    let o = get(&client, &url).await;
                    bar.inc(1);
                    (o, asked.elapsed())
                }));
            }
            for h in handles {
                results.push(h.await.expect("request task"));
            }
        }
        Approach::Semaphore => {
            let sem = Arc::new(tokio::sync::Semaphore::new(workers));
            let mut handles = Vec::with_capacity(args.requests);
            for _ in 0..args.requests {
                let (client, url, bar) = (client.clone(), url.clone(), bar.clone());
                let asked = Instant::now();
                let permit = sem.clone().acquire_owned().await.expect("semaphore");
                handles.push(tokio::spawn(async move {
                    let o = get(&client, &url).await;
                    drop(permit);
                    bar.inc(1);
                    (o, asked.elapsed())
                }));
            }
            for h in handles {
                results.push(h.await.expect("request task"));
            }
        }
        Approach::Taskgate => {
            let mut builder = taskgate::Pool::builder().workers(workers).name("fanout");
            if let Some(q) = args.queue {
                builder = builder.queue_capacity(q);
            }
            if let Some(rate) = pool_rate(args) {
                builder = builder.rate_limit(rate);
            }
            let pool = builder.build().expect("pool");
            let mut handles = Vec::with_capacity(args.requests);
            for _ in 0..args.requests {
                let (client, url, bar) = (client.clone(), url.clone(), bar.clone());
                let asked = Instant::now();
                let job = async move {
                    let o = get(&client, &url).await;
                    bar.inc(1);
                    (o, asked.elapsed())
                };
                handles.push(pool.submit(job).await.expect("pool is open"));
            }
            for h in handles {
                results.push(h.await.expect("job"));
            }
            pool.shutdown().await;
        }
        Approach::TaskgateRetryNow | Approach::TaskgatePause | Approach::TaskgateRate => {
            let honour = args.approach != Approach::TaskgateRetryNow;
            let mut builder = taskgate::Pool::builder().workers(workers).name("fanout");
            if let Some(q) = args.queue {
                builder = builder.queue_capacity(q);
            }
            if let Some(rate) = pool_rate(args) {
                builder = builder.rate_limit(rate);
            }
            let pool = builder.build().expect("pool");
            // Requests in progress at once: as many as the pool holds, running and
            // queued; the pool's queue does the waiting.
            let in_progress = workers + args.queue.unwrap_or(workers * 10);
            let mut done = futures::stream::iter(0..args.requests)
                .map(|_| {
                    let (pool, client, url, bar) = (&pool, &client, &url, &bar);
                    async move {
                        let asked = Instant::now();
                        let r =
                            get_with_retries(pool, client, url, args.max_attempts, honour).await;
                        bar.inc(1);
                        (r, asked.elapsed())
                    }
                })
                .buffer_unordered(in_progress);
            while let Some(((o, a, r), d)) = done.next().await {
                attempts += u64::from(a);
                refused += u64::from(r);
                results.push((o, d));
            }
            drop(done);
            pool.shutdown().await;
        }
        Approach::All => unreachable!("the parent runs each approach"),
    }
    let wall = start.elapsed();
    bar.finish_and_clear();
    let (mut ok, mut gave_up, mut err) = (0u64, 0u64, 0u64);
    let mut lat: Vec<Duration> = Vec::with_capacity(results.len());
    for (o, d) in results {
        match o {
            Outcome::Ok => ok += 1,
            Outcome::TooMany => gave_up += 1,
            Outcome::Error => err += 1,
        }
        lat.push(d);
    }
    if attempts == 0 {
        // Sent once each: every 429 was a final answer.
        attempts = ok + gave_up + err;
        refused = gave_up;
    }
    lat.sort_unstable();
    println!(
        "RESULT ok={ok} too_many={refused} gave_up={gave_up} attempts={attempts} err={err} wall_us={} p50_us={} p99_us={} max_us={} rss_kib={}",
        wall.as_micros(),
        quantile(&lat, 0.50).as_micros(),
        quantile(&lat, 0.99).as_micros(),
        lat.last().copied().unwrap_or_default().as_micros(),
        peak_rss_kib()
    );
}

struct Row {
    approach: Approach,
    fields: std::collections::HashMap<String, u64>,
    server_peak: usize,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(addr) = args.child.clone() {
        rt.block_on(child(&args, &addr));
        return;
    }

    let workers = args.workers.unwrap_or(args.capacity);
    let server_rate = (args.mode == Mode::RetryAfter).then(|| ServerRate {
        per_second: args.server_rate,
        burst: args.server_burst.unwrap_or(args.server_rate),
    });
    rt.block_on(async {
        let (addr, server) = start_limited_server(
            args.capacity,
            Duration::from_millis(args.service_ms),
            server_rate,
        )
        .await;
        println!(
            "server on http://{addr}/api: capacity {} concurrent, {} ms per request, 429 + Retry-After above that",
            args.capacity, args.service_ms
        );
        if let Some(r) = server_rate {
            println!(
                "  and at most {} requests per second (bursts of {}), 429 + Retry-After (whole seconds) above that",
                r.per_second, r.burst
            );
        }
        let approaches = match (args.mode, args.approach) {
            (Mode::Capacity, Approach::All) => {
                vec![Approach::Spawn, Approach::Semaphore, Approach::Taskgate]
            }
            (Mode::RetryAfter, Approach::All) => vec![
                Approach::TaskgateRetryNow,
                Approach::TaskgatePause,
                Approach::TaskgateRate,
            ],
            (_, one) => vec![one],
        };
        println!(
            "fanning out {} requests; limit for the semaphore and the pools: {workers}{}\n",
            args.requests,
            match args.mode {
                Mode::Capacity => String::new(),
                Mode::RetryAfter => format!("; at most {} attempts per request", args.max_attempts),
            }
        );
        for &a in &approaches {
            let one = Args {
                approach: a,
                ..args.clone()
            };
            if let Some(r) = pool_rate(&one) {
                println!(
                    "{}: pool rate_limit {}/s, burst {}",
                    a.label(),
                    r.count(),
                    r.burst_size()
                );
            }
        }
        let exe = std::env::current_exe().expect("current exe");
        let mut rows = Vec::new();
        for approach in approaches {
            server.reset();
            let out = tokio::process::Command::from(
                {
                    let mut c = Command::new(&exe);
                    c.args([
                        "--approach",
                        approach.name(),
                        "--child",
                        &addr.to_string(),
                        "--requests",
                        &args.requests.to_string(),
                        "--capacity",
                        &args.capacity.to_string(),
                        "--workers",
                        &workers.to_string(),
                        "--service-ms",
                        &args.service_ms.to_string(),
                        "--max-attempts",
                        &args.max_attempts.to_string(),
                        "--server-rate",
                        &args.server_rate.to_string(),
                    ])
                    .args(args.queue.map(|q| format!("--queue={q}")))
                    .args(args.rate.map(|r| format!("--rate={r}")))
                    .args(args.burst.map(|b| format!("--burst={b}")))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit());
                    c
                },
            )
            .output()
            .await
            .expect("run the child");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout
                .lines()
                .find(|l| l.starts_with("RESULT "))
                .unwrap_or_else(|| panic!("{} run failed: {}", approach.name(), out.status));
            let fields = line
                .split_whitespace()
                .skip(1)
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
                .collect();
            println!("{:<28} done", approach.label());
            rows.push(Row {
                approach,
                fields,
                server_peak: server.peak(),
            });
        }
        match args.mode {
            Mode::Capacity => print_table(&rows),
            Mode::RetryAfter => print_retry_table(&rows),
        }
    });
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<28} {:>7} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>10}",
        "approach",
        "ok",
        "429",
        "errors",
        "wall",
        "req/s",
        "p50",
        "p99",
        "max",
        "server peak",
        "peak RSS"
    );
    for r in rows {
        let f = |k: &str| r.fields.get(k).copied().unwrap_or(0);
        let wall = Duration::from_micros(f("wall_us"));
        let total = f("ok") + f("too_many") + f("err");
        println!(
            "{:<28} {:>7} {:>7} {:>6} {:>9} {:>9.0} {:>9} {:>9} {:>9} {:>12} {:>10}",
            r.approach.label(),
            f("ok"),
            f("too_many"),
            f("err"),
            fmt_dur(wall),
            total as f64 / wall.as_secs_f64().max(1e-9),
            fmt_dur(Duration::from_micros(f("p50_us"))),
            fmt_dur(Duration::from_micros(f("p99_us"))),
            fmt_dur(Duration::from_micros(f("max_us"))),
            r.server_peak,
            fmt_mib(f("rss_kib")),
        );
    }
    println!(
        "\nlatency: from the moment the loop asks for a request to its response; req/s counts \
         every answer, 429s included.\nThe pool's queue lets the loop run ahead of the workers, \
         so its requests wait longer after being asked (--queue 0 makes it wait like the semaphore); \
         the server never sees more than the limit either way."
    );
}

fn print_retry_table(rows: &[Row]) {
    println!();
    println!(
        "{:<28} {:>7} {:>7} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>10}",
        "approach",
        "ok",
        "gave up",
        "errors",
        "429s",
        "attempts",
        "wall",
        "ok/s",
        "p50",
        "p99",
        "max",
        "server peak",
        "peak RSS"
    );
    for r in rows {
        let f = |k: &str| r.fields.get(k).copied().unwrap_or(0);
        let wall = Duration::from_micros(f("wall_us"));
        println!(
            "{:<28} {:>7} {:>7} {:>6} {:>8} {:>8} {:>9} {:>9.0} {:>9} {:>9} {:>9} {:>12} {:>10}",
            r.approach.label(),
            f("ok"),
            f("gave_up"),
            f("err"),
            f("too_many"),
            f("attempts"),
            fmt_dur(wall),
            f("ok") as f64 / wall.as_secs_f64().max(1e-9),
            fmt_dur(Duration::from_micros(f("p50_us"))),
            fmt_dur(Duration::from_micros(f("p99_us"))),
            fmt_dur(Duration::from_micros(f("max_us"))),
            r.server_peak,
            fmt_mib(f("rss_kib")),
        );
    }
    println!(
        "\n429s: answers 429 over all attempts; gave up: requests still refused after the last \
         attempt; ok/s: successful requests per second of wall time.\nlatency: from the moment \
         the loop asks for a request to its last attempt's response."
    );
}
