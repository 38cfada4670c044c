//! The resolved settings a command runs with: the global flags combined once with the
//! configuration file, and the one way every command and the agent open the repository.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::Backend;
use crate::config::{self, FileConfig};
use crate::docker;
use crate::error::{Error, Result};
use crate::repo::format::crypto::Secret;
use crate::repo::{self, Location, Repository};

/// Everything a command needs besides its own arguments.
pub(crate) struct Ctx {
    pub(crate) json: bool,
    pub(crate) quiet: bool,
    pub(crate) file: FileConfig,
    pub(crate) location: Location,
    /// True when no repository was configured and the embedded default is in use.
    pub(crate) embedded: bool,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) docker_root: PathBuf,
    pub(crate) host: String,
}

/// The global flags, kept so the agent can build a new [`Ctx`] when its config is reloaded.
#[derive(Debug, Clone)]
pub(crate) struct Globals {
    pub(crate) config: PathBuf,
    pub(crate) repo: Option<String>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) docker_root: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

impl Globals {
    /// The global flags that make another volguard process use the same configuration,
    /// repository, key and Docker root (the watcher's forensic snapshots start one).
    pub(crate) fn child_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--config".into(), self.config.clone().into()];
        if let Some(r) = &self.repo {
            args.extend(["--repo".into(), r.into()]);
        }
        if let Some(k) = &self.key_file {
            args.extend(["--key-file".into(), k.clone().into()]);
        }
        if let Some(d) = &self.docker_root {
            args.extend(["--docker-root".into(), d.clone().into()]);
        }
        args
    }
}

impl Ctx {
    /// Reads the config file and combines it with the global flags (flags win).
    pub(crate) fn load(g: &Globals) -> Result<Ctx> {
        let file = FileConfig::load(&g.config)?;
        let (location, embedded) = match g.repo.as_deref().or(file.repository.as_deref()) {
            Some(r) => (Location::parse(r)?, false),
            None => (Location::Local(config::default_repo()), true),
        };
        let docker_root =
            docker::data_root(g.docker_root.as_deref().or(file.docker_root.as_deref()));
        let host = file.host.clone().unwrap_or_else(repo::hostname);
        Ok(Ctx {
            json: g.json,
            quiet: g.quiet,
            key_file: g.key_file.clone(),
            file,
            location,
            embedded,
            docker_root,
            host,
        })
    }
}

impl Ctx {
    pub(crate) fn secret(&self) -> Result<Option<Secret>> {
        config::secret(self.key_file.as_deref(), &self.file)
    }

    pub(crate) fn backend(&self) -> Result<Arc<dyn Backend>> {
        self.location.backend(&self.file.s3)
    }

    /// Opens the repository; the embedded default is created on first use.
    pub(crate) fn open(&self) -> Result<Repository> {
        self.open_with(|b| b)
    }

    /// `open` with the backend wrapped first (`mount` counts what it reads this way).
    pub(crate) fn open_with(
        &self,
        wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>,
    ) -> Result<Repository> {
        let backend = wrap(self.backend()?);
        if self.embedded && self.secret()?.is_none() {
            return self.open_embedded(backend);
        }
        let secret = self
            .secret()?
            .ok_or_else(|| no_secret(&backend.location()))?;
        Repository::open(backend, &secret)
    }

    fn open_embedded(&self, backend: Arc<dyn Backend>) -> Result<Repository> {
        let key_path = config::default_key_file();
        // The embedded repository is always a local directory.
        let repo_missing = !config::default_repo().join("config").exists();
        if !repo_missing {
            let secret = Secret::KeyFile(crate::secrets::read_secret_file(&key_path, "key file")?);
            return Repository::open(backend, &secret);
        }
        if !key_path.exists() {
            create_key_file(&key_path)?;
        }
        let secret = Secret::KeyFile(crate::secrets::read_secret_file(&key_path, "key file")?);
        let repo = Repository::init(backend, &secret, repo::DEFAULT_CHUNKER)?;
        // A warning, not a note: the user must act (copy the key) or lose every backup.
        tracing::warn!(
            "created the repository {} with its key in {}; keep a copy of that key somewhere \
             else: losing it loses every backup",
            repo.location(),
            key_path.display()
        );
        Ok(repo)
    }
}

pub(crate) fn no_secret(location: &str) -> Error {
    Error::Other(format!(
        "no key for repository {location}: pass --key-file FILE, or set VOLGUARD_PASSWORD_FILE (or key_file in the config file)"
    ))
}

pub(crate) fn create_key_file(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("cannot create key directory", dir, e))?;
    }
    let key = hex::encode(crate::repo::format::crypto::random_master());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("cannot create key file", path, e))?;
    f.write_all(key.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("cannot write key file", path, e))
}
