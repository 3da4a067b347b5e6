//! The guard's shell: read the document, render, diff against what is applied, apply, remember.
//!
//! State that survives a restart: `state_dir/applied.json` (the last document applied) and, in the
//! kernel, the marker of the rendered state. If the marker in the kernel matches what the persisted
//! document renders to, the next change is applied as a diff against it; otherwise (first start, or
//! someone changed the tables) both tables are rebuilt in one transaction. Nothing is ever flushed
//! at start, and while the guard is down the last rules stay in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use super::apply::{self, Applier, ApplyError, Nft};
use super::document::PortsDoc;
use super::render::{self, PlanKind, Planner, Settings};
use crate::config::{GuardConfig, Problems, SourceConfig};
use crate::model::doc::HostChanges;
use crate::source::{Delivery, DocumentSource, FeedScope, FileWatch, SourceError};
use crate::telemetry::{Exposition, prometheus_line, serve_exposition};

/// What `flat6 guard` was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardMode {
    /// Follow the source and keep the rules converged.
    Daemon,
    /// Apply the current document once.
    Apply,
    /// Print what would be applied.
    Render,
    /// Remove the tables.
    Teardown,
}

/// Why the guard failed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The document could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The document is invalid; the rules in force were left alone.
    #[error("ports document {path} rejected, the rules in force stay:\n{problems}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem.
        problems: Problems,
    },
    /// nft failed; the rules in force were left alone (each apply is one transaction).
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A state file or sysctl could not be written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The runtime could not start.
    #[error("start runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The controller could not be asked for the document.
    #[error("controller: {0}")]
    Controller(String),
}

/// Counters and live state of the guard, for `/metrics` and `/status`.
#[derive(Debug, Default)]
pub struct GuardCounters {
    /// Applies that rebuilt both tables.
    pub full_applies: AtomicU64,
    /// Applies done as a diff.
    pub incremental_applies: AtomicU64,
    /// Applies nft refused.
    pub apply_failures: AtomicU64,
    /// Documents rejected by validation.
    pub rejected_documents: AtomicU64,
    /// Feed answers refused for a revision older than the document in force.
    pub stale_documents: AtomicU64,
    /// Duration of the last apply, microseconds.
    pub last_apply_micros: AtomicU64,
    /// Sum of all apply durations, microseconds.
    pub apply_micros_total: AtomicU64,
    /// Ports in the applied document.
    pub ports: AtomicU64,
    /// Revision of the applied document.
    pub revision: AtomicU64,
}

struct GuardExposition {
    table: String,
    source: String,
    counters: Arc<GuardCounters>,
}

impl Exposition for GuardExposition {
    fn metrics(&self) -> String {
        let c = &self.counters;
        let mut out = String::new();
        for (name, kind, help, v) in [
            (
                "flat6_guard_full_applies_total",
                "counter",
                "Applies that rebuilt both tables in one transaction.",
                &c.full_applies,
            ),
            (
                "flat6_guard_incremental_applies_total",
                "counter",
                "Applies done as a diff.",
                &c.incremental_applies,
            ),
            (
                "flat6_guard_apply_failures_total",
                "counter",
                "Applies nft refused (the rules in force stayed).",
                &c.apply_failures,
            ),
            (
                "flat6_guard_rejected_documents_total",
                "counter",
                "Ports documents rejected by validation.",
                &c.rejected_documents,
            ),
            (
                "flat6_guard_apply_duration_microseconds_total",
                "counter",
                "Time spent applying, all applies.",
                &c.apply_micros_total,
            ),
            (
                "flat6_guard_last_apply_duration_microseconds",
                "gauge",
                "Duration of the last apply.",
                &c.last_apply_micros,
            ),
            (
                "flat6_guard_ports",
                "gauge",
                "Ports in the applied document.",
                &c.ports,
            ),
            (
                "flat6_guard_document_revision",
                "gauge",
                "Revision of the applied document.",
                &c.revision,
            ),
        ] {
            prometheus_line(&mut out, name, kind, help, v.load(Ordering::Relaxed));
        }
        out
    }

