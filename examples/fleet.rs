//! The fleet demo: P processes share one API quota through Redis.
//!
//! An API quota belongs to an account, not to a process. This demo starts:
//!
//! - a `redis-server` on a free loopback port, in a temporary directory, with
//!   persistence off (or uses `REDIS_URL` if set);
//! - an HTTP API on 127.0.0.1 that allows the account `--rate` requests a
//!   second and answers `429 Too Many Requests` above it (a GCRA check per
//!   request, with a small tolerance, like a real API);
//! - `--processes` child processes (this example run again with `--child`),
//!   each a taskgate pool sending as many GETs to the API as its limits allow.
//!
//! It runs two phases of `--seconds` each:
//!
//! - **(a)** each process has its own `Builder::rate_limit(rate)`: each stays
//!   under the quota, the fleet sends P times it, and the API refuses about
//!   (P-1)/P of the calls;
//! - **(b)** every process has `Builder::shared_rate(redis.rate("api", rate))`:
//!   one rate for the fleet, kept in Redis, and the API refuses (almost) none.
//!
//! Each child reports its progress on stdout (`progress ms=.. ok=.. refused=..`,
//! then a `done ...` line); the parent draws a bar per child and prints, per
//! phase, the 429s, the ok calls per second and each process's share of them,
//! and for phase (b) the shared rate's lease and its Redis round trips per
//! start (`SharedRate::stats`).
//!
//! The rates' burst is about 20 ms of the rate: a process leases up to
//! `effective_lease()` tokens per round trip to Redis (about 10 ms of the rate,
//! at most the burst), and a burst of twice the lease leaves the processes room
//! to ask late without the bucket overflowing (with a burst of 10 ms of the rate,
//! 4 processes at 200/s delivered 94 %; with 20 ms, 100 %). A burst of 1 would
//! cost at least a round trip per start (see `SharedRate`'s docs).
//!
//! Run: `cargo run --release --example fleet --features redis` (`-- --help` for
//! the flags; `-- --short` for one-second phases, as CI runs it). Without
//! `redis-server` on PATH and no `REDIS_URL`, it says how to get one and exits
//! (with 0; with `TASKGATE_REQUIRE_REDIS=1`, as `.ci/run` sets, it fails).

#[path = "../tests/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::io::{BufRead, Write};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use clap::{Parser, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use taskgate::Rate;
use taskgate::redis::RedisLimits;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser, Debug, Clone)]
#[command(
    about = "A fleet of processes against one API quota: a rate_limit per process vs one \
             shared_rate through Redis"
)]
struct Args {
    /// How many processes in the fleet.
    #[arg(long, default_value_t = 4)]
    processes: usize,
    /// The account's quota, requests per second: the API's limit, each process's
    /// `rate_limit` in phase (a), and the fleet's `shared_rate` in phase (b).
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long each phase lasts, in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// One-second phases (for CI); overrides --seconds.
    #[arg(long)]
    short: bool,
    /// Workers per process.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// The burst of the rates (default: about 20 ms of the rate, at least 1).
    #[arg(long)]
    burst: Option<u32>,
    /// The API's tolerance, in requests back to back (default: the burst, plus a
    /// lease per process, plus 5 ms of the rate: what the shared rate may send
    /// early, see `SharedRate`'s bound).
    #[arg(long)]
    api_burst: Option<u32>,
    /// Internal: run one process of the fleet, in this phase.
    #[arg(long, value_enum, hide = true)]
    child: Option<Phase>,
    /// Internal: the API's address.
    #[arg(long, hide = true)]
    api: Option<String>,
    /// Internal: the key prefix on Redis, one per run.
    #[arg(long, hide = true, default_value = "taskgate-fleet")]
    prefix: String,
    /// Internal: this process's number.
    #[arg(long, hide = true, default_value_t = 0)]
    index: usize,
}

/// How the parent hands the Redis URL to its children.
const CHILD_REDIS_URL: &str = "TASKGATE_FLEET_REDIS_URL";

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Phase (a): `Builder::rate_limit` in each process.
    Local,
    /// Phase (b): `Builder::shared_rate` through Redis.
    Shared,
}

