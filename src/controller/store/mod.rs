//! The controller's SQL store: pods, instances, the addresses and /64s handed to them, security
//! groups and the per-pod / per-host revisions that agents watch.
//!
//! One [`Store`] over SQLite, MySQL/MariaDB or PostgreSQL, through sqlx's `Any` driver: one body of
//! SQL, written with `?` placeholders (rewritten to `$1…` for PostgreSQL) and a handful of
//! per-backend statements (transaction starts, host upsert, row locks). Only what is handed out is
//! stored — never a table of free addresses: a unique index on `(pod, address)` is *the*
//! duplicate check, `(pod, prefix)` the one for per-instance /64s, and a caller that loses a race
//! gets [`StoreError::Conflict`] with [`ConflictOn::Address`] / [`ConflictOn::Prefix`] and retries
//! with a new random choice.
//!
//! # Revisions
//! Every change bumps, in its own transaction, the revision of each pod and host whose document it
//! changes, so a watcher polling [`Store::pod_revision`] / [`Store::host_revision`] never sees a
//! new revision before the data:
//! - instance create / delete / address add or remove: its pod, and its host; if the instance is in
//!   any security group, *every* host instead of only its own, because the group's member list (in
//!   the document of every host with a rule naming that group) changed;
//! - security group put / delete: every host (the simplest correct choice: working out which hosts
//!   have an instance in a group naming it is not worth a missed update), and no pod.
//!
//! # Concurrency
//! Writers on one pod are serialised by the pod-revision bump, which is the first statement of
//! each instance transaction (a row lock on MySQL/PostgreSQL, the database write lock on SQLite,
//! whose write transactions are `BEGIN IMMEDIATE`). An allocation reads the pod, the instance and
//! the used addresses or prefixes it needs after that, in the same transaction (see
//! [`PodWrite`]). On MySQL/PostgreSQL that is one pooled connection and a round trip per
//! statement (6 / 5 for an added address, `BEGIN` and `COMMIT` included). On SQLite, where every
//! statement is a hand-off to the connection's own thread (a channel send and a thread wake-up,
//! which dominated the cost), a process writes through one connection of its own
//! (`Store::sqlite_writer`) and an allocation is two calls to it: `BEGIN IMMEDIATE` with the
//! pod lock and read, then the inserts, the host bump and `COMMIT` as one query of several
//! statements. Host rows are locked after the pod, one host or all hosts in name order; group
//! writers first lock the `flat6_meta` row. With that fixed order, transactions do not deadlock;
//! should a backend still report a deadlock or a lock timeout, it comes back as
//! [`StoreError::Unavailable`] and the request can be retried.
//!
//! # Stored forms
//! Names are VARCHAR(64) compared byte for byte (MySQL: `utf8mb4_bin`); addresses and prefixes are
//! 32 hex digits (see `columns.rs`); MACs lower-case `02:00:…`; a pod's `exclude` list and a
//! group's rules are JSON text. Hosts are never deleted, so a host revision never goes back.

mod blocks;
mod columns;
mod error;
mod feed;
mod schema;
#[cfg(test)]
mod tests;

pub use error::{ConflictOn, StoreError};
pub use feed::{FeedKey, FeedKind, FeedRow, GroupCursor};

use feed::{Groups, Members, group_rules_steps, instance_feed_steps};

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use futures::TryStreamExt as _;
use ipnet::Ipv6Net;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, Either, Executor, Transaction};
use tokio::sync::{Mutex as AsyncMutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::model::{Mac, Prefix};
use columns::{
    address_from_key, address_key, check_name, int, mac_from_text, opt_int, opt_text, placeholders,
    prefix_from_columns, prefixes_of, revision, text,
};

/// How long a request waits for a pooled connection before answering "unavailable".
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long SQLite waits for another writer (another controller on the same file) to finish.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5000;
/// SQLite: the writer runs a `RESTART` checkpoint after this many writes. SQLite's own
/// checkpoints are passive: with readers always about (watches answering, the feed poller) one
/// never finds the moment to start the WAL over, and the WAL grows without bound — gigabytes
/// in a 65,536-instance fill, with every read slower for it. A restart waits (up to the busy
/// timeout) for the readers of old snapshots, which are short.
const SQLITE_CHECKPOINT_EVERY: u32 = 256;
/// SQLite: the WAL file is cut back to this size when it starts over.
const SQLITE_WAL_LIMIT_BYTES: u64 = 64 << 20;
/// A pooled connection that sat idle this long is pinged before use. One in steady use is not:
/// a broken one then fails its first statement (503), and sqlx closes it when it is released,
/// because it pings every connection it takes back. Pinging on every acquire cost a round trip
/// per transaction.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);
/// Hosts remembered as having a row (see [`Store::ensure_host`]) before the memory is cleared.
const KNOWN_HOSTS_MAX: usize = 4096;

/// Whether `err` means the connection itself is gone (the server restarted or dropped it), as
/// opposed to the statement failing.
fn is_dead_connection(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
    )
}

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `sqlite://path` (created when missing; WAL journal).
    Sqlite,
    /// `mysql://` or `mariadb://` (InnoDB, utf8mb4).
    Mysql,
    /// `postgres://` or `postgresql://`.
    Postgres,
}

impl Backend {
    fn from_url(url: &str) -> Result<Backend, StoreError> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "mysql" | "mariadb" => Ok(Backend::Mysql),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            // The URL itself may hold a password: name only its scheme.
            _ => Err(StoreError::Other(format!(
                "unsupported database URL scheme {scheme:?}; use sqlite://, mysql:// or postgres://"
            ))),
        }
    }
}

/// The controller's database: a pool of connections, cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite: the one connection this process writes through (taken from the pool and kept,
    /// opened on first use and again after it broke), behind a queue. Write transactions take
    /// turns here before `BEGIN IMMEDIATE`, so they queue in order instead of meeting
    /// SQLITE_BUSY, whose busy handler sleeps 1, 2, 5, 10… ms between tries. (SQLite runs one
    /// writer at a time anyway; other processes on the same file still wait in the busy
    /// handler.) A connection of its own also keeps its prepared statements warm and skips the
    /// pool's acquire and release, which costs a round trip to the connection's thread (sqlx
    /// pings every connection it takes back). Unused on the other backends.
    sqlite_writer: Arc<AsyncMutex<Option<WriterConn>>>,
    /// Hosts this process has seen a row for. Hosts are never deleted, so a known host needs no
    /// `ensure_host` statement.
    known_hosts: Arc<Mutex<HashSet<String>>>,
    /// The database's identity, once read.
    cluster: Arc<OnceLock<String>>,
}

/// A pod to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPod {
    /// Unique name.
    pub name: String,
    /// The pod's range, e.g. `2001:db8:1::/48`.
    pub prefix: Prefix,
    /// 64: one /64 per instance; equal to the prefix length: one shared range.
    pub instance_prefix_length: u8,
    /// Addresses or prefixes never handed out.
    pub exclude: Vec<Ipv6Net>,
}

/// A stored pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRow {
    /// Unique name.
    pub name: String,
    /// The pod's range.
    pub prefix: Prefix,
    /// Length of each instance's prefix (see [`NewPod`]).
    pub instance_prefix_length: u8,
    /// Never handed out.
    pub exclude: Vec<Ipv6Net>,
    /// Bumped by every change to the pod's instances and addresses.
    pub revision: u64,
}

/// A change to an instance (see [`Store::update_instance`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceChange {
    /// `Some(None)` clears it.
    pub host: Option<Option<String>>,
    /// `Some(None)` clears it.
    pub port: Option<Option<String>>,
    /// The new set of groups.
    pub security_groups: Option<Vec<String>>,
}

/// An instance to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewInstance {
    /// Unique in the pod.
    pub name: String,
    /// Unique in the pod.
    pub mac: Mac,
    /// The hypervisor it runs on, if known.
    pub host: Option<String>,
    /// Its bridge port (interface name) on that host; unique per host.
    pub port: Option<String>,
    /// Security groups it is in; each must exist.
    pub security_groups: Vec<String>,
}

/// A stored instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    /// Unique in the pod.
    pub name: String,
    /// Unique in the pod.
    pub mac: Mac,
    /// Hypervisor, if known.
    pub host: Option<String>,
    /// Bridge port on the host.
    pub port: Option<String>,
    /// Its own prefix (/64) in a per-instance pod.
    pub prefix: Option<Ipv6Net>,
    /// Its addresses (/128), ascending.
    pub addresses: Vec<Ipv6Addr>,
    /// Its security groups, sorted.
    pub security_groups: Vec<String>,
}

/// A stored security group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    /// Unique name.
    pub name: String,
    /// The rules, JSON text exactly as put.
    pub rules_json: String,
}

/// Everything the guard on one host needs, read from one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPorts {
    /// The host's revision (0 for a host never named).
    pub revision: u64,
    /// The instances on the host that have a port, sorted by port.
    pub ports: Vec<crate::model::doc::PortEntry>,
    /// Every group those instances are in or that a rule of those groups names, sorted by name:
    /// name, rules JSON, members (every address of every instance in the group, on any host and in
    /// any pod, ascending).
    pub groups: Vec<(String, String, Vec<Ipv6Addr>)>,
}

/// SQLite: the one connection this process writes through (see [`Store::sqlite_writer`]).
#[derive(Debug)]
struct WriterConn {
    conn: AnyConnection,
    /// A transaction was begun on it and not yet committed or rolled back: whoever takes the
    /// connection next rolls it back first.
    open: bool,
    /// It failed in a way a new connection may not (an I/O error, a failed rollback): it is
    /// closed and replaced before its next use.
    broken: bool,
    /// Writer turns since its last `RESTART` checkpoint (see [`SQLITE_CHECKPOINT_EVERY`]).
    turns: u32,
}

