//! `volguard inventory` against a real dockerd: every field it shares with `docker volume
//! inspect` / `docker inspect` agrees for the objects this test creates, and a damaged copy
//! of the data root gives one warning per damaged item, never a panic.
//!
//! Other tests run concurrently with their own volumes and containers: assertions are only
//! about the objects created here.

use std::path::Path;

use crate::common::*;
use serde_json::{Value, json};
use volguard::docker::bolt;

/// Runs `volguard --json --docker-root ROOT inventory [extra]`; exit 0 or 3 (another test's
/// container may vanish mid-read), stdout one JSON document.
fn inventory(repo: &TestRepo, root: &Path, extra: &[&str]) -> (Value, i32, String) {
    let mut c = repo.cmd();
    c.arg("--json")
        .arg("--docker-root")
        .arg(root)
        .arg("inventory")
        .args(extra);
    let out = c.output().expect("spawn volguard");
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "inventory failed: {}",
        describe(&c, &out)
    );
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", describe(&c, &out)));
    (v, code, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn find<'a>(list: &'a Value, key: &str, want: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|x| x[key] == want)
        .unwrap_or_else(|| panic!("no {key}={want} in {list:#}"))
}

/// `docker ... inspect` prints null for empty maps; volguard prints `{}`.
fn map_or_empty(v: &Value) -> Value {
    if v.is_null() { json!({}) } else { v.clone() }
}

fn inspect(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--format");
    a.push("{{json .}}");
    serde_json::from_str(&docker(&a)).unwrap()
}

struct Fixture {
    clean: DockerCleanup,
    named: String,
    dangling: String,
    opts: String,
    anon: String,
    ctr: String,
    bind_dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    require_docker();
    let mut clean = DockerCleanup::new();
    let named = clean.volume(unique("vg-inv-named"));
    let dangling = clean.volume(unique("vg-inv-dangling"));
    let opts = clean.volume(unique("vg-inv-opts"));
    let ctr = clean.container(unique("vg-inv-ctr"));
    docker(&["volume", "create", "--label", "vg.test=inventory", &named]);
    docker(&["volume", "create", &dangling]);
    docker(&[
        "volume",
        "create",
        "--driver",
        "local",
        "--opt",
        "type=tmpfs",
        "--opt",
        "device=tmpfs",
        "--opt",
        "o=size=1m",
        &opts,
    ]);
    sh_in_volume(
        &dangling,
        "head -c 1000 /dev/zero > /data/kb && mkdir /data/d",
    );
    let bind_dir = tempfile::tempdir().unwrap();
    docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &ctr,
        "--label",
        "vg.role=inventory-test",
        "-v",
        "/data",
        "-v",
        &format!("{named}:/named:ro"),
        "-v",
        &format!("{}:/hostbind", bind_dir.path().display()),
        "--tmpfs",
        "/run:size=1m",
        "--mount",
        "type=tmpfs,destination=/t2",
        IMAGE,
        "sleep",
        "600",
    ]);
    let anon = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{if eq .Destination \"/data\"}}{{.Name}}{{end}}{{end}}",
        &ctr,
    ]);
    assert_eq!(anon.len(), 64, "anonymous volume name: {anon:?}");
    Fixture {
        clean,
        named,
        dangling,
        opts,
        anon,
        ctr,
        bind_dir,
    }
}

