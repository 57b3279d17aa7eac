//! A shard's socket set together with the memory its TCP sockets' rings live in.
//!
//! A connection's send and receive rings (see `autotune.rs` for their sizes) live in one private
//! anonymous mapping. Untouched pages are never committed, and unmapping returns every
//! page to the kernel when the connection ends. A heap `vec![0; n]` is only free the first
//! time: glibc raises its mmap threshold after the first large free and then serves (and
//! zero-fills) these buffers from the heap, pinning the full size per connection.
//!
//! smoltcp's socket set wants `&'static mut [u8]` rings, while a mapping must be unmapped
//! when its connection ends. This module is the crate's only `unsafe`, and it keeps that
//! sound by construction rather than by its callers' care:
//!
//! - [`Sockets`] owns both the smoltcp socket set and the mappings. A mapping is unmapped
//!   only after the socket built on it has been removed from the set and dropped
//!   ([`Sockets::remove`], and `Drop`, which empties the set first).
//! - No TCP socket ever leaves the set alive, and nothing outside this module gets it by
//!   value or as `&mut tcp::Socket` (which `mem::swap` or `mem::replace` could move out):
//!   callers get a [`TcpSocket`], a handle that forwards the operations the stack needs.
//!   Only smoltcp's own interface code sees the set mutably.
//! - Ring pages go back to the kernel only through the references smoltcp itself hands
//!   out: free send-ring space inside a [`tcp::Socket::send`] closure that enqueues
//!   nothing, received bytes inside a [`tcp::Socket::recv`] closure that discards them.
//!   So no other live reference to those bytes exists while the kernel zeroes them.
//!
//! A panic anywhere (a poisoned shard lock) cannot break this: the pairing of a socket
//! and its mapping is updated inside single methods here, and at worst a mapping outlives
//! its socket (leaks until the set goes), never the other way round.

use std::collections::HashMap;
use std::io;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::task::Waker;

use smoltcp::iface::SocketSet;
use smoltcp::iface::{Context, Interface, PollIngressSingleResult, PollResult, SocketHandle};
use smoltcp::phy::Device;
use smoltcp::socket::{AnySocket, icmp, tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};

/// One private anonymous mapping, owned through a raw pointer (never through a Rust
/// reference, so the slices smoltcp holds are the only references into it).
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Mapping` owns its memory exclusively, like a `Box<[u8]>`; nothing about it is
// tied to the thread that created it.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` (> 0) bytes of zeroed, uncommitted memory. `MAP_NORESERVE`: a send ring
    /// is reserved at the largest size a connection may grow to and mostly stays
    /// untouched (the stack's budget, not swap space, bounds what is used).
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a request for a fresh private anonymous mapping at an address the kernel
        // picks; it aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("netstack: mmap returned a null mapping"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr + len` is the mapping made in `new`, unmapped only here. The
        // slices built on it belong to a socket that `Sockets` has already dropped (see the
        // module documentation), so no reference into it is used afterwards.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The system page size (4 KiB when it cannot be read: only used to round inwards, and
/// a wrong size only makes `madvise` fail, see [`release_pages`]).
fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n)
            .ok()
            .filter(|n| n.is_power_of_two())
            .unwrap_or(4096)
    })
}

/// Returns the whole pages inside `buf` to the kernel: they read as zeros afterwards and
/// cost no memory until written again. Bytes of partly covered pages are left as they are.
fn release_pages(buf: &mut [u8]) {
    let page = page_size();
    let start = buf.as_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + buf.len()) / page * page;
    if first >= end {
        return;
    }
    // SAFETY: `first..end` lies inside `buf`, which is borrowed exclusively here, and both
    // ends are page-aligned, so the kernel touches nothing outside it (with a wrong page
    // size madvise fails on the alignment and touches nothing). `buf` is private
    // anonymous memory (a TCP ring, i.e. a `Mapping`; in a unit test a heap buffer), on
    // which MADV_DONTNEED replaces the pages with zero-fill-on-demand ones: the same as writing zeros through `buf`,
    // which is valid for `u8` and observed by no other reference. The pointer is derived
    // from `buf`, so the "write" happens through the exclusive borrow.
    unsafe {
        libc::madvise(
            buf.as_mut_ptr().add(first - start).cast(),
            end - first,
            libc::MADV_DONTNEED,
        );
    }
}

