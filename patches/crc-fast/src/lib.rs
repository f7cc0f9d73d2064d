//! The part of `crc-fast`'s API that aws-smithy-checksums calls:
//! `Digest::new(CrcAlgorithm)`, `update`, `finalize`, and `checksum`.
//! CRC-32 goes through `crc32fast` (already linked, SIMD); CRC-32C and
//! CRC-64/NVME use one 256-entry table each, built at compile time.

/// The CRCs the S3 SDK uses (parameters as in the CRC catalogue). Any other
/// algorithm of the real crate is absent, so code asking for one fails to
/// compile rather than computing something else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrcAlgorithm {
    /// CRC-32/ISO-HDLC, the zlib/Ethernet CRC (S3's `CRC32`).
    Crc32IsoHdlc,
    /// CRC-32/ISCSI, Castagnoli (S3's `CRC32C`).
    Crc32Iscsi,
    /// CRC-64/NVME (S3's `CRC64NVME`).
    Crc64Nvme,
}

/// Reflected (LSB-first) table for a reflected polynomial `poly` of `width`
/// bits: entry i is the CRC register after shifting byte i through.
const fn reflected_table(poly: u64) -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ poly } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

// Polynomials in their usual (MSB-first) catalogue spelling, reflected here
// because both CRCs are reflected in and out.
const CRC32C_POLY: u64 = (0x1EDC_6F41u32).reverse_bits() as u64;
const CRC64_NVME_POLY: u64 = 0xAD93_D235_94C9_3659u64.reverse_bits();
static CRC32C_TABLE: [u64; 256] = reflected_table(CRC32C_POLY);
static CRC64_NVME_TABLE: [u64; 256] = reflected_table(CRC64_NVME_POLY);

fn update_reflected(table: &[u64; 256], mut crc: u64, data: &[u8]) -> u64 {
    for &b in data {
        crc = table[((crc ^ b as u64) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[derive(Clone, Debug)]
enum State {
    Crc32(crc32fast::Hasher),
    // The register before the final XOR (init and xorout are all ones for
    // both, so the register starts as all ones too).
    Crc32c(u32),
    Crc64Nvme(u64),
}

/// An incremental CRC: `update` with the bytes in order, then `finalize`.
#[derive(Clone, Debug)]
pub struct Digest {
    algorithm: CrcAlgorithm,
    state: State,
}

impl Digest {
    /// A digest of no bytes yet.
    pub fn new(algorithm: CrcAlgorithm) -> Digest {
        let state = match algorithm {
            CrcAlgorithm::Crc32IsoHdlc => State::Crc32(crc32fast::Hasher::new()),
            CrcAlgorithm::Crc32Iscsi => State::Crc32c(u32::MAX),
            CrcAlgorithm::Crc64Nvme => State::Crc64Nvme(u64::MAX),
        };
        Digest { algorithm, state }
    }

    /// Adds `data` after the bytes given so far.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Crc32(h) => h.update(data),
            State::Crc32c(crc) => *crc = update_reflected(&CRC32C_TABLE, *crc as u64, data) as u32,
            State::Crc64Nvme(crc) => *crc = update_reflected(&CRC64_NVME_TABLE, *crc, data),
        }
    }

    /// The CRC of every byte given so far (a 32-bit CRC in the low bits);
    /// the digest can go on being updated.
    pub fn finalize(&self) -> u64 {
        match &self.state {
            State::Crc32(h) => h.clone().finalize() as u64,
            State::Crc32c(crc) => (!*crc) as u64,
            State::Crc64Nvme(crc) => !*crc,
        }
    }

    /// Back to a digest of no bytes.
    pub fn reset(&mut self) {
        *self = Digest::new(self.algorithm);
    }
}

/// The CRC of `data`.
pub fn checksum(algorithm: CrcAlgorithm, data: &[u8]) -> u64 {
    let mut d = Digest::new(algorithm);
    d.update(data);
    d.finalize()
}
