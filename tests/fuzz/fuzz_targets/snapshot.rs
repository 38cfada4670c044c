//! Snapshot objects: untrusted bytes (no key) and, sealed with the test key under the name
//! volguard would give them, the bytes as the decrypted JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volguard_fuzz::crypto::Purpose;
use volguard_fuzz::snapshot::Snapshot;

fuzz_target!(|data: &[u8]| {
    let keys = volguard_fuzz::test_keys();
    let name = hex::encode(keys.id_of(data));
    assert!(Snapshot::open(&keys, &name, data).is_err());
    let sealed = keys.seal(Purpose::Snapshot, data);
    let opened = Snapshot::open(&keys, &name, &sealed);
    let direct = Snapshot::decode_plain(data, "snapshots/fuzz");
    assert_eq!(opened.is_ok(), direct.is_ok());
    if let Ok(s) = opened {
        assert!(s.root.subtree.is_some());
    }
});
