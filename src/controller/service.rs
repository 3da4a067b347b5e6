//! What each API call does: validate the request (every problem names its field), allocate, store,
//! and build the agents' documents. The HTTP layer (`api.rs`) only maps these to routes and status
//! codes.

use std::net::Ipv6Addr;
use std::sync::atomic::Ordering;

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};

use super::allocate::{self, AllocateError, Dense, DenseKind, RANDOM_ATTEMPTS};
use super::metrics::Metrics;
use super::store::{
    ConflictOn, GroupRow, InstanceChange, InstanceRow, NewInstance, NewPod, PodRow, PodWrite,
    Store, StoreError,
};
use crate::model::doc::{GroupEntry, PortsDocument, Reservation, ReservationsDoc, RuleEntry};
use crate::model::{Mac, Prefix};

/// An API error: the HTTP status follows from the kind; `field` names the offending request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// A sentence for people.
    pub message: String,
    /// The request field it concerns, if any (`prefix`, `rules[1].ports`).
    pub field: Option<String>,
}

/// Error kinds, one per HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400
    Invalid,
    /// 401
    Unauthorized,
    /// 403
    Forbidden,
    /// 404
    NotFound,
    /// 409
    Conflict,
    /// 503
    Unavailable,
    /// 500
    Internal,
}

impl ApiError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Invalid,
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    fn not_found(field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::NotFound,
            message: message.into(),
            field: field.map(str::to_string),
        }
    }

    /// A conflict (409).
    pub fn conflict(field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Conflict,
            message: message.into(),
            field: field.map(str::to_string),
        }
    }

    /// 401 or 403.
    pub fn auth(kind: ErrorKind, message: &str) -> Self {
        Self {
            kind,
            message: message.to_string(),
            field: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(reason) => Self {
                kind: ErrorKind::Unavailable,
                message: format!("database unavailable: {reason}"),
                field: None,
            },
            StoreError::Conflict { what, message } => Self {
                kind: ErrorKind::Conflict,
                message,
                field: match what {
                    ConflictOn::Name => Some("name".into()),
                    ConflictOn::Mac => Some("mac".into()),
                    ConflictOn::Prefix => Some("prefix".into()),
                    ConflictOn::Address => Some("address".into()),
                    ConflictOn::Other => None,
                },
            },
            StoreError::NotFound(what) => Self::not_found(None, what),
            StoreError::Other(reason) => Self {
                kind: ErrorKind::Internal,
                message: reason,
                field: None,
            },
        }
    }
}

impl From<AllocateError> for ApiError {
    fn from(err: AllocateError) -> Self {
        match err {
            AllocateError::Invalid(m) => Self::invalid("instance_prefix_length", m),
            other => Self::conflict(None, other.to_string()),
        }
    }
}

/// `POST /v1/pods`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRequest {
    /// Pod name.
    pub name: String,
    /// The pod prefix.
    pub prefix: String,
    /// 64 (one /64 per instance) or the pod's own length (a shared range).
    pub instance_prefix_length: Option<u8>,
    /// Addresses or prefixes never handed out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A pod as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodView {
    /// Name.
    pub name: String,
    /// Prefix.
    pub prefix: String,
    /// Per-instance prefix length.
    pub instance_prefix_length: u8,
    /// Never handed out.
    pub exclude: Vec<String>,
    /// Revision of the pod's reservation document.
    pub revision: u64,
}

impl From<PodRow> for PodView {
    fn from(p: PodRow) -> Self {
        Self {
            name: p.name,
            prefix: p.prefix.to_string(),
            instance_prefix_length: p.instance_prefix_length,
            exclude: p.exclude.iter().map(|e| e.to_string()).collect(),
            revision: p.revision,
        }
    }
}

/// `POST /v1/pods/{pod}/instances`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRequest {
    /// Instance name, unique in the pod.
    pub name: String,
    /// Its MAC, unique in the pod.
    pub mac: String,
    /// The hypervisor it runs on.
    pub host: Option<String>,
    /// Its bridge port on that hypervisor.
    pub port: Option<String>,
    /// Its security groups.
    #[serde(default)]
    pub security_groups: Vec<String>,
}

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceView {
    /// Name.
    pub name: String,
    /// MAC.
    pub mac: String,
    /// Hypervisor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Bridge port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Its /64, when the pod gives one per instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Its addresses.
    pub addresses: Vec<String>,
    /// Its groups.
    pub security_groups: Vec<String>,
}

