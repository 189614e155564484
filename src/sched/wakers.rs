//! [`Wakers`]: the wakers collected under the pool's lock, to wake once it is
//! released.
//!
//! On the job path a finish or a push grants at most a place or two, so the
//! first waker is held inline and only a second one allocates. A `Vec` here cost
//! an allocation and a free per grant: with a submitter that waits for every
//! place (one runtime thread, jobs that yield), one per job.

use std::task::Waker;

/// Wakers to wake after the lock is released, the first one held inline.
#[derive(Default)]
pub(crate) struct Wakers {
    first: Option<Waker>,
    more: Vec<Waker>,
}

impl Wakers {
    /// Adds `w`, to be woken by [`Wakers::wake`].
    pub(crate) fn push(&mut self, w: Waker) {
        if self.first.is_none() {
            self.first = Some(w);
        } else {
            self.more.push(w);
        }
    }

    /// Adds every waker of `ws`.
    pub(crate) fn extend(&mut self, ws: impl IntoIterator<Item = Waker>) {
        for w in ws {
            self.push(w);
        }
    }

    /// Wakes them all, consuming them. Call with no lock held: a wake may run
    /// the woken task's code (a waker is user code).
    pub(crate) fn wake(self) {
        // `more` is empty unless `first` is set: most calls end here.
        let Some(w) = self.first else { return };
        w.wake();
        self.more.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn wakes_every_waker_pushed() {
        for n in 0..4 {
            let c = Arc::new(Count(AtomicUsize::new(0)));
            let mut ws = Wakers::default();
            ws.extend((0..n).map(|_| Waker::from(c.clone())));
            ws.wake();
            assert_eq!(c.0.load(Ordering::Relaxed), n, "{n} wakers pushed");
        }
    }
}
