//! Damaged Docker state, in a copy of the data root built from real containers and a real
//! volume (never the live root): a malformed config.v2.json, an unknown storage driver, the
//! containerd snapshotter's driver name, a volume directory without `_data`, and a
//! metadata.db with garbage pages or a broken meta page. Every command names the damaged
//! file and says what to do, never panics, and still shows everything else.

use std::path::Path;
use std::process::Command;

use crate::common::dockerdiff::{canonical, parse};
use crate::common::*;
use serde_json::Value;

fn cp_a(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    // cp -a keeps whiteouts (0/0 devices), trusted.overlay.* xattrs and symlinks.
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// Copies what volguard reads of container `id` (records, layer registration, writable
/// layer and its lower layers) from `live` into `copy`.
fn copy_container(live: &Path, copy: &Path, id: &str) {
    let cdir = live.join("containers").join(id);
    for f in ["config.v2.json", "hostconfig.json"] {
        std::fs::create_dir_all(copy.join("containers").join(id)).unwrap();
        std::fs::copy(cdir.join(f), copy.join("containers").join(id).join(f)).unwrap();
    }
    let mid = format!("image/overlay2/layerdb/mounts/{id}");
    cp_a(&live.join(&mid), &copy.join(&mid));
    let mount_id = std::fs::read_to_string(live.join(&mid).join("mount-id")).unwrap();
    let layer = format!("overlay2/{}", mount_id.trim());
    if !copy.join(&layer).exists() {
        cp_a(&live.join(&layer), &copy.join(&layer));
    }
    let lower = std::fs::read_to_string(live.join(&layer).join("lower")).unwrap();
    for l in lower.trim().split(':') {
        let link = format!("overlay2/{l}");
        if copy.join(&link).symlink_metadata().is_ok() {
            continue;
        }
        cp_a(&live.join(&link), &copy.join(&link));
        let target = std::fs::read_link(live.join(&link)).unwrap();
        let layer_id = target.parent().unwrap().file_name().unwrap();
        let dir = Path::new("overlay2").join(layer_id);
        if !copy.join(&dir).exists() {
            cp_a(&live.join(&dir), &copy.join(&dir));
        }
    }
}

fn set_driver(copy: &Path, id: &str, driver: &str) {
    let p = copy.join("containers").join(id).join("config.v2.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["Driver"] = Value::String(driver.to_string());
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Runs volguard on the copy; a panic (SIGABRT with panic = "abort") has no exit code and
/// fails here.
fn run(repo: &TestRepo, root: &Path, args: &[&str]) -> (i32, String, String) {
    let mut c = repo.cmd();
    c.arg("--docker-root").arg(root).args(args);
    let out = c.output().unwrap();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("volguard died by a signal: {}", describe(&c, &out)));
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn warnings_of(inv: &Value) -> Vec<String> {
    inv["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn damaged_state_is_named_per_item_and_the_rest_still_shown() {
    require_docker();
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let live = docker_root();
    let mut clean = DockerCleanup::new();
    let vol = clean.volume(unique("vg-bad-vol"));
    docker(&["volume", "create", "--label", "vg.test=bad", &vol]);
    sh_in_volume(&vol, "echo keep > /data/f");
    let names: Vec<String> = ["good", "garbled", "btrfs", "snapshotter"]
        .iter()
        .map(|n| clean.container(unique(&format!("vg-bad-{n}"))))
        .collect();
    let mut ids = Vec::new();
    for n in &names {
        docker(&[
            "run",
            "--network",
            "none",
            "--name",
            n,
            IMAGE,
            "sh",
            "-c",
            "echo a > /added; rm /bin/ls; mkdir /srv; echo s > /srv/s",
        ]);
        ids.push(docker(&["inspect", "--format", "{{.Id}}", n]));
    }
    let want_diff = canonical(parse(&docker(&["diff", &names[0]])));

    let copy = repo.path().join("docker-root");
    for id in &ids {
        copy_container(&live, &copy, id);
    }
    cp_a(
        &live.join("volumes").join(&vol),
        &copy.join("volumes").join(&vol),
    );
    let db = std::fs::read(live.join("volumes/metadata.db")).unwrap();
    std::fs::write(copy.join("volumes/metadata.db"), &db).unwrap();
    let nodata = unique("vg-bad-nodata");
    std::fs::create_dir_all(copy.join("volumes").join(&nodata)).unwrap();

    // The intact copy reads like the live root.
    let (code, out, err) = run(&repo, &copy, &["layer-diff", &names[0]]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), want_diff);

    // Damage three containers' records.
    let garbled_cfg = copy.join("containers").join(&ids[1]).join("config.v2.json");
    std::fs::write(&garbled_cfg, "{\"ID\": [").unwrap();
    set_driver(&copy, &ids[2], "btrfs");
    set_driver(&copy, &ids[3], "overlayfs");
    let garbled_cfg = garbled_cfg.display().to_string();

    // The undamaged container: same diff, exit 0, the damaged record warned about.
    let (code, out, err) = run(&repo, &copy, &["layer-diff", &ids[0][..12]]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), want_diff);
    assert!(err.contains(&garbled_cfg), "{err}");

    // The damaged ones: exit 1, one line naming the file and the problem.
    let (code, _, err) = run(&repo, &copy, &["layer-diff", &ids[1]]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&garbled_cfg) && err.contains("malformed") && err.contains("docker diff"),
        "{err}"
    );
    let (code, _, err) = run(&repo, &copy, &["layer-diff", &names[2]]);
    assert_eq!(code, 1);
    assert!(
        err.contains("\"btrfs\"") && err.contains(&format!("{}/config.v2.json", ids[2])),
        "{err}"
    );
    let (code, _, err) = run(&repo, &copy, &["layer-diff", &names[3]]);
    assert_eq!(code, 1);
    assert!(err.contains("containerd snapshotter"), "{err}");

    // inventory: one warning per damaged item, the rest listed.
    let (code, out, err) = run(&repo, &copy, &["--json", "inventory"]);
    assert_eq!(code, 3, "{err}");
    let inv: Value = serde_json::from_str(&out).unwrap();
    let warnings = warnings_of(&inv);
    let about =
        |needle: &str| -> Vec<&String> { warnings.iter().filter(|w| w.contains(needle)).collect() };
    assert_eq!(about(&ids[1]).len(), 1, "{warnings:#?}");
    assert!(about(&ids[1])[0].contains("config.v2.json"));
    let nd = about(&nodata);
    assert_eq!(nd.len(), 1, "{warnings:#?}");
    assert!(nd[0].contains("without _data") && nd[0].contains("docker volume inspect"));
    let ctrs = inv["containers"].as_array().unwrap();
    for (i, want) in [(0, "overlay2"), (2, "btrfs"), (3, "overlayfs")] {
        let c = ctrs
            .iter()
            .find(|c| c["id"] == ids[i].as_str())
            .unwrap_or_else(|| panic!("{} not listed", names[i]));
        assert_eq!(c["driver"], want);
    }
    let v = inv["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vol.as_str())
        .unwrap();
    assert_eq!(v["labels"]["vg.test"], "bad");

    // backup --all: the volume with data is backed up, the one without is named, exit 3.
    let (code, out, err) = run(&repo, &copy, &["--json", "backup", "--all"]);
    assert_eq!(code, 3, "{err}");
    let b: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b["snapshots"].as_array().unwrap().len(), 1, "{b:#}");
    assert_eq!(b["snapshots"][0]["volume"], vol.as_str());
    let skipped = b["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{b:#}");
    assert!(skipped[0].as_str().unwrap().contains(&nodata));
    let (code, _, err) = run(&repo, &copy, &["backup", &nodata]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&nodata) && err.contains("without _data"),
        "{err}"
    );

    // metadata.db, every page after the two meta pages garbage: the file is named, the
    // volume is still listed from its directory.
    let page = u32::from_le_bytes(db[24..28].try_into().unwrap()) as usize;
    let mut garbage = db.clone();
    garbage[2 * page..].copy_from_slice(&pseudo_random(db.len() - 2 * page, 7));
    for (what, bytes) in [
        ("garbage pages", garbage),
        ("broken meta", {
            let mut b = db.clone();
            for off in [20, page + 20] {
                b[off] ^= 0xff;
            }
            b
        }),
    ] {
        std::fs::write(copy.join("volumes/metadata.db"), &bytes).unwrap();
        let (code, out, err) = run(&repo, &copy, &["--json", "inventory"]);
        assert_eq!(code, 3, "{what}: {err}");
        let inv: Value = serde_json::from_str(&out).unwrap();
        let warnings = warnings_of(&inv);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("metadata.db") && w.contains("listed from their directories")),
            "{what}: {warnings:#?}"
        );
        let v = inv["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vol.as_str())
            .unwrap_or_else(|| panic!("{what}: volume not listed"));
        assert_eq!(v["source"], "directory", "{what}");
        // Containers do not depend on metadata.db.
        assert!(
            inv["containers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == ids[0].as_str()),
            "{what}"
        );
    }
}
