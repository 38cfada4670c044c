//! Storage fault campaign: backups and restores go through a fault-injecting HTTP proxy
//! of our own in front of the real SeaweedFS, which drops connections, stalls, answers
//! 500/503/SlowDown, cuts response bodies short and flips bytes in them. Every backup and
//! restore must either succeed or fail with one clear error line; after each, looking at
//! the repository directly: `check` passes, every snapshot a backup reported restores
//! byte for byte, and no restore through the proxy ever wrote a wrong byte and called it
//! success. Prints the campaign's table (the README carries it).
//! `VOLGUARD_FAULT_ITERATIONS=N` for a longer campaign.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the proxy may do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    DropConnection,
    Stall,
    Status500,
    Status503,
    SlowDown,
    TruncateBody,
    FlipByte,
}

const FAULTS: [Fault; 7] = [
    Fault::DropConnection,
    Fault::Stall,
    Fault::Status500,
    Fault::Status503,
    Fault::SlowDown,
    Fault::TruncateBody,
    Fault::FlipByte,
];

#[derive(Default)]
struct ProxyStats {
    requests: u64,
    faults: BTreeMap<Fault, u64>,
    /// Ranged GETs forwarded.
    ranged_gets: u64,
    /// Body bytes sent to the client in answer to ranged GETs.
    ranged_bytes: u64,
    /// Objects whose first ranged GET was cut in half (see `Proxy::cut_first_ranged_get`).
    cut: BTreeSet<String>,
}

struct Proxy {
    port: u16,
    stats: Arc<Mutex<ProxyStats>>,
    /// Chance of a fault per request, in per mille.
    per_mille: Arc<AtomicU64>,
    /// Whether the first ranged GET of each object has its body cut in half (a fault
    /// every reader meets exactly once per object).
    cut_first_ranged_get: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(Mutex::new(ProxyStats::default()));
        let per_mille = Arc::new(AtomicU64::new(0));
        let cut_first_ranged_get = Arc::new(AtomicBool::new(false));
        let (s, p, c) = (
            stats.clone(),
            per_mille.clone(),
            cut_first_ranged_get.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, p, c, up) = (s.clone(), p.clone(), c.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, &s, &p, &c);
                });
            }
        });
        Proxy {
            port,
            stats,
            per_mille,
            cut_first_ranged_get,
        }
    }

    /// The same repository as `direct` (same key, same bucket), reached through the proxy.
    fn repo_through(&self, direct: &TestRepo) -> TestRepo {
        let mut repo = TestRepo::new();
        repo.repo = direct.repo.clone();
        repo.key_file = direct.key_file.clone();
        repo.env = direct.env.clone();
        repo.env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
        repo.env.push((
            "AWS_ENDPOINT_URL".into(),
            format!("http://127.0.0.1:{}", self.port),
        ));
        repo
    }
}

/// One HTTP/1.1 message head: the start line and headers, as read.
struct Head {
    raw: Vec<u8>,
    first_line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        raw.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let first_line = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Some(Head {
        raw,
        first_line,
        headers,
    }))
}

/// Reads a message body framed by Content-Length or chunked encoding (returned raw, as it
/// travels, so it can be passed on unchanged).
fn read_body(r: &mut impl BufRead, head: &Head, no_body: bool) -> std::io::Result<Vec<u8>> {
    if no_body {
        return Ok(Vec::new());
    }
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut raw = Vec::new();
        loop {
            let mut size_line = Vec::new();
            r.read_until(b'\n', &mut size_line)?;
            raw.extend_from_slice(&size_line);
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&size_line)
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or("0"),
                16,
            )
            .unwrap_or(0);
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk)?;
            raw.extend_from_slice(&chunk);
            if size == 0 {
                return Ok(raw);
            }
        }
    }
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

