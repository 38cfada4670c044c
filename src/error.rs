//! The crate's error type and how errors map to process exit codes (docs/design.md, Conventions).

use std::path::PathBuf;

/// Exit codes promised by the CLI contract (docs/commands.md, "Exit codes"). 10, 11 and 12
/// are restic's, so scripts written for it read volguard's the same way.
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const PARTIAL: i32 = 3;
    /// There is no repository at the given location (no config object).
    pub const NO_REPOSITORY: i32 = 10;
    /// Another operation holds, or keeps changing, what the command needs; nothing was
    /// changed and the same command can simply be run again later.
    pub const LOCKED: i32 = 11;
    /// None of the repository's keys opens with the given key file or password.
    pub const WRONG_KEY: i32 = 12;
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
    /// Another operation holds or keeps changing `what` (a concurrent prune replacing
    /// index files, say); running the command again once it is over can succeed.
    #[error("{what} is held by {by}; {hint}")]
    Locked {
        what: String,
        /// Who holds it, and how that showed.
        by: String,
        hint: String,
    },
    /// The S3 server refused a request: wrong credentials, a bad signature, or no
    /// permission for the operation.
    #[error(transparent)]
    S3Denied(#[from] S3Refusal),
    /// Something asked for does not exist: a snapshot, a Docker volume, a stored object.
    /// `what` says what is missing ("no snapshot of \"app\""), `location` where it was
    /// looked for.
    #[error("{what} in {location}; {hint}")]
    NotFound {
        what: String,
        location: String,
        hint: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Other(String),
}

/// An S3 server's refusal of one request (AccessDenied, InvalidAccessKeyId,
/// SignatureDoesNotMatch, HTTP 403), as the S3 backend words it.
#[derive(Debug, thiserror::Error)]
#[error(
    "S3 {op} of {object} at {endpoint} failed: {answer}; the server refused it: check that the \
     S3 credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, or access_key_id \
     and secret_access_key_file in the [s3] config table) are right and allowed to do this"
)]
pub struct S3Refusal {
    /// The S3 operation: "ListObjectsV2", "PutObject", ...
    pub op: String,
    /// `s3://bucket/key`.
    pub object: String,
    /// The endpoint the request went to.
    pub endpoint: String,
    /// The server's error code and message, and the HTTP status.
    pub answer: String,
}

impl Error {
    /// The process exit code this error ends a command with (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NoRepository { .. } => exit::NO_REPOSITORY,
            Error::Locked { .. } => exit::LOCKED,
            Error::WrongKey { .. } => exit::WRONG_KEY,
            Error::Usage(_) => exit::USAGE,
            Error::Io { .. }
            | Error::Corrupt { .. }
            | Error::S3Denied(_)
            | Error::NotFound { .. }
            | Error::Other(_) => exit::ERROR,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Scripts tell these apart by the exit code alone: each kind keeps its own.
    #[test]
    fn each_error_kind_ends_with_its_exit_code() {
        let s = String::new;
        let cases = [
            (
                Error::NoRepository {
                    location: s(),
                    hint: s(),
                },
                10,
            ),
            (
                Error::Locked {
                    what: s(),
                    by: s(),
                    hint: s(),
                },
                11,
            ),
            (
                Error::WrongKey {
                    location: s(),
                    keys: 1,
                    given: "key file",
                },
                12,
            ),
            (Error::Usage(s()), 2),
            (Error::corrupt("config", "bad"), 1),
            (
                Error::NotFound {
                    what: s(),
                    location: s(),
                    hint: s(),
                },
                1,
            ),
            (
                Error::S3Denied(S3Refusal {
                    op: s(),
                    object: s(),
                    endpoint: s(),
                    answer: s(),
                }),
                1,
            ),
            (Error::io("read", "/x", std::io::Error::other("e")), 1),
            (Error::Other(s()), 1),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e:?}");
        }
    }
}
