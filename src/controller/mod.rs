//! The controller role: address management in SQL, security groups, the HTTP API and the agents'
//! watches.

pub mod allocate;
pub mod answers;
pub mod api;
pub mod cli;
pub mod client;
pub mod metrics;
pub mod service;
pub mod store;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::ControllerConfig;

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A token file could not be read or is empty.
    #[error("token file {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The database could not be reached at start.
    #[error("database {url}: {reason}")]
    Database {
        /// The URL without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// The runtime or the listener failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn read_token(path: &Path) -> Result<Arc<str>, ControllerError> {
    let text = std::fs::read_to_string(path).map_err(|e| ControllerError::Token {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(ControllerError::Token {
            path: path.to_path_buf(),
            reason: "a token must be at least 16 characters".into(),
        });
    }
    Ok(Arc::from(token))
}

/// The URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Turn transparent huge pages off for this process (`PR_SET_THP_DISABLE`). The allocator
/// (mimalloc) asks for them on its arenas, and then memory touched here and there — a few
/// hundred bytes per waiting watch in buffers of its own — is backed by 2 MiB pages: 19.3 KB
/// per open connection against 10.4 KB without (5,000 connections waiting in a handler). The
/// guard keeps them: its document parse is about 40 % slower without.
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and sets a flag of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// How long the controller keeps trying to reach its database at start.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// Run the controller until SIGTERM/SIGINT.
pub fn run(config: ControllerConfig) -> Result<(), ControllerError> {
    let huge_pages_off = disable_transparent_huge_pages();
    let admin_token = read_token(&config.admin_token_file)?;
    let agent_token = read_token(&config.agent_token_file)?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // SQLite takes one writer at a time, on sqlx's own thread per connection: more runtime
    // threads only add hand-offs between cores (measured: 1,820 against 1,510 new instances/s
    // with one client on 2 cores; again with the writer connection, 3,030-3,060 against
    // 2,450-2,520 with one client, about the same, 2,850-3,000, with four).
    // TOKIO_WORKER_THREADS still overrides it.
    if config.database.starts_with("sqlite:") && std::env::var_os("TOKIO_WORKER_THREADS").is_none()
    {
        builder.worker_threads(1);
    }
    let runtime = builder.enable_all().build()?;
    let result = runtime.block_on(async move {
        let span = tracing::info_span!("controller", listen = %config.listen);
        let _enter = span.enter();
        tracing::info!(version = env!("CARGO_PKG_VERSION"), database = %redact(&config.database), "starting");
        if let Err(err) = &huge_pages_off {
            tracing::debug!(error = %err, "transparent huge pages stay as the system has them");
        }
        if let Some(path) = config.database.strip_prefix("sqlite://")
            && let Some(parent) = Path::new(path.split('?').next().unwrap_or(path)).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        // Nothing to reload: the config is read at start. SIGHUP must not end the process.
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP ignored: restart the controller to change its config");
                }
            });
        }
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        let store = loop {
            match store::Store::connect(&config.database).await {
                Ok(store) => break store,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %err, "database not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => {
                    return Err(ControllerError::Database {
                        url: redact(&config.database),
                        reason: err.to_string(),
                    });
                }
            }
        };
        let hub = Arc::new(watch::Hub::new(config.max_watches));
        tokio::spawn(watch::run_poller(
            store.clone(),
            hub.clone(),
            i64::try_from(config.feed_history).unwrap_or(i64::MAX),
        ));
        let state = api::AppState {
            store,
            admin_token,
            agent_token,
            metrics: Arc::new(metrics::Metrics::default()),
            hub,
        };
        api::serve(config.listen, state, config.tls.as_ref()).await?;
        Ok(())
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("mysql://flat6:s3cret@127.0.0.1:3306/flat6"),
            "mysql://flat6:***@127.0.0.1:3306/flat6"
        );
        assert_eq!(
            redact("sqlite:///var/lib/flat6/controller.db"),
            "sqlite:///var/lib/flat6/controller.db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
