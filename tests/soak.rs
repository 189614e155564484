//! A bounded soak: mixed random workloads from 32 producers on a multi-thread
//! runtime for `TASKGATE_SOAK_SECS` seconds (default 60). Checks that RSS stays flat
//! once warm (bytes of RSS growth per million jobs), that every outcome is accounted
//! for, and that the limit is never exceeded.
//!
//! Ignored by default. CI runs a short version:
//! `TASKGATE_SOAK_SECS=5 cargo test --release --test soak -- --ignored --nocapture`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use taskgate::{JobError, Pool};

mod support;
use support::Rng;

const WORKERS: usize = 16;
const PRODUCERS: u64 = 32;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

#[test]
#[ignore = "a soak: run with --ignored (CI runs it for 5 s)"]
fn soak() {
    let secs: u64 = std::env::var("TASKGATE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    // The workload panics on purpose; keep those out of the output (and skip the
    // backtrace each would capture).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"soak panic") {
            default_hook(info);
        }
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pool = Pool::builder()
            .workers(WORKERS)
            .queue_capacity(256)
            .build()
            .unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let over_limit = Arc::new(AtomicBool::new(false));
        let observed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        let warm_at = start + Duration::from_secs(secs) / 5;

        let mut producers = Vec::new();
        for p in 0..PRODUCERS {
            let (pool, running, over_limit, observed, stop) = (
                pool.clone(),
                running.clone(),
                over_limit.clone(),
                observed.clone(),
                stop.clone(),
            );
            producers.push(tokio::spawn(async move {
                let mut rng = Rng(p.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
                let mut pending = Vec::new();
                while !stop.load(Relaxed) {
                    let kind = rng.next() % 20;
                    let yields = rng.next() % 4;
                    let (running, over_limit) = (running.clone(), over_limit.clone());
                    let job = async move {
                        if running.fetch_add(1, Relaxed) >= WORKERS {
                            over_limit.store(true, Relaxed);
                        }
                        struct Leave(Arc<AtomicUsize>);
                        impl Drop for Leave {
                            fn drop(&mut self) {
                                self.0.fetch_sub(1, Relaxed);
                            }
                        }
                        let _leave = Leave(running);
                        let buf = vec![kind as u8; 64 + (yields as usize) * 256];
                        for _ in 0..yields {
                            tokio::task::yield_now().await;
                        }
                        match kind {
                            0 => panic!("soak panic"),
                            1 => std::future::pending::<u64>().await,
                            _ => buf.iter().map(|&b| b as u64).sum(),
                        }
                    };
                    let mut b = pool.job(job);
                    if kind == 1 {
                        b = b.timeout(Duration::from_millis(1));
                    }
                    let h = match b.submit().await {
                        Ok(h) => h,
                        Err(_) => break,
                    };
                    match rng.next() % 8 {
                        0 => drop(h),
                        1 => h.detach(),
                        2 => {
                            h.cancel();
                            pending.push(h);
                        }
                        _ => pending.push(h),
                    }
                    if pending.len() >= 32 {
                        for h in pending.drain(..) {
                            match h.await {
                                Ok(_)
                                | Err(JobError::Cancelled)
                                | Err(JobError::TimedOut)
                                | Err(JobError::Panicked(_)) => {}
                                Err(e) => panic!("unexpected {e}"),
                            }
                            observed.fetch_add(1, Relaxed);
                        }
                    }
                }
                for h in pending {
                    let _ = h.await;
                    observed.fetch_add(1, Relaxed);
                }
            }));
        }

        // Sample RSS once warm and at the end.
        tokio::time::sleep_until(warm_at.into()).await;
        let (rss_warm, jobs_warm) = (rss_bytes(), pool.stats().submitted);
        tokio::time::sleep_until(deadline.into()).await;
        let (rss_end, jobs_end) = (rss_bytes(), pool.stats().submitted);
        stop.store(true, Relaxed);
        for p in producers {
            p.await.unwrap();
        }
        pool.shutdown().await;

        let s = pool.stats();
        let jobs = jobs_end - jobs_warm;
        let growth = rss_end.saturating_sub(rss_warm) as f64;
        let per_million = growth / (jobs.max(1) as f64) * 1e6;
        eprintln!(
            "soak: {secs} s, {} jobs ({:.0}/s), RSS warm {:.1} MiB -> end {:.1} MiB: {:.0} bytes of growth per million jobs; {s:?}",
            s.submitted,
            s.submitted as f64 / secs as f64,
            rss_warm as f64 / 1048576.0,
            rss_end as f64 / 1048576.0,
            per_million
        );
        assert!(!over_limit.load(Relaxed), "the limit was exceeded");
        assert_eq!(s.submitted, s.ended(), "every outcome accounted for: {s:?}");
        assert_eq!((s.busy, s.queued), (0, 0));
        assert!(s.panicked > 0 && s.timed_out > 0 && s.cancelled > 0);
        // No leak per job: under 1 MiB of RSS growth per million jobs once warm.
        assert!(
            per_million < 1048576.0,
            "RSS grew {per_million:.0} bytes per million jobs"
        );
    });
}
