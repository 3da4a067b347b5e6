//! The change feed: what every write recorded (in its own transaction) and the answers built
//! from it.
//!
//! A write records one row per item it touched, under the revision its document has after the
//! write: `('p', pod, revision, MAC)`, `('h', host, revision, interface)`, `('g', group,
//! revision, member address key | '' for the rules)`. Only *which* item changed is stored; an
//! answer reads the touched items' current state in the same snapshot as the current revision,
//! so the changes since `N` applied to the document at `N` give the document at that revision
//! exactly (the property tests in `tests.rs` check it on every backend).
//!
//! History is bounded: [`Store::compact_feed`] deletes the oldest rows past a global count and
//! raises each affected feed's `floor` to the highest revision it deleted; a follower behind its
//! floor (or from another database, or ahead of it) gets a snapshot instead.
//!
//! The controller's poller reads new rows by id ([`Store::feed_since`]). On MySQL and PostgreSQL
//! ids are handed out before commit, so a row can become visible after a higher one: the poller
//! asks again for the gaps it saw, for a while (see `controller::watch`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use super::columns::{
    address_from_key, address_key, int, mac_from_text, opt_int, opt_text, placeholders,
    prefix_from_columns, revision, text,
};
use super::{Arg, Backend, Step, Store, StoreError, Tx};
use crate::model::doc::{
    GroupChange, HostChanges, PortEntry, Reservation, ReservationChanges, RuleEntry,
};

/// Which document a feed row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FeedKind {
    /// A pod's reservations.
    Pod,
    /// A host's ports.
    Host,
    /// A security group's rules and members.
    Group,
}

impl FeedKind {
    fn code(self) -> &'static str {
        match self {
            FeedKind::Pod => "p",
            FeedKind::Host => "h",
            FeedKind::Group => "g",
        }
    }

    fn from_code(code: &str) -> Option<FeedKind> {
        match code {
            "p" => Some(FeedKind::Pod),
            "h" => Some(FeedKind::Host),
            "g" => Some(FeedKind::Group),
            _ => None,
        }
    }
}

/// One feed: a kind and the pod, host or group name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedKey {
    /// Pod, host or group.
    pub kind: FeedKind,
    /// Its name.
    pub name: String,
}

impl FeedKey {
    /// A pod's feed.
    pub fn pod(name: &str) -> Self {
        Self {
            kind: FeedKind::Pod,
            name: name.to_string(),
        }
    }

    /// A host's feed.
    pub fn host(name: &str) -> Self {
        Self {
            kind: FeedKind::Host,
            name: name.to_string(),
        }
    }

    /// A group's feed.
    pub fn group(name: &str) -> Self {
        Self {
            kind: FeedKind::Group,
            name: name.to_string(),
        }
    }
}

/// A feed row as the poller reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRow {
    /// Its id (ascending in insertion, not necessarily in commit order).
    pub id: i64,
    /// Whose feed.
    pub key: FeedKey,
    /// The feed's revision after the write.
    pub revision: u64,
}

/// Changes past this many touched items are answered with a snapshot: cheaper to read and send.
const MAX_DELTA_ITEMS: usize = 20_000;
/// Values per `IN (…)` list.
const CHUNK: usize = 500;

/// What a write to one instance records besides the pod's item (see [`instance_feed_steps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Members {
    /// Group memberships did not change.
    Unchanged,
    /// This address joined or left the instance's groups.
    One(Ipv6Addr),
    /// Every address of the instance joined or left its groups.
    All,
}

/// Whether the instance is in groups, and whether their feeds are bumped here (a move bumps
/// the old and the new groups together first, see `Store::update_instance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Groups {
    /// The instance is in no group.
    None,
    /// Bump its groups' revisions, then record the member items.
    Bump,
    /// Only record the member items: the revisions were bumped already.
    Bumped,
}

impl Groups {
    /// `Bump` when the instance is in groups, else `None`.
    pub(super) fn bump_if(in_groups: bool) -> Self {
        if in_groups {
            Groups::Bump
        } else {
            Groups::None
        }
    }
}

