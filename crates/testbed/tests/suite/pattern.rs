//! Deterministic bodies: `len` bytes from a seed, produced block by block (64 KiB), so that
//! 256 MiB never sit in memory and the expected sha256 can be computed on either side.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// Block size of the pattern.
pub(crate) const BLOCK: usize = 64 * 1024;

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fills `out` (at most [`BLOCK`] bytes) with block `index` of the stream of `seed`.
pub(crate) fn fill_block(seed: u64, index: u64, out: &mut [u8]) {
    let base = splitmix64(seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d));
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let word = splitmix64(base.wrapping_add(i as u64)).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// The pattern as a reader: `len` bytes of the stream of `seed`.
pub(crate) struct Pattern {
    seed: u64,
    len: u64,
    pos: u64,
    block: Vec<u8>,
    block_index: Option<u64>,
}

impl Pattern {
    pub(crate) fn new(seed: u64, len: u64) -> Self {
        Self {
            seed,
            len,
            pos: 0,
            block: vec![0; BLOCK],
            block_index: None,
        }
    }
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let index = self.pos / BLOCK as u64;
        if self.block_index != Some(index) {
            fill_block(self.seed, index, &mut self.block);
            self.block_index = Some(index);
        }
        let offset = (self.pos % BLOCK as u64) as usize;
        let left = usize::try_from(self.len - self.pos).unwrap_or(usize::MAX);
        let n = buf.len().min(BLOCK - offset).min(left);
        buf[..n].copy_from_slice(&self.block[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Hex sha256 of everything `reader` yields, with the byte count.
pub(crate) fn sha256_of(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

/// Hex sha256 of the pattern of `seed`, `len` bytes.
pub(crate) fn pattern_sha256(seed: u64, len: u64) -> String {
    // Reading from memory cannot fail.
    sha256_of(Pattern::new(seed, len)).map_or_else(|e| e.to_string(), |(sha, _)| sha)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
