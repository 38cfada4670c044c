//! Synthetic volume data and small helpers shared by the benches.
//!
//! Both `core.rs` (end-to-end tool comparison) and `chunksize.rs` (chunker
//! parameter sweep) must look at *the same* database-like bytes, otherwise the
//! chunk size chosen by the sweep would be tuned to data the end-to-end bench
//! never sees. Everything here is deterministic: same seed, same bytes.

pub mod anchors;
pub mod db;
pub mod media;

use anyhow::{Context, Result, ensure};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Bytes in a mebibyte, for human-readable sizes in tables.
pub const MIB: f64 = 1024.0 * 1024.0;

/// Read by volguard nowhere: keeps a host config out of the measurement.
pub const NO_CONFIG: &str = "/nonexistent-volguard.toml";
/// The password of every restic repository the benches make.
pub const RESTIC_PASSWORD: &str = "volguard-bench";

/// `volguard --config NO_CONFIG --repo REPO --key-file KEY`; append the subcommand.
#[allow(dead_code)] // not every bench runs the volguard binary
pub fn volguard_cmd(bin: &Path, repo: impl AsRef<OsStr>, key: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(NO_CONFIG)
        .arg("--repo")
        .arg(repo)
        .arg("--key-file")
        .arg(key);
    cmd
}

/// Writes a new volguard key file as the contract asks: 64 random hex characters, mode 0600.
#[allow(dead_code)] // not every bench runs the volguard binary
pub fn write_key_file(path: &Path) -> Result<()> {
    use rand::RngCore as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(hex::encode(key).as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// `restic --repo REPO --cache-dir CACHE` with the benches' password; append the subcommand.
#[allow(dead_code)] // not every bench runs restic
pub fn restic_cmd(bin: &Path, repo: impl AsRef<OsStr>, cache: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("RESTIC_PASSWORD", RESTIC_PASSWORD)
        .arg("--repo")
        .arg(repo)
        .arg("--cache-dir")
        .arg(cache);
    cmd
}

/// Runs a setup command, its output appended to `log`, failing on a non-zero exit.
#[allow(dead_code)] // not every bench has untimed setup commands
pub fn quiet(cmd: &mut Command, log: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    ensure!(
        status.success(),
        "{:?} failed ({status}); see {}",
        cmd.get_program(),
        log.display()
    );
    Ok(())
}

/// The cargo target directory this bench binary was built into.
///
/// Bench binaries live in `<target>/release/deps/`, so walking up from our
/// own executable finds the right directory whether it came from
/// `CARGO_TARGET_DIR`, `--target-dir` or the default `./target`.
pub fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .with_context(|| format!("{} is not inside <target>/<profile>/deps", exe.display()))
}

/// This checkout's release build of volguard, (re)built now so that a bench never measures a
/// stale binary. `bench` names the bench in the progress line.
#[allow(dead_code)] // not every bench runs the volguard binary
pub fn build_volguard(bench: &str) -> Result<PathBuf> {
    let target = target_dir()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("[{bench}] building volguard (cargo build --release --bin volguard)");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--bin", "volguard", "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("running cargo build")?;
    ensure!(
        status.success(),
        "cargo build --release --bin volguard failed ({status})"
    );
    let bin = target.join("release").join("volguard");
    ensure!(
        bin.is_file(),
        "built volguard not found at {}",
        bin.display()
    );
    Ok(bin)
}
