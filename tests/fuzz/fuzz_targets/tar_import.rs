//! `import`: a tar archive (plain, gzip or zstd, told apart by its first bytes) unpacked
//! into a scratch directory. Whatever the archive says, nothing may land outside the
//! scratch directory, and garbage is an error naming the archive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volguard_fuzz::import;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let archive = dir.path().join("in.tar");
    if std::fs::write(&archive, data).is_err() {
        return;
    }
    let outside = dir.path().join("outside");
    let dest = dir.path().join("dest");
    if std::fs::create_dir(&dest).is_err() {
        return;
    }
    let strip = data.first().map_or(0, |b| (b & 1) as usize);
    if let Err(e) = import::unpack(&archive, &dest, strip) {
        let e = e.to_string();
        assert!(e.contains("in.tar") || e.contains("dest"), "{e}");
    }
    // Only in.tar and dest/ may exist beside each other.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(names.len() <= 2 && !outside.exists(), "{names:?}");
});