fn error_response(status: &str, code: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected \
         by the test proxy</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves one client connection, request by request, over one upstream connection.
fn serve(
    client: TcpStream,
    upstream: &str,
    stats: &Mutex<ProxyStats>,
    per_mille: &AtomicU64,
    cut_first_ranged_get: &AtomicBool,
) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let up = TcpStream::connect(upstream)?;
    let mut from_up = BufReader::new(up.try_clone()?);
    let mut to_up = up;
    loop {
        let Some(req) = read_head(&mut from_client)? else {
            return Ok(());
        };
        if req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            to_client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = read_body(&mut from_client, &req, false)?;
        let ranged = req.first_line.starts_with("GET ") && req.header("range").is_some();
        let fault = {
            let mut s = stats.lock().unwrap();
            s.requests += 1;
            s.ranged_gets += ranged as u64;
            let object = req.first_line.split_whitespace().nth(1).unwrap_or("");
            let object = object.split('?').next().unwrap_or("").to_string();
            let roll = rand::random::<u64>() % 1000;
            let f =
                if ranged && cut_first_ranged_get.load(Ordering::Relaxed) && s.cut.insert(object) {
                    Some(Fault::TruncateBody)
                } else {
                    (roll < per_mille.load(Ordering::Relaxed))
                        .then(|| FAULTS[rand::random::<usize>() % FAULTS.len()])
                };
            if let Some(f) = f {
                *s.faults.entry(f).or_default() += 1;
            }
            f
        };
        match fault {
            Some(Fault::DropConnection) => {
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::Status500) => {
                to_client.write_all(&error_response(
                    "500 Internal Server Error",
                    "InternalError",
                ))?;
                return Ok(());
            }
            Some(Fault::Status503) => {
                to_client.write_all(&error_response(
                    "503 Service Unavailable",
                    "ServiceUnavailable",
                ))?;
                return Ok(());
            }
            Some(Fault::SlowDown) => {
                to_client.write_all(&error_response("503 Slow Down", "SlowDown"))?;
                return Ok(());
            }
            Some(Fault::Stall) => std::thread::sleep(Duration::from_secs(2)),
            _ => {}
        }
        // Forward the request as it came (the signature covers the Host header, which
        // names this proxy; the server checks it as received).
        let mut head = req.raw.clone();
        if req.header("expect").is_some() {
            let text = String::from_utf8_lossy(&head).into_owned();
            head = text
                .lines()
                .filter(|l| !l.to_ascii_lowercase().starts_with("expect:"))
                .map(|l| format!("{l}\r\n"))
                .collect::<String>()
                .into_bytes();
            head.extend_from_slice(b"\r\n");
        }
        to_up.write_all(&head)?;
        to_up.write_all(&body)?;
        let resp = read_head(&mut from_up)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
        let status: u16 = resp
            .first_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let no_body = req.first_line.starts_with("HEAD ") || status == 204 || status == 304;
        let mut rbody = read_body(&mut from_up, &resp, no_body)?;
        let count = |n: usize| {
            if ranged {
                stats.lock().unwrap().ranged_bytes += n as u64;
            }
        };
        match fault {
            Some(Fault::TruncateBody) if rbody.len() > 1 => {
                to_client.write_all(&resp.raw)?;
                to_client.write_all(&rbody[..rbody.len() / 2])?;
                count(rbody.len() / 2);
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::FlipByte) if !rbody.is_empty() => {
                let i = rand::random::<usize>() % rbody.len();
                rbody[i] ^= 1 << (rand::random::<u32>() % 8);
            }
            _ => {}
        }
        to_client.write_all(&resp.raw)?;
        to_client.write_all(&rbody)?;
        count(rbody.len());
    }
}

/// Relative path -> BLAKE3 of every regular file under `root`.
fn manifest(root: &Path) -> BTreeMap<String, [u8; 32]> {
    let mut m = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                dirs.push(e.path());
            } else if ft.is_file() {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                m.insert(
                    rel,
                    *blake3::hash(&std::fs::read(e.path()).unwrap()).as_bytes(),
                );
            }
        }
    }
    m
}

