//! What crosses the wire: WireGuard's four message types, parsed once from a datagram into
//! [`Message`] (type, reserved bytes, length and receiver index checked here and nowhere
//! else), the type of what boringtun wrote, and the destination of an inner IP packet.

use std::net::IpAddr;

use crate::initiation;

/// Message type of a handshake initiation.
pub(crate) const INITIATION: u8 = 1;
/// Message type of a handshake response.
pub(crate) const RESPONSE: u8 = 2;
/// Message type of a cookie reply.
pub(crate) const COOKIE_REPLY: u8 = 3;
/// Message type of a data message (a keepalive is one with no payload).
pub(crate) const DATA: u8 = 4;

/// Length of a handshake initiation.
pub(crate) const INITIATION_LEN: usize = initiation::LEN;
/// Length of a handshake response.
pub(crate) const RESPONSE_LEN: usize = 92;
/// Length of a cookie reply.
pub(crate) const COOKIE_REPLY_LEN: usize = 64;
/// Data message header (16) plus AEAD tag (16): the length of a keepalive.
pub(crate) const DATA_OVERHEAD: usize = 32;

/// A datagram that has a WireGuard message's type, reserved bytes and length. Nothing in it
/// is authenticated yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    /// A handshake initiation, routed by the sender's static key inside it.
    Initiation(&'a [u8; INITIATION_LEN]),
    /// A handshake response to our initiation with index `receiver`.
    Response {
        receiver: u32,
        bytes: &'a [u8; RESPONSE_LEN],
    },
    /// A cookie reply to our message with index `receiver` (the peer is under load).
    CookieReply {
        receiver: u32,
        bytes: &'a [u8; COOKIE_REPLY_LEN],
    },
    /// A data message (or keepalive) for our session with index `receiver`.
    Data { receiver: u32 },
}

impl<'a> Message<'a> {
    /// Parses a datagram; `None` when it is no WireGuard message. A data message is checked
    /// first, in a few instructions: it is the per-packet path.
    #[inline(always)]
    pub(crate) fn parse(datagram: &'a [u8]) -> Option<Self> {
        let header = datagram.first_chunk::<8>()?;
        let word = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if word == u32::from(DATA) && datagram.len() >= DATA_OVERHEAD {
            return Some(Message::Data {
                receiver: le_u32(header, 4),
            });
        }
        Self::parse_handshake(datagram)
    }

    /// The handshake messages, by type and exact length.
    #[inline(never)]
    fn parse_handshake(datagram: &'a [u8]) -> Option<Self> {
        if datagram.get(1..4)? != [0, 0, 0] {
            return None;
        }
        match (datagram[0], datagram.len()) {
            (INITIATION, INITIATION_LEN) => datagram.first_chunk().map(Message::Initiation),
            (RESPONSE, RESPONSE_LEN) => Some(Message::Response {
                receiver: le_u32(datagram, 8),
                bytes: datagram.first_chunk()?,
            }),
            (COOKIE_REPLY, COOKIE_REPLY_LEN) => Some(Message::CookieReply {
                receiver: le_u32(datagram, 4),
                bytes: datagram.first_chunk()?,
            }),
            _ => None,
        }
    }

    /// The bytes of a handshake message (empty for data: the caller has the datagram).
    pub(crate) fn handshake_bytes(&self) -> &'a [u8] {
        match *self {
            Message::Initiation(bytes) => bytes,
            Message::Response { bytes, .. } => bytes,
            Message::CookieReply { bytes, .. } => bytes,
            Message::Data { .. } => &[],
        }
    }

    /// The peer index of a message routed by index: boringtun puts the peer's 24-bit
    /// index in its upper bits.
    #[inline(always)]
    pub(crate) fn peer_index(receiver: u32) -> u32 {
        receiver >> 8
    }
}

/// The message type of what boringtun wrote (0 for nothing).
#[inline(always)]
pub(crate) fn message_type(out: &[u8]) -> u8 {
    out.first().copied().unwrap_or_default()
}

