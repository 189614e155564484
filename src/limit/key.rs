//! [`Key`], the tag that puts a job in a per-key lane, and the per-key settings and
//! counters: [`KeyLimits`] and [`KeyStats`].

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::time::Instant;

use crate::error::LimitError;
use crate::limit::{Adaptive, Rate, RemoteSpec};

/// A key that tags a job (a tenant, a host, an API token) so that per-key limits
/// apply to it: see [`KeyLimits`] and [`JobBuilder::key`](crate::JobBuilder::key).
///
/// Cheap to clone: a `&'static str` is stored as is, and an owned string is shared
/// behind an `Arc`. Two keys are equal when their strings are equal, however they
/// were made.
///
/// ```
/// use std::sync::Arc;
/// use taskgate::Key;
///
/// let a = Key::from("api.example.com");
/// let b = Key::from(String::from("api.example.com"));
/// let c = Key::from(Arc::<str>::from("api.example.com"));
/// assert_eq!(a, b);
/// assert_eq!(b, c);
/// assert_eq!(a.to_string(), "api.example.com");
/// ```
#[derive(Clone)]
pub struct Key(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Key {
    /// The key as a string.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }
}

impl From<&'static str> for Key {
    fn from(s: &'static str) -> Key {
        Key(Repr::Static(s))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key(Repr::Shared(s.into()))
    }
}

impl From<Arc<str>> for Key {
    fn from(s: Arc<str>) -> Key {
        Key(Repr::Shared(s))
    }
}

impl From<&Key> for Key {
    fn from(k: &Key) -> Key {
        k.clone()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits that apply to each key on its own, on top of the pool's.
///
/// Every limit is unset by default: a key is then limited only by the pool. Set
/// the default for every key with [`Builder::key_limits`](crate::Builder::key_limits)
/// and override it for one key with [`Pool::set_key_limits`](crate::Pool::set_key_limits).
///
/// A job of a key counts once against each limit that applies to it: the pool's
/// workers, the pool's rate, its key's concurrency and its key's rate. A job that is
/// cancelled or times out while queued counts against none of them.
///
/// Keys share the pool's queue: a key held back by its limits (or a pause) holds no
/// worker, but its queued jobs take queue places. Without a `queue_capacity` of its
/// own, a key holds at most its share of the pool's places
/// ([`Builder::key_queue_share`](crate::Builder::key_queue_share), half by
/// default), so one stalled key cannot fill the queue and make other keys'
/// submissions wait.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), taskgate::BuildError> {
/// use taskgate::{KeyLimits, Rate};
///
/// // Each host: at most 4 calls at once, 10 per second with bursts of 5, and at
/// // most 100 waiting.
/// let pool = taskgate::Pool::builder()
///     .workers(64)
///     .key_limits(
///         KeyLimits::default()
///             .concurrency(4)
///             .rate(Rate::per_second(10).burst(5))
///             .queue_capacity(100),
///     )
///     .build()?;
/// let body = pool.job(async { "ok" }).key("api.example.com").run().await;
/// assert_eq!(body, Ok("ok"));
/// # Ok(())
/// # }
/// ```
///
/// `KeyLimits` is `Clone` but not `Copy` (since 0.2: it may hold a shared limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyLimits {
    /// At most this many jobs of the key run at once.
    pub concurrency: Option<usize>,
    /// Jobs of the key start no faster than this.
    pub rate: Option<Rate>,
    /// At most this many jobs of the key wait in the queue; a submit beyond it waits
    /// (or `try_submit` is refused) as when the pool's queue is full. Unset, the
    /// key's share of the pool's places applies
    /// ([`Builder::key_queue_share`](crate::Builder::key_queue_share)).
    pub queue_capacity: Option<usize>,
    /// The key's jobs run under a limit that adapts to its downstream.
    pub adaptive: Option<Adaptive>,
    /// Each key's jobs start no faster than this rate, shared with every process
    /// using the same name (feature `redis`): see [`KeyLimits::shared_rate`].
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub shared_rate: Option<crate::redis::SharedRate>,
    /// At most this many jobs of each key run at once across every process
    /// using the same name (feature `redis`): see [`KeyLimits::shared_concurrency`].
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub shared_concurrency: Option<crate::redis::SharedConcurrency>,
}

impl KeyLimits {
    /// No per-key limit: the same as `KeyLimits::default()`.
    pub fn new() -> KeyLimits {
        KeyLimits::default()
    }

    /// At most `n` jobs of the key run at once. Must be at least 1.
    pub fn concurrency(mut self, n: usize) -> KeyLimits {
        self.concurrency = Some(n);
        self
    }

