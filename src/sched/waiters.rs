//! Submitters waiting for queue space: [`Waiters`], and who gets a place that frees.
//!
//! A submitter whose job the queue refuses registers here, under the pool's lock,
//! and sleeps. When a place may have freed, the pool calls `State::grant`, which
//! hands the freed places, one by one, to the **oldest waiter that can use one**:
//! the pool's queue has room (counting places already granted), and so does the
//! waiter's key queue (counting that key's grants). A grant earmarks the place, so
//! that it is granted once, and the waiter is woken to queue its job with it. A
//! push that does not wait may still take an earmarked place; then the youngest
//! grant is taken back (`revoke`), and its waiter, back in line with its old
//! sequence number, gets the next place. A waiter that cannot use a freed place
//! (its key queue is full) is passed over and stays first in line for its key.
//!
//! Waiters are grouped by key. A group whose key queue is full is *blocked*: it
//! leaves the line of ready groups, and its lane is marked so that the scheduler
//! reports the key when one of its jobs leaves the queue. So a grant costs
//! O(log groups), never a scan of waiters that cannot use the place, and a blocked
//! key with 10 000 waiters does not stand in front of a ready one.
//!
//! No waiter is stranded: whenever the lock is released, every waiter that has not
//! been granted a place is refused by the pool's queue (no room after the grants),
//! or by its key's queue (and its group is blocked and watched). A granted waiter
//! either queues its job; or gives the grant back when it leaves (dropped, timed
//! out, closed out), and the place goes to the next waiter in line; or has it
//! taken back by a push that took the place, and is first in line again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::task::Waker;

use crate::limit::Key;

/// A waiter's registration: its entry and the sequence number that tells this
/// registration from later ones in the same entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    idx: u32,
    seq: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// In its group's line.
    Waiting,
    /// Holds a reserved place.
    Granted,
    /// Out of the line, holding nothing, while its push is decided.
    Out,
}

struct Entry {
    seq: u64,
    key: Option<Key>,
    waker: Option<Waker>,
    turn: Turn,
}

/// The waiters of one key (or the unkeyed ones).
#[derive(Default)]
struct Group {
    /// Waiting entries by sequence number, oldest first; entries that left are
    /// skipped when found at the front (and dropped in bulk when they pile up).
    line: VecDeque<Ticket>,
    waiting: usize,
    /// Places reserved for this group's waiters, not yet used.
    granted: usize,
    /// The sequence number under which it is in `ready`, if it is.
    ready: Option<u64>,
}

/// The groups: the unkeyed waiters' and one per key with waiters.
#[derive(Default)]
struct Groups {
    unkeyed: Group,
    keyed: HashMap<Key, Group>,
}

impl Groups {
    fn get(&self, key: Option<&Key>) -> Option<&Group> {
        match key {
            None => Some(&self.unkeyed),
            Some(k) => self.keyed.get(k),
        }
    }

    fn get_mut(&mut self, key: Option<&Key>) -> Option<&mut Group> {
        match key {
            None => Some(&mut self.unkeyed),
            Some(k) => self.keyed.get_mut(k),
        }
    }

    /// The group of `key`, made if it has none.
    fn entry(&mut self, key: Option<&Key>) -> &mut Group {
        match key {
            None => &mut self.unkeyed,
            Some(k) => self.keyed.entry(k.clone()).or_default(),
        }
    }
}

/// The submitters waiting for queue space, under the pool's lock.
#[derive(Default)]
pub(crate) struct Waiters {
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    next_seq: u64,
    groups: Groups,
    /// Groups with a waiter whose key queue is not known to be full, by the
    /// sequence number of their oldest waiter.
    ready: ReadyLine,
    /// Places reserved for granted waiters, pool-wide.
    pub(crate) granted: usize,
    /// The granted waiters, by sequence number (to take back the youngest grant).
    grants: Grants,
    /// Registrations alive (waiting, granted or out).
    alive: usize,
}

/// What [`Waiters::grant_next`] did.
pub(crate) enum Granted {
    /// A waiter got a place; wake it.
    Woke(Option<Waker>),
    /// The oldest ready group's key queue is full: the group is blocked now, and
    /// the scheduler must report this key when its queue frees a place.
    Blocked(Key),
    /// No ready group is left.
    None,
}

