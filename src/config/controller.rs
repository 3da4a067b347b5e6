//! `role = "controller"`: address management, security groups, the API and the agents' watches.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::problems::Checker;

/// A validated controller config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// The database URL (`sqlite://…`, `mysql://…`, `postgres://…`).
    pub database: String,
    /// Which backend the URL selects.
    pub database_kind: DatabaseKind,
    /// File with the admin bearer token (full API).
    pub admin_token_file: PathBuf,
    /// File with the agent bearer token (read-only watches).
    pub agent_token_file: PathBuf,
    /// Serve HTTPS with this certificate chain and private key (PEM files), instead of HTTP.
    pub tls: Option<TlsFiles>,
    /// The most watches that may wait at once on this controller; more are answered 503 with
    /// `Retry-After`.
    pub max_watches: usize,
    /// How many change-feed rows the database keeps (for all pods, hosts and groups); a follower
    /// further behind gets a snapshot.
    pub feed_history: u64,
}

/// Default of `max_watches`.
pub const DEFAULT_MAX_WATCHES: usize = 20_000;
/// Default of `feed_history`.
pub const DEFAULT_FEED_HISTORY: u64 = 500_000;

/// The PEM files of an HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate, followed by any intermediates.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The SQL backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// Embedded SQLite (one controller).
    Sqlite,
    /// MySQL or MariaDB (shared by several controllers).
    Mysql,
    /// PostgreSQL (shared by several controllers).
    Postgres,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControllerFile {
    #[allow(dead_code)]
    role: String,
    listen: Option<String>,
    database: Option<String>,
    admin_token_file: Option<String>,
    agent_token_file: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    max_watches: Option<usize>,
    feed_history: Option<u64>,
}

fn database_kind(url: &str) -> Option<DatabaseKind> {
    let scheme = url.split_once("://")?.0;
    match scheme {
        "sqlite" => Some(DatabaseKind::Sqlite),
        "mysql" | "mariadb" => Some(DatabaseKind::Mysql),
        "postgres" | "postgresql" => Some(DatabaseKind::Postgres),
        _ => None,
    }
}

impl ControllerFile {
    pub(crate) fn validate(self, check: &mut Checker) -> Option<ControllerConfig> {
        let listen_text = self.listen.unwrap_or_else(|| "[::1]:8640".into());
        let listen = check.parse::<SocketAddr>("listen", &listen_text);
        let database = self
            .database
            .unwrap_or_else(|| "sqlite:///var/lib/flat6/controller.db".into());
        let kind = database_kind(&database);
        if kind.is_none() {
            check.problem(
                "database",
                "expected a URL starting sqlite://, mysql:// or postgres://",
            );
        }
        let admin = check.required("admin_token_file", self.admin_token_file);
        let agent = check.required("agent_token_file", self.agent_token_file);
        if admin.is_some() && admin == agent {
            check.problem(
                "agent_token_file",
                "must differ from admin_token_file: agents must not hold the admin token",
            );
        }
        let tls = match (self.tls_cert_file, self.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert_file: PathBuf::from(cert),
                key_file: PathBuf::from(key),
            }),
            (Some(_), None) => {
                check.problem("tls_key_file", "missing: tls_cert_file needs its key");
                None
            }
            (None, Some(_)) => {
                check.problem(
                    "tls_cert_file",
                    "missing: tls_key_file needs its certificate",
                );
                None
            }
        };
        let max_watches = self.max_watches.unwrap_or(DEFAULT_MAX_WATCHES);
        if !(1..=1_000_000).contains(&max_watches) {
            check.problem("max_watches", format!("{max_watches} is not 1 to 1000000"));
        }
        let feed_history = self.feed_history.unwrap_or(DEFAULT_FEED_HISTORY);
        if !(1..=100_000_000).contains(&feed_history) {
            check.problem(
                "feed_history",
                format!("{feed_history} is not 1 to 100000000"),
            );
        }
        Some(ControllerConfig {
            listen: listen?,
            database,
            database_kind: kind?,
            admin_token_file: PathBuf::from(admin?),
            agent_token_file: PathBuf::from(agent?),
            tls,
            max_watches,
            feed_history,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, parse};
    use super::*;

    #[test]
    fn the_issue_example_is_valid() {
        let text = "role = \"controller\"\nlisten = \"[::1]:8640\"\ndatabase = \"sqlite:///var/lib/flat6/controller.db\"\nadmin_token_file = \"/etc/flat6/admin.token\"\nagent_token_file = \"/etc/flat6/agent.token\"\n";
        let config = parse(text);
        let Ok(Config::Controller(c)) = config else {
            panic!("expected a controller config, got {config:?}");
        };
        assert_eq!(c.database_kind, DatabaseKind::Sqlite);
        assert_eq!(c.listen.port(), 8640);
    }

    #[test]
    fn negative_cases() {
        let text = "role = \"controller\"\nlisten = \"localhost\"\ndatabase = \"oracle://x\"\nadmin_token_file = \"/t\"\nagent_token_file = \"/t\"\n";
        let got: Vec<String> = match parse(text) {
            Ok(c) => panic!("expected problems, got {c:?}"),
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("listen: invalid socket address"));
        assert!(got[1].starts_with("database: expected a URL"));
        assert!(got[2].starts_with("agent_token_file: must differ"));
    }

    #[test]
    fn tls_needs_both_files() {
        let base = "role = \"controller\"\nadmin_token_file = \"/a\"\nagent_token_file = \"/b\"\n";
        let both = format!("{base}tls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\"\n");
        let Ok(Config::Controller(c)) = parse(&both) else {
            panic!("expected a controller config");
        };
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert_file: "/c.pem".into(),
                key_file: "/k.pem".into()
            })
        );
        let half = format!("{base}tls_cert_file = \"/c.pem\"\n");
        let got: Vec<String> = match parse(&half) {
            Ok(c) => panic!("expected problems, got {c:?}"),
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("tls_key_file: missing"), "{got:?}");
    }
}
