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

/// What a source delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A whole document (a file source).
    Document(Vec<u8>),
    /// A changes answer of the controller's feed (`model::doc::ReservationChanges` or
    /// `HostChanges`): a snapshot, or the changes since the one before.
    Changes {
        /// The answer as it came.
        bytes: Vec<u8>,
        /// Read back from `state_dir` at start (already persisted).
        replayed: bool,
    },
}

/// Where an agent's document comes from, as the agent uses it: poll for the next delivery,
/// persist what it accepted.
pub enum DocumentSource {
    /// A local file.
    File(FileWatch),
    /// The controller's change feed, followed by a background task.
    Feed(FeedSource),
}

/// Which feed an agent follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedScope {
    /// A VR: a pod's reservations.
    Pod(String),
    /// A guard: a host's ports and the groups they reference.
    Host(String),
}

impl FeedScope {
    /// The changes path on the controller.
    fn path(&self) -> String {
        match self {
            FeedScope::Pod(pod) => format!("/v1/pods/{pod}/reservations/changes"),
            FeedScope::Host(host) => format!("/v1/hosts/{host}/changes"),
        }
    }

    fn describe(&self) -> String {
        match self {
            FeedScope::Pod(pod) => format!("pod {pod}"),
            FeedScope::Host(host) => format!("host {host}"),
        }
    }
}

/// The receiving end of a feed, with the persisted copy (a snapshot and a journal of changes).
pub struct FeedSource {
    url: String,
    replay: std::collections::VecDeque<Vec<u8>>,
    updates: tokio::sync::mpsc::Receiver<Vec<u8>>,
    resync: std::sync::Arc<std::sync::atomic::AtomicBool>,
    journal: Journal,
    arrivals: std::sync::Arc<tokio::sync::Notify>,
}

/// The snapshot file of a feed follower in `state_dir`.
pub const FEED_SNAPSHOT: &str = "feed.json";
/// The journal of changes applied since the snapshot, one answer per line.
pub const FEED_JOURNAL: &str = "feed.log";
/// A journal this long is folded into a new snapshot.
const JOURNAL_MAX_ENTRIES: usize = 1000;

/// The parts of a changes answer the follower itself needs (the agent decodes the rest).
#[derive(Debug, Default, serde::Deserialize)]
struct CursorView {
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    host: Option<String>,
    cluster: String,
    revision: u64,
    snapshot: bool,
    #[serde(default)]
    reservations: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    removed: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    ports: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    removed_ports: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    groups: Vec<GroupView>,
    #[serde(default)]
    removed_groups: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct GroupView {
    name: String,
    revision: u64,
}

impl CursorView {
    fn changes_nothing(&self) -> bool {
        !self.snapshot
            && self.reservations.is_empty()
            && self.removed.is_empty()
            && self.ports.is_empty()
            && self.removed_ports.is_empty()
            && self.groups.is_empty()
            && self.removed_groups.is_empty()
    }

    fn scope_matches(&self, scope: &FeedScope) -> bool {
        match scope {
            FeedScope::Pod(pod) => self.pod.as_deref() == Some(pod.as_str()),
            FeedScope::Host(host) => self.host.as_deref() == Some(host.as_str()),
        }
    }
}

/// Where a follower is: the database, the revision and (for a host) each group's revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedCursor {
    cluster: Option<String>,
    revision: Option<u64>,
    groups: std::collections::BTreeMap<String, u64>,
}

impl FeedCursor {
    fn advance(&mut self, view: &CursorView) {
        self.cluster = Some(view.cluster.clone());
        self.revision = Some(view.revision);
        if view.snapshot {
            self.groups.clear();
        }
        for g in &view.groups {
            self.groups.insert(g.name.clone(), g.revision);
        }
        for g in &view.removed_groups {
            self.groups.remove(g);
        }
    }

    /// The query that asks for what came after this cursor.
    fn query(&self, wait: std::time::Duration) -> String {
        let mut q = format!("?wait={}", wait.as_secs());
        if let (Some(revision), Some(cluster)) = (self.revision, &self.cluster) {
            q.push_str(&format!("&after_revision={revision}&cluster={cluster}"));
            if !self.groups.is_empty() {
                let list: Vec<String> = self
                    .groups
                    .iter()
                    .map(|(g, r)| format!("{g}:{r}"))
                    .collect();
                q.push_str(&format!("&groups={}", list.join(",")));
            }
        }
        q
    }
}

