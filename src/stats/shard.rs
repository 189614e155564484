//! Counters and latency histograms written by one worker: [`Shard`], and
//! [`Totals`], which sums shards into a [`Stats`] snapshot.
//!
//! Each worker task owns a [`Shard`] that only it writes, so recording an outcome is
//! a handful of uncontended relaxed loads and stores, with no lock and no
//! read-modify-write. [`Pool::stats`](crate::Pool::stats) sums the shards under the
//! pool lock. A worker that exits folds its shard into the pool's `retired` shard.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::{Ending, Latency};

/// Sub-buckets per power of two: 4, so a bucket spans at most 25% of its value.
const SUB_BITS: u32 = 2;
const SUB: u64 = 1 << SUB_BITS;
/// Values are clamped to 2^48 ns (about 3.3 days).
const MAX_EXP: u32 = 48;
const BUCKETS: usize = (SUB as usize) + ((MAX_EXP - SUB_BITS) as usize) * (SUB as usize);

/// Adds one to a counter that has a single writer, without a locked instruction.
#[inline]
fn bump(a: &AtomicU64) {
    a.store(a.load(Relaxed).wrapping_add(1), Relaxed);
}

/// A log-scale histogram of durations in nanoseconds, in atomics.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    fn index(ns: u64) -> usize {
        let ns = ns.min((1u64 << MAX_EXP) - 1);
        if ns < SUB {
            return ns as usize;
        }
        let exp = 63 - ns.leading_zeros(); // >= SUB_BITS
        let sub = (ns >> (exp - SUB_BITS)) & (SUB - 1);
        ((exp - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
    }

    /// The largest value that falls in bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < SUB as usize {
            return i as u64;
        }
        let exp = (i / SUB as usize) as u32 + SUB_BITS - 1;
        let sub = (i % SUB as usize) as u64;
        let width = 1u64 << (exp - SUB_BITS);
        ((SUB + sub) << (exp - SUB_BITS)) + width - 1
    }

    /// Records one value. Single writer only (the owning worker).
    #[inline]
    fn record_single(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        bump(&self.buckets[Self::index(ns)]);
        if ns > self.max.load(Relaxed) {
            self.max.store(ns, Relaxed);
        }
    }

    /// Adds another histogram into this one; safe with several writers.
    fn merge_from(&self, other: &Histogram) {
        for (a, b) in self.buckets.iter().zip(other.buckets.iter()) {
            let v = b.load(Relaxed);
            if v != 0 {
                a.fetch_add(v, Relaxed);
            }
        }
        self.max.fetch_max(other.max.load(Relaxed), Relaxed);
    }

    fn add_into(&self, counts: &mut [u64], max: &mut u64) {
        for (c, b) in counts.iter_mut().zip(self.buckets.iter()) {
            *c += b.load(Relaxed);
        }
        *max = (*max).max(self.max.load(Relaxed));
    }
}

/// Summarises bucket counts as a [`Latency`].
fn latency(counts: &[u64], max: u64) -> Latency {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return Latency::default();
    }
    let at = |q: f64| {
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos(Histogram::upper(i).min(max));
            }
        }
        Duration::from_nanos(max)
    };
    Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: Duration::from_nanos(max),
    }
}

/// Outcome counters and histograms written by one worker task.
pub(crate) struct Shard {
    pub(crate) completed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) panicked: AtomicU64,
    /// Jobs that ended as cancelled because the pool was aborted while they ran.
    pub(crate) aborted: AtomicU64,
    queue_wait: Histogram,
    run_time: Histogram,
}

impl Shard {
    pub(crate) fn new() -> Self {
        Shard {
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            queue_wait: Histogram::new(),
            run_time: Histogram::new(),
        }
    }

    /// Records a job's outcome. Called by the owning worker only.
    #[inline]
    pub(crate) fn record(&self, outcome: Ending) {
        match outcome {
            Ending::Completed => bump(&self.completed),
            Ending::Cancelled => bump(&self.cancelled),
            Ending::Aborted => {
                bump(&self.cancelled);
                bump(&self.aborted);
            }
            Ending::TimedOut => bump(&self.timed_out),
            Ending::Panicked => bump(&self.panicked),
        }
    }

