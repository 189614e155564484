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
//! With `--mode adaptive`, the server's capacity steps during the run (`--steps`,
//! default 64 → 16 → 48, one `--phase-ms` each) and a request above it gets `429`
//! with `Retry-After: --retry-after-ms` (decimal seconds, default `0.1`). Three
//! pools take the same offered load (the loop submits as fast as each pool
//! accepts, for the whole run; a 429 is not retried): a fixed pool of the highest
//! step, a fixed pool of the lowest, and an adaptive pool
//! (`workers(highest).adaptive(Adaptive::aimd())`, each job classified: 429/503 →
//! `Outcome::Overload { retry_after }`). The adaptive pool's `stats().limit` and the
//! server's capacity are sampled every 50 ms; `--chart docs/adaptive.svg` draws them.
//! This mode runs in one process: the server on one runtime, the pools on another.
//!
//! In the other modes each approach runs in a child process of this one, so that
//! its peak RSS is its own. Every approach's clock starts when the loop takes the
//! request (before spawning, acquiring or submitting), and each request's time is
//! split in two: the *wait* for a slot (a spawned task to be polled, a permit, a
//! worker), and the *call* itself, from its start to its response (with retries,
//! the sum of its attempts' calls, and the wait is the rest, pauses included).
//!
//! Run: `cargo run --release --example fanout` (`-- --help` for the flags),
//! `cargo run --release --example fanout -- --mode retry-after` and
//! `cargo run --release --example fanout -- --mode adaptive`.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
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
    /// The pool's queue capacity (default: the pool's default, workers × 10 and at
    /// least 256). The loop runs ahead of the workers by this many requests; 0
    /// makes each submit wait for a free worker, like the semaphore.
    #[arg(long)]
    queue: Option<usize>,
    /// `capacity`: the server limits concurrency only (429 above `capacity`), and
    /// each request is sent once. `retry-after`: the server also limits the request
    /// rate, and the taskgate runs retry 429s, ignoring or honouring Retry-After.
    /// `adaptive`: the server's capacity steps through `--steps`, and fixed pools
    /// are compared with an adaptive one (`--requests` is unused: the run is timed).
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
    /// Adaptive mode: the server's capacity in each phase of the run.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 16, 48])]
    steps: Vec<usize>,
    /// Adaptive mode: how long each phase lasts, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    phase_ms: u64,
    /// Adaptive mode: the server's `Retry-After` on a 429, in milliseconds (sent as
    /// decimal seconds, `0.1` for 100; whole seconds are the only standard form).
    #[arg(long, default_value_t = 100)]
    retry_after_ms: u64,
    /// Adaptive mode: draw the adaptive pool's limit against the server's capacity
    /// into this SVG file (README's is docs/adaptive.svg).
    #[arg(long)]
    chart: Option<std::path::PathBuf>,
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
    Adaptive,
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

/// One request's times: the clock starts when the loop takes it.
#[derive(Clone, Copy)]
struct Sample {
    outcome: Outcome,
    /// From taken to the call's start: the wait for a slot (with retries, all but
    /// the calls: queue waits and pauses).
    wait: Duration,
    /// The call itself, start to response (with retries, the sum of the attempts).
    call: Duration,
}

