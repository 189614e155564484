//! Memory stays bounded in keys, measured: a binary of its own, since it counts
//! every allocation through a global allocator (other tests running in parallel
//! would disturb the count).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use support::*;
use taskgate::Pool;

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Cancels one job each of `n` distinct keys, submitted and dropped while queued.
async fn cancel_one_job_keys(pool: &Pool, n: u32) {
    for i in 0..n {
        drop(
            pool.job(async {})
                .key(format!("k{i}"))
                .submit()
                .await
                .unwrap(),
        );
    }
}

/// A million one-job keys whose jobs are cancelled while queued leave nothing
/// behind: live memory after a warm-up does not grow with the number of keys that
/// passed through, both while every worker is busy (overload, with callers giving
/// up on their queued jobs) and while the pool is paused. Fails if each collected
/// key leaves an entry in the scheduler's structures (a stale ring entry) until a
/// worker next looks for a job. (One test: the phases must not run in parallel.)
#[tokio::test(start_paused = true)]
async fn a_million_cancelled_one_job_keys_leave_no_memory_behind() {
    // All workers busy.
    let pool = Pool::builder()
        .workers(1)
        .queue_capacity(100)
        .build()
        .unwrap();
    let (job, _) = pending_job();
    let _busy = pool.submit(job).await.unwrap();
    settle().await;
    assert_eq!(pool.stats().busy, 1);
    cancel_one_job_keys(&pool, 100_000).await;
    let before = live();
    cancel_one_job_keys(&pool, 1_000_000).await;
    let grown = live() - before;
    let s = pool.stats();
    assert_eq!((s.keys, s.queued, s.cancelled), (0, 0, 1_100_000), "{s:?}");
    assert!(
        grown < 1 << 20,
        "workers busy: live memory grew by {grown} bytes over 1M keys with no state left"
    );
    pool.abort();
    pool.shutdown().await;
    drop(pool);

    // Paused.
    let pool = Pool::builder()
        .workers(4)
        .queue_capacity(100)
        .build()
        .unwrap();
    pool.pause_for(Duration::from_secs(3600));
    cancel_one_job_keys(&pool, 100_000).await;
    let before = live();
    cancel_one_job_keys(&pool, 1_000_000).await;
    let grown = live() - before;
    assert_eq!(pool.stats().keys, 0);
    assert!(
        grown < 1 << 20,
        "paused: live memory grew by {grown} bytes over 1M keys with no state left"
    );
}
