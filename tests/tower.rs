//! The tower layer: calls run on the pool, poll_ready reserves nothing, errors are
//! typed, and it works inside an axum app.
#![cfg(feature = "tower")]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use support::*;
use taskgate::JobError;
use taskgate::tower::{PoolLayer, PoolService, ServiceError};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

type Upstream = BoxCloneSyncService<u64, u64, ServiceError<Infallible>>;

/// A slow upstream: 50 ms per call, with a gauge of calls in flight.
fn upstream(pool: taskgate::Pool, g: Gauge) -> Upstream {
    let svc = ServiceBuilder::new()
        .layer(PoolLayer::new(pool))
        .service(tower::service_fn(move |n: u64| {
            let g = g.clone();
            async move {
                let _in = g.enter();
                tokio::time::sleep(50 * MS).await;
                Ok::<_, Infallible>(n * 2)
            }
        }));
    BoxCloneSyncService::new(svc)
}

async fn fan_out(State(svc): State<Upstream>) -> String {
    let calls = (0..10u64).map(|i| svc.clone().oneshot(i));
    let results = futures::future::join_all(calls).await;
    let sum: u64 = results.into_iter().map(Result::unwrap).sum();
    sum.to_string()
}

#[tokio::test(start_paused = true)]
async fn an_axum_handler_fans_out_through_the_layer() {
    let pool = pool(4, 100);
    let g = Gauge::default();
    let app = Router::new()
        .route("/", get(fan_out))
        .with_state(upstream(pool.clone(), g.clone()));
    let t0 = tokio::time::Instant::now();
    let resp = app
        .oneshot(
            axum::http::Request::get("/")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"90");
    // Ten 50 ms calls, four at a time: three rounds.
    assert_eq!(tokio::time::Instant::now() - t0, 150 * MS);
    assert_eq!(g.peak(), 4);
    assert_eq!(pool.stats().completed, 10);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_reserves_nothing_and_backpressure_is_in_the_future() {
    let pool = pool(1, 0);
    let _busy = pool.submit(std::future::pending::<()>()).await.unwrap();
    settle().await;
    let mut svc: PoolService<_> =
        PoolLayer::new(pool.clone()).layer(tower::service_fn(|n: u32| async move {
            Ok::<_, Infallible>(n)
        }));
    // Ready again and again while the pool is full: nothing is reserved.
    for _ in 0..100 {
        svc.ready().await.unwrap();
    }
    let before = pool.stats();
    assert_eq!((before.submitted, before.queued), (1, 0));
    // The call waits inside its response future.
    let fut = svc.call(7);
    assert!(tokio::time::timeout(10 * MS, fut).await.is_err());
    assert_eq!(
        pool.stats().submitted,
        1,
        "the dropped call was never accepted"
    );
}

#[tokio::test(start_paused = true)]
async fn errors_say_whose_they_are() {
    let pool = pool(2, 10);
    let mut failing = PoolLayer::new(pool.clone()).layer(tower::service_fn(|_: ()| async {
        Err::<(), _>(std::io::Error::other("upstream down"))
    }));
    let err = failing.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(matches!(&err, ServiceError::Inner(e) if e.to_string() == "upstream down"));
    assert_eq!(err.to_string(), "service error: upstream down");
    assert!(std::error::Error::source(&err).is_some());

    let mut panicking = PoolLayer::new(pool.clone()).layer(tower::service_fn(|_: ()| async {
        if true {
            panic!("handler bug");
        }
        Ok::<(), Infallible>(())
    }));
    let err = panicking.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(
        err,
        ServiceError::Job(JobError::Panicked("handler bug".into()))
    );

    pool.close();
    let mut closed = PoolLayer::new(pool).layer(tower::service_fn(|_: ()| async {
        Ok::<(), Infallible>(())
    }));
    let err = closed.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(err, ServiceError::Job(JobError::Closed));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_response_future_cancels_the_call() {
    let pool = pool(1, 10);
    let (hang, dropped) = pending_job();
    let hang = std::sync::Arc::new(std::sync::Mutex::new(Some(hang)));
    let mut svc = PoolLayer::new(pool.clone()).layer(tower::service_fn(move |_: ()| {
        let job = hang.lock().unwrap().take();
        async move {
            if let Some(job) = job {
                job.await;
            }
            Ok::<(), Infallible>(())
        }
    }));
    let fut = svc.ready().await.unwrap().call(());
    assert!(tokio::time::timeout(10 * MS, fut).await.is_err());
    settle().await;
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(pool.stats().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn a_classifier_tells_the_adaptive_limit_about_overloads() {
    use taskgate::{Adaptive, Outcome, Pool};
    use tower::{Service, ServiceExt};
    let pool = Pool::builder()
        .workers(16)
        .adaptive(Adaptive::aimd().initial(8).min(1))
        .build()
        .unwrap();
    let classified = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = classified.clone();
    let layer = PoolLayer::new(pool.clone()).classify(move |r: &Result<u16, Infallible>| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match r {
            Ok(429) => Outcome::Overload { retry_after: None },
            _ => Outcome::Success,
        }
    });
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service_fn(|status: u16| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<u16, Infallible>(status)
        });
    assert_eq!(pool.stats().limit, 8);
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut svc = svc.clone();
        calls.push(tokio::spawn(async move {
            svc.ready().await.unwrap().call(429).await.unwrap()
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 429);
    }
    assert_eq!(classified.load(std::sync::atomic::Ordering::SeqCst), 8);
    // One burst of overloads: one decrease, by the default factor (8 × 0.9 → 7).
    assert_eq!(pool.stats().limit, 7);
    // Without a classifier, a 429 is a plain success to the limit.
    let plain = Pool::builder()
        .workers(16)
        .adaptive(Adaptive::aimd().initial(8))
        .build()
        .unwrap();
    let mut svc = tower::ServiceBuilder::new()
        .layer(PoolLayer::new(plain.clone()))
        .service_fn(|status: u16| async move { Ok::<u16, Infallible>(status) });
    assert_eq!(svc.ready().await.unwrap().call(429).await.unwrap(), 429);
    assert_eq!(plain.stats().limit, 8);
}