/// One GET. A 429 or 503 comes with its `Retry-After`, if it had one in seconds
/// (decimal seconds are accepted too: the adaptive mode's server sends `0.1`).
async fn get_once(client: &reqwest::Client, url: &str) -> (Outcome, Option<Duration>) {
    match client.get(url).send().await {
        Ok(r)
            if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                || r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE =>
        {
            let retry_after = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .and_then(|s| Duration::try_from_secs_f64(s).ok());
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
/// the attempts made, the 429s among them, and the time spent in calls.
async fn get_with_retries(
    pool: &taskgate::Pool,
    client: &reqwest::Client,
    url: &str,
    max_attempts: u32,
    honour: bool,
) -> (Outcome, u32, u32, Duration) {
    let mut attempts = 0;
    let mut refused = 0;
    let mut in_calls = Duration::ZERO;
    loop {
        attempts += 1;
        let (client, url) = (client.clone(), url.to_string());
        let ((outcome, retry_after), call) = pool
            .run(async move {
                let started = Instant::now();
                (get_once(&client, &url).await, started.elapsed())
            })
            .await
            .unwrap_or(((Outcome::Error, None), Duration::ZERO));
        in_calls += call;
        if outcome != Outcome::TooMany {
            return (outcome, attempts, refused, in_calls);
        }
        refused += 1;
        if attempts >= max_attempts {
            return (outcome, attempts, refused, in_calls);
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
    // Each request's outcome and times; attempts and 429s over all requests.
    let mut results: Vec<Sample> = Vec::with_capacity(args.requests);
    let (mut attempts, mut refused) = (0u64, 0u64);
    match args.approach {
        Approach::Spawn => {
            let mut handles = Vec::with_capacity(args.requests);
            for _ in 0..args.requests {
                let (client, url, bar) = (client.clone(), url.clone(), bar.clone());
                let taken = Instant::now();
                handles.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let outcome = get(&client, &url).await;
                    bar.inc(1);
                    Sample {
                        outcome,
                        wait: started - taken,
                        call: started.elapsed(),
                    }
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
                let taken = Instant::now();
                let permit = sem.clone().acquire_owned().await.expect("semaphore");
                handles.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let outcome = get(&client, &url).await;
                    drop(permit);
                    bar.inc(1);
                    Sample {
                        outcome,
                        wait: started - taken,
                        call: started.elapsed(),
                    }
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
                let taken = Instant::now();
                let job = async move {
                    let started = Instant::now();
                    let outcome = get(&client, &url).await;
                    bar.inc(1);
                    Sample {
                        outcome,
                        wait: started - taken,
                        call: started.elapsed(),
                    }
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
            // queued (the default queue: workers × 10, at least 256); the pool's
            // queue does the waiting.
            let in_progress = workers + args.queue.unwrap_or((workers * 10).max(256));
            let mut done = futures::stream::iter(0..args.requests)
                .map(|_| {
                    let (pool, client, url, bar) = (&pool, &client, &url, &bar);
                    async move {
                        let taken = Instant::now();
                        let (outcome, a, r, call) =
                            get_with_retries(pool, client, url, args.max_attempts, honour).await;
                        bar.inc(1);
                        let sample = Sample {
                            outcome,
                            wait: taken.elapsed().saturating_sub(call),
                            call,
                        };
                        (sample, a, r)
                    }
                })
                .buffer_unordered(in_progress);
            while let Some((sample, a, r)) = done.next().await {
                attempts += u64::from(a);
                refused += u64::from(r);
                results.push(sample);
            }
            drop(done);
            pool.shutdown().await;
        }
        Approach::All => unreachable!("the parent runs each approach"),
    }
    let wall = start.elapsed();
    bar.finish_and_clear();
    let (mut ok, mut gave_up, mut err) = (0u64, 0u64, 0u64);
    for s in &results {
        match s.outcome {
            Outcome::Ok => ok += 1,
            Outcome::TooMany => gave_up += 1,
            Outcome::Error => err += 1,
        }
    }
    if attempts == 0 {
        // Sent once each: every 429 was a final answer.
        attempts = ok + gave_up + err;
        refused = gave_up;
    }
    println!(
        "RESULT ok={ok} too_many={refused} gave_up={gave_up} attempts={attempts} err={err} wall_us={} {} rss_kib={}",
        wall.as_micros(),
        Times::of(&results).fields(),
        peak_rss_kib()
    );
}

/// Percentiles of the wait, the call and the total (each sorted on its own, so
/// the total's p99 is not the sum of the other two).
struct Times {
    wait: Vec<Duration>,
    call: Vec<Duration>,
    total: Vec<Duration>,
}

impl Times {
    fn of(samples: &[Sample]) -> Times {
        let mut t = Times {
            wait: samples.iter().map(|s| s.wait).collect(),
            call: samples.iter().map(|s| s.call).collect(),
            total: samples.iter().map(|s| s.wait + s.call).collect(),
        };
        t.wait.sort_unstable();
        t.call.sort_unstable();
        t.total.sort_unstable();
        t
    }

    /// `key=value` pairs for a RESULT line, in microseconds.
    fn fields(&self) -> String {
        let us = |v: &[Duration], q: f64| quantile(v, q).as_micros();
        format!(
            "wait_p50_us={} wait_p99_us={} call_p50_us={} call_p99_us={} p50_us={} p99_us={} max_us={}",
            us(&self.wait, 0.5),
            us(&self.wait, 0.99),
            us(&self.call, 0.5),
            us(&self.call, 0.99),
            us(&self.total, 0.5),
            us(&self.total, 0.99),
            self.total.last().copied().unwrap_or_default().as_micros(),
        )
    }

    /// `p50 / p99` of one of them, for a table.
    fn pair(v: &[Duration]) -> String {
        format!(
            "{} / {}",
            fmt_dur(quantile(v, 0.5)),
            fmt_dur(quantile(v, 0.99))
        )
    }
}

/// `p50 / p99` from a RESULT line's `{prefix}p50_us` and `{prefix}p99_us`.
fn pair(fields: &std::collections::HashMap<String, u64>, prefix: &str) -> String {
    let f = |k: &str| Duration::from_micros(fields.get(k).copied().unwrap_or(0));
    format!(
        "{} / {}",
        fmt_dur(f(&format!("{prefix}p50_us"))),
        fmt_dur(f(&format!("{prefix}p99_us")))
    )
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
    if args.mode == Mode::Adaptive {
        run_adaptive(&args, &rt);
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
                Mode::Capacity | Mode::Adaptive => String::new(),
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
            Mode::Capacity | Mode::Adaptive => print_table(&rows),
            Mode::RetryAfter => print_retry_table(&rows),
        }
    });
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<28} {:>7} {:>7} {:>6} {:>9} {:>9} {:>19} {:>19} {:>19} {:>12} {:>10}",
        "approach",
        "ok",
        "429",
        "errors",
        "wall",
        "req/s",
        "wait p50 / p99",
        "call p50 / p99",
        "total p50 / p99",
        "server peak",
        "peak RSS"
    );
    for r in rows {
        let f = |k: &str| r.fields.get(k).copied().unwrap_or(0);
        let wall = Duration::from_micros(f("wall_us"));
        let total = f("ok") + f("too_many") + f("err");
        println!(
            "{:<28} {:>7} {:>7} {:>6} {:>9} {:>9.0} {:>19} {:>19} {:>19} {:>12} {:>10}",
            r.approach.label(),
            f("ok"),
            f("too_many"),
            f("err"),
            fmt_dur(wall),
            total as f64 / wall.as_secs_f64().max(1e-9),
            pair(&r.fields, "wait_"),
            pair(&r.fields, "call_"),
            pair(&r.fields, ""),
            r.server_peak,
            fmt_mib(f("rss_kib")),
        );
    }
    println!(
        "\nEvery clock starts when the loop takes the request (before spawn, acquire or submit). \
         wait: until the call starts (a spawned task's first poll, a permit, a worker); call: the \
         request itself; total: both\n(each percentile is taken on its own). req/s counts every \
         answer, 429s included. The pool's queue lets the loop run ahead of the workers, so its \
         requests wait longer\n(--queue 0 makes it wait like the semaphore); the server never \
         sees more than the limit either way."
    );
}

fn print_retry_table(rows: &[Row]) {
    println!();
    println!(
        "{:<28} {:>7} {:>7} {:>6} {:>8} {:>8} {:>9} {:>9} {:>19} {:>19} {:>19} {:>12} {:>10}",
        "approach",
        "ok",
        "gave up",
        "errors",
        "429s",
        "attempts",
        "wall",
        "ok/s",
        "wait p50 / p99",
        "call p50 / p99",
        "total p50 / p99",
        "server peak",
        "peak RSS"
    );
    for r in rows {
        let f = |k: &str| r.fields.get(k).copied().unwrap_or(0);
        let wall = Duration::from_micros(f("wall_us"));
        println!(
            "{:<28} {:>7} {:>7} {:>6} {:>8} {:>8} {:>9} {:>9.0} {:>19} {:>19} {:>19} {:>12} {:>10}",
            r.approach.label(),
            f("ok"),
            f("gave_up"),
            f("err"),
            f("too_many"),
            f("attempts"),
            fmt_dur(wall),
            f("ok") as f64 / wall.as_secs_f64().max(1e-9),
            pair(&r.fields, "wait_"),
            pair(&r.fields, "call_"),
            pair(&r.fields, ""),
            r.server_peak,
            fmt_mib(f("rss_kib")),
        );
    }
    println!(
        "\n429s: answers 429 over all attempts; gave up: requests still refused after the last \
         attempt; ok/s: successful requests per second of wall time.\nThe clock starts when the \
         loop takes the request; call: the sum of its attempts' calls; wait: the rest (queue \
         waits, pauses); total: to the last attempt's response."
    );
}

// ---- Adaptive mode: a server whose capacity steps, fixed pools against an adaptive one.

/// The stepped server: serves `capacity` requests at once (changed during the run),
/// each taking `service`, and answers `429` with `Retry-After: retry_after` above.
struct Stepped {
    capacity: AtomicUsize,
    in_flight: AtomicUsize,
    service: Duration,
    /// The header's value, in decimal seconds.
    retry_after: String,
}

/// Counts a request out when it ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn stepped_api(State(s): State<Arc<Stepped>>) -> Response {
    let n = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _in_flight = InFlight(&s.in_flight);
    if n > s.capacity.load(Ordering::SeqCst) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, s.retry_after.clone())],
            "slow down",
        )
            .into_response();
    }
    tokio::time::sleep(s.service).await;
    (StatusCode::OK, "ok").into_response()
}