const FEED_POD: &str = "INSERT INTO feed_changes (kind, name, revision, item) \
     SELECT 'p', p.name, p.revision, i.mac FROM pods p JOIN instances i ON i.pod = p.name \
     WHERE p.name = ? AND i.name = ?";
const FEED_HOST: &str = "INSERT INTO feed_changes (kind, name, revision, item) \
     SELECT 'h', h.name, h.revision, i.port FROM instances i JOIN hosts h ON h.name = i.host \
     WHERE i.pod = ? AND i.name = ? AND i.port IS NOT NULL";
const BUMP_GROUPS: &str = "UPDATE feed_keys SET revision = revision + 1 WHERE kind = 'g' \
     AND name IN (SELECT group_name FROM instance_groups WHERE pod = ? AND instance = ?)";
const FEED_GROUPS_ONE: &str = "INSERT INTO feed_changes (kind, name, revision, item) \
     SELECT 'g', k.name, k.revision, ? FROM feed_keys k \
     JOIN instance_groups g ON k.kind = 'g' AND k.name = g.group_name \
     WHERE g.pod = ? AND g.instance = ?";
const FEED_GROUPS_ALL: &str = "INSERT INTO feed_changes (kind, name, revision, item) \
     SELECT 'g', k.name, k.revision, a.address FROM feed_keys k \
     JOIN instance_groups g ON k.kind = 'g' AND k.name = g.group_name \
     JOIN addresses a ON a.pod = g.pod AND a.instance = g.instance \
     WHERE g.pod = ? AND g.instance = ?";
const FEED_GROUP_RULES: &str = "INSERT INTO feed_changes (kind, name, revision, item) \
     SELECT 'g', name, revision, '' FROM feed_keys WHERE kind = 'g' AND name = ?";

fn text_arg(value: &str) -> Arg {
    Arg::Text(Some(value.to_string()))
}

fn step(sql: &'static str, args: Vec<Arg>, what: &'static str) -> Step<'static> {
    Step {
        sql,
        args,
        fail: Box::new(move |e| StoreError::from_sqlx(e, what)),
    }
}

/// The feed rows of a write to instance `name` of `pod`: `before` runs ahead of the host bump
/// (the pod's item, the groups' bump and their member items), `after` behind it (the host's
/// item, which needs the host's new revision). Run them while the instance row (and, for
/// `Members::All`, its addresses and memberships) is still there. Locks are taken in the order
/// pod, groups (by name: one `UPDATE … IN`), host.
pub(super) fn instance_feed_steps(
    pod: &str,
    name: &str,
    pod_item: bool,
    members: Members,
    groups: Groups,
    on_host: bool,
) -> (Vec<Step<'static>>, Vec<Step<'static>>) {
    let mut before = Vec::new();
    let key = || vec![text_arg(pod), text_arg(name)];
    if pod_item {
        before.push(step(FEED_POD, key(), "record the pod change"));
    }
    if groups != Groups::None && members != Members::Unchanged {
        if groups == Groups::Bump {
            before.push(step(BUMP_GROUPS, key(), "bump group revisions"));
        }
        match members {
            Members::One(address) => before.push(step(
                FEED_GROUPS_ONE,
                vec![
                    Arg::Text(Some(address_key(address))),
                    text_arg(pod),
                    text_arg(name),
                ],
                "record the group change",
            )),
            _ => before.push(step(FEED_GROUPS_ALL, key(), "record the group change")),
        }
    }
    let mut after = Vec::new();
    if on_host {
        after.push(step(FEED_HOST, key(), "record the host change"));
    }
    (before, after)
}

/// Bump group `name`'s feed (creating it at revision 1) and record a change of its rules.
pub(super) fn group_rules_steps(backend: Backend, name: &str) -> Vec<Step<'static>> {
    let upsert = match backend {
        Backend::Mysql => {
            "INSERT INTO feed_keys (kind, name, revision, floor) VALUES ('g', ?, 1, 0) \
             ON DUPLICATE KEY UPDATE revision = revision + 1"
        }
        _ => {
            "INSERT INTO feed_keys (kind, name, revision, floor) VALUES ('g', ?, 1, 0) \
             ON CONFLICT (kind, name) DO UPDATE SET revision = feed_keys.revision + 1"
        }
    };
    vec![
        step(upsert, vec![text_arg(name)], "bump group revision"),
        step(
            FEED_GROUP_RULES,
            vec![text_arg(name)],
            "record the group change",
        ),
    ]
}

