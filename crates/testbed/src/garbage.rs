//! Hostile datagrams for robustness tests: random bytes, fake WireGuard messages with the right
//! type and length (so they get past a length check and reach the crypto), data messages aimed
//! at a live receiver index, and oversized datagrams. All from a caller's seeded generator.
//!
//! Message layouts (WireGuard paper, section 5.4): every message starts with a type byte and
//! three zero bytes; handshake initiation 148 bytes, response 92, cookie reply 64, transport data
//! 16 bytes of header (type, receiver index, 64-bit counter) plus at least the 16-byte tag.

use rand::Rng;

/// Message type of a handshake initiation.
pub const HANDSHAKE_INITIATION: u8 = 1;
/// Message type of a handshake response.
pub const HANDSHAKE_RESPONSE: u8 = 2;
/// Message type of a cookie reply.
pub const COOKIE_REPLY: u8 = 3;
/// Message type of transport data.
pub const TRANSPORT_DATA: u8 = 4;

fn message(rng: &mut impl Rng, kind: u8, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill(&mut out[..]);
    out[0] = kind;
    out[1..4].fill(0);
    out
}

/// `len` random bytes (any first byte, so most are not WireGuard at all).
pub fn random_bytes(rng: &mut impl Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill(&mut out[..]);
    out
}

/// A 148-byte handshake initiation with random sender index, ephemeral key, encrypted static,
/// timestamp and MACs: it passes the length check and fails authentication (or, under load,
/// draws a cookie reply).
pub fn fake_handshake_initiation(rng: &mut impl Rng) -> Vec<u8> {
    message(rng, HANDSHAKE_INITIATION, 148)
}

/// A 92-byte handshake response to `receiver_index` with random content.
pub fn fake_handshake_response(rng: &mut impl Rng, receiver_index: u32) -> Vec<u8> {
    let mut out = message(rng, HANDSHAKE_RESPONSE, 92);
    out[8..12].copy_from_slice(&receiver_index.to_le_bytes());
    out
}

/// A 64-byte cookie reply to `receiver_index` with random content.
pub fn fake_cookie_reply(rng: &mut impl Rng, receiver_index: u32) -> Vec<u8> {
    let mut out = message(rng, COOKIE_REPLY, 64);
    out[4..8].copy_from_slice(&receiver_index.to_le_bytes());
    out
}

/// A transport data message to `receiver_index` with this counter and `payload_len` random
/// bytes of "ciphertext" (the 16-byte tag included: at least 16 is a well-formed length).
pub fn fake_transport_data(
    rng: &mut impl Rng,
    receiver_index: u32,
    counter: u64,
    payload_len: usize,
) -> Vec<u8> {
    let mut out = message(rng, TRANSPORT_DATA, 16 + payload_len);
    out[4..8].copy_from_slice(&receiver_index.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
    out
}

/// The receiver index of a WireGuard message seen on the wire (response, cookie reply or
/// data), to aim fakes at a live session; `None` for anything else.
pub fn receiver_index_of(datagram: &[u8]) -> Option<u32> {
    let field = |at: usize| -> Option<u32> {
        let bytes = datagram.get(at..at + 4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    };
    if datagram.get(1..4)? != [0, 0, 0] {
        return None;
    }
    match (datagram[0], datagram.len()) {
        (HANDSHAKE_RESPONSE, 92) => field(8),
        (COOKIE_REPLY, 64) => field(4),
        (TRANSPORT_DATA, 32..) => field(4),
        _ => None,
    }
}

/// The sender index of a handshake initiation or response (the index the other side will use
/// as receiver index); `None` for anything else.
pub fn sender_index_of(datagram: &[u8]) -> Option<u32> {
    if datagram.get(1..4)? != [0, 0, 0] {
        return None;
    }
    match (datagram[0], datagram.len()) {
        (HANDSHAKE_INITIATION, 148) | (HANDSHAKE_RESPONSE, 92) => {
            let b = datagram.get(4..8)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn fakes_have_wireguard_layouts() {
        let mut rng = StdRng::seed_from_u64(1);
        let init = fake_handshake_initiation(&mut rng);
        assert_eq!((init.len(), &init[..4]), (148, &[1, 0, 0, 0][..]));
        assert!(sender_index_of(&init).is_some());
        let resp = fake_handshake_response(&mut rng, 0xdead_beef);
        assert_eq!((resp.len(), &resp[..4]), (92, &[2, 0, 0, 0][..]));
        assert_eq!(receiver_index_of(&resp), Some(0xdead_beef));
        let cookie = fake_cookie_reply(&mut rng, 7);
        assert_eq!((cookie.len(), receiver_index_of(&cookie)), (64, Some(7)));
        let data = fake_transport_data(&mut rng, 0x0102_0304, 99, 100);
        assert_eq!(data.len(), 116);
        assert_eq!(receiver_index_of(&data), Some(0x0102_0304));
        assert_eq!(u64::from_le_bytes(data[8..16].try_into().unwrap()), 99);
        assert_eq!(receiver_index_of(&data[..31]), None);
        assert_eq!(receiver_index_of(&init), None);
        assert_eq!(sender_index_of(&data), None);
        assert_eq!(receiver_index_of(&[]), None);
        assert_eq!(random_bytes(&mut rng, 9000).len(), 9000);
    }
}
