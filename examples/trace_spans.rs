//! Tracing: each job runs in a `taskgate.job` span nested under the span that was
//! current when it was submitted.
//!
//! Prints the spans with `tracing-subscriber`'s fmt layer: each event inside a job
//! shows `request{id=..}:taskgate.job{pool=.. job=..}`, so a job's logs stay
//! attached to the request that caused them, though they ran on a worker task.
//!
//! Run: `cargo run --example trace_spans`

use std::time::Duration;

use taskgate::Pool;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

async fn fetch(item: u32) -> u32 {
    tracing::info!(item, "fetching");
    tokio::time::sleep(Duration::from_millis(5)).await;
    tracing::info!(item, "fetched");
    item * 10
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("info,taskgate=debug"))
        .with_target(false)
        .init();
    let pool = Pool::builder()
        .workers(2)
        .name("upstream")
        .build()
        .expect("pool");

    let mut requests = Vec::new();
    for id in 0..2u32 {
        let pool = pool.clone();
        let span = tracing::info_span!("request", id);
        requests.push(tokio::spawn(
            async move {
                tracing::info!("handling");
                let a = pool.run(fetch(id * 2)).await.expect("job");
                let b = pool.run(fetch(id * 2 + 1)).await.expect("job");
                tracing::info!(total = a + b, "done");
            }
            .instrument(span),
        ));
    }
    for r in requests {
        r.await.expect("request task");
    }
    // A job that times out logs at DEBUG, inside its span.
    let _ = pool
        .job(tokio::time::sleep(Duration::from_secs(1)))
        .timeout(Duration::from_millis(1))
        .run()
        .instrument(tracing::info_span!("request", id = 99))
        .await;
    pool.shutdown().await;
}