impl Waiters {
    /// Whether no submitter is registered: the hot path's only check.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.alive == 0
    }

    /// Whether some group may take a place now.
    #[inline]
    pub(crate) fn any_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Whether `key` has waiters held by its full queue.
    pub(crate) fn blocked(&self, key: &Key) -> bool {
        self.groups
            .keyed
            .get(key)
            .is_some_and(|g| g.waiting > 0 && g.ready.is_none())
    }

    /// Places reserved for waiters of `key` (or the unkeyed ones).
    pub(crate) fn granted_for(&self, key: Option<&Key>) -> usize {
        if self.granted == 0 {
            return 0;
        }
        self.groups.get(key).map_or(0, |g| g.granted)
    }

    /// Registers a refused submitter at the back of its key's line. `key_full`:
    /// refused by its key's queue (the group is then not made ready: the caller
    /// has the key watched instead).
    pub(crate) fn register(&mut self, key: Option<&Key>, key_full: bool) -> Ticket {
        self.next_seq += 1;
        let seq = self.next_seq;
        let entry = Entry {
            seq,
            key: key.cloned(),
            // Set by `keep_waiting`, under the same lock.
            waker: None,
            turn: Turn::Waiting,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.entries[i as usize] = Some(entry);
                i
            }
            None => {
                self.entries.push(Some(entry));
                u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 waiting submitters")
            }
        };
        self.alive += 1;
        let t = Ticket { idx, seq };
        let g = self.groups.entry(key);
        g.line.push_back(t);
        g.waiting += 1;
        if !key_full && g.ready.is_none() {
            g.ready = Some(seq);
            self.ready.insert(seq, key.cloned());
        }
        t
    }

    fn entry_mut(&mut self, t: Ticket) -> Option<&mut Entry> {
        self.entries
            .get_mut(t.idx as usize)?
            .as_mut()
            .filter(|e| e.seq == t.seq)
    }

    /// Whether the waiter is still in its line (it holds no place); if so, keeps
    /// `waker` to wake it by when a place is granted to it.
    pub(crate) fn keep_waiting(&mut self, t: Ticket, waker: &Waker) -> bool {
        let Some(e) = self.entry_mut(t) else {
            return false;
        };
        if e.turn != Turn::Waiting {
            return false;
        }
        match &e.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => e.waker = Some(waker.clone()),
        }
        true
    }

    /// Takes the waiter out of the line (or gives back its grant) while its push
    /// is decided. Returns whether it held a grant.
    pub(crate) fn step_out(&mut self, t: Ticket) -> bool {
        let Some(e) = self.entry_mut(t) else {
            return false;
        };
        let turn = std::mem::replace(&mut e.turn, Turn::Out);
        let key = e.key.clone();
        match turn {
            Turn::Out => false,
            Turn::Granted => {
                self.granted -= 1;
                self.grants.remove((t.seq, t.idx));
                let g = self
                    .groups
                    .get_mut(key.as_ref())
                    .expect("a granted waiter's group");
                g.granted -= 1;
                true
            }
            Turn::Waiting => {
                let entries = &self.entries;
                let g = self.groups.get_mut(key.as_ref()).expect("a waiter's group");
                g.waiting -= 1;
                // Entries that left stay in the line until they reach its front;
                // drop them in bulk once they could outnumber the waiting ones.
                if g.line.len() > 2 * g.waiting + 16 {
                    g.line.retain(|&x| is_waiting(entries, x));
                }
                self.refresh(key.as_ref(), t);
                false
            }
        }
    }

    /// Puts a waiter that stepped out back in its line, in its old place (it
    /// keeps its sequence number), after its push was refused again.
    pub(crate) fn step_in(&mut self, t: Ticket, key_full: bool) {
        let Some(e) = self.entry_mut(t) else {
            return;
        };
        debug_assert!(e.turn == Turn::Out);
        e.turn = Turn::Waiting;
        let key = e.key.clone();
        let g = self.groups.entry(key.as_ref());
        // Its old place may still be in the line (entries that leave stay there
        // until they reach the front).
        let at = g.line.partition_point(|x| x.seq < t.seq);
        if g.line.get(at) != Some(&t) {
            g.line.insert(at, t);
        }
        g.waiting += 1;
        if !key_full {
            self.make_ready(key.as_ref());
        }
    }

    /// Takes back the youngest grant (of `key`'s waiters, if `key` is given; of
    /// any waiter otherwise): a submitter that did not wait took the place (see
    /// `State::take_back`). The waiter goes back into its line, ahead of every
    /// younger waiter, and finds out when it next polls. Returns its key.
    pub(crate) fn revoke(&mut self, key: Option<&Key>) -> Option<Option<Key>> {
        let entries = &self.entries;
        let &(seq, idx) = self.grants.0.iter().rev().find(|&&(_, idx)| {
            key.is_none()
                || entries[idx as usize]
                    .as_ref()
                    .is_some_and(|e| e.key.as_ref() == key)
        })?;
        let t = Ticket { idx, seq };
        let owner = self.entry_mut(t)?.key.clone();
        self.step_out(t);
        // Its group is made ready; if its key is full, `grant` finds out and has
        // the key watched.
        self.step_in(t, false);
        Some(owner)
    }

    /// Every group with waiters goes back in the ready line (a key's share of
    /// the places changed with the pool's size); `grant` finds out which keys are
    /// full.
    pub(crate) fn make_all_ready(&mut self) {
        let keys: Vec<Key> = self
            .groups
            .keyed
            .iter()
            .filter(|(_, g)| g.ready.is_none() && g.waiting > 0)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.make_ready(Some(&k));
        }
        self.make_ready(None);
    }

    /// Ends a registration (its push succeeded, or its call ended). Returns
    /// whether it gave back a grant, so that the place must go to someone else.
    pub(crate) fn leave(&mut self, t: Ticket) -> bool {
        if self.entry_mut(t).is_none() {
            return false;
        }
        let gave_back = self.step_out(t);
        let Some(e) = self.entries.get_mut(t.idx as usize).and_then(Option::take) else {
            return gave_back;
        };
        self.free.push(t.idx);
        self.alive -= 1;
        if gave_back {
            // The key may have room again.
            self.make_ready(e.key.as_ref());
        }
        self.forget_if_empty(e.key.as_ref());
        if self.alive == 0 {
            self.shrink();
        }
        gave_back
    }

    /// The group of `key` may take a place again: back in the ready line if it
    /// has waiters.
    pub(crate) fn make_ready(&mut self, key: Option<&Key>) {
        let entries = &self.entries;
        let Some(g) = self.groups.get_mut(key) else {
            return;
        };
        let Some(h) = head(g, entries) else {
            return;
        };
        match g.ready {
            Some(s) if s <= h.seq => return,
            // Filed under a younger waiter than its head (one stepped back in).
            Some(s) => {
                self.ready.remove(s, key);
            }
            None => {}
        }
        g.ready = Some(h.seq);
        self.ready.insert(h.seq, key.cloned());
    }

    /// After the waiter `t` left the line of `key`'s group: if it was the head
    /// under which the group is ready, re-file the group under its new head.
    fn refresh(&mut self, key: Option<&Key>, t: Ticket) {
        let entries = &self.entries;
        let Some(g) = self.groups.get_mut(key) else {
            return;
        };
        if g.ready != Some(t.seq) {
            return;
        }
        self.ready.remove(t.seq, key);
        g.ready = None;
        // `t` is out of the line now, so `head` skips it.
        if let Some(h) = head(g, entries) {
            g.ready = Some(h.seq);
            self.ready.insert(h.seq, key.cloned());
        }
    }

    fn forget_if_empty(&mut self, key: Option<&Key>) {
        let Some(k) = key else { return };
        if self
            .groups
            .keyed
            .get(k)
            .is_some_and(|g| g.waiting == 0 && g.granted == 0)
        {
            let g = self.groups.keyed.remove(k).expect("checked");
            if let Some(s) = g.ready {
                self.ready.remove(s, key);
            }
        }
    }

    /// Gives a place to the oldest waiter of the oldest ready group, if its key
    /// has room: `key_room(key, granted_to_key)` says whether it does (unkeyed
    /// waiters have no key queue). The caller has checked that the pool's queue
    /// has room.
    pub(crate) fn grant_next(&mut self, mut key_room: impl FnMut(&Key, usize) -> bool) -> Granted {
        loop {
            let Some((seq, key)) = self.ready.pop_first() else {
                return Granted::None;
            };
            let entries = &mut self.entries;
            let Some(g) = self.groups.get_mut(key.as_ref()) else {
                continue;
            };
            debug_assert_eq!(g.ready, Some(seq));
            g.ready = None;
            let Some(t) = head(g, entries) else {
                continue;
            };
            if let Some(k) = &key
                && !key_room(k, g.granted)
            {
                return Granted::Blocked(k.clone());
            }
            g.line.pop_front();
            g.waiting -= 1;
            g.granted += 1;
            self.granted += 1;
            self.grants.insert((t.seq, t.idx));
            let e = entries[t.idx as usize].as_mut().expect("head is alive");
            e.turn = Turn::Granted;
            let waker = e.waker.take();
            if let Some(h) = head(g, entries) {
                g.ready = Some(h.seq);
                self.ready.insert(h.seq, key);
            }
            return Granted::Woke(waker);
        }
    }

    /// Every registered waiter's waker (the pool closed: each must see it).
    pub(crate) fn wake_all(&mut self, out: &mut super::Wakers) {
        for e in self.entries.iter_mut().flatten() {
            out.extend(e.waker.take());
        }
    }

    fn shrink(&mut self) {
        if self.entries.len() > 1024 {
            self.entries = Vec::new();
            self.free = Vec::new();
            self.grants = Grants::default();
            self.groups = Groups::default();
        }
    }
}

