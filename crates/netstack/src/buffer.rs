//! TCP socket buffers in anonymous memory mappings.
//!
//! A connection's receive and send rings (1 MiB each by default) live in one private
//! anonymous mapping. Untouched pages are never committed, and unmapping returns every
//! page to the kernel when the connection ends. A heap `vec![0; n]` is only free the first
//! time: glibc raises its mmap threshold after the first large free and then serves (and
//! zero-fills) these buffers from the heap, pinning the full size per connection.
//!
//! This is the crate's only `unsafe`: smoltcp's socket set wants `&'static mut [u8]`
//! while the mapping must be unmapped when the socket goes away.

use std::io;

use memmap2::{MmapMut, MmapOptions, UncheckedAdvice};
use smoltcp::socket::tcp;

/// Send-ring pages are released in whole blocks of this size (a multiple of any page size
/// Linux uses), so a release never reaches past the send ring.
const RELEASE_ALIGN: usize = 64 << 10;

/// The mapping behind one TCP socket's rings: the send ring first (so it starts on a page
/// boundary and can be released), then the receive ring.
///
/// Invariant kept by the owner ([`Shard`](crate::shard::Shard)): the socket built by
/// [`TcpBuffers::socket`] is removed from its socket set and dropped before this value
/// is dropped.
pub(crate) struct TcpBuffers {
    map: MmapMut,
    tx_len: usize,
}

impl std::fmt::Debug for TcpBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpBuffers")
            .field("len", &self.map.len())
            .finish()
    }
}

impl TcpBuffers {
    /// Maps `rx_len + tx_len` bytes of zeroed, uncommitted memory.
    pub(crate) fn new(rx_len: usize, tx_len: usize) -> io::Result<Self> {
        let map = MmapOptions::new().len(rx_len + tx_len).map_anon()?;
        Ok(Self { map, tx_len })
    }

    /// A smoltcp socket whose rings are this mapping.
    ///
    /// The caller must drop the socket before `self` (see the type's invariant).
    pub(crate) fn socket(&mut self) -> tcp::Socket<'static> {
        let len = self.map.len();
        let ptr = self.map.as_mut_ptr();
        // SAFETY: `ptr..ptr+len` is one live, writable, private mapping owned by `self.map`;
        // moving `self` does not move the mapping. Nothing else reads or writes it while the
        // socket exists: `self.map` is not touched again except by `Drop`, and the owner
        // drops the socket (the only holder of this slice) before dropping `self`, so the
        // `'static` lifetime is never observed past the unmap.
        let all: &'static mut [u8] = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        let (tx, rx) = all.split_at_mut(self.tx_len);
        tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx))
    }

    /// Returns the send ring's pages to the kernel (they read as zeros when next written).
    /// Call it only while the socket's send queue is empty.
    pub(crate) fn release_tx(&self) {
        let len = self.tx_len - self.tx_len % RELEASE_ALIGN;
        if len == 0 {
            return;
        }
        // SAFETY: `0..len` lies inside the send ring (the mapping starts page-aligned and
        // `len` is a multiple of every page size, so the kernel touches nothing past it).
        // MADV_DONTNEED on a private anonymous mapping only replaces the contents with
        // zeros. The caller guarantees the send ring holds no queued bytes: smoltcp only
        // reads ring bytes it enqueued and will write again before reading, so no value it
        // relies on changes; no Rust reference reads this memory during the call.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, 0, len)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_rings_have_the_requested_sizes() {
        let mut bufs = TcpBuffers::new(64 << 10, 32 << 10).expect("map");
        let socket = bufs.socket();
        assert_eq!(socket.recv_capacity(), 64 << 10);
        assert_eq!(socket.send_capacity(), 32 << 10);
        drop(socket);
        drop(bufs);
    }

    #[test]
    fn releasing_the_send_ring_keeps_the_receive_ring() {
        let mut bufs = TcpBuffers::new(100_000, 200_000).expect("map");
        bufs.map[200_000..].fill(9);
        bufs.map[..200_000].fill(5);
        bufs.release_tx();
        assert!(
            bufs.map[200_000..].iter().all(|&b| b == 9),
            "receive ring intact"
        );
        assert!(
            bufs.map[..196_608].iter().all(|&b| b == 0),
            "released pages read as zero"
        );
        assert!(
            bufs.map[196_608..200_000].iter().all(|&b| b == 5),
            "the unaligned rest kept"
        );
        drop(bufs);
    }
}
