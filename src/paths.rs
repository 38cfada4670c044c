//! Where volguard keeps its own state on the host, so every layer that persists
//! something (the embedded repository, caches, logs, the agent's status) agrees on it.

use std::path::PathBuf;

/// volguard's own state: the embedded repository, the drill log.
pub fn state_dir() -> PathBuf {
    std::env::var_os("VOLGUARD_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/volguard"))
}