impl Phase {
    fn title(self, rate: Rate, processes: usize) -> String {
        match self {
            Phase::Local => format!(
                "(a) each process: Builder::rate_limit({}/s, burst {}); the fleet may send {}/s",
                rate.count(),
                rate.burst_size(),
                u64::from(rate.count()) * processes as u64
            ),
            Phase::Shared => format!(
                "(b) every process: Builder::shared_rate(redis.rate(\"api\", {}/s, burst {})); \
                 the fleet may send {}/s",
                rate.count(),
                rate.burst_size(),
                rate.count()
            ),
        }
    }

    fn short(self) -> &'static str {
        match self {
            Phase::Local => "(a) rate_limit per process",
            Phase::Shared => "(b) one shared_rate",
        }
    }
}

impl Args {
    fn seconds(&self) -> f64 {
        if self.short { 1.0 } else { self.seconds }
    }

    /// The quota as a taskgate rate, with its burst.
    fn quota(&self) -> Rate {
        // About 20 ms of the rate.
        let burst = self.burst.unwrap_or(self.rate.div_ceil(50)).max(1);
        Rate::per_second(self.rate).burst(burst)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.processes == 0
        || args.rate == 0
        || args.workers == 0
        || !args.seconds().is_finite()
        || args.seconds() <= 0.0
    {
        eprintln!("--processes, --rate, --workers and --seconds must be above 0");
        return ExitCode::FAILURE;
    }
    if let Some(phase) = args.child {
        return child_main(&args, phase);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async {
        tokio::select! {
            r = parent(&args) => match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleet: {e}");
                    ExitCode::FAILURE
                }
            },
            _ = tokio::signal::ctrl_c() => {
                // Dropping `parent` kills the children and redis-server.
                eprintln!("fleet: interrupted");
                ExitCode::from(130)
            }
        }
    });
    // The redis-server guard and the children are gone with `parent`'s future;
    // don't wait for stray blocking tasks.
    rt.shutdown_background();
    code
}

// ---- The parent: Redis, the API, the fleet, the tables.

async fn parent(args: &Args) -> Result<(), String> {
    let run_start = Instant::now();
    let quota = args.quota();
    // Redis: REDIS_URL, or a redis-server of our own (killed on drop).
    let (url, server) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            // `None` when redis-server is not installed (it printed how to
            // install it); with TASKGATE_REQUIRE_REDIS=1, as in CI, it panics.
            let Some(server) = redis_server::RedisServer::start() else {
                println!("or set REDIS_URL=redis://host:port to use a running Redis");
                return Ok(());
            };
            (server.url(), Some(server))
        }
    };
    let redis = RedisLimits::connect(&url)
        .await
        .map_err(|e| format!("Redis: {e}"))?;
    // One key prefix per run, so runs sharing a REDIS_URL never share a rate.
    let prefix = format!(
        "taskgate-fleet-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let shared = redis.prefix(prefix.clone()).rate("api", quota);
    let lease = shared.effective_lease();
    let api_burst = args.api_burst.unwrap_or_else(|| {
        let slack = (u64::from(args.rate) * 5).div_ceil(1000) as u32;
        quota.burst_size() + args.processes as u32 * lease + slack
    });
    let api = Arc::new(Api::new(args.processes, args.rate, api_burst));
    let addr = serve_api(api.clone()).await?;

    println!(
        "redis: {redis:?}{}",
        if server.is_some() {
            " (redis-server started by this demo)"
        } else {
            " (REDIS_URL)"
        }
    );
    println!(
        "API on http://{addr}/api/{{process}}: the account's quota is {}/s; above it, 429 \
         (GCRA, tolerance {api_burst} requests back to back)",
        args.rate
    );
    println!(
        "fleet: {} processes x {} workers, {:.1} s per phase; rates with burst {} (about 20 ms \
         of the rate)",
        args.processes,
        args.workers,
        args.seconds(),
        quota.burst_size()
    );
    println!(
        "shared rate: effective lease {lease} token(s) per round trip to Redis (SharedRate::\
         effective_lease: about 10 ms of the rate, at most the burst, so a burst of 1 would \
         lease one token per round trip)\n"
    );

    let ctx = Ctx {
        args,
        addr: addr.to_string(),
        url,
        prefix,
        api,
    };
    let mut results = Vec::new();
    for phase in [Phase::Local, Phase::Shared] {
        let r = run_phase(&ctx, phase).await?;
        print_phase(args, &r, lease);
        results.push(r);
    }
    print_summary(args, &results);
    println!(
        "\ntotal wall time {:.2} s",
        run_start.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Ctx<'a> {
    args: &'a Args,
    addr: String,
    url: String,
    prefix: String,
    api: Arc<Api>,
}

/// One child's `done` line.
#[derive(Debug, Default, Clone, Copy)]
struct Report {
    ok: u64,
    refused: u64,
    err: u64,
    started: u64,
    ms: u64,
    round_trips: u64,
    granted: u64,
    redis_errors: u64,
    on_error: u64,
    lease: u64,
}

impl Report {
    fn parse(line: &str) -> Report {
        let mut r = Report::default();
        for (k, v) in line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.parse::<u64>().unwrap_or(0)))
        {
            match k {
                "ok" => r.ok = v,
                "refused" => r.refused = v,
                "err" => r.err = v,
                "started" => r.started = v,
                "ms" => r.ms = v,
                "round_trips" => r.round_trips = v,
                "granted" => r.granted = v,
                "redis_errors" => r.redis_errors = v,
                "on_error" => r.on_error = v,
                "lease" => r.lease = v,
                _ => {}
            }
        }
        r
    }
}