/// The persisted copy of a feed: a snapshot answer, then the answers applied since, one a line.
struct Journal {
    snapshot: PathBuf,
    log: PathBuf,
    entries: usize,
}

impl Journal {
    fn new(state_dir: &Path) -> Self {
        Self {
            snapshot: state_dir.join(FEED_SNAPSHOT),
            log: state_dir.join(FEED_JOURNAL),
            entries: 0,
        }
    }

    /// The persisted answers, oldest first, and the cursor after them; nothing when the files
    /// are missing, broken or of another scope (logged). A torn last line ends the replay.
    fn load(&mut self, scope: &FeedScope) -> (Vec<Vec<u8>>, FeedCursor) {
        let mut cursor = FeedCursor::default();
        let Ok(first) = std::fs::read(&self.snapshot) else {
            return (Vec::new(), cursor);
        };
        let view = match serde_json::from_slice::<CursorView>(&first) {
            Ok(v) if v.snapshot && v.scope_matches(scope) => v,
            Ok(_) => {
                tracing::warn!(file = %self.snapshot.display(), scope = %scope.describe(), "the persisted feed is of another pod or host; starting from a snapshot of the controller");
                return (Vec::new(), cursor);
            }
            Err(err) => {
                tracing::warn!(file = %self.snapshot.display(), error = %err, "the persisted feed is unreadable; starting from a snapshot of the controller");
                return (Vec::new(), cursor);
            }
        };
        cursor.advance(&view);
        let mut out = vec![first];
        if let Ok(text) = std::fs::read(&self.log) {
            for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                match serde_json::from_slice::<CursorView>(line) {
                    Ok(v) if v.scope_matches(scope) => {
                        cursor.advance(&v);
                        out.push(line.to_vec());
                        self.entries += 1;
                    }
                    _ => break,
                }
            }
        }
        (out, cursor)
    }

    fn write_snapshot(&mut self, bytes: &[u8]) -> Result<(), String> {
        crate::vr::dhcp::state::write_atomically(&self.snapshot, bytes)
            .map_err(|e| e.to_string())?;
        std::fs::write(&self.log, b"").map_err(|e| format!("{}: {e}", self.log.display()))?;
        self.entries = 0;
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), String> {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let mut line = Vec::with_capacity(bytes.len() + 1);
        line.extend(bytes.iter().copied().filter(|b| *b != b'\n'));
        line.push(b'\n');
        file.write_all(&line)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        self.entries += 1;
        Ok(())
    }
}

impl DocumentSource {
    /// A file source.
    pub fn file(path: &Path) -> Self {
        DocumentSource::File(FileWatch::new(path))
    }

    /// Follow the controller at `base` (e.g. `http://[::1]:8640`) for `scope`, with the token
    /// in `token_file`, trusting the CA certificates in `ca_file` for https (else the public
    /// roots). Starts from the snapshot and journal persisted in `state_dir` when they are of
    /// this scope. Must be called inside a tokio runtime.
    pub fn feed(
        base: &str,
        scope: FeedScope,
        token_file: &Path,
        ca_file: Option<&Path>,
        state_dir: &Path,
    ) -> Result<Self, SourceError> {
        let token = std::fs::read_to_string(token_file).map_err(|source| SourceError::Read {
            path: token_file.to_path_buf(),
            source,
        })?;
        let mut journal = Journal::new(state_dir);
        let (replay, cursor) = journal.load(&scope);
        let (tx, updates) = tokio::sync::mpsc::channel(16);
        let client = crate::controller::client::Client::with_ca_file(
            base,
            &token,
            WATCH_WAIT + std::time::Duration::from_secs(15),
            ca_file,
        )
        .map_err(|e| SourceError::Tls(e.to_string()))?;
        let resync = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let url = format!("{}{}", base.trim_end_matches('/'), scope.path());
        let arrivals = std::sync::Arc::new(tokio::sync::Notify::new());
        tokio::spawn(follow_feed(
            client,
            scope,
            cursor,
            tx,
            resync.clone(),
            arrivals.clone(),
        ));
        Ok(DocumentSource::Feed(FeedSource {
            url,
            replay: replay.into(),
            updates,
            resync,
            journal,
            arrivals,
        }))
    }

    /// Notified whenever an answer of the controller arrives, so that the agent polls at once
    /// (a file source is polled on the agent's tick and is never notified).
    pub fn arrivals(&self) -> std::sync::Arc<tokio::sync::Notify> {
        match self {
            DocumentSource::File(_) => std::sync::Arc::new(tokio::sync::Notify::new()),
            DocumentSource::Feed(f) => f.arrivals.clone(),
        }
    }

