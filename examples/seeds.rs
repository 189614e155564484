//! The published Go worker-pool experiments, reproduced with Tokio and taskgate.
//!
//! Articles about Go worker pools cite a handful of figures. This runs the same
//! setups on this machine, unbounded spawning against a taskgate pool, and prints
//! our figures next to theirs. Each (experiment, approach) runs in a child process
//! of this one, so its peak RSS is its own. The Go figures come from other machines
//! and other workloads; compare the ratios, not the absolute numbers.
//!
//! Run: `cargo run --release --example seeds` (`-- --only cpu` for one experiment).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::{fmt_dur, fmt_mib, peak_rss_kib, quantile, start_server};

/// Counts allocations and bytes, for the CPU-bound experiment's allocs/op.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged, and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---- experiment 1: 10k concurrent requests, 200-worker pool ----

const REQS: usize = 10_000;

async fn http_10k(approach: &str, addr: &str) -> String {
    let url = format!("http://{addr}/api");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let start = Instant::now();
    let mut lat = Vec::with_capacity(REQS);
    let mut errors = 0u64;
    let mut record = |r: (bool, Duration)| {
        if !r.0 {
            errors += 1;
        }
        lat.push(r.1);
    };
    async fn one(client: reqwest::Client, url: String, asked: Instant) -> (bool, Duration) {
        let ok = match client.get(&url).send().await {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        (ok, asked.elapsed())
    }
    if approach == "spawn" {
        let hs: Vec<_> = (0..REQS)
            .map(|_| tokio::spawn(one(client.clone(), url.clone(), Instant::now())))
            .collect();
        for h in hs {
            record(h.await.expect("task"));
        }
    } else {
        let pool = taskgate::Pool::builder()
            .workers(200)
            .build()
            .expect("pool");
        let mut hs = Vec::with_capacity(REQS);
        for _ in 0..REQS {
            hs.push(
                pool.submit(one(client.clone(), url.clone(), Instant::now()))
                    .await
                    .expect("open"),
            );
        }
        for h in hs {
            record(h.await.expect("job"));
        }
    }
    let wall = start.elapsed();
    lat.sort_unstable();
    format!(
        "rss_kib={} rps={:.0} p99_us={} errors={errors} wall_us={}",
        peak_rss_kib(),
        REQS as f64 / wall.as_secs_f64(),
        quantile(&lat, 0.99).as_micros(),
        wall.as_micros()
    )
}

// ---- experiment 2: 50k concurrent operations, pool of cores x 4, queue 10x ----

const OPS: usize = 50_000;

/// An operation that holds a 32 KiB working buffer for 5 ms.
async fn operation(i: usize) -> u64 {
    let mut buf = vec![0u8; 32 * 1024];
    for (j, b) in buf.iter_mut().enumerate().step_by(4096) {
        *b = (i + j) as u8;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    buf.iter().step_by(4096).map(|&b| b as u64).sum()
}

async fn ops_50k(approach: &str) -> String {
    let start = Instant::now();
    let mut sum = 0;
    if approach == "spawn" {
        let hs: Vec<_> = (0..OPS).map(|i| tokio::spawn(operation(i))).collect();
        for h in hs {
            sum += h.await.expect("task");
        }
    } else {
        let workers = cores() * 4;
        let pool = taskgate::Pool::builder()
            .workers(workers)
            .queue_capacity(workers * 10)
            .build()
            .expect("pool");
        for i in 0..OPS {
            pool.spawn(operation(i)).await.expect("open");
        }
        pool.shutdown().await;
        sum = pool.stats().completed;
    }
    format!(
        "rss_kib={} wall_us={} check={sum}",
        peak_rss_kib(),
        start.elapsed().as_micros()
    )
}

// ---- experiment 3: CPU-bound sha256, 10 workers ----

const HASHES: usize = 10_000;

fn hash(i: usize) -> [u8; 32] {
    Sha256::digest(format!("payload-{i}").as_bytes()).into()
}

/// One op: hash `HASHES` payloads. Returns the xor of the first bytes as a check.
async fn cpu_op(approach: &str, pool: Option<&taskgate::Pool>) -> u8 {
    let mut check = 0u8;
    match approach {
        "spawn_blocking" => {
            let hs: Vec<_> = (0..HASHES)
                .map(|i| tokio::task::spawn_blocking(move || hash(i)))
                .collect();
            for h in hs {
                check ^= h.await.expect("task")[0];
            }
        }
        "spawn" => {
            let hs: Vec<_> = (0..HASHES)
                .map(|i| tokio::spawn(async move { hash(i) }))
                .collect();
            for h in hs {
                check ^= h.await.expect("task")[0];
            }
        }
        "taskgate_async" | "taskgate_async_q200" => {
            let pool = pool.expect("a pool");
            let mut hs = Vec::with_capacity(HASHES);
            for i in 0..HASHES {
                hs.push(pool.submit(async move { hash(i) }).await.expect("open"));
            }
            for h in hs {
                check ^= h.await.expect("job")[0];
            }
        }
        _ => {
            let pool = pool.expect("a pool");
            let mut hs = Vec::with_capacity(HASHES);
            for i in 0..HASHES {
                hs.push(pool.submit_blocking(move || hash(i)).await.expect("open"));
            }
            for h in hs {
                check ^= h.await.expect("job")[0];
            }
        }
    }
    check
}

async fn cpu(approach: &str) -> String {
    let pool = approach.starts_with("taskgate").then(|| {
        let mut b = taskgate::Pool::builder().workers(cores());
        if approach.ends_with("q200") {
            b = b.queue_capacity(200);
        }
        b.build().expect("pool")
    });
    // Warm up, then time 20 ops and count allocations over them.
    for _ in 0..3 {
        cpu_op(approach, pool.as_ref()).await;
    }
    const RUNS: u64 = 20;
    let (a0, b0) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        std::hint::black_box(cpu_op(approach, pool.as_ref()).await);
        times.push(t.elapsed());
    }
    let (a1, b1) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    times.sort_unstable();
    format!(
        "ns_op={} bytes_op={} allocs_op={} rss_kib={}",
        quantile(&times, 0.5).as_nanos(),
        (b1 - b0) / RUNS,
        (a1 - a0) / RUNS,
        peak_rss_kib()
    )
}

// ---- experiment 4: 1M offered jobs, fire-and-forget ----

const OFFERED: usize = 1_000_000;

async fn fire_and_forget(approach: &str) -> String {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let job = |d: Arc<AtomicU64>| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        d.fetch_add(1, Relaxed);
    };
    if approach == "spawn" {
        for _ in 0..OFFERED {
            tokio::spawn(job(done.clone()));
        }
        while done.load(Relaxed) < OFFERED as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    } else {
        let pool = taskgate::Pool::builder()
            .workers(1024)
            .build()
            .expect("pool");
        for _ in 0..OFFERED {
            pool.spawn(job(done.clone())).await.expect("open");
        }
        pool.shutdown().await;
    }
    format!(
        "rss_kib={} wall_us={} done={}",
        peak_rss_kib(),
        start.elapsed().as_micros(),
        done.load(Relaxed)
    )
}

