//! The DHCPv6 server shell: receive, pick the reservation, let [`super::reply`] decide, send;
//! reload the reservation document when its file changes or on SIGHUP.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use dhcproto::Encodable;
use tokio::time::Instant;

use super::reply::{self, ClientKey, Decision, Outcome, Received, Settings};
use super::reservations::Reservations;
use super::socket::{Captured, DhcpSocket, DhcpSocketError, SERVER_PORT, parse_datagram};
use super::state::{ClientLimiter, Declines, LeaseLog, StateError, load_or_create_duid};
use crate::config::{MacSource, VrConfig};
use crate::model::doc::ReservationChanges;
use crate::model::{Duid, Mac};
use crate::source::{Delivery, DocumentSource, FeedScope};

/// How many clients without a reservation are remembered for logging once at info.
const MAX_UNKNOWN_LOGGED: usize = 4096;

/// Counters of the DHCPv6 side, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct DhcpCounters {
    /// Packets captured on port 547.
    pub received: AtomicU64,
    /// Replies sent (Advertise or Reply).
    pub replied: AtomicU64,
    /// Messages ignored (not for us, relay messages, wrong direction...).
    pub ignored: AtomicU64,
    /// Packets that could not be decoded.
    pub malformed: AtomicU64,
    /// Messages dropped by the per-client rate limit.
    pub rate_limited: AtomicU64,
    /// Declines ignored: the frame's MAC did not own the reservation they were for.
    pub foreign_declines: AtomicU64,
    /// Solicits and Requests from clients without a reservation.
    pub unknown_clients: AtomicU64,
    /// Declines received.
    pub declines: AtomicU64,
    /// Reservation documents loaded.
    pub reloads: AtomicU64,
    /// Reservation documents rejected (the previous one stayed in force).
    pub rejected_documents: AtomicU64,
    /// Feed answers refused for a revision older than the one in force.
    pub stale_documents: AtomicU64,
    /// Feed changes applied in place.
    pub changes_applied: AtomicU64,
}

/// The running server on one interface.
pub struct DhcpServer {
    socket: DhcpSocket,
    settings: Settings,
    table: Reservations,
    declines: Declines,
    limiter: ClientLimiter,
    source: DocumentSource,
    /// The pod and database of the table in force, when it came from the controller's feed.
    feed: Option<(String, String)>,
    missing_logged: bool,
    state_dir: std::path::PathBuf,
    leases: LeaseLog,
    leases_dirty: bool,
    leases_saved: Option<Instant>,
    lease_writer: Option<tokio::task::JoinHandle<()>>,
    unknown_logged: std::collections::HashSet<Option<Mac>>,
    /// Counters for metrics.
    pub counters: std::sync::Arc<DhcpCounters>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The sockets could not be opened.
    #[error(transparent)]
    Socket(#[from] DhcpSocketError),
    /// The state directory could not be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// The config has no `[source]`.
    #[error("dhcpv6 needs a [source]")]
    NoSource,
    /// The source could not be opened (e.g. the token file).
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
}

impl DhcpServer {
    /// Open the sockets, load or create the server DUID, and load the reservations (an unreadable
    /// or invalid document at start leaves an empty table: nobody gets an address until a good one
    /// arrives, but Information-Request is answered).
    pub fn start(config: &VrConfig, ifindex: u32, interface_mac: Mac) -> Result<Self, ServerError> {
        let source = match &config.source {
            Some(crate::config::SourceConfig::File(path)) => DocumentSource::file(path),
            Some(crate::config::SourceConfig::Controller {
                url,
                scope,
                token_file,
                ca_file,
            }) => DocumentSource::feed(
                url,
                FeedScope::Pod(scope.clone()),
                token_file,
                ca_file.as_deref(),
                &config.state_dir,
            )?,
            None => return Err(ServerError::NoSource),
        };
        let (server_duid, created) =
            load_or_create_duid(&config.state_dir, interface_mac, SystemTime::now())?;
        if created {
            tracing::info!(duid = %server_duid, "created server DUID");
        } else {
            tracing::info!(duid = %server_duid, "loaded server DUID");
        }
        let d = &config.dhcpv6;
        let settings = Settings {
            server_duid,
            preferred_lifetime: d.preferred_lifetime,
            valid_lifetime: d.valid_lifetime,
            t1: d.t1,
            t2: d.t2,
            rapid_commit: d.rapid_commit,
            preference: d.preference,
            dns_servers: d.dns_servers.clone(),
            domain_search: d.domain_search.clone(),
            ntp_servers: d.ntp_servers.clone(),
            info_refresh_time: 86_400,
            mac_sources: d.mac_sources.clone(),
        };
        let socket = DhcpSocket::open(&config.interface, ifindex)?;
        let leases = LeaseLog::load(&config.state_dir);
        let declines = Declines::from_records(&leases.declined);
        let mut server = Self {
            socket,
            settings,
            table: Reservations::default(),
            declines,
            state_dir: config.state_dir.clone(),
            leases,
            leases_dirty: false,
            leases_saved: None,
            lease_writer: None,
            unknown_logged: std::collections::HashSet::new(),
            limiter: ClientLimiter::new(d.rate_limit),
            source,
            feed: None,
            missing_logged: false,
            counters: std::sync::Arc::new(DhcpCounters::default()),
        };
        server.reload(true);
        Ok(server)
    }