async fn start_stepped_server(state: Arc<Stepped>) -> std::net::SocketAddr {
    let app = axum::Router::new()
        .route("/api", axum::routing::get(stepped_api))
        .with_state(state);
    support::serve_loopback(app).await
}

/// `ms` as decimal seconds, the way the stepped server writes `Retry-After`.
fn decimal_secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        s.trim_end_matches('0').to_string()
    }
}

/// One pool of the adaptive-mode comparison.
#[derive(Clone, Copy)]
struct PoolKind {
    workers: usize,
    adaptive: bool,
}

impl PoolKind {
    fn label(self) -> String {
        if self.adaptive {
            format!("adaptive pool (aimd, max {})", self.workers)
        } else {
            format!("fixed pool of {}", self.workers)
        }
    }
}

/// One sample, every 50 ms: the time since the run's start in seconds, the pool's
/// limit and running jobs, and the server's capacity.
#[derive(Clone, Copy)]
struct Point {
    t: f64,
    limit: usize,
    busy: usize,
    capacity: usize,
}

/// What one pool did: each request's times and when it was answered (since the
/// run's start), the wall time, and the samples.
struct AdaptiveRun {
    kind: PoolKind,
    requests: Vec<(Sample, Duration)>,
    wall: Duration,
    samples: Vec<Point>,
}

