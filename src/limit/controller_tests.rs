//! Unit tests of the control law (`controller.rs`).

use super::*;
use crate::LimitError;
use crate::limit::adaptive::{Adaptive, AdaptiveError};

fn ms(n: u64) -> Nanos {
    Duration::from_millis(n)
}

fn ctl(cfg: Adaptive, workers: usize) -> Controller {
    Controller::new(cfg.validate(workers).unwrap())
}

/// Runs `limit` jobs of `rtt` ms in lock step from `t`, all ending with `outcome`.
fn round(c: &mut Controller, t: &mut u64, rtt: u64, outcome: Outcome) -> bool {
    let n = c.limit() - c.in_flight();
    let tickets: Vec<Ticket> = (0..n).map(|_| c.on_start(ms(*t))).collect();
    *t += rtt;
    let mut changed = false;
    for tk in tickets {
        changed |= c.on_release(tk, ms(*t), outcome).limit_changed;
    }
    changed
}

#[test]
fn defaults() {
    let r = Adaptive::aimd().validate(8).unwrap();
    assert_eq!((r.initial, r.min, r.max), (1, 1, 8));
    assert_eq!(r.decrease, 0.9);
    assert_eq!(r.max_pause, Duration::from_secs(60));
    assert_eq!(Adaptive::default().validate(8), Ok(r));
}

#[test]
fn validation_errors() {
    let a = Adaptive::aimd;
    let err = |e| Err(LimitError::InvalidAdaptive(e));
    for d in [f64::NAN, 0.49, 1.0, 1.5, -0.9, f64::INFINITY] {
        assert_eq!(
            a().decrease(d).validate(4),
            err(AdaptiveError::DecreaseOutOfRange)
        );
    }
    assert!(a().decrease(0.5).validate(4).is_ok());
    assert!(a().decrease(0.999).validate(4).is_ok());
    assert_eq!(a().min(0).validate(4), err(AdaptiveError::MinZero));
    assert_eq!(a().max(0).validate(4), err(AdaptiveError::MaxZero));
    assert_eq!(
        a().min(5).max(3).validate(8),
        err(AdaptiveError::MinAboveMax { min: 5, max: 3 })
    );
    // max is capped at the workers first.
    assert_eq!(
        a().min(5).max(10).validate(4),
        err(AdaptiveError::MinAboveMax { min: 5, max: 4 })
    );
    assert_eq!(
        a().min(2).initial(1).validate(4),
        err(AdaptiveError::InitialOutOfRange {
            initial: 1,
            min: 2,
            max: 4
        })
    );
    assert_eq!(
        a().initial(9).validate(4),
        err(AdaptiveError::InitialOutOfRange {
            initial: 9,
            min: 1,
            max: 4
        })
    );
    assert_eq!(a().max(100).validate(16).unwrap().max, 16);
    assert_eq!(a().min(3).validate(16).unwrap().initial, 3);
    let e: Box<dyn std::error::Error> =
        Box::new(LimitError::InvalidAdaptive(AdaptiveError::MinZero));
    assert!(e.to_string().contains("min"));
    assert!(e.source().is_some());
    for e in [
        AdaptiveError::MaxZero,
        AdaptiveError::MinAboveMax { min: 2, max: 1 },
        AdaptiveError::InitialOutOfRange {
            initial: 0,
            min: 1,
            max: 1,
        },
        AdaptiveError::DecreaseOutOfRange,
    ] {
        assert!(!e.to_string().is_empty());
    }
    // Applied later with fewer workers, a valid setting is capped, never refused.
    let r = a().min(5).initial(8).max(10).resolve_capped(3);
    assert_eq!((r.min, r.initial, r.max), (3, 3, 3));
}

#[test]
fn growth_stops_at_max() {
    let mut c = ctl(Adaptive::aimd().max(6), 64);
    let mut t = 0;
    for _ in 0..50 {
        round(&mut c, &mut t, 100, Outcome::Success);
        assert!(c.limit() <= 6);
    }
    assert_eq!(c.limit(), 6);
}

