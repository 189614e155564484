//! The remote-limiter seam against the real scheduler, with an in-memory stand-in
//! for Redis whose requests take a set latency, in paused time: jobs wait for a
//! refill without holding a worker and start when it lands, a job that leaves
//! while waiting takes nothing, a slot comes back whatever the job's ending, and
//! a request outliving its pool wakes nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Admit, Clock, Key, Remote, RemoteSpec, Rouse};
use crate::{JobError, Pool};

/// The "server": units anyone may take, and what was asked of it.
#[derive(Debug, Default)]
struct Store {
    units: u64,
    requests: u64,
    granted: u64,
    /// Units given back (slots).
    returned: u64,
}

/// A remote limit backed by a [`Store`]: a request takes up to `lease` units
/// after `latency`; with `slots`, a released unit goes back to the store.
#[derive(Debug, Clone)]
struct StandIn {
    store: Arc<Mutex<Store>>,
    latency: Duration,
    lease: u64,
    slots: bool,
}

impl StandIn {
    fn new(units: u64, slots: bool) -> StandIn {
        StandIn {
            store: Arc::new(Mutex::new(Store {
                units,
                ..Store::default()
            })),
            latency: Duration::from_millis(5),
            lease: 2,
            slots,
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    fn add(&self, n: u64) {
        self.store().units += n;
    }
}

#[derive(Debug, Default)]
struct Held {
    units: u64,
    asking: Option<Instant>,
}

#[derive(Debug)]
struct Limiter {
    spec: StandIn,
    held: Arc<Mutex<Held>>,
    rouse: Rouse,
}

impl RemoteSpec for StandIn {
    fn bind(&self, _: Option<&Key>, rouse: Rouse, _: usize) -> Box<dyn Remote> {
        Box::new(Limiter {
            spec: self.clone(),
            held: Arc::default(),
            rouse,
        })
    }

    fn id(&self) -> u64 {
        Arc::as_ptr(&self.store) as usize as u64
    }
}

impl Remote for Limiter {
    fn check(&self, clock: &mut Clock) -> Admit {
        let mut held = self.held.lock().unwrap();
        if held.units > 0 {
            return Admit::Now;
        }
        if let Some(d) = held.asking {
            return Admit::At(d);
        }
        let deadline = clock.now() + self.spec.latency * 10;
        held.asking = Some(deadline);
        let (spec, cell, rouse) = (self.spec.clone(), self.held.clone(), self.rouse.clone());
        self.rouse.runtime().spawn(async move {
            tokio::time::sleep(spec.latency).await;
            let got = {
                let mut store = spec.store();
                store.requests += 1;
                let got = store.units.min(spec.lease);
                store.units -= got;
                store.granted += got;
                got
            };
            {
                let mut held = cell.lock().unwrap();
                held.units += got;
                held.asking = None;
            }
            rouse.rouse();
        });
        Admit::At(deadline)
    }

    fn acquire(&mut self, _: &mut Clock) {
        let mut held = self.held.lock().unwrap();
        held.units = held.units.checked_sub(1).expect("acquired without a unit");
    }

    fn release(&mut self) {
        if self.spec.slots {
            let mut store = self.spec.store();
            store.units += 1;
            store.returned += 1;
        }
    }

    fn has_room(&self) -> bool {
        self.spec.slots
    }

    fn holds_until(&self, _: &mut Clock) -> Option<Instant> {
        None
    }
}

fn pool(spec: &StandIn, workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .test_remote(Arc::new(spec.clone()))
        .build()
        .unwrap()
}

async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// Advances paused time by `d` in 1 ms steps, letting tasks run at each.
async fn pass(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
    }
}

#[tokio::test(start_paused = true)]
async fn jobs_wait_for_a_refill_and_start_when_it_lands() {
    let spec = StandIn::new(0, false);
    let pool = pool(&spec, 4);
    let started = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..3 {
        let started = started.clone();
        handles.push(
            pool.submit(async move {
                started.fetch_add(1, Ordering::SeqCst);
            })
            .await
            .unwrap(),
        );
    }
    pass(Duration::from_millis(30)).await;
    assert_eq!(started.load(Ordering::SeqCst), 0, "no unit, no start");
    assert!(spec.store().requests >= 1, "it asked");
    // The store holds no unit: the jobs wait in the queue, holding no worker.
    let stats = pool.stats();
    assert_eq!((stats.busy, stats.queued), (0, 3));

    spec.add(2);
    pass(Duration::from_millis(30)).await;
    assert_eq!(started.load(Ordering::SeqCst), 2, "two units, two starts");
    spec.add(5);
    pass(Duration::from_millis(30)).await;
    assert_eq!(started.load(Ordering::SeqCst), 3);
    for h in handles {
        assert_eq!(h.await, Ok(()));
    }
    let store = spec.store();
    // Leases of 2: the third job's request took 2, one is still held locally.
    assert_eq!(store.granted, 4);
    assert_eq!(store.units, 3);
}

#[tokio::test(start_paused = true)]
async fn a_refill_lands_without_a_timer_tick_of_its_own() {
    // The request's deadline is 10× its latency: the job must start when the
    // answer lands (the rouse), not at the deadline.
    let spec = StandIn::new(1, false);
    let pool = pool(&spec, 1);
    let t0 = Instant::now();
    let started = pool.run(async { Instant::now() }).await.unwrap();
    let waited = started - t0;
    assert!(
        waited >= spec.latency && waited < spec.latency * 2,
        "started {waited:?} after submit; latency {:?}",
        spec.latency
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_cancelled_while_waiting_takes_no_unit() {
    let spec = StandIn::new(0, false);
    let pool = pool(&spec, 2);
    let a = pool.submit(async {}).await.unwrap();
    pass(Duration::from_millis(20)).await;
    drop(a);
    settle().await;
    spec.add(1);
    pass(Duration::from_millis(30)).await;
    // The unit came in for nobody: it is held, not spent.
    assert_eq!(spec.store().granted, 1);
    let requests = spec.store().requests;
    let t0 = Instant::now();
    let b = pool.run(async { Instant::now() }).await.unwrap();
    assert_eq!(b, t0, "B starts at once with the unit A did not take");
    assert_eq!(spec.store().requests, requests, "no new request");
    assert_eq!(pool.stats().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn a_queue_timeout_still_fires_while_waiting() {
    let spec = StandIn::new(0, false);
    let pool = Pool::builder()
        .workers(2)
        .queue_timeout(Duration::from_millis(40))
        .test_remote(Arc::new(spec.clone()))
        .build()
        .unwrap();
    let h = pool.submit(async {}).await.unwrap();
    pass(Duration::from_millis(60)).await;
    assert_eq!(h.await, Err(JobError::QueueTimedOut));
    assert_eq!(pool.stats().queue_timed_out, 1);
}

#[tokio::test(start_paused = true)]
async fn a_slot_comes_back_whatever_the_ending() {
    let spec = StandIn::new(1, true);
    let pool = Pool::builder()
        .workers(4)
        .test_remote(Arc::new(spec.clone()))
        .build()
        .unwrap();
    // Completed, panicked, timed out, cancelled while running: each gives the
    // one slot back, so the next job can run.
    assert_eq!(pool.run(async { 1 }).await, Ok(1));
    let r = pool
        .run(async {
            panic!("boom");
        })
        .await;
    assert!(matches!(r, Err(JobError::Panicked(_))), "{r:?}");
    let r = pool
        .job(std::future::pending::<()>())
        .timeout(Duration::from_millis(10))
        .run()
        .await;
    assert_eq!(r, Err(JobError::TimedOut));
    let h = pool.submit(std::future::pending::<()>()).await.unwrap();
    pass(Duration::from_millis(20)).await;
    assert_eq!(pool.stats().busy, 1);
    h.cancel();
    pass(Duration::from_millis(5)).await;
    assert_eq!(pool.run(async { 2 }).await, Ok(2));
    let store = spec.store();
    assert_eq!(store.returned, 5, "every ending gave its slot back");
    assert_eq!(store.granted - store.returned + store.units, 1, "{store:?}");
}

#[tokio::test(start_paused = true)]
async fn a_request_outliving_its_pool_wakes_nothing() {
    let spec = StandIn::new(0, false);
    let pool = pool(&spec, 1);
    let h = pool.submit(async {}).await.unwrap();
    settle().await;
    pool.abort();
    drop(pool);
    assert_eq!(h.await, Err(JobError::Cancelled));
    spec.add(1);
    // The request lands after the pool is gone: no panic, nothing to wake.
    pass(Duration::from_millis(30)).await;
}
