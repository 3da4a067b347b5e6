//! The watch hub: one poller per controller reads the change feed and wakes only the watches
//! whose feed moved.
//!
//! Every waiting watch subscribes to the feeds it follows (a pod; a host and the groups its ports
//! reference) and waits on an in-memory channel per feed: it holds no database connection while
//! it waits. The poller reads the rows added to `feed_changes` since its last look with one query
//! per tick (every [`POLL_EVERY`], and at once when this controller wrote), whatever the number
//! of watches, and raises the revision of each feed it saw. Rows written by other controllers on
//! the same database are seen at the next tick.
//!
//! On MySQL and PostgreSQL an id is taken before its transaction commits, so a lower id can
//! become visible after a higher one. The poller remembers the ids it skipped over ("gaps") and
//! asks for them again for [`GAP_PATIENCE`]; a row that shows up later still wakes its
//! watchers. One that commits later than that only wakes them when the watch times out (its
//! answer is read from the database, so nothing is lost, only late).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::answers::Answers;
use super::store::{FeedKey, FeedRow, Store, StoreError};

/// How often the poller looks for changes made by other controllers.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// At least this long between two looks, so that a burst of local writes costs one query.
const MIN_GAP: Duration = Duration::from_millis(5);
/// How long a woken watch waits for more changes before it answers: a follower that asks again
/// at once would otherwise cost one answer (a read transaction and an HTTP exchange) per write
/// while writes come in a stream, and one per watcher.
pub const LINGER: Duration = Duration::from_millis(10);
/// How long a skipped id is asked for again.
const GAP_PATIENCE: Duration = Duration::from_secs(10);
/// At most this many skipped ids are remembered.
const MAX_GAPS: usize = 4096;
/// Rows read per query.
const BATCH: usize = 5000;
/// Feeds remembered without a subscriber before they are forgotten.
const MAX_IDLE_FEEDS: usize = 20_000;
/// How often the feed is compacted.
const COMPACT_EVERY: Duration = Duration::from_secs(10);

/// The feeds this controller's watches follow, and their revisions as far as it knows.
#[derive(Debug)]
pub struct Hub {
    feeds: Mutex<HashMap<FeedKey, watch::Sender<u64>>>,
    /// Woken by this controller's own writes: look now.
    poke: Notify,
    /// Watches waiting now.
    waiting: AtomicUsize,
    /// The most that may wait at once.
    max_watches: usize,
    /// Answers shared by the watchers of one key.
    pub answers: Answers,
}

