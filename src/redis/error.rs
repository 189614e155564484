//! [`RedisError`]: what a call to Redis can fail with. Its text never holds
//! the URL's password (see `redact.rs`).

use std::fmt;
use std::time::Duration;

use super::redact::Secrets;

/// What went wrong, coarsely, for deciding what to do (fail open, fail closed,
/// retry later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RedisErrorKind {
    /// No answer within the call's deadline
    /// ([`RedisConfig::call_timeout`](super::RedisConfig::call_timeout)), or the client's
    /// response or connection timeout fired. Redis may still have run the
    /// command.
    Timeout,
    /// Could not reach Redis, or the connection broke (refused, reset, EOF).
    Unavailable,
    /// Redis refused the credentials.
    Auth,
    /// Redis answered with an error (a script error, OOM, READONLY, ...).
    Server,
    /// Redis answered something the client did not expect.
    Protocol,
    /// The URL or a parameter is unusable (also: `rediss://` without a TLS
    /// feature of the redis crate).
    Config,
}

/// An error from Redis, or from reaching it: what [`RedisLimits::connect`](super::RedisLimits::connect) fails with, and what a shared limit counts and logs when a call fails (its [`OnError`](super::OnError) policy then applies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisError {
    kind: RedisErrorKind,
    message: String,
}

impl RedisError {
    pub(crate) fn new(kind: RedisErrorKind, message: impl Into<String>) -> Self {
        RedisError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn timeout(what: &str, after: Duration) -> Self {
        Self::new(
            RedisErrorKind::Timeout,
            format!("{what}: no answer from redis within {after:?}"),
        )
    }

    pub(crate) fn from_redis(what: &str, err: &redis::RedisError, secrets: &Secrets) -> Self {
        use redis::ErrorKind as K;
        let kind = if err.is_timeout() {
            RedisErrorKind::Timeout
        } else if matches!(err.code(), Some("NOAUTH" | "WRONGPASS")) {
            RedisErrorKind::Auth
        } else {
            match err.kind() {
                K::Io => RedisErrorKind::Unavailable,
                K::AuthenticationFailed => RedisErrorKind::Auth,
                K::Server(redis::ServerErrorKind::NoPerm) => RedisErrorKind::Auth,
                K::Server(_) => RedisErrorKind::Server,
                K::InvalidClientConfig => RedisErrorKind::Config,
                K::Parse | K::UnexpectedReturnType => RedisErrorKind::Protocol,
                _ => RedisErrorKind::Unavailable,
            }
        };
        // Only the scrubbed text is kept: never the RedisError itself, whose
        // Display/Debug this crate does not control.
        Self::new(kind, secrets.scrub(&format!("{what}: {err}")))
    }

    /// The kind of failure.
    pub fn kind(&self) -> RedisErrorKind {
        self.kind
    }

    /// Whether the failure is about reaching Redis (timeout or connection),
    /// as opposed to a misconfiguration or a server-side refusal.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self.kind,
            RedisErrorKind::Timeout | RedisErrorKind::Unavailable
        )
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis backend: {}", self.message)
    }
}

impl std::error::Error for RedisError {}