#[test]
fn inventory_agrees_with_docker_inspect() {
    let f = fixture();
    let repo = TestRepo::new();
    let (inv, _, stderr) = inventory(&repo, &docker_root(), &["--sizes"]);
    let ctr_id = docker(&["inspect", "--format", "{{.Id}}", &f.ctr]);

    for name in [&f.named, &f.dangling, &f.opts, &f.anon] {
        let d = inspect(&["volume", "inspect", name]);
        let v = find(&inv["volumes"], "name", name);
        assert_eq!(v["driver"], d["Driver"], "{name}");
        assert_eq!(v["labels"], map_or_empty(&d["Labels"]), "{name}");
        assert_eq!(v["options"], map_or_empty(&d["Options"]), "{name}");
        assert_eq!(v["data_path"], d["Mountpoint"], "{name}");
        assert_eq!(v["source"], "metadata_db", "{name}");
        assert_eq!(v["anonymous"], json!(*name == f.anon), "{name}");
        let dangling = *name == f.dangling || *name == f.opts;
        assert_eq!(v["dangling"], json!(dangling), "{name}: {stderr}");
        assert_eq!(v["data_mountpoint"], json!(*name == f.opts), "{name}");
        let users = v["containers"].as_array().unwrap();
        assert_eq!(users.len(), usize::from(!dangling), "{name}: {v:#}");
    }
    let opts = find(&inv["volumes"], "name", &f.opts);
    assert_eq!(opts["data_mount"]["mount_type"], "tmpfs");
    assert_eq!(opts["data_mount"]["device"], "tmpfs");
    let named = find(&inv["volumes"], "name", &f.named);
    assert_eq!(
        named["containers"][0],
        json!({"id": ctr_id, "name": f.ctr, "running": true, "destination": "/named", "rw": false})
    );
    let anon = find(&inv["volumes"], "name", &f.anon);
    assert_eq!(anon["containers"][0]["destination"], "/data");
    assert_eq!(anon["containers"][0]["rw"], true);
    let dangling = find(&inv["volumes"], "name", &f.dangling);
    assert_eq!(dangling["size_bytes"], 1000, "{dangling:#}");
    assert_eq!(dangling["file_count"], 2, "{dangling:#}");

    let d = inspect(&["inspect", &f.ctr]);
    let c = find(&inv["containers"], "id", &ctr_id);
    assert_eq!(
        c["name"],
        d["Name"].as_str().unwrap().trim_start_matches('/')
    );
    assert_eq!(c["image"], d["Config"]["Image"]);
    assert_eq!(c["running"], d["State"]["Running"]);
    assert_eq!(c["running"], true);
    assert_eq!(c["driver"], d["Driver"]);
    assert_eq!(c["labels"], map_or_empty(&d["Config"]["Labels"]));
    assert!(c["writable_layer_bytes"].is_u64(), "{c:#}");
    let mounts = c["mounts"].as_array().unwrap();
    let docker_mounts = d["Mounts"].as_array().unwrap();
    for dm in docker_mounts {
        let m = find(
            &c["mounts"],
            "destination",
            dm["Destination"].as_str().unwrap(),
        );
        assert_eq!(m["type"], dm["Type"], "{dm}");
        assert_eq!(m["rw"], dm["RW"], "{dm}");
        if dm["Type"] != "tmpfs" {
            assert_eq!(m["source"], dm["Source"], "{dm}");
        }
        if dm["Type"] == "volume" {
            assert_eq!(m["name"], dm["Name"], "{dm}");
            assert_eq!(m["backed_up"], true, "{dm}");
        } else {
            assert_eq!(m["backed_up"], false, "{dm}");
            assert!(!m["reason"].as_str().unwrap().is_empty(), "{dm}");
        }
    }
    // `--tmpfs` mounts are only in HostConfig.Tmpfs, not in `docker inspect`'s Mounts.
    let tmpfs = d["HostConfig"]["Tmpfs"].as_object().unwrap();
    assert_eq!(mounts.len(), docker_mounts.len() + tmpfs.len(), "{c:#}");
    for dest in tmpfs.keys() {
        let m = find(&c["mounts"], "destination", dest);
        assert_eq!(
            (m["type"].as_str(), &m["backed_up"]),
            (Some("tmpfs"), &json!(false))
        );
    }
    let bind = find(&c["mounts"], "destination", "/hostbind");
    assert_eq!(bind["source"], f.bind_dir.path().to_str().unwrap());

    // The human table names them too.
    let out = repo.run(&[
        "--docker-root",
        docker_root().to_str().unwrap(),
        "inventory",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [&f.named, &f.dangling, &f.opts, &f.anon, &f.ctr] {
        assert!(text.contains(name.as_str()), "{name} missing from:\n{text}");
    }
    drop(f.clean);
}

/// The live metadata.db, read without a lock while dockerd holds it, lists our volume; every
/// truncated or bit-flipped copy of it gives Ok or Err, never a panic.
#[test]
fn live_metadata_db_parses_and_damaged_copies_never_panic() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let vol = clean.volume(unique("vg-inv-bolt"));
    docker(&["volume", "create", "--label", "vg.test=bolt", &vol]);
    let path = docker_root().join("volumes/metadata.db");
    let db = bolt::Db::open(&path).expect("live metadata.db");
    let entries = db.bucket(b"volumes").unwrap().expect("bucket volumes");
    let mine = entries
        .iter()
        .find(|e| e.key == vol.as_bytes())
        .expect("our volume in metadata.db");
    let rec: Value = serde_json::from_slice(&mine.value).unwrap();
    assert_eq!(rec["Labels"]["vg.test"], "bolt");

    let bytes = std::fs::read(&path).unwrap();
    for len in (0..bytes.len()).step_by(61) {
        if let Ok(db) = bolt::Db::parse(bytes[..len].to_vec()) {
            let _ = db.bucket(b"volumes");
        }
    }
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for _ in 0..2000 {
        let mut g = bytes.clone();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x as usize) % g.len();
            g[off] ^= 1 << (x % 8);
        }
        if let Ok(db) = bolt::Db::parse(g) {
            let _ = db.bucket(b"volumes");
        }
    }
}

