//! Exporting a pool's metrics to Prometheus (feature `metrics`).
//!
//! Installs `metrics-exporter-prometheus` with its HTTP listener on 127.0.0.1, runs a
//! short mixed workload through a pool named "api", then scrapes its own `/metrics`
//! endpoint once and prints the `taskgate_*` lines. Bounded: it exits by itself.
//!
//! Run: `cargo run --example prometheus --features metrics`

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use taskgate::Pool;

#[tokio::main]
async fn main() {
    // Some jobs panic on purpose, to show the panicked counter: keep them quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // Install the recorder before building the pool: the pool registers its
    // metrics when it is built.
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .expect("install the Prometheus exporter");

    let pool = Pool::builder()
        .workers(8)
        .job_timeout(Duration::from_millis(50))
        .name("api")
        .build()
        .expect("pool");
    let mut handles = Vec::new();
    for i in 0..200u64 {
        let job = async move {
            match i % 20 {
                0 => panic!("a failing request"),
                1 => tokio::time::sleep(Duration::from_secs(1)).await, // times out
                _ => tokio::time::sleep(Duration::from_millis(1 + i % 5)).await,
            }
        };
        handles.push(pool.submit(job).await.expect("open"));
    }
    for h in handles {
        let _ = h.await;
    }

    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    println!("scraped http://{addr}/metrics:\n");
    for line in text.lines().filter(|l| l.contains("taskgate_")) {
        println!("{line}");
    }
    pool.shutdown().await;
}
