//! The fan-out demo: R requests to a rate-limited HTTP API, three ways.
//!
//! Starts an HTTP server on 127.0.0.1 (in this process) that serves `capacity`
//! requests at a time, each taking `service-ms`, and answers `429 Too Many Requests`
//! with `Retry-After` above that, like a real rate-limited API. Then fans out
//! `requests` GETs with one shared reqwest client:
//!
//! - `spawn`: one unbounded `tokio::spawn` per request;
//! - `semaphore`: `Semaphore::acquire_owned` before each `tokio::spawn`, `workers` permits;
//! - `taskgate`: a pool of `workers` workers (`pool.submit`).
//!
//! Each approach runs in a child process of this one, so that its peak RSS is its
//! own. A request's latency is measured from the moment the loop asks for it (before
//! spawning, acquiring or submitting) until its response arrives.
//!
//! Run: `cargo run --release --example fanout` (`-- --help` for the flags).

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use support::{fmt_dur, fmt_mib, peak_rss_kib, quantile, start_server};

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
    /// Which approach to run.
    #[arg(long, value_enum, default_value_t = Approach::All)]
    approach: Approach,
    /// Internal: run one approach against the server at this address and print a
    /// result line (the parent process does this for each approach).
    #[arg(long, hide = true)]
    child: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Approach {
    All,
    Spawn,
    Semaphore,
    Taskgate,
}

impl Approach {
    fn name(self) -> &'static str {
        match self {
            Approach::All => "all",
            Approach::Spawn => "spawn",
            Approach::Semaphore => "semaphore",
            Approach::Taskgate => "taskgate",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Approach::All => "all",
            Approach::Spawn => "(a) unbounded tokio::spawn",
            Approach::Semaphore => "(b) Semaphore + spawn",
            Approach::Taskgate => "(c) taskgate pool",
        }
    }
}

/// How one request ended.
#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    TooMany,
    Error,
}

async fn get(client: &reqwest::Client, url: &str) -> Outcome {
    match client.get(url).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
            let _ = r.bytes().await;
            Outcome::TooMany
        }
        Ok(r) if r.status().is_success() => match r.bytes().await {
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Error,
        },
        _ => Outcome::Error,
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
    let mut results: Vec<(Outcome, Duration)> = Vec::with_capacity(args.requests);
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
        Approach::All => unreachable!("the parent runs each approach"),
    }
    let wall = start.elapsed();
    bar.finish_and_clear();
    let (mut ok, mut too_many, mut err) = (0u64, 0u64, 0u64);
    let mut lat: Vec<Duration> = Vec::with_capacity(results.len());
    for (o, d) in results {
        match o {
            Outcome::Ok => ok += 1,
            Outcome::TooMany => too_many += 1,
            Outcome::Error => err += 1,
        }
        lat.push(d);
    }
    lat.sort_unstable();
    println!(
        "RESULT ok={ok} too_many={too_many} err={err} wall_us={} p50_us={} p99_us={} max_us={} rss_kib={}",
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
    rt.block_on(async {
        let (addr, server) =
            start_server(args.capacity, Duration::from_millis(args.service_ms)).await;
        println!(
            "server on http://{addr}/api: capacity {} concurrent, {} ms per request, 429 + Retry-After above that",
            args.capacity, args.service_ms
        );
        println!(
            "fanning out {} requests; limit for (b) and (c): {workers}\n",
            args.requests
        );
        let approaches = match args.approach {
            Approach::All => vec![Approach::Spawn, Approach::Semaphore, Approach::Taskgate],
            one => vec![one],
        };
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
                    ])
                    .args(args.queue.map(|q| format!("--queue={q}")))
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
        print_table(&rows);
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