/// The SQLite writer connection, held: the writer turn of this process.
type WriterGuard = OwnedMappedMutexGuard<Option<WriterConn>, WriterConn>;

/// A transaction. Derefs to the connection, like sqlx's `Transaction`.
enum Tx {
    /// On a pooled connection: every read, and writes on MySQL/PostgreSQL.
    Pooled(Transaction<'static, Any>),
    /// On SQLite's writer connection, begun with `BEGIN IMMEDIATE` and ended with plain `COMMIT` /
    /// `ROLLBACK` statements (so that they can share a call to the connection's thread with other
    /// statements), holding the writer turn until it ends.
    Writer(WriterTx),
}

/// A write transaction on the SQLite writer connection.
struct WriterTx {
    writer: WriterGuard,
    /// The writer's slot, for the rollback when the transaction is dropped unfinished.
    slot: Arc<AsyncMutex<Option<WriterConn>>>,
}

impl Drop for WriterTx {
    /// Dropped unfinished (an early return, a cancelled request): roll back as soon as this
    /// releases the writer turn, so that the SQLite write lock is not held until the next write
    /// (which would roll back first anyway, see [`settle_writer`]).
    fn drop(&mut self) {
        if !self.writer.open {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let slot = Arc::clone(&self.slot);
            runtime.spawn(async move {
                settle_writer(&mut *slot.lock_owned().await).await;
            });
        }
    }
}

impl Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Tx::Pooled(tx) => tx,
            Tx::Writer(tx) => &tx.writer.conn,
        }
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Tx::Pooled(tx) => tx,
            Tx::Writer(tx) => &mut tx.writer.conn,
        }
    }
}

/// Roll back what an earlier holder of the writer left open, and close the writer connection if
/// it is broken (the next write opens a new one).
async fn settle_writer(slot: &mut Option<WriterConn>) {
    if let Some(writer) = slot.as_mut() {
        roll_back_writer(writer).await;
    }
    if slot.as_ref().is_some_and(|writer| writer.broken)
        && let Some(writer) = slot.take()
    {
        let _ = writer.conn.close().await;
    }
}

/// A `RESTART` checkpoint on the SQLite writer (see [`SQLITE_CHECKPOINT_EVERY`]). A failure or
/// a busy answer only means the WAL starts over at a later turn.
async fn restart_wal(writer: &mut WriterConn) {
    let started = std::time::Instant::now();
    match sqlx::query("PRAGMA wal_checkpoint(RESTART)")
        .persistent(false)
        .fetch_optional(&mut writer.conn)
        .await
    {
        Ok(row) => {
            let column = |i: usize| {
                row.as_ref()
                    .and_then(|r| sqlx::Row::try_get::<i64, _>(r, i).ok())
            };
            tracing::debug!(
                busy = column(0),
                wal_pages = column(1),
                checkpointed = column(2),
                elapsed_us = started.elapsed().as_micros() as u64,
                "SQLite WAL checkpoint"
            );
        }
        Err(err) => {
            tracing::warn!(error = %err, "SQLite WAL checkpoint failed; trying again later")
        }
    }
}

/// The instance facts a write needs after locking its pod.
struct InstanceFacts {
    host: Option<String>,
    in_groups: bool,
}

/// The instance an address write is for.
struct InstanceSlot {
    name: String,
    prefix: Option<Ipv6Net>,
    facts: InstanceFacts,
}

/// One allocation's write on one pod: one connection (pooled; on SQLite the writer connection),
/// one transaction, in which the pod is locked (its revision bumped, see "Concurrency") and then
/// read, together with the instance for an address write. What the caller then decides from it —
/// a free address or /64, with [`PodWrite::used_addresses`] / [`PodWrite::used_prefixes`] read
/// under the same lock — no other writer on the pod can change before [`PodWrite::add_address`]
/// or [`PodWrite::create_instance`] commits. Dropped without either, it rolls back. Either of
/// those ends the transaction also when it fails (PostgreSQL aborts a transaction on a unique
/// violation): after a `Conflict`, begin a new write to choose again.
pub struct PodWrite<'s> {
    store: &'s Store,
    tx: Tx,
    pod: PodRow,
    instance: Option<InstanceSlot>,
    /// The host `begin_instance_write` made sure of.
    host: Option<String>,
}

