//! Packs: the footer and trailer of untrusted bytes (no key: must fail cleanly), a trailer
//! plaintext sealed with the test key (entries must be checked against the blob area), and
//! a sealed blob body (flag, zstd bomb, declared size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use volguard_fuzz::crypto::Purpose;
use volguard_fuzz::ids::BlobId;
use volguard_fuzz::pack;

fuzz_target!(|data: &[u8]| {
    let keys = volguard_fuzz::test_keys();
    // 1. The bytes as a whole pack.
    let _ = pack::parse_pack(&keys, data, "packs/fuzz");
    if data.len() >= 8 {
        let _ = pack::trailer_len(&data[data.len() - 8..], data.len() as u64, "packs/fuzz");
    }
    // 2. The bytes as a decrypted trailer, directly and sealed into a pack after a blob
    //    area of the first byte's size.
    let area = u64::from(data.first().copied().unwrap_or(0)) * 64;
    if let Ok(entries) = pack::parse_trailer_plain(data, area, "packs/fuzz") {
        for e in &entries {
            assert!(u64::from(e.offset) + u64::from(e.length) <= area);
        }
    }
    let mut p = vec![0u8; area as usize];
    let sealed = keys.seal(Purpose::PackTrailer, data);
    p.extend_from_slice(&sealed);
    p.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    p.extend_from_slice(pack::MAGIC);
    if let Ok(entries) = pack::parse_pack(&keys, &p, "packs/fuzz") {
        for e in &entries {
            let s = &p[e.offset as usize..(e.offset + e.length) as usize];
            let _ = pack::open_blob(&keys, s, &e.id, e.raw_length);
        }
    }
    // 3. The bytes as a blob body: the declared length comes from the first 4 bytes.
    if data.len() >= 4 {
        let raw_length = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) % (1 << 24);
        let sealed = keys.seal(Purpose::Blob, &data[4..]);
        let _ = pack::open_blob(&keys, &sealed, &BlobId([0; 32]), raw_length);
    }
});
