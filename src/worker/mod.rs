//! The workers: the loop on a Tokio task, blocking closures on blocking threads, and the timer task.

mod reaper;
mod run;
mod thread;

pub(crate) use reaper::spawn_reaper;
pub(crate) use run::{Started, Worker, resume, spawn};