/// What a follower of a host has of each group: name → revision.
pub type GroupCursor = BTreeMap<String, u64>;

impl Store {
    /// The database's identity (see `model::doc::ClusterId`), read once and kept.
    pub async fn cluster_id(&self) -> Result<String, StoreError> {
        if let Some(id) = self.cluster.get() {
            return Ok(id.clone());
        }
        let row = sqlx::query("SELECT cluster_id FROM flat6_cluster WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read the cluster id"))?;
        let id = text(&row, 0)?;
        let _ = self.cluster.set(id.clone());
        Ok(id)
    }

    /// The highest feed row id (0 for none): where a new poller starts.
    pub async fn feed_head(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM feed_changes")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read the feed head"))?;
        int(&row, 0)
    }

    /// Feed rows with an id above `after` or among `gaps` (ids skipped earlier that may still
    /// commit), by id, at most `limit`.
    pub async fn feed_since(
        &self,
        after: i64,
        gaps: &[i64],
        limit: usize,
    ) -> Result<Vec<FeedRow>, StoreError> {
        let gap_list = if gaps.is_empty() {
            String::new()
        } else {
            format!(" OR id IN ({})", placeholders(gaps.len()))
        };
        let sql = self.sql_owned(format!(
            "SELECT id, kind, name, revision FROM feed_changes WHERE id > ?{gap_list} \
             ORDER BY id LIMIT {limit}"
        ));
        let mut query = sqlx::query(&sql).bind(after);
        for gap in gaps {
            query = query.bind(*gap);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read the feed"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let code = text(row, 1)?;
            let Some(kind) = FeedKind::from_code(&code) else {
                continue;
            };
            out.push(FeedRow {
                id: int(row, 0)?,
                key: FeedKey {
                    kind,
                    name: text(row, 2)?,
                },
                revision: revision(int(row, 3)?)?,
            });
        }
        Ok(out)
    }

    /// Keep the newest `keep` feed rows: delete the older ones and raise the floor of every
    /// feed they belonged to. Returns how many rows went.
    pub async fn compact_feed(&self, keep: i64) -> Result<u64, StoreError> {
        let head = self.feed_head().await?;
        let cutoff = head - keep;
        if cutoff <= 0 {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let result = async {
            let sql = self.sql(
                "SELECT kind, name, MAX(revision) FROM feed_changes WHERE id <= ? \
                 GROUP BY kind, name",
            );
            let rows = sqlx::query(&sql)
                .bind(cutoff)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "read the feed to compact"))?;
            for row in &rows {
                let (kind, name, floor) = (text(row, 0)?, text(row, 1)?, int(row, 2)?);
                let sql = self.sql(
                    "UPDATE feed_keys SET floor = ? WHERE kind = ? AND name = ? AND floor < ?",
                );
                let done = sqlx::query(&sql)
                    .bind(floor)
                    .bind(kind.as_str())
                    .bind(name.as_str())
                    .bind(floor)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| StoreError::from_sqlx(e, "raise the feed floor"))?;
                if done.rows_affected() == 0 {
                    let sql = match self.backend {
                        Backend::Mysql => {
                            "INSERT IGNORE INTO feed_keys (kind, name, revision, floor) \
                             VALUES (?, ?, 0, ?)"
                        }
                        _ => {
                            "INSERT INTO feed_keys (kind, name, revision, floor) \
                             VALUES (?, ?, 0, ?) ON CONFLICT (kind, name) DO NOTHING"
                        }
                    };
                    sqlx::query(&self.sql(sql))
                        .bind(kind.as_str())
                        .bind(name.as_str())
                        .bind(floor)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| StoreError::from_sqlx(e, "record the feed floor"))?;
                }
            }
            let sql = self.sql("DELETE FROM feed_changes WHERE id <= ?");
            let done = sqlx::query(&sql)
                .bind(cutoff)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "compact the feed"))?;
            Ok(done.rows_affected())
        }
        .await;
        super::finish(tx, result).await
    }

    /// The current revision of a feed (0 for a host or group never written; `NotFound` for an
    /// unknown pod).
    pub async fn feed_revision(&self, key: &FeedKey) -> Result<u64, StoreError> {
        match key.kind {
            FeedKind::Pod => self.pod_revision(&key.name).await,
            FeedKind::Host => self.host_revision(&key.name).await,
            FeedKind::Group => {
                let sql = self.sql("SELECT revision FROM feed_keys WHERE kind = 'g' AND name = ?");
                let row = sqlx::query(&sql)
                    .bind(key.name.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| StoreError::from_sqlx(e, "read group revision"))?;
                match row {
                    Some(row) => revision(int(&row, 0)?),
                    None => Ok(0),
                }
            }
        }
    }

    async fn floor(&self, tx: &mut Tx, key: &FeedKey) -> Result<u64, StoreError> {
        let sql = self.sql("SELECT floor FROM feed_keys WHERE kind = ? AND name = ?");
        let row = sqlx::query(&sql)
            .bind(key.kind.code())
            .bind(key.name.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read the feed floor"))?;
        match row {
            Some(row) => revision(int(&row, 0)?),
            None => Ok(0),
        }
    }

    /// The distinct items of `key` changed after revision `after`, sorted; `None` when there are
    /// more than [`MAX_DELTA_ITEMS`] (a snapshot is cheaper).
    async fn touched(
        &self,
        tx: &mut Tx,
        key: &FeedKey,
        after: u64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let sql = self.sql_owned(format!(
            "SELECT DISTINCT item FROM feed_changes WHERE kind = ? AND name = ? AND revision > ? \
             LIMIT {}",
            MAX_DELTA_ITEMS + 1
        ));
        let rows = sqlx::query(&sql)
            .bind(key.kind.code())
            .bind(key.name.as_str())
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read the changes"))?;
        if rows.len() > MAX_DELTA_ITEMS {
            return Ok(None);
        }
        let mut items = rows
            .iter()
            .map(|r| text(r, 0))
            .collect::<Result<Vec<_>, _>>()?;
        items.sort_unstable();
        Ok(Some(items))
    }

    /// The changes of `pod`'s reservations after revision `after` (a snapshot when `after` is
    /// `None`, behind the history, ahead of the pod, or `cluster` is not this database's).
    pub async fn reservation_changes(
        &self,
        pod: &str,
        after: Option<u64>,
        cluster: Option<&str>,
    ) -> Result<ReservationChanges, StoreError> {
        let cluster_id = self.cluster_id().await?;
        let after = after.filter(|_| cluster.is_none_or(|c| c == cluster_id));
        let mut tx = self.begin_read().await?;
        let result = async {
            let sql = self.sql("SELECT revision FROM pods WHERE name = ?");
            let row = sqlx::query(&sql)
                .bind(pod)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "read pod revision"))?
                .ok_or_else(|| StoreError::NotFound(format!("pod {pod}")))?;
            let current = revision(int(&row, 0)?)?;
            let key = FeedKey::pod(pod);
            let floor = self.floor(&mut tx, &key).await?;
            let mut change = ReservationChanges {
                pod: pod.to_string(),
                cluster: cluster_id.clone(),
                revision: current,
                snapshot: false,
                reservations: Vec::new(),
                removed: Vec::new(),
            };
            let touched = match after {
                Some(n) if n == current => return Ok(change),
                Some(n) if n >= floor && n < current => self.touched(&mut tx, &key, n).await?,
                _ => None,
            };
            let Some(macs) = touched else {
                change.snapshot = true;
                change.reservations = self.reservations_in(&mut tx, pod, None).await?;
                return Ok(change);
            };
            for chunk in macs.chunks(CHUNK) {
                let found = self.reservations_in(&mut tx, pod, Some(chunk)).await?;
                let present: BTreeSet<String> = found.iter().map(|r| r.mac.to_string()).collect();
                for mac in chunk.iter().filter(|m| !present.contains(*m)) {
                    change.removed.push(mac_from_text(mac)?);
                }
                change.reservations.extend(found);
            }
            Ok(change)
        }
        .await;
        super::finish(tx, result).await
    }

    /// The reservations of `pod` (only those with these MACs, when given), by MAC; an instance
    /// without addresses has none.
    async fn reservations_in(
        &self,
        tx: &mut Tx,
        pod: &str,
        macs: Option<&[String]>,
    ) -> Result<Vec<Reservation>, StoreError> {
        let filter = match macs {
            Some(list) => format!(" AND i.mac IN ({})", placeholders(list.len())),
            None => String::new(),
        };
        let sql = self.sql_owned(format!(
            "SELECT i.mac, a.address FROM instances i \
             {} addresses a ON a.pod = i.pod AND a.instance = i.name \
             WHERE i.pod = ?{filter} ORDER BY i.mac, a.address",
            self.ordered_join()
        ));
        let mut query = sqlx::query(&sql).bind(pod);
        for mac in macs.unwrap_or_default() {
            query = query.bind(mac.as_str());
        }
        let rows = query
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read reservations"))?;
        let mut out: Vec<Reservation> = Vec::new();
        let mut last: Option<String> = None;
        for row in &rows {
            let mac_text = text(row, 0)?;
            let address = address_from_key(&text(row, 1)?)?;
            match out.last_mut() {
                Some(r) if last.as_deref() == Some(mac_text.as_str()) => r.addresses.push(address),
                _ => {
                    out.push(Reservation {
                        mac: mac_from_text(&mac_text)?,
                        addresses: vec![address],
                    });
                    last = Some(mac_text);
                }
            }
        }
        Ok(out)
    }

    /// The changes of `host`'s ports after revision `after`, and of the groups its ports
    /// reference after the revisions in `groups` (see [`HostChanges`]): a group the follower
    /// does not have, or has from behind the history, comes as a snapshot; a group it has that
    /// is no longer referenced is listed in `removed_groups`. A snapshot of the ports (no
    /// `after`, behind the history, ahead, or another cluster) comes with every group as a
    /// snapshot.
    pub async fn host_changes(
        &self,
        host: &str,
        after: Option<u64>,
        groups: &GroupCursor,
        cluster: Option<&str>,
    ) -> Result<HostChanges, StoreError> {
        let cluster_id = self.cluster_id().await?;
        let after = after.filter(|_| cluster.is_none_or(|c| c == cluster_id));
        let mut tx = self.begin_read().await?;
        let result = async {
            let sql = self.sql("SELECT revision FROM hosts WHERE name = ?");
            let current = match sqlx::query(&sql)
                .bind(host)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "read host revision"))?
            {
                Some(row) => revision(int(&row, 0)?)?,
                None => 0,
            };
            let key = FeedKey::host(host);
            let floor = self.floor(&mut tx, &key).await?;
            let mut change = HostChanges {
                host: host.to_string(),
                cluster: cluster_id.clone(),
                revision: current,
                snapshot: false,
                ports: Vec::new(),
                removed_ports: Vec::new(),
                groups: Vec::new(),
                removed_groups: Vec::new(),
            };
            let touched = match after {
                Some(n) if n == current => Some(Vec::new()),
                Some(n) if n >= floor && n < current => self.touched(&mut tx, &key, n).await?,
                _ => None,
            };
            match touched {
                None => {
                    change.snapshot = true;
                    change.ports = self.ports_in(&mut tx, host, None).await?;
                }
                Some(interfaces) => {
                    for chunk in interfaces.chunks(CHUNK) {
                        let found = self.ports_in(&mut tx, host, Some(chunk)).await?;
                        let present: BTreeSet<&str> =
                            found.iter().map(|p| p.interface.as_str()).collect();
                        change.removed_ports.extend(
                            chunk
                                .iter()
                                .filter(|i| !present.contains(i.as_str()))
                                .cloned(),
                        );
                        change.ports.extend(found);
                    }
                }
            }
            let referenced = self.referenced_groups(&mut tx, host).await?;
            for name in &referenced {
                let had = if change.snapshot {
                    None
                } else {
                    groups.get(name).copied()
                };
                if let Some(group) = self.group_change(&mut tx, name, had).await? {
                    change.groups.push(group);
                }
            }
            if !change.snapshot {
                change.removed_groups = groups
                    .keys()
                    .filter(|g| !referenced.contains(*g))
                    .cloned()
                    .collect();
            }
            Ok(change)
        }
        .await;
        super::finish(tx, result).await
    }

    /// The groups the ports of `host` are in, and those their rules name.
    pub(super) async fn referenced_groups(
        &self,
        tx: &mut Tx,
        host: &str,
    ) -> Result<BTreeSet<String>, StoreError> {
        let sql = self.sql_owned(format!(
            "SELECT DISTINCT g.group_name FROM instances i \
             {} instance_groups g ON g.pod = i.pod AND g.instance = i.name \
             WHERE i.host = ? AND i.port IS NOT NULL",
            self.ordered_join()
        ));
        let mut wanted = BTreeSet::new();
        for row in sqlx::query(&sql)
            .bind(host)
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read the host's groups"))?
        {
            wanted.insert(text(&row, 0)?);
        }
        let direct: Vec<String> = wanted.iter().cloned().collect();
        for chunk in direct.chunks(CHUNK) {
            let sql = self.sql_owned(format!(
                "SELECT ref_name FROM group_refs WHERE group_name IN ({})",
                placeholders(chunk.len())
            ));
            let mut query = sqlx::query(&sql);
            for group in chunk {
                query = query.bind(group.as_str());
            }
            for row in query
                .fetch_all(&mut **tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "read group references"))?
            {
                wanted.insert(text(&row, 0)?);
            }
        }
        Ok(wanted)
    }

    /// What changed in group `name` after revision `had` (everything, when `None` or behind
    /// the history); `None` when nothing did (or the group is gone).
    async fn group_change(
        &self,
        tx: &mut Tx,
        name: &str,
        had: Option<u64>,
    ) -> Result<Option<GroupChange>, StoreError> {
        let sql = self.sql("SELECT revision, floor FROM feed_keys WHERE kind = 'g' AND name = ?");
        let (current, floor) = match sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read group revision"))?
        {
            Some(row) => (revision(int(&row, 0)?)?, revision(int(&row, 1)?)?),
            None => (0, 0),
        };
        let key = FeedKey::group(name);
        let touched = match had {
            Some(n) if n == current => return Ok(None),
            Some(n) if n >= floor && n < current => self.touched(tx, &key, n).await?,
            _ => None,
        };
        let rules_of = |rules_json: String| -> Result<Vec<RuleEntry>, StoreError> {
            serde_json::from_str(&rules_json).map_err(|e| {
                StoreError::Other(format!("stored rules of security group {name}: {e}"))
            })
        };
        let Some(items) = touched else {
            let sql = self.sql("SELECT rules FROM security_groups WHERE name = ?");
            let Some(row) = sqlx::query(&sql)
                .bind(name)
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "read security group"))?
            else {
                return Ok(None);
            };
            let rules = rules_of(text(&row, 0)?)?;
            let members = self.members_in(tx, name, None).await?;
            return Ok(Some(GroupChange {
                name: name.to_string(),
                revision: current,
                snapshot: true,
                rules: Some(rules),
                members: members.into_iter().collect(),
                removed_members: Vec::new(),
            }));
        };
        let mut change = GroupChange {
            name: name.to_string(),
            revision: current,
            snapshot: false,
            rules: None,
            members: Vec::new(),
            removed_members: Vec::new(),
        };
        let mut addresses = Vec::new();
        for item in items {
            if item.is_empty() {
                let sql = self.sql("SELECT rules FROM security_groups WHERE name = ?");
                if let Some(row) = sqlx::query(&sql)
                    .bind(name)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(|e| StoreError::from_sqlx(e, "read security group"))?
                {
                    change.rules = Some(rules_of(text(&row, 0)?)?);
                }
            } else {
                addresses.push(item);
            }
        }
        for chunk in addresses.chunks(CHUNK) {
            let present = self.members_in(tx, name, Some(chunk)).await?;
            for key in chunk {
                let address = address_from_key(key)?;
                if present.contains(&address) {
                    change.members.push(address);
                } else {
                    change.removed_members.push(address);
                }
            }
        }
        Ok(Some(change))
    }

    /// The members of group `name` (only among these address keys, when given).
    pub(super) async fn members_in(
        &self,
        tx: &mut Tx,
        name: &str,
        keys: Option<&[String]>,
    ) -> Result<BTreeSet<Ipv6Addr>, StoreError> {
        let filter = match keys {
            Some(list) => format!(" AND a.address IN ({})", placeholders(list.len())),
            None => String::new(),
        };
        // A few addresses: from them to their groups; the whole group: from its members.
        let from = match keys {
            Some(_) => format!(
                "addresses a {} instance_groups g ON g.pod = a.pod AND g.instance = a.instance",
                self.ordered_join()
            ),
            None => format!(
                "instance_groups g {} addresses a ON a.pod = g.pod AND a.instance = g.instance",
                self.ordered_join()
            ),
        };
        let sql = self.sql_owned(format!(
            "SELECT DISTINCT a.address FROM {from} WHERE g.group_name = ?{filter}"
        ));
        let mut query = sqlx::query(&sql).bind(name);
        for key in keys.unwrap_or_default() {
            query = query.bind(key.as_str());
        }
        query
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read group members"))?
            .iter()
            .map(|r| address_from_key(&text(r, 0)?))
            .collect()
    }

    /// The ports of `host` (only those on these interfaces, when given), by interface.
    pub(super) async fn ports_in(
        &self,
        tx: &mut Tx,
        host: &str,
        interfaces: Option<&[String]>,
    ) -> Result<Vec<PortEntry>, StoreError> {
        let filter = match interfaces {
            Some(list) => format!(" AND i.port IN ({})", placeholders(list.len())),
            None => String::new(),
        };
        fn bind_all<'q>(
            sql: &'q str,
            host: &'q str,
            interfaces: Option<&'q [String]>,
        ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
            let mut query = sqlx::query(sql).bind(host);
            for interface in interfaces.unwrap_or_default() {
                query = query.bind(interface.as_str());
            }
            query
        }
        let sql = self.sql_owned(format!(
            "SELECT i.pod, i.name, i.port, i.mac, i.prefix, i.prefix_len FROM instances i \
             WHERE i.host = ? AND i.port IS NOT NULL{filter} ORDER BY i.port"
        ));
        let instance_rows = bind_all(&sql, host, interfaces)
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read host ports"))?;
        let sql = self.sql_owned(format!(
            "SELECT a.pod, a.instance, a.address FROM instances i \
             {} addresses a ON a.pod = i.pod AND a.instance = i.name \
             WHERE i.host = ? AND i.port IS NOT NULL{filter} ORDER BY a.address",
            self.ordered_join()
        ));
        let mut addresses: BTreeMap<(String, String), Vec<Ipv6Addr>> = BTreeMap::new();
        for row in bind_all(&sql, host, interfaces)
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read host port addresses"))?
        {
            addresses
                .entry((text(&row, 0)?, text(&row, 1)?))
                .or_default()
                .push(address_from_key(&text(&row, 2)?)?);
        }
        let sql = self.sql_owned(format!(
            "SELECT g.pod, g.instance, g.group_name FROM instances i \
             {} instance_groups g ON g.pod = i.pod AND g.instance = i.name \
             WHERE i.host = ? AND i.port IS NOT NULL{filter} ORDER BY g.group_name",
            self.ordered_join()
        ));
        let mut memberships: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for row in bind_all(&sql, host, interfaces)
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read host port groups"))?
        {
            memberships
                .entry((text(&row, 0)?, text(&row, 1)?))
                .or_default()
                .push(text(&row, 2)?);
        }
        let mut ports = Vec::with_capacity(instance_rows.len());
        for row in &instance_rows {
            let key = (text(row, 0)?, text(row, 1)?);
            ports.push(PortEntry {
                name: key.1.clone(),
                interface: text(row, 2)?,
                mac: mac_from_text(&text(row, 3)?)?,
                addresses: addresses.remove(&key).unwrap_or_default(),
                prefix: prefix_from_columns(opt_text(row, 4)?, opt_int(row, 5)?)?,
                security_groups: memberships.remove(&key).unwrap_or_default(),
            });
        }
        Ok(ports)
    }
}
