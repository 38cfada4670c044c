//! The anchor tools the benches compare against, fetched and cached by the benches themselves.
//!
//! The anchor is restic 0.18 as Debian 13 ships it. This machine runs Debian 12, whose own
//! restic is 0.14, so the binary comes from Debian 13's package: its index names the current
//! build and its SHA-256, the .deb is fetched from the same mirror and checked against that
//! hash, and the static binary inside is unpacked under `~/.cache/volguard/anchors/`. Later
//! runs reuse the cached binary after checking its version.

use anyhow::{Context, Result, bail, ensure};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The mirror apt already uses on this machine (the one registry the network lets through).
const MIRROR: &str = "http://deb.debian.org/debian";
/// Debian 13's index of amd64 packages.
const INDEX: &str = "dists/trixie/main/binary-amd64/Packages.xz";
/// The restic release the benches are anchored to.
#[allow(dead_code)] // not every bench that includes common/ runs restic
pub const RESTIC_VERSION: &str = "0.18";

/// Where the anchors are cached: outside any clone, so a fresh checkout reuses them.
fn cache_dir() -> Result<PathBuf> {
    let home =
        std::env::var_os("HOME").context("HOME is not set; cannot place the anchor cache")?;
    Ok(Path::new(&home).join(".cache/volguard/anchors"))
}

/// Path to a restic 0.18 binary, fetching it from Debian 13's package on first use.
/// `VOLGUARD_BENCH_RESTIC` overrides it (for a restic built elsewhere); it must still be 0.18.
#[allow(dead_code)] // not every bench that includes common/ runs restic
pub fn restic() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VOLGUARD_BENCH_RESTIC") {
        let p = PathBuf::from(p);
        check_restic(&p)?;
        return Ok(p);
    }
    let dir = cache_dir()?.join(format!("restic-{RESTIC_VERSION}"));
    let bin = dir.join("restic");
    if bin.is_file() && check_restic(&bin).is_ok() {
        return Ok(bin);
    }
    eprintln!("[anchors] fetching restic {RESTIC_VERSION} from Debian 13 ({MIRROR})");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = tempfile::tempdir_in(&dir).context("creating a scratch directory for the .deb")?;
    let index = work.path().join("Packages.xz");
    curl(&format!("{MIRROR}/{INDEX}"), &index)?;
    let (filename, sha256) = restic_entry(&index)?;
    let deb = work.path().join("restic.deb");
    curl(&format!("{MIRROR}/{filename}"), &deb)?;
    let got = output(Command::new("sha256sum").arg(&deb))?;
    let got = got.split_whitespace().next().unwrap_or_default();
    ensure!(
        got == sha256,
        "{filename}: SHA-256 {got} does not match Debian 13's index ({sha256}); \
         the download is damaged or the mirror is inconsistent, try again"
    );
    let unpacked = work.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let fresh = dir.join("restic.new");
    std::fs::copy(unpacked.join("usr/bin/restic"), &fresh)
        .with_context(|| format!("{filename} holds no usr/bin/restic"))?;
    check_restic(&fresh)?;
    std::fs::rename(&fresh, &bin).with_context(|| format!("installing {}", bin.display()))?;
    Ok(bin)
}

/// The `Filename` and `SHA256` of the restic package in a Debian `Packages.xz` index.
fn restic_entry(index: &Path) -> Result<(String, String)> {
    let text = output(Command::new("xz").arg("-dc").arg(index))?;
    for stanza in text.split("\n\n") {
        if !stanza.lines().any(|l| l == "Package: restic") {
            continue;
        }
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let version = field("Version:").unwrap_or_default();
        ensure!(
            version.starts_with(&format!("{RESTIC_VERSION}.")),
            "Debian 13's restic is now {version}, not {RESTIC_VERSION}.x; update RESTIC_VERSION \
             in benches/common/anchors.rs and the tables that name it"
        );
        match (field("Filename:"), field("SHA256:")) {
            (Some(f), Some(s)) => return Ok((f, s)),
            _ => bail!("the restic entry in {INDEX} lacks Filename or SHA256"),
        }
    }
    bail!("{INDEX} lists no restic package")
}

/// Fails unless `bin` runs and reports restic 0.18.
fn check_restic(bin: &Path) -> Result<()> {
    let v = output(Command::new(bin).arg("version"))?;
    ensure!(
        v.starts_with(&format!("restic {RESTIC_VERSION}.")),
        "{} reports {:?}, not restic {RESTIC_VERSION}",
        bin.display(),
        v.trim()
    );
    Ok(())
}

fn curl(url: &str, to: &Path) -> Result<()> {
    run(Command::new("curl")
        .args(["-fsSL", "--retry", "3", "-o"])
        .arg(to)
        .arg(url))
    .with_context(|| format!("downloading {url}"))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    ensure!(
        status.success(),
        "{:?} failed ({status})",
        cmd.get_program()
    );
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    ensure!(
        out.status.success(),
        "{:?} failed ({}): {}",
        cmd.get_program(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
