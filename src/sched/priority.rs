//! [`Priority`]: which startable job goes first.

/// How urgent a job is, set with [`JobBuilder::priority`](crate::JobBuilder::priority).
///
/// Among jobs that could start now, a higher priority starts first. A job that has
/// waited in the queue longer than the pool's
/// [`priority_aging`](crate::Builder::priority_aging) (1 s by default) ranks as
/// `High`, so a steady stream of urgent jobs cannot starve the others.
///
/// Priority orders starts only; it does not preempt running jobs, and it does not
/// lift a job over its key's limits.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use taskgate::{Pool, Priority};
///
/// let pool = Pool::new(1);
/// let order = Arc::new(Mutex::new(Vec::new()));
/// // Occupy the only worker, then queue three jobs.
/// let busy = pool.submit(tokio::time::sleep(Duration::from_millis(10))).await.unwrap();
/// tokio::task::yield_now().await; // the worker takes it
/// assert_eq!(pool.stats().busy, 1);
/// let mut handles = Vec::new();
/// for (name, priority) in [("low", Priority::Low), ("normal", Priority::Normal), ("high", Priority::High)] {
///     let order = order.clone();
///     let job = async move { order.lock().unwrap().push(name) };
///     handles.push(pool.job(job).priority(priority).submit().await.unwrap());
/// }
/// busy.await.unwrap();
/// for h in handles {
///     h.await.unwrap();
/// }
/// assert_eq!(*order.lock().unwrap(), ["high", "normal", "low"]);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Starts after every startable `Normal` and `High` job.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Starts before every startable `Normal` and `Low` job.
    High,
}

impl Priority {
    /// Index into per-priority arrays: `Low` = 0, `Normal` = 1, `High` = 2.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}