impl std::fmt::Debug for PodWrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWrite")
            .field("pod", &self.pod.name)
            .field("instance", &self.instance.as_ref().map(|slot| &slot.name))
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connect and create missing tables.
    ///
    /// `sqlite://path` (created if missing; WAL, busy timeout 5 s, foreign keys on — use a file,
    /// not `:memory:`, which would give each pooled connection its own database;
    /// `synchronous = NORMAL`: a committed write survives the controller crashing or being
    /// killed, but the last writes before a power loss or an operating-system crash may be lost
    /// — the database stays consistent — because WAL is synced at checkpoints, not at every
    /// commit), `mysql://…` or
    /// `mariadb://…`, `postgres://…`. The pool waits at most 3 s for a connection, checks one that
    /// sat idle for a second or more before use and drops one that fails, so it recovers by
    /// itself when the database comes back. Safe when several controllers start at once.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let mut options = AnyPoolOptions::new()
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        // An error makes the pool close this one and take or open another.
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .idle_timeout(Some(Duration::from_secs(300)))
            .max_connections(match backend {
                Backend::Sqlite => 4,
                _ => 10,
            });
        let url = match backend {
            Backend::Sqlite => {
                options = options.after_connect(|conn, _meta| {
                    Box::pin(async move {
                        for pragma in [
                            format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"),
                            "PRAGMA foreign_keys = ON".to_string(),
                            "PRAGMA journal_mode = WAL".to_string(),
                            "PRAGMA synchronous = NORMAL".to_string(),
                            format!("PRAGMA journal_size_limit = {SQLITE_WAL_LIMIT_BYTES}"),
                        ] {
                            sqlx::query(&pragma)
                                .persistent(false)
                                .execute(&mut *conn)
                                .await?;
                        }
                        Ok(())
                    })
                });
                sqlite_create_url(url)
            }
            _ => url.to_string(),
        };
        let pool = options
            .connect(&url)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "connect to the database"))?;
        schema::migrate(&pool, backend).await?;
        Ok(Store {
            pool,
            backend,
            sqlite_writer: Arc::new(AsyncMutex::new(None)),
            known_hosts: Arc::new(Mutex::new(HashSet::new())),
            cluster: Arc::new(OnceLock::new()),
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Check that a connection works (for readiness probes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| StoreError::from_sqlx(e, "ping"))?;
        conn.ping()
            .await
            .map_err(|e| StoreError::from_sqlx(e, "ping"))
    }

    // ------------------------------------------------------------------ pods

    /// Create a pod at revision 1. `Conflict(Name)` when the name exists. The prefix, length and
    /// exclusions are stored as given: validating them is the caller's job.
    pub async fn create_pod(&self, pod: &NewPod) -> Result<PodRow, StoreError> {
        check_name("pod", &pod.name)?;
        let exclude = serde_json::to_string(&pod.exclude)
            .map_err(|e| StoreError::Other(format!("encode exclude list: {e}")))?;
        let sql = self.sql(
            "INSERT INTO pods (name, prefix, instance_prefix_length, exclude, revision) \
             VALUES (?, ?, ?, ?, 1)",
        );
        let query = sqlx::query(&sql)
            .bind(pod.name.as_str())
            .bind(pod.prefix.to_string())
            .bind(i64::from(pod.instance_prefix_length))
            .bind(exclude);
        self.execute_write(query, |e| match error::unique_key(&e) {
            Some(_) => {
                StoreError::conflict(ConflictOn::Name, format!("pod {} already exists", pod.name))
            }
            None => StoreError::from_sqlx(e, "create pod"),
        })
        .await?;
        Ok(PodRow {
            name: pod.name.clone(),
            prefix: pod.prefix,
            instance_prefix_length: pod.instance_prefix_length,
            exclude: pod.exclude.clone(),
            revision: 1,
        })
    }

    /// A pod by name.
    pub async fn get_pod(&self, name: &str) -> Result<PodRow, StoreError> {
        let sql = self.sql(
            "SELECT prefix, instance_prefix_length, exclude, revision FROM pods WHERE name = ?",
        );
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read pod"))?
            .ok_or_else(|| StoreError::NotFound(format!("pod {name}")))?;
        pod_from_row(name, &row)
    }

    /// Every pod, by name.
    pub async fn list_pods(&self) -> Result<Vec<PodRow>, StoreError> {
        sqlx::query(
            "SELECT prefix, instance_prefix_length, exclude, revision, name FROM pods ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "list pods"))?
        .iter()
        .map(|row| pod_from_row(&text(row, 4)?, row))
        .collect()
    }

    /// The instances of a pod (only those on `host` when given), by name, each with its
    /// addresses and groups; read from one snapshot in three queries. `NotFound` for an unknown
    /// pod.
    pub async fn list_instances(
        &self,
        pod: &str,
        host: Option<&str>,
    ) -> Result<Vec<InstanceRow>, StoreError> {
        let mut tx = self.begin_read().await?;
        let sql = self.sql("SELECT COUNT(*) FROM pods WHERE name = ?");
        let exists = sqlx::query(&sql)
            .bind(pod)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read pod"))?;
        if int(&exists, 0)? == 0 {
            return Err(StoreError::NotFound(format!("pod {pod}")));
        }
        let sql = self.sql(
            "SELECT name, mac, host, port, prefix, prefix_len FROM instances \
             WHERE pod = ? ORDER BY name",
        );
        let mut instances: BTreeMap<String, InstanceRow> = BTreeMap::new();
        for row in sqlx::query(&sql)
            .bind(pod)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "list instances"))?
        {
            let instance_host = opt_text(&row, 2)?;
            if host.is_some() && instance_host.as_deref() != host {
                continue;
            }
            let name = text(&row, 0)?;
            instances.insert(
                name.clone(),
                InstanceRow {
                    name,
                    mac: mac_from_text(&text(&row, 1)?)?,
                    host: instance_host,
                    port: opt_text(&row, 3)?,
                    prefix: prefix_from_columns(opt_text(&row, 4)?, opt_int(&row, 5)?)?,
                    addresses: Vec::new(),
                    security_groups: Vec::new(),
                },
            );
        }
        let sql =
            self.sql("SELECT instance, address FROM addresses WHERE pod = ? ORDER BY address");
        for row in sqlx::query(&sql)
            .bind(pod)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "list addresses"))?
        {
            if let Some(instance) = instances.get_mut(&text(&row, 0)?) {
                instance.addresses.push(address_from_key(&text(&row, 1)?)?);
            }
        }
        let sql = self.sql(
            "SELECT instance, group_name FROM instance_groups WHERE pod = ? ORDER BY group_name",
        );
        for row in sqlx::query(&sql)
            .bind(pod)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "list group memberships"))?
        {
            if let Some(instance) = instances.get_mut(&text(&row, 0)?) {
                instance.security_groups.push(text(&row, 1)?);
            }
        }
        commit(tx).await?;
        Ok(instances.into_values().collect())
    }

    /// Delete a pod; `Conflict(Other)` while it has instances.
    pub async fn delete_pod(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_pod(&mut tx, name).await?;
        let sql = self.sql("SELECT COUNT(*) FROM instances WHERE pod = ?");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "count instances"))?;
        let count = int(&row, 0)?;
        if count > 0 {
            return Err(StoreError::conflict(
                ConflictOn::Other,
                format!("pod {name} still has {count} instance(s)"),
            ));
        }
        let sql = self.sql("DELETE FROM alloc_blocks WHERE pod = ?");
        sqlx::query(&sql)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "delete pod"))?;
        let sql = self.sql("DELETE FROM pods WHERE name = ?");
        sqlx::query(&sql)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "delete pod"))?;
        commit(tx).await
    }

    /// The pod's revision: one indexed read, cheap enough for watches polling every ~100 ms.
    pub async fn pod_revision(&self, pod: &str) -> Result<u64, StoreError> {
        let sql = self.sql("SELECT revision FROM pods WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(pod)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read pod revision"))?
            .ok_or_else(|| StoreError::NotFound(format!("pod {pod}")))?;
        revision(int(&row, 0)?)
    }

    // ------------------------------------------------------------------ instances

    /// Create an instance with its prefix (per-instance pods) and first address, its group
    /// memberships and the revision bumps, in one transaction.
    ///
    /// `NotFound` for an unknown pod or security group; `Conflict` with `what` = `Name`, `Mac`,
    /// `Prefix`, `Address` (retry with a new random choice for those two) or `Other` (port already
    /// used on the host).
    pub async fn create_instance(
        &self,
        pod: &str,
        inst: &NewInstance,
        prefix: Option<Ipv6Net>,
        first_address: Ipv6Addr,
    ) -> Result<InstanceRow, StoreError> {
        check_instance_names(inst)?;
        let mut write = self.begin_instance_write(pod, inst.host.as_deref()).await?;
        if let Some(missing) = write.missing_group(&inst.security_groups).await? {
            return Err(StoreError::NotFound(format!(
                "security group {}",
                inst.security_groups[missing]
            )));
        }
        write.create_instance(inst, prefix, first_address).await
    }

    /// Begin the write that creates an instance on `host` in `pod` (see [`PodWrite`]): make sure
    /// the host has a row, then lock and read the pod. `NotFound` for an unknown pod.
    pub async fn begin_instance_write(
        &self,
        pod: &str,
        host: Option<&str>,
    ) -> Result<PodWrite<'_>, StoreError> {
        if let Some(host) = host {
            check_name("host", host)?;
            self.ensure_host(host).await?;
        }
        let mut write = self.begin_pod_write(pod, None).await?;
        write.host = host.map(str::to_string);
        Ok(write)
    }

    /// Begin the write that adds an address to `instance` of `pod` (see [`PodWrite`]): lock the
    /// pod, then read it and the instance in one statement. `NotFound` for an unknown pod or
    /// instance.
    pub async fn begin_address_write(
        &self,
        pod: &str,
        instance: &str,
    ) -> Result<PodWrite<'_>, StoreError> {
        self.begin_pod_write(pod, Some(instance)).await
    }

    async fn begin_pod_write(
        &self,
        pod: &str,
        instance: Option<&str>,
    ) -> Result<PodWrite<'_>, StoreError> {
        // SQLite: `BEGIN IMMEDIATE` goes in front of the pod lock, in the same call to the
        // connection's thread.
        let (mut tx, begin) = match self.sqlite_writer().await? {
            Some(writer) => (self.writer_tx(writer), "BEGIN IMMEDIATE; "),
            None => (self.begin_write().await?, ""),
        };
        match self.read_pod_write(&mut tx, begin, pod, instance).await {
            Ok((pod_row, instance)) => Ok(PodWrite {
                store: self,
                tx,
                pod: pod_row,
                instance,
                host: None,
            }),
            Err(err) => Err(rollback(tx, err).await),
        }
    }

    /// Lock the pod, then read it (and the instance). `begin` goes in front of the first
    /// statement (SQLite only: MySQL and PostgreSQL take one statement per call).
    async fn read_pod_write(
        &self,
        tx: &mut Tx,
        begin: &str,
        pod: &str,
        instance: Option<&str>,
    ) -> Result<(PodRow, Option<InstanceSlot>), StoreError> {
        let row = if self.backend == Backend::Mysql {
            self.lock_pod(tx, pod).await?;
            self.read_locked_pod(tx, pod, instance).await?
        } else {
            self.lock_and_read_pod(tx, begin, pod, instance).await?
        };
        let row = row.ok_or_else(|| StoreError::NotFound(format!("pod {pod}")))?;
        self.pod_write_parts(pod, instance, &row)
    }

    /// SQLite and PostgreSQL: the revision bump (the lock) and the reads in one statement, with
    /// the same columns as [`Store::read_locked_pod`] (MariaDB has no `UPDATE … RETURNING`).
    async fn lock_and_read_pod(
        &self,
        tx: &mut Tx,
        begin: &str,
        pod: &str,
        instance: Option<&str>,
    ) -> Result<Option<AnyRow>, StoreError> {
        let bump = "UPDATE pods SET revision = revision + 1 WHERE name = ? \
                    RETURNING prefix, instance_prefix_length, exclude, revision";
        let instance_columns = match instance {
            None => "",
            Some(_) => {
                ", \
                 (SELECT i.name FROM instances i WHERE i.pod = pods.name AND i.name = ?), \
                 (SELECT i.host FROM instances i WHERE i.pod = pods.name AND i.name = ?), \
                 (SELECT i.prefix FROM instances i WHERE i.pod = pods.name AND i.name = ?), \
                 (SELECT i.prefix_len FROM instances i WHERE i.pod = pods.name AND i.name = ?), \
                 (SELECT COUNT(*) FROM instance_groups g \
                  WHERE g.pod = pods.name AND g.instance = ?)"
            }
        };
        let sql = self.sql_owned(format!("{begin}{bump}{instance_columns}"));
        let mut query = sqlx::query(&sql).bind(pod);
        if let Some(name) = instance {
            for _ in 0..5 {
                query = query.bind(name);
            }
        }
        // Not `fetch_optional`: on a query of several statements, sqlx's SQLite driver would
        // return the first result — that of `begin` — and no row.
        query
            .fetch_all(&mut **tx)
            .await
            .map(|rows| rows.into_iter().next())
            .map_err(|e| StoreError::from_sqlx(e, "lock and read pod"))
    }

    /// After [`Store::lock_pod`]: the pod (and the instance) as one row.
    async fn read_locked_pod(
        &self,
        tx: &mut Tx,
        pod: &str,
        instance: Option<&str>,
    ) -> Result<Option<AnyRow>, StoreError> {
        match instance {
            None => {
                let sql = self.sql(
                    "SELECT prefix, instance_prefix_length, exclude, revision FROM pods \
                     WHERE name = ?",
                );
                sqlx::query(&sql).bind(pod).fetch_optional(&mut **tx).await
            }
            Some(name) => {
                let sql = self.sql(
                    "SELECT p.prefix, p.instance_prefix_length, p.exclude, p.revision, \
                     i.name, i.host, i.prefix, i.prefix_len, \
                     (SELECT COUNT(*) FROM instance_groups g \
                      WHERE g.pod = i.pod AND g.instance = i.name) \
                     FROM pods p LEFT JOIN instances i ON i.pod = p.name AND i.name = ? \
                     WHERE p.name = ?",
                );
                sqlx::query(&sql)
                    .bind(name)
                    .bind(pod)
                    .fetch_optional(&mut **tx)
                    .await
            }
        }
        .map_err(|e| StoreError::from_sqlx(e, "read pod"))
    }

    /// The pod and the instance slot from a row of [`Store::read_locked_pod`] or
    /// [`Store::lock_and_read_pod`].
    fn pod_write_parts(
        &self,
        pod: &str,
        instance: Option<&str>,
        row: &AnyRow,
    ) -> Result<(PodRow, Option<InstanceSlot>), StoreError> {
        let pod_row = pod_from_row(pod, row)?;
        let instance = match instance {
            None => None,
            Some(name) => {
                if opt_text(row, 4)?.is_none() {
                    return Err(StoreError::NotFound(format!(
                        "instance {name} in pod {pod}"
                    )));
                }
                Some(InstanceSlot {
                    name: name.to_string(),
                    prefix: prefix_from_columns(opt_text(row, 6)?, opt_int(row, 7)?)?,
                    facts: InstanceFacts {
                        host: opt_text(row, 5)?,
                        in_groups: int(row, 8)? > 0,
                    },
                })
            }
        };
        Ok((pod_row, instance))
    }

    /// An instance with its addresses and groups, read from one snapshot.
    pub async fn get_instance(&self, pod: &str, name: &str) -> Result<InstanceRow, StoreError> {
        let mut tx = self.begin_read().await?;
        let sql = self.sql(
            "SELECT mac, host, port, prefix, prefix_len FROM instances WHERE pod = ? AND name = ?",
        );
        let row = sqlx::query(&sql)
            .bind(pod)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read instance"))?
            .ok_or_else(|| StoreError::NotFound(format!("instance {name} in pod {pod}")))?;
        let sql = self
            .sql("SELECT address FROM addresses WHERE pod = ? AND instance = ? ORDER BY address");
        let addresses = sqlx::query(&sql)
            .bind(pod)
            .bind(name)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read addresses"))?
            .iter()
            .map(|r| address_from_key(&text(r, 0)?))
            .collect::<Result<Vec<_>, _>>()?;
        let sql = self.sql(
            "SELECT group_name FROM instance_groups WHERE pod = ? AND instance = ? \
             ORDER BY group_name",
        );
        let security_groups = sqlx::query(&sql)
            .bind(pod)
            .bind(name)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read group memberships"))?
            .iter()
            .map(|r| text(r, 0))
            .collect::<Result<Vec<_>, _>>()?;
        commit(tx).await?;
        Ok(InstanceRow {
            name: name.to_string(),
            mac: mac_from_text(&text(&row, 0)?)?,
            host: opt_text(&row, 1)?,
            port: opt_text(&row, 2)?,
            prefix: prefix_from_columns(opt_text(&row, 3)?, opt_int(&row, 4)?)?,
            addresses,
            security_groups,
        })
    }

    /// Delete an instance, freeing its addresses and prefix.
    pub async fn delete_instance(&self, pod: &str, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_pod(&mut tx, pod).await?;
        let facts = self.instance_facts(&mut tx, pod, name).await?;
        self.record_instance(&mut tx, pod, name, &facts, true, Members::All)
            .await?;
        let release = self.release_steps(&mut tx, pod, name, None).await?;
        self.run_steps(&mut tx, &release).await?;
        for table in ["addresses", "instance_groups"] {
            let sql = self.sql_owned(format!(
                "DELETE FROM {table} WHERE pod = ? AND instance = ?"
            ));
            sqlx::query(&sql)
                .bind(pod)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "delete instance"))?;
        }
        let sql = self.sql("DELETE FROM instances WHERE pod = ? AND name = ?");
        sqlx::query(&sql)
            .bind(pod)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "delete instance"))?;
        commit(tx).await
    }

    /// Change where an instance runs (`host`, `port`) and its security groups, keeping its MAC,
    /// /64 and addresses (a migration to another hypervisor, a change of groups). `None` leaves a
    /// field as it is; `Some(None)` clears host or port. The old and the new host (or every host,
    /// when groups are involved before or after) get a new revision, so both guards converge.
    /// `Ok(Err(i))` when `security_groups[i]` does not exist; nothing is changed then.
    pub async fn update_instance(
        &self,
        pod: &str,
        name: &str,
        change: &InstanceChange,
    ) -> Result<Result<InstanceRow, usize>, StoreError> {
        if let Some(Some(host)) = &change.host {
            self.ensure_host(host).await?;
        }
        let mut tx = self.begin_write().await?;
        self.lock_pod(&mut tx, pod).await?;
        let before = self.instance_facts(&mut tx, pod, name).await?;
        // Lock order: the pod (above), the groups by name, the hosts by name. The union of the
        // old and the new groups is bumped once, in one statement (index order), and so are the
        // old and the new host, before anything is recorded.
        let groups_change = change.security_groups.is_some();
        if groups_change {
            let mut union: BTreeSet<String> =
                change.security_groups.iter().flatten().cloned().collect();
            let sql =
                self.sql("SELECT group_name FROM instance_groups WHERE pod = ? AND instance = ?");
            for row in sqlx::query(&sql)
                .bind(pod)
                .bind(name)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "read group membership"))?
            {
                union.insert(columns::text(&row, 0)?);
            }
            if groups_change && !union.is_empty() {
                let list: Vec<String> = union.into_iter().collect();
                let sql = self.sql_owned(format!(
                    "UPDATE feed_keys SET revision = revision + 1 WHERE kind = 'g' AND name IN ({})",
                    placeholders(list.len())
                ));
                let mut query = sqlx::query(&sql);
                for group in &list {
                    query = query.bind(group.as_str());
                }
                query
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| StoreError::from_sqlx(e, "bump group revisions"))?;
            }
        }
        let new_host = match &change.host {
            Some(host) => host.clone(),
            None => before.host.clone(),
        };
        let mut hosts: BTreeSet<String> = before.host.iter().cloned().collect();
        hosts.extend(new_host);
        for host in &hosts {
            self.bump_host(&mut tx, host).await?;
        }
        let members = if groups_change {
            Members::All
        } else {
            Members::Unchanged
        };
        self.record_moved(&mut tx, pod, name, &before, members)
            .await?;
        for (column, value) in [("host", &change.host), ("port", &change.port)] {
            let Some(value) = value else { continue };
            let sql = self.sql_owned(format!(
                "UPDATE instances SET {column} = ? WHERE pod = ? AND name = ?"
            ));
            sqlx::query(&sql)
                .bind(value.as_deref())
                .bind(pod)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(|e| match error::unique_key(&e) {
                    Some(_) => StoreError::conflict(
                        ConflictOn::Other,
                        format!(
                            "port {} is already used on that host",
                            change.port.clone().flatten().unwrap_or_default()
                        ),
                    ),
                    None => StoreError::from_sqlx(e, "update instance"),
                })?;
        }
        if let Some(groups) = &change.security_groups {
            let unique: Vec<String> = groups
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if !unique.is_empty() {
                let found = self.existing_groups(&mut tx, &unique).await?;
                if let Some(i) = groups.iter().position(|g| !found.contains(g)) {
                    return Ok(Err(i));
                }
            }
            let sql = self.sql("DELETE FROM instance_groups WHERE pod = ? AND instance = ?");
            sqlx::query(&sql)
                .bind(pod)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "update group membership"))?;
            let sql = self
                .sql("INSERT INTO instance_groups (pod, instance, group_name) VALUES (?, ?, ?)");
            for group in &unique {
                sqlx::query(&sql)
                    .bind(pod)
                    .bind(name)
                    .bind(group.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| StoreError::from_sqlx(e, "update group membership"))?;
            }
        }
        let after = self.instance_facts(&mut tx, pod, name).await?;
        self.record_moved(&mut tx, pod, name, &after, members)
            .await?;
        commit(tx).await?;
        self.get_instance(pod, name).await.map(Ok)
    }

    /// Hand one more address to an instance; `Conflict(Address)` when the pod already uses it.
    pub async fn add_address(
        &self,
        pod: &str,
        instance: &str,
        address: Ipv6Addr,
    ) -> Result<(), StoreError> {
        self.begin_address_write(pod, instance)
            .await?
            .add_address(address)
            .await
    }

    /// Take an address back from an instance; `NotFound` unless the instance has it.
    pub async fn remove_address(
        &self,
        pod: &str,
        instance: &str,
        address: Ipv6Addr,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_pod(&mut tx, pod).await?;
        let facts = self.instance_facts(&mut tx, pod, instance).await?;
        self.record_instance(&mut tx, pod, instance, &facts, true, Members::One(address))
            .await?;
        let release = self
            .release_steps(&mut tx, pod, instance, Some(address))
            .await?;
        let sql = self.sql("DELETE FROM addresses WHERE pod = ? AND address = ? AND instance = ?");
        let done = sqlx::query(&sql)
            .bind(pod)
            .bind(address_key(address))
            .bind(instance)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "delete address"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "address {address} of instance {instance} in pod {pod}"
            )));
        }
        self.run_steps(&mut tx, &release).await?;
        commit(tx).await
    }

    /// The addresses in use in `pod` inside `within`, ascending (an index range scan). An unknown
    /// pod uses none.
    pub async fn used_addresses(
        &self,
        pod: &str,
        within: Ipv6Net,
    ) -> Result<Vec<Ipv6Addr>, StoreError> {
        self.used_addresses_on(&self.pool, pod, within).await
    }

    async fn used_addresses_on<'e>(
        &self,
        executor: impl Executor<'e, Database = Any>,
        pod: &str,
        within: Ipv6Net,
    ) -> Result<Vec<Ipv6Addr>, StoreError> {
        let sql = self.sql(
            "SELECT address FROM addresses WHERE pod = ? AND address >= ? AND address <= ? \
             ORDER BY address",
        );
        sqlx::query(&sql)
            .bind(pod)
            .bind(address_key(within.network()))
            .bind(address_key(within.broadcast()))
            .fetch_all(executor)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read used addresses"))?
            .iter()
            .map(|r| address_from_key(&text(r, 0)?))
            .collect()
    }

    /// The instance prefixes in use in `pod`, ascending. An unknown pod uses none.
    pub async fn used_prefixes(&self, pod: &str) -> Result<Vec<Ipv6Net>, StoreError> {
        self.used_prefixes_on(&self.pool, pod).await
    }

    async fn used_prefixes_on<'e>(
        &self,
        executor: impl Executor<'e, Database = Any>,
        pod: &str,
    ) -> Result<Vec<Ipv6Net>, StoreError> {
        let sql = self.sql(
            "SELECT prefix, prefix_len FROM instances WHERE pod = ? AND prefix IS NOT NULL \
             ORDER BY prefix",
        );
        let rows = sqlx::query(&sql)
            .bind(pod)
            .fetch_all(executor)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read used prefixes"))?;
        prefixes_of(&rows)
    }

    // ------------------------------------------------------------------ security groups

    /// Create or replace a group's rules (a JSON array; validating the rules is the caller's job).
    /// Every `remote_group` named by a rule must exist or be this group: `NotFound` otherwise.
    /// Bumps every host's revision.
    pub async fn put_group(&self, name: &str, rules_json: &str) -> Result<(), StoreError> {
        check_name("security group", name)?;
        let refs = remote_groups(name, rules_json)?;
        let mut tx = self.begin_write().await?;
        self.lock_groups(&mut tx).await?;
        let exists = self.existing_groups(&mut tx, &[name.to_string()]).await?;
        let sql = if exists.is_empty() {
            self.sql("INSERT INTO security_groups (rules, name) VALUES (?, ?)")
        } else {
            self.sql("UPDATE security_groups SET rules = ? WHERE name = ?")
        };
        sqlx::query(&sql)
            .bind(rules_json)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "write security group"))?;
        let others: Vec<String> = refs.iter().filter(|r| *r != name).cloned().collect();
        if !others.is_empty() {
            let found = self.existing_groups(&mut tx, &others).await?;
            if let Some(missing) = others.iter().find(|g| !found.contains(*g)) {
                return Err(StoreError::NotFound(format!(
                    "security group {missing} (named by a rule of group {name})"
                )));
            }
        }
        let sql = self.sql("DELETE FROM group_refs WHERE group_name = ?");
        sqlx::query(&sql)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "write security group references"))?;
        let sql = self.sql("INSERT INTO group_refs (group_name, ref_name) VALUES (?, ?)");
        for referenced in &refs {
            sqlx::query(&sql)
                .bind(name)
                .bind(referenced.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "write security group references"))?;
        }
        self.run_steps(&mut tx, &group_rules_steps(self.backend, name))
            .await?;
        commit(tx).await
    }

    /// A group by name.
    pub async fn get_group(&self, name: &str) -> Result<GroupRow, StoreError> {
        let sql = self.sql("SELECT rules FROM security_groups WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read security group"))?
            .ok_or_else(|| StoreError::NotFound(format!("security group {name}")))?;
        Ok(GroupRow {
            name: name.to_string(),
            rules_json: text(&row, 0)?,
        })
    }

    /// Whether a group exists.
    pub async fn group_exists(&self, name: &str) -> Result<bool, StoreError> {
        let sql = self.sql("SELECT COUNT(*) FROM security_groups WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read security group"))?;
        Ok(int(&row, 0)? > 0)
    }

    /// Delete a group; `Conflict(Other)` while an instance is in it or a rule of another group
    /// names it. Bumps every host's revision.
    pub async fn delete_group(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        self.lock_groups(&mut tx).await?;
        if self
            .existing_groups(&mut tx, &[name.to_string()])
            .await?
            .is_empty()
        {
            return Err(StoreError::NotFound(format!("security group {name}")));
        }
        let sql = self.sql(
            "SELECT pod, instance FROM instance_groups WHERE group_name = ? \
             ORDER BY pod, instance",
        );
        let members = sqlx::query(&sql)
            .bind(name)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read group members"))?;
        if !members.is_empty() {
            let names = members
                .iter()
                .take(5)
                .map(|r| Ok(format!("{}/{}", text(r, 0)?, text(r, 1)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            return Err(StoreError::conflict(
                ConflictOn::Other,
                format!(
                    "security group {name} still has {} instance(s): {}{}",
                    members.len(),
                    names.join(", "),
                    if members.len() > names.len() {
                        ", …"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let sql = self.sql(
            "SELECT group_name FROM group_refs WHERE ref_name = ? AND group_name <> ? \
             ORDER BY group_name",
        );
        let referrers = sqlx::query(&sql)
            .bind(name)
            .bind(name)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read group references"))?
            .iter()
            .map(|r| text(r, 0))
            .collect::<Result<Vec<_>, _>>()?;
        if !referrers.is_empty() {
            return Err(StoreError::conflict(
                ConflictOn::Other,
                format!(
                    "security group {name} is named by a rule of group(s) {}",
                    referrers.join(", ")
                ),
            ));
        }
        for sql in [
            "DELETE FROM group_refs WHERE group_name = ?",
            "DELETE FROM security_groups WHERE name = ?",
        ] {
            sqlx::query(&self.sql(sql))
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "delete security group"))?;
        }
        // The feed row stays (and moves on): a group made again later continues its revisions.
        self.run_steps(&mut tx, &group_rules_steps(self.backend, name))
            .await?;
        commit(tx).await
    }

    // ------------------------------------------------------------------ documents for agents

    /// A host's revision; 0 for a host no instance ever named.
    pub async fn host_revision(&self, host: &str) -> Result<u64, StoreError> {
        let sql = self.sql("SELECT revision FROM hosts WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(host)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read host revision"))?;
        match row {
            Some(row) => revision(int(&row, 0)?),
            None => Ok(0),
        }
    }

    /// The pod's revision and every instance's MAC and addresses (sorted by instance name,
    /// addresses ascending), read from one snapshot: what the virtual router serves DHCPv6 from.
    pub async fn reservations(
        &self,
        pod: &str,
    ) -> Result<(u64, Vec<(Mac, Vec<Ipv6Addr>)>), StoreError> {
        let mut tx = self.begin_read().await?;
        let sql = self.sql("SELECT revision FROM pods WHERE name = ?");
        let row = sqlx::query(&sql)
            .bind(pod)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read pod revision"))?
            .ok_or_else(|| StoreError::NotFound(format!("pod {pod}")))?;
        let rev = revision(int(&row, 0)?)?;
        let sql = self.sql(
            "SELECT i.name, i.mac, a.address FROM instances i \
             LEFT JOIN addresses a ON a.pod = i.pod AND a.instance = i.name \
             WHERE i.pod = ? ORDER BY i.name, a.address",
        );
        let rows = sqlx::query(&sql)
            .bind(pod)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read reservations"))?;
        commit(tx).await?;
        let mut out: Vec<(Mac, Vec<Ipv6Addr>)> = Vec::new();
        let mut last_name: Option<String> = None;
        for row in &rows {
            let name = text(row, 0)?;
            if last_name.as_deref() != Some(name.as_str()) {
                out.push((mac_from_text(&text(row, 1)?)?, Vec::new()));
                last_name = Some(name);
            }
            if let (Some(key), Some((_, addresses))) = (opt_text(row, 2)?, out.last_mut()) {
                addresses.push(address_from_key(&key)?);
            }
        }
        Ok((rev, out))
    }

    /// Everything the guard on `host` needs, from one snapshot: the revision, the instances on
    /// the host that have a port, and every group they are in or that a rule of those groups
    /// names, with its rules and members (the same reads as the feed's answers, `feed.rs`).
    pub async fn host_ports(&self, host: &str) -> Result<HostPorts, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = async {
            let sql = self.sql("SELECT revision FROM hosts WHERE name = ?");
            let revision = match sqlx::query(&sql)
                .bind(host)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "read host revision"))?
            {
                Some(row) => revision(int(&row, 0)?)?,
                None => 0,
            };
            let ports = self.ports_in(&mut tx, host, None).await?;
            let mut groups = Vec::new();
            for name in self.referenced_groups(&mut tx, host).await? {
                let sql = self.sql("SELECT rules FROM security_groups WHERE name = ?");
                let Some(row) = sqlx::query(&sql)
                    .bind(name.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| StoreError::from_sqlx(e, "read security group"))?
                else {
                    continue;
                };
                let rules = text(&row, 0)?;
                let members = self.members_in(&mut tx, &name, None).await?;
                groups.push((name, rules, members.into_iter().collect()));
            }
            Ok(HostPorts {
                revision,
                ports,
                groups,
            })
        }
        .await;
        finish(tx, result).await
    }

    // ------------------------------------------------------------------ plumbing

    /// The join that makes SQLite drive from its left table. Without statistics SQLite's planner
    /// takes an `IN` list of ten or more values for costlier than a whole scan of the other side
    /// (it read every address of a 30,000-instance pod for ten MACs: 53 ms instead of 0.8). A
    /// `CROSS JOIN` keeps the order written; the other databases plan with statistics and do not
    /// accept `CROSS JOIN … ON` alike.
    fn ordered_join(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "CROSS JOIN",
            _ => "JOIN",
        }
    }

    /// `?` placeholders as this backend wants them (`$1`, `$2`, … for PostgreSQL). The SQL in this
    /// module has no `?` inside string literals.
    fn sql<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.backend != Backend::Postgres || !text.contains('?') {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len() + 16);
        let mut n = 0;
        for c in text.chars() {
            if c == '?' {
                n += 1;
                let _ = write!(out, "${n}");
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    /// [`Store::sql`] for a query built at run time.
    fn sql_owned(&self, text: String) -> String {
        match self.sql(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(converted) => converted,
        }
    }

    /// A write transaction. SQLite's takes the write lock up front (`BEGIN IMMEDIATE`): a
    /// deferred one that reads first and writes later can fail at once with SQLITE_BUSY instead of
    /// waiting its turn.
    async fn begin_write(&self) -> Result<Tx, StoreError> {
        match self.sqlite_writer().await? {
            Some(writer) => {
                let mut tx = self.writer_tx(writer);
                match sqlx::query("BEGIN IMMEDIATE").execute(&mut *tx).await {
                    Ok(_) => Ok(tx),
                    Err(e) => {
                        Err(rollback(tx, StoreError::from_sqlx(e, "begin transaction")).await)
                    }
                }
            }
            None => self
                .begin_on_a_live_connection("BEGIN")
                .await
                .map(Tx::Pooled)
                .map_err(|e| StoreError::from_sqlx(e, "begin transaction")),
        }
    }

    /// A transaction on the SQLite writer connection, counted as open from now on: the caller's
    /// next statement must begin it (`BEGIN IMMEDIATE`, alone or in front of others).
    fn writer_tx(&self, mut writer: WriterGuard) -> Tx {
        writer.open = true;
        Tx::Writer(WriterTx {
            writer,
            slot: Arc::clone(&self.sqlite_writer),
        })
    }

    /// On SQLite, wait for this process's turn to write (see [`Store::sqlite_writer`]), as long
    /// as SQLite itself would wait for another process's writer, and return the writer
    /// connection: settled (see [`settle_writer`]) and opened if there was none. `None` on the
    /// other backends.
    async fn sqlite_writer(&self) -> Result<Option<WriterGuard>, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let wait = Duration::from_millis(u64::from(SQLITE_BUSY_TIMEOUT_MS));
        let mut slot = tokio::time::timeout(wait, Arc::clone(&self.sqlite_writer).lock_owned())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "begin transaction: other writes held the SQLite database for {} s",
                    wait.as_secs()
                ))
            })?;
        settle_writer(&mut slot).await;
        if slot.is_none() {
            // A pooled connection has the pragmas; detached, it no longer counts in the pool.
            let conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| StoreError::from_sqlx(e, "open the SQLite writer connection"))?
                .detach();
            *slot = Some(WriterConn {
                conn,
                open: false,
                broken: false,
                turns: 0,
            });
        }
        if let Some(writer) = slot.as_mut() {
            writer.turns += 1;
            if writer.turns >= SQLITE_CHECKPOINT_EVERY {
                writer.turns = 0;
                restart_wal(writer).await;
            }
        }
        OwnedMutexGuard::try_map(slot, Option::as_mut)
            .map(Some)
            .map_err(|_| StoreError::Other("the SQLite writer connection is missing".into()))
    }

    /// One statement in a transaction of its own: on SQLite on the writer connection (see
    /// [`Store::sqlite_writer`]), elsewhere on a pooled one. `fail` classifies its error.
    async fn execute_write<'q>(
        &self,
        query: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
        fail: impl FnOnce(sqlx::Error) -> StoreError,
    ) -> Result<(), StoreError> {
        let result = match self.sqlite_writer().await? {
            Some(mut writer) => {
                let result = query.execute(&mut writer.conn).await.map_err(fail);
                if let Err(StoreError::Unavailable(_)) = &result {
                    writer.broken = true;
                }
                result
            }
            None => query.execute(&self.pool).await.map_err(fail),
        };
        result.map(|_| ())
    }

    /// A read-only transaction over one consistent snapshot.
    async fn begin_read(&self) -> Result<Tx, StoreError> {
        let statement = match self.backend {
            // WAL: the snapshot is fixed by the first read.
            Backend::Sqlite => "BEGIN",
            Backend::Mysql => "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        };
        self.begin_on_a_live_connection(statement)
            .await
            .map(Tx::Pooled)
            .map_err(|e| StoreError::from_sqlx(e, "begin read transaction"))
    }

    /// `statement` on a pooled connection. Connections used in the last [`PING_IDLE_AFTER`] are
    /// not pinged before use, so after a database restart one can be dead: its `BEGIN` fails with
    /// a connection error and the pool drops it. Another is then tried (at most as many times as
    /// the pool has connections, the last attempt opening a fresh one), so a restart under load
    /// does not turn into failed requests.
    async fn begin_on_a_live_connection(
        &self,
        statement: &'static str,
    ) -> Result<Transaction<'static, Any>, sqlx::Error> {
        let attempts = self.pool.options().get_max_connections() + 1;
        let mut attempt = 1;
        loop {
            match self.pool.begin_with(statement).await {
                Err(err) if attempt < attempts && is_dead_connection(&err) => {
                    tracing::debug!(error = %err, attempt, "dead pooled connection; trying another");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Bump the pod's revision: also the lock that serialises writers on the pod.
    async fn lock_pod(&self, tx: &mut Tx, pod: &str) -> Result<(), StoreError> {
        let sql = self.sql("UPDATE pods SET revision = revision + 1 WHERE name = ?");
        let done = sqlx::query(&sql)
            .bind(pod)
            .execute(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "bump pod revision"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("pod {pod}")));
        }
        Ok(())
    }

    /// Lock the `flat6_meta` row, serialising security-group writers.
    async fn lock_groups(&self, tx: &mut Tx) -> Result<(), StoreError> {
        sqlx::query("UPDATE flat6_meta SET groups_revision = groups_revision + 1 WHERE id = 1")
            .execute(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "lock security groups"))?;
        Ok(())
    }

    /// Make sure a host row exists, in its own tiny transaction before the real one: the row is
    /// then only ever locked by revision bumps, in a fixed order. Hosts are never deleted, so a
    /// host left at revision 0 by a failed create is harmless (0 is "nothing for you"). A host
    /// this process has seen a row for needs no statement.
    async fn ensure_host(&self, host: &str) -> Result<(), StoreError> {
        if self.known_hosts().contains(host) {
            return Ok(());
        }
        let sql = match self.backend {
            Backend::Mysql => {
                "INSERT INTO hosts (name, revision) VALUES (?, 0) ON DUPLICATE KEY UPDATE name = name"
            }
            _ => "INSERT INTO hosts (name, revision) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
        };
        let sql = self.sql(sql);
        self.execute_write(sqlx::query(&sql).bind(host), |e| {
            StoreError::from_sqlx(e, "record host")
        })
        .await?;
        let mut hosts = self.known_hosts();
        if hosts.len() >= KNOWN_HOSTS_MAX {
            hosts.clear();
        }
        hosts.insert(host.to_string());
        Ok(())
    }

    fn known_hosts(&self) -> MutexGuard<'_, HashSet<String>> {
        self.known_hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The host and group facts of an instance, for a write that already locked its pod.
    async fn instance_facts(
        &self,
        tx: &mut Tx,
        pod: &str,
        name: &str,
    ) -> Result<InstanceFacts, StoreError> {
        let sql = self.sql(
            "SELECT i.host, (SELECT COUNT(*) FROM instance_groups g \
             WHERE g.pod = i.pod AND g.instance = i.name) \
             FROM instances i WHERE i.pod = ? AND i.name = ?",
        );
        let row = sqlx::query(&sql)
            .bind(pod)
            .bind(name)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read instance"))?
            .ok_or_else(|| StoreError::NotFound(format!("instance {name} in pod {pod}")))?;
        Ok(InstanceFacts {
            host: opt_text(&row, 0)?,
            in_groups: int(&row, 1)? > 0,
        })
    }

    /// End a pod write: run `steps`, bump the host revisions for `facts` (see the module docs)
    /// and commit; roll back when a step fails, with that step's error. On SQLite all of it is
    /// one query of several statements ending in `COMMIT`, one call to the connection's thread
    /// (sqlx's SQLite driver binds the arguments of such a query statement after statement; its
    /// other drivers run one statement per query, and sqlx calls the SQLite behaviour deprecated,
    /// launchbadge/sqlx#3108: should an upgrade drop it, every SQLite store test fails). Elsewhere
    /// one statement at a time.
    async fn close_write(
        &self,
        mut tx: Tx,
        mut steps: Vec<Step<'_>>,
        facts: &InstanceFacts,
        after: Vec<Step<'_>>,
    ) -> Result<(), StoreError> {
        if !matches!(tx, Tx::Writer(_)) {
            let result = async {
                self.run_steps(&mut tx, &steps).await?;
                self.bump_hosts_of(&mut tx, facts).await?;
                self.run_steps(&mut tx, &after).await
            }
            .await;
            return finish(tx, result).await;
        }
        steps.extend(sqlite_host_bump(facts));
        steps.extend(after);
        let mut sql = String::new();
        for step in &steps {
            sql.push_str(step.sql);
            sql.push_str("; ");
        }
        sql.push_str("COMMIT");
        let mut query = sqlx::query(&sql);
        for step in &steps {
            query = step.bind(query);
        }
        // Each statement ends with one result; the error, if any, is that of the next one.
        let mut done = 0;
        let mut results = (&mut *tx).fetch_many(query);
        let failure = loop {
            match results.try_next().await {
                Ok(Some(Either::Left(_))) => done += 1,
                Ok(Some(Either::Right(_))) => {}
                Ok(None) if done == steps.len() + 1 => break None,
                Ok(None) => {
                    break Some(StoreError::Other(format!(
                        "the write ended after {done} of {} statements",
                        steps.len() + 1
                    )));
                }
                Err(e) => {
                    break Some(match steps.get(done) {
                        Some(step) => (step.fail)(e),
                        None => StoreError::from_sqlx(e, "commit"),
                    });
                }
            }
        };
        drop(results);
        if let Some(err) = failure {
            return Err(rollback(tx, err).await);
        }
        if let Tx::Writer(writer) = &mut tx {
            writer.writer.open = false;
        }
        Ok(())
    }

    /// Which of `names` exist as security groups.
    async fn existing_groups(
        &self,
        tx: &mut Tx,
        names: &[String],
    ) -> Result<BTreeSet<String>, StoreError> {
        let sql = self.sql_owned(format!(
            "SELECT name FROM security_groups WHERE name IN ({})",
            placeholders(names.len())
        ));
        let mut query = sqlx::query(&sql);
        for name in names {
            query = query.bind(name.as_str());
        }
        query
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "read security groups"))?
            .iter()
            .map(|r| text(r, 0))
            .collect()
    }

    /// The host bumps for a change to one instance (see the module docs).
    async fn bump_hosts_of(&self, tx: &mut Tx, facts: &InstanceFacts) -> Result<(), StoreError> {
        match &facts.host {
            Some(host) => self.bump_host(tx, host).await,
            None => Ok(()),
        }
    }

    /// Bump one host's revision (recreating its row should someone have removed it by hand).
    async fn bump_host(&self, tx: &mut Tx, host: &str) -> Result<(), StoreError> {
        let sql = self.sql("UPDATE hosts SET revision = revision + 1 WHERE name = ?");
        let done = sqlx::query(&sql)
            .bind(host)
            .execute(&mut **tx)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "bump host revision"))?;
        if done.rows_affected() == 0 {
            // Only if someone removed the row by hand: recreate it rather than lose the bump.
            let sql = self.sql("INSERT INTO hosts (name, revision) VALUES (?, 1)");
            sqlx::query(&sql)
                .bind(host)
                .execute(&mut **tx)
                .await
                .map_err(|e| StoreError::from_sqlx(e, "record host"))?;
        }
        Ok(())
    }

    /// Run `steps` one after the other in `tx` (each with its own error).
    async fn run_steps(&self, tx: &mut Tx, steps: &[Step<'_>]) -> Result<(), StoreError> {
        for step in steps {
            let sql = self.sql(step.sql);
            step.bind(sqlx::query(&sql))
                .execute(&mut **tx)
                .await
                .map_err(&step.fail)?;
        }
        Ok(())
    }

    /// Record a write to an instance in the feed (see `feed::instance_feed_steps`) and bump its
    /// host, for a write that already locked its pod. Run it while the instance is still there.
    async fn record_instance(
        &self,
        tx: &mut Tx,
        pod: &str,
        name: &str,
        facts: &InstanceFacts,
        pod_item: bool,
        members: Members,
    ) -> Result<(), StoreError> {
        let (before, after) = instance_feed_steps(
            pod,
            name,
            pod_item,
            members,
            Groups::bump_if(facts.in_groups),
            facts.host.is_some(),
        );
        self.run_steps(tx, &before).await?;
        self.bump_hosts_of(tx, facts).await?;
        self.run_steps(tx, &after).await
    }

    /// [`Store::record_instance`] for a move, whose groups and hosts are bumped already: the
    /// port item and the member items only.
    async fn record_moved(
        &self,
        tx: &mut Tx,
        pod: &str,
        name: &str,
        facts: &InstanceFacts,
        members: Members,
    ) -> Result<(), StoreError> {
        let groups = if facts.in_groups {
            Groups::Bumped
        } else {
            Groups::None
        };
        let (before, after) =
            instance_feed_steps(pod, name, false, members, groups, facts.host.is_some());
        self.run_steps(tx, &after).await?;
        self.run_steps(tx, &before).await?;
        Ok(())
    }
}

