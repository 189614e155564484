//! Shared by the demo examples: a loopback HTTP server that behaves like a
//! rate-limited API (a concurrency limit, and optionally a rate limit), percentiles,
//! and peak RSS.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// What the server saw.
#[derive(Default)]
pub struct ServerStats {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    served: AtomicU64,
    rejected: AtomicU64,
    /// The rate limit's state: when its bucket is next full again (GCRA's
    /// theoretical arrival time). Cleared by `reset`.
    tat: Mutex<Option<Instant>>,
}

/// A server-side rate limit: `per_second` requests per second on average, and up
/// to `burst` back to back after a quiet spell (a token bucket of `burst` tokens
/// refilled at `per_second`). Requests beyond it get `429` with `Retry-After` set
/// to the whole seconds until a token is free (at least 1), as real APIs send it.
#[derive(Clone, Copy, Debug)]
pub struct ServerRate {
    pub per_second: u32,
    pub burst: u32,
}

impl ServerStats {
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::SeqCst)
    }
    pub fn reset(&self) {
        self.peak.store(0, Ordering::SeqCst);
        self.served.store(0, Ordering::SeqCst);
        self.rejected.store(0, Ordering::SeqCst);
        *self.tat.lock().expect("rate state") = None;
    }

    /// Takes a token from the rate limit, or says how long until one is free.
    fn take_token(&self, rate: ServerRate) -> Result<(), Duration> {
        let interval = Duration::from_secs(1) / rate.per_second.max(1);
        let tolerance = interval * rate.burst.max(1).saturating_sub(1);
        let now = Instant::now();
        let mut tat = self.tat.lock().expect("rate state");
        let t = tat.unwrap_or(now).max(now);
        if t > now + tolerance {
            return Err(t - tolerance - now);
        }
        *tat = Some(t + interval);
        Ok(())
    }
}

struct Api {
    capacity: usize,
    service: Duration,
    rate: Option<ServerRate>,
    stats: Arc<ServerStats>,
}

fn too_many(stats: &ServerStats, retry_after_secs: u64) -> Response {
    stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    stats.rejected.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry_after_secs.to_string())],
        "slow down",
    )
        .into_response()
}

/// `GET /api`: takes `service` to answer, and answers `429 Too Many Requests` with
/// `Retry-After: 1` while more than `capacity` requests are in flight, like a real
/// rate-limited API. `capacity = usize::MAX` disables the limit. With a
/// [`ServerRate`], a request beyond the rate gets `429` with `Retry-After` too.
async fn api(State(api): State<Arc<Api>>) -> Response {
    let n = api.stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    api.stats.peak.fetch_max(n, Ordering::SeqCst);
    if n > api.capacity {
        return too_many(&api.stats, 1);
    }
    if let Some(rate) = api.rate
        && let Err(wait) = api.stats.take_token(rate)
    {
        // Whole seconds, rounded up: the header has no finer unit.
        let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64;
        return too_many(&api.stats, secs);
    }
    tokio::time::sleep(api.service).await;
    api.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    api.stats.served.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, "ok").into_response()
}

/// Starts the server on 127.0.0.1 with an OS-chosen port, on the current runtime.
pub async fn start_server(capacity: usize, service: Duration) -> (SocketAddr, Arc<ServerStats>) {
    start_limited_server(capacity, service, None).await
}

/// As [`start_server`], with a rate limit too if `rate` is set.
pub async fn start_limited_server(
    capacity: usize,
    service: Duration,
    rate: Option<ServerRate>,
) -> (SocketAddr, Arc<ServerStats>) {
    let stats = Arc::new(ServerStats::default());
    let app = Router::new()
        .route("/api", get(api))
        .with_state(Arc::new(Api {
            capacity,
            service,
            rate,
            stats: stats.clone(),
        }));
    (serve_loopback(app).await, stats)
}

/// Serves `app` on a free loopback port, on a task of the current runtime.
pub async fn serve_loopback(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("server");
    });
    addr
}

/// The `q`-quantile of sorted values (nearest rank).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// This process's peak resident set size, in KiB (`VmHWM` in `/proc/self/status`).
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Formats a duration compactly for tables.
pub fn fmt_dur(d: Duration) -> String {
    let us = d.as_micros();
    if us >= 10_000_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else if us >= 10_000 {
        format!("{} ms", us / 1000)
    } else if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// Formats KiB as MiB.
pub fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
