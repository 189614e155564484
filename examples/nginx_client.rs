//! A client for a real rate limiter: sends `--requests` GETs to `--url` through a
//! taskgate pool with `Builder::rate_limit(Rate::per_second(--rate).burst(--burst))`
//! and counts the answers: `200`, `429` (the server's rate limit refused it), other
//! statuses, and transport errors.
//!
//! Made for `examples/nginx/run.sh`, which starts nginx with `limit_req` at the
//! same rate and burst and runs this against it: every `429` is a start the server
//! saw as faster than the rate. Prints one markdown table row (`--header` prints
//! the header first):
//!
//! `| n per s | burst | requests | 200 | 429 | other | errors | start rate | 200 per s |`
//!
//! where the start rate is the requests after the burst ÷ the time from the first
//! start to the last, and 200 per s the successes ÷ the time from the first start
//! to the last answer.
//!
//! Run: `cargo run --release --example nginx_client -- --url http://127.0.0.1:8080/api
//! --rate 200 --requests 1000` (`-- --help` for the flags).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use taskgate::Rate;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Send GETs through a rate-limited taskgate pool and count 200s and 429s")]
struct Args {
    /// The URL to GET (plain http).
    #[arg(long)]
    url: String,
    /// The pool's rate: starts per second.
    #[arg(long)]
    rate: u32,
    /// The rate's burst (default: a hundredth of the rate, at least 1).
    #[arg(long)]
    burst: Option<u32>,
    /// How many requests to send.
    #[arg(long, default_value_t = 1_000)]
    requests: usize,
    /// The pool's workers: requests in flight at most.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Each request's timeout, in seconds.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
    /// Print the table's header before the row.
    #[arg(long)]
    header: bool,
}

/// How one request ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    TooMany,
    Other,
    Error,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let burst = args.burst.unwrap_or((args.rate / 100).max(1));
    let rate = Rate::per_second(args.rate).burst(burst);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(args.timeout_secs))
        .pool_max_idle_per_host(args.workers)
        .build()
        .expect("reqwest client");
    let pool = taskgate::Pool::builder()
        .workers(args.workers)
        .queue_capacity(args.requests)
        .rate_limit(rate)
        .build()
        .expect("pool");
    // When each request started, and how it ended.
    let starts = Arc::new(Mutex::new(Vec::with_capacity(args.requests)));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let (client, url, starts) = (client.clone(), args.url.clone(), starts.clone());
        let job = async move {
            starts.lock().unwrap().push(Instant::now());
            match client.get(&url).send().await {
                Ok(r) => {
                    let status = r.status();
                    // Read the body, so the connection goes back to the pool.
                    let _ = r.bytes().await;
                    match status {
                        reqwest::StatusCode::OK => Answer::Ok,
                        reqwest::StatusCode::TOO_MANY_REQUESTS => Answer::TooMany,
                        _ => Answer::Other,
                    }
                }
                Err(_) => Answer::Error,
            }
        };
        handles.push(pool.try_submit(job).expect("room for every request"));
    }
    let mut counts = [0usize; 4];
    for h in handles {
        let a = h.await.unwrap_or(Answer::Error);
        counts[a as usize] += 1;
    }
    let done = t0.elapsed();
    pool.shutdown().await;
    let starts = starts.lock().unwrap().clone();
    let (first, last) = (starts[0], starts[starts.len() - 1]);
    let start_rate = starts.len().saturating_sub(burst as usize) as f64
        / last.duration_since(first).as_secs_f64().max(1e-9);
    let ok_rate = counts[Answer::Ok as usize] as f64
        / (done - first.duration_since(t0)).as_secs_f64().max(1e-9);
    if args.header {
        println!(
            "| n per s | burst | requests | 200 | 429 | other | errors | start rate | 200 per s |"
        );
        println!(
            "|--------:|------:|---------:|----:|----:|------:|-------:|-----------:|----------:|"
        );
    }
    println!(
        "| {} | {burst} | {} | {} | {} | {} | {} | {start_rate:.1}/s | {ok_rate:.1}/s |",
        args.rate,
        args.requests,
        counts[Answer::Ok as usize],
        counts[Answer::TooMany as usize],
        counts[Answer::Other as usize],
        counts[Answer::Error as usize],
    );
}
