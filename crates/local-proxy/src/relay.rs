//! Copying bytes both ways between two streams, knowing which side failed, and the [`Abort`]
//! trait that lets a failure reach the other side as a reset instead of a clean close.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that can end in a reset (TCP `RST`) instead of an orderly close.
///
/// A forwarder that loses one side abnormally (a reset, a timeout, any I/O error) aborts the
/// other, so a truncated stream never looks complete to the peer. After `abort`, the caller
/// drops the stream; the peer sees a reset at the latest then.
///
/// Implemented for [`tokio::net::TcpStream`] (`SO_LINGER` 0: closing sends `RST` and discards
/// unsent data). The agent implements it for its userspace TCP stack's streams.
pub trait Abort {
    /// Make the connection end in a reset.
    fn abort(&mut self);
}

impl Abort for tokio::net::TcpStream {
    fn abort(&mut self) {
        // Fails only on a socket that is already gone: then there is nothing to reset.
        let _ = self.set_zero_linger();
    }
}

/// Which of the two streams failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    A,
    B,
}

/// A relay that ended abnormally: `side`'s read or write failed.
#[derive(Debug)]
pub(crate) struct Broken {
    pub(crate) side: Side,
    pub(crate) error: io::Error,
}

/// Copy `a` to `b` and `b` to `a` until both directions reached EOF (each EOF is passed on as
/// a write shutdown: half-close), or until a read or write fails. Returns the bytes copied
/// `a → b` and `b → a`.
pub(crate) async fn relay<A, B>(a: &mut A, b: &mut B, buffer: usize) -> Result<(u64, u64), Broken>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Pipe::new(buffer);
    let mut b_to_a = Pipe::new(buffer);
    poll_fn(|cx| {
        let forward = a_to_b.poll_pipe(cx, &mut *a, &mut *b);
        if let Poll::Ready(Err((fault, error))) = forward {
            let side = match fault {
                Fault::Read => Side::A,
                Fault::Write => Side::B,
            };
            return Poll::Ready(Err(Broken { side, error }));
        }
        let backward = b_to_a.poll_pipe(cx, &mut *b, &mut *a);
        if let Poll::Ready(Err((fault, error))) = backward {
            let side = match fault {
                Fault::Read => Side::B,
                Fault::Write => Side::A,
            };
            return Poll::Ready(Err(Broken { side, error }));
        }
        if forward.is_ready() && backward.is_ready() {
            Poll::Ready(Ok((a_to_b.total, b_to_a.total)))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Which operation of a direction failed: reading its source or writing its destination.
enum Fault {
    Read,
    Write,
}

/// One direction: a buffer between a reader and a writer.
struct Pipe {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    eof: bool,
    done: bool,
    unflushed: bool,
    total: u64,
}

impl Pipe {
    fn new(size: usize) -> Self {
        Self {
            buf: vec![0; size.max(1)].into_boxed_slice(),
            pos: 0,
            cap: 0,
            eof: false,
            done: false,
            unflushed: false,
            total: 0,
        }
    }

    /// Ready(Ok) once the source's EOF has been passed on as a shutdown of the destination.
    fn poll_pipe<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<Result<(), (Fault, io::Error)>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.cap && !self.eof {
                let mut read = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            (self.pos, self.cap) = (0, n);
                        }
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err((Fault::Read, error))),
                    Poll::Pending => {
                        // Nothing more to read for now: push out what the writer holds.
                        if self.unflushed {
                            match Pin::new(&mut *writer).poll_flush(cx) {
                                Poll::Ready(Ok(())) => self.unflushed = false,
                                Poll::Ready(Err(error)) => {
                                    return Poll::Ready(Err((Fault::Write, error)));
                                }
                                Poll::Pending => {}
                            }
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let written =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.cap]))
                        .map_err(|error| (Fault::Write, error))?;
                if written == 0 {
                    let error = io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes");
                    return Poll::Ready(Err((Fault::Write, error)));
                }
                self.pos += written;
                self.total += written as u64;
                self.unflushed = true;
            }
            if self.eof {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))
                    .map_err(|error| (Fault::Write, error))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (mut a, mut a_peer) = tokio::io::duplex(16);
        let (mut b, mut b_peer) = tokio::io::duplex(16);
        let relaying = tokio::spawn(async move { relay(&mut a, &mut b, 7).await.unwrap() });
        a_peer
            .write_all(b"hello over a small buffer")
            .await
            .unwrap();
        a_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        b_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello over a small buffer");
        b_peer.write_all(b"and back").await.unwrap();
        b_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        a_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"and back");
        assert_eq!(relaying.await.unwrap(), (25, 8));
    }

    /// A stream whose reads fail.
    struct Failing;

    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    impl AsyncWrite for Failing {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn names_the_side_that_failed() {
        let (mut ok, _peer) = tokio::io::duplex(16);
        let broken = relay(&mut ok, &mut Failing, 8).await.unwrap_err();
        assert_eq!(broken.side, Side::B);
        let broken = relay(&mut Failing, &mut ok, 8).await.unwrap_err();
        assert_eq!(broken.side, Side::A);
        assert_eq!(broken.error.kind(), io::ErrorKind::ConnectionReset);
    }
}