impl From<InstanceRow> for InstanceView {
    fn from(i: InstanceRow) -> Self {
        Self {
            name: i.name,
            mac: i.mac.to_string(),
            host: i.host,
            port: i.port,
            prefix: i.prefix.map(|p| p.to_string()),
            addresses: i.addresses.iter().map(|a| a.to_string()).collect(),
            security_groups: i.security_groups,
        }
    }
}

/// What an instance listing keeps: every filter that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    /// On this hypervisor.
    pub host: Option<String>,
    /// With this MAC.
    pub mac: Option<Mac>,
    /// Holding this address, or owning the /64 it is in (an instance may use its whole /64 when
    /// the guard runs with `anti_spoofing = "prefix"`).
    pub address: Option<Ipv6Addr>,
}

impl InstanceFilter {
    /// From the query parameters `host`, `mac` and `address`; a malformed MAC or address is a
    /// 400 naming it.
    pub fn parse(
        host: Option<String>,
        mac: Option<&str>,
        address: Option<&str>,
    ) -> Result<Self, ApiError> {
        let mac = mac
            .map(|m| {
                m.parse::<Mac>()
                    .map_err(|e| ApiError::invalid("mac", format!("{m:?}: {e}")))
            })
            .transpose()?;
        let address = address
            .map(|a| {
                a.parse::<Ipv6Addr>().map_err(|_| {
                    ApiError::invalid("address", format!("{a:?} is not an IPv6 address"))
                })
            })
            .transpose()?;
        Ok(Self { host, mac, address })
    }

    /// Whether `instance` passes every filter that is set.
    pub fn matches(&self, instance: &InstanceRow) -> bool {
        self.host
            .as_deref()
            .is_none_or(|h| instance.host.as_deref() == Some(h))
            && self.mac.is_none_or(|m| instance.mac == m)
            && self.address.is_none_or(|a| {
                instance.addresses.contains(&a) || instance.prefix.is_some_and(|p| p.contains(&a))
            })
    }
}

/// One instance found by [`find_instances`]: its pod and the usual view.
#[derive(Debug, Clone, Serialize)]
pub struct FoundInstance {
    /// The pod it belongs to.
    pub pod: String,
    /// The instance.
    #[serde(flatten)]
    pub instance: InstanceView,
}

/// `GET /v1/instances?mac=…&address=…`: the instances of every pod that match `filter`, by pod
/// and name. A MAC or an address is required (a listing of everything is `GET` per pod). Only the
/// pods whose range contains the address are read.
pub async fn find_instances(
    store: &Store,
    filter: &InstanceFilter,
) -> Result<Vec<FoundInstance>, ApiError> {
    if filter.mac.is_none() && filter.address.is_none() {
        return Err(ApiError::invalid(
            "mac",
            "give mac or address (or both) to search every pod",
        ));
    }
    let mut found = Vec::new();
    for pod in store.list_pods().await? {
        if filter.address.is_some_and(|a| !pod.prefix.contains(&a)) {
            continue;
        }
        let rows = match store
            .list_instances(&pod.name, filter.host.as_deref())
            .await
        {
            Ok(rows) => rows,
            // Deleted since it was listed.
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        found.extend(
            rows.into_iter()
                .filter(|i| filter.matches(i))
                .map(|i| FoundInstance {
                    pod: pod.name.clone(),
                    instance: InstanceView::from(i),
                }),
        );
    }
    Ok(found)
}

/// `PATCH /v1/pods/{pod}/instances/{name}`: what to change; a field left out stays as it is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceUpdateRequest {
    /// The hypervisor it runs on now; `null` clears it (and the port).
    #[serde(default, deserialize_with = "present")]
    pub host: Option<Option<String>>,
    /// Its bridge port on that hypervisor; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    pub port: Option<Option<String>>,
    /// Its security groups, all of them (replaces the list).
    pub security_groups: Option<Vec<String>>,
}