    /// The server DUID.
    pub fn server_duid(&self) -> &crate::model::Duid {
        &self.settings.server_duid
    }

    /// Revision of the reservation table in force.
    pub fn table_revision(&self) -> u64 {
        self.table.revision()
    }

    /// Clients with a reservation.
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Notified when the controller's feed delivered an answer (see `DocumentSource::arrivals`).
    pub fn arrivals(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.source.arrivals()
    }

    /// Where reservations come from, for logs.
    pub fn source_name(&self) -> String {
        self.source.describe()
    }

    /// Take what the source has: re-read the reservation file if it changed (or always with
    /// `force`, on SIGHUP) and swap the table only when the new document is valid; or apply
    /// every answer the controller's feed delivered, in order.
    pub fn reload(&mut self, force: bool) {
        // A feed can have several answers waiting; a file gives at most one.
        for round in 0..1024 {
            let delivery = match self.source.poll(force && round == 0) {
                Ok(Some(delivery)) => delivery,
                Ok(None) => return,
                Err(err) => {
                    if force || !self.missing_logged {
                        tracing::warn!(error = %err, "reservations unavailable; keeping the current table");
                        self.missing_logged = true;
                    }
                    return;
                }
            };
            self.missing_logged = false;
            let span = tracing::info_span!("reload", source = %self.source.describe());
            let _enter = span.enter();
            match &delivery {
                Delivery::Document(bytes) => {
                    self.load_document(bytes);
                }
                Delivery::Changes { bytes, replayed } => {
                    if let Some(snapshot) = self.take_changes(bytes, *replayed) {
                        self.source.persist(&delivery, snapshot);
                        if self.source.wants_snapshot()
                            && let Some((pod, cluster)) = &self.feed
                        {
                            match serde_json::to_vec(&self.table.to_changes(pod, cluster)) {
                                Ok(state) => self.source.persist_snapshot(&state),
                                Err(err) => {
                                    tracing::warn!(error = %err, "could not encode the reservation snapshot")
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Replace the table with a whole document, if it is valid.
    fn load_document(&mut self, bytes: &[u8]) -> bool {
        match Reservations::parse(bytes) {
            Ok(table) => {
                tracing::info!(
                    revision = table.revision(),
                    reservations = table.len(),
                    previous_revision = self.table.revision(),
                    "loaded reservations"
                );
                if table.duid_keyed() > 0 {
                    tracing::warn!(
                        duid_keyed = table.duid_keyed(),
                        "reservations keyed by an exact DUID: a DUID is whatever a client sends \
                         (and Solicits are multicast), so use them on trusted links only"
                    );
                }
                self.table = table;
                self.counters.reloads.fetch_add(1, Ordering::Relaxed);
                // The document (tens of MB for a million reservations), the old table and the
                // parser's scratch are free now; hand their pages back rather than keep them.
                crate::memory::release_free_memory();
                true
            }
            Err(problems) => {
                self.reject(&problems);
                false
            }
        }
    }

    fn reject(&self, problems: &crate::config::Problems) {
        self.counters
            .rejected_documents
            .fetch_add(1, Ordering::Relaxed);
        for problem in problems.iter() {
            tracing::warn!("{problem}");
        }
        tracing::warn!(
            problems = problems.len(),
            kept_revision = self.table.revision(),
            "rejected reservations document; the previous table stays in force"
        );
    }

    /// Apply one answer of the controller's feed. Returns whether it was a snapshot when it was
    /// taken, `None` when it was refused (the table in force stays).
    fn take_changes(&mut self, bytes: &[u8], replayed: bool) -> Option<bool> {
        #[derive(serde::Deserialize)]
        struct Head {
            pod: String,
            cluster: String,
            revision: u64,
            snapshot: bool,
        }
        let head: Head = match serde_json::from_slice(bytes) {
            Ok(head) => head,
            Err(err) => {
                self.counters
                    .rejected_documents
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "rejected a feed answer that is not reservation changes");
                self.source.resync();
                return None;
            }
        };
        let same_feed = self
            .feed
            .as_ref()
            .is_some_and(|(pod, cluster)| *pod == head.pod && *cluster == head.cluster);
        if same_feed && head.revision < self.table.revision() {
            self.counters
                .stale_documents
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                revision = head.revision,
                applied = self.table.revision(),
                "refused reservations older than the ones in force"
            );
            return None;
        }
        if head.snapshot {
            tracing::info!(revision = head.revision, replayed, "reservation snapshot");
            if !self.load_document(bytes) {
                return None;
            }
            self.feed = Some((head.pod, head.cluster));
            return Some(true);
        }
        if !same_feed {
            tracing::info!(pod = %head.pod, "changes without the snapshot they apply to; asking for one");
            self.source.resync();
            return None;
        }
        let change: ReservationChanges = match serde_json::from_slice(bytes) {
            Ok(change) => change,
            Err(err) => {
                self.counters
                    .rejected_documents
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "rejected reservation changes");
                self.source.resync();
                return None;
            }
        };
        let previous = self.table.revision();
        match self.table.apply(&change) {
            Ok(()) => {
                self.counters
                    .changes_applied
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    revision = change.revision,
                    reservations = self.table.len(),
                    previous_revision = previous,
                    replayed,
                    upserts = change.reservations.len(),
                    removed = change.removed.len(),
                    "applied reservation changes"
                );
                Some(false)
            }
            Err(problems) => {
                self.reject(&problems);
                self.source.resync();
                None
            }
        }
    }

    /// Write `leases.json` if something changed and the last write is at least a second old (or
    /// `now_anyway`, at shutdown).
    pub fn save_leases(&mut self, now_anyway: bool) {
        let now = Instant::now();
        let due = self
            .leases_saved
            .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1));
        if !self.leases_dirty || !(due || now_anyway) {
            return;
        }
        let writing = self.lease_writer.as_ref().is_some_and(|h| !h.is_finished());
        if writing && !now_anyway {
            // The previous write is still going (a slow disk): try again on the next tick.
            return;
        }
        // Only the copy happens here; serializing and fsyncing (milliseconds for a large log)
        // must not stall the packet loop, so they run on a blocking thread.
        let snapshot = self.leases.snapshot(&self.declines);
        self.leases_dirty = false;
        self.leases_saved = Some(now);
        let state_dir = self.state_dir.clone();
        if now_anyway {
            if let Err(err) = snapshot.write(&state_dir) {
                tracing::warn!(error = %err, "could not save the lease log");
            }
            return;
        }
        self.lease_writer = Some(tokio::task::spawn_blocking(move || {
            if let Err(err) = snapshot.write(&state_dir) {
                tracing::warn!(error = %err, "could not save the lease log");
            }
        }));
    }

    /// Wait for one captured packet (into `buf`).
    pub async fn recv(&self, buf: &mut [u8]) -> Result<Captured, DhcpSocketError> {
        self.socket.recv(buf).await
    }

    /// Answer one captured packet: decide with [`reply::reply_to_bytes`], then send. Nothing a
    /// client sends, and no send failure, stops the server.
    pub fn answer(&mut self, captured: Captured, buf: &[u8]) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let packet = buf.get(..captured.len).unwrap_or_default();
        let datagram = match parse_datagram(packet, captured.checksum_ready) {
            Ok(d) if d.destination_port == SERVER_PORT => d,
            Ok(_) => return,
            Err(err) => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %err, "dropped packet");
                return;
            }
        };
        if let Some(mac) = rate_key(&self.settings.mac_sources, captured.mac, datagram.payload)
            && !self.limiter.allow(mac, Instant::now().into_std())
        {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%mac, "DHCPv6 rate limit");
            return;
        }
        let received = Received {
            frame_mac: captured.mac,
            unicast: !datagram.destination.is_multicast(),
        };
        let table = &self.table;
        let declines = &self.declines;
        let declined = |key: &ClientKey| {
            let reserved = match key {
                ClientKey::Mac(mac) => table.for_mac(mac),
                ClientKey::Duid(duid) => table.for_duid(duid),
            };
            declines.declined(key, reserved)
        };
        let decision = reply::reply_to_bytes(
            datagram.payload,
            &received,
            table,
            &declined,
            &self.settings,
        );
        let span = tracing::debug_span!("dhcpv6", client = %datagram.source, mac = ?captured.mac);
        let _enter = span.enter();
        match decision {
            Decision::Ignore(why) => {
                let malformed = matches!(why, reply::Ignored::Malformed(_));
                let counter = if malformed {
                    &self.counters.malformed
                } else {
                    &self.counters.ignored
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?why, "ignored");
            }
            Decision::Reply {
                message,
                client,
                outcome,
            } => {
                match (&outcome, &client) {
                    (Outcome::NoAddrsAvail, _) => {
                        self.counters
                            .unknown_clients
                            .fetch_add(1, Ordering::Relaxed);
                        // Once per client at info (a client retries forever), then at debug.
                        if self.unknown_logged.len() >= MAX_UNKNOWN_LOGGED {
                            self.unknown_logged.clear();
                        }
                        if self.unknown_logged.insert(captured.mac) {
                            tracing::info!(frame_mac = ?captured.mac, "no reservation for this client");
                        } else {
                            tracing::debug!(frame_mac = ?captured.mac, "no reservation for this client");
                        }
                    }
                    (Outcome::Declined(addresses), Some(key))
                        if !owned_by_frame(key, captured.mac) =>
                    {
                        // A Decline changes what another client is given: only the frame whose
                        // MAC owns the reservation may send one (a DUID is the sender's word).
                        self.counters
                            .foreign_declines
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            ?key,
                            frame_mac = ?captured.mac,
                            ?addresses,
                            "ignored a Decline for a reservation the frame's MAC does not own"
                        );
                    }
                    (Outcome::Declined(addresses), Some(key)) => {
                        self.counters.declines.fetch_add(1, Ordering::Relaxed);
                        let reserved = match key {
                            ClientKey::Mac(mac) => self.table.for_mac(mac),
                            ClientKey::Duid(duid) => self.table.for_duid(duid),
                        }
                        .unwrap_or_default()
                        .to_vec();
                        tracing::warn!(
                            ?key,
                            ?addresses,
                            "client declined addresses (duplicate on the link?)"
                        );
                        self.declines.record(key.clone(), &reserved, addresses);
                    }
                    (
                        Outcome::Reply | Outcome::RapidCommit | Outcome::Renewed | Outcome::Rebound,
                        Some(key),
                    ) => {
                        let reserved = match key {
                            ClientKey::Mac(mac) => self.table.for_mac(mac),
                            ClientKey::Duid(duid) => self.table.for_duid(duid),
                        };
                        let declined = self.declines.declined(key, reserved);
                        let given: Vec<_> = reserved
                            .unwrap_or_default()
                            .iter()
                            .filter(|a| !declined.contains(a))
                            .copied()
                            .collect();
                        tracing::debug!(outcome = outcome.label(), ?key, ?given, "answered");
                        let at = SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0);
                        self.leases.record(key, given, at);
                        self.leases_dirty = true;
                    }
                    _ => tracing::debug!(outcome = outcome.label(), ?client, "answered"),
                }
                match message.to_vec() {
                    Ok(bytes) => match self.socket.send(&bytes, datagram.source) {
                        Ok(()) => {
                            self.counters.replied.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => tracing::warn!(error = %err, "reply not sent"),
                    },
                    Err(err) => tracing::warn!(error = %err, "could not encode reply"),
                }
            }
        }
    }
}

