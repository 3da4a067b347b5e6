//! The tables, written once with per-backend column types, and the migration that creates them.
//!
//! Migration is `CREATE TABLE IF NOT EXISTS` (and `CREATE INDEX IF NOT EXISTS`) under a lock, so
//! any number of controllers may start at once against the same database:
//! - SQLite: one `BEGIN IMMEDIATE` transaction (SQLite DDL is transactional);
//! - PostgreSQL: one transaction holding `pg_advisory_xact_lock` (concurrent `CREATE TABLE IF NOT
//!   EXISTS` can otherwise fail on PostgreSQL's catalog unique index);
//! - MySQL/MariaDB: DDL commits implicitly, so the statements run under `GET_LOCK`; indexes are
//!   declared inside `CREATE TABLE` because MySQL has no `CREATE INDEX IF NOT EXISTS`.
//!
//! `flat6_meta` holds the schema version (a newer database than this binary understands is
//! refused) and `groups_revision`, the row every security-group write locks first so that group
//! writes never deadlock each other.

use sqlx::{AnyConnection, AnyPool};

use super::{Backend, StoreError};

/// The schema this code reads and writes.
/// 2: the change feed (`feed_changes`, `feed_keys`), the cluster identity (`flat6_cluster`) and
/// the allocation counts (`alloc_blocks`).
pub(super) const SCHEMA_VERSION: i64 = 2;

/// Any number identifying flat6's migration lock (PostgreSQL advisory locks are integers).
const PG_LOCK_KEY: i64 = 0x0066_6c61_7436; // "flat6"

struct Table {
    name: &'static str,
    /// Column and constraint lines; `$NAME`, `$KEY`, `$TEXT` are replaced per backend.
    body: &'static str,
    /// Secondary (non-unique) indexes: name, columns.
    indexes: &'static [(&'static str, &'static str)],
}

/// Names are VARCHAR(64), addresses and prefixes `$KEY` (32 hex digits, see `columns.rs`), every
/// integer BIGINT (revisions, lengths). Constraint names carry the column they protect: the
/// PostgreSQL and MySQL unique-violation errors name the constraint, and the store turns that into
/// [`super::ConflictOn`]. `instances.host` deliberately has no foreign key to `hosts`: the key check's
/// shared lock on the host row followed by the revision bump's exclusive lock would let two
/// instance creations on one host deadlock in InnoDB.
const TABLES: &[Table] = &[
    Table {
        name: "flat6_meta",
        body: "id BIGINT NOT NULL,
  schema_version BIGINT NOT NULL,
  groups_revision BIGINT NOT NULL,
  CONSTRAINT pk_flat6_meta PRIMARY KEY (id)",
        indexes: &[],
    },
    Table {
        name: "pods",
        body: "name $NAME NOT NULL,
  prefix VARCHAR(64) NOT NULL,
  instance_prefix_length BIGINT NOT NULL,
  exclude $TEXT NOT NULL,
  revision BIGINT NOT NULL,
  CONSTRAINT pk_pods PRIMARY KEY (name)",
        indexes: &[],
    },
    Table {
        name: "hosts",
        body: "name $NAME NOT NULL,
  revision BIGINT NOT NULL,
  CONSTRAINT pk_hosts PRIMARY KEY (name)",
        indexes: &[],
    },
    Table {
        name: "security_groups",
        body: "name $NAME NOT NULL,
  rules $TEXT NOT NULL,
  CONSTRAINT pk_security_groups PRIMARY KEY (name)",
        indexes: &[],
    },
    Table {
        // Which groups the rules of a group name (remote_group), kept for delete checks and for
        // collecting the groups a host needs.
        name: "group_refs",
        body: "group_name $NAME NOT NULL,
  ref_name $NAME NOT NULL,
  CONSTRAINT pk_group_refs PRIMARY KEY (group_name, ref_name),
  CONSTRAINT fk_group_refs_group FOREIGN KEY (group_name) REFERENCES security_groups (name),
  CONSTRAINT fk_group_refs_ref FOREIGN KEY (ref_name) REFERENCES security_groups (name)",
        indexes: &[("ix_group_refs_ref", "ref_name")],
    },
    Table {
        name: "instances",
        body: "pod $NAME NOT NULL,
  name $NAME NOT NULL,
  mac VARCHAR(17) NOT NULL,
  host $NAME NULL,
  port $NAME NULL,
  prefix $KEY NULL,
  prefix_len BIGINT NULL,
  CONSTRAINT pk_instances PRIMARY KEY (pod, name),
  CONSTRAINT uq_instances_mac UNIQUE (pod, mac),
  CONSTRAINT uq_instances_prefix UNIQUE (pod, prefix),
  CONSTRAINT uq_instances_port UNIQUE (host, port),
  CONSTRAINT fk_instances_pod FOREIGN KEY (pod) REFERENCES pods (name)",
        indexes: &[],
    },
    Table {
        name: "addresses",
        body: "pod $NAME NOT NULL,
  address $KEY NOT NULL,
  instance $NAME NOT NULL,
  CONSTRAINT pk_addresses PRIMARY KEY (pod, address),
  CONSTRAINT fk_addresses_instance FOREIGN KEY (pod, instance) REFERENCES instances (pod, name)",
        // (pod, instance) alone lets SQLite pick the primary key's (pod) prefix and scan every
        // address of the pod; with the address in the index the lookup is covering.
        indexes: &[("ix_addresses_instance", "pod, instance, address")],
    },
    Table {
        name: "instance_groups",
        body: "pod $NAME NOT NULL,
  instance $NAME NOT NULL,
  group_name $NAME NOT NULL,
  CONSTRAINT pk_instance_groups PRIMARY KEY (pod, instance, group_name),
  CONSTRAINT fk_instance_groups_instance FOREIGN KEY (pod, instance) REFERENCES instances (pod, name),
  CONSTRAINT fk_instance_groups_group FOREIGN KEY (group_name) REFERENCES security_groups (name)",
        indexes: &[("ix_instance_groups_group", "group_name")],
    },
    Table {
        // The change feed: which item of which document changed at which revision of it (see
        // `store/feed.rs`). `kind` is `p` (a pod's reservations; item: MAC), `h` (a host's
        // ports; item: interface) or `g` (a security group; item: a member address key, or ''
        // for its rules). Only the item is recorded: an answer reads its current state.
        name: "feed_changes",
        body: "$ID,
  kind VARCHAR(1) NOT NULL,
  name $NAME NOT NULL,
  revision BIGINT NOT NULL,
  item VARCHAR(64) NOT NULL",
        indexes: &[("ix_feed_changes_key", "kind, name, revision")],
    },
    Table {
        // Per feed: the revision of a group (pods and hosts keep theirs in their own rows) and
        // the floor, the highest revision whose changes were compacted away: a follower behind
        // it gets a snapshot.
        name: "feed_keys",
        body: "kind VARCHAR(1) NOT NULL,
  name $NAME NOT NULL,
  revision BIGINT NOT NULL,
  floor BIGINT NOT NULL,
  CONSTRAINT pk_feed_keys PRIMARY KEY (kind, name)",
        indexes: &[],
    },
    Table {
        // How many values of each block of a pod's dense range are used (`allocate::Dense`):
        // `scope` is `p` (the pod's /64s) or `a` (the addresses of a shared range).
        name: "alloc_blocks",
        body: "pod $NAME NOT NULL,
  scope VARCHAR(1) NOT NULL,
  block BIGINT NOT NULL,
  used BIGINT NOT NULL,
  CONSTRAINT pk_alloc_blocks PRIMARY KEY (pod, scope, block)",
        indexes: &[],
    },
    Table {
        // The database's identity, made once: agents resume a revision only against the same one.
        name: "flat6_cluster",
        body: "id BIGINT NOT NULL,
  cluster_id VARCHAR(64) NOT NULL,
  CONSTRAINT pk_flat6_cluster PRIMARY KEY (id)",
        indexes: &[],
    },
];

