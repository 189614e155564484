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