/// The MAC a message is rate-limited by: the first MAC the configured `mac_sources` yield, as the
/// client would be identified (`frame`: the Ethernet source; `duid`: the link-layer address of a
/// DUID-LL/LLT Client Identifier). Found with a bounded walk over the top-level options before
/// the message is decoded, so a flood costs no decoding. Relayed messages (the client's options
/// are nested) are limited by the frame's MAC, which is the relay's.
fn rate_key(sources: &[MacSource], frame: Option<Mac>, payload: &[u8]) -> Option<Mac> {
    // The frame's source MAC (the hypervisor enforces it) whenever there is one: one frame MAC,
    // one budget, whatever DUIDs it sends. Only without a frame, what `mac_sources` gives.
    frame.or_else(|| {
        sources.iter().find_map(|source| match source {
            MacSource::Frame => None,
            MacSource::Duid => client_id_mac(payload),
        })
    })
}

/// Whether the client `key` a message was answered for is the one the frame's source MAC
/// identifies (the only kind of client that may change state with a Decline).
fn owned_by_frame(key: &ClientKey, frame: Option<Mac>) -> bool {
    matches!((key, frame), (ClientKey::Mac(mac), Some(f)) if *mac == f)
}

/// The MAC in the Client Identifier (option 1) of a client message, if it is a DUID-LL/LLT.
fn client_id_mac(payload: &[u8]) -> Option<Mac> {
    const OPTION_CLIENTID: u16 = 1;
    const RELAY_FORW: u8 = 12;
    const RELAY_REPL: u8 = 13;
    if matches!(
        payload.first(),
        None | Some(&RELAY_FORW) | Some(&RELAY_REPL)
    ) {
        return None;
    }
    let mut rest = payload.get(4..)?;
    while rest.len() >= 4 {
        let code = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let data = rest.get(4..4 + len)?;
        if code == OPTION_CLIENTID {
            return Duid::mac_in(data);
        }
        rest = &rest[4 + len..];
    }
    None
}