#[test]
fn decrease_stops_at_min() {
    let mut c = ctl(Adaptive::aimd().min(3).initial(10).decrease(0.5), 64);
    let mut t = 0;
    for _ in 0..20 {
        round(&mut c, &mut t, 100, Outcome::Overload { retry_after: None });
        assert!(c.limit() >= 3);
    }
    assert_eq!(c.limit(), 3);
}

#[test]
fn min_equals_max_never_moves() {
    let mut c = ctl(Adaptive::aimd().min(4).max(4).initial(4), 64);
    let mut t = 0;
    for i in 0..40 {
        let o = if i % 3 == 0 {
            Outcome::Overload { retry_after: None }
        } else {
            Outcome::Success
        };
        assert!(!round(&mut c, &mut t, 50 + i, o));
        assert_eq!(c.limit(), 4);
    }
}

#[test]
fn a_cut_always_goes_down_by_at_least_one() {
    let mut c = ctl(Adaptive::aimd().initial(2).decrease(0.99), 64);
    let tk = c.on_start(ms(0));
    let r = c.on_release(tk, ms(10), Outcome::Overload { retry_after: None });
    assert!(r.limit_changed);
    assert_eq!(c.limit(), 1);
}

#[test]
fn one_cut_per_burst() {
    let mut c = ctl(Adaptive::aimd().initial(10), 64);
    let ts: Vec<Ticket> = (0..10).map(|i| c.on_start(ms(i))).collect();
    let o = Outcome::Overload { retry_after: None };
    assert!(c.on_release(ts[0], ms(100), o).limit_changed);
    assert_eq!(c.limit(), 9);
    for &tk in &ts[1..] {
        assert!(!c.on_release(tk, ms(101), o).limit_changed);
    }
    assert_eq!(c.limit(), 9);
    // A job started after the cut starts a new burst.
    let tk = c.on_start(ms(102));
    assert!(c.on_release(tk, ms(150), o).limit_changed);
    assert_eq!(c.limit(), 8);
}

#[test]
fn retry_after_pauses_and_extends_to_the_latest() {
    let mut c = ctl(Adaptive::aimd().initial(4).max_pause(ms(500)), 64);
    let ts: Vec<Ticket> = (0..4).map(|_| c.on_start(ms(0))).collect();
    let ra = |d| Outcome::Overload {
        retry_after: Some(ms(d)),
    };
    let r = c.on_release(ts[0], ms(100), ra(200));
    assert_eq!(r.pause_until, Some(ms(300)));
    assert!(r.limit_changed);
    assert!(!c.admits(ms(299)));
    // Shorter: no extension.
    let r = c.on_release(ts[1], ms(110), ra(50));
    assert_eq!(r.pause_until, None);
    // Later: extends, capped by max_pause; still one decrease.
    let r = c.on_release(ts[2], ms(120), ra(10_000));
    assert_eq!(r.pause_until, Some(ms(620)));
    assert!(!r.limit_changed);
    assert_eq!(c.paused_until(), Some(ms(620)));
    assert_eq!(c.limit(), 3);
    assert!(c.on_release(ts[3], ms(130), ra(0)).pause_until.is_none());
    assert!(!c.admits(ms(619)));
    assert!(c.admits(ms(620)));
}

#[test]
fn zero_max_pause_never_pauses() {
    let mut c = ctl(Adaptive::aimd().initial(4).max_pause(Duration::ZERO), 64);
    let tk = c.on_start(ms(0));
    let r = c.on_release(
        tk,
        ms(10),
        Outcome::Overload {
            retry_after: Some(ms(100)),
        },
    );
    assert_eq!(r.pause_until, None);
    assert!(c.admits(ms(10)));
}