async fn run_pool(
    kind: PoolKind,
    args: &Args,
    state: &Arc<Stepped>,
    client: &reqwest::Client,
    url: &str,
) -> AdaptiveRun {
    let phase = Duration::from_millis(args.phase_ms);
    let mut builder = taskgate::Pool::builder()
        .workers(kind.workers)
        .name("fanout");
    if kind.adaptive {
        builder = builder.adaptive(taskgate::Adaptive::aimd());
    }
    if let Some(q) = args.queue {
        builder = builder.queue_capacity(q);
    }
    let pool = builder.build().expect("pool");
    state.capacity.store(args.steps[0], Ordering::SeqCst);
    let start = Instant::now();
    let stepper = {
        let (state, steps) = (state.clone(), args.steps.clone());
        tokio::spawn(async move {
            for (i, &c) in steps.iter().enumerate().skip(1) {
                let at = start + phase * i as u32;
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                state.capacity.store(c, Ordering::SeqCst);
            }
        })
    };
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = {
        let (pool, state, samples) = (pool.clone(), state.clone(), samples.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = pool.stats();
                let capacity = state.capacity.load(Ordering::SeqCst);
                let t = start.elapsed().as_secs_f64();
                samples.lock().expect("samples").push(Point {
                    t,
                    limit: s.limit,
                    busy: s.busy,
                    capacity,
                });
            }
        })
    };
    // The offered load: as many requests as the pool accepts, until the last
    // phase ends. A 429 is not retried; the adaptive pool pauses on its
    // Retry-After by itself.
    let deadline = start + phase * args.steps.len() as u32;
    let mut handles = Vec::new();
    while Instant::now() < deadline {
        let (client, url) = (client.clone(), url.to_string());
        let taken = Instant::now();
        let job = async move {
            let started = Instant::now();
            let (outcome, retry_after) = get_once(&client, &url).await;
            let sample = Sample {
                outcome,
                wait: started - taken,
                call: started.elapsed(),
            };
            (sample, retry_after, taken - start)
        };
        let handle = pool
            .job(job)
            .classify(|(s, retry_after, _)| match s.outcome {
                Outcome::TooMany => taskgate::Outcome::Overload {
                    retry_after: *retry_after,
                },
                Outcome::Ok => taskgate::Outcome::Success,
                Outcome::Error => taskgate::Outcome::Ignore,
            })
            .submit()
            .await
            .expect("pool is open");
        handles.push(handle);
    }
    let mut requests = Vec::with_capacity(handles.len());
    for h in handles {
        let (sample, _, taken_at) = h.await.expect("job");
        requests.push((sample, taken_at + sample.wait + sample.call));
    }
    let wall = start.elapsed();
    sampler.abort();
    stepper.abort();
    pool.shutdown().await;
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    AdaptiveRun {
        kind,
        requests,
        wall,
        samples,
    }
}

