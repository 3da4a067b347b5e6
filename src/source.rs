//! How agents get their document: a local file, noticed when it changes, or the controller's
//! long-poll watch, with the last valid document persisted for restarts.
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
    /// The CA file for an https:// controller could not be used.
    #[error("{0}")]
    Tls(String),
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

/// Where an agent's document comes from, as the agent uses it: poll for the next one, persist a
/// validated one.
pub enum DocumentSource {
    /// A local file.
    File(FileWatch),
    /// The controller's long-poll watch, run by a background task.
    Controller(ControllerSource),
}

/// The receiving end of a controller watch, with the locally persisted copy.
pub struct ControllerSource {
    url: String,
    cache: PathBuf,
    initial: Option<Vec<u8>>,
    updates: tokio::sync::mpsc::Receiver<Vec<u8>>,
}

/// File in `state_dir` holding the last valid document received from the controller.
pub const CONTROLLER_CACHE: &str = "document.json";

/// The `revision` of a JSON document, if it has one.
pub fn revision_of(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()?
        .get("revision")?
        .as_u64()
}

impl DocumentSource {
    /// A file source.
    pub fn file(path: &Path) -> Self {
        DocumentSource::File(FileWatch::new(path))
    }

    /// Follow the controller at `url` (the full watch URL without query, e.g.
    /// `http://[::1]:8640/v1/pods/pod1/reservations`) with the token in `token_file`, trusting the
    /// CA certificates in `ca_file` for https (else the public roots). Starts from the copy
    /// persisted in `state_dir` if there is one. Must be called inside a tokio runtime.
    pub fn controller(
        url: &str,
        token_file: &Path,
        ca_file: Option<&Path>,
        state_dir: &Path,
    ) -> Result<Self, SourceError> {
        let token = std::fs::read_to_string(token_file).map_err(|source| SourceError::Read {
            path: token_file.to_path_buf(),
            source,
        })?;
        let cache = state_dir.join(CONTROLLER_CACHE);
        let initial = std::fs::read(&cache).ok();
        let after = initial.as_deref().and_then(revision_of);
        let (tx, updates) = tokio::sync::mpsc::channel(4);
        let client = crate::controller::client::Client::with_ca_file(
            "",
            &token,
            WATCH_WAIT + std::time::Duration::from_secs(15),
            ca_file,
        )
        .map_err(|e| SourceError::Tls(e.to_string()))?;
        tokio::spawn(watch_controller(client, url.to_string(), after, tx));
        Ok(DocumentSource::Controller(ControllerSource {
            url: url.to_string(),
            cache,
            initial,
            updates,
        }))
    }

    /// What to call this source in logs.
    pub fn describe(&self) -> String {
        match self {
            DocumentSource::File(w) => w.path().display().to_string(),
            DocumentSource::Controller(c) => c.url.clone(),
        }
    }

    /// The next document, if there is a new one (`force`: re-read a file even if unchanged).
    pub fn poll(&mut self, force: bool) -> Result<Option<Vec<u8>>, SourceError> {
        match self {
            DocumentSource::File(w) => w.poll(force),
            DocumentSource::Controller(c) => {
                if let Some(first) = c.initial.take() {
                    return Ok(Some(first));
                }
                let mut latest = None;
                while let Ok(doc) = c.updates.try_recv() {
                    latest = Some(doc);
                }
                if latest.is_none() && force {
                    return Ok(std::fs::read(&c.cache).ok());
                }
                Ok(latest)
            }
        }
    }

    /// Keep a document that passed validation, so a restart starts from it (controller sources;
    /// a file source is its own copy).
    pub fn persist(&self, bytes: &[u8]) {
        if let DocumentSource::Controller(c) = self
            && let Err(err) = crate::vr::dhcp::state::write_atomically(&c.cache, bytes)
        {
            tracing::warn!(error = %err, "could not persist the document");
        }
    }
}

/// How long one watch request asks the controller to wait.
const WATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Long-poll `url` forever, sending each newer document to `tx`. An outage is logged once, with
/// backoff between attempts; the last document stays in force meanwhile.
async fn watch_controller(
    client: crate::controller::client::Client,
    url: String,
    mut after: Option<u64>,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    let mut backoff = std::time::Duration::from_millis(500);
    let mut failing = false;
    loop {
        let request_url = match after {
            Some(rev) => format!("{url}?after_revision={rev}&wait={}", WATCH_WAIT.as_secs()),
            None => url.clone(),
        };
        let c = client.clone();
        let result =
            tokio::task::spawn_blocking(move || c.request("GET", &request_url, None)).await;
        match result {
            Ok(Ok(doc)) => {
                if failing {
                    tracing::info!(%url, "controller reachable again");
                    failing = false;
                }
                backoff = std::time::Duration::from_millis(500);
                let revision = doc.get("revision").and_then(serde_json::Value::as_u64);
                if revision.is_some() && revision != after {
                    after = revision;
                    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
                    if tx.send(bytes).await.is_err() {
                        return;
                    }
                }
            }
            Ok(Err(err)) => {
                if !failing {
                    match err.status() {
                        Some(status) => {
                            tracing::warn!(%url, status, error = %err, "controller refused the watch; keeping the last document")
                        }
                        None => {
                            tracing::warn!(%url, error = %err, "controller unreachable; keeping the last document")
                        }
                    }
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
            }
            Err(join) => {
                tracing::warn!(error = %join, "watch task failed");
                tokio::time::sleep(backoff).await;
            }
        }
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