/// A field that is present: `null` → `Some(None)`, a value → `Some(Some(v))` (absent → `None`
/// through `#[serde(default)]`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Validate and apply a change to an instance (see `Store::update_instance`).
pub async fn update_instance(
    store: &Store,
    pod: &str,
    name: &str,
    req: &InstanceUpdateRequest,
) -> Result<InstanceView, ApiError> {
    let (change, port_needs_current_host) = validate_update(req)?;
    if port_needs_current_host && store.get_instance(pod, name).await?.host.is_none() {
        return Err(ApiError::invalid("host", "a port needs the host it is on"));
    }
    match store.update_instance(pod, name, &change).await? {
        Ok(row) => {
            tracing::info!(pod, instance = name, host = ?row.host, port = ?row.port, groups = ?row.security_groups, "updated instance");
            Ok(InstanceView::from(row))
        }
        Err(i) => Err(ApiError::not_found(
            Some(&format!("security_groups[{i}]")),
            format!(
                "unknown security group {:?}",
                req.security_groups
                    .as_ref()
                    .and_then(|g| g.get(i))
                    .map_or("", String::as_str)
            ),
        )),
    }
}

/// The change a `PATCH` asks for, validated, and whether a new port needs the instance's current
/// host (the request names a port but leaves the host alone). Clearing the host clears the port;
/// a port with the host cleared is an error naming `host`.
pub fn validate_update(req: &InstanceUpdateRequest) -> Result<(InstanceChange, bool), ApiError> {
    if let Some(Some(host)) = &req.host {
        check_name("host", host)?;
    }
    if let Some(Some(port)) = &req.port
        && let Some(problem) = crate::config::interface_name_problem(port)
    {
        return Err(ApiError::invalid("port", problem));
    }
    for (i, g) in req.security_groups.iter().flatten().enumerate() {
        check_name(&format!("security_groups[{i}]"), g)?;
    }
    let mut change = InstanceChange {
        host: req.host.clone(),
        port: req.port.clone(),
        security_groups: req.security_groups.clone(),
    };
    let new_port = matches!(change.port, Some(Some(_)));
    if change.host == Some(None) {
        if new_port {
            return Err(ApiError::invalid("host", "a port needs the host it is on"));
        }
        change.port = Some(None);
    }
    let needs_current_host = new_port && change.host.is_none();
    Ok((change, needs_current_host))
}

/// `PUT /v1/security-groups/{name}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRequest {
    /// The rules, in the ports document's rule format.
    #[serde(default)]
    pub rules: Vec<RuleEntry>,
}

/// A security group as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupView {
    /// Name.
    pub name: String,
    /// Rules.
    pub rules: Vec<RuleEntry>,
}

/// A security group's name, as `check_name` takes it (for the watch's `groups` cursor).
pub fn check_group_name(name: &str) -> Result<(), ApiError> {
    check_name("groups", name)
}

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{name:?} is not a name (1 to 64 letters, digits, '-', '_', '.')"),
        ))
    }
}

/// Validate a pod request into what the store takes.
pub fn validate_pod(req: &PodRequest) -> Result<NewPod, ApiError> {
    check_name("name", &req.name)?;
    let prefix: Prefix = req
        .prefix
        .parse()
        .map_err(|e: crate::model::PrefixError| ApiError::invalid("prefix", e.to_string()))?;
    let default_len = if prefix.len() < 64 { 64 } else { prefix.len() };
    let instance_prefix_length = req.instance_prefix_length.unwrap_or(default_len);
    if instance_prefix_length != prefix.len() && instance_prefix_length != 64 {
        return Err(ApiError::invalid(
            "instance_prefix_length",
            format!(
                "{instance_prefix_length} must be 64 (a /64 per instance) or {} (the pod's prefix length, a shared range)",
                prefix.len()
            ),
        ));
    }
    if instance_prefix_length == 64 && prefix.len() > 64 {
        return Err(ApiError::invalid(
            "instance_prefix_length",
            format!("a /{} pod cannot hold /64s", prefix.len()),
        ));
    }
    let mut exclude = Vec::new();
    for (i, text) in req.exclude.iter().enumerate() {
        let field = format!("exclude[{i}]");
        let net: Ipv6Net = match text.parse::<Ipv6Addr>() {
            Ok(addr) => Ipv6Net::from(addr),
            Err(_) => text
                .parse::<Prefix>()
                .map(|p| p.net())
                .map_err(|e| ApiError::invalid(&field, e.to_string()))?,
        };
        if !prefix.net().contains(&net) {
            return Err(ApiError::invalid(
                &field,
                format!("{net} is outside the pod prefix {prefix}"),
            ));
        }
        exclude.push(net);
    }
    Ok(NewPod {
        name: req.name.clone(),
        prefix,
        instance_prefix_length,
        exclude,
    })
}

