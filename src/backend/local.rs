//! The local-directory backend: one file per object, written crash-safely
//! (temp file, fsync, rename, fsync of the directory).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendError, Kind, ObjectInfo};

/// Temp files live inside the repository so the final rename never crosses filesystems.
const TMP_DIR: &str = "tmp";
/// Bytes per read of a streamed range: large enough that the calls cost nothing next to
/// the copy, small enough to stay in cache until the consumer uses them.
const STREAM_PIECE_BYTES: u64 = 1024 * 1024;

/// Open pack files kept for ranged reads: a restore reads thousands of chunks from each
/// pack, and opening the file for every chunk costs more than reading the chunk.
const OPEN_FILES: usize = 64;

pub struct LocalBackend {
    root: PathBuf,
    open: Mutex<HashMap<PathBuf, Arc<File>>>,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend {
            root: root.into(),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Objects are immutable, so a cached handle always reads the right bytes; a deleted
    /// object is only forgotten here when `delete` goes through this backend.
    fn open_cached(&self, path: PathBuf) -> std::io::Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(&path) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(&path)?);
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        open.insert(path, f.clone());
        Ok(f)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, kind: Kind, name: &str) -> PathBuf {
        match kind {
            Kind::Config => self.root.join("config"),
            // Packs are fanned out by their first byte so no directory grows huge.
            Kind::Pack if name.len() >= 2 => self.root.join("packs").join(&name[..2]).join(name),
            _ => self.root.join(kind.dir()).join(name),
        }
    }

    fn io(&self, op: &'static str, kind: Kind, name: &str, source: std::io::Error) -> BackendError {
        if source.kind() == std::io::ErrorKind::NotFound && op != "write" {
            return BackendError::NotFound {
                kind,
                name: name.to_string(),
                location: self.location(),
            };
        }
        BackendError::Io {
            op,
            kind,
            name: name.to_string(),
            location: self.location(),
            source,
        }
    }

    fn put_sync(&self, kind: Kind, name: &str, data: &[u8]) -> std::io::Result<()> {
        let dest = self.path(kind, name);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)?;
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}-{}.tmp",
            name,
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &dest)?;
            File::open(&dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn list_sync(&self, kind: Kind) -> std::io::Result<Vec<ObjectInfo>> {
        let base = self.root.join(kind.dir());
        let mut out = Vec::new();
        let mut dirs = vec![base];
        while let Some(dir) = dirs.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for ent in rd {
                let ent = ent?;
                let ft = ent.file_type()?;
                if ft.is_dir() && kind == Kind::Pack {
                    dirs.push(ent.path());
                } else if ft.is_file() {
                    let name = ent.file_name().to_string_lossy().into_owned();
                    let meta = match ent.metadata() {
                        Ok(m) => m,
                        // Deleted (by prune, on another host) since the directory was read.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    out.push(ObjectInfo {
                        name,
                        size: meta.len(),
                        modified: meta.modified().ok(),
                    });
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn sub(&self, dir: &str) -> Option<Arc<dyn Backend>> {
        Some(Arc::new(LocalBackend::new(self.root.join(dir))))
    }

    async fn list_dirs(&self, dir: &str) -> Result<Vec<String>, BackendError> {
        let mut out = Vec::new();
        match fs::read_dir(self.root.join(dir)) {
            Ok(rd) => {
                for ent in rd.flatten() {
                    if ent.file_type().is_ok_and(|t| t.is_dir()) {
                        out.push(ent.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BackendError::Other(format!(
                    "cannot list {}: {e}",
                    self.root.join(dir).display()
                )));
            }
        }
        out.sort();
        Ok(out)
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn exists(&self, kind: Kind, name: &str) -> Result<bool, BackendError> {
        match fs::symlink_metadata(self.path(kind, name)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io("stat", kind, name, e)),
        }
    }

    async fn put(&self, kind: Kind, name: &str, data: Bytes) -> Result<(), BackendError> {
        self.put_sync(kind, name, &data)
            .map_err(|e| self.io("write", kind, name, e))
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, BackendError> {
        fs::read(self.path(kind, name)).map_err(|e| self.io("read", kind, name, e))
    }

    async fn get_range_into(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), BackendError> {
        let f = self
            .open_cached(self.path(kind, name))
            .map_err(|e| self.io("open", kind, name, e))?;
        buf.clear();
        buf.resize(len as usize, 0);
        f.read_exact_at(buf, offset).map_err(|e| {
            let e = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "it ends before byte {} (truncated?); `volguard check --read-data` \
                         names what is affected, `volguard repair` rebuilds the index",
                        offset + len
                    ),
                )
            } else {
                e
            };
            self.io("read", kind, name, e)
        })
    }

    /// In pieces of `STREAM_PIECE_BYTES`, so a reader of whole packs holds one piece.
    async fn get_range_streamed(
        &self,
        kind: Kind,
        name: &str,
        offset: u64,
        len: u64,
        sink: &mut (dyn for<'p> FnMut(&'p [u8]) + Send),
    ) -> Result<(), BackendError> {
        let mut piece = Vec::new();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(STREAM_PIECE_BYTES);
            self.get_range_into(kind, name, offset + done, n, &mut piece)
                .await?;
            sink(&piece);
            done += n;
        }
        Ok(())
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>, BackendError> {
        self.list_sync(kind)
            .map_err(|e| self.io("list", kind, "*", e))
    }

    async fn delete(&self, kind: Kind, name: &str) -> Result<(), BackendError> {
        let path = self.path(kind, name);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&path);
        fs::remove_file(path).map_err(|e| self.io("delete", kind, name, e))
    }

    async fn create(&self) -> Result<(), BackendError> {
        for d in ["keys", "packs", "index", "snapshots", TMP_DIR] {
            fs::create_dir_all(self.root.join(d))
                .map_err(|e| self.io("create", Kind::Config, d, e))?;
        }
        Ok(())
    }
}