struct PhaseResult {
    phase: Phase,
    reports: Vec<Report>,
    /// From `go` to the last child's `done`.
    wall: Duration,
    /// What the API saw: ok, 429.
    api_ok: u64,
    api_refused: u64,
}

/// Starts the fleet for one phase, draws its bars, and collects its reports.
async fn run_phase(ctx: &Ctx<'_>, phase: Phase) -> Result<PhaseResult, String> {
    let args = ctx.args;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let quota = args.quota();
    println!("{}", phase.title(quota, args.processes));
    let multi = MultiProgress::new();
    let phase_ms = (args.seconds() * 1000.0) as u64;
    let style = ProgressStyle::with_template("{prefix:<10} [{bar:30}] {msg}")
        .expect("template")
        .progress_chars("=> ");
    let mut children = Vec::new();
    let mut readers = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<usize, String>>(64);
    for i in 0..args.processes {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("--child")
            .arg(match phase {
                Phase::Local => "local",
                Phase::Shared => "shared",
            })
            .args(["--api", &ctx.addr])
            // In the environment, not on the command line, where `ps` shows a
            // password.
            .env(CHILD_REDIS_URL, &ctx.url)
            .args(["--prefix", &ctx.prefix])
            .args(["--index", &i.to_string()])
            .args(["--rate", &args.rate.to_string()])
            .args(["--burst", &quota.burst_size().to_string()])
            .args(["--seconds", &args.seconds().to_string()])
            .args(["--workers", &args.workers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // An early exit of the parent (an error, Ctrl-C) kills the fleet.
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("start child {i}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let bar = multi.add(ProgressBar::new(phase_ms));
        bar.set_style(style.clone());
        bar.set_prefix(format!("process {}", i + 1));
        bar.set_message("starting");
        let ready = ready_tx.clone();
        readers.push(tokio::spawn(read_child(i, stdout, bar, ready)));
        children.push(child);
    }
    drop(ready_tx);
    // Every child connected and built its pool: start them together.
    let mut ready = 0;
    while ready < args.processes {
        match tokio::time::timeout(Duration::from_secs(15), ready_rx.recv()).await {
            Ok(Some(Ok(_))) => ready += 1,
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err("a child exited before it was ready".into()),
            Err(_) => return Err("the children were not ready within 15 s".into()),
        }
    }
    ctx.api.reset();
    let go = Instant::now();
    for (i, child) in children.iter_mut().enumerate() {
        let stdin = child.stdin.as_mut().expect("piped stdin");
        stdin
            .write_all(b"go\n")
            .await
            .map_err(|e| format!("child {i}: {e}"))?;
        stdin.flush().await.map_err(|e| format!("child {i}: {e}"))?;
    }
    let limit = Duration::from_secs_f64(args.seconds()) + Duration::from_secs(15);
    let mut reports = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let left = limit.saturating_sub(go.elapsed());
        match tokio::time::timeout(left, reader).await {
            Ok(Ok(Ok(r))) => reports.push(r),
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(e)) => return Err(format!("child {i}'s reader: {e}")),
            Err(_) => return Err(format!("child {i} did not finish within {limit:?}")),
        }
    }
    let wall = go.elapsed();
    for (i, mut child) in children.into_iter().enumerate() {
        drop(child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .map_err(|_| format!("child {i} did not exit"))?
            .map_err(|e| format!("child {i}: {e}"))?;
        if !status.success() {
            return Err(format!("child {i} exited with {status}"));
        }
    }
    multi.clear().ok();
    let (api_ok, api_refused) = ctx.api.counts();
    Ok(PhaseResult {
        phase,
        reports,
        wall,
        api_ok,
        api_refused,
    })
}

/// Reads one child's stdout: `ready`, `progress ...` lines (drawn on its bar),
/// then `done ...`.
async fn read_child(
    i: usize,
    stdout: tokio::process::ChildStdout,
    bar: ProgressBar,
    ready: tokio::sync::mpsc::Sender<Result<usize, String>>,
) -> Result<Report, String> {
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => {
                let e = format!("child {i} exited without a report");
                let _ = ready.send(Err(e.clone())).await;
                return Err(e);
            }
            Err(e) => return Err(format!("child {i}: {e}")),
        };
        let (kind, rest) = line.split_once(' ').unwrap_or((&line, ""));
        match kind {
            "ready" => {
                bar.set_message("ready");
                let _ = ready.send(Ok(i)).await;
            }
            "progress" | "done" => {
                let r = Report::parse(rest);
                bar.set_position(r.ms);
                let secs = (r.ms as f64 / 1000.0).max(1e-3);
                bar.set_message(format!(
                    "ok {:>5}  429 {:>5}  {:>5.0} ok/s",
                    r.ok,
                    r.refused,
                    r.ok as f64 / secs
                ));
                if kind == "done" {
                    bar.finish();
                    return Ok(r);
                }
            }
            _ => {}
        }
    }
}

