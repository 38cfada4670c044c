//! The configuration file (`/etc/volguard/config.toml`) and how it combines with the command
//! line and environment into the settings a command runs with.

pub mod agent;
pub mod check;
pub mod schedule;

use crate::paths::state_dir;
use crate::secrets::read_secret_file;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::repo::format::crypto::Secret;

/// Where the embedded default repository and its key live. The environment overrides
/// exist for packaging and tests; operators use `--repo` / the config file instead.
pub fn default_repo() -> PathBuf {
    state_dir().join("repo")
}

pub fn default_key_file() -> PathBuf {
    std::env::var_os("VOLGUARD_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/volguard"))
        .join("repo.key")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Repository location (same forms as --repo).
    pub repository: Option<String>,
    /// Key file for the repository.
    pub key_file: Option<PathBuf>,
    /// File holding the repository password.
    pub password_file: Option<PathBuf>,
    /// Docker data root.
    pub docker_root: Option<PathBuf>,
    /// Host name recorded in snapshots (default: the machine's hostname).
    pub host: Option<String>,
    /// S3 endpoint, credentials and tuning (`[s3]` table); unset fields come from the
    /// standard AWS sources.
    #[serde(default)]
    pub s3: crate::backend::s3::S3Settings,
    /// The agent's schedule, consistency and maintenance (`[agent]` table).
    #[serde(default)]
    pub agent: crate::config::agent::AgentSettings,
    /// `volguard watch` settings (`[watch]` table): webhook, command hook, allow rules,
    /// rate limit, event log size.
    #[serde(default)]
    pub watch: crate::watch::alerts::WatchSettings,
}

impl FileConfig {
    /// Reads the config; a missing file means defaults, anything else wrong is an error
    /// naming the file, line and key.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
            Err(e) => return Err(Error::io("cannot read config file", path, e)),
        };
        crate::config::check::parse(&text, path)
    }
}

/// The secret that opens the repository, from (in order) --key-file, VOLGUARD_PASSWORD,
/// VOLGUARD_PASSWORD_FILE, the config file's key_file / password_file.
pub fn secret(cli_key_file: Option<&Path>, file: &FileConfig) -> Result<Option<Secret>> {
    let found = find_secret(cli_key_file, file)?;
    if found.is_some() {
        protect_process();
    }
    Ok(found)
}

/// Once a secret is in memory, the process is made non-dumpable: no core dump holds the
/// key, and /proc/PID/mem, environ and the like belong to root, so another process of the
/// same (unprivileged) user cannot read the key out of it or attach a debugger.
fn protect_process() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot mark the process non-dumpable (core dumps may hold the key): {e}");
    }
}

fn find_secret(cli_key_file: Option<&Path>, file: &FileConfig) -> Result<Option<Secret>> {
    if let Some(p) = cli_key_file {
        return Ok(Some(Secret::KeyFile(read_secret_file(p, "key file")?)));
    }
    if let Some(pw) = std::env::var_os("VOLGUARD_PASSWORD") {
        use std::os::unix::ffi::OsStrExt;
        return Ok(Some(Secret::Password(pw.as_bytes().to_vec())));
    }
    if let Some(p) = std::env::var_os("VOLGUARD_PASSWORD_FILE") {
        return Ok(Some(Secret::Password(read_secret_file(
            Path::new(&p),
            "password file",
        )?)));
    }
    if let Some(p) = &file.key_file {
        return Ok(Some(Secret::KeyFile(read_secret_file(p, "key file")?)));
    }
    if let Some(p) = &file.password_file {
        return Ok(Some(Secret::Password(read_secret_file(
            p,
            "password file",
        )?)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn unknown_key_is_reported_with_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "repository = \"/x\"\nrepositry = \"/y\"\n").unwrap();
        let e = FileConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains(":2: repositry: unknown key"), "{e}");
        assert!(FileConfig::load(&dir.path().join("missing")).is_ok());
    }

    #[test]
    fn group_readable_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            read_secret_file(&p, "key file")
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&p, "key file").unwrap(), b"secret");
    }
}