/// Whether boringtun wrote a handshake initiation (a data message of a 116-byte packet is as
/// long, so the type is checked too).
#[inline(always)]
pub(crate) fn is_initiation(out: &[u8]) -> bool {
    out.len() == INITIATION_LEN && message_type(out) == INITIATION
}

/// The destination of an IPv6 packet, as boringtun's `Tunn::dst_address` reads it (IPv4 is
/// read inline on the per-packet path).
#[inline(never)]
pub(crate) fn ipv6_destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first_chunk::<40>() {
        Some(h) if h[0] & 0xf0 == 0x60 => {
            let dst: [u8; 16] = h[24..40].try_into().ok()?;
            Some(IpAddr::from(dst))
        }
        _ => None,
    }
}

/// The little-endian `u32` at `at`, or 0 past the end (callers checked the length).
#[inline(always)]
fn le_u32(bytes: &[u8], at: usize) -> u32 {
    match bytes.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, len: usize) -> Vec<u8> {
        let mut m = vec![0u8; len];
        m[0] = kind;
        m
    }

    #[test]
    fn each_type_by_exact_length_with_its_receiver() {
        let mut data = message(DATA, DATA_OVERHEAD);
        data[4..8].copy_from_slice(&0x1234_5601u32.to_le_bytes());
        assert_eq!(
            Message::parse(&data),
            Some(Message::Data {
                receiver: 0x1234_5601
            })
        );
        assert_eq!(Message::peer_index(0x1234_5601), 0x12_3456);
        let mut resp = message(RESPONSE, RESPONSE_LEN);
        resp[8..12].copy_from_slice(&7u32.to_le_bytes());
        let parsed = Message::parse(&resp).unwrap();
        assert!(matches!(parsed, Message::Response { receiver: 7, .. }));
        assert_eq!(parsed.handshake_bytes(), &resp[..]);
        let mut cookie = message(COOKIE_REPLY, COOKIE_REPLY_LEN);
        cookie[4..8].copy_from_slice(&9u32.to_le_bytes());
        let parsed = Message::parse(&cookie).unwrap();
        assert!(matches!(parsed, Message::CookieReply { receiver: 9, .. }));
        assert_eq!(parsed.handshake_bytes(), &cookie[..]);
        let init = message(INITIATION, INITIATION_LEN);
        assert!(matches!(
            Message::parse(&init),
            Some(Message::Initiation(m)) if m[..] == init[..]
        ));
    }

    #[test]
    fn anything_else_is_no_message() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![4, 0, 0],
            vec![4, 0, 0, 0, 0, 0, 0, 0],
            message(DATA, DATA_OVERHEAD - 1),
            message(INITIATION, INITIATION_LEN - 1),
            message(INITIATION, INITIATION_LEN + 1),
            message(RESPONSE, RESPONSE_LEN + 1),
            message(COOKIE_REPLY, COOKIE_REPLY_LEN - 1),
            message(5, 64),
            message(0, 64),
            {
                let mut m = message(DATA, 64);
                m[2] = 1;
                m
            },
            {
                let mut m = message(INITIATION, INITIATION_LEN);
                m[3] = 1;
                m
            },
        ];
        for c in cases {
            assert_eq!(Message::parse(&c), None, "{:?}", &c[..c.len().min(8)]);
        }
    }

    #[test]
    fn what_boringtun_wrote() {
        assert!(is_initiation(&message(INITIATION, INITIATION_LEN)));
        assert!(!is_initiation(&message(DATA, INITIATION_LEN)));
        assert!(!is_initiation(&message(INITIATION, 64)));
        assert_eq!(message_type(&[]), 0);
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[39] = 1;
        assert_eq!(ipv6_destination(&v6), Some("::1".parse().unwrap()));
        assert_eq!(ipv6_destination(&v6[..39]), None);
    }
}