fn print_phase(args: &Args, r: &PhaseResult, lease: u32) {
    let secs = args.seconds();
    let total_ok: u64 = r.reports.iter().map(|x| x.ok).sum();
    let shared = r.phase == Phase::Shared;
    print!(
        "{:<10} {:>7} {:>7} {:>6} {:>8} {:>7}",
        "process", "ok", "429", "errors", "ok/s", "share"
    );
    if shared {
        print!(" {:>8} {:>8} {:>12}", "starts", "trips", "trips/start");
    }
    println!();
    for (i, x) in r.reports.iter().enumerate() {
        print!(
            "{:<10} {:>7} {:>7} {:>6} {:>8.1} {:>6.1}%",
            i + 1,
            x.ok,
            x.refused,
            x.err,
            x.ok as f64 / secs,
            pct(x.ok, total_ok)
        );
        if shared {
            print!(
                " {:>8} {:>8} {:>12.2}",
                x.started,
                x.round_trips,
                ratio(x.round_trips, x.started)
            );
        }
        println!();
    }
    let sum = |f: fn(&Report) -> u64| r.reports.iter().map(f).sum::<u64>();
    let (ok, refused, err, started) = (
        sum(|x| x.ok),
        sum(|x| x.refused),
        sum(|x| x.err),
        sum(|x| x.started),
    );
    print!(
        "{:<10} {:>7} {:>7} {:>6} {:>8.1} {:>6.1}%",
        "fleet",
        ok,
        refused,
        err,
        ok as f64 / secs,
        100.0
    );
    if shared {
        let trips = sum(|x| x.round_trips);
        print!(
            " {:>8} {:>8} {:>12.2}",
            started,
            trips,
            ratio(trips, started)
        );
    }
    println!();
    let expected = match r.phase {
        // The fleet sends P times the quota: all but 1/P is refused.
        Phase::Local => 100.0 * (args.processes as f64 - 1.0) / args.processes as f64,
        Phase::Shared => 0.0,
    };
    println!(
        "the API saw {} ok and {} answered 429 ({:.1}% of calls refused, about {expected:.0}% \
         expected); phase wall time {:.2} s",
        r.api_ok,
        r.api_refused,
        pct(r.api_refused, r.api_ok + r.api_refused),
        r.wall.as_secs_f64()
    );
    if shared {
        let (granted, redis_errors, on_error) = (
            sum(|x| x.granted),
            sum(|x| x.redis_errors),
            sum(|x| x.on_error),
        );
        let leases: Vec<String> = r.reports.iter().map(|x| x.lease.to_string()).collect();
        println!(
            "SharedRate::stats over the fleet: {} round trips for {started} starts ({:.2} per \
             start; effective lease {lease}, children report {}), {granted} tokens granted \
             ({} leased but not started), {redis_errors} Redis errors, {on_error} starts under \
             OnError",
            sum(|x| x.round_trips),
            ratio(sum(|x| x.round_trips), started),
            leases.join("/"),
            granted.saturating_sub(started),
        );
    }
    println!();
}