/// A watch's place in the hub: counted while it lives.
#[derive(Debug)]
pub struct Ticket<'h> {
    hub: &'h Hub,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.hub.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// A hub that lets at most `max_watches` watches wait at once.
    pub fn new(max_watches: usize) -> Self {
        Self {
            feeds: Mutex::new(HashMap::new()),
            poke: Notify::new(),
            waiting: AtomicUsize::new(0),
            max_watches,
            answers: Answers::default(),
        }
    }

    fn feeds(&self) -> MutexGuard<'_, HashMap<FeedKey, watch::Sender<u64>>> {
        self.feeds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take a place for a watch; `None` when [`Hub::new`]'s cap is reached.
    pub fn admit(&self) -> Option<Ticket<'_>> {
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        if before >= self.max_watches {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Ticket { hub: self })
    }

    /// Watches waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Feeds the hub knows.
    pub fn feed_count(&self) -> usize {
        self.feeds().len()
    }

    /// This controller wrote: let the poller look now.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// A receiver for `key`'s revision, and whether the hub knew the feed (if not, the caller
    /// reads the revision from the database and reports it with [`Hub::observe`]).
    pub fn subscribe(&self, key: &FeedKey) -> (watch::Receiver<u64>, bool) {
        let mut feeds = self.feeds();
        match feeds.get(key) {
            Some(sender) => (sender.subscribe(), true),
            None => {
                let (sender, receiver) = watch::channel(0);
                feeds.insert(key.clone(), sender);
                (receiver, false)
            }
        }
    }

    /// `key` is at `revision` (or later): wake its watchers if that is news.
    pub fn observe(&self, key: &FeedKey, revision: u64) {
        if let Some(sender) = self.feeds().get(key) {
            sender.send_if_modified(|current| {
                if revision > *current {
                    *current = revision;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Forget feeds nobody waits on, once there are many.
    fn forget_idle(&self) {
        let mut feeds = self.feeds();
        if feeds.len() > MAX_IDLE_FEEDS {
            feeds.retain(|_, sender| sender.receiver_count() > 0);
        }
    }
}

/// Wait until any of `receivers` shows a revision above its `after`, or `deadline`. Returns at
/// once, `false`, when one already does; when woken by a change, lingers [`LINGER`] (at most
/// until `deadline`) so that the changes of a burst go out in one answer, and returns `true`
/// (also at the deadline): the watch waited for what the receivers show now.
pub async fn wait_for(
    receivers: &mut [(watch::Receiver<u64>, u64)],
    deadline: tokio::time::Instant,
) -> bool {
    let mut woken = false;
    loop {
        if receivers.iter().any(|(rx, after)| *rx.borrow() > *after) {
            if woken {
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + LINGER)).await;
            }
            return woken;
        }
        woken = true;
        if receivers.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return true;
        }
        let changed =
            futures::future::select_all(receivers.iter_mut().map(|(rx, _)| Box::pin(rx.changed())));
        tokio::select! {
            (result, _, _) = changed => {
                if result.is_err() {
                    // The hub forgot the feed (it cannot while we hold a receiver): wait out.
                    tokio::time::sleep_until(deadline).await;
                    return true;
                }
            }
            () = tokio::time::sleep_until(deadline) => return true,
        }
    }
}

/// What the poller has read: the highest id, and the ids below it not seen yet.
#[derive(Debug, Default)]
struct Cursor {
    last: i64,
    gaps: BTreeMap<i64, Instant>,
}

impl Cursor {
    /// Take in a batch of rows (by id); returns whether it was a full batch (read again now).
    fn take(&mut self, rows: &[FeedRow], now: Instant) {
        for row in rows {
            if row.id > self.last {
                let skipped = (row.id - self.last - 1).min(MAX_GAPS as i64);
                for gap in (row.id - skipped)..row.id {
                    self.gaps.insert(gap, now);
                }
                self.last = row.id;
            } else {
                self.gaps.remove(&row.id);
            }
        }
        self.gaps
            .retain(|_, seen| now.duration_since(*seen) < GAP_PATIENCE);
        while self.gaps.len() > MAX_GAPS {
            self.gaps.pop_first();
        }
    }

    fn gap_list(&self) -> Vec<i64> {
        self.gaps.keys().copied().collect()
    }
}

/// Run the poller for `hub` until the process ends; keeps the newest `history` feed rows.
pub async fn run_poller(store: Store, hub: Arc<Hub>, history: i64) {
    let mut cursor = Cursor::default();
    loop {
        match store.feed_head().await {
            Ok(head) => {
                cursor.last = head;
                break;
            }
            Err(err) => {
                tracing::warn!(error = %err, "watch poller: cannot read the feed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let mut compacted = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            () = hub.poke.notified() => {}
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
        tokio::time::sleep(MIN_GAP).await;
        loop {
            let rows = match store
                .feed_since(cursor.last, &cursor.gap_list(), BATCH)
                .await
            {
                Ok(rows) => {
                    if failing {
                        tracing::info!("watch poller: the feed is readable again");
                        failing = false;
                    }
                    rows
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "watch poller: cannot read the feed");
                        failing = true;
                    }
                    break;
                }
            };
            cursor.take(&rows, Instant::now());
            let mut newest: HashMap<&FeedKey, u64> = HashMap::new();
            for row in &rows {
                let revision = newest.entry(&row.key).or_default();
                *revision = (*revision).max(row.revision);
            }
            for (key, revision) in newest {
                hub.observe(key, revision);
            }
            if rows.len() < BATCH {
                break;
            }
        }
        hub.forget_idle();
        if compacted.elapsed() >= COMPACT_EVERY {
            compacted = Instant::now();
            match compact(&store, history).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "compacted the change feed"),
                Err(err) => tracing::warn!(error = %err, "could not compact the change feed"),
            }
        }
    }
}

async fn compact(store: &Store, history: i64) -> Result<u64, StoreError> {
    store.compact_feed(history).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::store::FeedKind;

    fn row(id: i64) -> FeedRow {
        FeedRow {
            id,
            key: FeedKey {
                kind: FeedKind::Pod,
                name: "p".into(),
            },
            revision: 1,
        }
    }

    #[test]
    fn the_cursor_remembers_skipped_ids_until_they_show_or_expire() {
        let now = Instant::now();
        let mut cursor = Cursor::default();
        cursor.take(&[row(1), row(2), row(5)], now);
        assert_eq!(cursor.last, 5);
        assert_eq!(cursor.gap_list(), vec![3, 4]);
        cursor.take(&[row(4)], now);
        assert_eq!(cursor.gap_list(), vec![3]);
        cursor.take(&[], now + GAP_PATIENCE);
        assert!(cursor.gap_list().is_empty());
    }

    #[tokio::test]
    async fn observe_wakes_only_the_feed_that_moved_and_the_cap_refuses() {
        let hub = Hub::new(1);
        let a = FeedKey::host("a");
        let b = FeedKey::host("b");
        let (rx_a, known) = hub.subscribe(&a);
        assert!(!known);
        let (rx_b, _) = hub.subscribe(&b);
        hub.observe(&a, 3);
        assert_eq!(*rx_a.borrow(), 3);
        assert_eq!(*rx_b.borrow(), 0);
        hub.observe(&a, 2);
        assert_eq!(*rx_a.borrow(), 3);
        let mut waiting = vec![(rx_a, 2), (rx_b, 0)];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        assert!(
            !wait_for(&mut waiting, deadline).await,
            "a feed already past its revision answers without waiting"
        );
        let ticket = hub.admit().expect("first");
        assert!(hub.admit().is_none());
        drop(ticket);
        assert!(hub.admit().is_some());
    }
}
