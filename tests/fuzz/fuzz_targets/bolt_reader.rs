//! The bbolt reader and the volume records it yields: any bytes as a metadata.db must give
//! records and warnings, never a panic, a hang or an allocation beyond the input's scale.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use volguard_fuzz::docker::{bolt, volumes};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/fuzz/volumes/metadata.db");
    let (records, warnings) = volumes::volumes_from_db_bytes(data.to_vec(), path);
    // Every warning names the file it is about.
    assert!(
        warnings.iter().all(|w| w.contains("metadata.db")),
        "{warnings:?}"
    );
    for r in &records {
        let _ = volguard_fuzz::docker::valid_volume_name(&r.name);
    }
    // Other buckets and keys than Docker's, including nested bucket headers.
    if let Ok(db) = bolt::Db::parse(data.to_vec()) {
        let _ = db.txid();
        for name in [&b""[..], b"volumes", b"\x00", b"meta"] {
            let _ = db.bucket(name);
        }
        // containerd's snapshotter database: nested buckets, one per snapshot.
        if let Ok(Some(snaps)) = db.bucket_path(&[b"v1", b"snapshots"]) {
            for e in &snaps {
                let _ = db.sub_bucket(e);
            }
        }
    }
});