/// A value bound to a [`Step`].
enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
}

/// One statement that ends a pod write (see [`Store::close_write`]), with what its failure
/// means.
struct Step<'a> {
    sql: &'static str,
    args: Vec<Arg>,
    fail: Box<dyn Fn(sqlx::Error) -> StoreError + Send + Sync + 'a>,
}

impl Step<'_> {
    /// Bind this step's arguments to `query`, after those already bound.
    fn bind<'q>(
        &'q self,
        mut query: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
        for arg in &self.args {
            query = match arg {
                Arg::Text(text) => query.bind(text.as_deref()),
                Arg::Int(int) => query.bind(*int),
            };
        }
        query
    }
}

/// Hand `address` in `pod` to `instance`. `Conflict(Address)` when the pod already uses it.
fn address_step(pod: &str, instance: &str, address: Ipv6Addr) -> Step<'static> {
    let pod_name = pod.to_string();
    Step {
        sql: "INSERT INTO addresses (pod, address, instance) VALUES (?, ?, ?)",
        args: vec![
            Arg::Text(Some(pod.to_string())),
            Arg::Text(Some(address_key(address))),
            Arg::Text(Some(instance.to_string())),
        ],
        fail: Box::new(move |e| match error::unique_key(&e) {
            Some(_) => StoreError::conflict(
                ConflictOn::Address,
                format!("address {address} is already assigned in pod {pod_name}"),
            ),
            None => StoreError::from_sqlx(e, "insert address"),
        }),
    }
}

