//! The `metrics` feature with shared limits: each limit's round trips, grants,
//! errors, starts under `OnError` and time under it reach the recorder, labelled
//! by kind and name, against a real `redis-server`.
#![cfg(all(feature = "redis", feature = "metrics"))]

mod support;

#[path = "support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use support::prometheus_sample as sample;
use taskgate::Rate;
use taskgate::redis::{OnError, RedisLimits};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_limits_export_their_counters() {
    let Some(mut server) = redis_server::RedisServer::start() else {
        return;
    };
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .expect("install the recorder");
    let redis = RedisLimits::connect(&server.url()).await.unwrap();
    let rate = redis
        .rate("m-rate", Rate::per_second(1_000).burst(20))
        .on_error(OnError::Open);
    let conc = redis.concurrency("m-conc", 4).on_error(OnError::Open);
    let pool = redis_server::limited_pool(4, &[&rate, &conc]);
    for i in 0..50u32 {
        assert_eq!(pool.run(async move { i }).await, Ok(i));
    }
    // Redis goes away: the next calls fail, and `Open` starts jobs anyway.
    server.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rate.stats().on_error_now == 0 || conc.stats().on_error_now == 0 {
        assert!(Instant::now() < deadline, "the policy never applied");
        assert_eq!(pool.run(async { 1 }).await, Ok(1));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Background requests (renewals, probes) may count between the reads: the
    // exported value lies between the stats read before and after the render.
    let before = [rate.stats(), conc.stats()];
    let text = metrics.render();
    let after = [rate.stats(), conc.stats()];
    for (i, (kind, name)) in [("rate", "m-rate"), ("concurrency", "m-conc")]
        .into_iter()
        .enumerate()
    {
        let labels = [format!("kind=\"{kind}\""), format!("limit=\"{name}\"")];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let get = |metric: &str| {
            sample(&text, metric, &labels).unwrap_or_else(|| panic!("no {metric} {labels:?}"))
        };
        let within = |metric: &str, lo: u64, hi: u64| {
            let v = get(metric);
            assert!(
                lo as f64 <= v && v <= hi as f64,
                "{kind} {metric}: {v} not in [{lo}, {hi}]"
            );
        };
        let (b, a) = (before[i], after[i]);
        within(
            "taskgate_shared_round_trips_total",
            b.round_trips,
            a.round_trips,
        );
        within("taskgate_shared_granted_total", b.granted, a.granted);
        within("taskgate_shared_errors_total", b.errors, a.errors);
        assert!(
            b.round_trips > 0 && b.granted > 0 && b.errors > 0,
            "{kind}: {b:?}"
        );
        assert_eq!(
            get("taskgate_shared_on_error"),
            1.0,
            "{kind}: under the policy now"
        );
    }
    // Jobs started under `Open`, counted where they started without the limit.
    let started = rate.stats().started_on_error + conc.stats().started_on_error;
    assert!(started > 0);
    assert_eq!(
        sample(
            &text,
            "taskgate_shared_started_on_error_total",
            &["kind=\"rate\""]
        )
        .unwrap_or(0.0)
            + sample(
                &text,
                "taskgate_shared_started_on_error_total",
                &["kind=\"concurrency\""]
            )
            .unwrap_or(0.0),
        started as f64
    );
}
