//! A bad config file stops every command before it does anything, with exit code 1 and
//! one line naming the file, the line, the key and the reason: the same refusal the agent
//! gives at start and on reload. Runs the real binary on real files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::common::volguard_bin;

/// Runs `volguard --config FILE snapshots` against a repository that does not exist:
/// only the config check can make it fail before the repository is even looked for.
fn run_with(config: &Path, repo: &Path) -> (Option<i32>, String) {
    let out = Command::new(volguard_bin())
        .arg("--config")
        .arg(config)
        .arg("--repo")
        .arg(repo)
        .arg("snapshots")
        .env_remove("VOLGUARD_PASSWORD")
        .env_remove("VOLGUARD_PASSWORD_FILE")
        .env_remove("VOLGUARD_KEY_FILE")
        .env_remove("VOLGUARD_REPO")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_files_are_refused_with_file_line_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("no-repo");
    let cfg = dir.path().join("config.toml");
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, "s\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = cfg.display();
    let cases: Vec<(String, String)> = vec![
        (
            "host = \"h\"\ndocker_rot = \"/var/lib/docker\"\n".into(),
            format!("config file {c}:2: docker_rot: unknown key; did you mean `docker_root`?"),
        ),
        (
            "[s3]\nregion = \"x\"\npart_size_mib = \"big\"\n".into(),
            format!("config file {c}:3: s3.part_size_mib: invalid type: string \"big\""),
        ),
        (
            "[s3]\nsse = \"AES256\"\npart_concurrency = 0\n".into(),
            format!("config file {c}:3: s3.part_concurrency: part_concurrency must be at least 1"),
        ),
        (
            format!(
                "[s3]\naccess_key_id = \"a\"\nsecret_access_key_file = \"{}\"\n",
                secret.display()
            ),
            format!(
                "config file {c}:3: s3.secret_access_key_file: {} is readable by group or others (mode 644)",
                secret.display()
            ),
        ),
        (
            "repository = \"/srv/backups\"\nhost = \"unterminated\n".into(),
            format!("config file {c}:2: host: "),
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(&cfg, &text).unwrap();
        let (code, stderr) = run_with(&cfg, &repo);
        assert_eq!(code, Some(1), "{text}\n{stderr}");
        assert!(
            stderr.starts_with(&format!("volguard: error: {expected}")),
            "config:\n{text}\nexpected: {expected}\ngot: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line, got: {stderr}");
    }

    // The fixed file gets past the config check: the missing repository is the error now.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&cfg, "host = \"h\"\n").unwrap();
    let (code, stderr) = run_with(&cfg, &repo);
    assert!(!stderr.contains(&format!("config file {c}")), "{stderr}");
    assert_eq!(code, Some(1), "{stderr}");
}
