#![cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::time::{Duration, Instant};
use taskgate::redis::RedisLimits;
use taskgate::{Pool, Rate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let Some(server) = redis_server::RedisServer::start() else {
        return;
    };
    let redis = RedisLimits::connect(&server.url()).await.unwrap();
    let rate = redis.rate("smoke", Rate::per_second(1000).burst(10));
    let conc = redis.concurrency("smoke", 5);
    let pool = Pool::builder()
        .workers(32)
        .shared_rate(rate.clone())
        .shared_concurrency(conc.clone())
        .build()
        .unwrap();
    let t = Instant::now();
    let mut hs = Vec::new();
    for _ in 0..500 {
        hs.push(
            pool.submit(async { tokio::time::sleep(Duration::from_millis(1)).await })
                .await
                .unwrap(),
        );
    }
    for h in hs {
        h.await.unwrap();
    }
    eprintln!(
        "500 jobs in {:?}; rate {:?}; conc {:?}",
        t.elapsed(),
        rate.stats(),
        conc.stats()
    );
    eprintln!("{:?}", pool.stats());
}
