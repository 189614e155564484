//! [`RedisLimits`]: the handle on one Redis that shared limits are made from,
//! and [`RedisConfig`], its timeouts. The calls the limits make (a rate lease,
//! slot acquire, renew and release) are here too, each bounded by a deadline.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult};

use super::error::{RedisError, RedisErrorKind};
use super::names::{KeyKind, encode_typed_key};
use super::redact::{Secrets, redact};
use super::scripts::{ACQUIRE, GCRA, RENEW};
use super::{SharedConcurrency, SharedRate};
use crate::Rate;

/// Timeouts and reconnection for [`RedisLimits::connect_with`].
///
/// The defaults make a dead or hung Redis cost a request at most
/// [`call_timeout`](RedisConfig::call_timeout) (500 ms), so a shared limit's
/// [`OnError`](super::OnError) policy is in force within half a second, and pick
/// a restarted Redis up within about 200 ms of it listening again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisConfig {
    response_timeout: Duration,
    connection_timeout: Duration,
    call_timeout: Duration,
    reconnect_min_delay: Duration,
    reconnect_max_delay: Duration,
    reconnect_retries: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            response_timeout: Duration::from_millis(250),
            connection_timeout: Duration::from_millis(250),
            call_timeout: Duration::from_millis(500),
            reconnect_min_delay: Duration::from_millis(25),
            reconnect_max_delay: Duration::from_millis(200),
            reconnect_retries: 4,
        }
    }
}

impl RedisConfig {
    /// The defaults: see the type's docs.
    pub fn new() -> RedisConfig {
        RedisConfig::default()
    }

    /// How long one command may wait for its reply (default 250 ms; the redis
    /// crate's `ConnectionManagerConfig::set_response_timeout`).
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// How long one connection attempt may take (default 250 ms).
    pub fn connection_timeout(mut self, d: Duration) -> Self {
        self.connection_timeout = d;
        self
    }

    /// The deadline for a whole call, whatever it waits on: a reconnection in
    /// progress (the connection manager makes callers wait for it), a reply,
    /// or the `SCRIPT LOAD` and retry after `NOSCRIPT` (default 500 ms). A shared
    /// limit falls back to its [`OnError`](super::OnError) policy when a call
    /// misses it. Should exceed the response timeout. Not checked: a deadline
    /// shorter than a round trip (zero, say) fails every call, and keeps every
    /// shared limit on its `OnError` policy.
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.call_timeout = d;
        self
    }

    /// Back-off between reconnection attempts: from `min`, doubling (with
    /// jitter) up to `max`, `retries` times; the next call starts a new round.
    /// `max` bounds how long after Redis comes back a call may still fail
    /// (defaults 25 ms, 200 ms, 4).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration, retries: usize) -> Self {
        self.reconnect_min_delay = min;
        self.reconnect_max_delay = max;
        self.reconnect_retries = retries;
        self
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_connection_timeout(Some(self.connection_timeout))
            .set_min_delay(self.reconnect_min_delay)
            .set_max_delay(self.reconnect_max_delay)
            .set_number_of_retries(self.reconnect_retries)
    }
}

/// A handle on one Redis, from which shared limits are made: [`rate`](RedisLimits::rate)
/// and [`concurrency`](RedisLimits::concurrency).
///
/// Cheap to clone: one multiplexed connection (a redis-rs `ConnectionManager`,
/// which reconnects by itself), shared by every clone and every limit made from
/// it; concurrent calls are pipelined on it.
///
/// Every Redis key it writes is under a prefix ([`prefix`](RedisLimits::prefix),
/// `taskgate` by default) and expires once idle. Its `Debug` output shows the
/// URL with any password masked, and no error it returns holds the password.
///
/// # Drop
///
/// Dropping a handle closes nothing while a clone, or a limit made from it, is
/// alive; the connection closes with the last of them.
#[derive(Clone)]
pub struct RedisLimits {
    pub(super) inner: Arc<Link>,
}

/// What the clones of one [`RedisLimits`] share.
pub(super) struct Link {
    conn: ConnectionManager,
    config: RedisConfig,
    url: String,
    secrets: Secrets,
    prefix: String,
    /// This handle's random tag in slot holder ids.
    tag: u64,
    next_holder: AtomicU64,
}

