//! Bad situations get one clear message and lose nothing: wrong key, damaged pack, missing
//! repository, unreadable files.

use crate::common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn wrong_key_is_named_as_such_and_changes_nothing() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let other = repo.path().join("other.key");
    std::fs::write(&other, "0".repeat(64)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = std::fs::read_dir(&repo.repo).unwrap().count();
    let out = std::process::Command::new(volguard_bin())
        .arg("--config")
        .arg(&repo.config)
        .arg("--repo")
        .arg(&repo.repo)
        .arg("--key-file")
        .arg(&other)
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12));
    assert!(
        stderr(&out).contains("wrong key or password"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(&repo.repo).unwrap().count(), before);
}

#[test]
fn a_missing_repository_is_reported_with_what_to_do() {
    let repo = TestRepo::new();
    let out = repo.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(10));
    let e = stderr(&out);
    assert!(
        e.contains("no repository at") && e.contains("volguard init"),
        "{e}"
    );
    assert!(
        !repo.repo.exists(),
        "a failed open must not create anything"
    );
}

#[test]
fn a_corrupted_pack_is_traced_to_the_snapshots_and_files_it_breaks() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(src.join("big.bin"), &data).unwrap();
    std::fs::write(src.join("small.txt"), "hello").unwrap();
    let snap = repo.run_json(&["backup", "--path", src.to_str().unwrap(), "--name", "c"]);
    let sid = snap["snapshots"][0]["snapshot_id"].as_str().unwrap()[..8].to_string();
    // The largest pack holds the file data; flip one byte in its middle.
    let mut packs: Vec<_> = walk_files(&repo.repo.join("packs"));
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let target = packs.last().unwrap();
    let mut bytes = std::fs::read(target).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x01;
    std::fs::write(target, bytes).unwrap();

    let out = repo.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("snapshot {sid}")) && text.contains("/big.bin"),
        "{text}"
    );
    assert!(
        !text.contains("/small.txt"),
        "an intact file was reported: {text}"
    );

    // Restore names the broken file and still restores the intact one.
    let dst = repo.path().join("dst");
    let out = repo.run(&["restore", "c", "--target", dst.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("big.bin"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dst.join("small.txt")).unwrap(),
        "hello"
    );
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn unreadable_files_are_soft_errors_with_exit_code_3() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("ok.txt"), "fine").unwrap();
    std::fs::write(src.join("secret.txt"), "nope").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        src.join("secret.txt"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    // Root without capabilities obeys permission bits like any user.
    let mut c = std::process::Command::new("setpriv");
    c.args(["--bounding-set", "-all", "--inh-caps", "-all"]);
    let inner = repo.cmd();
    c.arg(inner.get_program());
    c.args(inner.get_args());
    c.args([
        "--json",
        "backup",
        "--path",
        src.to_str().unwrap(),
        "--name",
        "soft",
    ]);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = v["snapshots"][0]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v}");
    assert!(errors[0].as_str().unwrap().contains("secret.txt"), "{v}");
    // The rest is in the snapshot.
    let dst = repo.path().join("dst");
    repo.run_ok(&["restore", "soft", "--target", dst.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(dst.join("ok.txt")).unwrap(), "fine");
    assert!(!dst.join("secret.txt").exists());
}

#[test]
fn embedded_default_repository_is_created_on_first_use_with_a_private_key() {
    let state = tempfile::tempdir().unwrap();
    let src = state.path().join("docker/volumes/web/_data");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("index.html"), "<h1>hi</h1>").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(volguard_bin())
            .env("VOLGUARD_STATE_DIR", state.path().join("state"))
            .env("VOLGUARD_CONFIG_DIR", state.path().join("etc"))
            .env_remove("VOLGUARD_REPO")
            .env_remove("VOLGUARD_KEY_FILE")
            .env_remove("VOLGUARD_PASSWORD")
            .env_remove("VOLGUARD_PASSWORD_FILE")
            .arg("--config")
            .arg(state.path().join("none.toml"))
            .arg("--docker-root")
            .arg(state.path().join("docker"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["backup", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("losing it loses every backup"),
        "{}",
        stderr(&out)
    );
    let key = state.path().join("etc/repo.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Second run: no new repository, no message, an incremental snapshot.
    let out = run(&["backup", "--all"]);
    assert!(out.status.success());
    assert!(!stderr(&out).contains("created the repository"));
    let out = run(&["--json", "snapshots"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 2);
}
