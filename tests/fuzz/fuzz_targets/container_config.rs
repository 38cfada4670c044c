//! The container-config parser: config.v2.json and hostconfig.json. The input is the
//! config's bytes, then (after the first 0xFF byte, which valid JSON never holds) the
//! hostconfig's. Garbage must be an error or a warning naming the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use volguard_fuzz::docker::{containers, layers};

fuzz_target!(|data: &[u8]| {
    let (config, hostconfig) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let root = Path::new("/nonexistent/fuzz-docker-root");
    let cfg_path = root.join("containers/0123456789ab/config.v2.json");
    let hc_path = root.join("containers/0123456789ab/hostconfig.json");
    match containers::parse_container(
        root,
        "0123456789ab",
        &cfg_path,
        config,
        hostconfig.map(|b| (hc_path.as_path(), b)),
    ) {
        Ok((c, warning)) => {
            if let Some(w) = warning {
                assert!(w.contains("hostconfig.json"), "{w}");
            }
            // What inventory and layer-diff do next with a parsed record.
            let _ = layers::storage_of(&c);
            let _ = layers::short(&c.id);
            for m in &c.mounts {
                if let Some(name) = &m.name {
                    let _ = volguard_fuzz::docker::valid_volume_name(name);
                }
            }
        }
        Err(e) => assert!(e.contains("config.v2.json"), "{e}"),
    }
});