#[cfg(test)]
mod rate_key_tests {
    use super::*;

    const FRAME: Mac = Mac([2, 0, 0, 0, 0, 0xf]);
    const IN_DUID: Mac = Mac([0, 0xc, 1, 2, 3, 4]);

    /// A Solicit with an Elapsed Time option, then a Client Identifier holding `duid`.
    fn solicit(duid: &Duid) -> Vec<u8> {
        let mut p = vec![1, 0xaa, 0xbb, 0xcc, 0, 8, 0, 2, 0, 0, 0, 1];
        let bytes = duid.as_bytes();
        p.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        p.extend_from_slice(bytes);
        p
    }

    #[test]
    fn the_frame_decides_whatever_the_sources() {
        let llt = solicit(&Duid::link_layer_time(IN_DUID, 7));
        for sources in [
            &[MacSource::Frame][..],
            &[MacSource::Duid, MacSource::Frame][..],
            &[MacSource::Duid][..],
        ] {
            assert_eq!(
                rate_key(sources, Some(FRAME), &llt),
                Some(FRAME),
                "{sources:?}"
            );
        }
        // Only without a frame MAC does the DUID's count, and only when configured.
        let ll = solicit(&Duid::link_layer(IN_DUID));
        assert_eq!(rate_key(&[MacSource::Duid], None, &ll), Some(IN_DUID));
        assert_eq!(rate_key(&[MacSource::Frame], None, &ll), None);
    }