/// The socket set of one shard and the mappings its TCP sockets' rings live in.
///
/// Invariant: `rings` holds an entry for a handle only while that slot of `set` holds the
/// TCP socket whose rings are that mapping, and that socket never leaves `set` except to
/// be dropped in [`Sockets::remove`] or when the set is emptied in `Drop`.
pub(crate) struct Sockets {
    set: SocketSet<'static>,
    rings: HashMap<SocketHandle, Mapping>,
}

impl Drop for Sockets {
    fn drop(&mut self) {
        // Every socket (with its borrowed rings) goes before `rings` unmaps them.
        self.set = SocketSet::new(Vec::new());
    }
}

impl Default for Sockets {
    fn default() -> Self {
        Self::new()
    }
}

impl Sockets {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Self {
            set: SocketSet::new(Vec::new()),
            rings: HashMap::new(),
        }
    }

    /// Adds a TCP socket with a receive ring of `rx_len` and a send ring of `tx_len`
    /// bytes, both in one fresh mapping (send ring first, so it starts page-aligned).
    pub(crate) fn add_tcp(&mut self, rx_len: usize, tx_len: usize) -> io::Result<SocketHandle> {
        let len = rx_len
            .checked_add(tx_len)
            .filter(|&n| n > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "netstack: ring size"))?;
        let map = Mapping::new(len)?;
        // SAFETY: `map.ptr..+len` is one live, writable, zero-initialised mapping that no
        // other reference points into. It stays mapped while the socket exists: the
        // mapping is stored under the socket's handle below and unmapped only after that
        // socket is dropped (the type's invariant), so the `'static` lifetime is never
        // observed past the unmap.
        let all: &'static mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(map.ptr.as_ptr(), len) };
        let (tx, rx) = all.split_at_mut(tx_len);
        let socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        let handle = self.set.add(socket);
        // A stale entry cannot exist (removing a socket removes its mapping); if one did,
        // its socket is gone, so dropping it here is still sound.
        self.rings.insert(handle, map);
        Ok(handle)
    }

    /// Adds a UDP or ICMP socket (their buffers are owned by the socket).
    pub(crate) fn add<T: Owned>(&mut self, socket: T) -> SocketHandle {
        self.set.add(socket)
    }

    /// Removes and drops a socket, then unmaps its rings if it had any. Returns the
    /// bytes unmapped.
    pub(crate) fn remove(&mut self, handle: SocketHandle) -> usize {
        drop(self.set.remove(handle));
        self.rings.remove(&handle).map_or(0, |map| map.len)
    }

    /// A socket, read-only.
    pub(crate) fn get<T: AnySocket<'static>>(&self, handle: SocketHandle) -> &T {
        self.set.get::<T>(handle)
    }

    /// A socket, mutably: `&mut` for UDP and ICMP, a [`TcpSocket`] for TCP.
    pub(crate) fn get_mut<T: Kind>(&mut self, handle: SocketHandle) -> T::Mut<'_> {
        T::wrap(self.set.get_mut::<T>(handle))
    }

    /// Number of sockets of every kind.
    pub(crate) fn len(&self) -> usize {
        self.set.iter().count()
    }

    /// smoltcp's ingress of one packet.
    pub(crate) fn poll_ingress_single<D: Device + ?Sized>(
        &mut self,
        iface: &mut Interface,
        now: Instant,
        device: &mut D,
    ) -> PollIngressSingleResult {
        iface.poll_ingress_single(now, device, &mut self.set)
    }

    /// smoltcp's egress pass.
    pub(crate) fn poll_egress<D: Device + ?Sized>(
        &mut self,
        iface: &mut Interface,
        now: Instant,
        device: &mut D,
    ) -> PollResult {
        iface.poll_egress(now, device, &mut self.set)
    }

    /// smoltcp's next deadline.
    pub(crate) fn poll_at(&self, iface: &mut Interface, now: Instant) -> Option<Instant> {
        iface.poll_at(now, &self.set)
    }
}

