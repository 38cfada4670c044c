//! The S3 backend's own features against the real SeaweedFS of tests/env/setup.sh:
//! multipart uploads with Content-MD5 on every part, credentials and tuning from the
//! `[s3]` table of the config file, storage class and SSE headers, a private CA bundle
//! behind a real TLS endpoint, and one clear line (exit 1, nothing written) for an
//! endpoint that is not S3 or not there at all.

use crate::common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// Writes a config file with `body` (TOML) into the repo's temp dir and points the
/// repository at it.
fn use_config(repo: &mut TestRepo, body: &str) {
    let path = repo.path().join("config.toml");
    std::fs::write(&path, body).unwrap();
    repo.config = path;
}

/// `curl -I` on one object: its response headers, lower-cased.
fn head_object(s3: &S3Env, bucket: &str, key: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "-I", "--max-time", "30", "--aws-sigv4"])
        .arg(format!("aws:amz:{}:s3", s3.region))
        .arg("--user")
        .arg(format!("{}:{}", s3.access_key, s3.secret_key))
        .arg(format!(
            "{}/{bucket}/{key}",
            s3.endpoint.trim_end_matches('/')
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "HEAD {key}: {out:?}");
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

/// ETags with their keys, from a raw ListObjectsV2 answer.
fn etags(s3: &S3Env, bucket: &str) -> Vec<(String, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "30", "--aws-sigv4"])
        .arg(format!("aws:amz:{}:s3", s3.region))
        .arg("--user")
        .arg(format!("{}:{}", s3.access_key, s3.secret_key))
        .arg(format!(
            "{}/{bucket}?list-type=2",
            s3.endpoint.trim_end_matches('/')
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "list {bucket}: {out:?}");
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    body.split("<Contents>")
        .skip(1)
        .filter_map(|c| {
            let key = c.split_once("<Key>")?.1.split_once("</Key>")?.0;
            let etag = c.split_once("<ETag>")?.1.split_once("</ETag>")?.0;
            Some((key.to_string(), etag.replace("&#34;", "").replace('"', "")))
        })
        .collect()
}

#[test]
fn large_packs_go_up_as_multipart_uploads_and_restore_byte_for_byte() {
    let (mut repo, s3, bucket) = TestRepo::s3(S3Server::SeaweedFs, "mp");
    // Every 16 MiB pack crosses a 1 MiB threshold and goes up in 5 MiB parts.
    use_config(
        &mut repo,
        "[s3]\nmultipart_threshold_mib = 1\npart_size_mib = 5\npart_concurrency = 3\n",
    );
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), pseudo_random(40 << 20, 7)).unwrap();
    std::fs::write(src.join("small.txt"), b"small").unwrap();
    let p = src.to_str().unwrap();
    repo.run_json(&["backup", "--path", p, "--name", "mp"]);

    let packs: Vec<_> = etags(&s3, &bucket)
        .into_iter()
        .filter(|(k, _)| k.starts_with("mp/packs/"))
        .collect();
    // An S3 multipart ETag is "<md5 of part md5s>-<part count>".
    let multipart = packs.iter().filter(|(_, e)| e.contains('-')).count();
    assert!(multipart >= 2, "no multipart packs: {packs:?}");
    assert!(
        packs
            .iter()
            .any(|(_, e)| e.ends_with("-4") || e.ends_with("-3")),
        "a 16 MiB pack should take 3-4 parts of 5 MiB: {packs:?}"
    );

    let dst = repo.path().join("dst");
    repo.run_ok(&[
        "restore",
        "mp",
        "--target",
        dst.to_str().unwrap(),
        "--verify",
    ]);
    assert_eq!(
        std::fs::read(dst.join("big.bin")).unwrap(),
        std::fs::read(src.join("big.bin")).unwrap()
    );
    repo.run_ok(&["check", "--read-data"]);
}

#[test]
fn credentials_storage_class_and_sse_come_from_the_config_file() {
    let (mut repo, s3, bucket) = TestRepo::s3(S3Server::SeaweedFs, "cfg");
    // No credentials in the environment: only the config file can supply them.
    repo.env
        .retain(|(k, _)| k != "AWS_ACCESS_KEY_ID" && k != "AWS_SECRET_ACCESS_KEY");
    repo.env
        .push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));
    let secret = repo.path().join("s3-secret");
    std::fs::write(&secret, format!("{}\n", s3.secret_key)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    use_config(
        &mut repo,
        &format!(
            "[s3]\naccess_key_id = \"{}\"\nsecret_access_key_file = \"{}\"\n\
             storage_class = \"STANDARD_IA\"\nsse = \"AES256\"\n",
            s3.access_key,
            secret.display()
        ),
    );
    // A secret others can read is refused before anything is sent.
    let out = repo.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(s3.list_keys(&bucket).is_empty());

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), pseudo_random(1 << 20, 3)).unwrap();
    repo.run_ok(&["backup", "--path", src.to_str().unwrap(), "--name", "cfg"]);

    let keys = s3.list_keys(&bucket);
    let pack = keys.iter().find(|k| k.starts_with("cfg/packs/")).unwrap();
    let snap = keys
        .iter()
        .find(|k| k.starts_with("cfg/snapshots/"))
        .unwrap();
    let pack_headers = head_object(&s3, &bucket, pack);
    assert!(
        pack_headers.contains("x-amz-storage-class: standard_ia"),
        "{pack_headers}"
    );
    assert!(
        pack_headers.contains("x-amz-server-side-encryption: aes256"),
        "{pack_headers}"
    );
    // Metadata is read on every run, so it stays in the default class.
    let snap_headers = head_object(&s3, &bucket, snap);
    assert!(
        !snap_headers.contains("x-amz-storage-class: standard_ia"),
        "{snap_headers}"
    );
    assert!(
        snap_headers.contains("x-amz-server-side-encryption: aes256"),
        "{snap_headers}"
    );
}

