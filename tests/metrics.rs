//! The `metrics` feature: counters, gauges and histograms scraped from a
//! Prometheus endpoint on 127.0.0.1.
#![cfg(feature = "metrics")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use support::prometheus_sample as sample;
use taskgate::Pool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_scrape_shows_the_pools_metrics() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .expect("install the exporter");

    // The recorder is installed first: the pool registers its handles at build.
    let pool = Pool::builder()
        .workers(2)
        .queue_capacity(1)
        .name("scraped")
        .build()
        .unwrap();
    for i in 0..5u64 {
        assert_eq!(pool.run(async move { i }).await, Ok(i));
    }
    assert!(pool.run(async { panic!("counted") }).await.is_err());
    let slow = pool
        .job(tokio::time::sleep(Duration::from_secs(60)))
        .timeout(Duration::from_millis(1))
        .run()
        .await;
    assert!(slow.is_err());
    // Fill both workers and the queue, then get refused once.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut rx = rx.clone();
        let started = started.clone();
        held.push(
            pool.submit(async move {
                started.add_permits(1);
                let _ = rx.wait_for(|&go| go).await;
            })
            .await
            .unwrap(),
        );
    }
    assert!(pool.try_submit(async {}).is_err());
    held.pop().unwrap().cancel(); // the queued one
    // Both workers have begun their jobs (and counted their queue waits): a
    // worker counts `busy` as it takes a job, and the wait just after.
    let both = started.acquire_many(2).await.unwrap();
    both.forget();

    let url = format!("http://{addr}/metrics");
    let client = reqwest::Client::new();
    let mut text = String::new();
    // The listener starts in the background: retry a bounded number of times.
    for _ in 0..50 {
        if let Ok(r) = client.get(&url).send().await {
            text = r.text().await.unwrap();
            if text.contains("taskgate_jobs_total") {
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    let pool_label = "pool=\"scraped\"";
    let jobs = |outcome: &str| {
        sample(
            &text,
            "taskgate_jobs_total",
            &[pool_label, &format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(jobs("completed"), Some(5.0), "{text}");
    assert_eq!(jobs("panicked"), Some(1.0), "{text}");
    assert_eq!(jobs("timed_out"), Some(1.0), "{text}");
    assert_eq!(jobs("cancelled"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "taskgate_rejected_total", &[pool_label]),
        Some(1.0)
    );
    assert_eq!(sample(&text, "taskgate_workers", &[pool_label]), Some(2.0));
    assert_eq!(
        sample(&text, "taskgate_busy", &[pool_label]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "taskgate_queued", &[pool_label]), Some(0.0));
    // Histograms are exported as summaries by default: a count per pool.
    assert_eq!(
        sample(&text, "taskgate_run_seconds_count", &[pool_label]),
        Some(7.0),
        "{text}"
    );
    // Queue waits: the seven finished jobs and the two still holding the workers.
    assert_eq!(
        sample(&text, "taskgate_queue_wait_seconds_count", &[pool_label]),
        Some(9.0)
    );

    tx.send(true).unwrap();
    for h in held {
        h.await.unwrap();
    }
    pool.shutdown().await;
}