fn run_adaptive(args: &Args, server_rt: &tokio::runtime::Runtime) {
    assert!(
        !args.steps.is_empty() && args.steps.iter().all(|&c| c > 0),
        "--steps needs at least one capacity, each above 0"
    );
    let (hi, lo) = (
        *args.steps.iter().max().expect("steps"),
        *args.steps.iter().min().expect("steps"),
    );
    let state = Arc::new(Stepped {
        capacity: AtomicUsize::new(args.steps[0]),
        in_flight: AtomicUsize::new(0),
        service: Duration::from_millis(args.service_ms),
        retry_after: decimal_secs(args.retry_after_ms),
    });
    // The server on its own runtime (as the other modes have it in another process).
    let addr = server_rt.block_on(start_stepped_server(state.clone()));
    let steps: Vec<String> = args.steps.iter().map(|c| c.to_string()).collect();
    println!(
        "server on http://{addr}/api: capacity {} concurrent ({} ms each phase), {} ms per request, \
         429 + Retry-After: {} above that",
        steps.join(" -> "),
        args.phase_ms,
        args.service_ms,
        state.retry_after
    );
    println!(
        "each pool is offered requests as fast as it accepts them for {} ms; 429s are not retried\n",
        args.phase_ms * args.steps.len() as u64
    );
    let kinds = [
        PoolKind {
            workers: hi,
            adaptive: false,
        },
        PoolKind {
            workers: lo,
            adaptive: false,
        },
        PoolKind {
            workers: hi,
            adaptive: true,
        },
    ];
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let runs: Vec<AdaptiveRun> = client_rt.block_on(async {
        let url = format!("http://{addr}/api");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("reqwest client");
        let mut runs = Vec::new();
        for kind in kinds {
            while state.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let run = run_pool(kind, args, &state, &client, &url).await;
            println!("{:<30} done", kind.label());
            runs.push(run);
        }
        runs
    });
    print_adaptive_tables(args, &runs);
    if let Some(path) = &args.chart {
        let adaptive = runs.iter().find(|r| r.kind.adaptive).expect("adaptive run");
        match draw_adaptive(args, adaptive, path) {
            Ok(()) => println!("\nwrote {}", path.display()),
            Err(e) => eprintln!("\ncould not draw {}: {e}", path.display()),
        }
    } else {
        println!(
            "\n(--chart docs/adaptive.svg draws the adaptive pool's limit against the capacity)"
        );
    }
}

/// The phase a time falls in (answers after the last phase count in it).
fn phase_of(args: &Args, at: Duration) -> usize {
    let i = at.as_millis() / u128::from(args.phase_ms.max(1));
    (i as usize).min(args.steps.len() - 1)
}

