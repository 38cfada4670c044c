//! The crate's error type and how errors map to process exit codes (docs/design.md, Conventions).

use std::path::PathBuf;

/// Exit codes promised by the CLI contract.
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const PARTIAL: i32 = 3;
    pub const INTERRUPTED: i32 = 130;
    /// Standard output was a pipe whose reader went away (128 + SIGPIPE, as a shell shows it).
    pub const BROKEN_PIPE: i32 = 141;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no repository at {location}: {hint}")]
    NoRepository { location: String, hint: String },
    #[error(
        "wrong key or password for repository {location}: none of its {keys} key(s) opens with the given {given}; pass the key file the repository was created with (--key-file, VOLGUARD_PASSWORD or VOLGUARD_PASSWORD_FILE)"
    )]
    WrongKey {
        location: String,
        keys: usize,
        given: &'static str,
    },
    #[error(
        "repository object {object} is damaged: {reason}; run `volguard check --read-data` to see what it affects"
    )]
    Corrupt { object: String, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