/// The ready groups, by the sequence number of their oldest waiter. The unkeyed
/// group is kept apart from the keyed ones' map, so that a pool without keys
/// (the common case, and the job path when a submitter waits for every place)
/// never touches the map.
#[derive(Default)]
struct ReadyLine {
    unkeyed: Option<u64>,
    keyed: BTreeMap<u64, Key>,
}

impl ReadyLine {
    fn is_empty(&self) -> bool {
        self.unkeyed.is_none() && self.keyed.is_empty()
    }

    fn insert(&mut self, seq: u64, key: Option<Key>) {
        match key {
            None => self.unkeyed = Some(seq),
            Some(k) => {
                self.keyed.insert(seq, k);
            }
        }
    }

    /// Removes the group of `key`, filed under `seq`.
    fn remove(&mut self, seq: u64, key: Option<&Key>) {
        match key {
            None => {
                if self.unkeyed == Some(seq) {
                    self.unkeyed = None;
                }
            }
            Some(_) => {
                self.keyed.remove(&seq);
            }
        }
    }

    /// The group with the oldest waiter.
    fn pop_first(&mut self) -> Option<(u64, Option<Key>)> {
        match (self.unkeyed, self.keyed.first_key_value()) {
            (Some(u), Some((&k, _))) if k < u => self.keyed.pop_first().map(|(s, k)| (s, Some(k))),
            (Some(u), _) => {
                self.unkeyed = None;
                Some((u, None))
            }
            (None, _) => self.keyed.pop_first().map(|(s, k)| (s, Some(k))),
        }
    }
}

/// The granted waiters as `(seq, idx)`, sorted by sequence number. Places are
/// granted to the oldest waiters first and used in about that order, so a grant
/// is an append and its use a removal near the front: no allocation per grant,
/// as a `BTreeSet` node would cost.
#[derive(Default)]
struct Grants(VecDeque<(u64, u32)>);

impl Grants {
    fn insert(&mut self, g: (u64, u32)) {
        let at = self.0.partition_point(|&x| x < g);
        self.0.insert(at, g);
    }

    fn remove(&mut self, g: (u64, u32)) {
        if let Ok(at) = self.0.binary_search(&g) {
            self.0.remove(at);
        }
    }
}

fn is_waiting(entries: &[Option<Entry>], t: Ticket) -> bool {
    entries
        .get(t.idx as usize)
        .and_then(Option::as_ref)
        .is_some_and(|e| e.seq == t.seq && e.turn == Turn::Waiting)
}

/// The group's oldest waiting entry, dropping entries that left from the front.
fn head(g: &mut Group, entries: &[Option<Entry>]) -> Option<Ticket> {
    while let Some(&t) = g.line.front() {
        if is_waiting(entries, t) {
            return Some(t);
        }
        g.line.pop_front();
    }
    None
}
