//! tower integration (feature `tower`): [`PoolLayer`] runs a `Service`'s calls on a
//! [`Pool`].
//!
//! Unlike tower's `Buffer`, whose `poll_ready` reserves a slot (and has deadlocked
//! services that reserved and then never called), [`PoolService::poll_ready`] is
//! always ready and reserves nothing: an idle caller holds no queue slot and no
//! permit. Backpressure happens inside the response future, which waits for queue
//! space, then for the job. The call, including the inner service's own
//! `poll_ready`, runs as a job on the pool's workers, under its limit, timeouts and
//! stats. Dropping the response future cancels the job.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use taskgate::tower::PoolLayer;
//!
//! let pool = taskgate::Pool::new(16);
//! let mut svc = ServiceBuilder::new()
//!     .layer(PoolLayer::new(pool))
//!     .service_fn(|n: u64| async move { Ok::<_, std::convert::Infallible>(n + 1) });
//! let answer = svc.ready().await.unwrap().call(41).await.unwrap();
//! assert_eq!(answer, 42);
//! # }
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::error::JobError;
use crate::limit::Outcome;
use crate::pool::Pool;

/// A [`Layer`] that wraps a service in a [`PoolService`], so its calls run on `pool`.
///
/// Several services can share one pool, and so one limit.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use tower::{Layer, ServiceExt};
/// use taskgate::tower::PoolLayer;
///
/// let layer = PoolLayer::new(taskgate::Pool::new(8));
/// let upper = layer.layer(tower::service_fn(|s: String| async move {
///     Ok::<_, std::convert::Infallible>(s.to_uppercase())
/// }));
/// let lower_len = layer.layer(tower::service_fn(|s: String| async move {
///     Ok::<_, std::convert::Infallible>(s.len())
/// }));
/// assert_eq!(upper.oneshot("hi".to_string()).await.unwrap(), "HI");
/// assert_eq!(lower_len.oneshot("hi".to_string()).await.unwrap(), 2);
/// # }
/// ```
#[derive(Clone)]
pub struct PoolLayer {
    pool: Pool,
    classify: Option<Classify>,
}

impl PoolLayer {
    /// A layer that runs calls on `pool`.
    pub fn new(pool: Pool) -> Self {
        PoolLayer {
            pool,
            classify: None,
        }
    }

    /// Tells the pool's [adaptive](crate::Builder::adaptive) limit what each
    /// call's result says about the downstream (see
    /// [`JobBuilder::classify`](crate::JobBuilder::classify)): for example a
    /// `429` response or a timeout error is an [`Outcome::Overload`]. `f` sees the
    /// inner service's `Result`; calls whose result is of another type than `f`
    /// takes report [`Outcome::Ignore`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    /// use taskgate::tower::PoolLayer;
    /// use taskgate::{Adaptive, Outcome, Pool};
    ///
    /// let pool = Pool::builder().workers(16).adaptive(Adaptive::aimd()).build().unwrap();
    /// let layer = PoolLayer::new(pool).classify(|r: &Result<u16, std::io::Error>| match r {
    ///     Ok(429) | Ok(503) => Outcome::Overload { retry_after: None },
    ///     Ok(_) => Outcome::Success,
    ///     Err(_) => Outcome::Ignore,
    /// });
    /// let mut svc = ServiceBuilder::new()
    ///     .layer(layer)
    ///     .service_fn(|_: ()| async { Ok::<u16, std::io::Error>(200) });
    /// assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), 200);
    /// # }
    /// ```
    pub fn classify<R, E, F>(mut self, f: F) -> Self
    where
        R: 'static,
        E: 'static,
        F: Fn(&Result<R, E>) -> Outcome + Send + Sync + 'static,
    {
        self.classify = Some(Arc::new(move |out: &dyn Any| {
            out.downcast_ref::<Result<R, E>>()
                .map_or(Outcome::Ignore, &f)
        }));
        self
    }
}