#[test]
fn stale_and_foreign_tickets_change_nothing() {
    let mut c = ctl(Adaptive::aimd().initial(4), 64);
    let a = c.on_start(ms(0));
    let b = c.on_start(ms(0));
    assert_eq!(c.in_flight(), 2);
    c.on_release(a, ms(100), Outcome::Success);
    let o = Outcome::Overload { retry_after: None };
    assert_eq!(c.on_release(a, ms(100), o), Release::default());
    assert_eq!(c.on_release(Ticket(99), ms(100), o), Release::default());
    assert_eq!(c.in_flight(), 1);
    assert_eq!(c.limit(), 4);
    c.on_release(b, ms(100), Outcome::Success);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn ring_tracks_the_oldest_running_job() {
    let mut c = ctl(Adaptive::aimd().initial(8), 64);
    let ts: Vec<Ticket> = (0..5).map(|i| c.on_start(ms(i * 10))).collect();
    assert_eq!(c.oldest_start(), Some(ms(0)));
    c.on_release(ts[2], ms(60), Outcome::Ignore);
    c.on_release(ts[0], ms(60), Outcome::Ignore);
    assert_eq!(c.oldest_start(), Some(ms(10)));
    c.on_release(ts[1], ms(60), Outcome::Ignore);
    assert_eq!(c.oldest_start(), Some(ms(30)));
    c.on_release(ts[4], ms(60), Outcome::Ignore);
    c.on_release(ts[3], ms(60), Outcome::Ignore);
    assert_eq!(c.oldest_start(), None);
    assert!(c.ring.is_empty());
    // Steady state reuses the ring's buffer.
    let cap = c.ring.capacity();
    for i in 0..10_000u64 {
        let tk = c.on_start(ms(100 + i));
        c.on_release(tk, ms(101 + i), Outcome::Ignore);
    }
    assert_eq!(c.ring.capacity(), cap);
    assert_eq!(c.limit(), 8);
}

#[test]
fn ignore_only_never_changes_the_limit() {
    let mut c = ctl(Adaptive::aimd().initial(5), 64);
    let mut t = 0;
    for _ in 0..100 {
        assert!(!round(&mut c, &mut t, 100, Outcome::Ignore));
    }
    assert_eq!(c.limit(), 5);
}

#[test]
fn slow_start_then_additive() {
    let mut c = ctl(Adaptive::aimd().max(64), 64);
    let mut t = 0;
    let mut seen = vec![c.limit()];
    for _ in 0..6 {
        round(&mut c, &mut t, 100, Outcome::Success);
        seen.push(c.limit());
    }
    assert_eq!(seen, [1, 1, 2, 4, 8, 16, 32]);
    round(&mut c, &mut t, 100, Outcome::Overload { retry_after: None });
    let after = c.limit();
    assert!(after < 32);
    round(&mut c, &mut t, 100, Outcome::Success);
    round(&mut c, &mut t, 100, Outcome::Success);
    assert_eq!(c.limit(), after + 1);
}

#[test]
fn zero_run_times_do_not_panic() {
    let mut c = ctl(Adaptive::aimd(), 4);
    for _ in 0..1000 {
        let tk = c.on_start(ms(5));
        c.on_release(tk, ms(5), Outcome::Success);
    }
    // Time going backwards is a caller's bug, but must not panic either.
    let tk = c.on_start(ms(10));
    c.on_release(tk, ms(1), Outcome::Success);
    assert!(c.limit() >= 1 && c.limit() <= 4);
}

/// Success rounds until the limit grows (at most 20).
fn rounds_to_grow(c: &mut Controller, t: &mut u64) -> usize {
    let from = c.limit();
    (1..=20)
        .find(|_| {
            round(c, t, 100, Outcome::Success);
            c.limit() > from
        })
        .unwrap_or(99)
}

#[test]
fn cuts_with_retry_after_hold_growth_and_back_off() {
    let ra = Outcome::Overload {
        retry_after: Some(ms(10)),
    };
    let plain = Outcome::Overload { retry_after: None };
    let fresh = || {
        let mut c = ctl(Adaptive::aimd().initial(16).max(64), 64);
        let mut t = 0;
        // Leave slow start and learn a run time.
        round(&mut c, &mut t, 100, plain);
        for _ in 0..4 {
            round(&mut c, &mut t, 100, Outcome::Success);
        }
        (c, t)
    };
    // A cut without a retry_after: growth resumes after the window of its burst.
    let (mut c, mut t) = fresh();
    round(&mut c, &mut t, 100, plain);
    let n0 = rounds_to_grow(&mut c, &mut t);
    // With one: held one window more.
    let (mut c, mut t) = fresh();
    round(&mut c, &mut t, 100, ra);
    let n1 = rounds_to_grow(&mut c, &mut t);
    assert_eq!(n1, n0 + 1, "{n0} {n1}");
    // A second one before the back-off decayed: held twice as long.
    let (mut c, mut t) = fresh();
    round(&mut c, &mut t, 100, ra);
    round(&mut c, &mut t, 100, Outcome::Success);
    round(&mut c, &mut t, 100, ra);
    let n2 = rounds_to_grow(&mut c, &mut t);
    assert_eq!(n2, n0 + 2, "{n0} {n2}");
}

#[test]
fn a_window_spent_paused_is_not_taken_for_the_downstreams_capacity() {
    let mut c = ctl(Adaptive::aimd().initial(20).max(64), 64);
    let mut t = 0;
    round(&mut c, &mut t, 100, Outcome::Overload { retry_after: None });
    for _ in 0..5 {
        round(&mut c, &mut t, 100, Outcome::Success);
    }
    let before = c.limit();
    // A retry_after pauses for a second; one job runs through it, so windows end
    // having completed almost nothing.
    let tk = c.on_start(ms(t));
    let ra = Outcome::Overload {
        retry_after: Some(ms(1_000)),
    };
    c.on_release(tk, ms(t + 10), ra);
    let lone = c.on_start(ms(t + 20));
    c.on_release(lone, ms(t + 70), Outcome::Success);
    t += 1_010;
    // The first job after the pause ends the window that spent it paused.
    let first = c.on_start(ms(t));
    t += 100;
    c.on_release(first, ms(t), Outcome::Success);
    // The next overload cuts by the factor, not down to what the paused windows
    // completed (one job in a second: a limit of 1).
    round(&mut c, &mut t, 100, Outcome::Overload { retry_after: None });
    let after_first = c.limit();
    round(&mut c, &mut t, 100, Outcome::Overload { retry_after: None });
    // Two cuts by 0.9 (the retry_after's and this burst's), at most.
    assert!(
        after_first + 1 >= before * 81 / 100,
        "{before} -> {after_first}"
    );
    assert!(
        c.limit() + 1 >= after_first * 9 / 10,
        "{before} -> {after_first} -> {}",
        c.limit()
    );
}

#[test]
fn one_long_job_does_not_grow_the_ring() {
    let mut c = ctl(Adaptive::aimd().initial(8).max(8), 64);
    let long = c.on_start(ms(0));
    for i in 0..100_000u64 {
        let tk = c.on_start(ms(1 + i));
        c.on_release(tk, ms(2 + i), Outcome::Success);
    }
    assert!(c.ring.len() < 300, "ring of {}", c.ring.len());
    assert_eq!(c.in_flight(), 1);
    assert_eq!(c.oldest_start(), Some(ms(0)));
    // The long job still counts, and comes back once.
    c.on_release(long, ms(200_000), Outcome::Success);
    assert_eq!(c.in_flight(), 0);
    assert_eq!(
        c.on_release(long, ms(200_001), Outcome::Success),
        Release::default()
    );
    assert!(c.evicted.is_empty());
}

#[test]
fn one_hung_job_cuts_once_even_after_it_leaves_the_ring() {
    // A job that hangs from the start, while others complete: the hang counts
    // as one overload, however long it lasts, also once the ring has moved the
    // hung job's slot out (the cut is then judged by the job's own ticket, not
    // the ring's head).
    let mut c = ctl(Adaptive::aimd().initial(8).max(8), 64);
    let _hung = c.on_start(ms(0));
    let mut t = 1;
    let mut lowest = c.limit();
    for _ in 0..200 {
        round(&mut c, &mut t, 10, Outcome::Success);
        lowest = lowest.min(c.limit());
    }
    assert!(!c.evicted.is_empty(), "the hung job left the ring");
    assert_eq!(lowest, 7, "one cut for one hang");
}