/// SQLite's host bumps for a change to an instance: [`Store::bump_hosts_of`] as one statement
/// (an upsert where the other backends update and insert only if no row was updated).
fn sqlite_host_bump(facts: &InstanceFacts) -> Option<Step<'static>> {
    facts.host.as_ref().map(|host| Step {
        sql: "INSERT INTO hosts (name, revision) VALUES (?, 1) \
              ON CONFLICT (name) DO UPDATE SET revision = revision + 1",
        args: vec![Arg::Text(Some(host.clone()))],
        fail: Box::new(|e| StoreError::from_sqlx(e, "bump host revision")),
    })
}

async fn commit(tx: Tx) -> Result<(), StoreError> {
    match tx {
        Tx::Pooled(tx) => tx
            .commit()
            .await
            .map_err(|e| StoreError::from_sqlx(e, "commit")),
        Tx::Writer(mut tx) => match sqlx::query("COMMIT").execute(&mut tx.writer.conn).await {
            Ok(_) => {
                tx.writer.open = false;
                Ok(())
            }
            Err(e) => Err(rollback(Tx::Writer(tx), StoreError::from_sqlx(e, "commit")).await),
        },
    }
}

/// Roll back now rather than when the connection is next used: the pod lock (and on SQLite the
/// writer turn) is free for the next write, typically the caller's retry, once this returns.
/// Returns `err`; a failed rollback adds nothing to it (the connection is then dropped). After an
/// `Unavailable` error the SQLite writer connection is replaced, in case a new one fares better.
async fn rollback(tx: Tx, err: StoreError) -> StoreError {
    match tx {
        Tx::Pooled(tx) => {
            let _ = tx.rollback().await;
        }
        Tx::Writer(mut tx) => {
            if matches!(err, StoreError::Unavailable(_)) {
                tx.writer.broken = true;
            }
            roll_back_writer(&mut tx.writer).await;
        }
    }
    err
}