fn print_summary(args: &Args, results: &[PhaseResult]) {
    println!(
        "summary: {} processes, quota {}/s, {:.1} s per phase",
        args.processes,
        args.rate,
        args.seconds()
    );
    println!(
        "{:<28} {:>7} {:>8} {:>9}  shares of the ok calls",
        "phase", "429s", "ok/s", "wall"
    );
    for r in results {
        let ok: u64 = r.reports.iter().map(|x| x.ok).sum();
        let shares: Vec<String> = r
            .reports
            .iter()
            .map(|x| format!("{:.0}%", pct(x.ok, ok)))
            .collect();
        println!(
            "{:<28} {:>7} {:>8.1} {:>7.2} s  {}",
            r.phase.short(),
            r.api_refused,
            ok as f64 / args.seconds(),
            r.wall.as_secs_f64(),
            shares.join(" ")
        );
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

// ---- The API: the account's quota, enforced per request.

/// `GET /api/{process}`: `200 ok` while the account is within its quota, `429`
/// above it. A GCRA of `rate` per second with a tolerance of `burst` requests
/// back to back, as an API gateway does it; a refused call takes nothing.
struct Api {
    interval: Duration,
    tolerance: Duration,
    /// The theoretical arrival time of the next request.
    tat: Mutex<Option<Instant>>,
    ok: Vec<AtomicU64>,
    refused: Vec<AtomicU64>,
}

impl Api {
    fn new(processes: usize, rate: u32, burst: u32) -> Api {
        let interval = Duration::from_secs(1) / rate;
        Api {
            interval,
            tolerance: interval * burst.max(1).saturating_sub(1),
            tat: Mutex::new(None),
            ok: (0..processes).map(|_| AtomicU64::new(0)).collect(),
            refused: (0..processes).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn admit(&self) -> bool {
        let now = Instant::now();
        let mut tat = self.tat.lock().expect("api state");
        let t = tat.unwrap_or(now).max(now);
        if t > now + self.tolerance {
            return false;
        }
        *tat = Some(t + self.interval);
        true
    }

    fn reset(&self) {
        *self.tat.lock().expect("api state") = None;
        for c in self.ok.iter().chain(&self.refused) {
            c.store(0, Ordering::SeqCst);
        }
    }

    fn counts(&self) -> (u64, u64) {
        let sum = |v: &[AtomicU64]| v.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        (sum(&self.ok), sum(&self.refused))
    }
}

async fn api_call(State(api): State<Arc<Api>>, Path(p): Path<usize>) -> (StatusCode, &'static str) {
    let i = p.min(api.ok.len() - 1);
    if api.admit() {
        api.ok[i].fetch_add(1, Ordering::Relaxed);
        (StatusCode::OK, "ok")
    } else {
        api.refused[i].fetch_add(1, Ordering::Relaxed);
        (StatusCode::TOO_MANY_REQUESTS, "quota exceeded")
    }
}

async fn serve_api(api: Arc<Api>) -> Result<std::net::SocketAddr, String> {
    let app = axum::Router::new()
        .route("/api/{p}", axum::routing::get(api_call))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("API server: {e}");
        }
    });
    Ok(addr)
}

// ---- A child: one process of the fleet.

/// What one child counts.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    refused: AtomicU64,
    err: AtomicU64,
    /// Jobs that started in the phase (and made a call).
    started: AtomicU64,
}

