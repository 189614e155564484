//! The shared core: the queue, the scheduler, worker accounting and waiting submitters.

mod aging;
mod control;
mod inner;
mod keys;
mod lanes;
mod priority;
mod state;
mod take;
mod timers;
mod waiters;
mod wakers;

pub(crate) use inner::Spawner;
pub(crate) use inner::{Held, Inner, Place, Refused, SchedConfig, Waiting};
pub(crate) use lanes::{Gone, Queued, RemoteEnv, Sched, Tickets};
pub use priority::Priority;
pub(crate) use waiters::{Granted, Ticket, Waiters};
pub(crate) use wakers::Wakers;