/// Roll back the writer's open transaction, if any; when that fails, mark the connection broken
/// (it is closed when the writer is next taken, which rolls back whatever it held).
async fn roll_back_writer(writer: &mut WriterConn) {
    if writer.open {
        writer.open = false;
        if let Err(err) = sqlx::query("ROLLBACK").execute(&mut writer.conn).await {
            tracing::warn!(error = %err, "SQLite writer connection: rollback failed; reopening");
            writer.broken = true;
        }
    }
}

/// Commit when `result` is a success, roll back otherwise.
async fn finish<T>(tx: Tx, result: Result<T, StoreError>) -> Result<T, StoreError> {
    match result {
        Ok(value) => commit(tx).await.map(|()| value),
        Err(err) => Err(rollback(tx, err).await),
    }
}

/// A pod from the columns `prefix, instance_prefix_length, exclude, revision` (0 to 3) of `row`.
fn pod_from_row(name: &str, row: &AnyRow) -> Result<PodRow, StoreError> {
    let prefix = text(row, 0)?
        .parse()
        .map_err(|e| StoreError::Other(format!("stored prefix of pod {name}: {e}")))?;
    let length = int(row, 1)?;
    let exclude = serde_json::from_str(&text(row, 2)?)
        .map_err(|e| StoreError::Other(format!("stored exclude list of pod {name}: {e}")))?;
    Ok(PodRow {
        name: name.to_string(),
        prefix,
        instance_prefix_length: u8::try_from(length)
            .map_err(|_| StoreError::Other(format!("stored instance prefix length {length}")))?,
        exclude,
        revision: revision(int(row, 3)?)?,
    })
}

