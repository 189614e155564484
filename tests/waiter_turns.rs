//! A waiting submitter's turn, step by step: grants taken back and given again
//! before the waiter is polled, refusals by its key or a shrunk pool after a grant,
//! a `submit_timeout` that runs out just then, spurious polls of a younger waiter,
//! close, and a multi-thread churn of every front end with aborts. Each future is
//! polled by hand with a waker that counts its wakes. Written by an independent
//! review of the one-push-per-poll waiter (d209aa0).

mod support;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use support::*;
use taskgate::{JobBuilder, JobHandle, KeyLimits, Pool};
use tokio::sync::oneshot;

const MS: Duration = Duration::from_millis(1);

struct Count(AtomicUsize);
impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
fn counter() -> (Arc<Count>, Waker) {
    let c = Arc::new(Count(AtomicUsize::new(0)));
    (c.clone(), Waker::from(c))
}
fn poll_with<F: Future>(f: Pin<&mut F>, w: &Waker) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(w))
}

fn keyed_pool(workers: usize, capacity: usize, key_capacity: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .queue_capacity(capacity)
        .key_limits(KeyLimits::default().queue_capacity(key_capacity))
        .build()
        .unwrap()
}
fn load(pool: &Pool) -> (usize, usize) {
    let s = pool.stats();
    (s.busy, s.queued)
}
fn with_key<'a, F>(b: JobBuilder<'a, F>, key: Option<&'static str>) -> JobBuilder<'a, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match key {
        Some(k) => b.key(k),
        None => b,
    }
}
async fn one_place_taken(key: Option<&'static str>) -> (Pool, JobHandle<()>, JobHandle<()>) {
    let pool = match key {
        None => keyed_pool(1, 1, 1),
        Some(_) => keyed_pool(1, 100, 1),
    };
    let (running, _dropped) = pending_job();
    let r = pool.submit(running).await.unwrap();
    settle().await;
    let q = with_key(pool.job(async {}), key).submit().await.unwrap();
    (pool, r, q)
}

/// Grant, revoke, re-grant, all before the waiter is polled again (the second
/// grant finds no waker): the waiter must be woken once and admitted.
#[tokio::test(start_paused = true)]
async fn grant_revoke_regrant_before_repoll() {
    for key in [None, Some("c")] {
        let (pool, _r, q) = one_place_taken(key).await;
        let (c1, k1) = counter();
        let (c2, k2) = counter();
        let mut w1 = pin!(with_key(pool.job(async { 1 }), key).submit());
        let mut w2 = pin!(with_key(pool.job(async { 2 }), key).submit());
        assert!(poll_with(w1.as_mut(), &k1).is_pending());
        assert!(poll_with(w2.as_mut(), &k2).is_pending());
        drop(q);
        assert_eq!(c1.0.load(Ordering::SeqCst), 1, "{key:?}: w1 woken by grant");
        let probe = with_key(pool.job(async { 0 }), key)
            .try_submit()
            .unwrap_or_else(|_| panic!("probe"));
        drop(probe); // place frees again: re-granted to w1 (no waker stored)
        assert_eq!(c2.0.load(Ordering::SeqCst), 0, "{key:?}: w2 not woken");
        let _h1 = match poll_with(w1.as_mut(), &k1) {
            Poll::Ready(Ok(h)) => h,
            _ => panic!("{key:?}: w1 must hold the re-grant"),
        };
        assert!(poll_with(w2.as_mut(), &k2).is_pending());
    }
}

/// Grant, revoke, spurious re-poll (stores waker), re-grant: woken again.
#[tokio::test(start_paused = true)]
async fn grant_revoke_repoll_regrant_wakes() {
    for key in [None, Some("c")] {
        let (pool, _r, q) = one_place_taken(key).await;
        let (c1, k1) = counter();
        let mut w1 = pin!(with_key(pool.job(async { 1 }), key).submit());
        assert!(poll_with(w1.as_mut(), &k1).is_pending());
        drop(q);
        let probe = with_key(pool.job(async { 0 }), key)
            .try_submit()
            .unwrap_or_else(|_| panic!("probe"));
        let (c1b, k1b) = counter();
        assert!(
            poll_with(w1.as_mut(), &k1b).is_pending(),
            "{key:?}: revoked"
        );
        drop(probe);
        assert_eq!(c1.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            c1b.0.load(Ordering::SeqCst),
            1,
            "{key:?}: new waker woken by re-grant"
        );
        assert!(matches!(poll_with(w1.as_mut(), &k1b), Poll::Ready(Ok(_))));
    }
}

