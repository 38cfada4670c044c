//! Running an operator's hook command: argv without a shell, bounded in time, and never
//! with volguard's secrets in its environment. The agent's consistency hooks and the
//! watcher's command hook both run through here.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Environment variables never passed to hooks: the repository's secrets (also used by
/// the watch command hook, see `watch::alerts::run_command`).
pub const SECRET_ENV: &[&str] = &[
    "VOLGUARD_PASSWORD",
    "VOLGUARD_PASSWORD_FILE",
    "VOLGUARD_KEY_FILE",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
];

/// Runs a hook (argv, no shell) with the volume's name and data path in its environment
/// and without volguard's secrets; killed after `timeout`.
pub fn run_hook(
    argv: &[String],
    phase: &str,
    volume: &str,
    data: &Path,
    result: Option<&str>,
    timeout: Duration,
) -> Result<()> {
    let Some((prog, args)) = argv.split_first() else {
        return Ok(());
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::null())
        .env("VOLGUARD_PHASE", phase)
        .env("VOLGUARD_VOLUME", volume)
        .env("VOLGUARD_DATA", data);
    for k in SECRET_ENV {
        cmd.env_remove(k);
    }
    if let Some(r) = result {
        cmd.env("VOLGUARD_RESULT", r);
    }
    let what = format!("{phase} hook {prog:?} of volume {volume:?}");
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Other(format!("{what} cannot start: {e}")))?;
    let until = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(Error::Other(format!("{what} failed: {st}"))),
            Ok(None) if Instant::now() > until => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Other(format!(
                    "{what} did not finish within {timeout:?}; killed"
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(Error::Other(format!("{what}: {e}"))),
        }
    }
}
