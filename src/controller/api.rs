//! The HTTP API (axum): routes, bearer-token auth, JSON errors, and the agents' long-poll watches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::SeedableRng;
use serde::Deserialize;

use super::answers::Source;
use super::metrics::Metrics;
use super::service::{
    self, ApiError, ErrorKind, GroupRequest, InstanceRequest, InstanceUpdateRequest, InstanceView,
    PodRequest, PodView,
};
use super::store::{FeedKey, GroupCursor, Store};
use super::watch::{Hub, wait_for};
use crate::config::TlsFiles;

/// Longest a watch may wait, whatever `wait` asks.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// The most groups a host watch may say it has.
const MAX_CURSOR_GROUPS: usize = 4096;
/// What a refused watch is told to wait before it asks again.
const RETRY_AFTER_SECONDS: u64 = 5;

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Bearer token for the full API.
    pub admin_token: Arc<str>,
    /// Bearer token for the watches.
    pub agent_token: Arc<str>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The watches: woken by the feed poller, and poked by every change this controller makes
    /// so that its own watches answer at once.
    pub hub: Arc<Hub>,
}

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Admin,
    Agent,
}

/// Compare two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::auth(
            ErrorKind::Unauthorized,
            "missing Authorization: Bearer <token>",
        ));
    };
    // Check both, always, so timing does not tell which token was close.
    let admin = constant_time_eq(token.as_bytes(), state.admin_token.as_bytes());
    let agent = constant_time_eq(token.as_bytes(), state.agent_token.as_bytes());
    match (admin, agent) {
        (true, _) => Ok(Caller::Admin),
        (false, true) => Ok(Caller::Agent),
        _ => {
            state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::auth(ErrorKind::Unauthorized, "wrong token"))
        }
    }
}

fn admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match caller(state, headers)? {
        Caller::Admin => Ok(()),
        Caller::Agent => Err(ApiError::auth(
            ErrorKind::Forbidden,
            "the agent token may only read watches",
        )),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut body = serde_json::json!({"error": self.message});
        if let Some(field) = self.field {
            body["field"] = serde_json::Value::String(field);
        }
        (status, axum::Json(body)).into_response()
    }
}

/// Parse a JSON body; a problem names the field (`instance_prefix_length: invalid type ...`).
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let message = err.inner().to_string();
        // serde names an unknown or missing field in the message; the path is its parent.
        let field = if path == "." {
            message
                .split('`')
                .nth(1)
                .map(str::to_string)
                .unwrap_or_default()
        } else {
            path
        };
        ApiError {
            kind: ErrorKind::Invalid,
            message,
            field: Some(field),
        }
    })
}

fn record(state: &AppState, err: ApiError) -> ApiError {
    match err.kind {
        ErrorKind::Unavailable => {
            state
                .metrics
                .database_unavailable
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %err.message, "database unavailable");
        }
        ErrorKind::Internal => tracing::error!(error = %err.message, "internal error"),
        _ => {}
    }
    err
}

type ApiResult = Result<Response, ApiError>;

async fn create_pod(State(s): State<AppState>, headers: HeaderMap, bytes: Bytes) -> ApiResult {
    admin(&s, &headers)?;
    let req: PodRequest = body(&bytes)?;
    let new = service::validate_pod(&req)?;
    let row = s
        .store
        .create_pod(&new)
        .await
        .map_err(|e| record(&s, e.into()))?;
    tracing::info!(pod = %row.name, prefix = %row.prefix, "created pod");
    s.hub.poke();
    Ok((StatusCode::CREATED, axum::Json(PodView::from(row))).into_response())
}

async fn get_pod(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(pod): Path<String>,
) -> ApiResult {
    admin(&s, &headers)?;
    let row = s
        .store
        .get_pod(&pod)
        .await
        .map_err(|e| record(&s, e.into()))?;
    Ok(axum::Json(PodView::from(row)).into_response())
}

async fn list_pods(State(s): State<AppState>, headers: HeaderMap) -> ApiResult {
    admin(&s, &headers)?;
    let pods: Vec<PodView> = s
        .store
        .list_pods()
        .await
        .map_err(|e| record(&s, e.into()))?
        .into_iter()
        .map(PodView::from)
        .collect();
    Ok(axum::Json(serde_json::json!({ "pods": pods })).into_response())
}