    #[test]
    fn only_the_frame_mac_owns_its_reservation() {
        assert!(owned_by_frame(&ClientKey::Mac(FRAME), Some(FRAME)));
        assert!(!owned_by_frame(&ClientKey::Mac(IN_DUID), Some(FRAME)));
        assert!(!owned_by_frame(&ClientKey::Mac(FRAME), None));
        let duid = Duid::link_layer(FRAME);
        assert!(!owned_by_frame(&ClientKey::Duid(duid), Some(FRAME)));
    }

    #[test]
    fn without_a_usable_duid_the_frame_decides() {
        let uuid = Duid::from_bytes(&[0, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
            .expect("uuid duid");
        let duid_only = [MacSource::Duid];
        assert_eq!(
            rate_key(&duid_only, Some(FRAME), &solicit(&uuid)),
            Some(FRAME)
        );
        // Truncated, relayed and empty messages.
        let mut cut = solicit(&Duid::link_layer(IN_DUID));
        cut.truncate(cut.len() - 3);
        assert_eq!(rate_key(&duid_only, Some(FRAME), &cut), Some(FRAME));
        let mut relayed = solicit(&Duid::link_layer(IN_DUID));
        relayed[0] = 12;
        assert_eq!(rate_key(&duid_only, Some(FRAME), &relayed), Some(FRAME));
        assert_eq!(rate_key(&duid_only, Some(FRAME), &[]), Some(FRAME));
        assert_eq!(rate_key(&duid_only, None, &[1, 2]), None);
    }
}
