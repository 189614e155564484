//! [`Group`]: fan out jobs to a pool and collect their results, like an errgroup.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{FuturesUnordered, StreamExt};

use crate::error::{JobError, SubmitError};
use crate::job::JobHandle;
use crate::pool::Pool;

impl Pool {
    /// A new, empty [`Group`] of jobs on this pool: fan out, then collect with
    /// `join_next`, `join_all` or `try_join_all`. Dropping the group cancels its
    /// unfinished jobs.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let pool = taskgate::Pool::new(8);
    /// let mut group = pool.group::<usize>();
    /// for word in ["fan", "out", "collect"] {
    ///     group.submit(async move { word.len() }).await.unwrap();
    /// }
    /// let mut total = 0;
    /// while let Some(r) = group.join_next().await {
    ///     total += r.unwrap();
    /// }
    /// assert_eq!(total, 13);
    /// # }
    /// ```
    pub fn group<T: Send + 'static>(&self) -> Group<T> {
        Group::new(self.clone())
    }
}

/// A set of jobs submitted to one pool, to collect as they finish
/// ([`join_next`](Group::join_next)) or all at once in submission order
/// ([`join_all`](Group::join_all), [`try_join_all`](Group::try_join_all)).
///
/// Made by [`Pool::group`]. The jobs run on the pool's workers under its limit, so a
/// group can fan out thousands of jobs without thousands of tasks, and unlike
/// `JoinSet` it is bounded.
///
/// **Dropping a `Group` cancels its unfinished jobs**: queued ones never start,
/// running ones are dropped at their next `.await`. Results not yet joined are lost.
/// Each job has the pool's default run and queue timeouts; one that times out
/// joins as `Err(JobError::TimedOut)` (or `QueueTimedOut`). The group holds a clone
/// of the pool, so the pool stays open while the group lives.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pool = taskgate::Pool::new(4);
/// let mut group = pool.group();
/// for n in 1..=5u64 {
///     group.submit(async move { n * n }).await.unwrap();
/// }
/// let squares: Vec<u64> = group.join_all().await.into_iter().map(Result::unwrap).collect();
/// assert_eq!(squares, [1, 4, 9, 16, 25]);
/// # }
/// ```
pub struct Group<T> {
    pool: Pool,
    running: FuturesUnordered<Indexed<T>>,
    next: usize,
}

/// A handle with its submission index.
struct Indexed<T> {
    index: usize,
    handle: JobHandle<T>,
}

impl<T> Future for Indexed<T> {
    type Output = (usize, Result<T, JobError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let index = self.index;
        Pin::new(&mut self.handle).poll(cx).map(|r| (index, r))
    }
}

impl<T: Send + 'static> Group<T> {
    pub(crate) fn new(pool: Pool) -> Self {
        Group {
            pool,
            running: FuturesUnordered::new(),
            next: 0,
        }
    }

    /// Submits a job to the group's pool, waiting for queue space like
    /// [`Pool::submit`].
    ///
    /// # Errors
    ///
    /// [`SubmitError::Closed`] if the pool is closed; the future comes back inside.
    ///
    /// # Cancel safety
    ///
    /// Dropping the call before it returns drops the job's future un-run; the group
    /// is unchanged.
    pub async fn submit<F>(&mut self, fut: F) -> Result<(), SubmitError<F>>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let handle = self.pool.submit(fut).await?;
        self.running.push(Indexed {
            index: self.next,
            handle,
        });
        self.next += 1;
        Ok(())
    }

    /// Waits for the next job to finish, in any order, and returns its result;
    /// `None` when no job is left.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a result is removed from the group only when this returns it.
    pub async fn join_next(&mut self) -> Option<Result<T, JobError>> {
        self.running.next().await.map(|(_, r)| r)
    }

    /// Waits for every job and returns the results in submission order.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the call drops the group, which cancels the jobs
    /// that are still running, and loses the results collected so far.
    pub async fn join_all(mut self) -> Vec<Result<T, JobError>> {
        // Indices of the jobs left need not be contiguous (`join_next` may have taken
        // some): collect with their index and sort.
        let mut out = Vec::with_capacity(self.running.len());
        while let Some(pair) = self.running.next().await {
            out.push(pair);
        }
        out.sort_unstable_by_key(|&(i, _)| i);
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// The number of jobs submitted and not yet joined.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether there is no job left to join.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl<U, E> Group<Result<U, E>>
where
    U: Send + 'static,
    E: Send + 'static,
{
    /// Waits for every job and returns their outputs in submission order, or
    /// returns at the first failure (a job's own `Err`, or a [`JobError`]) and
    /// cancels the rest.
    ///
    /// # Errors
    ///
    /// [`GroupError::Job`] with the first job's own error, or [`GroupError::Pool`]
    /// if a job ended without output (panic, timeout, cancel).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the call drops the group and cancels its jobs.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use taskgate::GroupError;
    ///
    /// let pool = taskgate::Pool::new(4);
    /// let mut group = pool.group();
    /// group.submit(async { Ok::<u32, String>(1) }).await.unwrap();
    /// group.submit(async { Err::<u32, String>("bad input".into()) }).await.unwrap();
    /// group.submit(std::future::pending()).await.unwrap(); // cancelled on failure
    /// let err = group.try_join_all().await.unwrap_err();
    /// assert!(matches!(err, GroupError::Job(e) if e == "bad input"));
    /// # }
    /// ```
    pub async fn try_join_all(mut self) -> Result<Vec<U>, GroupError<E>> {
        let mut out = Vec::with_capacity(self.running.len());
        while let Some((i, r)) = self.running.next().await {
            match r {
                Ok(Ok(v)) => out.push((i, v)),
                // Returning drops `self`, which cancels the jobs still running.
                Ok(Err(e)) => return Err(GroupError::Job(e)),
                Err(e) => return Err(GroupError::Pool(e)),
            }
        }
        out.sort_unstable_by_key(|&(i, _)| i);
        Ok(out.into_iter().map(|(_, v)| v).collect())
    }
}

impl<T> fmt::Debug for Group<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("pool", &self.pool.name())
            .field("len", &self.running.len())
            .finish()
    }
}

/// Why [`Group::try_join_all`] stopped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use taskgate::{GroupError, JobError};
///
/// let pool = taskgate::Pool::new(2);
/// let mut group = pool.group::<Result<(), String>>();
/// group.submit(async { panic!("bug") }).await.unwrap();
/// match group.try_join_all().await {
///     Err(GroupError::Pool(JobError::Panicked(msg))) => assert_eq!(msg, "bug"),
///     other => panic!("{other:?}"),
/// }
/// # }
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum GroupError<E> {
    /// A job returned its own error.
    Job(E),
    /// A job ended without output: it panicked, timed out or was cancelled.
    Pool(JobError),
}

impl<E: fmt::Display> fmt::Display for GroupError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupError::Job(e) => write!(f, "job failed: {e}"),
            GroupError::Pool(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for GroupError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GroupError::Job(e) => Some(e),
            GroupError::Pool(e) => Some(e),
        }
    }
}
