//! [`PoolStreamExt`]: map a `Stream` through a pool, with real parallelism.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::stream::{FusedStream, FuturesUnordered, Stream, StreamExt};
use pin_project_lite::pin_project;

use crate::error::{JobError, TrySubmitError};
use crate::job::JobHandle;
use crate::pool::Pool;

/// The most jobs a stream adapter keeps in flight by default, whatever the pool size.
const MAX_DEFAULT_WINDOW: usize = 1024;

/// A submission waiting for queue space.
type PendingSubmit<T> = Pin<Box<dyn Future<Output = Result<JobHandle<T>, JobError>> + Send>>;

/// Runs a stream's items through a [`Pool`]: each item becomes a job, and the jobs
/// run on the pool's workers, in parallel and under its limit.
///
/// Unlike `futures`' `buffered` and `buffer_unordered`, which poll every future on the
/// one task that consumes the stream (so a slow consumer stalls them all,
/// futures-rs#2387), the jobs here progress on the workers while the consumer is
/// busy. Each adapter keeps at most `window` jobs in flight: by default the pool's
/// worker count when the adapter is made (at least 1, at most 1024); set it with
/// `.window(n)`. **Dropping the stream cancels its queued and running jobs.** Each
/// job has the pool's default run and queue timeouts, and a job that times out,
/// panics or is refused (the pool closed) yields its [`JobError`] in its place.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use futures::StreamExt;
/// use taskgate::PoolStreamExt;
///
/// let pool = taskgate::Pool::new(4);
/// let doubled: Vec<_> = futures::stream::iter(1..=5)
///     .map_pooled(&pool, |n| async move { n * 2 })
///     .map(Result::unwrap)
///     .collect()
///     .await;
/// assert_eq!(doubled, [2, 4, 6, 8, 10]);
/// # }
/// ```
pub trait PoolStreamExt: Stream + Sized {
    /// Maps each item to a job on `pool`, yielding `Result<output, JobError>` **in
    /// input order**.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use futures::StreamExt;
    /// use taskgate::PoolStreamExt;
    ///
    /// let pool = taskgate::Pool::new(3);
    /// let out: Vec<_> = futures::stream::iter([30u64, 10, 20])
    ///     .map_pooled(&pool, |ms| async move {
    ///         tokio::time::sleep(Duration::from_millis(ms)).await;
    ///         ms
    ///     })
    ///     .collect()
    ///     .await;
    /// assert_eq!(out, [Ok(30), Ok(10), Ok(20)]); // input order
    /// # }
    /// ```
    fn map_pooled<F, Fut>(self, pool: &Pool, f: F) -> MapPooled<Self, F, Fut::Output>
    where
        F: FnMut(Self::Item) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        MapPooled {
            feed: Feed::new(self, f, pool),
            in_flight: VecDeque::new(),
        }
    }

    /// Maps each item to a job on `pool`, yielding `Result<output, JobError>` **as
    /// the jobs finish**.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use futures::StreamExt;
    /// use taskgate::PoolStreamExt;
    ///
    /// let pool = taskgate::Pool::new(3);
    /// let out: Vec<_> = futures::stream::iter([30u64, 10, 20])
    ///     .map_pooled_unordered(&pool, |ms| async move {
    ///         tokio::time::sleep(Duration::from_millis(ms)).await;
    ///         ms
    ///     })
    ///     .collect()
    ///     .await;
    /// assert_eq!(out, [Ok(10), Ok(20), Ok(30)]); // finishing order
    /// # }
    /// ```
    fn map_pooled_unordered<F, Fut>(
        self,
        pool: &Pool,
        f: F,
    ) -> MapPooledUnordered<Self, F, Fut::Output>
    where
        F: FnMut(Self::Item) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        MapPooledUnordered {
            feed: Feed::new(self, f, pool),
            in_flight: FuturesUnordered::new(),
        }
    }
}

impl<S: Stream> PoolStreamExt for S {}

/// Submits `fut` without waiting if there is space; otherwise returns a boxed
/// submission that waits for it. A closed pool gives a ready `Err(Closed)` handle
/// in its place.
fn submit_now<Fut>(
    pool: &Pool,
    fut: Fut,
) -> Result<JobHandle<Fut::Output>, SubmitState<Fut::Output>>
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    match pool.probe_submit(fut) {
        Ok(h) => Ok(h),
        Err(TrySubmitError::Closed(_)) => Err(SubmitState::Closed),
        Err(TrySubmitError::Full(fut)) => {
            let pool = pool.clone();
            Err(SubmitState::Waiting(Box::pin(async move {
                pool.submit(fut).await.map_err(|_| JobError::Closed)
            })))
        }
    }
}

enum SubmitState<T> {
    Waiting(PendingSubmit<T>),
    Closed,
}

/// A job in flight, or a placeholder for one the pool refused (kept in order).
enum Slot<T> {
    Job(JobHandle<T>),
    Refused,
}

impl<T> Future for Slot<T> {
    type Output = Result<T, JobError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Slot::Job(h) => Pin::new(h).poll(cx),
            Slot::Refused => Poll::Ready(Err(JobError::Closed)),
        }
    }
}

/// Where an adapter keeps its jobs in flight: a `VecDeque` (input order) or a
/// `FuturesUnordered` (finishing order).
trait InFlight<T> {
    fn add(&mut self, slot: Slot<T>);
    fn count(&self) -> usize;
}