    /// Jobs of the key start no faster than `rate`.
    pub fn rate(mut self, rate: Rate) -> KeyLimits {
        self.rate = Some(rate);
        self
    }

    /// Each key learns its own limit on running jobs (see [`Adaptive`]): for
    /// example each host its own capacity. Its `max` defaults to, and is capped
    /// at, the pool's workers; with [`concurrency`](KeyLimits::concurrency) too,
    /// both apply. A key keeps what it learned for ten smoothed run times (at
    /// least a second, at most a minute) after its last job; a key idle longer
    /// has its state removed, like any key's, and learns again from `initial`.
    pub fn adaptive(mut self, adaptive: Adaptive) -> KeyLimits {
        self.adaptive = Some(adaptive);
        self
    }

    /// Each key's jobs start no faster than `rate`, across every process that
    /// uses the same name: each key has its own state in Redis (the name and the
    /// key), so this reads "`rate` per key, across the fleet". With
    /// [`rate`](KeyLimits::rate) too, a job passes both and counts once against
    /// each. See [`SharedRate`](crate::redis::SharedRate).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn shared_rate(mut self, rate: crate::redis::SharedRate) -> KeyLimits {
        self.shared_rate = Some(rate);
        self
    }

    /// At most `limit.limit()` jobs of each key run at once across every process
    /// that uses the same name, each key with its own slots in Redis. With
    /// [`concurrency`](KeyLimits::concurrency) too, both apply. See
    /// [`SharedConcurrency`](crate::redis::SharedConcurrency).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn shared_concurrency(mut self, limit: crate::redis::SharedConcurrency) -> KeyLimits {
        self.shared_concurrency = Some(limit);
        self
    }

    /// The remote limits' settings, for the lanes' gates.
    pub(crate) fn remote_specs(&self) -> impl Iterator<Item = &dyn RemoteSpec> {
        #[cfg(feature = "redis")]
        {
            // The rate first: a token keeps, while a slot taken and then held
            // for a token would be idle (and given back) in the meantime.
            let r = self.shared_rate.as_ref().map(|r| r as &dyn RemoteSpec);
            let c = self
                .shared_concurrency
                .as_ref()
                .map(|c| c as &dyn RemoteSpec);
            r.into_iter().chain(c)
        }
        #[cfg(not(feature = "redis"))]
        std::iter::empty()
    }

    /// At most `n` jobs of the key wait in the queue. Must be at least 1.
    pub fn queue_capacity(mut self, n: usize) -> KeyLimits {
        self.queue_capacity = Some(n);
        self
    }

    /// Checks the limits for a pool of `workers` workers.
    pub(crate) fn validate(&self, workers: usize) -> Result<(), LimitError> {
        if let Some(a) = &self.adaptive {
            a.validate(workers)?;
        }
        if self.concurrency == Some(0) {
            return Err(LimitError::ZeroConcurrency);
        }
        if self.queue_capacity == Some(0) {
            return Err(LimitError::ZeroQueueCapacity);
        }
        #[cfg(feature = "redis")]
        {
            if let Some(r) = &self.shared_rate {
                r.validate()?;
            }
            if let Some(c) = &self.shared_concurrency {
                c.validate()?;
            }
        }
        match self.rate {
            Some(r) => r.validate(),
            None => Ok(()),
        }
    }
}

/// A snapshot of one key's state and counters, from
/// [`Pool::key_stats`](crate::Pool::key_stats).
///
/// A key's state exists while it has jobs queued or running, is paused, owes
/// time to its rate, or keeps what its adaptive limit learned; after that it is removed (so memory stays bounded however many
/// keys pass through), and its counters go with it. The counters therefore cover
/// the jobs since the key's state was last created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStats {
    /// Jobs of the key running now.
    pub busy: usize,
    /// Jobs of the key waiting in the queue.
    pub queued: usize,
    /// Jobs of the key that ran to completion.
    pub completed: u64,
    /// Jobs of the key cancelled, queued or running.
    pub cancelled: u64,
    /// Jobs of the key dropped for running past their run timeout.
    pub timed_out: u64,
    /// Jobs of the key dropped for waiting past their queue timeout.
    pub queue_timed_out: u64,
    /// Jobs of the key that panicked.
    pub panicked: u64,
    /// Until when the key is paused by [`Pool::pause_key_for`](crate::Pool::pause_key_for)
    /// or by an [overload](crate::Outcome::Overload) with a `retry_after`, if it is.
    pub paused_until: Option<Instant>,
    /// The key's limit on running jobs now: its [adaptive](KeyLimits::adaptive)
    /// limit, or its [concurrency](KeyLimits::concurrency) cap (the lower of the
    /// two if it has both); `None` if it has neither.
    pub limit: Option<usize>,
}