/// Validate an instance request (groups are checked against the store by the caller).
pub fn validate_instance(req: &InstanceRequest) -> Result<NewInstance, ApiError> {
    check_name("name", &req.name)?;
    let mac: Mac = req
        .mac
        .parse()
        .map_err(|e: crate::model::MacError| ApiError::invalid("mac", e.to_string()))?;
    if !mac.is_unicast() {
        return Err(ApiError::invalid(
            "mac",
            format!("{mac} is not a unicast MAC"),
        ));
    }
    if let Some(host) = &req.host {
        check_name("host", host)?;
    }
    if let Some(port) = &req.port
        && let Some(problem) = crate::config::interface_name_problem(port)
    {
        return Err(ApiError::invalid("port", problem));
    }
    if req.port.is_some() && req.host.is_none() {
        return Err(ApiError::invalid("host", "a port needs the host it is on"));
    }
    for (i, g) in req.security_groups.iter().enumerate() {
        check_name(&format!("security_groups[{i}]"), g)?;
    }
    Ok(NewInstance {
        name: req.name.clone(),
        mac,
        host: req.host.clone(),
        port: req.port.clone(),
        security_groups: req.security_groups.clone(),
    })
}

/// Validate a group's rules with the one rule validation the guard also uses
/// (`model::rule`), so the controller never stores a rule the guard would reject. `known` says
/// whether a remote group exists (the group itself always does). Every problem is in the message;
/// `field` is the first one's path (`rules[1].ports`).
pub fn validate_rules(
    name: &str,
    rules: &[RuleEntry],
    known: &dyn Fn(&str) -> bool,
) -> Result<(), ApiError> {
    check_name("name", name)?;
    let mut check = crate::config::Checker::default();
    for (i, rule) in rules.iter().enumerate() {
        crate::model::rule::validate_rule(&mut check, &format!("rules[{i}]"), rule, &|g| {
            g == name || known(g)
        });
    }
    if check.is_clean() {
        return Ok(());
    }
    let problems = check.finish();
    let field = problems
        .iter()
        .next()
        .map(|p| p.path.clone())
        .unwrap_or_default();
    let message = problems
        .iter()
        .map(|p| p.message.clone())
        .collect::<Vec<_>>()
        .join("; ");
    Err(ApiError::invalid(&field, message))
}

