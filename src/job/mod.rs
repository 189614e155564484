//! One job on its way through the pool: the work, its envelope, its result cell and the caller's handle.

mod cell;
mod handle;
mod task;
mod work;

pub(crate) use cell::{Completion, Early, Resolve, Shared};
pub(crate) use handle::{Canceller, Pos};
pub use handle::{JobHandle, JobId};
pub(crate) use task::{Counters, Job, RunCtx, Task};
pub(crate) use work::{
    AsyncWork, BlockingWork, Classified, Classifier, Work, drop_quietly, panic_message,
};
