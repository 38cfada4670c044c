//! Index files: untrusted bytes (no key), and, sealed with the test key, the bytes as the
//! compressed body (zstd bombs, garbage) and as the decoded plaintext.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volguard_fuzz::crypto::Purpose;
use volguard_fuzz::index::{Index, IndexFile};

fuzz_target!(|data: &[u8]| {
    let keys = volguard_fuzz::test_keys();
    let name = hex::encode(keys.id_of(data));
    assert!(IndexFile::open(&keys, &name, data).is_err());
    // As the compressed body: what follows decryption.
    let _ = IndexFile::open(&keys, &name, &keys.seal(Purpose::Index, data));
    let _ = IndexFile::decompress(data, "index/fuzz");
    // As the plaintext, sealed the way volguard writes it, so the name check passes.
    if let Ok(compressed) = zstd::bulk::compress(data, 1) {
        let sealed = keys.seal(Purpose::Index, &compressed);
        if let Ok(f) = IndexFile::open(&keys, &name, &sealed) {
            let mut index = Index::default();
            index.add_file(&f);
            let _ = index.blob_count();
        }
    }
});
