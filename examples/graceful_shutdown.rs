//! Graceful shutdown: on Ctrl-C (or after a few seconds, so the example ends by
//! itself), stop taking work, let running jobs finish for up to a grace period,
//! then cancel the rest and report.
//!
//! Run: `cargo run --release --example graceful_shutdown` (press Ctrl-C, or wait)

use std::time::Duration;

use taskgate::Pool;

#[tokio::main]
async fn main() {
    let pool = Pool::builder()
        .workers(8)
        .queue_capacity(100)
        .name("jobs")
        .build()
        .expect("inside a runtime, with workers > 0");

    // A producer that keeps submitting jobs of varied length until the pool closes.
    let producer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            loop {
                let ms = 50 + (n * 37) % 2_000;
                let job = async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                };
                if pool.spawn(job).await.is_err() {
                    // Closed: the job came back inside the error; stop producing.
                    return n;
                }
                n += 1;
            }
        })
    };

    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("Ctrl-C: shutting down"),
        _ = tokio::time::sleep(Duration::from_secs(3)) => println!("3 s passed: shutting down"),
    }

    let before = pool.stats();
    println!(
        "running {}, queued {}; draining for up to 1 s",
        before.busy, before.queued
    );
    let report = pool.shutdown_timeout(Duration::from_secs(1)).await;
    let submitted = producer.await.expect("producer task");
    let s = pool.stats();
    println!(
        "submitted {submitted}; during shutdown {} finished and {} were cancelled",
        report.completed, report.cancelled
    );
    println!(
        "totals: completed {}, cancelled {}; nothing lost: {}",
        s.completed,
        s.cancelled,
        s.submitted == s.ended()
    );
}