fn print_adaptive_tables(args: &Args, runs: &[AdaptiveRun]) {
    println!();
    println!(
        "{:<30} {:>7} {:>7} {:>6} {:>8} {:>8} {:>19} {:>19} {:>19}",
        "approach",
        "ok",
        "429",
        "errors",
        "wall",
        "ok/s",
        "wait p50 / p99",
        "call p50 / p99",
        "total p50 / p99"
    );
    for r in runs {
        let count = |o: Outcome| r.requests.iter().filter(|(s, _)| s.outcome == o).count();
        let samples: Vec<Sample> = r.requests.iter().map(|(s, _)| *s).collect();
        let t = Times::of(&samples);
        println!(
            "{:<30} {:>7} {:>7} {:>6} {:>8} {:>8.0} {:>19} {:>19} {:>19}",
            r.kind.label(),
            count(Outcome::Ok),
            count(Outcome::TooMany),
            count(Outcome::Error),
            fmt_dur(r.wall),
            count(Outcome::Ok) as f64 / r.wall.as_secs_f64().max(1e-9),
            Times::pair(&t.wait),
            Times::pair(&t.call),
            Times::pair(&t.total),
        );
    }
    // Per phase: successes per second and 429s, by when the answer came, and the
    // adaptive limit over the phase's second half (median, and its range).
    println!();
    print!("{:<30}", "per phase: ok/s, 429s");
    for (i, c) in args.steps.iter().enumerate() {
        print!(" {:>22}", format!("{}: capacity {c}", i + 1));
    }
    println!();
    let phase_secs = args.phase_ms as f64 / 1000.0;
    for r in runs {
        print!("{:<30}", r.kind.label());
        for i in 0..args.steps.len() {
            let (mut ok, mut refused) = (0u64, 0u64);
            for (s, at) in &r.requests {
                if phase_of(args, *at) == i {
                    match s.outcome {
                        Outcome::Ok => ok += 1,
                        Outcome::TooMany => refused += 1,
                        Outcome::Error => {}
                    }
                }
            }
            print!(
                " {:>22}",
                format!("{:.0}, {refused}", ok as f64 / phase_secs)
            );
        }
        println!();
    }
    if let Some(r) = runs.iter().find(|r| r.kind.adaptive) {
        print!("{:<30}", "adaptive limit, 2nd half");
        for i in 0..args.steps.len() {
            let from = phase_secs * (i as f64 + 0.5);
            let to = phase_secs * (i as f64 + 1.0);
            let mut v: Vec<usize> = r
                .samples
                .iter()
                .filter(|p| p.t >= from && p.t < to)
                .map(|p| p.limit)
                .collect();
            v.sort_unstable();
            let cell = match (v.first(), v.get(v.len() / 2), v.last()) {
                (Some(lo), Some(mid), Some(hi)) => format!("{mid} ({lo}–{hi})"),
                _ => "-".to_string(),
            };
            print!(" {cell:>22}");
        }
        println!();
    }
    println!(
        "\nEvery clock starts when the loop takes the request; wait: until a worker starts it; \
         call: the request itself; total: both (each percentile on its own).\n\
         Times and ok/s count every answer, 429s included; a phase's ok/s and 429s count the \
         answers that came in it."
    );
}

fn draw_adaptive(
    args: &Args,
    run: &AdaptiveRun,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let root = SVGBackend::new(out, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = run
        .samples
        .last()
        .map_or(1.0, |p| p.t)
        .max(args.phase_ms as f64 * args.steps.len() as f64 / 1000.0);
    let y_max = (run.kind.workers as f64 * 1.2).ceil();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "taskgate adaptive limit (aimd, max {}) against the server's capacity; \
                 {} ms per request, Retry-After {} s",
                run.kind.workers,
                args.service_ms,
                decimal_secs(args.retry_after_ms)
            ),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the run started (a sample every 50 ms)")
        .y_desc("concurrent requests")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    type Series = (&'static str, RGBColor, u32, fn(&Point) -> usize);
    let series: [Series; 3] = [
        ("server capacity", RED, 3, |p| p.capacity),
        ("adaptive limit (Stats::limit)", BLUE, 2, |p| p.limit),
        (
            "running jobs (Stats::busy)",
            RGBColor(150, 150, 150),
            1,
            |p| p.busy,
        ),
    ];
    for (name, color, width, pick) in series {
        let points: Vec<(f64, f64)> = run.samples.iter().map(|p| (p.t, pick(p) as f64)).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(width)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 18, y)], color.stroke_width(width))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}
