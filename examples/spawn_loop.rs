//! Replacing an unbounded `tokio::spawn` loop with a bounded pool.
//!
//! Processes 100 000 items through a pool of 64 workers. Each item simulates an
//! outbound call (a short sleep) followed by a little CPU work. Prints the pool's
//! stats at the end.
//!
//! Run: `cargo run --release --example spawn_loop`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use taskgate::Pool;

const ITEMS: u64 = 100_000;

async fn process(item: u64, checksum: Arc<AtomicU64>) {
    // An outbound call: 1 ms of waiting.
    tokio::time::sleep(Duration::from_millis(1)).await;
    // A little CPU work on the response.
    let mut h = item;
    for _ in 0..100 {
        h = h
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
    }
    checksum.fetch_add(h % 1000, Ordering::Relaxed);
}

#[tokio::main]
async fn main() {
    let pool = Pool::builder()
        .workers(64)
        .name("spawn-loop")
        .build()
        .expect("inside a runtime, with workers > 0");
    let checksum = Arc::new(AtomicU64::new(0));
    let start = Instant::now();

    // Before: `for item in 0..ITEMS { tokio::spawn(process(item, ..)); }` starts
    // every item at once. After: at most 64 run, and the loop waits when the queue
    // is full, so memory stays bounded however many items there are.
    for item in 0..ITEMS {
        pool.spawn(process(item, checksum.clone()))
            .await
            .expect("the pool is open");
    }
    pool.shutdown().await;

    let elapsed = start.elapsed();
    let s = pool.stats();
    println!("processed {} items in {elapsed:.2?}", s.completed);
    println!(
        "  {:.0} items/s with at most {} running at once",
        s.completed as f64 / elapsed.as_secs_f64(),
        s.workers
    );
    println!(
        "  outcomes: completed {}, cancelled {}, timed out {}, queue timed out {}, panicked {}",
        s.completed, s.cancelled, s.timed_out, s.queue_timed_out, s.panicked
    );
    println!(
        "  queue wait: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        s.queue_wait.p50, s.queue_wait.p90, s.queue_wait.p99, s.queue_wait.max
    );
    println!(
        "  run time:   p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        s.run_time.p50, s.run_time.p90, s.run_time.p99, s.run_time.max
    );
    println!("  checksum {}", checksum.load(Ordering::Relaxed));
    assert_eq!(s.completed, ITEMS);
}
