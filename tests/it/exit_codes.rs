//! The exit codes scripts decide on (docs/commands.md, "Exit codes"): 10 when there is no
//! repository, 12 for a wrong key or password (restic's numbers), and an S3 server's
//! refusal named as such, each from the real binary against a real repository.

use crate::common::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit 10 for a directory and for a bucket that hold no repository, and nothing is
/// created in either.
#[test]
fn no_repository_exits_10() {
    let repo = TestRepo::new();
    let target = repo.path().join("target");
    let target = target.to_str().unwrap();
    for args in [
        &["snapshots"][..],
        &["check"],
        &["restore", "v", "--target", target],
    ] {
        let out = repo.run(args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(10), "{args:?}: {err}");
        assert!(err.contains("no repository at"), "{args:?}: {err}");
    }
    assert!(!repo.repo.exists(), "a failed open created {:?}", repo.repo);

    let (repo, s3, bucket) = TestRepo::s3(S3Server::SeaweedFs, "empty");
    let out = repo.run(&["snapshots"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(10), "{err}");
    assert!(
        err.contains("no repository at") && err.contains(&bucket),
        "{err}"
    );
    assert!(
        s3.list_keys(&bucket).is_empty(),
        "{:?}",
        s3.list_keys(&bucket)
    );
    s3.remove_bucket(&bucket);
}

/// `volguard --config <missing> --repo <repo> ARGS` with only `env` added to a clean
/// environment: the key or password comes from `key` alone.
fn run_with_key(
    repo: &TestRepo,
    key: (&str, &std::path::Path),
    args: &[&str],
) -> std::process::Output {
    let mut c = std::process::Command::new(volguard_bin());
    for var in LEAKY_ENV {
        c.env_remove(var);
    }
    c.arg("--config")
        .arg(&repo.config)
        .arg("--repo")
        .arg(&repo.repo);
    match key {
        ("--key-file", file) => c.arg("--key-file").arg(file),
        (var, file) => c.env(var, file),
    };
    c.args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn secret_file(repo: &TestRepo, name: &str, content: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = repo.path().join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Exit 12 for a key file and for a password that open none of the repository's keys;
/// the right ones still open it afterwards.
#[test]
fn wrong_key_or_password_exits_12() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let other = secret_file(&repo, "other.key", &"0".repeat(64));
    let out = run_with_key(&repo, ("--key-file", &other), &["snapshots"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(12), "{err}");
    assert!(err.contains("wrong key or password"), "{err}");
    repo.run_ok(&["snapshots"]);

    let pw = TestRepo::new();
    let right = secret_file(&pw, "password", "correct horse");
    let wrong = secret_file(&pw, "wrong", "battery staple");
    let var = "VOLGUARD_PASSWORD_FILE";
    let out = run_with_key(&pw, (var, &right), &["init"]);
    assert!(out.status.success(), "init: {}", stderr_of(&out));
    let out = run_with_key(&pw, (var, &wrong), &["snapshots"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(12), "{err}");
    assert!(
        err.contains("wrong key or password") && err.contains("password"),
        "{err}"
    );
    let out = run_with_key(&pw, (var, &right), &["snapshots"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
}

/// A wrong secret key makes the server refuse the request's signature: one line that
/// names the refusal, the S3 error code and the endpoint, and says to check the
/// credentials; exit 1 (a refusal is not "no repository").
#[test]
fn s3_refusal_of_bad_credentials_is_named_as_such() {
    for server in [S3Server::SeaweedFs, S3Server::Garage] {
        let (mut repo, s3, bucket) = TestRepo::s3(server, "denied");
        repo.run_ok(&["init"]);
        repo.env.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
        repo.env
            .push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
        let out = repo.run(&["snapshots"]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{server:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{server:?}: {err}");
        assert!(
            err.contains("the server refused it: check that the S3 credentials"),
            "{server:?}: not named as a refusal: {err}"
        );
        assert!(
            [
                "AccessDenied",
                "SignatureDoesNotMatch",
                "InvalidAccessKeyId"
            ]
            .iter()
            .any(|c| err.contains(c)),
            "{server:?}: no S3 error code in {err}"
        );
        assert!(err.contains(s3.host_port()), "{server:?}: {err}");
        s3.remove_bucket(&bucket);
    }
}