/// Names the columns would refuse (MySQL) or should (SQLite).
fn check_instance_names(inst: &NewInstance) -> Result<(), StoreError> {
    check_name("instance", &inst.name)?;
    for (kind, value) in [("host", &inst.host), ("port", &inst.port)] {
        if let Some(value) = value {
            check_name(kind, value)?;
        }
    }
    for group in &inst.security_groups {
        check_name("security group", group)?;
    }
    Ok(())
}

impl PodWrite<'_> {
    /// The pod, as read under the lock (its revision already bumped by this write).
    pub fn pod(&self) -> &PodRow {
        &self.pod
    }

    /// The own prefix (/64) of the instance an address write is for; `None` in a shared-range
    /// pod and for an instance write.
    pub fn instance_prefix(&self) -> Option<Ipv6Net> {
        self.instance.as_ref().and_then(|slot| slot.prefix)
    }

    /// [`Store::used_addresses`] under this write's lock.
    pub async fn used_addresses(&mut self, within: Ipv6Net) -> Result<Vec<Ipv6Addr>, StoreError> {
        self.store
            .used_addresses_on(&mut *self.tx, &self.pod.name, within)
            .await
    }

    /// [`Store::used_prefixes`] under this write's lock.
    pub async fn used_prefixes(&mut self) -> Result<Vec<Ipv6Net>, StoreError> {
        self.store
            .used_prefixes_on(&mut *self.tx, &self.pod.name)
            .await
    }

    /// The index of the first of `names` that is not a security group, if any. No statement for
    /// an empty list.
    pub async fn missing_group(&mut self, names: &[String]) -> Result<Option<usize>, StoreError> {
        if names.is_empty() {
            return Ok(None);
        }
        let unique: Vec<String> = names
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let found = self.store.existing_groups(&mut self.tx, &unique).await?;
        Ok(names.iter().position(|name| !found.contains(name)))
    }

    /// Hand `address` to the instance this write was begun for, bump the revisions and commit.
    /// `Conflict(Address)` when the pod already uses it.
    pub async fn add_address(self, address: Ipv6Addr) -> Result<(), StoreError> {
        let PodWrite {
            store,
            tx,
            pod,
            instance,
            ..
        } = self;
        let Some(slot) = instance else {
            let err = StoreError::Other("add_address on a write not begun for an instance".into());
            return Err(rollback(tx, err).await);
        };
        let mut steps = vec![address_step(&pod.name, &slot.name, address)];
        steps.extend(blocks::count_steps(
            store.backend,
            &pod,
            None,
            &[address],
            1,
        ));
        let (before, after) = instance_feed_steps(
            &pod.name,
            &slot.name,
            true,
            Members::One(address),
            Groups::bump_if(slot.facts.in_groups),
            slot.facts.host.is_some(),
        );
        steps.extend(before);
        store.close_write(tx, steps, &slot.facts, after).await
    }

    /// Create an instance with its prefix (per-instance pods) and first address, its group
    /// memberships and the revision bumps, and commit. Its host must be the one the write was
    /// begun for; its groups should have been checked with [`PodWrite::missing_group`] (a group
    /// that does not exist fails its foreign key: `Conflict(Other)`).
    ///
    /// `Conflict` with `what` = `Name`, `Mac`, `Prefix`, `Address` (begin a new write and retry
    /// with a new random choice for those two) or `Other` (port already used on the host).
    pub async fn create_instance(
        self,
        inst: &NewInstance,
        prefix: Option<Ipv6Net>,
        first_address: Ipv6Addr,
    ) -> Result<InstanceRow, StoreError> {
        let PodWrite {
            store,
            tx,
            pod,
            host,
            ..
        } = self;
        let counts = blocks::count_steps(store.backend, &pod, prefix, &[first_address], 1);
        let pod = pod.name.as_str();
        if let Err(err) = check_instance_names(inst) {
            return Err(rollback(tx, err).await);
        }
        if inst.host != host {
            let err = StoreError::Other(format!(
                "instance {} is on host {:?}, the write was begun for host {host:?}",
                inst.name, inst.host
            ));
            return Err(rollback(tx, err).await);
        }
        let groups: Vec<String> = inst
            .security_groups
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let text = |value: &str| Arg::Text(Some(value.to_string()));
        let mut steps = vec![
            Step {
                sql: "INSERT INTO instances (pod, name, mac, host, port, prefix, prefix_len) \
                      VALUES (?, ?, ?, ?, ?, ?, ?)",
                args: vec![
                    text(pod),
                    text(&inst.name),
                    Arg::Text(Some(inst.mac.to_string())),
                    Arg::Text(inst.host.clone()),
                    Arg::Text(inst.port.clone()),
                    Arg::Text(prefix.map(|p| address_key(p.network()))),
                    Arg::Int(prefix.map(|p| i64::from(p.prefix_len()))),
                ],
                fail: Box::new(|e| match error::unique_key(&e) {
                    Some(key) => instance_conflict(&key, pod, inst, prefix),
                    None => StoreError::from_sqlx(e, "insert instance"),
                }),
            },
            address_step(pod, &inst.name, first_address),
        ];
        steps.extend(counts);
        for group in &groups {
            steps.push(Step {
                sql: "INSERT INTO instance_groups (pod, instance, group_name) VALUES (?, ?, ?)",
                args: vec![text(pod), text(&inst.name), text(group)],
                fail: Box::new(|e| StoreError::from_sqlx(e, "insert group membership")),
            });
        }
        let facts = InstanceFacts {
            host: inst.host.clone(),
            in_groups: !groups.is_empty(),
        };
        let (before, after) = instance_feed_steps(
            pod,
            &inst.name,
            true,
            Members::One(first_address),
            Groups::bump_if(facts.in_groups),
            inst.port.is_some(),
        );
        steps.extend(before);
        store.close_write(tx, steps, &facts, after).await?;
        Ok(InstanceRow {
            name: inst.name.clone(),
            mac: inst.mac,
            host: inst.host.clone(),
            port: inst.port.clone(),
            prefix,
            addresses: vec![first_address],
            security_groups: groups,
        })
    }
}

