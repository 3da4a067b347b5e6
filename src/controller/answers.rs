//! Watch answers encoded once and shared by every watcher of the same key.
//!
//! When a feed moves, every watch that follows it wakes at once and would read and encode the
//! same changes. An answer is keyed by what determines it — the route, the feed's name, the
//! follower's cursor (`after_revision`, its cluster, its group revisions) and the revisions the
//! hub knows for the feeds involved — so a key never outlives the state it was built from: the
//! next change gives the next key. The first watcher of a key builds the answer; the others that
//! arrive while it builds wait for it and send the same bytes. A build that fails is not kept,
//! and the next watcher tries again. Only watches that waited for the revisions in their key go
//! through here (see `api::answer`): a follower that is behind reads the database as it is.
//!
//! Bounded by entries and bytes; the oldest answers go first.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use tokio::sync::OnceCell;

/// Answers kept at most.
pub const MAX_ANSWERS: usize = 4096;
/// Bytes of answers kept at most.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The shared answers of one controller.
#[derive(Debug)]
pub struct Answers {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each key's answer (being built, or built) and the bytes counted for it (0 until built).
    slots: HashMap<String, (Arc<OnceCell<Bytes>>, usize)>,
    /// The keys of `slots`, oldest first.
    order: VecDeque<String>,
    bytes: usize,
}

/// Whether an answer was built here or shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This watcher built it.
    Built,
    /// Another watcher of the same key did.
    Shared,
}

impl Default for Answers {
    fn default() -> Self {
        Self::new(MAX_ANSWERS, MAX_ANSWER_BYTES)
    }
}

impl Answers {
    /// Keep at most `max_entries` answers and `max_bytes` of them.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.inner().slots.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answer for `key`: built by `build` if no other watcher has built it or is building
    /// it, else theirs. An error of `build` is returned and nothing is kept.
    pub async fn get_or_build<E, F, Fut>(&self, key: String, build: F) -> Result<(Bytes, Source), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let slot = {
            let mut inner = self.inner();
            match inner.slots.get(&key) {
                Some((slot, _)) => slot.clone(),
                None => {
                    let slot = Arc::new(OnceCell::new());
                    inner.slots.insert(key.clone(), (slot.clone(), 0));
                    inner.order.push_back(key.clone());
                    self.evict(&mut inner);
                    slot
                }
            }
        };
        let mut built = false;
        let bytes = slot
            .get_or_try_init(|| {
                built = true;
                build()
            })
            .await?
            .clone();
        if built {
            let mut inner = self.inner();
            // Counted against the bound once it is known (the key may be gone already, or
            // taken by a newer slot that is not built yet).
            let counted = match inner.slots.get_mut(&key) {
                Some((kept, size)) if Arc::ptr_eq(kept, &slot) => {
                    *size = bytes.len();
                    true
                }
                _ => false,
            };
            if counted {
                inner.bytes += bytes.len();
            }
            self.evict(&mut inner);
        }
        Ok((bytes, if built { Source::Built } else { Source::Shared }))
    }

    fn evict(&self, inner: &mut Inner) {
        while inner.order.len() > self.max_entries
            || (inner.bytes > self.max_bytes && inner.order.len() > 1)
        {
            let Some(key) = inner.order.pop_front() else {
                break;
            };
            if let Some((_, size)) = inner.slots.remove(&key) {
                inner.bytes -= size;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn watchers_of_one_key_share_one_build_and_a_new_key_builds_again() {
        let answers = Answers::default();
        let builds = AtomicUsize::new(0);
        let build = |text: &'static str| {
            let builds = &builds;
            move || async move {
                builds.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                Ok::<_, String>(Bytes::from_static(text.as_bytes()))
            }
        };
        let (a, b, c) = tokio::join!(
            answers.get_or_build("pod1|5|r7".into(), build("seven")),
            answers.get_or_build("pod1|5|r7".into(), build("other")),
            answers.get_or_build("pod1|5|r7".into(), build("other")),
        );
        let sources: Vec<Source> = [&a, &b, &c]
            .iter()
            .map(|r| r.as_ref().map(|(_, s)| *s).unwrap_or(Source::Built))
            .collect();
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert_eq!(sources.iter().filter(|s| **s == Source::Built).count(), 1);
        for r in [a, b, c] {
            assert_eq!(r.map(|(bytes, _)| bytes), Ok(Bytes::from_static(b"seven")));
        }
        let next = answers
            .get_or_build("pod1|5|r8".into(), build("eight"))
            .await;
        assert_eq!(next, Ok((Bytes::from_static(b"eight"), Source::Built)));
        assert_eq!(builds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_build_is_not_kept() {
        let answers = Answers::default();
        let failed: Result<(Bytes, Source), &str> = answers
            .get_or_build("k".into(), || async { Err("database down") })
            .await;
        assert_eq!(failed, Err("database down"));
        let again: Result<_, &str> = answers
            .get_or_build("k".into(), || async { Ok(Bytes::from_static(b"ok")) })
            .await;
        assert_eq!(again, Ok((Bytes::from_static(b"ok"), Source::Built)));
    }

    /// Five answers of `body` into bounds of `entries` and `bytes`.
    async fn five(entries: usize, bytes: usize, body: &'static [u8]) -> Answers {
        let answers = Answers::new(entries, bytes);
        for k in 0..5 {
            let _ = answers
                .get_or_build::<(), _, _>(format!("k{k}"), || async {
                    Ok(Bytes::from_static(body))
                })
                .await;
        }
        answers
    }

    #[tokio::test]
    async fn the_oldest_answers_go_first_beyond_the_bounds() {
        assert_eq!(five(3, 10, b"abc").await.len(), 3);
        // 4 bytes each: three are 12 > 10, so only two stay.
        let answers = five(10, 10, b"abcd").await;
        assert_eq!(answers.len(), 2);
        let (_, source) = answers
            .get_or_build::<(), _, _>("k4".into(), || async { Ok(Bytes::new()) })
            .await
            .unwrap_or((Bytes::new(), Source::Built));
        assert_eq!(source, Source::Shared, "the newest stays");
    }
}