/// `?host=H&mac=M&address=A`: only the instances on that hypervisor, with that MAC, holding that
/// address or owning its /64; every one given must hold.
#[derive(Debug, Deserialize)]
struct InstancesQuery {
    host: Option<String>,
    mac: Option<String>,
    address: Option<String>,
}

impl InstancesQuery {
    fn filter(self) -> Result<service::InstanceFilter, ApiError> {
        service::InstanceFilter::parse(self.host, self.mac.as_deref(), self.address.as_deref())
    }
}

async fn list_instances(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(pod): Path<String>,
    Query(query): Query<InstancesQuery>,
) -> ApiResult {
    admin(&s, &headers)?;
    let filter = query.filter().map_err(|e| record(&s, e))?;
    let instances: Vec<InstanceView> = s
        .store
        .list_instances(&pod, filter.host.as_deref())
        .await
        .map_err(|e| record(&s, e.into()))?
        .into_iter()
        .filter(|i| filter.matches(i))
        .map(InstanceView::from)
        .collect();
    Ok(axum::Json(serde_json::json!({ "instances": instances })).into_response())
}

async fn find_instances(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<InstancesQuery>,
) -> ApiResult {
    admin(&s, &headers)?;
    let filter = query.filter().map_err(|e| record(&s, e))?;
    let found = service::find_instances(&s.store, &filter)
        .await
        .map_err(|e| record(&s, e))?;
    Ok(axum::Json(serde_json::json!({ "instances": found })).into_response())
}

async fn delete_pod(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(pod): Path<String>,
) -> ApiResult {
    admin(&s, &headers)?;
    s.store
        .delete_pod(&pod)
        .await
        .map_err(|e| record(&s, e.into()))?;
    tracing::info!(%pod, "deleted pod");
    s.hub.poke();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create_instance(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(pod): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    admin(&s, &headers)?;
    let req: InstanceRequest = body(&bytes)?;
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let view = service::create_instance(&s.store, &s.metrics, &pod, &req, &mut rng)
        .await
        .map_err(|e| record(&s, e))?;
    s.hub.poke();
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn get_instance(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((pod, name)): Path<(String, String)>,
) -> ApiResult {
    admin(&s, &headers)?;
    let row = s
        .store
        .get_instance(&pod, &name)
        .await
        .map_err(|e| record(&s, e.into()))?;
    Ok(axum::Json(InstanceView::from(row)).into_response())
}

async fn update_instance(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((pod, name)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    admin(&s, &headers)?;
    let req: InstanceUpdateRequest = body(&bytes)?;
    let view = service::update_instance(&s.store, &pod, &name, &req)
        .await
        .map_err(|e| record(&s, e))?;
    s.hub.poke();
    Ok(axum::Json(view).into_response())
}

async fn delete_instance(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((pod, name)): Path<(String, String)>,
) -> ApiResult {
    admin(&s, &headers)?;
    s.store
        .delete_instance(&pod, &name)
        .await
        .map_err(|e| record(&s, e.into()))?;
    tracing::info!(%pod, instance = %name, "deleted instance");
    s.hub.poke();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn add_address(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((pod, name)): Path<(String, String)>,
) -> ApiResult {
    admin(&s, &headers)?;
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let address = service::add_address(&s.store, &s.metrics, &pod, &name, &mut rng)
        .await
        .map_err(|e| record(&s, e))?;
    s.hub.poke();
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"address": address.to_string()})),
    )
        .into_response())
}

