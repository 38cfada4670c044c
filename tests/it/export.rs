//! `export` writes a tar stream that fills a volume through the documented recipe
//! (`volguard export VOL | docker run -i --rm -v NEW:/target busybox tar x -C /target`), and
//! with `--zstd` the same stream compressed.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::*;

/// Every entry of the volume at /d with type, mode, owner and size, each file's mtime and
/// MD5, as a container sees them. Directory and symlink mtimes are left out: busybox tar
/// sets a directory's before filling it and never sets a symlink's.
const LIST: &str = "cd /d && find . | sort | xargs stat -c '%n %F %a %u %g %s' && \
     find . -type f | sort | xargs stat -c '%n %Y' && find . -type f | sort | xargs -r md5sum";

fn listing(volume: &str) -> String {
    docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{volume}:/d"),
        IMAGE,
        "sh",
        "-c",
        LIST,
    ])
}

fn pipe_into_container(stream: &[u8], volume: &str) {
    let mut c = Command::new("docker")
        .args(["run", "-i", "--rm", "--network", "none", "-v"])
        .arg(format!("{volume}:/target"))
        .args([IMAGE, "tar", "x", "-C", "/target"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stream).unwrap();
    assert!(c.wait().unwrap().success(), "busybox tar x failed");
}

#[test]
fn exported_tar_fills_a_volume_through_busybox_tar() {
    require_docker();
    let mut clean = DockerCleanup::new();
    let src = clean.volume(unique("export-src"));
    let copy = clean.volume(unique("export-copy"));
    docker(&["volume", "create", &src]);
    sh_in_volume(
        &src,
        "cd /data; mkdir -p a/b; head -c 200000 /dev/urandom > a/b/data; echo small > a/s; \
         chmod 640 a/s; chown 12:34 a/s; ln -s a/s link; touch -d '2021-01-01 00:00:00' a/s",
    );
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let mut c = repo.cmd();
    c.arg("--docker-root")
        .arg(docker_root())
        .args(["backup", &src]);
    assert!(c.status().unwrap().success());

    let plain = repo.run_ok(&["export", &src]).stdout;
    docker(&["volume", "create", &copy]);
    pipe_into_container(&plain, &copy);
    assert_eq!(listing(&copy), listing(&src));

    // --zstd: the same tar, compressed.
    let compressed = repo.run_ok(&["export", &src, "--zstd"]).stdout;
    assert_eq!(&compressed[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    let unpacked = zstd::decode_all(&compressed[..]).unwrap();
    assert_eq!(unpacked, plain, "--zstd decompresses to the plain export");
}
