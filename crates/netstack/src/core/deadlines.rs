//! A shard's timers in one structure: at most one deadline per key, kept in time order.
//! The shard arms a key (`set`, `arm_earlier`), asks for the earliest deadline (`next`)
//! and takes the keys that are due (`take_due`, `pop_due`); nothing else holds a timer.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Deadlines by key, at most one per key.
#[derive(Debug)]
pub(crate) struct Deadlines<K> {
    by_time: BTreeSet<(Instant, K)>,
    by_key: HashMap<K, Instant>,
}

impl<K> Default for Deadlines<K> {
    fn default() -> Self {
        Self {
            by_time: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<K: Copy + Ord + Hash> Deadlines<K> {
    /// Arms `key` at `at`, replacing its deadline; `None` disarms it.
    pub(crate) fn set(&mut self, key: K, at: Option<Instant>) {
        let old = match at {
            Some(at) => self.by_key.insert(key, at),
            None => self.by_key.remove(&key),
        };
        if old == at {
            return;
        }
        if let Some(old) = old {
            self.by_time.remove(&(old, key));
        }
        if let Some(at) = at {
            self.by_time.insert((at, key));
        }
    }

    /// Arms `key` at `at` unless it is armed earlier already.
    pub(crate) fn arm_earlier(&mut self, key: K, at: Instant) {
        if self.get(key).is_none_or(|old| at < old) {
            self.set(key, Some(at));
        }
    }

    /// When `key` fires, if armed.
    pub(crate) fn get(&self, key: K) -> Option<Instant> {
        self.by_key.get(&key).copied()
    }

    /// The earliest deadline of any key.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Disarms `key` and returns whether it was due at `now`; a key not yet due stays
    /// armed.
    pub(crate) fn take_due(&mut self, key: K, now: Instant) -> bool {
        if self.get(key).is_some_and(|at| at <= now) {
            self.set(key, None);
            true
        } else {
            false
        }
    }

    /// Disarms and returns the earliest key due at `now` for which `kind` holds; due
    /// keys of other kinds stay armed for their own handler.
    pub(crate) fn pop_due(&mut self, now: Instant, kind: impl Fn(&K) -> bool) -> Option<K> {
        let (_, key) = *self
            .by_time
            .iter()
            .take_while(|(at, _)| *at <= now)
            .find(|(_, key)| kind(key))?;
        self.set(key, None);
        Some(key)
    }

    /// Armed keys.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        debug_assert_eq!(self.by_key.len(), self.by_time.len());
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    enum Key {
        Sweep,
        Conn(u16),
    }

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    #[test]
    fn one_deadline_per_key_replaced_and_disarmed() {
        let t = Instant::now();
        let mut d = Deadlines::default();
        assert_eq!(d.next(), None);
        d.set(Key::Conn(1), Some(ms(t, 30)));
        d.set(Key::Conn(2), Some(ms(t, 20)));
        assert_eq!(d.next(), Some(ms(t, 20)));
        d.set(Key::Conn(2), Some(ms(t, 40)));
        assert_eq!(d.len(), 2, "replaced, not added");
        assert_eq!(d.next(), Some(ms(t, 30)));
        d.set(Key::Conn(1), Some(ms(t, 30)));
        assert_eq!(d.len(), 2, "the same deadline again changes nothing");
        d.set(Key::Conn(1), None);
        assert_eq!(d.get(Key::Conn(1)), None);
        assert_eq!(d.next(), Some(ms(t, 40)));
        d.set(Key::Conn(2), None);
        d.set(Key::Conn(3), None);
        assert_eq!((d.len(), d.next()), (0, None));
    }

    #[test]
    fn arm_earlier_keeps_the_earlier_deadline() {
        let t = Instant::now();
        let mut d = Deadlines::default();
        d.arm_earlier(Key::Sweep, ms(t, 100));
        d.arm_earlier(Key::Sweep, ms(t, 150));
        assert_eq!(d.get(Key::Sweep), Some(ms(t, 100)));
        d.arm_earlier(Key::Sweep, ms(t, 50));
        assert_eq!(d.get(Key::Sweep), Some(ms(t, 50)));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn due_keys_are_taken_in_time_order_by_kind_however_late() {
        let t = Instant::now();
        let mut d = Deadlines::default();
        d.set(Key::Conn(7), Some(ms(t, 30)));
        d.set(Key::Sweep, Some(ms(t, 10)));
        d.set(Key::Conn(5), Some(ms(t, 20)));
        d.set(Key::Conn(9), Some(ms(t, 500)));
        let conn = |k: &Key| matches!(k, Key::Conn(_));
        assert_eq!(d.pop_due(ms(t, 5), conn), None, "nothing due yet");
        // Long past every deadline but one: all due ones come out, earliest first.
        let late = ms(t, 400);
        assert_eq!(d.pop_due(late, conn), Some(Key::Conn(5)));
        assert_eq!(d.pop_due(late, conn), Some(Key::Conn(7)));
        assert_eq!(d.pop_due(late, conn), None, "Conn(9) is not due");
        assert_eq!(
            d.next(),
            Some(ms(t, 10)),
            "the sweep waits for its own handler"
        );
        assert!(!d.take_due(Key::Conn(9), late));
        assert!(d.take_due(Key::Sweep, late));
        assert!(!d.take_due(Key::Sweep, late), "taken once");
        assert_eq!(d.next(), Some(ms(t, 500)));
        assert_eq!(d.len(), 1);
    }
}