/// Indexes added to tables of schema 1 (created with the table on a new database; MySQL, which
/// has no `CREATE INDEX IF NOT EXISTS`, gets them inline in a new table only).
const ADDED_INDEXES: &[(&str, &str, &str)] = &[
    // A group member by address, for the group feed's membership reads.
    (
        "addresses",
        "ix_addresses_address",
        "address, pod, instance",
    ),
];

fn expand(body: &str, backend: Backend) -> String {
    let (key, text, id) = match backend {
        Backend::Sqlite => (
            "VARCHAR(32)",
            "TEXT",
            "id INTEGER PRIMARY KEY AUTOINCREMENT",
        ),
        // Byte order, whatever the database's default collation.
        Backend::Postgres => (
            "VARCHAR(32) COLLATE \"C\"",
            "TEXT",
            "id BIGSERIAL PRIMARY KEY",
        ),
        Backend::Mysql => (
            "VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin",
            "MEDIUMTEXT",
            "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
        ),
    };
    body.replace("$NAME", "VARCHAR(64)")
        .replace("$KEY", key)
        .replace("$TEXT", text)
        .replace("$ID", id)
}

/// Every statement of the migration, in order.
pub(super) fn statements(backend: Backend) -> Vec<String> {
    let mut out = Vec::new();
    for table in TABLES {
        let body = expand(table.body, backend);
        let added = ADDED_INDEXES
            .iter()
            .filter(|(t, _, _)| *t == table.name)
            .map(|(_, name, columns)| (*name, *columns));
        let all_indexes: Vec<(&str, &str)> = table.indexes.iter().copied().chain(added).collect();
        if backend == Backend::Mysql {
            let indexes: String = all_indexes
                .iter()
                .map(|(name, columns)| format!(",\n  INDEX {name} ({columns})"))
                .collect();
            // utf8mb4_bin: names compare byte for byte, as on SQLite and PostgreSQL.
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  {body}{indexes}\n) \
                 ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
                table.name
            ));
        } else {
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {} (\n  {body}\n)",
                table.name
            ));
            for (name, columns) in &all_indexes {
                out.push(format!(
                    "CREATE INDEX IF NOT EXISTS {name} ON {} ({columns})",
                    table.name
                ));
            }
        }
    }
    let meta = format!(
        "INTO flat6_meta (id, schema_version, groups_revision) VALUES (1, {SCHEMA_VERSION}, 0)"
    );
    out.push(match backend {
        Backend::Mysql => format!("INSERT IGNORE {meta}"),
        _ => format!("INSERT {meta} ON CONFLICT (id) DO NOTHING"),
    });
    let cluster = format!(
        "INTO flat6_cluster (id, cluster_id) VALUES (1, '{:016x}{:016x}')",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    out.push(match backend {
        Backend::Mysql => format!("INSERT IGNORE {cluster}"),
        _ => format!("INSERT {cluster} ON CONFLICT (id) DO NOTHING"),
    });
    // Groups of a schema-1 database get their feed row.
    out.push(
        "INSERT INTO feed_keys (kind, name, revision, floor) \
         SELECT 'g', s.name, 1, 0 FROM security_groups s WHERE NOT EXISTS \
         (SELECT 1 FROM feed_keys k WHERE k.kind = 'g' AND k.name = s.name)"
            .to_string(),
    );
    out.push(format!(
        "UPDATE flat6_meta SET schema_version = {SCHEMA_VERSION} WHERE id = 1 AND schema_version < {SCHEMA_VERSION}"
    ));
    out
}

