//! One job on its way through the pool: the work, its envelope, its result cell and the caller's handle.

mod cell;
mod task;

pub(crate) use cell::{Completion, Early, Resolve, Shared};
pub use cell::{JobHandle, JobId};
pub(crate) use task::{AsyncWork, BlockingWork, Counters, Job, RunCtx, Task, Work, drop_quietly};
