//! What can go wrong in the store, sorted the way the HTTP layer answers it.

use sqlx::error::DatabaseError;

/// Why a store operation failed.
///
/// The HTTP layer maps the variants one to one: `Unavailable` → 503, `Conflict` → 409,
/// `NotFound` → 404, `Other` → 500. Every message says what it was about; none contains the
/// database URL (which may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or cannot serve right now: connection refused or lost, no
    /// pooled connection within the acquire timeout, server shutting down, too many connections,
    /// lock wait timeout or deadlock. The request may succeed when retried later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule would be broken (or a row is still in use). `what` tells a caller that
    /// chose a random prefix or address ([`ConflictOn::Prefix`], [`ConflictOn::Address`]) that a
    /// new random choice may succeed.
    #[error("{message}")]
    Conflict {
        /// Which rule collided.
        what: ConflictOn,
        /// Names the colliding value, e.g. `address 2001:db8::5 is already assigned in pod p1`.
        message: String,
    },
    /// The named thing does not exist; the text names it (`pod p1`, `instance vm1 in pod p1`).
    #[error("{0} not found")]
    NotFound(String),
    /// Anything else: a bug, a schema mismatch, unreadable stored data.
    #[error("database error: {0}")]
    Other(String),
}

/// Which uniqueness rule a [`StoreError::Conflict`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConflictOn {
    /// A pod or instance name that already exists (instance names are unique per pod).
    Name,
    /// A MAC already used by another instance of the pod.
    Mac,
    /// An instance prefix (/64) already handed to another instance of the pod.
    Prefix,
    /// An address already handed out in the pod.
    Address,
    /// Anything else: a port name already used on the host, a group still in use, a pod that
    /// still has instances.
    Other,
}

impl StoreError {
    pub(super) fn conflict(what: ConflictOn, message: impl Into<String>) -> Self {
        StoreError::Conflict {
            what,
            message: message.into(),
        }
    }

    /// Classify a sqlx error; `doing` says what the store was doing (`insert instance`).
    pub(super) fn from_sqlx(err: sqlx::Error, doing: &str) -> Self {
        use sqlx::Error as E;
        match &err {
            E::PoolTimedOut => StoreError::Unavailable(format!(
                "{doing}: no database connection within the acquire timeout \
                 (the server is down, unreachable or overloaded)"
            )),
            E::Io(_) | E::PoolClosed | E::WorkerCrashed | E::Tls(_) | E::Protocol(_) => {
                StoreError::Unavailable(format!("{doing}: {err}"))
            }
            E::Database(db) if is_unavailable(db.as_ref()) => {
                StoreError::Unavailable(format!("{doing}: {}", db.message()))
            }
            E::Database(db) if db.is_unique_violation() || db.is_foreign_key_violation() => {
                StoreError::conflict(ConflictOn::Other, format!("{doing}: {}", db.message()))
            }
            _ => StoreError::Other(format!("{doing}: {err}")),
        }
    }
}

/// Errors a retry later can cure, by backend.
fn is_unavailable(db: &dyn DatabaseError) -> bool {
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // 1040 too many connections, 1053 server shutdown, 1205 lock wait timeout, 1213 deadlock,
        // 1317 query interrupted, 1927 connection killed, 2006/2013 server gone / lost.
        return matches!(
            my.number(),
            1040 | 1053 | 1205 | 1213 | 1317 | 1927 | 2006 | 2013
        ) || my.code().is_some_and(|state| state.starts_with("08"));
    }
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        // 08 connection exception, 53 insufficient resources, 57P admin/crash shutdown,
        // 40001 serialization failure, 40P01 deadlock, 55P03 lock not available.
        let code = pg.code();
        return ["08", "53", "57P", "40001", "40P01", "55P03"]
            .iter()
            .any(|p| code.starts_with(p));
    }
    if let Some(lite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        // Primary result codes: 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL, 14 CANTOPEN.
        let code = lite
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .unwrap_or_default();
        return matches!(code & 0xff, 5 | 6 | 10 | 13 | 14);
    }
    false
}

/// The unique index a unique-violation error names (PostgreSQL's constraint name, MySQL's
/// "for key '…'", SQLite's "table.column, …"), or `None` for any other error.
pub(super) fn unique_key(err: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    if !db.is_unique_violation() {
        return None;
    }
    if let Some(name) = db.constraint() {
        return Some(name.to_string());
    }
    let message = db.message();
    // The key part only: MySQL's message also quotes the duplicate value, which is user text.
    let key = message
        .rsplit_once("for key ")
        .or_else(|| message.rsplit_once("failed: "))
        .map_or(message, |(_, key)| key);
    Some(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_thing() {
        assert_eq!(
            StoreError::NotFound("pod p1".into()).to_string(),
            "pod p1 not found"
        );
        assert_eq!(
            StoreError::conflict(ConflictOn::Mac, "MAC 02:00:00:00:00:01 is used").to_string(),
            "MAC 02:00:00:00:00:01 is used"
        );
    }

    #[test]
    fn pool_errors_are_unavailable() {
        for err in [sqlx::Error::PoolTimedOut, sqlx::Error::PoolClosed] {
            assert!(matches!(
                StoreError::from_sqlx(err, "x"),
                StoreError::Unavailable(_)
            ));
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            StoreError::from_sqlx(sqlx::Error::Io(refused), "connect"),
            StoreError::Unavailable(m) if m.starts_with("connect: ")
        ));
        assert!(matches!(
            StoreError::from_sqlx(sqlx::Error::RowNotFound, "x"),
            StoreError::Other(_)
        ));
    }
}
