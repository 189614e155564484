//! [`Priority`]: which startable job goes first.

/// How urgent a job is, set with [`JobBuilder::priority`](crate::JobBuilder::priority).
///
/// Among jobs that could start now, a higher priority starts first. A job that has
/// waited in the queue longer than the pool's
/// [`priority_aging`](crate::Builder::priority_aging) (1 s by default) ranks as
/// `High`, so a steady stream of urgent jobs cannot starve the others.
///
/// Priority orders starts only; it does not preempt running jobs, and it does not
/// lift a job over its key's limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Starts after every startable `Normal` and `High` job.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Starts before every startable `Normal` and `Low` job.
    High,
}

impl Priority {
    /// Index into per-priority arrays: `Low` = 0, `Normal` = 1, `High` = 2.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}