    /// What to call this source in logs.
    pub fn describe(&self) -> String {
        match self {
            DocumentSource::File(w) => w.path().display().to_string(),
            DocumentSource::Feed(f) => f.url.clone(),
        }
    }

    /// The next delivery, if there is one (`force`: re-read a file even if unchanged). A feed
    /// first replays what it persisted, then delivers the controller's answers in order.
    pub fn poll(&mut self, force: bool) -> Result<Option<Delivery>, SourceError> {
        match self {
            DocumentSource::File(w) => Ok(w.poll(force)?.map(Delivery::Document)),
            DocumentSource::Feed(f) => {
                if let Some(bytes) = f.replay.pop_front() {
                    return Ok(Some(Delivery::Changes {
                        bytes,
                        replayed: true,
                    }));
                }
                Ok(f.updates.try_recv().ok().map(|bytes| Delivery::Changes {
                    bytes,
                    replayed: false,
                }))
            }
        }
    }

    /// Keep a delivery the agent applied, so a restart resumes from it: a snapshot replaces
    /// the persisted copy, changes are appended to the journal. A file is its own copy.
    pub fn persist(&mut self, delivery: &Delivery, snapshot: bool) {
        let (DocumentSource::Feed(f), Delivery::Changes { bytes, replayed }) = (self, delivery)
        else {
            return;
        };
        if *replayed {
            return;
        }
        let result = if snapshot {
            f.journal.write_snapshot(bytes)
        } else {
            f.journal.append(bytes)
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "could not persist the feed");
        }
    }

    /// Whether the journal is long enough that the agent should persist a snapshot of its state
    /// ([`DocumentSource::persist_snapshot`]).
    pub fn wants_snapshot(&self) -> bool {
        matches!(self, DocumentSource::Feed(f) if f.journal.entries >= JOURNAL_MAX_ENTRIES)
    }

    /// Replace the persisted copy by this snapshot of the agent's state.
    pub fn persist_snapshot(&mut self, bytes: &[u8]) {
        if let DocumentSource::Feed(f) = self
            && let Err(err) = f.journal.write_snapshot(bytes)
        {
            tracing::warn!(error = %err, "could not persist the feed snapshot");
        }
    }

    /// The agent could not use an answer (it has nothing to apply changes to, or they were
    /// invalid): ask the controller for a snapshot next.
    pub fn resync(&self) {
        if let DocumentSource::Feed(f) = self {
            f.resync.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// How long one watch request asks the controller to wait.
const WATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Long-poll the feed of `scope` forever, sending every answer that changes something to `tx`.
/// An outage is logged once, with backoff between attempts; the agent keeps serving meanwhile.
async fn follow_feed(
    client: crate::controller::client::Client,
    scope: FeedScope,
    mut cursor: FeedCursor,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    resync: std::sync::Arc<std::sync::atomic::AtomicBool>,
    arrivals: std::sync::Arc<tokio::sync::Notify>,
) {
    let path = scope.path();
    let mut backoff = std::time::Duration::from_millis(500);
    let mut failing = false;
    loop {
        if resync.swap(false, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(scope = %scope.describe(), "asking the controller for a snapshot");
            cursor = FeedCursor::default();
        }
        let request = format!("{path}{}", cursor.query(WATCH_WAIT));
        let c = client.clone();
        let result = tokio::task::spawn_blocking(move || c.get_bytes(&request)).await;
        let failure = match result {
            Ok(Ok(bytes)) => match serde_json::from_slice::<CursorView>(&bytes) {
                Ok(view) if view.scope_matches(&scope) => {
                    if failing {
                        tracing::info!(%path, "controller reachable again");
                        failing = false;
                    }
                    backoff = std::time::Duration::from_millis(500);
                    let news = !view.changes_nothing();
                    cursor.advance(&view);
                    if news {
                        if tx.send(bytes).await.is_err() {
                            return;
                        }
                        arrivals.notify_one();
                    }
                    continue;
                }
                Ok(_) => format!("the answer is not of {}", scope.describe()),
                Err(err) => format!("the answer is not a changes document: {err}"),
            },
            Ok(Err(err)) => match err.status() {
                Some(status) => format!("controller refused the watch ({status}): {err}"),
                None => format!("controller unreachable: {err}"),
            },
            Err(join) => format!("watch task failed: {join}"),
        };
        if !failing {
            tracing::warn!(%path, error = %failure, "keeping the last state");
            failing = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
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