mod sealed {
    pub(crate) trait Sealed {}
    impl Sealed for smoltcp::socket::tcp::Socket<'static> {}
    impl Sealed for smoltcp::socket::udp::Socket<'static> {}
    impl Sealed for smoltcp::socket::icmp::Socket<'static> {}
}

/// A socket kind [`Sockets::get_mut`] hands out, with what it hands out for it.
pub(crate) trait Kind: AnySocket<'static> + sealed::Sealed + 'static {
    /// The mutable access.
    type Mut<'a>
    where
        Self: 'a;
    /// Wraps a socket of the set.
    fn wrap(socket: &mut Self) -> Self::Mut<'_>;
}

/// Sockets that own their buffers (so moving one out of the set is harmless).
pub(crate) trait Owned: Kind {}

impl Kind for tcp::Socket<'static> {
    type Mut<'a> = TcpSocket<'a>;
    fn wrap(socket: &mut Self) -> TcpSocket<'_> {
        TcpSocket(socket)
    }
}

impl Kind for udp::Socket<'static> {
    type Mut<'a> = &'a mut Self;
    fn wrap(socket: &mut Self) -> &mut Self {
        socket
    }
}
impl Owned for udp::Socket<'static> {}

impl Kind for icmp::Socket<'static> {
    type Mut<'a> = &'a mut Self;
    fn wrap(socket: &mut Self) -> &mut Self {
        socket
    }
}
impl Owned for icmp::Socket<'static> {}

/// Mutable access to a TCP socket of a [`Sockets`]: every `&self` method of
/// [`tcp::Socket`] through `Deref`, and the `&mut self` operations the stack uses,
/// forwarded (add one here when it needs another). It cannot move the socket.
pub(crate) struct TcpSocket<'a>(&'a mut tcp::Socket<'static>);

impl Deref for TcpSocket<'_> {
    type Target = tcp::Socket<'static>;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