/// Create whatever is missing; refuse a database whose schema is newer than this code.
pub(super) async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    let fail = |e| StoreError::from_sqlx(e, "create the schema");
    match backend {
        Backend::Sqlite | Backend::Postgres => {
            let mut tx = match backend {
                Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
                _ => pool.begin().await,
            }
            .map_err(fail)?;
            if backend == Backend::Postgres {
                sqlx::query(&format!("SELECT pg_advisory_xact_lock({PG_LOCK_KEY})"))
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
            }
            run(&mut tx, backend).await?;
            tx.commit().await.map_err(fail)
        }
        Backend::Mysql => {
            let mut conn = pool.acquire().await.map_err(fail)?;
            let result = mysql_locked(&mut conn, backend).await;
            if result.is_err() {
                // The named lock belongs to the session: never hand this one back to the pool.
                conn.close_on_drop();
            }
            result
        }
    }
}

async fn mysql_locked(conn: &mut AnyConnection, backend: Backend) -> Result<(), StoreError> {
    let fail = |e| StoreError::from_sqlx(e, "create the schema");
    // Returns 0 after the timeout; the DDL is idempotent, so carrying on is still safe.
    sqlx::query("SELECT GET_LOCK('flat6_schema', 60)")
        .execute(&mut *conn)
        .await
        .map_err(fail)?;
    run(conn, backend).await?;
    sqlx::query("SELECT RELEASE_LOCK('flat6_schema')")
        .execute(&mut *conn)
        .await
        .map_err(fail)?;
    Ok(())
}

async fn run(conn: &mut AnyConnection, backend: Backend) -> Result<(), StoreError> {
    for statement in statements(backend) {
        sqlx::query(&statement)
            .persistent(false)
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::from_sqlx(e, "create the schema"))?;
    }
    let row = sqlx::query("SELECT schema_version FROM flat6_meta WHERE id = 1")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| StoreError::from_sqlx(e, "read the schema version"))?;
    let version = super::columns::int(&row, 0)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Other(format!(
            "the database schema is version {version}, newer than this flat6 understands \
             ({SCHEMA_VERSION}); upgrade flat6"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_declares_indexes_inline_and_others_separately() {
        let my = statements(Backend::Mysql);
        assert_eq!(my.len(), TABLES.len() + 4);
        assert!(
            my.iter()
                .any(|s| s.contains("INDEX ix_addresses_instance (pod, instance, address)"))
        );
        assert!(my.iter().all(|s| !s.contains('$')));
        let pg = statements(Backend::Postgres);
        assert!(
            pg.contains(
                &"CREATE INDEX IF NOT EXISTS ix_addresses_instance ON addresses (pod, instance, address)"
                    .to_string()
            )
        );
        assert!(pg.iter().any(|s| s.contains("COLLATE \"C\"")));
        let sqlite = statements(Backend::Sqlite);
        assert!(
            sqlite
                .iter()
                .any(|s| s.starts_with("INSERT INTO flat6_meta")
                    && s.ends_with("ON CONFLICT (id) DO NOTHING"))
        );
        assert!(
            sqlite
                .iter()
                .any(|s| s.contains("id INTEGER PRIMARY KEY AUTOINCREMENT"))
        );
        assert!(
            sqlite
                .last()
                .is_some_and(|s| s.starts_with("UPDATE flat6_meta SET schema_version = 2"))
        );
    }
}