/// A granted keyed waiter refused by its key queue (cap lowered) keeps its turn,
/// and is woken and admitted when the key frees a place.
#[tokio::test(start_paused = true)]
async fn key_refused_after_grant_is_readmitted_when_key_frees() {
    let pool = keyed_pool(1, 2, 2);
    let (running, _dropped) = pending_job();
    let _r = pool.submit(running).await.unwrap();
    settle().await;
    let c1 = pool.job(async {}).key("c").submit().await.unwrap();
    let q = pool.submit(async {}).await.unwrap();
    let (cw, kw) = counter();
    let mut wc = pin!(pool.job(async { "c" }).key("c").submit());
    assert!(poll_with(wc.as_mut(), &kw).is_pending());
    drop(q);
    assert_eq!(cw.0.load(Ordering::SeqCst), 1, "granted");
    pool.set_key_limits("c", KeyLimits::default().queue_capacity(1))
        .unwrap();
    let (cw2, kw2) = counter();
    assert!(
        poll_with(wc.as_mut(), &kw2).is_pending(),
        "refused by key c"
    );
    drop(c1);
    assert_eq!(cw2.0.load(Ordering::SeqCst), 1, "woken when key c frees");
    assert!(matches!(poll_with(wc.as_mut(), &kw2), Poll::Ready(Ok(_))));
}

/// Pool shrinks between grant and use: refused by the pool, steps back in, is
/// woken and admitted when the pool grows.
#[tokio::test(start_paused = true)]
async fn pool_refused_after_grant_is_readmitted_on_grow() {
    let pool = keyed_pool(2, 0, 10);
    let (tx1, rx1) = oneshot::channel::<()>();
    let _a = pool
        .submit(async move {
            let _ = rx1.await;
        })
        .await
        .unwrap();
    let (running, _d) = pending_job();
    let _b = pool.submit(running).await.unwrap();
    settle().await;
    assert_eq!(load(&pool), (2, 0));
    let (c, k) = counter();
    let mut w = pin!(pool.submit(async { 1 }));
    assert!(poll_with(w.as_mut(), &k).is_pending());
    tx1.send(()).unwrap();
    settle().await;
    assert_eq!(c.0.load(Ordering::SeqCst), 1, "granted");
    pool.resize(1);
    settle().await;
    let (c2, k2) = counter();
    assert!(
        poll_with(w.as_mut(), &k2).is_pending(),
        "refused: pool shrank"
    );
    pool.resize(2);
    settle().await;
    assert_eq!(c2.0.load(Ordering::SeqCst), 1, "woken on grow");
    assert!(matches!(poll_with(w.as_mut(), &k2), Poll::Ready(Ok(_))));
}

/// submit_timeout: granted, then refused by its key at the instant the wait runs
/// out: Timeout, with its own job back, and the place passes on.
#[tokio::test(start_paused = true)]
async fn timeout_after_key_refusal_returns_job_and_passes_place() {
    let pool = keyed_pool(1, 2, 2);
    let (running, _dropped) = pending_job();
    let _r = pool.submit(running).await.unwrap();
    settle().await;
    let _c1 = pool.job(async {}).key("c").submit().await.unwrap();
    let q = pool.submit(async {}).await.unwrap();
    let (_cw, kw) = counter();
    let mut wc = pin!(pool.job(async { 42 }).key("c").submit_timeout(5 * MS));
    assert!(poll_with(wc.as_mut(), &kw).is_pending());
    let (cu, ku) = counter();
    let mut wu = pin!(pool.submit(async { 7 }));
    assert!(poll_with(wu.as_mut(), &ku).is_pending());
    drop(q);
    pool.set_key_limits("c", KeyLimits::default().queue_capacity(1))
        .unwrap();
    tokio::time::advance(5 * MS).await;
    match poll_with(wc.as_mut(), &kw) {
        Poll::Ready(Err(e)) => {
            assert!(e.is_timeout());
            assert_eq!(e.into_inner().await, 42);
        }
        _ => panic!("must time out"),
    }
    assert_eq!(cu.0.load(Ordering::SeqCst), 1, "place passed on");
    assert!(matches!(poll_with(wu.as_mut(), &ku), Poll::Ready(Ok(_))));
}

