//! Compile-time checks of the public types, and their Debug/Display output.

use std::error::Error;

use taskgate::*;

fn is_send_sync<T: Send + Sync>() {}
fn is_send<T: Send>(_: &T) {}

#[test]
fn public_types_are_send_and_sync() {
    is_send_sync::<Pool>();
    is_send_sync::<Builder>();
    is_send_sync::<JobHandle<String>>();
    is_send_sync::<JobId>();
    is_send_sync::<JobError>();
    is_send_sync::<BuildError>();
    is_send_sync::<SubmitError<()>>();
    is_send_sync::<TrySubmitError<()>>();
    is_send_sync::<Stats>();
    is_send_sync::<Latency>();
    is_send_sync::<ShutdownReport>();
}

#[tokio::test]
async fn futures_are_send_even_with_borrowed_static_outputs() {
    let pool = Pool::new(2);
    is_send(&pool.submit(async { "static str" }));
    is_send(&pool.run(async { "static str" }));
    is_send(&pool.spawn(async {}));
    is_send(&pool.shutdown());
    is_send(&pool.submit_blocking(|| "static str"));
    let p = pool.clone();
    let joined = tokio::spawn(async move {
        let a = p.submit(async { "a" }).await.unwrap().await.unwrap();
        let b = p.run(async { "b" }).await.unwrap();
        let c = p
            .job(async { "c" })
            .submit_timeout(std::time::Duration::from_secs(1))
            .await
            .unwrap()
            .await
            .unwrap();
        let d = p.submit_blocking(|| "d").await.unwrap().await.unwrap();
        p.spawn(async { "e" }).await.unwrap();
        format!("{a}{b}{c}{d}")
    });
    assert_eq!(joined.await.unwrap(), "abcd");
}

#[test]
fn errors_display_lowercase_without_a_period_and_debug_without_the_job() {
    struct NotDebug;
    let cases: Vec<(Box<dyn Error>, &str)> = vec![
        (Box::new(JobError::Cancelled), "job cancelled"),
        (Box::new(JobError::TimedOut), "job timed out"),
        (
            Box::new(JobError::QueueTimedOut),
            "job timed out in the queue",
        ),
        (Box::new(JobError::Panicked("x".into())), "job panicked: x"),
        (Box::new(JobError::Closed), "pool closed"),
        (Box::new(SubmitError::Closed(NotDebug)), "pool closed"),
        (
            Box::new(SubmitError::Timeout(NotDebug)),
            "timed out waiting for queue space",
        ),
        (Box::new(TrySubmitError::Full(NotDebug)), "queue full"),
        (Box::new(TrySubmitError::Closed(NotDebug)), "pool closed"),
    ];
    for (e, want) in cases {
        assert_eq!(e.to_string(), want);
        assert!(e.source().is_none());
    }
    assert_eq!(
        format!("{:?}", SubmitError::Timeout(NotDebug)),
        "Timeout(..)"
    );
    assert_eq!(format!("{:?}", TrySubmitError::Full(NotDebug)), "Full(..)");
    assert!(SubmitError::Closed(NotDebug).is_closed());
    assert!(TrySubmitError::Closed(NotDebug).is_closed());
    assert!(!TrySubmitError::Full(NotDebug).is_closed());
}

#[tokio::test]
async fn debug_output_is_useful() {
    let pool = Pool::builder().workers(3).name("db").build().unwrap();
    let s = format!("{pool:?}");
    assert!(s.contains("\"db\"") && s.contains("workers: 3"), "{s}");
    let b = format!("{:?}", Pool::builder().workers(2));
    assert!(b.contains("Some(2)"), "{b}");
    let jb = format!(
        "{:?}",
        pool.job(async {})
            .timeout(std::time::Duration::from_secs(1))
    );
    assert!(jb.contains("timeout: Some(1s)"), "{jb}");
}