    fn status(&self) -> serde_json::Value {
        let c = &self.counters;
        serde_json::json!({
            "table": self.table,
            "source": self.source,
            "revision": c.revision.load(Ordering::Relaxed),
            "ports": c.ports.load(Ordering::Relaxed),
            "last_apply_microseconds": c.last_apply_micros.load(Ordering::Relaxed),
            "apply_failures": c.apply_failures.load(Ordering::Relaxed),
            "rejected_documents": c.rejected_documents.load(Ordering::Relaxed),
        })
    }
}

/// File in `state_dir` with the last applied document.
pub const APPLIED_FILE: &str = "applied.json";
/// The sysctl that makes bridged IPv6 traffic pass the inet hooks, where conntrack works.
const BRIDGE_NF_CALL_IP6TABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-ip6tables";

/// The watch URL for this host's ports document, for a controller source.
fn ports_url(url: &str, host: &str) -> String {
    format!("{url}/v1/hosts/{host}/ports")
}

/// The current document, once (for `apply` and `render`), and a name for it in messages.
fn fetch_once(config: &GuardConfig) -> Result<(PathBuf, Vec<u8>), GuardError> {
    match &config.source {
        SourceConfig::File(path) => {
            let bytes = FileWatch::new(path).poll(true)?.unwrap_or_default();
            Ok((path.clone(), bytes))
        }
        SourceConfig::Controller {
            url,
            scope,
            token_file,
            ca_file,
        } => {
            let token = std::fs::read_to_string(token_file).map_err(|source| GuardError::Io {
                what: "read token",
                path: token_file.clone(),
                source,
            })?;
            let client = crate::controller::client::Client::with_ca_file(
                url,
                &token,
                Duration::from_secs(30),
                ca_file.as_deref(),
            )
            .map_err(|e| GuardError::Controller(e.to_string()))?;
            let path = format!("/v1/hosts/{scope}/ports");
            let bytes = client
                .get_bytes(&path)
                .map_err(|e| GuardError::Controller(e.to_string()))?;
            Ok((PathBuf::from(ports_url(url, scope)), bytes))
        }
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<PortsDoc, GuardError> {
    PortsDoc::parse(bytes).map_err(|problems| GuardError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// What is applied now, as far as we can trust it.
struct Applied {
    /// The applied document and its model; `None` when the kernel's tables are not known to
    /// match any (the next apply rebuilds them in one transaction).
    planner: Option<Planner>,
    /// How batches are applied (libnftables in this process, or the `nft` program).
    applier: Applier,
}

impl Applied {
    /// The persisted document, if the kernel still carries the marker of what it renders to.
    fn recover(config: &GuardConfig, settings: &Settings) -> Result<Self, GuardError> {
        let marker = apply::read_marker(&Nft::default(), &config.table)?;
        let persisted = std::fs::read(config.state_dir.join(APPLIED_FILE))
            .ok()
            .and_then(|bytes| PortsDoc::parse(&bytes).ok())
            .map(|doc| Planner::new(settings, doc));
        let planner = match (marker, persisted) {
            (Some(marker), Some(planner)) if planner.desired().marker() == marker => {
                tracing::info!("kernel rules match the last applied document; converging by diff");
                Some(planner)
            }
            (Some(_), _) => {
                tracing::info!(
                    "kernel rules are not the ones last applied; they will be rebuilt in one transaction"
                );
                None
            }
            (None, _) => None,
        };
        Ok(Self {
            planner,
            applier: Applier::new(),
        })
    }
}

/// Parse the document `bytes` (from `path`, for messages) and [`converge`] to it; the parse time
/// goes into the "applied ruleset" log line.
fn parse_and_converge(
    counters: &GuardCounters,
    config: &GuardConfig,
    settings: &Settings,
    applied: &mut Applied,
    path: &Path,
    bytes: &[u8],
) -> Result<(), GuardError> {
    let parsing = Instant::now();
    let doc = parse(path, bytes)?;
    let parse_us = parsing.elapsed().as_micros() as u64;
    converge(counters, config, settings, applied, doc, bytes, parse_us)
}

/// Plan the change from what is applied to `doc` (port by port when it can, see
/// `render::Planner`), apply it (one transaction), persist the document.
fn converge(
    counters: &GuardCounters,
    config: &GuardConfig,
    settings: &Settings,
    applied: &mut Applied,
    doc: PortsDoc,
    raw: &[u8],
    parse_us: u64,
) -> Result<(), GuardError> {
    let (revision, ports) = (doc.revision, doc.ports.len());
    let span = tracing::info_span!("reconcile", revision, ports);
    let _enter = span.enter();
    let planning = Instant::now();
    let (batch, kind, plan) = match applied.planner.as_mut() {
        Some(planner) => {
            let (batch, how) = planner.update(settings, doc);
            let plan = match how {
                PlanKind::Ports => "ports",
                PlanKind::Render => "render",
            };
            (batch, "incremental", plan)
        }
        None => {
            let planner = Planner::new(settings, doc);
            let batch = planner.full_batch();
            applied.planner = Some(planner);
            (batch, "full", "render")
        }
    };
    let plan_us = planning.elapsed().as_micros() as u64;
    if batch.is_empty() {
        tracing::info!(
            plan_us,
            "already applied: the rules in force match the document"
        );
        return Ok(());
    }
    tracing::debug!(plan = %render::describe(&batch), plan_us, "planned nft batch");
    let started = Instant::now();
    if let Err(err) = applied.applier.apply(&batch) {
        counters.apply_failures.fetch_add(1, Ordering::Relaxed);
        // The planner now describes the document, not the kernel.
        applied.planner = None;
        return Err(err.into());
    }
    let micros = started.elapsed().as_micros() as u64;
    tracing::info!(
        kind,
        commands = batch.len(),
        elements = batch.element_count(),
        elapsed_ms = micros / 1000,
        elapsed_us = micros,
        parse_us,
        plan_us,
        plan,
        "applied ruleset"
    );
    let count = if kind == "full" {
        &counters.full_applies
    } else {
        &counters.incremental_applies
    };
    count.fetch_add(1, Ordering::Relaxed);
    counters.last_apply_micros.store(micros, Ordering::Relaxed);
    counters
        .apply_micros_total
        .fetch_add(micros, Ordering::Relaxed);
    counters.ports.store(ports as u64, Ordering::Relaxed);
    counters.revision.store(revision, Ordering::Relaxed);
    let path = config.state_dir.join(APPLIED_FILE);
    let persisting = Instant::now();
    crate::vr::dhcp::state::write_atomically(&path, raw).map_err(|e| GuardError::Io {
        what: "persist",
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    tracing::debug!(
        persist_us = persisting.elapsed().as_micros() as u64,
        "applied document persisted"
    );
    Ok(())
}

fn prepare(config: &GuardConfig) -> Result<(), GuardError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| GuardError::Io {
        what: "create state_dir",
        path: config.state_dir.clone(),
        source,
    })?;
    match std::fs::read_to_string(BRIDGE_NF_CALL_IP6TABLES) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => {
            std::fs::write(BRIDGE_NF_CALL_IP6TABLES, "1").map_err(|source| GuardError::Io {
                what: "enable",
                path: BRIDGE_NF_CALL_IP6TABLES.into(),
                source,
            })?;
            tracing::info!(
                "enabled {BRIDGE_NF_CALL_IP6TABLES}: bridged IPv6 now reaches conntrack"
            );
            Ok(())
        }
        Err(source) => Err(GuardError::Io {
            what: "read (is br_netfilter loaded? modprobe br_netfilter)",
            path: BRIDGE_NF_CALL_IP6TABLES.into(),
            source,
        }),
    }
}

/// Run the guard in `mode`.
pub fn run(config: GuardConfig, mode: GuardMode) -> Result<(), GuardError> {
    let settings = Settings::from(&config);
    match mode {
        GuardMode::Render => {
            let (path, bytes) = fetch_once(&config)?;
            let doc = parse(&path, &bytes)?;
            let desired = render::render(&settings, &doc);
            println!(
                "{}",
                render::describe(&render::full_batch(&settings, &desired))
            );
            Ok(())
        }
        GuardMode::Teardown => {
            let removed = apply::teardown(&Nft::default(), &config.table)?;
            let _ = std::fs::remove_file(config.state_dir.join(APPLIED_FILE));
            tracing::info!(table = %config.table, removed, "teardown");
            Ok(())
        }
        GuardMode::Apply => {
            prepare(&config)?;
            let (path, bytes) = fetch_once(&config)?;
            let mut applied = Applied::recover(&config, &settings)?;
            parse_and_converge(
                &GuardCounters::default(),
                &config,
                &settings,
                &mut applied,
                &path,
                &bytes,
            )
        }
        GuardMode::Daemon => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(GuardError::Runtime)?;
            let result = runtime.block_on(daemon(config, settings));
            // A controller watch may be blocked in a long poll: do not wait for it to end.
            runtime.shutdown_timeout(Duration::from_millis(500));
            result
        }
    }
}

async fn daemon(config: GuardConfig, settings: Settings) -> Result<(), GuardError> {
    let span = tracing::info_span!("guard", table = %config.table);
    let _enter = span.enter();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting");
    prepare(&config)?;
    let mut applied = Applied::recover(&config, &settings)?;
    let mut watch = match &config.source {
        SourceConfig::File(path) => DocumentSource::file(path),
        SourceConfig::Controller {
            url,
            scope,
            token_file,
            ca_file,
        } => DocumentSource::feed(
            url,
            FeedScope::Host(scope.clone()),
            token_file,
            ca_file.as_deref(),
            &config.state_dir,
        )?,
    };
    tracing::info!(source = %watch.describe(), "following");
    let counters = Arc::new(GuardCounters::default());
    let exposition = config.metrics_listen.map(|listen| {
        let exposition = Arc::new(GuardExposition {
            table: config.table.clone(),
            source: watch.describe(),
            counters: counters.clone(),
        });
        tokio::spawn(async move {
            if let Err(err) = serve_exposition(listen, exposition).await {
                tracing::error!(%listen, error = %err, "cannot serve /metrics");
            }
        })
    });
    let mut sigterm = signal(SignalKind::terminate()).map_err(GuardError::Runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(GuardError::Runtime)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(GuardError::Runtime)?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let arrivals = watch.arrivals();
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut source_error_logged = false;
    let mut force = true;
    let mut feed = FeedState::default();
    // After a failed apply: when to try again, and the next backoff.
    let mut retry_at: Option<Instant> = None;
    let mut backoff = Duration::from_secs(1);
    loop {
        if retry_at.is_some_and(|t| Instant::now() >= t) {
            retry_at = None;
            force = true;
        }
        let polled = match watch.poll(force) {
            // A feed may have several answers waiting: fold them into one document, one apply.
            Ok(Some(Delivery::Changes { bytes, replayed })) => {
                let mut taken = fold_changes(&counters, &mut feed, &bytes);
                if taken.is_some() && !replayed {
                    watch.persist(&Delivery::Changes { bytes, replayed }, taken == Some(true));
                }
                while let Ok(Some(Delivery::Changes { bytes, replayed })) = watch.poll(false) {
                    let more = fold_changes(&counters, &mut feed, &bytes);
                    if more.is_some() && !replayed {
                        watch.persist(&Delivery::Changes { bytes, replayed }, more == Some(true));
                    }
                    taken = taken.or(more);
                }
                if feed.resync {
                    feed.resync = false;
                    watch.resync();
                }
                if watch.wants_snapshot()
                    && let (Some(doc), Some((host, cluster))) = (&feed.doc, &feed.source)
                {
                    match serde_json::to_vec(&doc.to_changes(host, cluster, &feed.groups)) {
                        Ok(state) => watch.persist_snapshot(&state),
                        Err(err) => {
                            tracing::warn!(error = %err, "could not encode the ports snapshot")
                        }
                    }
                }
                match (&feed.doc, taken.is_some() || force) {
                    (Some(doc), true) => Ok(Some(Polled::Doc(doc.clone()))),
                    _ => Ok(None),
                }
            }
            Ok(Some(Delivery::Document(bytes))) => Ok(Some(Polled::Bytes(bytes))),
            Ok(None) if force => match &feed.doc {
                Some(doc) => Ok(Some(Polled::Doc(doc.clone()))),
                None => Ok(None),
            },
            Ok(None) => Ok(None),
            Err(err) => Err(err),
        };
        match polled {
            Ok(Some(polled)) => {
                source_error_logged = false;
                let name = PathBuf::from(watch.describe());
                let result = match polled {
                    Polled::Bytes(bytes) => parse_and_converge(
                        &counters,
                        &config,
                        &settings,
                        &mut applied,
                        &name,
                        &bytes,
                    ),
                    Polled::Doc(doc) => match serde_json::to_vec(&doc.to_wire()) {
                        Ok(raw) => {
                            converge(&counters, &config, &settings, &mut applied, doc, &raw, 0)
                        }
                        Err(err) => Err(GuardError::Controller(format!(
                            "encode the applied document: {err}"
                        ))),
                    },
                };
                match result {
                    Ok(()) => {
                        backoff = Duration::from_secs(1);
                    }
                    Err(GuardError::Invalid { problems, path }) => {
                        counters.rejected_documents.fetch_add(1, Ordering::Relaxed);
                        for problem in problems.iter() {
                            tracing::warn!("{problem}");
                        }
                        tracing::warn!(file = %path.display(), problems = problems.len(), "rejected ports document; the rules in force stay");
                    }
                    Err(err) => {
                        tracing::error!(error = %err, retry_in_s = backoff.as_secs(), "apply failed; the rules in force stay");
                        // Forget what we think is applied: the next try rebuilds atomically.
                        applied.planner = None;
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            Ok(None) => {}
            Err(err) => {
                if !source_error_logged {
                    tracing::warn!(error = %err, "ports document unavailable; the rules in force stay");
                    source_error_logged = true;
                }
            }
        }
        force = false;
        tokio::select! {
            _ = tick.tick() => {}
            () = arrivals.notified() => {}
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: re-reading the ports document");
                force = true;
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    if let Some(task) = exposition {
        task.abort();
    }
    tracing::info!("stopped; the rules stay in force");
    Ok(())
}

/// What the daemon polled: a whole document to parse, or the document the feed's changes made.
enum Polled {
    Bytes(Vec<u8>),
    Doc(PortsDoc),
}

/// The document the controller's feed has built so far (applied to the kernel or not).
#[derive(Default)]
struct FeedState {
    /// The latest valid document.
    doc: Option<PortsDoc>,
    /// The host and database it comes from.
    source: Option<(String, String)>,
    /// Each group's revision, for the persisted snapshot.
    groups: std::collections::BTreeMap<String, u64>,
    /// Ask the controller for a snapshot.
    resync: bool,
}

/// Apply one feed answer to `feed`. Returns whether it was a snapshot when it was taken, `None`
/// when it was refused (the document stays as it was).
fn fold_changes(counters: &GuardCounters, feed: &mut FeedState, bytes: &[u8]) -> Option<bool> {
    let changes: HostChanges = match serde_json::from_slice(bytes) {
        Ok(c) => c,
        Err(err) => {
            counters.rejected_documents.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err, "rejected a feed answer that is not host changes");
            feed.resync = true;
            return None;
        }
    };
    let same = feed
        .source
        .as_ref()
        .is_some_and(|(h, c)| *h == changes.host && *c == changes.cluster);
    if same
        && feed
            .doc
            .as_ref()
            .is_some_and(|d| changes.revision < d.revision)
    {
        counters.stale_documents.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            revision = changes.revision,
            "refused host changes older than the document in force"
        );
        return None;
    }
    let base = if same { feed.doc.as_ref() } else { None };
    match PortsDoc::with_changes(base, &changes) {
        Ok(doc) => {
            tracing::debug!(
                revision = changes.revision,
                snapshot = changes.snapshot,
                ports = changes.ports.len(),
                removed_ports = changes.removed_ports.len(),
                groups = changes.groups.len(),
                "took host changes"
            );
            if changes.snapshot {
                feed.groups.clear();
            }
            for g in &changes.groups {
                feed.groups.insert(g.name.clone(), g.revision);
            }
            for g in &changes.removed_groups {
                feed.groups.remove(g);
            }
            feed.doc = Some(doc);
            feed.source = Some((changes.host, changes.cluster));
            Some(changes.snapshot)
        }
        Err(problems) => {
            counters.rejected_documents.fetch_add(1, Ordering::Relaxed);
            for problem in problems.iter() {
                tracing::warn!("{problem}");
            }
            tracing::warn!(
                problems = problems.len(),
                "rejected host changes; the rules in force stay"
            );
            feed.resync = true;
            None
        }
    }
}
