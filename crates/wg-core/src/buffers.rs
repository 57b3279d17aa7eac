//! Bounded queues of reusable buffers: outputs wait here until the caller polls them.
//!
//! A buffer is taken from the pool, written by boringtun, queued, and returned to the pool when
//! the caller polls the next output. After warm-up the packet path allocates nothing.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::PublicKey;

/// Buffers grown past this (by a jumbo datagram) are freed instead of kept in the pool.
const KEEP_CAPACITY: usize = 16 * 1024;

#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: Vec<Vec<u8>>,
    max_free: usize,
}

impl Pool {
    pub(crate) fn new(max_free: usize) -> Self {
        Self {
            free: Vec::new(),
            max_free,
        }
    }

    /// A buffer of at least `len` bytes (its contents are stale, not zeroed).
    #[inline]
    pub(crate) fn take(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self.free.pop().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    #[inline]
    pub(crate) fn give(&mut self, buf: Vec<u8>) {
        if self.free.len() < self.max_free && buf.capacity() <= KEEP_CAPACITY {
            self.free.push(buf);
        }
    }
}

#[derive(Debug)]
pub(crate) struct TxEntry {
    pub(crate) destination: SocketAddr,
    pub(crate) buf: Vec<u8>,
    pub(crate) len: usize,
}

#[derive(Debug)]
pub(crate) struct RxEntry {
    pub(crate) peer: PublicKey,
    pub(crate) buf: Vec<u8>,
    pub(crate) len: usize,
}

/// A FIFO with a fixed bound; `push` hands the entry back when full.
#[derive(Debug)]
pub(crate) struct Bounded<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T> Bounded<T> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::new(),
            cap,
        }
    }

    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.items.len() >= self.cap
    }

    #[inline]
    pub(crate) fn push(&mut self, item: T) -> Result<(), T> {
        if self.is_full() {
            return Err(item);
        }
        self.items.push_back(item);
        Ok(())
    }

    #[inline]
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_and_bounds() {
        let mut pool = Pool::new(2);
        let a = pool.take(100);
        assert!(a.len() >= 100);
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(50);
        assert_eq!(b.as_ptr(), ptr, "buffer reused");
        pool.give(b);
        pool.give(vec![0; 10]);
        pool.give(vec![0; 10]);
        assert_eq!(pool.free.len(), 2);
        pool.give(vec![0; 100_000]);
        assert_eq!(pool.free.len(), 2);
    }

    #[test]
    fn bounded_queue_refuses_past_cap() {
        let mut q = Bounded::new(2);
        assert!(q.push(1).is_ok());
        assert!(q.push(2).is_ok());
        assert_eq!(q.push(3), Err(3));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.len(), 1);
    }
}