async fn remove_address(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((pod, name, address)): Path<(String, String, String)>,
) -> ApiResult {
    admin(&s, &headers)?;
    let address: std::net::Ipv6Addr = address.parse().map_err(|_| ApiError {
        kind: ErrorKind::Invalid,
        message: format!("{address:?} is not an IPv6 address"),
        field: Some("address".into()),
    })?;
    s.store
        .remove_address(&pod, &name, address)
        .await
        .map_err(|e| record(&s, e.into()))?;
    tracing::info!(%pod, instance = %name, %address, "removed address");
    s.hub.poke();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn put_group(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    admin(&s, &headers)?;
    let req: GroupRequest = body(&bytes)?;
    // Remote groups must exist; look them up before validating (the closure is synchronous).
    let mut known = Vec::new();
    for rule in &req.rules {
        if let Some(g) = rule.remote_group.as_deref()
            && s.store
                .group_exists(g)
                .await
                .map_err(|e| record(&s, e.into()))?
        {
            known.push(g.to_string());
        }
    }
    service::validate_rules(&name, &req.rules, &|g| known.iter().any(|k| k == g))?;
    let rules_json = serde_json::to_string(&req.rules).unwrap_or_else(|_| "[]".into());
    s.store
        .put_group(&name, &rules_json)
        .await
        .map_err(|e| record(&s, e.into()))?;
    tracing::info!(group = %name, rules = req.rules.len(), "set security group");
    s.hub.poke();
    let row = s
        .store
        .get_group(&name)
        .await
        .map_err(|e| record(&s, e.into()))?;
    Ok(axum::Json(service::group_view(row).map_err(|e| record(&s, e))?).into_response())
}

async fn get_group(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    admin(&s, &headers)?;
    let row = s
        .store
        .get_group(&name)
        .await
        .map_err(|e| record(&s, e.into()))?;
    Ok(axum::Json(service::group_view(row).map_err(|e| record(&s, e))?).into_response())
}

async fn delete_group(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    admin(&s, &headers)?;
    s.store
        .delete_group(&name)
        .await
        .map_err(|e| record(&s, e.into()))?;
    tracing::info!(group = %name, "deleted security group");
    s.hub.poke();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `?after_revision=N&wait=S` on a full document (the legacy long poll).
#[derive(Debug, Deserialize)]
struct WatchQuery {
    after_revision: Option<u64>,
    wait: Option<u64>,
}

/// `?after_revision=N&wait=S&cluster=C` (and for a host `&groups=web:5,db:7`) on `/changes`.
#[derive(Debug, Deserialize)]
struct ChangesQuery {
    after_revision: Option<u64>,
    wait: Option<u64>,
    cluster: Option<String>,
    groups: Option<String>,
}

fn deadline(wait: Option<u64>) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(wait.unwrap_or(30)).min(MAX_WAIT)
}

/// 503 with `Retry-After`: too many watches wait already.
fn too_many_watches(s: &AppState) -> Response {
    s.metrics.watches_refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        waiting = s.hub.waiting(),
        "refused a watch: the controller's max_watches are waiting"
    );
    let body = serde_json::json!({
        "error": "too many watches are waiting on this controller; retry later or elsewhere"
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER_SECONDS.to_string())],
        axum::Json(body),
    )
        .into_response()
}

/// Subscribe to `key`, reading its revision from the database when the hub did not know it.
async fn subscribe(
    s: &AppState,
    key: &FeedKey,
) -> Result<tokio::sync::watch::Receiver<u64>, ApiError> {
    let (rx, known) = s.hub.subscribe(key);
    if !known {
        // Boxed, as every database call of a watch: the future that waits stays small (a
        // waiting watch holds its whole future).
        let revision = Box::pin(s.store.feed_revision(key))
            .await
            .map_err(|e| record(s, e.into()))?;
        s.hub.observe(key, revision);
    }
    Ok(rx)
}

/// Counted while a watch waits (also when the client goes away and the handler is dropped).
struct Waiting<'a>(&'a Metrics);

