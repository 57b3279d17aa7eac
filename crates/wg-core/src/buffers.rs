//! Bounded output queues whose buffers stay in place and are reused (no allocation per packet).
//!
//! boringtun writes straight into the free slot at the tail; the caller's `poll_*` reads the
//! slot at the head. When the queue is empty it restarts at slot 0, so a caller that drains
//! after every input keeps reusing the same few (cache-hot) buffers.

use std::net::SocketAddr;

use crate::PublicKey;

/// Buffers grown past this (by a jumbo datagram) are freed instead of kept.
const KEEP_CAPACITY: usize = 16 * 1024;

/// What a transmit slot holds besides its bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxMeta {
    pub(crate) destination: SocketAddr,
    pub(crate) len: usize,
}

impl Default for TxMeta {
    fn default() -> Self {
        Self {
            destination: SocketAddr::from(([0, 0, 0, 0], 0)),
            len: 0,
        }
    }
}

/// What a received slot holds besides its bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RxMeta {
    pub(crate) peer: PublicKey,
    pub(crate) len: usize,
}

impl Default for RxMeta {
    fn default() -> Self {
        Self {
            peer: PublicKey::from_bytes([0; 32]),
            len: 0,
        }
    }
}

pub(crate) trait Len {
    fn len(&self) -> usize;
}

impl Len for TxMeta {
    fn len(&self) -> usize {
        self.len
    }
}

impl Len for RxMeta {
    fn len(&self) -> usize {
        self.len
    }
}

#[derive(Debug)]
struct Slot<M> {
    buf: Vec<u8>,
    meta: M,
}

/// A FIFO of at most `cap` buffers.
#[derive(Debug)]
pub(crate) struct Ring<M> {
    slots: Vec<Slot<M>>,
    /// A buffer that grows is made at least this long, so every non-empty one is.
    floor: usize,
    head: usize,
    /// The free slot after the queued ones: always `(head + len) % cap`, kept rather than
    /// computed because every packet needs it twice.
    tail: usize,
    len: usize,
}

impl<M: Copy + Default + Len> Ring<M> {
    pub(crate) fn new(cap: usize) -> Self {
        Self::with_floor(cap, 0)
    }

    /// A ring whose grown buffers are at least `floor` bytes long (at most [`KEEP_CAPACITY`]):
    /// a caller that needs that much for any write can ask [`Ring::free_slot`] for less.
    pub(crate) fn with_floor(cap: usize, floor: usize) -> Self {
        let cap = cap.max(1);
        Self {
            floor: floor.min(KEEP_CAPACITY),
            slots: (0..cap)
                .map(|_| Slot {
                    buf: Vec::new(),
                    meta: M::default(),
                })
                .collect(),
            head: 0,
            tail: 0,
            len: 0,
        }
    }

    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.len == self.slots.len()
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The free slot at the tail, at least `min_len` bytes long (stale contents), or `None`
    /// when full. Write into it, then [`Ring::commit`]; without a commit it stays free.
    #[inline(always)]
    pub(crate) fn free_slot(&mut self, min_len: usize) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        let buf = &mut self.slots[self.tail].buf;
        // Shorter than `min_len`, or a jumbo buffer (then `fit` decides whether to keep it).
        if !(min_len..=KEEP_CAPACITY).contains(&buf.len()) {
            fit(buf, min_len, self.floor);
        }
        Some(&mut buf[..])
    }

    /// Queues the tail slot written after [`Ring::free_slot`].
    #[inline(always)]
    pub(crate) fn commit(&mut self, meta: M) {
        debug_assert!(!self.is_full());
        let i = self.tail;
        self.slots[i].meta = meta;
        self.tail = if i + 1 == self.slots.len() { 0 } else { i + 1 };
        self.len += 1;
    }

    /// Queues a copy of `bytes`; `false` when full.
    pub(crate) fn push_copy(&mut self, bytes: &[u8], meta: M) -> bool {
        let Some(slot) = self.free_slot(bytes.len()) else {
            return false;
        };
        slot[..bytes.len()].copy_from_slice(bytes);
        self.commit(meta);
        true
    }

    /// The oldest queued slot; its bytes stay valid until the next mutation.
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<(&[u8], M)> {
        if self.len == 0 {
            return None;
        }
        let i = self.head;
        self.len -= 1;
        if self.len == 0 {
            // Empty: start again at slot 0, so a caller that drains after every input keeps
            // reusing the same (cache-hot) buffer.
            self.head = 0;
            self.tail = 0;
        } else {
            self.head = if i + 1 == self.slots.len() { 0 } else { i + 1 };
        }
        let slot = &self.slots[i];
        let len = slot.meta.len().min(slot.buf.len());
        Some((&slot.buf[..len], slot.meta))
    }
}

/// Grows a slot's buffer to `min_len`, or swaps a jumbo one (grown by a huge datagram) for a
/// small one once ordinary traffic is back. Off the per-packet path: slots keep their size.
#[cold]
#[inline(never)]
fn fit(buf: &mut Vec<u8>, min_len: usize, floor: usize) {
    if buf.len() < min_len {
        if buf.capacity() > KEEP_CAPACITY && min_len <= KEEP_CAPACITY {
            *buf = Vec::new();
        }
        buf.resize(min_len.max(floor), 0);
    } else if buf.len() > KEEP_CAPACITY && min_len <= KEEP_CAPACITY {
        *buf = vec![0; min_len.max(floor)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(len: usize) -> TxMeta {
        TxMeta {
            len,
            ..TxMeta::default()
        }
    }

    #[test]
    fn fifo_bounded_and_reused() {
        let mut r: Ring<TxMeta> = Ring::new(2);
        assert!(r.push_copy(b"one", meta(3)));
        assert!(r.push_copy(b"two!", meta(4)));
        assert!(r.is_full());
        assert!(!r.push_copy(b"x", meta(1)));
        assert_eq!(r.pop().unwrap().0, b"one");
        assert!(r.push_copy(b"3", meta(1)));
        assert_eq!(r.pop().unwrap().0, b"two!");
        assert_eq!(r.pop().unwrap().0, b"3");
        assert!(r.pop().is_none());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn uncommitted_slot_stays_free_and_empty_queue_restarts_at_zero() {
        let mut r: Ring<TxMeta> = Ring::new(4);
        let p = r.free_slot(10).unwrap().as_ptr();
        assert!(r.pop().is_none(), "not committed");
        r.commit(meta(10));
        let _ = r.pop();
        let q = r.free_slot(10).unwrap().as_ptr();
        assert_eq!(p, q, "the same hot buffer again");
    }

    #[test]
    fn grown_buffers_keep_the_floor() {
        let mut r: Ring<TxMeta> = Ring::with_floor(2, 148);
        assert_eq!(r.free_slot(20).unwrap().len(), 148);
        assert!(r.push_copy(&vec![1; 60_000], meta(60_000)));
        let _ = r.pop();
        assert_eq!(
            r.free_slot(20).unwrap().len(),
            148,
            "jumbo released to the floor"
        );
        assert_eq!(r.free_slot(1000).unwrap().len(), 1000);
    }

    #[test]
    fn jumbo_buffers_are_released() {
        let mut r: Ring<TxMeta> = Ring::new(1);
        assert!(r.push_copy(&vec![1; 60_000], meta(60_000)));
        let _ = r.pop();
        let slot = r.free_slot(100).unwrap();
        assert_eq!(slot.len(), 100);
    }
}