/// Create an instance: allocate its /64 (per-instance pods) and first address, retrying on
/// collisions and scanning when random choice keeps colliding. Each try is one database
/// transaction that locks the pod, reads it, chooses and inserts (see [`PodWrite`]).
pub async fn create_instance(
    store: &Store,
    metrics: &Metrics,
    pod: &str,
    req: &InstanceRequest,
    rng: &mut (impl rand::Rng + Send),
) -> Result<InstanceView, ApiError> {
    let new = validate_instance(req)?;
    for attempt in 0..RANDOM_ATTEMPTS * 2 {
        let scan = attempt >= RANDOM_ATTEMPTS;
        let mut write = store.begin_instance_write(pod, new.host.as_deref()).await?;
        if let Some(i) = write.missing_group(&new.security_groups).await? {
            return Err(ApiError::not_found(
                Some(&format!("security_groups[{i}]")),
                format!("unknown security group {:?}", new.security_groups[i]),
            ));
        }
        let pod_net = write.pod().prefix.net();
        let instance_prefix_length = write.pod().instance_prefix_length;
        let exclude = write.pod().exclude.clone();
        let per_instance = instance_prefix_length == 64 && pod_net.prefix_len() < 64;
        let dense = Dense::for_pod(pod_net, instance_prefix_length, &exclude);
        let prefix = if per_instance {
            let chosen = if let Some(dense) = &dense {
                choose_dense(&mut write, dense, metrics, rng)
                    .await?
                    .ok_or_else(|| AllocateError::NoFreePrefix {
                        pod: pod.to_string(),
                        prefix: pod_net,
                        len: 64,
                    })?
            } else if scan {
                let used = write.used_prefixes().await?;
                allocate::scan_free_prefix(pod, pod_net, 64, &exclude, &used, rng)?
            } else {
                allocate::random_prefix(pod_net, 64, &exclude, rng).ok_or_else(|| {
                    AllocateError::NoFreePrefix {
                        pod: pod.to_string(),
                        prefix: pod_net,
                        len: 64,
                    }
                })?
            };
            Some(chosen)
        } else {
            None
        };
        let range = allocate::instance_range(pod_net, instance_prefix_length, prefix)?;
        let shared = dense.filter(|d| d.kind() == DenseKind::Addresses);
        let address = choose_address(
            &mut write,
            pod,
            range,
            &exclude,
            shared.as_ref(),
            scan,
            metrics,
            rng,
        )
        .await?;
        match write.create_instance(&new, prefix, address).await {
            Ok(row) => {
                metrics.allocations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(pod, instance = %row.name, mac = %row.mac, %address, ?prefix, "created instance");
                return Ok(row.into());
            }
            Err(StoreError::Conflict {
                what: ConflictOn::Address | ConflictOn::Prefix,
                message,
            }) => {
                tracing::debug!(attempt, %message, "allocation collided; choosing again");
                metrics.conflicts_retried.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(other) => return Err(other.into()),
        }
    }
    Err(ApiError::conflict(
        None,
        format!(
            "could not allocate in pod {pod} after {} attempts",
            RANDOM_ATTEMPTS * 2
        ),
    ))
}

/// An address of `range`: through the block counts in a dense shared range (see
/// [`Dense`]), else at random (a /64 or larger: a collision is rare enough to just try again),
/// or, after [`RANDOM_ATTEMPTS`] collisions, uniformly among the free ones.
#[allow(clippy::too_many_arguments)]
async fn choose_address(
    write: &mut PodWrite<'_>,
    pod: &str,
    range: Ipv6Net,
    exclude: &[Ipv6Net],
    dense: Option<&Dense>,
    scan: bool,
    metrics: &Metrics,
    rng: &mut (impl rand::Rng + Send),
) -> Result<Ipv6Addr, ApiError> {
    let exhausted = || -> ApiError {
        AllocateError::Exhausted {
            pod: pod.to_string(),
            range,
        }
        .into()
    };
    if let Some(dense) = dense {
        return choose_dense(write, dense, metrics, rng)
            .await?
            .map(|net| net.network())
            .ok_or_else(exhausted);
    }
    if scan {
        let used = write.used_addresses(range).await?;
        return Ok(allocate::scan_free_address(
            pod, range, exclude, &used, rng,
        )?);
    }
    allocate::random_address(range, exclude, rng).ok_or_else(exhausted)
}

/// Random draws, each checked with one index lookup in the same transaction, before a choice in
/// a dense range reads its block counts: at a fill level f a draw is free with probability 1 - f,
/// so while the range is not nearly full a choice costs a lookup or two instead of the counts
/// (√n rows) and a block (up to √n more). A rejected draw is simply drawn again, so every free
/// value stays equally likely.
const DENSE_PROBES: usize = 8;

/// How often a choice in a dense range may find a block count wrong (and correct it) before it
/// gives up.
const DENSE_TRIES: usize = 8;

/// A free /64 (or, in a shared range, a /128) of `dense`, under the write's pod lock: up to
/// [`DENSE_PROBES`] random draws, each looked up; then read the block counts, draw a block by its
/// free values, read that block's used values and draw among its free ones (see [`Dense`]).
/// `None` when the counts say the range is full. A count that disagrees with its block is
/// corrected in the same transaction.
async fn choose_dense(
    write: &mut PodWrite<'_>,
    dense: &Dense,
    metrics: &Metrics,
    rng: &mut (impl rand::Rng + Send),
) -> Result<Option<Ipv6Net>, ApiError> {
    for _ in 0..DENSE_PROBES {
        let Some(drawn) = dense.draw(rng) else {
            break;
        };
        let taken = match dense.kind() {
            DenseKind::Prefixes => !write.used_prefixes_in(drawn).await?.is_empty(),
            DenseKind::Addresses => !write.used_addresses(drawn).await?.is_empty(),
        };
        metrics
            .allocation_rows_read
            .fetch_add(u64::from(taken), Ordering::Relaxed);
        if !taken {
            return Ok(Some(drawn));
        }
    }
    for _ in 0..DENSE_TRIES {
        let counts = write.block_counts(dense.scope()).await?;
        let Some(block) = dense.pick_block(&counts, rng) else {
            return Ok(None);
        };
        let span = dense.block_span(block);
        let (picked, used) = match dense.kind() {
            DenseKind::Prefixes => {
                let used = write.used_prefixes_in(span).await?;
                (dense.pick_prefix(block, &used, rng), used.len())
            }
            DenseKind::Addresses => {
                let used = write.used_addresses(span).await?;
                (
                    dense.pick_address(block, &used, rng).map(Ipv6Net::from),
                    used.len(),
                )
            }
        };
        metrics
            .allocation_rows_read
            .fetch_add((counts.len() + used) as u64, Ordering::Relaxed);
        let recorded = counts
            .iter()
            .find(|(b, _)| *b == block)
            .map_or(0, |(_, n)| *n);
        if recorded != used as u64 {
            tracing::debug!(block, recorded, used, "allocation block count corrected");
            write
                .set_block_count(dense.scope(), block, used as u64)
                .await?;
        }
        if picked.is_some() {
            return Ok(picked);
        }
    }
    Err(ApiError::conflict(
        None,
        "the allocation counts kept disagreeing with the addresses; try again",
    ))
}

/// Add another address to an instance, inside its /64 (or the pod's shared range). Each try is
/// one database transaction that locks the pod, reads it and the instance, chooses and inserts
/// (see [`PodWrite`]).
pub async fn add_address(
    store: &Store,
    metrics: &Metrics,
    pod: &str,
    instance: &str,
    rng: &mut (impl rand::Rng + Send),
) -> Result<Ipv6Addr, ApiError> {
    let mut range = None;
    for attempt in 0..RANDOM_ATTEMPTS * 2 {
        let scan = attempt >= RANDOM_ATTEMPTS;
        let mut write = store.begin_address_write(pod, instance).await?;
        let exclude = write.pod().exclude.clone();
        let within = allocate::instance_range(
            write.pod().prefix.net(),
            write.pod().instance_prefix_length,
            write.instance_prefix(),
        )?;
        range = Some(within);
        let dense = Dense::for_pod(
            write.pod().prefix.net(),
            write.pod().instance_prefix_length,
            &exclude,
        )
        .filter(|d| d.kind() == DenseKind::Addresses);
        let address = choose_address(
            &mut write,
            pod,
            within,
            &exclude,
            dense.as_ref(),
            scan,
            metrics,
            rng,
        )
        .await?;
        match write.add_address(address).await {
            Ok(()) => {
                metrics.allocations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(pod, instance, %address, "added address");
                return Ok(address);
            }
            Err(StoreError::Conflict {
                what: ConflictOn::Address,
                ..
            }) => {
                metrics.conflicts_retried.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(other) => return Err(other.into()),
        }
    }
    let range = range.map_or_else(|| "?".to_string(), |r| r.to_string());
    Err(ApiError::conflict(
        None,
        format!("could not allocate in {range} of pod {pod}"),
    ))
}

/// The VR's reservation document for a pod. An instance without addresses has no reservation
/// (the VR refuses an empty one).
pub async fn reservations_document(store: &Store, pod: &str) -> Result<ReservationsDoc, ApiError> {
    let (revision, entries) = store.reservations(pod).await?;
    let reservations = entries
        .into_iter()
        .filter(|(_, addresses)| !addresses.is_empty())
        .map(|(mac, addresses)| Reservation { mac, addresses })
        .collect();
    Ok(ReservationsDoc {
        revision,
        reservations,
    })
}

/// The guard's full ports document for a host (the watch follows `/changes` instead).
pub async fn ports_document(store: &Store, host: &str) -> Result<PortsDocument, ApiError> {
    let doc = store.host_ports(host).await?;
    let mut security_groups = Vec::with_capacity(doc.groups.len());
    for (name, rules_json, members) in doc.groups {
        let rules: Vec<RuleEntry> = serde_json::from_str(&rules_json).map_err(|e| ApiError {
            kind: ErrorKind::Internal,
            message: format!("stored rules of security group {name}: {e}"),
            field: None,
        })?;
        security_groups.push(GroupEntry {
            name,
            members,
            rules,
        });
    }
    Ok(PortsDocument {
        revision: doc.revision,
        ports: doc.ports,
        security_groups,
    })
}

/// A group row as the API shows it.
pub fn group_view(row: GroupRow) -> Result<GroupView, ApiError> {
    let rules = serde_json::from_str(&row.rules_json).map_err(|e| ApiError {
        kind: ErrorKind::Internal,
        message: format!("stored rules of security group {}: {e}", row.name),
        field: None,
    })?;
    Ok(GroupView {
        name: row.name,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instance_filters_match_host_mac_address_and_the_instance_prefix() {
        let instance = InstanceRow {
            name: "i-1".into(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            host: Some("hv1".into()),
            port: Some("vnet1".into()),
            prefix: Some("2001:db8:1:2::/64".parse().unwrap()),
            addresses: vec!["2001:db8:1:2::10".parse().unwrap()],
            security_groups: vec![],
        };
        let filter = |host: Option<&str>, mac: Option<&str>, address: Option<&str>| {
            InstanceFilter::parse(host.map(String::from), mac, address).unwrap()
        };
        assert!(filter(None, None, None).matches(&instance));
        assert!(filter(Some("hv1"), Some("02:00:00:00:00:01"), None).matches(&instance));
        assert!(!filter(Some("hv2"), None, None).matches(&instance));
        assert!(!filter(None, Some("02:00:00:00:00:02"), None).matches(&instance));
        // Held, or anywhere in its /64; not outside it.
        assert!(filter(None, None, Some("2001:db8:1:2::10")).matches(&instance));
        assert!(filter(None, None, Some("2001:db8:1:2::ffff")).matches(&instance));
        assert!(!filter(None, None, Some("2001:db8:1:3::10")).matches(&instance));
        // Every filter given must hold.
        assert!(
            !filter(
                Some("hv1"),
                Some("02:00:00:00:00:01"),
                Some("2001:db8:9::1")
            )
            .matches(&instance)
        );
        let shared = InstanceRow {
            prefix: None,
            ..instance
        };
        assert!(!filter(None, None, Some("2001:db8:1:2::ffff")).matches(&shared));
        assert!(filter(None, None, Some("2001:db8:1:2::10")).matches(&shared));
        // Malformed values name their parameter.
        let err = InstanceFilter::parse(None, Some("02:00"), None).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("mac"));
        let err = InstanceFilter::parse(None, None, Some("2001:db8::zz")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("address"));
    }

    fn update(json: serde_json::Value) -> InstanceUpdateRequest {
        serde_json::from_value(json).expect("update request")
    }

    #[test]
    fn an_update_leaves_out_what_it_does_not_name() {
        let (change, needs_host) =
            validate_update(&update(json!({"security_groups": ["web"]}))).expect("valid");
        assert_eq!(change.host, None);
        assert_eq!(change.port, None);
        assert_eq!(change.security_groups, Some(vec!["web".to_string()]));
        assert!(!needs_host);
        let (change, needs_host) =
            validate_update(&update(json!({"host": "hv2", "port": "vnet3"}))).expect("valid");
        assert_eq!(change.host, Some(Some("hv2".into())));
        assert_eq!(change.port, Some(Some("vnet3".into())));
        assert!(!needs_host);
    }

    #[test]
    fn clearing_the_host_clears_the_port_and_a_lone_port_needs_the_current_host() {
        let (change, needs_host) = validate_update(&update(json!({"host": null}))).expect("valid");
        assert_eq!((change.host, change.port), (Some(None), Some(None)));
        assert!(!needs_host);
        let (_, needs_host) = validate_update(&update(json!({"port": "vnet3"}))).expect("valid");
        assert!(needs_host);
        let err = validate_update(&update(json!({"host": null, "port": "vnet3"})))
            .expect_err("port without host");
        assert_eq!(err.field.as_deref(), Some("host"));
    }

    #[test]
    fn a_bad_update_names_its_field() {
        for (body, field) in [
            (json!({"host": "hv 2"}), "host"),
            (json!({"port": "a/b"}), "port"),
            (
                json!({"security_groups": ["web", ""]}),
                "security_groups[1]",
            ),
        ] {
            let err = validate_update(&update(body.clone())).expect_err("invalid");
            assert_eq!(err.field.as_deref(), Some(field), "{body}");
        }
        assert!(serde_json::from_value::<InstanceUpdateRequest>(json!({"hots": "x"})).is_err());
    }

    fn pod(prefix: &str, len: Option<u8>, exclude: &[&str]) -> PodRequest {
        PodRequest {
            name: "p1".into(),
            prefix: prefix.into(),
            instance_prefix_length: len,
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn pod_validation_names_the_field() {
        assert_eq!(
            validate_pod(&pod("2001:db8:1::/48", None, &[])).map(|p| p.instance_prefix_length),
            Ok(64)
        );
        assert_eq!(
            validate_pod(&pod("2001:db8:1::/120", None, &[])).map(|p| p.instance_prefix_length),
            Ok(120)
        );
        let err = validate_pod(&pod("2001:db8::/129", None, &[])).expect_err("bad prefix");
        assert_eq!(err.field.as_deref(), Some("prefix"));
        assert_eq!(err.kind, ErrorKind::Invalid);
        let err = validate_pod(&pod("2001:db8:1::/48", Some(56), &[])).expect_err("bad length");
        assert_eq!(err.field.as_deref(), Some("instance_prefix_length"));
        let err =
            validate_pod(&pod("2001:db8:1::/48", None, &["2001:db8:2::1"])).expect_err("outside");
        assert_eq!(err.field.as_deref(), Some("exclude[0]"));
        let ok = validate_pod(&pod(
            "2001:db8:1::/120",
            None,
            &["2001:db8:1::1", "2001:db8:1::f0/124"],
        ))
        .expect("valid");
        assert_eq!(ok.exclude.len(), 2);
        let mut bad_name = pod("2001:db8:1::/48", None, &[]);
        bad_name.name = "a b".into();
        assert_eq!(
            validate_pod(&bad_name).expect_err("name").field.as_deref(),
            Some("name")
        );
    }

    #[test]
    fn instance_validation_names_the_field() {
        let req = |mac: &str, port: Option<&str>, host: Option<&str>| InstanceRequest {
            name: "i-1".into(),
            mac: mac.into(),
            host: host.map(str::to_string),
            port: port.map(str::to_string),
            security_groups: vec![],
        };
        assert!(validate_instance(&req("02:00:00:00:00:01", Some("vnet0"), Some("hv1"))).is_ok());
        assert_eq!(
            validate_instance(&req("02:00:00:00:00", None, None))
                .expect_err("mac")
                .field
                .as_deref(),
            Some("mac")
        );
        assert_eq!(
            validate_instance(&req("01:00:00:00:00:01", None, None))
                .expect_err("mcast")
                .field
                .as_deref(),
            Some("mac")
        );
        assert_eq!(
            validate_instance(&req("02:00:00:00:00:01", Some("vnet0"), None))
                .expect_err("host")
                .field
                .as_deref(),
            Some("host")
        );
        assert_eq!(
            validate_instance(&req("02:00:00:00:00:01", Some("a/b"), Some("h")))
                .expect_err("port")
                .field
                .as_deref(),
            Some("port")
        );
    }

    #[test]
    fn rules_are_validated_like_the_guard_does() {
        let known = |g: &str| g == "admin";
        let rule = |v: serde_json::Value| vec![serde_json::from_value::<RuleEntry>(v).unwrap()];
        assert!(
            validate_rules(
                "web",
                &rule(
                    serde_json::json!({"direction": "ingress", "protocol": "tcp", "ports": "80"})
                ),
                &known
            )
            .is_ok()
        );
        assert!(validate_rules("web", &rule(serde_json::json!({"direction": "ingress", "protocol": "tcp", "ports": "22", "remote_group": "admin"})), &known).is_ok());
        let err = validate_rules(
            "web",
            &rule(serde_json::json!({"direction": "ingress", "protocol": "tcp", "ports": "90-80"})),
            &known,
        )
        .expect_err("range");
        assert_eq!(err.field.as_deref(), Some("rules[0].ports"));
        assert!(
            err.message.contains("90-80 is an empty range"),
            "{}",
            err.message
        );
        let err = validate_rules(
            "web",
            &rule(serde_json::json!({"direction": "ingress", "remote_group": "ghost"})),
            &known,
        )
        .expect_err("ghost");
        assert_eq!(err.field.as_deref(), Some("rules[0].remote_group"));
        let err = validate_rules("web", &rule(serde_json::json!({"direction": "up"})), &known)
            .expect_err("dir");
        assert_eq!(err.field.as_deref(), Some("rules[0].direction"));
        // A group may refer to itself.
        assert!(
            validate_rules(
                "web",
                &rule(serde_json::json!({"direction": "ingress", "remote_group": "web"})),
                &known
            )
            .is_ok()
        );
    }
}
