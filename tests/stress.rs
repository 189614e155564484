//! A randomized stress test on a multi-thread runtime: many producers submit jobs
//! that finish, hang until their timeout, panic, or get cancelled or dropped by
//! their caller, while another task resizes the pool. Checks that the limit holds,
//! that every accepted job resolves exactly once, and the stats identity.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use taskgate::{JobError, Pool};

/// xorshift64*: deterministic per producer.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
    queue_timed_out: AtomicU64,
    panicked: AtomicU64,
    unobserved: AtomicU64,
    accepted: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workload_keeps_every_guarantee() {
    const PRODUCERS: u64 = 16;
    const JOBS: u64 = 400;
    const MAX_WORKERS: usize = 8;
    let pool = Pool::builder()
        .workers(MAX_WORKERS)
        .queue_capacity(32)
        .build()
        .unwrap();
    let gauge = Gauge::default();
    let tally = Arc::new(Tally::default());
    let resizes = Arc::new(AtomicUsize::new(0));

    let resizer = {
        let pool = pool.clone();
        let resizes = resizes.clone();
        tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            for _ in 0..300 {
                pool.resize(1 + rng.below(MAX_WORKERS as u64) as usize);
                resizes.fetch_add(1, Ordering::Relaxed);
                for _ in 0..rng.below(20) {
                    tokio::task::yield_now().await;
                }
            }
            pool.resize(MAX_WORKERS);
        })
    };

    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let pool = pool.clone();
        let gauge = gauge.clone();
        let tally = tally.clone();
        producers.push(tokio::spawn(async move {
            let mut rng = Rng(p * 7919 + 1);
            let mut pending = Vec::new();
            for _ in 0..JOBS {
                let kind = rng.below(10);
                let yields = rng.below(8);
                let g = gauge.clone();
                let job = async move {
                    let _guard = g.enter();
                    match kind {
                        0 => panic!("random panic"),
                        1 => std::future::pending::<u64>().await,
                        _ => {
                            for _ in 0..yields {
                                tokio::task::yield_now().await;
                            }
                            yields
                        }
                    }
                };
                let mut builder = pool.job(job);
                if kind == 1 {
                    builder = builder.timeout(Duration::from_millis(1));
                }
                if rng.below(10) == 0 {
                    builder = builder.queue_timeout(Duration::from_micros(200));
                }
                let handle = match rng.below(3) {
                    0 => match builder.try_submit() {
                        Ok(h) => h,
                        Err(e) => {
                            assert!(e.is_full());
                            continue;
                        }
                    },
                    _ => builder.submit().await.unwrap(),
                };
                tally.accepted.fetch_add(1, Ordering::Relaxed);
                match rng.below(10) {
                    0 => {
                        drop(handle);
                        tally.unobserved.fetch_add(1, Ordering::Relaxed);
                    }
                    1 => {
                        handle.detach();
                        tally.unobserved.fetch_add(1, Ordering::Relaxed);
                    }
                    2 => {
                        handle.cancel();
                        pending.push(handle);
                    }
                    _ => pending.push(handle),
                }
                if pending.len() > 16 {
                    let h = pending.swap_remove(rng.below(pending.len() as u64) as usize);
                    record(&tally, h.await);
                }
            }
            for h in pending {
                record(&tally, h.await);
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    resizer.await.unwrap();
    pool.shutdown().await;

    let s = pool.stats();
    let t = &tally;
    assert!(
        gauge.peak() <= MAX_WORKERS,
        "peak {} > {MAX_WORKERS}",
        gauge.peak()
    );
    assert_eq!(gauge.now(), 0, "no job future is left alive");
    assert_eq!(s.submitted, t.accepted.load(Ordering::Relaxed));
    assert_accounted(&pool);
    // Every observed handle resolved exactly once; the others have outcomes too.
    let observed = t.ok.load(Ordering::Relaxed)
        + t.cancelled.load(Ordering::Relaxed)
        + t.timed_out.load(Ordering::Relaxed)
        + t.queue_timed_out.load(Ordering::Relaxed)
        + t.panicked.load(Ordering::Relaxed);
    assert_eq!(observed + t.unobserved.load(Ordering::Relaxed), s.submitted);
    assert!(s.completed >= t.ok.load(Ordering::Relaxed));
    assert!(s.panicked >= t.panicked.load(Ordering::Relaxed));
    assert!(s.timed_out >= t.timed_out.load(Ordering::Relaxed));
    assert!(s.cancelled >= t.cancelled.load(Ordering::Relaxed));
    assert!(
        s.panicked > 0 && s.timed_out > 0 && s.cancelled > 0 && s.completed > 0,
        "{s:?}"
    );
    assert_eq!(resizes.load(Ordering::Relaxed), 300);
}

fn record(t: &Tally, r: Result<u64, JobError>) {
    let c = match r {
        Ok(_) => &t.ok,
        Err(JobError::Cancelled) => &t.cancelled,
        Err(JobError::TimedOut) => &t.timed_out,
        Err(JobError::QueueTimedOut) => &t.queue_timed_out,
        Err(JobError::Panicked(_)) => &t.panicked,
        Err(e) => panic!("unexpected outcome {e}"),
    };
    c.fetch_add(1, Ordering::Relaxed);
}