impl fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimits")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl PartialEq for RedisLimits {
    /// The same handle (clones of one `connect`).
    fn eq(&self, other: &RedisLimits) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for RedisLimits {}

impl RedisLimits {
    /// What `PartialEq` compares, as a number: the shared connection state.
    pub(super) fn identity(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }
}

impl RedisLimits {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`,
    /// `redis+unix:///path`, or `rediss://` with the `redis-tls` feature), with
    /// the default [`RedisConfig`].
    ///
    /// Checks that Redis answers and takes the credentials: a wrong password
    /// fails here with [`RedisErrorKind::Auth`], not later as timeouts.
    ///
    /// # Errors
    ///
    /// A bad URL, refused credentials, or no answer: the whole call is bounded by
    /// [`RedisConfig::call_timeout`] (500 ms by default), past which it fails
    /// with [`RedisErrorKind::Timeout`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future drops the connection being made.
    pub async fn connect(url: &str) -> Result<RedisLimits, RedisError> {
        RedisLimits::connect_with(url, RedisConfig::default()).await
    }

    /// [`connect`](RedisLimits::connect) with the given timeouts.
    ///
    /// # Errors
    ///
    /// As for `connect`, bounded by `config`'s
    /// [`call_timeout`](RedisConfig::call_timeout).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as `connect`.
    pub async fn connect_with(url: &str, config: RedisConfig) -> Result<RedisLimits, RedisError> {
        let secrets = Secrets::from_url(url);
        let client = Client::open(url).map_err(|e| RedisError::from_redis("open", &e, &secrets))?;
        // The connection manager retries every failed connection attempt (an
        // authentication failure included), so through it a wrong password
        // would only show as a timeout: check with one plain connection first.
        let probe_config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connection_timeout))
            .set_response_timeout(Some(config.response_timeout));
        let probe = client.clone();
        bounded(config.call_timeout, &secrets, "connect", async move {
            let mut conn = probe
                .get_multiplexed_async_connection_with_config(&probe_config)
                .await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await?;
        let conn = ConnectionManager::new_lazy_with_config(client, config.manager_config())
            .map_err(|e| RedisError::from_redis("open", &e, &secrets))?;
        Ok(RedisLimits::assemble(
            conn,
            config,
            redact(url),
            secrets,
            "taskgate".to_owned(),
        ))
    }

    /// Uses a connection manager made by the caller (its own timeouts and
    /// reconnection apply; each call is still bounded by the default
    /// [`call_timeout`](RedisConfig::call_timeout)). Its `Debug` shows no URL.
    pub fn from_connection(conn: ConnectionManager) -> RedisLimits {
        RedisLimits::assemble(
            conn,
            RedisConfig::default(),
            "(from_connection)".to_owned(),
            Secrets::default(),
            "taskgate".to_owned(),
        )
    }

    fn assemble(
        conn: ConnectionManager,
        config: RedisConfig,
        url: String,
        secrets: Secrets,
        prefix: String,
    ) -> RedisLimits {
        RedisLimits {
            inner: Arc::new(Link {
                conn,
                config,
                url,
                secrets,
                prefix,
                // A tag per handle: ids from two handles (`prefix` makes new
                // ones on one connection) never meet, even on the same prefix
                // and name.
                tag: process_tag(),
                next_holder: AtomicU64::new(0),
            }),
        }
    }

    /// Puts every Redis key under `prefix` (default `taskgate`): a namespace per
    /// deployment or environment. Every process sharing a limit must use the
    /// same prefix. Keep it free of user input: two prefixes where one begins
    /// the other could name the same keys.
    ///
    /// Returns a new handle on the same connection; limits made from the old
    /// handle keep its prefix.
    pub fn prefix(&self, prefix: impl Into<String>) -> RedisLimits {
        let old = &self.inner;
        RedisLimits::assemble(
            old.conn.clone(),
            old.config,
            old.url.clone(),
            old.secrets.clone(),
            prefix.into(),
        )
    }

    /// The key prefix (see [`prefix`](RedisLimits::prefix)).
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// A rate shared by every process that uses `name` (under the same prefix):
    /// see [`SharedRate`].
    pub fn rate(&self, name: impl Into<String>, rate: Rate) -> SharedRate {
        SharedRate::new(self.clone(), name.into(), rate)
    }

    /// At most `limit` jobs run at once across every process that uses `name`
    /// (under the same prefix): see [`SharedConcurrency`].
    pub fn concurrency(&self, name: impl Into<String>, limit: usize) -> SharedConcurrency {
        SharedConcurrency::new(self.clone(), name.into(), limit)
    }

    /// Sends `PING`; for a health check.
    ///
    /// # Errors
    ///
    /// Why Redis did not answer; a call with no answer within
    /// [`call_timeout`](RedisConfig::call_timeout) fails with
    /// [`RedisErrorKind::Timeout`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut conn = self.inner.conn.clone();
        self.bounded("ping", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(|_| ())
    }

    /// The Redis key of limit `name` of `kind`, for `key` (or for the pool).
    pub(super) fn key_of(&self, kind: KeyKind, name: &str, key: Option<&str>) -> String {
        encode_typed_key(&self.inner.prefix, kind, name, key.map(str::as_bytes))
    }

    /// The deadline of one call.
    pub(super) fn call_timeout(&self) -> Duration {
        self.inner.config.call_timeout
    }

    /// A slot holder id never made before by any process (a random tag for
    /// this handle's process, and a counter).
    pub(super) fn holder_id(&self) -> String {
        let n = self.inner.next_holder.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n}", self.inner.tag)
    }

    /// A nonzero seed for a limiter's jitter, different per call and process.
    pub(super) fn seed(&self) -> u64 {
        let n = self.inner.next_holder.fetch_add(1, Ordering::Relaxed);
        (self.inner.tag ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
    }

    /// Takes up to `n` tokens of the GCRA at `key`: as many as are available
    /// now, possibly 0 (a partial grant). Returns them and the time until the
    /// next one is due (zero if one is).
    pub(super) async fn lease(
        &self,
        key: &str,
        params: GcraParams,
        n: u64,
    ) -> Result<(u64, Duration), RedisError> {
        let mut conn = self.inner.conn.clone();
        let (granted, wait_us): (i64, i64) = self
            .bounded("lease", async move {
                GCRA.key(key)
                    .arg(params.emission_us)
                    .arg(params.tolerance_us)
                    .arg(n)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let granted = u64::try_from(granted).map_err(|_| protocol("lease", granted))?;
        Ok((granted, Duration::from_micros(wait_us.max(0) as u64)))
    }

    /// Takes a slot of the limit at `key` for each of `holders`, in order, while
    /// fewer than `limit` are held; each lasts `ttl` unless renewed. Returns how
    /// many (from the first) were granted, and if not all, the time until the
    /// earliest held slot expires.
    pub(super) async fn acquire(
        &self,
        key: &str,
        holders: &[String],
        limit: u64,
        ttl: Duration,
    ) -> Result<(usize, Option<Duration>), RedisError> {
        let ttl_ms = ttl_ms(ttl);
        let mut conn = self.inner.conn.clone();
        let (granted, wait_ms): (i64, i64) = self
            .bounded("acquire", async move {
                let mut inv = ACQUIRE.key(key);
                inv.arg(limit).arg(ttl_ms);
                for h in holders {
                    inv.arg(h);
                }
                inv.invoke_async(&mut conn).await
            })
            .await?;
        let granted = usize::try_from(granted).map_err(|_| protocol("acquire", granted))?;
        let wait = (granted < holders.len() && wait_ms >= 0)
            .then(|| Duration::from_millis(wait_ms as u64));
        Ok((granted, wait))
    }

    /// Extends each of `holders`' slots to expire `ttl` from now; `false` for
    /// a slot no longer held (expired: it may be someone else's now).
    pub(super) async fn renew(
        &self,
        key: &str,
        holders: &[String],
        ttl: Duration,
    ) -> Result<Vec<bool>, RedisError> {
        let ttl_ms = ttl_ms(ttl);
        let mut conn = self.inner.conn.clone();
        let flags: Vec<i64> = self
            .bounded("renew", async move {
                let mut inv = RENEW.key(key);
                inv.arg(ttl_ms);
                for h in holders {
                    inv.arg(h);
                }
                inv.invoke_async(&mut conn).await
            })
            .await?;
        Ok(flags.into_iter().map(|f| f == 1).collect())
    }

    /// Gives `holders`' slots back (`ZREM`).
    pub(super) async fn release(&self, key: &str, holders: &[String]) -> Result<(), RedisError> {
        let mut conn = self.inner.conn.clone();
        self.bounded("release", async move {
            redis::cmd("ZREM")
                .arg(key)
                .arg(holders)
                .query_async::<u64>(&mut conn)
                .await
        })
        .await
        .map(|_| ())
    }

    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, RedisError> {
        bounded(
            self.inner.config.call_timeout,
            &self.inner.secrets,
            what,
            fut,
        )
        .await
    }
}

async fn bounded<T>(
    limit: Duration,
    secrets: &Secrets,
    what: &str,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RedisError::from_redis(what, &e, secrets)),
        Err(_) => Err(RedisError::timeout(what, limit)),
    }
}

