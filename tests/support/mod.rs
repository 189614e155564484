//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use taskgate::Pool;

/// Lets every ready task run: yields enough times for workers and handles to make
/// progress on a current-thread runtime. No real time passes.
pub async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// A pool with `workers` workers and `capacity` queue slots.
pub fn pool(workers: usize, capacity: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .queue_capacity(capacity)
        .build()
        .unwrap()
}

/// Counts how many of its guards are alive at once, and the peak.
#[derive(Clone, Default)]
pub struct Gauge {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
}

pub struct GaugeGuard(Gauge);

impl Gauge {
    pub fn enter(&self) -> GaugeGuard {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        GaugeGuard(self.clone())
    }
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A job that holds a gauge guard for `d` of (paused) time.
pub fn held(
    g: &Gauge,
    d: Duration,
) -> impl std::future::Future<Output = ()> + Send + 'static + use<> {
    let g = g.clone();
    async move {
        let _guard = g.enter();
        tokio::time::sleep(d).await;
    }
}

/// Sets a flag when dropped: to see that a job's future was dropped.
pub struct DropFlag(pub Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub fn drop_flag() -> (DropFlag, Arc<std::sync::atomic::AtomicBool>) {
    let f = Arc::new(std::sync::atomic::AtomicBool::new(false));
    (DropFlag(f.clone()), f)
}

/// Asserts the stats identity of a quiet pool.
pub fn assert_accounted(pool: &Pool) {
    let s = pool.stats();
    assert_eq!(s.busy, 0, "{s:?}");
    assert_eq!(s.queued, 0, "{s:?}");
    assert_eq!(
        s.submitted,
        s.completed + s.cancelled + s.timed_out + s.queue_timed_out + s.panicked,
        "stats identity: {s:?}"
    );
}

/// A job that never finishes, and a flag set when its future is dropped.
pub fn pending_job() -> (
    impl std::future::Future<Output = ()> + Send + 'static,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let (flag, dropped) = drop_flag();
    let fut = async move {
        let _f = flag;
        std::future::pending::<()>().await
    };
    (fut, dropped)
}

/// Records, in start order, a tag per job and the (paused) instant it started.
#[derive(Clone)]
pub struct Starts<T>(Arc<std::sync::Mutex<Vec<(T, tokio::time::Instant)>>>);

impl<T> Default for Starts<T> {
    fn default() -> Self {
        Starts(Arc::default())
    }
}

impl<T: Clone + Send + 'static> Starts<T> {
    /// A job that records `tag` and the time when it starts, then runs for `d`.
    pub fn job(
        &self,
        tag: T,
        d: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static + use<T> {
        let log = self.0.clone();
        async move {
            log.lock().unwrap().push((tag, tokio::time::Instant::now()));
            if !d.is_zero() {
                tokio::time::sleep(d).await;
            }
        }
    }

    /// The tags, in start order.
    pub fn tags(&self) -> Vec<T> {
        self.0.lock().unwrap().iter().map(|e| e.0.clone()).collect()
    }

    /// The start instants, in start order.
    pub fn times(&self) -> Vec<tokio::time::Instant> {
        self.0.lock().unwrap().iter().map(|e| e.1).collect()
    }

    /// Tags and start instants, in start order.
    pub fn all(&self) -> Vec<(T, tokio::time::Instant)> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Asserts that the sorted start instants `times` obey `rate` in every window:
/// over any window of length `t`, at most `burst + count * t / period` starts.
pub fn assert_within_rate(times: &[tokio::time::Instant], rate: taskgate::Rate, what: &str) {
    let per = rate.period().as_nanos();
    let n = u128::from(rate.count());
    let burst = rate.burst_size() as usize;
    for i in 0..times.len() {
        for j in i..times.len() {
            let starts = j - i + 1;
            if starts <= burst {
                continue;
            }
            let t = times[j].duration_since(times[i]).as_nanos();
            // starts <= burst + n * t / per  <=>  (starts - burst) * per <= n * t
            assert!(
                (starts - burst) as u128 * per <= n * t,
                "{what}: {starts} starts within {:?} (starts {i}..={j}) exceed {rate:?}",
                times[j].duration_since(times[i]),
            );
        }
    }
}

/// Asserts that the sorted start instants `times` obey `rate` in every window, with
/// an allowance `eps` for the timer's lateness: over any window of length `t`, at
/// most `burst + count * (t + eps) / period` starts (the bound in `Rate`'s docs).
/// With `eps` zero it is `assert_within_rate`'s exact bound.
///
/// Linear in the number of starts, so it suits long runs. With
/// `d(k) = k * period - count * (times[k] - times[0])`, the window `i..=j` obeys
/// the bound exactly when `d(j) - d(i) <= (burst - 1) * period + count * eps`
/// (windows of at most `burst` starts always do), so it is enough to compare each
/// `d(j)` with the least `d(i)` before it.
pub fn assert_within_rate_eps(
    times: &[tokio::time::Instant],
    rate: taskgate::Rate,
    eps: Duration,
    what: &str,
) {
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "{what}: start instants are not sorted"
    );
    let Some(&first) = times.first() else {
        return;
    };
    let per = rate.period().as_nanos() as i128;
    let n = i128::from(rate.count());
    let burst = i128::from(rate.burst_size());
    let slack = (burst - 1) * per + n * eps.as_nanos() as i128;
    let d = |k: usize| k as i128 * per - n * times[k].duration_since(first).as_nanos() as i128;
    let (mut min_i, mut min_d) = (0, d(0));
    for j in 1..times.len() {
        let dj = d(j);
        if dj - min_d > slack {
            let (i, starts) = (min_i, j - min_i + 1);
            panic!(
                "{what}: {starts} starts within {:?} (starts {i}..={j}) exceed {rate:?} with \
                 ε = {eps:?} (allowed: burst + n·(t + ε)/period = {:.3})",
                times[j].duration_since(times[i]),
                burst as f64
                    + n as f64 * (times[j].duration_since(times[i]) + eps).as_secs_f64()
                        / rate.period().as_secs_f64(),
            );
        }
        if dj < min_d {
            (min_i, min_d) = (j, dj);
        }
    }
}

/// xorshift64: a small deterministic generator for randomized tests (the same seed
/// gives the same sequence on every machine).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// In a Prometheus text exposition, the value of the sample whose name is `name`
/// and whose labels include all of `labels` (the metrics tests).
pub fn prometheus_sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
