//! Semantic 5: a panicking job resolves as Panicked(msg); its worker carries on.

mod support;

use support::*;
use taskgate::JobError;

#[tokio::test(start_paused = true)]
async fn a_panic_becomes_an_error_with_its_message() {
    let pool = pool(1, 10);
    let r = pool.run(async { panic!("boom {}", 7) }).await;
    assert_eq!(r, Err(JobError::Panicked("boom 7".into())));
    let r = pool.run(async { std::panic::panic_any(5u8) }).await;
    assert!(matches!(r, Err(JobError::Panicked(_))));
    let r = pool.run(async { panic!("static") }).await;
    assert_eq!(r.unwrap_err().to_string(), "job panicked: static");
}

#[tokio::test(start_paused = true)]
async fn the_worker_keeps_serving_after_a_panic() {
    let pool = pool(2, 100);
    let mut handles = Vec::new();
    for i in 0..20u32 {
        handles.push(
            pool.submit(async move {
                tokio::task::yield_now().await;
                if i % 3 == 0 {
                    panic!("job {i}");
                }
                i
            })
            .await
            .unwrap(),
        );
    }
    for (i, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(v) => assert_eq!(v as usize, i),
            Err(JobError::Panicked(msg)) => assert_eq!(msg, format!("job {i}")),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let s = pool.stats();
    assert_eq!((s.panicked, s.completed, s.workers), (7, 13, 2));
    // Both workers still serve.
    let g = Gauge::default();
    let a = pool
        .submit(held(&g, std::time::Duration::from_millis(1)))
        .await
        .unwrap();
    let b = pool
        .submit(held(&g, std::time::Duration::from_millis(1)))
        .await
        .unwrap();
    settle().await;
    assert_eq!(g.now(), 2);
    a.await.unwrap();
    b.await.unwrap();
    assert_accounted(&pool);
}

#[tokio::test(start_paused = true)]
async fn a_detached_panic_is_counted() {
    let pool = pool(1, 10);
    pool.spawn(async { panic!("detached") }).await.unwrap();
    pool.shutdown().await;
    assert_eq!(pool.stats().panicked, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_blocking_panic_is_reported() {
    let pool = pool(1, 10);
    let h = pool
        .submit_blocking(|| panic!("in a thread"))
        .await
        .unwrap();
    assert_eq!(h.await, Err(JobError::Panicked("in a thread".into())));
    assert_eq!(pool.stats().panicked, 1);
}

struct PanicOnDrop;
impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("drop panicked");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_a_cancelled_jobs_drop_does_not_kill_the_worker() {
    let pool = pool(1, 10);
    let h = pool
        .submit(async {
            let _p = PanicOnDrop;
            std::future::pending::<()>().await
        })
        .await
        .unwrap();
    settle().await;
    drop(h);
    // The worker caught the panic and carries on.
    assert_eq!(pool.run(async { 1 }).await, Ok(1));
    let s = pool.stats();
    assert_eq!((s.cancelled, s.completed, s.workers), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_an_unread_outputs_drop_does_not_kill_the_worker() {
    let pool = pool(1, 10);
    pool.spawn(async { PanicOnDrop }).await.unwrap();
    assert_eq!(pool.run(async { 2 }).await, Ok(2));
    assert_eq!(pool.stats().completed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_output_dropped_by_the_worker_does_not_abort_the_pool() {
    // The handle is dropped just after the result is stored, so the worker holds the
    // last reference to the unread output and drops it.
    let pool = pool(1, 10);
    for _ in 0..200 {
        let h = pool.submit(async { PanicOnDrop }).await.unwrap();
        while !h.is_finished() {
            tokio::task::yield_now().await;
        }
        // Whoever drops the last reference drops the output: here (a panic in the
        // caller, caught) or on the worker (caught by the worker).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(h)));
    }
    assert!(!pool.is_closed(), "a drop panic must not abort the pool");
    assert_eq!(pool.run(async { 3 }).await, Ok(3));
}
