//! How agents get their document. For now: a local file, noticed when it changes.
//!
//! The file is polled (metadata only) rather than watched with inotify: a poll every 250 ms costs
//! nothing, works on every filesystem, and survives the file being replaced by rename — the way
//! every careful writer updates it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Errors reading a document source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// A file whose content is re-read whenever its metadata changes.
#[derive(Debug)]
pub struct FileWatch {
    path: PathBuf,
    seen: Option<Stamp>,
}

impl FileWatch {
    /// Watch `path`; the first [`FileWatch::poll`] returns its content.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            seen: None,
        }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's bytes if it changed since the last poll (or `force`), else `None`. A missing file
    /// is an error each time it is polled while it stays missing and was never seen, so callers
    /// can log it once.
    pub fn poll(&mut self, force: bool) -> Result<Option<Vec<u8>>, SourceError> {
        let read_err = |source| SourceError::Read {
            path: self.path.clone(),
            source,
        };
        let meta = std::fs::metadata(&self.path).map_err(read_err)?;
        let stamp = Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        };
        if !force && self.seen == Some(stamp) {
            return Ok(None);
        }
        let bytes = std::fs::read(&self.path).map_err(|source| SourceError::Read {
            path: self.path.clone(),
            source,
        })?;
        self.seen = Some(stamp);
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_changes_and_replacements() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("doc.json");
        std::fs::write(&path, b"one").expect("write");
        let mut watch = FileWatch::new(&path);
        assert_eq!(watch.poll(false).expect("poll"), Some(b"one".to_vec()));
        assert_eq!(watch.poll(false).expect("poll"), None);
        assert_eq!(watch.poll(true).expect("poll"), Some(b"one".to_vec()));
        // Replaced by rename, as careful writers do: a new inode.
        let tmp = dir.path().join("doc.tmp");
        std::fs::write(&tmp, b"two!").expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        assert_eq!(watch.poll(false).expect("poll"), Some(b"two!".to_vec()));
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let mut watch = FileWatch::new(Path::new("/nonexistent/flat6/doc.json"));
        let err = watch.poll(false).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/flat6/doc.json"),
            "{err}"
        );
    }
}