fn copy_json_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let Ok(rd) = std::fs::read_dir(from) else {
        return;
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        if name.to_string_lossy().ends_with(".json") {
            // Another test's container may vanish meanwhile.
            let _ = std::fs::copy(ent.path(), to.join(&name));
        }
    }
}

/// A copy of the data root with a damaged config.v2.json and a truncated metadata.db: one
/// clear warning per damaged item, everything else still listed, exit 3, no panic.
#[test]
fn damaged_copy_of_the_data_root_warns_per_item() {
    let f = fixture();
    let repo = TestRepo::new();
    let live = docker_root();
    let copy = repo.path().join("docker-root");
    let db_bytes = std::fs::read(live.join("volumes/metadata.db")).unwrap();
    for name in [&f.named, &f.dangling, &f.opts, &f.anon] {
        std::fs::create_dir_all(copy.join("volumes").join(name).join("_data")).unwrap();
        let opts = live.join("volumes").join(name).join("opts.json");
        if opts.exists() {
            std::fs::copy(&opts, copy.join("volumes").join(name).join("opts.json")).unwrap();
        }
    }
    for ent in std::fs::read_dir(live.join("containers"))
        .unwrap()
        .flatten()
    {
        copy_json_files(&ent.path(), &copy.join("containers").join(ent.file_name()));
    }
    let ctr_id = docker(&["inspect", "--format", "{{.Id}}", &f.ctr]);
    let db_copy = copy.join("volumes/metadata.db");

    // Intact copy first: same answer as the live root for our objects.
    std::fs::write(&db_copy, &db_bytes).unwrap();
    let (inv, _, _) = inventory(&repo, &copy, &[]);
    assert_eq!(
        find(&inv["volumes"], "name", &f.named)["labels"]["vg.test"],
        "inventory"
    );
    assert_eq!(find(&inv["containers"], "id", &ctr_id)["running"], true);

    // Damage: our container's config.v2.json is not JSON, metadata.db cut short.
    std::fs::write(
        copy.join("containers").join(&ctr_id).join("config.v2.json"),
        "{\"ID\": [",
    )
    .unwrap();
    for len in [50, 100, 4096 + 100, db_bytes.len() / 2, db_bytes.len() - 1] {
        std::fs::write(&db_copy, &db_bytes[..len]).unwrap();
        let (inv, code, stderr) = inventory(&repo, &copy, &[]);
        let warnings: Vec<&str> = inv["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        let about_ctr: Vec<&&str> = warnings.iter().filter(|w| w.contains(&ctr_id)).collect();
        assert_eq!(about_ctr.len(), 1, "len {len}: {warnings:#?}");
        assert!(about_ctr[0].contains("config.v2.json"), "{about_ctr:?}");
        assert!(stderr.contains(&ctr_id), "warning not on stderr: {stderr}");
        assert_eq!(code, 3);
        assert!(
            inv["containers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["id"] != ctr_id.as_str()),
            "damaged container listed"
        );
        // Our volumes are still listed: from metadata.db if the cut spared their pages,
        // else from their directories, with a warning naming metadata.db.
        for name in [&f.named, &f.dangling, &f.opts, &f.anon] {
            let v = find(&inv["volumes"], "name", name);
            if v["source"] == "directory" {
                assert!(
                    warnings.iter().any(|w| w.contains("metadata.db")),
                    "len {len}: {warnings:#?}"
                );
            }
        }
        if len <= 100 {
            let db_warn: Vec<&&str> = warnings
                .iter()
                .filter(|w| w.contains("metadata.db"))
                .collect();
            assert_eq!(db_warn.len(), 1, "{warnings:#?}");
            assert!(
                db_warn[0].contains("not a usable bbolt file"),
                "{db_warn:?}"
            );
            if len == 50 {
                assert!(db_warn[0].contains("no valid meta page"), "{db_warn:?}");
            }
            // Nothing but directories left: volumes are still listed, flagged as such.
            assert_eq!(
                find(&inv["volumes"], "name", &f.named)["source"],
                "directory"
            );
        }
    }
    drop(f.clean);
}
