#![cfg_attr(not(feature = "redis"), allow(dead_code))]
//! The seam for limits whose state lives outside the process (in Redis, for the
//! `redis` feature): [`Remote`], the limiter a gate holds, [`RemoteSpec`], the
//! setting that makes one per gate, and [`Rouse`], how a background refill wakes
//! the lane it refilled.
//!
//! A remote limiter answers [`check`](Remote::check) from what it holds locally
//! (tokens or slots leased in one round trip), under the pool lock, without
//! waiting on anything. When it holds nothing it starts one background request
//! (a spawned task, never awaited under the lock) and answers [`Admit::At`] with
//! the request's deadline, so the scheduler marks the lane blocked and moves on
//! to other lanes. When the request ends (granted, refused, or failed), the task
//! calls [`Rouse::rouse`], which brings the lane's timer forward to now: the
//! timer task unblocks the lane and dispatches a worker, as for a rate wait that
//! ended. Nothing in this module knows about Redis.

use std::fmt;
use std::sync::Weak;

use tokio::runtime::Handle;
use tokio::time::Instant;

use super::{Admit, Clock, Key};

/// What a remote limiter's background task calls when it has something new for
/// its lane: the pool, through a weak reference (a request outliving the pool
/// wakes nothing).
pub(crate) trait Wake: Send + Sync {
    /// Brings lane `lane`'s timer forward to now, if the lane still exists with
    /// generation `generation` and waits for one (or, for the pool's gate, the
    /// pool is blocked).
    fn rouse(&self, lane: u32, generation: u32);
    /// Runs `f` with the pool lock held: for a limiter's task that takes away
    /// what its `check` may have counted on (an idle slot given back), so that
    /// no `check` → `acquire` pair, which runs under that lock, sees it go in
    /// between. `f` may take the limiter's own lock (the lock order is pool,
    /// then limiter) and must do nothing else.
    fn locked(&self, f: &mut dyn FnMut());
}

/// Where a remote limiter's refill wakes: one lane (or the pool's gate) of one
/// pool, and the runtime its background tasks run on.
#[derive(Clone)]
pub(crate) struct Rouse {
    pub(crate) pool: Weak<dyn Wake>,
    pub(crate) lane: u32,
    pub(crate) generation: u32,
    pub(crate) rt: Handle,
}

impl Rouse {
    /// Wakes the lane (see [`Wake::rouse`]). Takes the pool lock: never call it
    /// with the lock held, or with a limiter's own lock held.
    pub(crate) fn rouse(&self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.rouse(self.lane, self.generation);
        }
    }

    /// Runs `f` under the pool lock (see [`Wake::locked`]); directly if the
    /// pool is gone (then nothing checks the limiter any more).
    pub(crate) fn locked(&self, f: &mut dyn FnMut()) {
        match self.pool.upgrade() {
            Some(pool) => pool.locked(f),
            None => f(),
        }
    }

    /// The runtime to spawn background requests on (the pool's).
    pub(crate) fn runtime(&self) -> &Handle {
        &self.rt
    }
}

impl fmt::Debug for Rouse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rouse")
            .field("lane", &self.lane)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// One remote limit, as a gate holds it. Like [`Limiter`](super::Limiter), but
/// counting in units it leased from elsewhere.
pub(crate) trait Remote: Send + fmt::Debug {
    /// Whether one more job may start now, from what is held locally; takes
    /// nothing. May start one background request (when nothing is held), which
    /// rouses the lane when it ends. Never blocks.
    fn check(&self, clock: &mut Clock) -> Admit;
    /// A job passed every limiter and starts now: take one held unit.
    fn acquire(&mut self, clock: &mut Clock);
    /// A job this limiter counted has ended: give its unit back (a slot; a
    /// token is spent and gives nothing back).
    fn release(&mut self);
    /// Whether a job ending may let this limit's blocked lane start again (a
    /// slot went back to the local pool). A rate answers `true`: it has no
    /// count to be under, and a lane it blocked is roused by its refill, so a
    /// `true` costs at most a re-check.
    fn has_room(&self) -> bool;
    /// Until when the limiter holds state that would be lost if its lane were
    /// removed (the in-process rate that `OnError::Local` enforces, with time
    /// owed; tokens leased and not yet used, for a while after they came);
    /// `None` if none past now. Idle slots do not count:
    /// they go back when the lane goes.
    fn holds_until(&self, clock: &mut Clock) -> Option<Instant>;
}

/// A remote limit's setting (`SharedRate`, `SharedConcurrency`): makes the
/// limiter for one gate.
pub(crate) trait RemoteSpec: Send + Sync + fmt::Debug {
    /// The limiter for the pool's gate (`key` is `None`) or for key `key`'s
    /// lane, waking `rouse` when its background requests end. `running` jobs
    /// of the gate started before it (under a limiter it replaces) will be
    /// released to it: it must not count them as its own.
    fn bind(&self, key: Option<&Key>, rouse: Rouse, running: usize) -> Box<dyn Remote>;
    /// The setting's identity: a lane whose limits are set again with an equal
    /// setting (a clone, or one built anew with the same fields on the same
    /// handle) keeps its limiter, and what it
    /// holds. Differs for settings that differ in anything.
    fn id(&self) -> u64;
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
