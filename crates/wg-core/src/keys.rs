//! WireGuard keys in the text form `wg genkey` / `wg pubkey` use (standard base64, 44 chars).
//!
//! Secret types ([`PrivateKey`], [`PresharedKey`]) print as `PrivateKey(..)` in `Debug`, have no
//! `Display`, and are zeroized when dropped. Their base64 text is only available through
//! [`PrivateKey::to_base64_secret`], which returns a [`Zeroizing`] string.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length in bytes of every WireGuard key.
pub const KEY_LEN: usize = 32;

/// Why a key could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not valid standard base64.
    #[error("key is not valid base64")]
    Base64,
    /// The text decodes to the wrong number of bytes.
    #[error("key decodes to {0} bytes, expected 32")]
    Length(usize),
}

fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let text = text.trim();
    // 32 bytes are 44 base64 characters; refuse long input before decoding it.
    if text.len() > 64 {
        return Err(KeyError::Length(text.len() * 3 / 4));
    }
    let mut buf = Zeroizing::new([0u8; 48]);
    let n = STANDARD
        .decode_slice(text.as_bytes(), &mut buf[..])
        .map_err(|_| KeyError::Base64)?;
    if n != KEY_LEN {
        return Err(KeyError::Length(n));
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&buf[..KEY_LEN]);
    Ok(out)
}

/// A Curve25519 private key (the interface's static secret).
///
/// `Debug` prints `PrivateKey(..)`; there is no `Display`. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// A fresh random key from the OS generator, clamped like `wg genkey`.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::fill(&mut bytes);
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        let key = Self(bytes);
        bytes.zeroize();
        key
    }

    /// Parses the base64 text `wg genkey` prints (surrounding whitespace is ignored).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(|b| Self(*b))
    }

    /// Builds a key from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The base64 text of the secret, for `wg-agent genkey`. Zeroized when dropped.
    pub fn to_base64_secret(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0))
    }

    /// The raw 32 bytes of the secret, for the UAPI's hex form. Zeroized when dropped.
    pub fn to_bytes_secret(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0)
    }

    /// The matching public key (what `wg pubkey` prints for this key).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.to_static_secret()).to_bytes())
    }

    pub(crate) fn to_static_secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// An optional symmetric key mixed into the handshake (`wg genpsk`).
///
/// `Debug` prints `PresharedKey(..)`; there is no `Display`. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// A fresh random key, like `wg genpsk`.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::fill(&mut bytes);
        let key = Self(bytes);
        bytes.zeroize();
        key
    }

    /// Parses base64 text (surrounding whitespace is ignored).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(|b| Self(*b))
    }

    /// Builds a key from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The base64 text of the secret. Zeroized when dropped.
    pub fn to_base64_secret(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0))
    }

    pub(crate) fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(..)")
    }
}

/// A Curve25519 public key: a peer's identity. `Display`/`FromStr` use `wg pubkey`'s base64.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Builds a key from raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses base64 text (surrounding whitespace is ignored).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(|b| Self(*b))
    }

    /// The base64 text, as `wg pubkey` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub(crate) fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A key pair checked against `wg pubkey` (RFC 7748 section 6.1 test vector).
    const PRIV: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const PUB: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    #[test]
    fn public_key_matches_wg_pubkey() {
        let key = PrivateKey::from_base64(PRIV).unwrap();
        assert_eq!(key.public_key().to_string(), PUB);
        assert_eq!(PUB.parse::<PublicKey>().unwrap(), key.public_key());
        assert_eq!(key.to_base64_secret().as_str(), PRIV);
    }

    #[test]
    fn secrets_are_redacted() {
        let key = PrivateKey::generate();
        assert_eq!(format!("{key:?}"), "PrivateKey(..)");
        let psk = PresharedKey::generate();
        assert_eq!(format!("{psk:?}"), "PresharedKey(..)");
        assert!(!format!("{:?}", key.public_key()).is_empty());
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        assert_ne!(a, b);
        assert_eq!(a.0[0] & 7, 0);
        assert_eq!(a.0[31] & 0xc0, 0x40);
        let round = PrivateKey::from_base64(&a.to_base64_secret()).unwrap();
        assert_eq!(round, a);
    }

    #[test]
    fn bad_text_is_refused() {
        assert_eq!(PublicKey::from_base64("not base64!"), Err(KeyError::Base64));
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyError::Length(3)));
        assert!(PublicKey::from_base64(&"A".repeat(200)).is_err());
        assert!(PrivateKey::from_base64("").is_err());
    }
}
