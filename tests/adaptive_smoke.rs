use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use taskgate::{Adaptive, Outcome, Pool};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn smoke() {
    let pool = Pool::builder()
        .workers(64)
        .adaptive(Adaptive::aimd())
        .build()
        .unwrap();
    let inflight = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..100 {
        let pool = pool.clone();
        let inflight = inflight.clone();
        callers.push(tokio::spawn(async move {
            while t0.elapsed() < Duration::from_secs(6) {
                let inflight = inflight.clone();
                let _ = pool
                    .job(async move {
                        let n = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        inflight.fetch_sub(1, Ordering::SeqCst);
                        n <= 20
                    })
                    .classify(|ok: &bool| {
                        if *ok {
                            Outcome::Success
                        } else {
                            Outcome::Overload { retry_after: None }
                        }
                    })
                    .run()
                    .await;
            }
        }));
    }
    let mut trace = Vec::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trace.push(pool.stats().limit);
    }
    for c in callers {
        c.await.unwrap();
    }
    println!("{trace:?}");
    assert!(trace[..40].iter().any(|&l| l >= 16), "{trace:?}");
}