    #[inline]
    pub(crate) fn record_queue_wait(&self, d: Duration) {
        self.queue_wait.record_single(d);
    }

    #[inline]
    pub(crate) fn record_run_time(&self, d: Duration) {
        self.run_time.record_single(d);
    }

    /// Folds `other` into this shard; safe with several writers.
    pub(crate) fn merge_from(&self, other: &Shard) {
        self.completed
            .fetch_add(other.completed.load(Relaxed), Relaxed);
        self.cancelled
            .fetch_add(other.cancelled.load(Relaxed), Relaxed);
        self.timed_out
            .fetch_add(other.timed_out.load(Relaxed), Relaxed);
        self.panicked
            .fetch_add(other.panicked.load(Relaxed), Relaxed);
        self.aborted.fetch_add(other.aborted.load(Relaxed), Relaxed);
        self.queue_wait.merge_from(&other.queue_wait);
        self.run_time.merge_from(&other.run_time);
    }
}

/// Accumulates shards into a [`Stats`] snapshot.
pub(crate) struct Totals {
    pub(crate) completed: u64,
    pub(crate) cancelled: u64,
    pub(crate) timed_out: u64,
    pub(crate) panicked: u64,
    pub(crate) aborted: u64,
    wait_counts: Vec<u64>,
    wait_max: u64,
    run_counts: Vec<u64>,
    run_max: u64,
}

impl Totals {
    pub(crate) fn new() -> Self {
        Totals {
            completed: 0,
            cancelled: 0,
            timed_out: 0,
            panicked: 0,
            aborted: 0,
            wait_counts: vec![0; BUCKETS],
            wait_max: 0,
            run_counts: vec![0; BUCKETS],
            run_max: 0,
        }
    }

    pub(crate) fn add(&mut self, s: &Shard) {
        self.completed += s.completed.load(Relaxed);
        self.cancelled += s.cancelled.load(Relaxed);
        self.timed_out += s.timed_out.load(Relaxed);
        self.panicked += s.panicked.load(Relaxed);
        self.aborted += s.aborted.load(Relaxed);
        s.queue_wait
            .add_into(&mut self.wait_counts, &mut self.wait_max);
        s.run_time.add_into(&mut self.run_counts, &mut self.run_max);
    }

    pub(crate) fn queue_wait(&self) -> Latency {
        latency(&self.wait_counts, self.wait_max)
    }

    pub(crate) fn run_time(&self) -> Latency {
        latency(&self.run_counts, self.run_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_contain_their_values() {
        let mut prev = None;
        for i in 0..BUCKETS {
            let up = Histogram::upper(i);
            if let Some(p) = prev {
                assert!(up > p, "bucket {i} upper {up} <= {p}");
            }
            assert_eq!(Histogram::index(up), i, "upper edge of bucket {i}");
            prev = Some(up);
        }
        for ns in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            1000,
            1_000_000,
            123_456_789,
            u64::MAX,
        ] {
            let i = Histogram::index(ns);
            assert!(i < BUCKETS);
            if ns < (1 << MAX_EXP) {
                assert!(Histogram::upper(i) >= ns);
                assert!(Histogram::upper(i) as f64 <= ns as f64 * 1.25 + 1.0);
            }
        }
    }

    #[test]
    fn percentiles() {
        let s = Shard::new();
        for ms in 1..=100u64 {
            s.record_run_time(Duration::from_millis(ms));
        }
        let mut t = Totals::new();
        t.add(&s);
        let l = t.run_time();
        assert_eq!(l.max, Duration::from_millis(100));
        assert!(l.p50 >= Duration::from_millis(50) && l.p50 <= Duration::from_millis(63));
        assert!(l.p90 >= Duration::from_millis(90) && l.p90 <= Duration::from_millis(100));
        assert!(l.p99 >= Duration::from_millis(99) && l.p99 <= Duration::from_millis(100));
        assert_eq!(Totals::new().run_time(), Latency::default());
    }
}