impl<S> Layer<S> for PoolLayer {
    type Service = PoolService<S>;

    fn layer(&self, inner: S) -> PoolService<S> {
        PoolService {
            inner,
            pool: self.pool.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A service whose calls run as jobs on a [`Pool`]. Made by [`PoolLayer`].
///
/// Each call clones the inner service and, on a worker, waits for the clone's
/// `poll_ready` and then calls it. The inner service must therefore be `Clone`
/// (wrap it in tower's `Buffer` if it is not).
///
/// Each call is a job with the pool's default run and queue timeouts; one that
/// times out fails with [`ServiceError::Job`]. Dropping a call's
/// [`ResponseFuture`] cancels that call; dropping the service itself cancels
/// nothing, since each response future owns its own job.
#[derive(Clone)]
pub struct PoolService<S> {
    inner: S,
    pool: Pool,
    classify: Option<Classify>,
}

impl<S, Req> Service<Req> for PoolService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = ServiceError<S::Error>;
    type Future = ResponseFuture<S::Response, S::Error>;

    /// Always ready: nothing is reserved. Backpressure is in the response future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut svc = self.inner.clone();
        let pool = self.pool.clone();
        let classify = self.classify.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let job = async move {
                    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
                    svc.call(req).await
                };
                let job = pool.job(job);
                let job = match classify {
                    Some(c) => job.classify(move |out| c(out)),
                    None => job,
                };
                match job.run().await {
                    Ok(Ok(resp)) => Ok(resp),
                    Ok(Err(e)) => Err(ServiceError::Inner(e)),
                    Err(e) => Err(ServiceError::Job(e)),
                }
            }),
        }
    }
}

/// The response future of a [`PoolService`]. Dropping it cancels the call's job,
/// wherever it is.
#[must_use = "futures do nothing unless you .await or poll them"]
pub struct ResponseFuture<R, E> {
    inner: Pin<Box<dyn Future<Output = Result<R, ServiceError<E>>> + Send>>,
}

impl<R, E> Future for ResponseFuture<R, E> {
    type Output = Result<R, ServiceError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<R, E> fmt::Debug for ResponseFuture<R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Why a [`PoolService`] call failed: the inner service's own error, or a
/// [`JobError`] (the pool was closed, or the call timed out, panicked or was
/// cancelled).
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use tower::{Layer, ServiceExt};
/// use taskgate::{JobError, tower::{PoolLayer, ServiceError}};
///
/// let pool = taskgate::Pool::builder().workers(1).job_timeout(Duration::from_secs(1)).build().unwrap();
/// let slow = PoolLayer::new(pool).layer(tower::service_fn(|_: ()| async {
///     tokio::time::sleep(Duration::from_secs(60)).await;
///     Ok::<_, std::io::Error>(())
/// }));
/// let err = slow.oneshot(()).await.unwrap_err();
/// assert!(matches!(err, ServiceError::Job(JobError::TimedOut)));
/// # }
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ServiceError<E> {
    /// The inner service returned an error.
    Inner(E),
    /// The call's job ended without a response.
    Job(JobError),
}

impl<E: fmt::Display> fmt::Display for ServiceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::Inner(e) => write!(f, "service error: {e}"),
            ServiceError::Job(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ServiceError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServiceError::Inner(e) => Some(e),
            ServiceError::Job(e) => Some(e),
        }
    }
}

/// A layer's classifier, shared by its services' calls.
type Classify = Arc<dyn Fn(&dyn Any) -> Outcome + Send + Sync>;

impl fmt::Debug for PoolLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolLayer")
            .field("pool", &self.pool)
            .field("classified", &self.classify.is_some())
            .finish()
    }
}

impl<S: fmt::Debug> fmt::Debug for PoolService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolService")
            .field("inner", &self.inner)
            .field("pool", &self.pool)
            .field("classified", &self.classify.is_some())
            .finish()
    }
}