impl Counts {
    fn line(&self, ms: u64) -> String {
        format!(
            "ms={ms} ok={} refused={} err={} started={}",
            self.ok.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.err.load(Ordering::Relaxed),
            self.started.load(Ordering::Relaxed),
        )
    }
}

fn child_main(args: &Args, phase: Phase) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(child(args, phase));
    rt.shutdown_background();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet child {}: {e}", args.index);
            ExitCode::FAILURE
        }
    }
}

/// The `done` line is out: an EOF on stdin from then on is no failure.
static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn child(args: &Args, phase: Phase) -> Result<(), String> {
    let api = args.api.as_deref().ok_or("--api is missing")?;
    let url = format!("http://{api}/api/{}", args.index);
    let quota = args.quota();
    let mut builder = taskgate::Pool::builder()
        .workers(args.workers)
        .queue_capacity(args.workers)
        .name("fleet");
    let shared = match phase {
        Phase::Local => {
            builder = builder.rate_limit(quota);
            None
        }
        Phase::Shared => {
            let redis_url = std::env::var(CHILD_REDIS_URL)
                .map_err(|_| format!("{CHILD_REDIS_URL} is not set"))?;
            let redis = RedisLimits::connect(&redis_url)
                .await
                .map_err(|e| format!("Redis: {e}"))?
                .prefix(args.prefix.clone());
            let rate = redis.rate("api", quota);
            builder = builder.shared_rate(rate.clone());
            Some(rate)
        }
    };
    let pool = builder.build().map_err(|e| {
        // The cause: which limit, and why.
        let cause = std::error::Error::source(&e).map(|c| format!(": {c}"));
        format!("pool: {e}{}", cause.unwrap_or_default())
    })?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;

    // The parent says `go` on stdin; its end of stdin closing means it is gone:
    // then this process exits at once (a plain thread: tokio's stdin would hold
    // the runtime's shutdown).
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::stdin().lock().lines();
        if let Some(Ok(l)) = lines.next()
            && l.trim() == "go"
        {
            let _ = go_tx.send(());
            while let Some(Ok(_)) = lines.next() {}
        }
        // EOF: the parent is gone, or it has our report and lets us go.
        std::process::exit(if REPORTED.load(Ordering::SeqCst) {
            0
        } else {
            3
        });
    });
    say("ready");
    go_rx.await.map_err(|_| "no go from the parent")?;

    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds());
    let progress = {
        let counts = counts.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                say(&format!(
                    "progress {}",
                    counts.line(start.elapsed().as_millis() as u64)
                ));
            }
        })
    };
    // The offered load: as many calls as the pool accepts, until the deadline.
    let submit = async {
        loop {
            let (client, url, counts) = (client.clone(), url.clone(), counts.clone());
            let job = async move {
                // A job the rate let start after the phase ended makes no call.
                if Instant::now() >= deadline {
                    return;
                }
                counts.started.fetch_add(1, Ordering::Relaxed);
                let c = match client.get(&url).send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                        let _ = r.bytes().await;
                        &counts.refused
                    }
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(_) => &counts.ok,
                        Err(_) => &counts.err,
                    },
                    _ => &counts.err,
                };
                c.fetch_add(1, Ordering::Relaxed);
            };
            if pool.spawn(job).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline.into(), submit).await;
    // Calls in flight finish; jobs still queued for the rate are cancelled.
    pool.shutdown_timeout(Duration::from_millis(100)).await;
    progress.abort();
    let elapsed = start.elapsed().min(deadline - start);
    let stats = shared.as_ref().map(|s| s.stats()).unwrap_or_default();
    // Before the line: the parent closes our stdin once it has read it.
    REPORTED.store(true, Ordering::SeqCst);
    say(&format!(
        "done {} round_trips={} granted={} redis_errors={} on_error={} lease={}",
        counts.line(elapsed.as_millis() as u64),
        stats.round_trips,
        stats.granted,
        stats.errors,
        stats.started_on_error,
        shared.as_ref().map_or(0, |s| s.effective_lease()),
    ));
    Ok(())
}
