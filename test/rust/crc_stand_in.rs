//! The crc-fast stand-in (patches/crc-fast) computes the CRCs the S3 SDK
//! sends and checks: the check values of the CRC catalogue (the CRC of
//! "123456789"), and the same result whether the bytes come at once or in
//! pieces.

use crc_fast::{checksum, CrcAlgorithm, Digest};

const CHECK_INPUT: &[u8] = b"123456789";

#[test]
fn the_catalogue_check_values() {
    assert_eq!(checksum(CrcAlgorithm::Crc32IsoHdlc, CHECK_INPUT), 0xCBF4_3926);
    assert_eq!(checksum(CrcAlgorithm::Crc32Iscsi, CHECK_INPUT), 0xE306_9283);
    assert_eq!(checksum(CrcAlgorithm::Crc64Nvme, CHECK_INPUT), 0xAE8B_1486_0A79_9888);
}

#[test]
fn no_bytes_give_zero_and_known_vectors_match() {
    for alg in [CrcAlgorithm::Crc32IsoHdlc, CrcAlgorithm::Crc32Iscsi, CrcAlgorithm::Crc64Nvme] {
        assert_eq!(checksum(alg, b""), 0, "{alg:?} of no bytes");
    }
    // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, and of 0xff.
    assert_eq!(checksum(CrcAlgorithm::Crc32Iscsi, &[0u8; 32]), 0x8A91_36AA);
    assert_eq!(checksum(CrcAlgorithm::Crc32Iscsi, &[0xffu8; 32]), 0x62A8_AB43);
}

#[test]
fn pieces_give_the_same_crc_as_the_whole() {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for alg in [CrcAlgorithm::Crc32IsoHdlc, CrcAlgorithm::Crc32Iscsi, CrcAlgorithm::Crc64Nvme] {
        let whole = checksum(alg, &data);
        for cut in [0, 1, 7, 4096, 9_999, 10_000] {
            let mut d = Digest::new(alg);
            d.update(&data[..cut]);
            let partial = d.finalize();
            d.update(&data[cut..]);
            assert_eq!(d.finalize(), whole, "{alg:?} cut at {cut}");
            assert_eq!(partial, checksum(alg, &data[..cut]), "{alg:?}: finalize does not end the digest");
        }
        let mut d = Digest::new(alg);
        d.update(b"something else");
        d.reset();
        d.update(&data);
        assert_eq!(d.finalize(), whole, "{alg:?} after reset");
    }
}
