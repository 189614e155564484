//! The end of a job's path: the shared result cell, [`Shared`], that the worker
//! writes and the [`JobHandle`](crate::JobHandle) reads.
//!
//! One allocation per job, [`Shared`], does the work of a oneshot channel plus a
//! cancellation token: a state word, and the result slot with the caller's waker.

use std::sync::atomic::{AtomicU8, Ordering::AcqRel, Ordering::Acquire};
use std::sync::{Mutex, PoisonError};
use std::task::{Poll, Waker};

use crate::error::JobError;
use crate::job::drop_quietly;

/// A worker has claimed the job and is running it (or about to).
pub(super) const STARTED: u8 = 1;
/// The outcome is decided; the result (if anyone wants it) is in the slot.
pub(super) const COMPLETE: u8 = 2;
/// The caller asked for the job to be cancelled.
pub(super) const CANCELLED: u8 = 4;
/// The handle is gone (dropped or detached); nobody will read the result.
pub(super) const HANDLE_GONE: u8 = 8;
/// The job is a blocking closure running on one of the pool's threads, where
/// nothing can interrupt it: a cancel resolves the handle from the caller's side.
pub(super) const INLINE: u8 = 16;
/// Resolved before the closure returned, by a cancel from the handle.
const EARLY_CANCEL: u8 = 32;
/// Resolved before the closure returned, by its run timeout.
const EARLY_TIMEOUT: u8 = 64;
/// Resolved before the closure returned, by the pool's abort.
const EARLY_ABORT: u8 = 128;

/// Why the handle of a closure running inline was resolved before it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Early {
    Cancelled,
    TimedOut,
    Aborted,
}

impl Early {
    fn bit(self) -> u8 {
        match self {
            Early::Cancelled => EARLY_CANCEL,
            Early::TimedOut => EARLY_TIMEOUT,
            Early::Aborted => EARLY_ABORT,
        }
    }

    fn error(self) -> JobError {
        match self {
            Early::TimedOut => JobError::TimedOut,
            Early::Cancelled | Early::Aborted => JobError::Cancelled,
        }
    }
}

/// What became of a result handed to [`Shared::complete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    /// The handle has it (or will, when next polled).
    Delivered,
    /// The handle is gone, so the value was dropped; `cancelled` if it was
    /// dropped (a cancel) rather than detached.
    Dropped { cancelled: bool },
    /// The handle was resolved before the value came, for this reason; the value
    /// was dropped.
    Early(Early),
}

/// The type-erased face of a job's cell, for what must resolve a running
/// closure's handle without the closure: the pool's abort, and its run timeout.
pub(crate) trait Resolve: Send + Sync {
    /// Resolves the handle now, unless it is already resolved.
    fn resolve_early(&self, why: Early);
}

/// The cell shared by a job's envelope (on the worker side) and its [`JobHandle`].
///
/// The state word answers the common questions (finished? cancelled?) with one
/// load. The result and the caller's waker sit under one small mutex, so handing
/// over a result is one lock, a store and a wake. There is no worker waker here: a
/// cancel of a running job wakes the worker through the pool (see
/// [`Canceller::wake_running`](super::Canceller::wake_running)), which keeps the cell small and the common path free of
/// waker registration.
pub(crate) struct Shared<T> {
    pub(super) state: AtomicU8,
    slot: Mutex<Slot<T>>,
}

struct Slot<T> {
    result: Option<Result<T, JobError>>,
    waker: Option<Waker>,
}

