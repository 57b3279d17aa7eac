//! Telling HTTP/1 from HTTP/2 with prior knowledge by the first bytes of a connection.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

/// Read until the bytes seen differ from the HTTP/2 preface (HTTP/1) or match all of it
/// (HTTP/2). `None`: closed before the first byte. Reads at most 24 bytes.
pub(super) async fn detect<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Option<(Protocol, Bytes)>> {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok((!buf.is_empty()).then(|| (Protocol::Http1, buf.freeze())));
        }
        let seen = buf.len();
        if buf[..] != H2_PREFACE[..seen] {
            return Ok(Some((Protocol::Http1, buf.freeze())));
        }
        if seen == H2_PREFACE.len() {
            return Ok(Some((Protocol::Http2, buf.freeze())));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn detect_protocols() {
        let mut h1: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        let (p, prefix) = detect(&mut h1).await.unwrap().unwrap();
        assert_eq!(
            (p, &prefix[..]),
            (Protocol::Http1, &b"GET / HTTP/1.1\r\n\r\n"[..])
        );
        let mut h2 = [&H2_PREFACE[..], b"rest"].concat();
        let (p, prefix) = detect(&mut &h2[..]).await.unwrap().unwrap();
        assert_eq!((p, prefix.len()), (Protocol::Http2, 24));
        h2.truncate(10);
        let (p, _) = detect(&mut &h2[..]).await.unwrap().unwrap();
        assert_eq!(p, Protocol::Http1);
        assert!(detect(&mut &b""[..]).await.unwrap().is_none());
    }
}