impl<'a> Waiting<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.watch_clients.fetch_add(1, Ordering::Relaxed);
        Self(metrics)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.watch_clients.fetch_sub(1, Ordering::Relaxed);
        self.0.watch_responses.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a follower's `cluster` is this database's (a follower that gives none is taken at
/// its word).
async fn same_cluster(s: &AppState, cluster: Option<&str>) -> Result<bool, ApiError> {
    match cluster {
        None => Ok(true),
        Some(c) => Ok(Box::pin(s.store.cluster_id())
            .await
            .map_err(|e| record(s, e.into()))?
            == c),
    }
}

/// The full reservation document; with `after_revision`, a long poll that answers the whole
/// document once the pod's revision passes it (agents follow `/changes` instead).
async fn reservations(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(pod): Path<String>,
    Query(query): Query<WatchQuery>,
) -> ApiResult {
    caller(&s, &headers)?;
    if let Some(after) = query.after_revision {
        let Some(_ticket) = s.hub.admit() else {
            return Ok(too_many_watches(&s));
        };
        let _waiting = Waiting::new(&s.metrics);
        // A watch on a pod that does not exist is a mistake worth a 404, not a silent wait.
        let rx = subscribe(&s, &FeedKey::pod(&pod)).await?;
        let _ = wait_for(&mut [(rx, after)], deadline(query.wait)).await;
    }
    let doc = Box::pin(service::reservations_document(&s.store, &pod))
        .await
        .map_err(|e| record(&s, e))?;
    Ok(axum::Json(doc).into_response())
}

/// The changes of a pod's reservations since `after_revision` (see `model::doc`).
async fn reservation_changes(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(pod): Path<String>,
    Query(query): Query<ChangesQuery>,
) -> ApiResult {
    caller(&s, &headers)?;
    if query.groups.is_some() {
        return Err(ApiError {
            kind: ErrorKind::Invalid,
            message: "groups is for host watches".into(),
            field: Some("groups".into()),
        });
    }
    let Some(_ticket) = s.hub.admit() else {
        return Ok(too_many_watches(&s));
    };
    let _waiting = Waiting::new(&s.metrics);
    let key = FeedKey::pod(&pod);
    let mut waiting = [(subscribe(&s, &key).await?, 0)];
    let mut waited = false;
    if let Some(after) = query.after_revision
        && same_cluster(&s, query.cluster.as_deref()).await?
    {
        waiting[0].1 = after;
        waited = wait_for(&mut waiting, deadline(query.wait)).await;
    }
    let answer_key = || {
        format!(
            "{:?}",
            (
                'p',
                &pod,
                query.after_revision,
                &query.cluster,
                *waiting[0].0.borrow()
            )
        )
    };
    let build = || async {
        let change = Box::pin(s.store.reservation_changes(
            &pod,
            query.after_revision,
            query.cluster.as_deref(),
        ))
        .await
        .map_err(|e| record(&s, e.into()))?;
        s.hub.observe(&key, change.revision);
        tracing::debug!(%pod, revision = change.revision, snapshot = change.snapshot, upserts = change.reservations.len(), removed = change.removed.len(), "answered reservation changes");
        encode(&s, &change)
    };
    answer(&s, waited, answer_key, build).await
}

/// A watch answer as JSON bytes (an encoding failure is a logged 500).
fn encode<T: serde::Serialize>(s: &AppState, value: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
        record(
            s,
            ApiError {
                kind: ErrorKind::Internal,
                message: format!("encode the answer: {e}"),
                field: None,
            },
        )
    })
}