/// A failure must be clear: exit 1 and an error line on stderr naming what failed
/// (`volguard: error: ...`; a restore's `error: <file>: ...` per file it could not
/// restore; backup's logged `ERROR backup of <volume> failed: ...`).
fn clear_failure(out: &std::process::Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    out.status.code() == Some(1)
        && err.lines().any(|l| {
            l.starts_with("volguard: error:")
                || l.starts_with("error: ")
                || l.contains(" ERROR backup of ")
        })
}

#[test]
fn backups_and_restores_through_a_faulty_network_succeed_or_fail_cleanly_and_never_lie() {
    let iterations: u64 = std::env::var("VOLGUARD_FAULT_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let (direct, s3, bucket) = TestRepo::s3(S3Server::SeaweedFs, "faults");
    direct.run_ok(&["init"]);
    let proxy = Proxy::start(s3.host_port().to_string());
    let faulty = proxy.repo_through(&direct);

    let src = direct.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8u64 {
        std::fs::write(src.join(format!("f{i}")), pseudo_random(1 << 20, i)).unwrap();
    }
    let src_arg = src.to_str().unwrap().to_string();
    let mut snapshots: BTreeMap<String, BTreeMap<String, [u8; 32]>> = BTreeMap::new();
    let (mut backups_ok, mut backups_failed, mut restores_ok, mut restores_failed) = (0, 0, 0, 0);
    let (mut verified, mut data_lost, mut wrong_bytes) = (0u64, 0u64, 0u64);
    let mut unclear = Vec::new();
    proxy.per_mille.store(40, Ordering::Relaxed);
    let started = Instant::now();
    for step in 0..iterations {
        // Change two files, add one.
        for k in 0..2 {
            let f = src.join(format!("f{}", (step * 2 + k) % 8));
            let mut b = std::fs::read(&f).unwrap();
            let at = (step as usize * 7919 + k as usize * 104729) % (b.len() - 70_000);
            b[at..at + 65_536].copy_from_slice(&pseudo_random(65_536, 500 + step * 2 + k));
            std::fs::write(&f, b).unwrap();
        }
        std::fs::write(
            src.join(format!("new-{step}")),
            pseudo_random(300_000, 900 + step),
        )
        .unwrap();
        let now = manifest(&src);

        let out = faulty.run(&["--json", "backup", "--path", &src_arg, "--name", "data"]);
        if out.status.success() {
            backups_ok += 1;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let id = v["snapshots"][0]["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string();
            snapshots.insert(id, now);
        } else {
            backups_failed += 1;
            if !clear_failure(&out) {
                unclear.push(format!("backup step {step}: {out:?}"));
            }
        }
        // Looking directly: the repository is consistent and every reported snapshot
        // restores byte for byte.
        direct.run_ok(&["check"]);
        if let Some((id, want)) = snapshots.iter().next_back() {
            let dst = direct.restore_to_new_dir("data", id);
            verified += 1;
            if &manifest(&dst) != want {
                data_lost += 1;
            }
            std::fs::remove_dir_all(&dst).unwrap();
        }
        // A restore through the faults: success must mean the right bytes.
        if let Some((id, want)) = snapshots.iter().nth(step as usize % snapshots.len().max(1)) {
            let dst = direct.path().join(unique("fr"));
            let out = faulty.run(&[
                "restore",
                "data",
                "--snapshot",
                id,
                "--target",
                dst.to_str().unwrap(),
            ]);
            if out.status.success() {
                restores_ok += 1;
                if &manifest(&dst) != want {
                    wrong_bytes += 1;
                }
            } else {
                restores_failed += 1;
                if !clear_failure(&out) {
                    unclear.push(format!("restore step {step}: {out:?}"));
                }
            }
            let _ = std::fs::remove_dir_all(&dst);
        }
    }
    proxy.per_mille.store(0, Ordering::Relaxed);
    for (id, want) in &snapshots {
        let dst = direct.restore_to_new_dir("data", id);
        verified += 1;
        if &manifest(&dst) != want {
            data_lost += 1;
        }
        std::fs::remove_dir_all(&dst).unwrap();
    }
    direct.run_ok(&["check", "--read-data"]);
    let st = proxy.stats.lock().unwrap();
    let injected: u64 = st.faults.values().sum();
    let kinds: Vec<String> = st
        .faults
        .iter()
        .map(|(f, n)| format!("{f:?} {n}"))
        .collect();
    eprintln!(
        "\n| iterations | requests | faults injected | backups ok / failed | restores ok / failed | snapshots verified | data lost | wrong bytes restored | seconds |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | {iterations} | {} | {injected} | {backups_ok} / {backups_failed} | {restores_ok} / {restores_failed} | {verified} | {data_lost} | {wrong_bytes} | {:.0} |\n\
         faults by kind: {}\n",
        st.requests,
        started.elapsed().as_secs_f64(),
        kinds.join(", ")
    );
    assert!(
        unclear.is_empty(),
        "failures without one clear error line: {unclear:#?}"
    );
    assert_eq!((data_lost, wrong_bytes), (0, 0));
    assert!(backups_ok > 0 && restores_ok > 0, "nothing got through");
    assert!(
        injected >= iterations,
        "too few faults injected: {injected}"
    );
    drop(st);
    s3.remove_bucket(&bucket);
}

/// A ranged read cut off mid-body resumes after the bytes already handed on: a restore
/// through a proxy that cuts the first ranged GET of every pack in half succeeds byte for
/// byte with one more GET per cut and not one byte more from the server (reading the
/// range again from its start would fetch the half already received again; reading each
/// blob on its own, hundreds more GETs).
#[test]
fn a_cut_off_pack_read_resumes_where_it_stopped() {
    let (direct, s3, _bucket) = TestRepo::s3(S3Server::SeaweedFs, "resume");
    direct.run_ok(&["init"]);
    let proxy = Proxy::start(s3.host_port().to_string());
    let via_proxy = proxy.repo_through(&direct);
    let src = direct.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 40 MiB of incompressible data: three packs, each read whole.
    for i in 0..10u64 {
        std::fs::write(src.join(format!("f{i}")), pseudo_random(4 << 20, 70 + i)).unwrap();
    }
    direct.run_ok(&["backup", "--path", src.to_str().unwrap(), "--name", "r"]);
    let want = manifest(&src);
    let restore = |tag: &str| {
        let dst = direct.path().join(unique(tag));
        via_proxy.run_ok(&[
            "restore",
            "r",
            "--snapshot",
            "latest",
            "--target",
            dst.to_str().unwrap(),
        ]);
        assert!(manifest(&dst) == want, "{tag}: restored bytes differ");
        std::fs::remove_dir_all(&dst).unwrap();
        let st = proxy.stats.lock().unwrap();
        (st.ranged_gets, st.ranged_bytes)
    };
    let (clean, clean_bytes) = restore("clean");
    proxy.cut_first_ranged_get.store(true, Ordering::Relaxed);
    let (gets, bytes) = restore("cut");
    let (cut_run, cut_bytes) = (gets - clean, bytes - clean_bytes);
    let cut = proxy.stats.lock().unwrap().cut.len() as u64;
    assert!(cut >= 3, "only {cut} objects were cut");
    // Every read of a pack that was cut costs one more GET; re-reading its blobs one by
    // one would cost hundreds (4 MiB files are 128 blobs each).
    assert!(
        cut_run <= clean + cut,
        "{cut_run} ranged GETs with {cut} cut reads, {clean} without cuts"
    );
    assert!(
        cut_bytes <= clean_bytes,
        "{cut_bytes} body bytes with cuts, {clean_bytes} without"
    );
}