impl<T> InFlight<T> for VecDeque<Slot<T>> {
    fn add(&mut self, slot: Slot<T>) {
        self.push_back(slot);
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl<T> InFlight<T> for FuturesUnordered<Slot<T>> {
    fn add(&mut self, slot: Slot<T>) {
        self.push(slot);
    }
    fn count(&self) -> usize {
        self.len()
    }
}

pin_project! {
    /// The input side both adapters share: the stream, the mapping, the window, and
    /// a submission waiting for queue space.
    struct Feed<S, F, T> {
        #[pin]
        stream: S,
        f: F,
        pool: Pool,
        window: usize,
        pending: Option<PendingSubmit<T>>,
        done: bool,
    }
}

impl<S, F, T> Feed<S, F, T> {
    fn new(stream: S, f: F, pool: &Pool) -> Self {
        Feed {
            stream,
            f,
            pool: pool.clone(),
            window: pool.stats().workers.clamp(1, MAX_DEFAULT_WINDOW),
            pending: None,
            done: false,
        }
    }

    /// The input is exhausted and nothing is waiting to be submitted.
    fn finished(&self) -> bool {
        self.done && self.pending.is_none()
    }
}

impl<S, F, Fut> Feed<S, F, Fut::Output>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    /// Pulls items and submits them until the window is full, the input is pending
    /// or done, or a submission has to wait for queue space.
    fn fill<Q: InFlight<Fut::Output>>(
        self: Pin<&mut Self>,
        in_flight: &mut Q,
        cx: &mut Context<'_>,
    ) {
        let mut this = self.project();
        loop {
            if let Some(p) = this.pending.as_mut() {
                match p.as_mut().poll(cx) {
                    Poll::Ready(Ok(h)) => in_flight.add(Slot::Job(h)),
                    Poll::Ready(Err(_)) => in_flight.add(Slot::Refused),
                    Poll::Pending => return,
                }
                *this.pending = None;
            }
            if *this.done || in_flight.count() >= *this.window {
                return;
            }
            match this.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => match submit_now(this.pool, (this.f)(item)) {
                    Ok(h) => in_flight.add(Slot::Job(h)),
                    Err(SubmitState::Closed) => in_flight.add(Slot::Refused),
                    Err(SubmitState::Waiting(p)) => *this.pending = Some(p),
                },
                Poll::Ready(None) => *this.done = true,
                Poll::Pending => return,
            }
        }
    }
}

pin_project! {
    /// The stream returned by [`PoolStreamExt::map_pooled`]. Dropping it cancels its
    /// queued and running jobs.
    #[must_use = "streams do nothing unless polled"]
    pub struct MapPooled<S, F, T> {
        #[pin]
        feed: Feed<S, F, T>,
        in_flight: VecDeque<Slot<T>>,
    }
}

impl<S, F, T> MapPooled<S, F, T> {
    /// Sets how many jobs this stream keeps in flight (at least 1).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use futures::StreamExt;
    /// use taskgate::PoolStreamExt;
    ///
    /// let pool = taskgate::Pool::new(64);
    /// // At most 4 of this stream's jobs at a time, though the pool allows 64.
    /// let n = futures::stream::iter(0..100)
    ///     .map_pooled(&pool, |i| async move { i })
    ///     .window(4)
    ///     .count()
    ///     .await;
    /// assert_eq!(n, 100);
    /// # }
    /// ```
    pub fn window(mut self, n: usize) -> Self {
        self.feed.window = n.max(1);
        self
    }
}

impl<S, F, Fut> Stream for MapPooled<S, F, Fut::Output>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    type Item = Result<Fut::Output, JobError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        this.feed.as_mut().fill(this.in_flight, cx);
        // Yield the oldest job's result when it is ready.
        if let Some(front) = this.in_flight.front_mut() {
            let r = ready!(Pin::new(front).poll(cx));
            this.in_flight.pop_front();
            return Poll::Ready(Some(r));
        }
        if this.feed.finished() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl<S, F, Fut> FusedStream for MapPooled<S, F, Fut::Output>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn is_terminated(&self) -> bool {
        self.feed.finished() && self.in_flight.is_empty()
    }
}

impl<S, F, T> fmt::Debug for MapPooled<S, F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapPooled")
            .field("pool", &self.feed.pool.name())
            .field("window", &self.feed.window)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The stream returned by [`PoolStreamExt::map_pooled_unordered`]. Dropping it
    /// cancels its queued and running jobs.
    #[must_use = "streams do nothing unless polled"]
    pub struct MapPooledUnordered<S, F, T> {
        #[pin]
        feed: Feed<S, F, T>,
        in_flight: FuturesUnordered<Slot<T>>,
    }
}

impl<S, F, T> MapPooledUnordered<S, F, T> {
    /// Sets how many jobs this stream keeps in flight (at least 1).
    pub fn window(mut self, n: usize) -> Self {
        self.feed.window = n.max(1);
        self
    }
}

impl<S, F, Fut> Stream for MapPooledUnordered<S, F, Fut::Output>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    type Item = Result<Fut::Output, JobError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        this.feed.as_mut().fill(this.in_flight, cx);
        match this.in_flight.poll_next_unpin(cx) {
            Poll::Ready(Some(r)) => Poll::Ready(Some(r)),
            Poll::Ready(None) if this.feed.finished() => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

impl<S, F, Fut> FusedStream for MapPooledUnordered<S, F, Fut::Output>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn is_terminated(&self) -> bool {
        self.feed.finished() && self.in_flight.is_empty()
    }
}

impl<S, F, T> fmt::Debug for MapPooledUnordered<S, F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapPooledUnordered")
            .field("pool", &self.feed.pool.name())
            .field("window", &self.feed.window)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}