/// A random 64-bit tag for this process's slot holder ids.
fn process_tag() -> u64 {
    // RandomState is seeded from the OS's randomness once per process and
    // varied per instance; the pid and the time are mixed in as well.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn protocol(what: &str, v: i64) -> RedisError {
    RedisError::new(
        RedisErrorKind::Protocol,
        format!("{what}: unexpected reply {v}"),
    )
}

/// GCRA parameters in the script's units (microseconds of Redis `TIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GcraParams {
    pub(super) emission_us: u64,
    pub(super) tolerance_us: u64,
}

impl GcraParams {
    /// The interval is rounded up to a whole microsecond, so the enforced rate
    /// is never above the one asked for. `None` for a rate above one token per
    /// microsecond, or a zero count or burst.
    pub(super) fn of(rate: Rate) -> Option<GcraParams> {
        let period_us = rate.period().as_micros();
        let per = u128::from(rate.count());
        if per == 0 || rate.burst_size() == 0 || period_us < per {
            return None;
        }
        let emission_us = u64::try_from(period_us.div_ceil(per)).ok()?;
        let tolerance_us = u64::from(rate.burst_size() - 1).checked_mul(emission_us)?;
        Some(GcraParams {
            emission_us,
            tolerance_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_params() {
        let p = GcraParams::of(Rate::per_second(10).burst(5)).unwrap();
        assert_eq!(p.emission_us, 100_000);
        assert_eq!(p.tolerance_us, 400_000);
        // Rounded up: never faster than asked.
        let p = GcraParams::of(Rate::per_second(3)).unwrap();
        assert_eq!(p.emission_us, 333_334);
        assert!(GcraParams::of(Rate::per_second(0)).is_none());
        assert!(GcraParams::of(Rate::per_second(1).burst(0)).is_none());
        assert!(GcraParams::of(Rate::per_second(2_000_000)).is_none());
        assert!(GcraParams::of(Rate::per_second(1_000_000)).is_some());
    }

    #[tokio::test]
    async fn debug_and_errors_hide_password() {
        let pw = "s3cr3t-Pa55word";
        // Nothing listens on port 1: the connection is refused.
        let url = format!("redis://user:{pw}@127.0.0.1:1/0");
        let err = RedisLimits::connect(&url).await.unwrap_err();
        assert!(err.is_unreachable(), "{err:?}");
        for text in [format!("{err}"), format!("{err:?}")] {
            assert!(!text.contains(pw), "{text}");
        }
        // A URL the redis crate refuses.
        let err = RedisLimits::connect(&format!("redis://u:{pw}@/"))
            .await
            .unwrap_err();
        assert!(!format!("{err} {err:?}").contains(pw));
    }

    #[cfg(feature = "redis-tls")]
    #[tokio::test]
    async fn rediss_with_the_tls_feature_fails_cleanly_when_unreachable() {
        // rustls has its crypto provider: no panic, an ordinary error.
        let err = RedisLimits::connect("rediss://:tls-Secret-77@127.0.0.1:1/")
            .await
            .unwrap_err();
        assert!(err.is_unreachable(), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("tls-Secret-77"));
    }

    #[cfg(not(feature = "redis-tls"))]
    #[tokio::test]
    async fn rediss_needs_the_tls_feature() {
        let err = RedisLimits::connect("rediss://:tls-Secret-77@127.0.0.1:1/")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), RedisErrorKind::Config, "{err:?}");
        assert!(format!("{err}").contains("TLS"), "{err}");
        assert!(!format!("{err:?}").contains("tls-Secret-77"));
    }
}
