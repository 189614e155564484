//! The Lua scripts, as text and as [`redis::Script`]s (which know their SHA1
//! and are sent with EVALSHA, falling back to SCRIPT LOAD + EVALSHA when the
//! server answers NOSCRIPT: after a restart, a failover or `SCRIPT FLUSH`).

use std::sync::LazyLock;

use redis::Script;

/// GCRA partial lease; see `lua/gcra.lua` for the contract.
pub(crate) const GCRA_LUA: &str = include_str!("lua/gcra.lua");
/// Concurrency slots: acquire; see `lua/acquire.lua`.
pub(crate) const ACQUIRE_LUA: &str = include_str!("lua/acquire.lua");
/// Concurrency slots: renew; see `lua/renew.lua`.
pub(crate) const RENEW_LUA: &str = include_str!("lua/renew.lua");

pub(crate) static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));
