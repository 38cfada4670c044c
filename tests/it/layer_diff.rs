//! `volguard layer-diff` against `docker diff` on a real dockerd: a two-layer image (the
//! upper one deletes files of the lower one) and a container that adds, modifies, chmods,
//! chowns, deletes, replaces (opaque directory), renames and retypes entries; volguard's
//! lines must equal docker's, line for line, running and stopped.
//!
//! dockerd lists entries in Go map order, which changes from call to call; what is fixed is
//! the shape (a directory's line, then its entries each followed by their content, then
//! its deletions). The test checks that docker's output has that shape, puts it in the
//! shape's name order (tests/it/common/dockerdiff.rs), and compares it line for line with
//! volguard's.

use crate::common::dockerdiff::{assert_docker_shape, canonical, parse};
use crate::common::*;

/// Removes the test image when dropped (after the containers' cleanup ran).
struct ImageGuard(String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = docker_status(&["rmi", "-f", &self.0]);
    }
}

fn volguard_lines(repo: &TestRepo, args: &[&str]) -> Vec<String> {
    let root = docker_root();
    let mut all = vec!["--docker-root", root.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = repo.run_ok(&all);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn compare(repo: &TestRepo, ctr: &str) -> Vec<(char, String)> {
    let docker_out = docker(&["diff", ctr]);
    let theirs = parse(&docker_out);
    assert_docker_shape(&theirs);
    let mine = volguard_lines(repo, &["layer-diff", ctr]);
    let mine_parsed = parse(&mine.join("\n"));
    assert_docker_shape(&mine_parsed);
    assert_eq!(
        mine,
        canonical(theirs.clone()),
        "volguard layer-diff (left) differs from docker diff (right, put in name order); docker printed:\n{docker_out}"
    );
    theirs
}

#[test]
fn layer_diff_agrees_with_docker_diff() {
    require_docker();
    let repo = TestRepo::new();
    let mut clean = DockerCleanup::new();
    let base = clean.container(unique("vg-ld-base"));
    let image = ImageGuard(format!("{}:latest", unique("vg-ld-image")));
    // The image's second layer: content to change later, and deletions of its own
    // (whiteouts in a lower layer must hide the layer below it).
    docker(&[
        "run",
        "--network",
        "none",
        "--name",
        &base,
        IMAGE,
        "sh",
        "-c",
        "set -e; mkdir -p /srv/keep /srv/gone/sub /srv/repl/old /srv/ren/in /srv/tofile /etc;\
         echo k > /srv/keep/x; echo y > /srv/keep/y; echo g > /srv/gone/sub/f;\
         echo o > /srv/repl/old/f; echo o2 > /srv/repl/f2; echo r > /srv/ren/in/f;\
         echo t > /srv/tofile/f; echo d > /srv/todir; echo conf > /etc/conf;\
         echo same > /srv/touched; echo m > /srv/mode; echo o > /srv/owner;\
         echo c > /srv/cap; rm /bin/vi /bin/less; rm -r /tmp",
    ]);
    docker(&["commit", &base, &image.0]);
    let ctr = clean.container(unique("vg-ld-ctr"));
    docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &ctr,
        &image.0,
        "sleep",
        "600",
    ]);
    docker(&[
        "exec",
        &ctr,
        "sh",
        "-c",
        "set -e; echo new > /added; mkdir -p /newdir/deep/er; echo n > /newdir/deep/er/f;\
         echo more >> /etc/conf; touch -d '2001-02-03 04:05:06' /srv/touched;\
         chmod 600 /srv/mode; chown 123:456 /srv/owner; rm /srv/keep/y;\
         rm -rf /srv/gone; rm -rf /srv/repl; mkdir /srv/repl; echo n > /srv/repl/new;\
         mv /srv/ren /srv/ren2; mv /srv/keep/x /srv/keep/x2; rm -r /srv/tofile;\
         echo f > /srv/tofile; rm /srv/todir; mkdir /srv/todir; echo i > /srv/todir/in;\
         ln -s /etc/conf /srv/link; mkfifo /srv/fifo; echo back > /bin/vi; rm /bin/ls;\
         mkdir /tmp; ln /srv/cap /srv/hardlink",
    ]);
    let theirs = compare(&repo, &ctr);
    // The scenario really exercised what it is about (docker's own view).
    for want in [
        ('A', "/added"),
        ('C', "/etc/conf"),
        ('C', "/srv/touched"),
        ('C', "/srv/mode"),
        ('C', "/srv/owner"),
        ('D', "/srv/keep/y"),
        ('D', "/srv/gone"),
        ('C', "/srv/repl"),
        ('D', "/srv/repl/old"),
        ('A', "/srv/repl/new"),
        ('A', "/srv/ren2/in/f"),
        ('D', "/srv/ren"),
        ('C', "/srv/tofile"),
        ('A', "/bin/vi"),
        ('D', "/bin/ls"),
        ('A', "/tmp"),
    ] {
        assert!(
            theirs.iter().any(|(k, p)| *k == want.0 && p == want.1),
            "docker diff has no {want:?}: {theirs:?}"
        );
    }

    // By id prefix, as JSON: the same changes, with the opaque directory marked.
    let id = docker(&["inspect", "--format", "{{.Id}}", &ctr]);
    let root = docker_root();
    let v = repo.run_json(&[
        "--docker-root",
        root.to_str().unwrap(),
        "layer-diff",
        &id[..12],
    ]);
    assert_eq!(v["container"]["name"], ctr.as_str());
    assert_eq!(v["storage"], "overlay2");
    let text = volguard_lines(&repo, &["layer-diff", &ctr]);
    let from_json: Vec<String> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["kind"].as_str().unwrap(),
                c["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(from_json, text);
    let repl = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "/srv/repl")
        .unwrap();
    assert_eq!(repl["opaque"], true, "{repl}");
    assert_eq!(repl["type"], "dir");

    // Stopped: the upper directory is no longer mounted; the answer is the same.
    docker(&["stop", "-t", "1", &ctr]);
    compare(&repo, &ctr);
}

#[test]
fn layer_diff_names_an_unknown_container() {
    require_docker();
    let repo = TestRepo::new();
    let out = repo.run(&["layer-diff", "vg-no-such-container-anywhere"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vg-no-such-container-anywhere") && err.contains("inventory"),
        "{err}"
    );
}