// ---- driver ----

fn parse(line: &str) -> Fields {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0.0)))
        .collect()
}

fn run_child(exp: &str, approach: &str, extra: &[&str]) -> Fields {
    let exe = std::env::current_exe().expect("exe");
    let out = Command::new(exe)
        .args(["--child", exp, approach])
        .args(extra)
        .output()
        .expect("child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "{exp}/{approach} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    parse(&line["RESULT ".len()..])
}

/// One row of a comparison table: a label, our two figures, and the published one.
fn row(label: &str, ours: impl std::fmt::Display, pool: impl std::fmt::Display, published: &str) {
    println!("   {label:<22} {ours:>14} {pool:>14}   {published}");
}

fn mib(r: &Fields) -> String {
    fmt_mib(r["rss_kib"] as u64)
}

fn micros(r: &Fields, key: &str) -> String {
    fmt_dur(Duration::from_micros(r[key] as u64))
}

type Fields = std::collections::HashMap<String, f64>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 4 && args[1] == "--child" {
        let (exp, approach) = (args[2].as_str(), args[3].as_str());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let line = rt.block_on(async {
            match exp {
                "http" => http_10k(approach, &args[4]).await,
                "ops" => ops_50k(approach).await,
                "cpu" => cpu(approach).await,
                "fire" => fire_and_forget(approach).await,
                other => panic!("unknown experiment {other}"),
            }
        });
        println!("RESULT {line}");
        return;
    }
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let want = |e: &str| only.as_deref().is_none_or(|o| o == e);
    println!(
        "machine: {} cores; each row is its own child process\n",
        cores()
    );

    if want("http") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (addr, _stats) = rt.block_on(start_server(usize::MAX, Duration::from_millis(10)));
        let addr = addr.to_string();
        // The server keeps running on `rt`'s threads while the children run.
        let s = run_child("http", "spawn", &[&addr]);
        let p = run_child("http", "taskgate", &[&addr]);
        println!(
            "1. {REQS} concurrent HTTP requests to a loopback server (10 ms each); pool of 200 workers"
        );
        row(
            "",
            "unbounded",
            "taskgate",
            "published Go (unbounded -> pool)",
        );
        row("peak RSS", mib(&s), mib(&p), "1.4 GB -> 280 MB");
        row(
            "throughput (req/s)",
            s["rps"].round(),
            p["rps"].round(),
            "8.4k -> 22.1k",
        );
        row(
            "p99 latency",
            micros(&s, "p99_us"),
            micros(&p, "p99_us"),
            "4.2 s -> 340 ms",
        );
        row("errors", s["errors"], p["errors"], "");
        println!();
        drop(rt);
    }
    if want("ops") {
        let s = run_child("ops", "spawn", &[]);
        let p = run_child("ops", "taskgate", &[]);
        let w = cores() * 4;
        println!(
            "2. {OPS} concurrent operations (32 KiB buffer held 5 ms each); pool of cores x 4 = {w}, queue {}",
            w * 10
        );
        row("", "unbounded", "taskgate", "published Go");
        row("peak RSS", mib(&s), mib(&p), "2.1 GB -> 247 MB");
        let reduction = 100.0 * (1.0 - p["rss_kib"] / s["rss_kib"]);
        row("memory reduction", "", format!("{reduction:.0}%"), "85%");
        row(
            "wall time",
            micros(&s, "wall_us"),
            micros(&p, "wall_us"),
            "",
        );
        println!();
    }
    if want("cpu") {
        let b = run_child("cpu", "spawn_blocking", &[]);
        let s = run_child("cpu", "spawn", &[]);
        let p = run_child("cpu", "taskgate", &[]);
        let a = run_child("cpu", "taskgate_async", &[]);
        let q = run_child("cpu", "taskgate_async_q200", &[]);
        println!(
            "3. CPU-bound: sha256 of \"payload-N\", one op = {HASHES} hashes; taskgate pools have workers = cores"
        );
        println!(
            "   {:<30} {:>12} {:>12} {:>12}",
            "", "ns/op", "B/op", "allocs/op"
        );
        for (name, r) in [
            ("unbounded spawn_blocking", &b),
            ("unbounded tokio::spawn", &s),
            ("taskgate submit_blocking", &p),
            ("taskgate submit (on workers)", &a),
            ("  ... with queue_capacity(200)", &q),
        ] {
            println!(
                "   {:<30} {:>12.0} {:>12.0} {:>12.0}",
                name, r["ns_op"], r["bytes_op"], r["allocs_op"]
            );
        }
        println!(
            "   published Go (M3 Max): unbounded 2,499,213 ns/op 639,350 B/op 39,754 allocs/op;"
        );
        println!("                          pool 1,791,772 ns/op 320,707 B/op 19,762 allocs/op");
        println!();
    }
    if want("fire") {
        let s = run_child("fire", "spawn", &[]);
        let p = run_child("fire", "taskgate", &[]);
        println!(
            "4. {OFFERED} offered fire-and-forget jobs (10 ms each); pool of 1024 with backpressure"
        );
        row("", "unbounded", "taskgate", "");
        row("peak RSS", mib(&s), mib(&p), "");
        let share = 100.0 * p["rss_kib"] / s["rss_kib"];
        row(
            "pool / unbounded",
            "",
            format!("{share:.1}%"),
            "(target: <= 10%)",
        );
        row(
            "wall time",
            micros(&s, "wall_us"),
            micros(&p, "wall_us"),
            "",
        );
    }
}
