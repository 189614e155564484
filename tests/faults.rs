//! Fault injection: misuse and hostile conditions, one test each. (Runtime shutdown
//! mid-job, panics in `Drop`, and submitters waiting when the pool closes, aborts or
//! is dropped are in `lifecycle.rs` and `panic.rs`.)

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use support::*;
use taskgate::{JobError, Pool, SubmitError, TrySubmitError};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_blocks_its_thread_delays_but_breaks_nothing() {
    // Misuse: `std::thread::sleep` in async code blocks a runtime thread. The pool
    // cannot interrupt it (it never yields), but every other guarantee holds.
    let pool = Pool::builder()
        .workers(3)
        .job_timeout(Duration::from_millis(5))
        .build()
        .unwrap();
    let g = Gauge::default();
    // Blocks 30 ms without yielding: its timeout cannot fire mid-block, and since
    // its result is ready at its first poll, the result wins.
    let blocker = pool
        .submit(async {
            std::thread::sleep(Duration::from_millis(30));
            "blocked"
        })
        .await
        .unwrap();
    // Blocks, then yields: the timeout fires at that first `.await`.
    let yields_late = pool
        .submit(async {
            std::thread::sleep(Duration::from_millis(30));
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        })
        .await
        .unwrap();
    let mut others = Vec::new();
    for _ in 0..50 {
        let g = g.clone();
        others.push(
            pool.submit(async move {
                let _in = g.enter();
                tokio::task::yield_now().await;
            })
            .await
            .unwrap(),
        );
    }
    assert_eq!(blocker.await, Ok("blocked"));
    assert_eq!(yields_late.await, Err(JobError::TimedOut));
    for h in others {
        assert_eq!(h.await, Ok(()));
    }
    assert!(g.peak() <= 3);
    pool.shutdown().await;
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn cancel_storm_of_ten_thousand_handles() {
    let pool = pool(4, 20_000);
    let g = Gauge::default();
    let mut busy = Vec::new();
    for _ in 0..4 {
        busy.push(pool.submit(held(&g, 10 * MS)).await.unwrap());
    }
    settle().await;
    let mut queued = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        queued.push(pool.submit(held(&g, MS)).await.unwrap());
    }
    // Half cancelled, then all of them dropped at once.
    for h in &queued[5_000..] {
        h.cancel();
    }
    assert_eq!(pool.stats().cancelled, 5_000);
    drop(queued);
    let s = pool.stats();
    assert_eq!((s.queued, s.cancelled), (0, 10_000), "{s:?}");
    for h in busy {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.started(), 4, "no cancelled job started");
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn resize_storm_of_a_thousand_resizes_keeps_the_limit() {
    let pool = pool(4, 10_000);
    let running = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(AtomicUsize::new(4));
    let broken = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for i in 0..3_000u64 {
        let (running, target, broken) = (running.clone(), target.clone(), broken.clone());
        handles.push(
            pool.submit(async move {
                // No job may start while as many as the current size run.
                if running.fetch_add(1, SeqCst) >= target.load(SeqCst) {
                    broken.store(true, SeqCst);
                }
                tokio::time::sleep(Duration::from_micros(100 + (i * 7919) % 900)).await;
                running.fetch_sub(1, SeqCst);
            })
            .await
            .unwrap(),
        );
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..1_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = (x % 9) as usize;
        target.store(n, SeqCst);
        pool.resize(n);
        tokio::time::advance(Duration::from_micros(x % 500)).await;
        settle().await;
        assert!(!broken.load(SeqCst), "a job started above the limit");
        let s = pool.stats();
        assert!(s.busy <= s.workers, "{s:?}");
    }
    target.store(8, SeqCst);
    pool.resize(8);
    for h in handles {
        assert_eq!(h.await, Ok(()));
    }
    assert!(!broken.load(SeqCst));
    assert_accounted(&pool);
}

/// A job that submits a child job into its own pool and waits for it.
async fn parent(pool: Pool, use_try: bool) -> &'static str {
    let child = async { "child result" };
    if use_try {
        match pool.try_submit(child) {
            Ok(h) => h.await.unwrap(),
            // The way out: the queue is full, so run the child inline.
            Err(TrySubmitError::Full(child)) => child.await,
            Err(e) => panic!("{e}"),
        }
    } else {
        match pool.submit_timeout(child, Duration::from_millis(10)).await {
            Ok(h) => h.await.unwrap(),
            Err(SubmitError::Timeout(child)) => child.await,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn reentrant_jobs_have_a_way_out_of_the_deadlock() {
    // One worker, no queue: the parent holds the only slot, so a child submitted
    // with `submit` would wait forever (see "Re-entrancy" in the Pool docs).
    let pool = pool(1, 0);
    let p = pool.clone();
    assert_eq!(pool.run(parent(p, true)).await, Ok("child result"));
    let p = pool.clone();
    assert_eq!(pool.run(parent(p, false)).await, Ok("child result"));
    assert_eq!(pool.stats().rejected, 2);

    // The deadlock itself, bounded by a timeout on the caller's side.
    let p = pool.clone();
    let stuck = pool.run(async move { p.submit(async {}).await.map(|h| h.detach()) });
    assert!(
        tokio::time::timeout(Duration::from_secs(1), stuck)
            .await
            .is_err()
    );
}
