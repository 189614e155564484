//! Limits shared by a fleet of processes through Redis (feature `redis`).
//!
//! An API quota belongs to an account, not to a process: ten replicas that each
//! cap their calls at 100/s send 1 000/s. A [`SharedRate`] or
//! [`SharedConcurrency`] keeps its state in Redis, so every process that uses
//! the same name shares one limit:
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use taskgate::redis::{OnError, RedisLimits};
//! use taskgate::{KeyLimits, Pool, Rate};
//!
//! let redis = RedisLimits::connect("redis://127.0.0.1:6379").await?;
//! let pool = Pool::builder()
//!     .workers(64)
//!     // 1 000 calls a second to the API, across every replica...
//!     .shared_rate(redis.rate("api", Rate::per_second(1_000).burst(20)))
//!     // ... at most 5 a second per host, across every replica...
//!     .key_limits(KeyLimits::new().shared_rate(redis.rate("per-host", Rate::per_second(5))))
//!     // ... and at most 200 in flight at once, across every replica.
//!     .shared_concurrency(redis.concurrency("api", 200).on_error(OnError::Closed))
//!     .build()?;
//! assert_eq!(pool.run(async { "called" }).await, Ok("called"));
//! # Ok(())
//! # }
//! ```
//!
//! **No Redis call is made under the pool's lock.** A shared limit answers from
//! tokens or slots it leased in an earlier round trip; when it has none, it asks
//! Redis in a background task and its jobs wait in the queue, holding no
//! worker, while other keys keep starting. The answer wakes them through the
//! pool's timer task, as the end of a rate wait does.
//!
//! **One clock.** The scripts read Redis's `TIME`, never the hosts' clocks. They
//! are sent by SHA (`EVALSHA`), and loaded again after a Redis restart
//! (`NOSCRIPT`). Every key expires once idle, so keys passing through leave
//! nothing behind.
//!
//! **Names.** A limit's Redis key is built from the prefix
//! ([`RedisLimits::prefix`]), the kind of limit, the name and (for
//! [`KeyLimits`](crate::KeyLimits)) the job's key, each length-prefixed or
//! hex-encoded, so distinct (name, key) pairs never share state.
//!
//! **When Redis fails**, each limit follows its [`OnError`] policy until Redis
//! answers again: see there.
//!
//! **Secrets.** A URL's password never appears in `Debug` output, in errors or
//! in logs.

mod client;
mod concurrency;
mod error;
mod health;
mod names;
mod rate;
mod redact;
mod scripts;

pub use client::{RedisConfig, RedisLimits};
pub use concurrency::SharedConcurrency;
pub use error::{RedisError, RedisErrorKind};
pub use health::{OnError, SharedStats};
pub use rate::SharedRate;