/// The answer of a watch: when it `waited` for what the hub shows now, built once for all the
/// watchers of the key (see `answers`); else (a follower catching up, a snapshot, a read by a
/// person) built for this one, from the database as it is now. The key is every input of the
/// answer in `Debug` form, where names are quoted and escaped, so two different requests never
/// share one.
async fn answer<K, F, Fut>(s: &AppState, waited: bool, key: K, build: F) -> ApiResult
where
    K: FnOnce() -> String,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Bytes, ApiError>>,
{
    let (bytes, source) = if waited {
        Box::pin(s.hub.answers.get_or_build(key(), build)).await?
    } else {
        (build().await?, Source::Built)
    };
    let counter = match source {
        Source::Built => &s.metrics.answers_built,
        Source::Shared => &s.metrics.answers_shared,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// `web:5,db:7` → {web: 5, db: 7}; a problem names `groups`.
fn parse_group_cursor(text: &str) -> Result<GroupCursor, ApiError> {
    let bad = |message: String| ApiError {
        kind: ErrorKind::Invalid,
        message,
        field: Some("groups".into()),
    };
    let mut out = GroupCursor::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let Some((name, revision)) = part.rsplit_once(':') else {
            return Err(bad(format!("{part:?} is not name:revision")));
        };
        service::check_group_name(name).map_err(|e| bad(e.message))?;
        let revision: u64 = revision
            .parse()
            .map_err(|_| bad(format!("{part:?}: {revision:?} is not a revision")))?;
        out.insert(name.to_string(), revision);
        if out.len() > MAX_CURSOR_GROUPS {
            return Err(bad(format!("more than {MAX_CURSOR_GROUPS} groups")));
        }
    }
    Ok(out)
}

/// The changes of a host's ports since `after_revision`, and of the groups its ports reference
/// since the revisions in `groups` (see `model::doc::HostChanges`).
async fn host_changes(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(host): Path<String>,
    Query(query): Query<ChangesQuery>,
) -> ApiResult {
    caller(&s, &headers)?;
    let groups = parse_group_cursor(query.groups.as_deref().unwrap_or(""))?;
    let Some(_ticket) = s.hub.admit() else {
        return Ok(too_many_watches(&s));
    };
    let _waiting = Waiting::new(&s.metrics);
    let host_key = FeedKey::host(&host);
    let mut waiting = vec![(
        subscribe(&s, &host_key).await?,
        query.after_revision.unwrap_or(0),
    )];
    let mut waited = false;
    if let Some(after) = query.after_revision
        && same_cluster(&s, query.cluster.as_deref()).await?
    {
        for (name, revision) in &groups {
            waiting.push((subscribe(&s, &FeedKey::group(name)).await?, *revision));
        }
        waiting[0].1 = after;
        waited = wait_for(&mut waiting, deadline(query.wait)).await;
    }
    let answer_key = || {
        let revisions: Vec<u64> = waiting.iter().map(|(rx, _)| *rx.borrow()).collect();
        format!(
            "{:?}",
            (
                'h',
                &host,
                query.after_revision,
                &query.cluster,
                &groups,
                revisions
            )
        )
    };
    let build = || async {
        let change = Box::pin(s.store.host_changes(
            &host,
            query.after_revision,
            &groups,
            query.cluster.as_deref(),
        ))
        .await
        .map_err(|e| record(&s, e.into()))?;
        s.hub.observe(&host_key, change.revision);
        for group in &change.groups {
            s.hub.observe(&FeedKey::group(&group.name), group.revision);
        }
        tracing::debug!(%host, revision = change.revision, snapshot = change.snapshot, ports = change.ports.len(), removed = change.removed_ports.len(), groups = change.groups.len(), "answered host changes");
        encode(&s, &change)
    };
    answer(&s, waited, answer_key, build).await
}

/// The full ports document of a host (people, the CLI, `flat6 guard apply`); guards follow
/// `/v1/hosts/{host}/changes`, since group members change without the host's revision.
async fn ports(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(host): Path<String>,
    Query(query): Query<WatchQuery>,
) -> ApiResult {
    caller(&s, &headers)?;
    if query.after_revision.is_some() || query.wait.is_some() {
        return Err(ApiError {
            kind: ErrorKind::Invalid,
            message: format!(
                "the ports document is not a watch: follow /v1/hosts/{host}/changes?after_revision=N"
            ),
            field: Some("after_revision".into()),
        });
    }
    let doc = service::ports_document(&s.store, &host)
        .await
        .map_err(|e| record(&s, e))?;
    Ok(axum::Json(doc).into_response())
}

async fn healthz(State(s): State<AppState>) -> ApiResult {
    s.store.ping().await.map_err(|e| record(&s, e.into()))?;
    Ok((StatusCode::OK, "ok\n").into_response())
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError {
        kind: ErrorKind::NotFound,
        message: "no such route".into(),
        field: None,
    }
}

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/pods", post(create_pod).get(list_pods))
        .route("/v1/pods/{pod}", get(get_pod).delete(delete_pod))
        .route(
            "/v1/pods/{pod}/instances",
            post(create_instance).get(list_instances),
        )
        .route(
            "/v1/pods/{pod}/instances/{name}",
            get(get_instance)
                .delete(delete_instance)
                .patch(update_instance),
        )
        .route(
            "/v1/pods/{pod}/instances/{name}/addresses",
            post(add_address),
        )
        .route(
            "/v1/pods/{pod}/instances/{name}/addresses/{address}",
            axum::routing::delete(remove_address),
        )
        .route(
            "/v1/security-groups/{name}",
            get(get_group).put(put_group).delete(delete_group),
        )
        .route("/v1/pods/{pod}/reservations", get(reservations))
        .route(
            "/v1/pods/{pod}/reservations/changes",
            get(reservation_changes),
        )
        .route("/v1/hosts/{host}/ports", get(ports))
        .route("/v1/hosts/{host}/changes", get(host_changes))
        .route("/v1/instances", get(find_instances))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// How long open requests (mostly waiting watches) may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Serve until SIGTERM/SIGINT, over HTTPS when `tls` names the certificate and key, else plain
/// HTTP; then give open requests a second (`SHUTDOWN_GRACE`) and stop (agents whose watch is cut
/// simply ask again, of this or another controller).
pub async fn serve(
    listen: SocketAddr,
    state: AppState,
    tls: Option<&TlsFiles>,
) -> std::io::Result<()> {
    if let Some(files) = tls {
        return serve_tls(listen, state, files).await;
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "controller API listening (http)");
    let app = router(state);
    // Raised once at SIGTERM/SIGINT: connections finish the request they serve and close.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopping = stop_signal();
    tokio::pin!(stopping);
    let mut refused_at: Option<tokio::time::Instant> = None;
    loop {
        let stream = tokio::select! {
            () = &mut stopping => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors (EMFILE/ENFILE) or a connection reset before it was
                    // taken: say so (at most once a second) and try again shortly, instead of
                    // spinning or leaving clients to hang unexplained.
                    let now = tokio::time::Instant::now();
                    if refused_at.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                        tracing::warn!(error = %err, "cannot accept a connection (open-file limit?); retrying");
                        refused_at = Some(now);
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        tokio::spawn(serve_connection(stream, app.clone(), stop_rx.clone()));
    }
    let _ = stop_tx.send(true);
    tokio::time::sleep(SHUTDOWN_GRACE).await;
    tracing::info!("closed the requests still open");
    Ok(())
}

/// After a failed `accept`, wait this long before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// One HTTP/1.1 connection, served by hyper directly rather than through `axum::serve`: its
/// protocol-detecting connection state cost about 12 KB more per open connection (measured with
/// 5,000 connections each waiting in a handler: 31.9 against 19.3 KB of resident memory), and a
/// controller holds one connection per waiting watch.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
        () = async { drop(stop.wait_for(|stopping| *stopping).await) } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// SIGTERM or SIGINT (never, if the handler cannot be installed).
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
}

/// [`serve`] over TLS (rustls): the certificate chain and key are read once, at start.
async fn serve_tls(listen: SocketAddr, state: AppState, files: &TlsFiles) -> std::io::Result<()> {
    let config =
        axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert_file, &files.key_file)
            .await
            .map_err(|e| {
                std::io::Error::other(format!(
                    "TLS certificate {} with key {}: {e}",
                    files.cert_file.display(),
                    files.key_file.display()
                ))
            })?;
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    tracing::info!(%listen, cert = %files.cert_file.display(), "controller API listening (https)");
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        stop_signal().await;
        stopper.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    axum_server::from_tcp_rustls(listener, config)?
        .handle(handle)
        .serve(router(state).into_make_service())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn body_errors_name_the_field() {
        let err = body::<PodRequest>(&Bytes::from_static(br#"{"name": "p", "prefix": 5}"#))
            .expect_err("type");
        assert_eq!(err.field.as_deref(), Some("prefix"));
        let err = body::<PodRequest>(&Bytes::from_static(
            br#"{"name": "p", "prefix": "x", "colour": 1}"#,
        ))
        .expect_err("unknown");
        assert_eq!(err.field.as_deref(), Some("colour"));
        let err =
            body::<PodRequest>(&Bytes::from_static(br#"{"prefix": "x"}"#)).expect_err("missing");
        assert_eq!(err.field.as_deref(), Some("name"));
    }
}

#[cfg(test)]
mod future_size {
    use super::*;

    /// A waiting watch holds its whole handler future: it must stay small (its database calls
    /// are boxed, see `subscribe`).
    #[tokio::test]
    async fn a_waiting_watch_holds_a_small_future() {
        let dir = std::env::temp_dir().join(format!("flat6-future-size-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let url = format!("sqlite://{}", dir.join("c.db").display());
        let store = Store::connect(&url).await.expect("store");
        let state = AppState {
            store,
            admin_token: Arc::from("a"),
            agent_token: Arc::from("b"),
            metrics: Arc::new(Metrics::default()),
            hub: Arc::new(Hub::new(10)),
        };
        let query = || ChangesQuery {
            after_revision: Some(1),
            wait: Some(1),
            cluster: None,
            groups: None,
        };
        let host = host_changes(
            State(state.clone()),
            HeaderMap::new(),
            Path("hv0".into()),
            Query(query()),
        );
        let pod = reservation_changes(
            State(state),
            HeaderMap::new(),
            Path("p".into()),
            Query(query()),
        );
        let (host, pod) = (std::mem::size_of_val(&host), std::mem::size_of_val(&pod));
        eprintln!("host watch future {host} B, pod watch future {pod} B");
        assert!(host <= 2048 && pod <= 2048, "{host} / {pod} bytes");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