#[allow(missing_docs)]
impl TcpSocket<'_> {
    pub(crate) fn abort(&mut self) {
        self.0.abort();
    }
    pub(crate) fn close(&mut self) {
        self.0.close();
    }
    pub(crate) fn listen<T: Into<IpListenEndpoint>>(
        &mut self,
        local: T,
    ) -> Result<(), tcp::ListenError> {
        self.0.listen(local)
    }
    pub(crate) fn connect<T: Into<IpEndpoint>, U: Into<IpListenEndpoint>>(
        &mut self,
        cx: &mut Context,
        remote: T,
        local: U,
    ) -> Result<(), tcp::ConnectError> {
        self.0.connect(cx, remote, local)
    }
    pub(crate) fn set_ack_delay(&mut self, delay: Option<Duration>) {
        self.0.set_ack_delay(delay);
    }
    pub(crate) fn set_congestion_control(&mut self, cc: tcp::CongestionControl) {
        self.0.set_congestion_control(cc);
    }
    pub(crate) fn set_keep_alive(&mut self, interval: Option<Duration>) {
        self.0.set_keep_alive(interval);
    }
    pub(crate) fn set_nagle_enabled(&mut self, enabled: bool) {
        self.0.set_nagle_enabled(enabled);
    }
    pub(crate) fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.0.set_timeout(timeout);
    }
    pub(crate) fn register_recv_waker(&mut self, waker: &Waker) {
        self.0.register_recv_waker(waker);
    }
    pub(crate) fn register_send_waker(&mut self, waker: &Waker) {
        self.0.register_send_waker(waker);
    }
    pub(crate) fn recv<'b, F, R>(&'b mut self, f: F) -> Result<R, tcp::RecvError>
    where
        F: FnOnce(&'b mut [u8]) -> (usize, R),
    {
        self.0.recv(f)
    }
    #[cfg(test)]
    pub(crate) fn recv_slice(&mut self, data: &mut [u8]) -> Result<usize, tcp::RecvError> {
        self.0.recv_slice(data)
    }
    #[cfg_attr(not(test), expect(dead_code, reason = "for the sending side's gating"))]
    pub(crate) fn send<'b, F, R>(&'b mut self, f: F) -> Result<R, tcp::SendError>
    where
        F: FnOnce(&'b mut [u8]) -> (usize, R),
    {
        self.0.send(f)
    }
    pub(crate) fn send_slice(&mut self, data: &[u8]) -> Result<usize, tcp::SendError> {
        self.0.send_slice(data)
    }

    /// Returns the pages of the send ring's free space to the kernel, through smoltcp's
    /// own `send` (which hands out that free space and here enqueues nothing). With the
    /// send queue empty that is the whole ring. Nothing happens once the socket may no
    /// longer send (it is then freed soon anyway). Returns whether it could.
    pub(crate) fn release_send_ring(&mut self) -> bool {
        self.0
            .send(|free| {
                release_pages(free);
                (0, ())
            })
            .is_ok()
    }

    /// Dequeues and drops every received byte, returning their pages to the kernel,
    /// through smoltcp's own `recv`. Returns how many bytes were discarded.
    pub(crate) fn discard_received(&mut self) -> usize {
        let mut total = 0;
        // The queue may wrap around the ring's end: two pieces at most.
        for _ in 0..2 {
            let piece = self.0.recv(|data| {
                let n = data.len();
                release_pages(data);
                (n, n)
            });
            match piece {
                Ok(n) if n > 0 => total += n,
                _ => break,
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_rings_have_the_requested_sizes_and_go_with_their_socket() {
        let mut sockets = Sockets::new();
        let a = sockets.add_tcp(64 << 10, 32 << 10).expect("map");
        let b = sockets.add_tcp(8 << 10, 8 << 10).expect("map");
        let socket = sockets.get::<tcp::Socket>(a);
        assert_eq!(socket.recv_capacity(), 64 << 10);
        assert_eq!(socket.send_capacity(), 32 << 10);
        sockets.remove(a);
        assert_eq!(sockets.rings.len(), 1);
        // The slot is reused with a fresh mapping.
        let c = sockets.add_tcp(16 << 10, 16 << 10).expect("map");
        assert_eq!(sockets.get::<tcp::Socket>(c).recv_capacity(), 16 << 10);
        assert_eq!(sockets.rings.len(), 2);
        assert_eq!(sockets.get::<tcp::Socket>(b).send_capacity(), 8 << 10);
        drop(sockets);
    }

    #[test]
    fn releasing_pages_zeroes_only_whole_pages_inside_the_slice() {
        let page = page_size();
        let mut buf = vec![7u8; 10 * page];
        let off = buf.as_ptr().align_offset(page);
        let rest = &mut buf[off..];
        let inner = &mut rest[3..3 + 5 * page];
        release_pages(inner);
        // `inner` starts 3 bytes past a page boundary: its partial first and last pages
        // are kept, the 4 whole pages in between read as zero.
        assert!(inner[..page - 3].iter().all(|&b| b == 7));
        assert!(inner[page - 3..5 * page - 3].iter().all(|&b| b == 0));
        assert!(inner[5 * page - 3..].iter().all(|&b| b == 7));
        assert!(
            rest[..3].iter().all(|&b| b == 7),
            "before the slice: untouched"
        );
        assert!(
            rest[3 + 5 * page..].iter().all(|&b| b == 7),
            "after: untouched"
        );
        assert!(buf[..off].iter().all(|&b| b == 7));
    }

    #[test]
    fn a_socket_that_may_not_send_releases_nothing() {
        let mut sockets = Sockets::new();
        let h = sockets.add_tcp(8 << 10, 64 << 10).expect("map");
        assert!(!sockets.get_mut::<tcp::Socket>(h).release_send_ring());
        assert_eq!(sockets.get_mut::<tcp::Socket>(h).discard_received(), 0);
    }
}