/// Multi-thread churn: submitters with submit / submit_timeout / try_submit and
/// aborts; every non-aborted submitter must finish.
#[test]
fn multi_thread_churn_strands_nothing() {
    let iters: usize = std::env::var("CHURN_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    for it in 0..iters {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pool = keyed_pool(1 + it % 2, it % 3, 1 + it % 2);
            let mut tasks = Vec::new();
            for s in 0..16u64 {
                let p = pool.clone();
                tasks.push(tokio::spawn(async move {
                    let mut held = Vec::new();
                    for j in 0..200u64 {
                        let key = match (s + j) % 3 {
                            0 => None,
                            1 => Some("a"),
                            _ => Some("b"),
                        };
                        let job = with_key(
                            p.job(async move {
                                if j % 2 == 0 {
                                    tokio::task::yield_now().await
                                }
                            }),
                            key,
                        );
                        match (s * 7 + j) % 5 {
                            0 => {
                                let _ = job.submit_timeout(Duration::from_micros(50)).await;
                            }
                            1 => {
                                let _ = job.try_submit();
                            }
                            2 => {
                                let h = job.submit().await.unwrap();
                                let _ = h.await;
                            }
                            _ => {
                                let h = job.submit().await.unwrap();
                                held.push(h);
                                if held.len() > 3 {
                                    // Dropping the oldest handle cancels its job.
                                    drop(held.remove(0));
                                }
                            }
                        }
                    }
                }));
            }
            // Some aborters
            for s in 0..8u64 {
                let p = pool.clone();
                tasks.push(tokio::spawn(async move {
                    for j in 0..100u64 {
                        let p2 = p.clone();
                        let h = tokio::spawn(async move {
                            let _ = p2.submit(async {}).await;
                        });
                        if (s + j) % 2 == 0 {
                            tokio::task::yield_now().await;
                        }
                        h.abort();
                    }
                }));
            }
            let all = futures::future::join_all(tasks);
            match tokio::time::timeout(Duration::from_secs(30), all).await {
                Ok(rs) => {
                    for r in rs {
                        r.unwrap();
                    }
                }
                Err(_) => panic!("iteration {it}: stranded: stats {:?}", pool.stats()),
            }
            // Every job accepted has an outcome once the pool drains.
            tokio::time::timeout(Duration::from_secs(30), pool.shutdown())
                .await
                .unwrap_or_else(|_| panic!("iteration {it}: drains: {:?}", pool.stats()));
            let s = pool.stats();
            assert_eq!(
                s.submitted,
                s.completed + s.cancelled + s.timed_out + s.queue_timed_out + s.panicked,
                "iteration {it}: {s:?}"
            );
            assert_eq!((s.busy, s.queued), (0, 0), "iteration {it}");
        });
    }
}

#[tokio::test(start_paused = true)]
async fn spurious_polls_of_younger_waiter_do_not_jump_and_close_reaches_revoked() {
    for key in [None, Some("c")] {
        let (pool, _r, q) = one_place_taken(key).await;
        let (c1, k1) = counter();
        let (c2, k2) = counter();
        let mut w1 = pin!(with_key(pool.job(async { 1 }), key).submit());
        let mut w2 = pin!(with_key(pool.job(async { 2 }), key).submit());
        assert!(poll_with(w1.as_mut(), &k1).is_pending());
        for _ in 0..5 {
            assert!(poll_with(w2.as_mut(), &k2).is_pending());
        }
        drop(q);
        assert!(poll_with(w2.as_mut(), &k2).is_pending(), "w2 must not jump");
        assert_eq!(
            (c1.0.load(Ordering::SeqCst), c2.0.load(Ordering::SeqCst)),
            (1, 0)
        );
        // revoke w1's grant, leaving it with no waker stored, then close.
        let _probe = with_key(pool.job(async { 0 }), key)
            .try_submit()
            .unwrap_or_else(|_| panic!());
        pool.close();
        assert_eq!(c2.0.load(Ordering::SeqCst), 1, "w2 woken by close");
        match poll_with(w1.as_mut(), &k1) {
            Poll::Ready(Err(e)) => {
                assert!(e.is_closed());
                assert_eq!(e.into_inner().await, 1);
            }
            _ => panic!("w1 closed"),
        }
        assert!(matches!(poll_with(w2.as_mut(), &k2), Poll::Ready(Err(_))));
    }
}