/// `sqlite://path` → the same with `mode=rwc`, so a missing file is created.
fn sqlite_create_url(url: &str) -> String {
    if url.contains(":memory:") || url.contains("mode=") {
        return url.to_string();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}mode=rwc")
}

/// Which unique rule of `instances` a violation names. The key text is PostgreSQL's constraint
/// name (`uq_instances_mac`), MySQL's key name (`PRIMARY`, `uq_instances_mac`) or SQLite's column
/// list (`instances.pod, instances.mac`).
fn instance_conflict(
    key: &str,
    pod: &str,
    inst: &NewInstance,
    prefix: Option<Ipv6Net>,
) -> StoreError {
    let key = key.to_ascii_lowercase();
    if key.contains("mac") {
        StoreError::conflict(
            ConflictOn::Mac,
            format!("MAC {} is already used in pod {pod}", inst.mac),
        )
    } else if key.contains("prefix") {
        let prefix = prefix.map_or_else(|| "?".to_string(), |p| p.to_string());
        StoreError::conflict(
            ConflictOn::Prefix,
            format!("prefix {prefix} is already assigned in pod {pod}"),
        )
    } else if key.contains("port") {
        StoreError::conflict(
            ConflictOn::Other,
            format!(
                "port {} is already used on host {}",
                inst.port.as_deref().unwrap_or("?"),
                inst.host.as_deref().unwrap_or("?")
            ),
        )
    } else {
        StoreError::conflict(
            ConflictOn::Name,
            format!("instance {} already exists in pod {pod}", inst.name),
        )
    }
}

/// The groups named by `remote_group` in a rules JSON array, sorted.
fn remote_groups(group: &str, rules_json: &str) -> Result<BTreeSet<String>, StoreError> {
    let rules: Vec<serde_json::Value> = serde_json::from_str(rules_json).map_err(|e| {
        StoreError::Other(format!(
            "rules of security group {group} are not a JSON array: {e}"
        ))
    })?;
    let mut out = BTreeSet::new();
    for rule in &rules {
        if let Some(name) = rule.get("remote_group").and_then(|v| v.as_str()) {
            check_name("remote security group", name)?;
            out.insert(name.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod pure_tests {
    use super::*;

    #[test]
    fn backends_from_url_schemes() {
        assert_eq!(Backend::from_url("sqlite:///tmp/x.db"), Ok(Backend::Sqlite));
        assert_eq!(Backend::from_url("mariadb://h/db"), Ok(Backend::Mysql));
        assert_eq!(
            Backend::from_url("postgresql://u:p@h/db"),
            Ok(Backend::Postgres)
        );
        let err = Backend::from_url("redis://u:secret@h").expect_err("unsupported");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn sqlite_urls_create_missing_files() {
        assert_eq!(
            sqlite_create_url("sqlite:///a/b.db"),
            "sqlite:///a/b.db?mode=rwc"
        );
        assert_eq!(
            sqlite_create_url("sqlite:///a/b.db?cache=shared"),
            "sqlite:///a/b.db?cache=shared&mode=rwc"
        );
        assert_eq!(sqlite_create_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn instance_conflicts_from_each_backend_key_text() {
        let inst = NewInstance {
            name: "vm-mac".into(), // a name containing "mac" must not confuse MySQL's message
            mac: Mac([2, 0, 0, 0, 0, 1]),
            host: Some("h1".into()),
            port: Some("tap1".into()),
            security_groups: vec![],
        };
        let what = |key: &str| match instance_conflict(key, "p", &inst, None) {
            StoreError::Conflict { what, .. } => what,
            other => panic!("{other:?}"),
        };
        assert_eq!(what("instances.pod, instances.mac"), ConflictOn::Mac);
        assert_eq!(what("'uq_instances_mac'"), ConflictOn::Mac);
        assert_eq!(what("instances.pod, instances.prefix"), ConflictOn::Prefix);
        assert_eq!(what("uq_instances_prefix"), ConflictOn::Prefix);
        assert_eq!(what("instances.host, instances.port"), ConflictOn::Other);
        assert_eq!(what("instances.pod, instances.name"), ConflictOn::Name);
        assert_eq!(what("'PRIMARY'"), ConflictOn::Name);
        assert_eq!(what("pk_instances"), ConflictOn::Name);
    }

    #[test]
    fn remote_groups_are_collected() {
        let refs = remote_groups(
            "web",
            r#"[{"direction":"in","remote_group":"db"},{"remote_prefix":"::/0"},{"remote_group":"web"}]"#,
        )
        .expect("refs");
        assert_eq!(refs.into_iter().collect::<Vec<_>>(), ["db", "web"]);
        assert!(matches!(
            remote_groups("web", "{}"),
            Err(StoreError::Other(_))
        ));
    }
}