#[test]
fn unknown_sse_mode_in_config_is_a_clear_error() {
    let (mut repo, s3, bucket) = TestRepo::s3(S3Server::SeaweedFs, "badsse");
    use_config(&mut repo, "[s3]\nsse = \"aes\"\n");
    let out = repo.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // Refused when the config is read, naming file, line and key.
    assert!(
        err.contains("AES256") && err.contains("config.toml:2: s3.sse:"),
        "{err}"
    );
    assert!(s3.list_keys(&bucket).is_empty());
}

/// A web server on loopback that answers every request with an HTML page and records
/// the request lines it saw.
fn fake_web_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            log.lock().unwrap().push(first.trim().to_string());
            // Drain headers and any body so the client sees a clean answer.
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let page = "<html><body>Welcome to nginx!</body></html>";
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    (format!("http://{addr}"), seen)
}

#[test]
fn an_endpoint_that_is_not_s3_fails_with_one_line_and_writes_nothing() {
    let (endpoint, seen) = fake_web_server();
    let (mut repo, _s3, _bucket) = TestRepo::s3(S3Server::SeaweedFs, "web");
    for (k, v) in repo.env.iter_mut() {
        if k == "AWS_ENDPOINT_URL" {
            *v = endpoint.clone();
        }
    }
    for args in [&["init"][..], &["snapshots"][..]] {
        let out = repo.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("not an S3 response"), "{err}");
        assert!(err.contains(&endpoint), "{err}");
    }
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|r| r.starts_with("GET ") || r.starts_with("HEAD ")),
        "volguard sent a write to a server that is not S3: {seen:?}"
    );
}

#[test]
fn an_endpoint_nobody_listens_on_fails_with_one_line() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut repo, _s3, _bucket) = TestRepo::s3(S3Server::SeaweedFs, "down");
    for (k, v) in repo.env.iter_mut() {
        if k == "AWS_ENDPOINT_URL" {
            *v = format!("http://127.0.0.1:{port}");
        }
    }
    let out = repo.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach the server") && err.contains("Connection refused"),
        "{err}"
    );
}

/// A TLS endpoint (socat) in front of the test SeaweedFS, with a certificate signed by
/// a throwaway CA; returns the proxy and the CA's PEM file.
struct TlsProxy {
    child: Child,
    endpoint: String,
    ca: PathBuf,
}

impl TlsProxy {
    fn start(dir: &Path, s3: &S3Env) -> TlsProxy {
        let sh = |script: &str| {
            let out = Command::new("sh")
                .arg("-ec")
                .arg(script)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "{script}: {out:?}");
        };
        sh(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
              -subj '/CN=volguard test CA' 2>/dev/null
            openssl req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr \
              -subj '/CN=127.0.0.1' 2>/dev/null
            printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf
            openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
              -out leaf.pem -days 2 -extfile ext.cnf 2>/dev/null
            cat leaf.key leaf.pem > server.pem",
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let upstream = s3.endpoint.trim_start_matches("http://").to_string();
        let child = Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},verify=0",
                dir.join("server.pem").display()
            ))
            .arg(format!("TCP:{upstream}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (installed by tests/env/setup.sh)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        TlsProxy {
            child,
            endpoint: format!("https://127.0.0.1:{port}"),
            ca: dir.join("ca.pem"),
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_private_ca_bundle_makes_a_tls_endpoint_usable() {
    let (mut repo, s3, bucket) = TestRepo::s3(S3Server::SeaweedFs, "tls");
    let tls_dir = repo.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let proxy = TlsProxy::start(&tls_dir, &s3);
    for (k, v) in repo.env.iter_mut() {
        if k == "AWS_ENDPOINT_URL" {
            *v = proxy.endpoint.clone();
        }
    }
    // Without the CA the certificate is refused, and the message says what to do.
    let out = repo.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("certificate") && err.contains("ca_bundle"),
        "{err}"
    );
    assert!(s3.list_keys(&bucket).is_empty());

    use_config(
        &mut repo,
        &format!("[s3]\nca_bundle = \"{}\"\n", proxy.ca.display()),
    );
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), pseudo_random(300_000, 5)).unwrap();
    repo.run_ok(&["backup", "--path", src.to_str().unwrap(), "--name", "tls"]);
    let dst = repo.path().join("dst");
    repo.run_ok(&[
        "restore",
        "tls",
        "--target",
        dst.to_str().unwrap(),
        "--verify",
    ]);
    assert_eq!(
        std::fs::read(dst.join("f")).unwrap(),
        pseudo_random(300_000, 5)
    );
}
