//! Logging setup: `tracing` to stderr, text or JSON, level from `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Install the global subscriber. Called once from `main`; a second call is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// What an agent shows on its `metrics_listen` address: Prometheus text on `/metrics` and a JSON
/// view of its live state on `/status`, both computed when asked.
pub trait Exposition: Send + Sync + 'static {
    /// Prometheus text exposition format.
    fn metrics(&self) -> String;
    /// The live state, for people.
    fn status(&self) -> serde_json::Value;
}

/// One Prometheus sample with its HELP and TYPE lines.
pub fn prometheus_line(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// Serve `/metrics` and `/status` on `listen` until the task is dropped.
pub async fn serve_exposition(
    listen: std::net::SocketAddr,
    source: std::sync::Arc<dyn Exposition>,
) -> std::io::Result<()> {
    use axum::routing::get;
    let metrics_source = source.clone();
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics_source.metrics();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        text,
                    )
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let status = source.status();
                async move { axum::Json(status) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "serving /metrics and /status");
    axum::serve(listener, router).await
}
