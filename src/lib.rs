//! A bounded worker pool for Tokio: a fixed number of long-lived worker tasks run
//! jobs from a bounded queue, with cancel-on-drop, per-job timeouts, graceful
//! shutdown, runtime resizing and cheap stats.
//!
//! Replace a spawn loop that grows without bound:
//!
//! ```
//! # async fn work(x: u64) -> u64 { x * 2 }
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // Before: one task per item, all at once.
//! //     for x in 0..10_000 { tokio::spawn(work(x)); }
//!
//! // After: at most 64 run at once, at most 640 wait; the loop waits when full.
//! let pool = taskgate::Pool::builder().workers(64).build().unwrap();
//! for x in 0..10_000 {
//!     pool.spawn(work(x)).await.unwrap();
//! }
//! pool.shutdown().await; // wait for all of them
//! assert_eq!(pool.stats().completed, 10_000);
//! # }
//! ```
//!
//! Or wrap outbound calls, with each call's result coming back to its caller:
//!
//! ```
//! # async fn fetch(url: &str) -> usize { url.len() }
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let pool = taskgate::Pool::new(16);
//! let len = pool.run(fetch("https://example.com/")).await.unwrap();
//! # assert_eq!(len, 20);
//! # }
//! ```
//!
//! # What happens when
//!
//! - **A caller goes away.** Dropping a [`JobHandle`], or a [`Pool::run`] future,
//!   cancels the job: a queued job never starts (its queue slot frees at once), and
//!   a running job is dropped at its next `.await`, before its worker takes another
//!   job. [`JobHandle::detach`] lets a job run on without its caller.
//! - **A job takes too long.** A run timeout ([`Builder::job_timeout`],
//!   [`JobBuilder::timeout`]) drops a running job and frees its slot at once; a queue
//!   timeout ([`Builder::queue_timeout`], [`JobBuilder::queue_timeout`]) drops a job
//!   that waited too long to start. The handle gets [`JobError::TimedOut`] or
//!   [`JobError::QueueTimedOut`].
//! - **A job panics.** Its handle gets [`JobError::Panicked`] with the message; its
//!   worker carries on.
//! - **The pool closes** ([`Pool::close`], or the last [`Pool`] clone is dropped).
//!   No new job is accepted, and waiting submitters get their job back in
//!   [`SubmitError::Closed`]. Jobs already accepted still run: closing never cancels.
//!   [`Pool::shutdown`] closes and waits for them; [`Pool::shutdown_timeout`] waits
//!   up to a deadline and then cancels the rest; [`Pool::abort`] cancels everything now.
//!
//! Every accepted job resolves its handle exactly once, and every refused job comes
//! back to its caller inside the error.
//!
//! # Limits
//!
//! Cancellation works at `.await` points: a job that never yields (a long loop
//! without `.await`, or `std::thread::sleep`) cannot be cancelled or timed out while
//! it runs, and it blocks its runtime thread. Put such work in
//! [`Pool::submit_blocking`].
//!
//! **Panics in `Drop`.** A job's future, or an output nobody will read, is dropped
//! on the worker inside `catch_unwind`: a panic there is logged at `WARN`, the job's
//! outcome stands, and the worker carries on. An output the caller does read is
//! dropped by the caller, like any value it owns. With `panic = "abort"` no panic is
//! caught anywhere, and a panicking job aborts the process.
//!
//! **Re-entrancy.** A job may submit jobs to its own pool, but if it then waits for
//! them while every worker is busy with such parents and the queue is full, nothing
//! can make progress: a deadlock. Give the child a way out: use
//! [`Pool::try_submit`] or [`Pool::submit_timeout`] and run the child inline when
//! it is refused (the error hands it back), or submit children to a separate pool.
//!
//! # Rates, keys, priorities and pauses
//!
//! Beyond the worker count, one scheduler enforces these, and a job counts once
//! against each that applies to it (a job cancelled or timed out while queued counts
//! against none):
//!
//! - **A start rate** for the pool, [`Builder::rate_limit`] with a [`Rate`] (GCRA,
//!   with a burst): over any window `t`, at most `burst + n × t / period` jobs start.
//! - **Per-key limits**: tag a job with [`JobBuilder::key`] (a [`Key`]: a tenant, a
//!   host) and give keys a concurrency cap, a rate and a queue capacity with
//!   [`KeyLimits`], for every key ([`Builder::key_limits`]) or one
//!   ([`Pool::set_key_limits`]). A key at its limits holds no worker and does not
//!   hold up other keys; keys with startable jobs take turns. A key's state is
//!   dropped once it has nothing queued, running, paused or owed.
//! - **Priorities**: [`JobBuilder::priority`] with [`Priority`]; among jobs that may
//!   start, higher first; a job that waited [`Builder::priority_aging`] ranks as
//!   `High`.
//! - **Pauses**: [`Pool::pause_for`] and [`Pool::pause_key_for`] start nothing (of
//!   that key) for a while, to honour a `429` with `Retry-After`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use taskgate::{KeyLimits, Pool, Priority, Rate};
//! use tokio::time::Instant;
//!
//! let pool = Pool::builder()
//!     .workers(16)
//!     .rate_limit(Rate::per_second(100).burst(10))
//!     .key_limits(KeyLimits::default().concurrency(2).rate(Rate::per_second(5)))
//!     .build()?;
//!
//! // Ten calls to one host: 2 at a time, at most 5 starts a second.
//! let t0 = Instant::now();
//! let mut handles = Vec::new();
//! for _ in 0..10 {
//!     let call = async { Instant::now() }; // stands for the real call
//!     handles.push(pool.job(call).key("api.example.com").submit().await?);
//! }
//! let mut last_start = t0;
//! for h in handles {
//!     last_start = last_start.max(h.await?);
//! }
//! // The first started at once, then one every 200 ms.
//! assert_eq!(last_start, t0 + Duration::from_millis(1_800));
//!
//! // An urgent call to another host goes ahead of queued Normal jobs (only jobs
//! // that have waited `priority_aging` rank with it).
//! let urgent = pool.job(async { "now" }).key("other.example.com").priority(Priority::High);
//! assert_eq!(urgent.run().await, Ok("now"));
//!
//! // The host answered 429 with Retry-After: 30.
//! pool.pause_key_for("api.example.com", Duration::from_secs(30));
//! # Ok(())
//! # }
//! ```
//!
//! # Fitting in
//!
//! - [`Pool::group`] fans out and collects, like an errgroup: [`Group::join_next`],
//!   [`Group::join_all`] in submission order, and [`Group::try_join_all`], which stops
//!   at the first failure and cancels the rest. Dropping a group cancels its jobs.
//! - [`PoolStreamExt`] maps a `Stream` through a pool: [`map_pooled`](PoolStreamExt::map_pooled)
//!   keeps input order, [`map_pooled_unordered`](PoolStreamExt::map_pooled_unordered)
//!   yields as jobs finish. The jobs run on workers, so a slow consumer does not stall
//!   them (unlike `buffer_unordered`).
//! - `taskgate::tower::PoolLayer` (feature `tower`) runs a tower service's calls on a
//!   pool, without reserving anything in `poll_ready`.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tower` | off | [`tower::PoolLayer`](crate::tower), a `tower::Layer` whose service runs calls on the pool |
//! | `metrics` | off | counters `taskgate_jobs_total{outcome}` and `taskgate_rejected_total`, gauges `taskgate_workers`, `taskgate_busy`, `taskgate_queued`, and histograms `taskgate_queue_wait_seconds`, `taskgate_run_seconds`, through the `metrics` facade, labelled `pool` (install the recorder before building the pool, and give each pool its own name: pools that share a name share series) |
//!
//! With no features the crate depends on tokio, tokio-util, futures, tracing and
//! pin-project-lite only.
//!
//! # Tracing
//!
//! Each job runs inside a `DEBUG` span named `taskgate.job`, with `pool` (the name)
//! and `job` (the id) fields, whose parent is the span that was current when the job
//! was submitted. Cancellations, timeouts and refusals are logged at `DEBUG`;
//! panics at `WARN`.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![doc(test(attr(deny(warnings))))]

// The layers, bottom to top: each imports only from the modules listed before it
// (`error` is used by all). See ARCHITECTURE.md.
mod error;

mod stats;

mod limit;

mod job;

mod sched;

mod worker;

mod pool;

mod adapters;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use adapters::tower;
pub use adapters::{Group, GroupError};
pub use adapters::{MapPooled, MapPooledUnordered, PoolStreamExt};
pub use error::{BuildError, JobError, LimitError, SubmitError, TrySubmitError};
pub use job::{JobHandle, JobId};
pub use limit::{Adaptive, AdaptiveError, Outcome, Rate};
pub use limit::{Key, KeyLimits, KeyStats};
pub use pool::{Builder, JobBuilder, Pool};
pub use sched::Priority;
pub use stats::{Latency, ShutdownReport, Stats};