impl<T> Shared<T> {
    pub(crate) fn new() -> Self {
        Shared {
            state: AtomicU8::new(0),
            slot: Mutex::new(Slot {
                result: None,
                waker: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the job started. Returns `false` if the caller cancelled it first, in
    /// which case it must not run.
    #[inline]
    pub(crate) fn claim_start(&self) -> bool {
        self.state.fetch_or(STARTED, AcqRel) & CANCELLED == 0
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.state.load(Acquire) & CANCELLED != 0
    }

    #[inline]
    pub(crate) fn is_complete(&self) -> bool {
        self.state.load(Acquire) & COMPLETE != 0
    }

    /// Stores the outcome and wakes the handle. If the handle is gone, nobody will
    /// read the value: it is dropped here, where a panic in its `Drop` is caught.
    /// If the handle was already resolved early (a closure running inline was
    /// cancelled, timed out or aborted), `r` is dropped and the cause is returned.
    pub(crate) fn complete(&self, r: Result<T, JobError>) -> Completion {
        self.complete_then(r, |_| {})
    }

    /// As [`complete`](Shared::complete), calling `decided` with what becomes of
    /// the result before the handle can see it: a caller that has just seen the
    /// result also sees what `decided` counted.
    pub(crate) fn complete_then(
        &self,
        r: Result<T, JobError>,
        decided: impl FnOnce(Completion),
    ) -> Completion {
        let state = self.state.load(Acquire);
        if state & (EARLY_CANCEL | EARLY_TIMEOUT | EARLY_ABORT) != 0 {
            let c = Completion::Early(early_cause(state));
            decided(c);
            drop_quietly(r);
            return c;
        }
        if state & HANDLE_GONE != 0 {
            let c = Completion::Dropped {
                cancelled: state & CANCELLED != 0,
            };
            decided(c);
            self.state.fetch_or(COMPLETE, AcqRel);
            drop_quietly(r);
            return c;
        }
        let waker = {
            let mut slot = self.lock();
            // Checked again under the lock: an early resolution takes it too.
            let state = self.state.load(Acquire);
            if state & COMPLETE != 0 {
                drop(slot);
                let c = Completion::Early(early_cause(state));
                decided(c);
                drop_quietly(r);
                return c;
            }
            decided(Completion::Delivered);
            slot.result = Some(r);
            // Set under the lock, so a handle that sees COMPLETE finds the result,
            // and one that saw it clear has its waker in the slot already.
            self.state.fetch_or(COMPLETE, AcqRel);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Completion::Delivered
    }

    /// Marks a claimed blocking closure as about to run inline on a pool thread,
    /// from where nothing can interrupt it. Returns `Err` if it must not run: its
    /// caller cancelled it first (`None`), or its handle was already resolved
    /// early (its run timeout fired while it waited for its thread, or an abort).
    pub(crate) fn begin_inline(&self) -> Result<(), Option<Early>> {
        let prev = self.state.fetch_or(INLINE, AcqRel);
        if prev & (EARLY_CANCEL | EARLY_TIMEOUT | EARLY_ABORT) != 0 {
            return Err(Some(early_cause(prev)));
        }
        if prev & CANCELLED != 0 {
            return Err(None);
        }
        Ok(())
    }

    /// Takes the result if there is one, or registers `waker` to be woken by
    /// [`complete`](Shared::complete).
    pub(super) fn poll_result(&self, waker: &Waker) -> Poll<Result<T, JobError>> {
        let mut slot = self.lock();
        if let Some(r) = slot.result.take() {
            return Poll::Ready(r);
        }
        if self.state.load(Acquire) & COMPLETE != 0 {
            // Complete with no result: a bug. Report a cancellation rather than hang.
            return Poll::Ready(Err(JobError::Cancelled));
        }
        match &mut slot.waker {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
        Poll::Pending
    }
}

fn early_cause(state: u8) -> Early {
    if state & EARLY_TIMEOUT != 0 {
        Early::TimedOut
    } else if state & EARLY_ABORT != 0 {
        Early::Aborted
    } else {
        Early::Cancelled
    }
}

impl<T: Send> Resolve for Shared<T> {
    fn resolve_early(&self, why: Early) {
        Shared::resolve_early(self, why);
    }
}

impl<T> Shared<T> {
    /// Resolves the handle of a closure running inline now, unless it is
    /// already resolved.
    pub(crate) fn resolve_early(&self, why: Early) {
        let waker = {
            let mut slot = self.lock();
            if self.state.load(Acquire) & COMPLETE != 0 {
                return;
            }
            // Only the handle can be waiting: it gets the error, and the closure's
            // value, when it returns, is dropped by `complete`.
            if self.state.load(Acquire) & HANDLE_GONE == 0 {
                slot.result = Some(Err(why.error()));
            }
            self.state.fetch_or(COMPLETE | why.bit(), AcqRel);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}
