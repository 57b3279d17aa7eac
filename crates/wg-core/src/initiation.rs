//! Opens a handshake initiation as far as its TAI64N timestamp, for the replay guard that
//! wg-core keeps per peer across tunnel re-creations.
//!
//! boringtun keeps the newest timestamp it accepted inside its `Tunn`, so re-creating a tunnel
//! (session expiry, backoff retry, a preshared-key change) would forget it: an initiation
//! captured on the path could then be replayed from another address and answered. wg-core reads
//! the timestamp itself and drops an initiation that is not newer than the newest one accepted
//! from that peer (see `Peer::newest_initiation`).
//!
//! Written from the WireGuard paper (section 5.4.2, "First Message: Initiator to Responder"):
//! Noise IKpsk2 over Curve25519, ChaCha20-Poly1305 and BLAKE2s. The preshared key enters only
//! after this message, so the timestamp does not depend on it.

use blake2::{Blake2s256, Digest};
use boringtun::x25519;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use zeroize::Zeroizing;

/// Length of a handshake initiation.
pub(crate) const LEN: usize = 148;

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";

/// A TAI64N timestamp: 8 bytes of seconds and 4 of nanoseconds, big-endian, so byte order is
/// time order.
pub(crate) type Timestamp = [u8; 12];

/// What an initiation proves once opened: who sent it, and when (by the sender's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opened {
    /// The initiator's static public key.
    pub(crate) peer: [u8; 32],
    /// The initiator's timestamp: authentic, since only the holder of the initiator's or our
    /// private key can encrypt it.
    pub(crate) timestamp: Timestamp,
}

/// Decrypts the static key and the timestamp of a handshake initiation sent to `public`
/// (ours). `None` when the message does not authenticate. The MACs are the rate limiter's job.
pub(crate) fn open(
    secret: &x25519::StaticSecret,
    public: &x25519::PublicKey,
    msg: &[u8; LEN],
) -> Option<Opened> {
    let ephemeral: [u8; 32] = msg[8..40].try_into().ok()?;
    let encrypted_static = &msg[40..88];
    let encrypted_timestamp = &msg[88..116];

    let chain = Zeroizing::new(hash(&[CONSTRUCTION]));
    let h = hash(&[chain.as_slice(), IDENTIFIER]);
    let h = hash(&[&h, public.as_bytes()]);
    let chain = Zeroizing::new(kdf1(&chain, &ephemeral));
    let h = hash(&[&h, &ephemeral]);
    let shared = secret.diffie_hellman(&x25519::PublicKey::from(ephemeral));
    if !shared.was_contributory() {
        return None;
    }
    let (chain, key) = kdf2(&chain, shared.as_bytes());
    let mut peer = [0u8; 32];
    open_aead(&key, &h, encrypted_static, &mut peer)?;
    let h = hash(&[&h, encrypted_static]);
    let shared = secret.diffie_hellman(&x25519::PublicKey::from(peer));
    if !shared.was_contributory() {
        return None;
    }
    let (_, key) = kdf2(&chain, shared.as_bytes());
    let mut timestamp = [0u8; 12];
    open_aead(&key, &h, encrypted_timestamp, &mut timestamp)?;
    Some(Opened { peer, timestamp })
}

/// Decrypts `sealed` (plaintext then 16-byte tag) with counter 0 into `out`.
fn open_aead(key: &[u8; 32], aad: &[u8], sealed: &[u8], out: &mut [u8]) -> Option<()> {
    let (text, tag) = sealed.split_at_checked(out.len())?;
    if tag.len() != 16 {
        return None;
    }
    out.copy_from_slice(text);
    ChaCha20Poly1305::new(key.into())
        .decrypt_in_place_detached(&Nonce::default(), aad, out, Tag::from_slice(tag))
        .ok()
}

fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

/// HMAC-BLAKE2s (RFC 2104, 64-byte blocks) of the concatenated `parts`.
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut inner_pad = Zeroizing::new([0x36u8; 64]);
    let mut outer_pad = Zeroizing::new([0x5cu8; 64]);
    for (i, k) in key.iter().enumerate() {
        inner_pad[i] ^= k;
        outer_pad[i] ^= k;
    }
    let mut inner = Blake2s256::new();
    inner.update(inner_pad.as_slice());
    for part in parts {
        inner.update(part);
    }
    let inner = Zeroizing::new(<[u8; 32]>::from(inner.finalize()));
    hash(&[outer_pad.as_slice(), inner.as_slice()])
}

/// The paper's KDF1: the new chaining key.
fn kdf1(chain: &[u8; 32], input: &[u8]) -> [u8; 32] {
    let prk = Zeroizing::new(hmac(chain, &[input]));
    hmac(&prk, &[&[1]])
}

/// The paper's KDF2: the new chaining key and a message key.
fn kdf2(chain: &[u8; 32], input: &[u8]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let prk = Zeroizing::new(hmac(chain, &[input]));
    let first = Zeroizing::new(hmac(&prk, &[&[1]]));
    let second = Zeroizing::new(hmac(&prk, &[first.as_slice(), &[2]]));
    (first, second)
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::{Tunn, TunnResult};
    use std::time::{SystemTime, UNIX_EPOCH};

    fn pair() -> (x25519::StaticSecret, x25519::StaticSecret) {
        (
            x25519::StaticSecret::from([1u8; 32]),
            x25519::StaticSecret::from([2u8; 32]),
        )
    }

    fn initiation(from: &x25519::StaticSecret, to: &x25519::PublicKey) -> [u8; LEN] {
        let mut tunn = Tunn::new(from.clone(), *to, None, None, 1, None);
        let mut buf = [0u8; 256];
        match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(out) => out.try_into().unwrap(),
            _ => panic!("no initiation"),
        }
    }

    #[test]
    fn opens_boringtuns_initiation_with_the_senders_key_and_clock() {
        let (initiator, responder) = pair();
        let responder_public = x25519::PublicKey::from(&responder);
        let msg = initiation(&initiator, &responder_public);
        let opened = open(&responder, &responder_public, &msg).expect("authentic");
        assert_eq!(opened.peer, *x25519::PublicKey::from(&initiator).as_bytes());
        // TAI64N: seconds since 1970 plus 2^62 (and the leap-second offset).
        let secs = u64::from_be_bytes(opened.timestamp[..8].try_into().unwrap());
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ours = (1u64 << 62) + unix;
        assert!(secs.abs_diff(ours) < 60, "{secs} vs {ours}");
        // A later initiation is newer in byte order.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let later = open(
            &responder,
            &responder_public,
            &initiation(&initiator, &responder_public),
        )
        .unwrap();
        assert!(later.timestamp > opened.timestamp);
    }

    #[test]
    fn refuses_tampering_and_the_wrong_responder() {
        let (initiator, responder) = pair();
        let responder_public = x25519::PublicKey::from(&responder);
        let msg = initiation(&initiator, &responder_public);
        for i in 8..116 {
            let mut bad = msg;
            bad[i] ^= 1;
            assert_eq!(open(&responder, &responder_public, &bad), None, "byte {i}");
        }
        let other = x25519::StaticSecret::from([3u8; 32]);
        assert_eq!(open(&other, &x25519::PublicKey::from(&other), &msg), None);
    }
}
