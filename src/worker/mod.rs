//! The workers: the loop on a Tokio task, blocking closures on blocking threads, and the timer task.

mod run;
mod thread;

pub(crate) use run::{Started, Worker, resume, spawn, spawn_reaper};
