//! The virtual-router role: Router Advertisements (RFC 4861) and DHCPv6 (RFC 8415) on one pod link.
//!
//! [`run`] is the shell: it wires the rtnetlink link watcher, the raw ICMPv6 socket and signals to the
//! pure pieces — [`ra::schedule`] decides when to send, [`ra::advert`] what to send and how another
//! router disagrees, [`ra::packet`] the bytes.

pub mod dhcp;
pub mod link;
pub mod ra;

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::config::VrConfig;
use crate::model::Mac;
use crate::telemetry::{Exposition, prometheus_line, serve_exposition};
use dhcp::server::DhcpServer;
use link::{Link, LinkError, LinkState};
use ra::advert::{self, Inconsistency};
use ra::packet::{self, NdMessage};
use ra::schedule::{RsOutcome, Scheduler, Timing};
use ra::socket::{ALL_NODES, RaSocket, SocketError};

/// Why the VR stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum VrError {
    /// The state directory could not be created.
    #[error("create state_dir {path}: {source}")]
    StateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The async runtime or a signal handler could not be set up.
    #[error("start runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The interface could not be configured or watched.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The raw socket failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The DHCPv6 server could not start or its socket failed.
    #[error(transparent)]
    Dhcp(#[from] dhcp::server::ServerError),
    /// The DHCPv6 socket failed while running.
    #[error(transparent)]
    DhcpSocket(#[from] dhcp::socket::DhcpSocketError),
    /// DHCPv6 needs the interface MAC for the server DUID.
    #[error("interface {0} has no MAC address; the DHCPv6 server DUID is made from it")]
    NoMac(String),
    /// The configured RA cannot be encoded (a config the validator should have refused).
    #[error("encode router advertisement: {0}")]
    Encode(#[source] packet::Error),
}

/// Counters of the RA side, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct RaCounters {
    /// Router Advertisements sent (multicast, including final ones).
    pub ras_sent: AtomicU64,
    /// Router Solicitations received and valid.
    pub rs_received: AtomicU64,
    /// Router Solicitations dropped by the per-source limit.
    pub rs_limited: AtomicU64,
    /// Messages dropped for failing RFC 4861 §6.1 validation (hop limit, format, source).
    pub invalid_dropped: AtomicU64,
    /// RAs from other routers that contradicted ours in a new way (§6.2.7).
    pub inconsistent_ras: AtomicU64,
}

/// Run the VR until SIGTERM or SIGINT. Blocks the calling thread.
pub fn run(config: VrConfig) -> Result<(), VrError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(VrError::Runtime)?;
    let result = runtime.block_on(serve(config, Arc::new(RaCounters::default())));
    // A controller watch may be blocked in a long poll: do not wait for it to end.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

/// The bytes of our RA for the current link state, or of the final (lifetime 0) one.
fn encode(config: &VrConfig, mac: Option<Mac>, final_ra: bool) -> Result<Vec<u8>, VrError> {
    packet::emit_ra(&advert::build(&config.ra, mac, final_ra)).map_err(VrError::Encode)
}

/// Aggregates RS drops so a flood produces one warning per interval, not one per packet.
struct DropLog {
    since_last: u64,
    last_logged: Option<Instant>,
}

const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl DropLog {
    fn record(&mut self, now: Instant, source: Ipv6Addr) {
        self.since_last += 1;
        let due = self
            .last_logged
            .is_none_or(|t| now.duration_since(t) >= DROP_LOG_INTERVAL);
        if due {
            tracing::warn!(
                %source,
                dropped = self.since_last,
                "router solicitations over the per-source limit dropped"
            );
            self.since_last = 0;
            self.last_logged = Some(now);
        }
    }
}

/// The live state `/status` shows.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VrStatus {
    /// The interface.
    pub interface: String,
    /// Up with carrier.
    pub link_up: bool,
    /// The RA source address.
    pub link_local: Option<Ipv6Addr>,
    /// Whether RAs are being sent.
    pub advertising: bool,
    /// Where reservations come from.
    pub source: Option<String>,
    /// The server DUID.
    pub server_duid: Option<String>,
    /// Revision of the reservation table in force.
    pub reservations_revision: Option<u64>,
    /// Number of clients with a reservation.
    pub reservations: Option<usize>,
}

struct VrExposition {
    ra: Arc<RaCounters>,
    dhcp: Option<Arc<dhcp::server::DhcpCounters>>,
    status: Arc<Mutex<VrStatus>>,
}

impl Exposition for VrExposition {
    fn metrics(&self) -> String {
        let mut out = String::new();
        let c = &self.ra;
        for (name, help, v) in [
            (
                "flat6_vr_ras_sent_total",
                "Router Advertisements sent.",
                &c.ras_sent,
            ),
            (
                "flat6_vr_rs_received_total",
                "Valid Router Solicitations received.",
                &c.rs_received,
            ),
            (
                "flat6_vr_rs_limited_total",
                "Router Solicitations dropped by the per-source limit.",
                &c.rs_limited,
            ),
            (
                "flat6_vr_nd_invalid_total",
                "RS/RA dropped for failing RFC 4861 validation.",
                &c.invalid_dropped,
            ),
            (
                "flat6_vr_ra_inconsistent_total",
                "Other routers' RAs that contradicted ours (RFC 4861 6.2.7).",
                &c.inconsistent_ras,
            ),
        ] {
            prometheus_line(&mut out, name, "counter", help, v.load(Ordering::Relaxed));
        }
        if let Some(d) = &self.dhcp {
            for (name, help, v) in [
                (
                    "flat6_vr_dhcpv6_received_total",
                    "DHCPv6 packets captured.",
                    &d.received,
                ),
                (
                    "flat6_vr_dhcpv6_replied_total",
                    "DHCPv6 Advertise/Reply sent.",
                    &d.replied,
                ),
                (
                    "flat6_vr_dhcpv6_ignored_total",
                    "DHCPv6 messages ignored (not for us, relays, ...).",
                    &d.ignored,
                ),
                (
                    "flat6_vr_dhcpv6_malformed_total",
                    "DHCPv6 packets that could not be decoded.",
                    &d.malformed,
                ),
                (
                    "flat6_vr_dhcpv6_rate_limited_total",
                    "DHCPv6 messages over the per-MAC rate limit.",
                    &d.rate_limited,
                ),
                (
                    "flat6_vr_dhcpv6_unknown_clients_total",
                    "Solicits/Requests from clients without a reservation.",
                    &d.unknown_clients,
                ),
                (
                    "flat6_vr_dhcpv6_declines_total",
                    "Declines received.",
                    &d.declines,
                ),
                (
                    "flat6_vr_dhcpv6_foreign_declines_total",
                    "Declines ignored: the frame's MAC does not own the reservation.",
                    &d.foreign_declines,
                ),
                (
                    "flat6_vr_reservation_reloads_total",
                    "Reservation documents loaded.",
                    &d.reloads,
                ),
                (
                    "flat6_vr_reservation_rejections_total",
                    "Reservation documents rejected.",
                    &d.rejected_documents,
                ),
            ] {
                prometheus_line(&mut out, name, "counter", help, v.load(Ordering::Relaxed));
            }
        }
        out
    }

    fn status(&self) -> serde_json::Value {
        let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        serde_json::to_value(status).unwrap_or_default()
    }
}

async fn serve(config: VrConfig, counters: Arc<RaCounters>) -> Result<(), VrError> {
    let span = tracing::info_span!("vr", interface = %config.interface);
    let _enter = span.enter();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting");
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    std::fs::create_dir_all(&config.state_dir).map_err(|source| VrError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let mut events = Link::watch()?;
    let link = Link::open(&config.interface).await?;
    link.prepare(config.mac, &config.addresses).await?;
    let socket = RaSocket::open(link.name(), link.index())?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(VrError::Runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(VrError::Runtime)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(VrError::Runtime)?;
    let mut dhcp = if config.dhcpv6.enabled {
        let mac = link
            .state()
            .await?
            .mac
            .ok_or_else(|| VrError::NoMac(config.interface.clone()))?;
        let server = DhcpServer::start(&config, link.index(), mac)?;
        tracing::info!(source = %server.source_name(), "DHCPv6 server started");
        Some(server)
    } else {
        None
    };
    let mut dhcp_buf = vec![0u8; 65536];
    let status = Arc::new(Mutex::new(VrStatus {
        interface: config.interface.clone(),
        source: dhcp.as_ref().map(|d| d.source_name()),
        ..VrStatus::default()
    }));
    let _exposition = config.metrics_listen.map(|listen| {
        let exposition = Arc::new(VrExposition {
            ra: counters.clone(),
            dhcp: dhcp.as_ref().map(|d| d.counters.clone()),
            status: status.clone(),
        });
        AbortOnDrop(tokio::spawn(async move {
            if let Err(err) = serve_exposition(listen, exposition).await {
                tracing::error!(%listen, error = %err, "cannot serve /metrics");
            }
        }))
    });
    // How often the reservation file's metadata is checked (a change is served within this).
    let mut reload_tick = tokio::time::interval(Duration::from_millis(250));
    let arrivals = dhcp
        .as_ref()
        .map_or_else(|| Arc::new(tokio::sync::Notify::new()), |d| d.arrivals());
    reload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = StdRng::from_os_rng();

    let mut scheduler = Scheduler::new(Timing {
        min_interval: config.ra.min_interval,
        max_interval: config.ra.max_interval,
    });
    let mut state = LinkState::default();
    let mut ours = advert::build(&config.ra, None, false);
    let mut bytes = encode(&config, None, false)?;
    let mut drops = DropLog {
        since_last: 0,
        last_logged: None,
    };
    let mut disagreements: HashMap<Ipv6Addr, Vec<Inconsistency>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    // The first look at the link happens through the same path as every later event.
    let mut recheck = true;

    tracing::info!(
        enabled = config.ra.enabled,
        managed = config.ra.managed,
        other = config.ra.other,
        router_lifetime = config.ra.router_lifetime,
        prefixes = config.ra.prefixes.len(),
        "router advertisements configured"
    );

    loop {
        if recheck {
            recheck = false;
            let next = link.state().await?;
            if next != state {
                if next.mac != state.mac {
                    ours = advert::build(&config.ra, next.mac, false);
                    bytes = encode(&config, next.mac, false)?;
                }
                if next.up && !state.up {
                    // Addresses may have been removed while down (keep_addr_on_down notwithstanding).
                    link.add_addresses(&config.addresses).await?;
                }
                let was = state.can_advertise();
                let now_can = next.can_advertise();
                if config.ra.enabled && now_can && (!was || next.link_local != state.link_local) {
                    if !was {
                        scheduler.start(Instant::now().into_std());
                    }
                    tracing::info!(
                        source = ?next.link_local,
                        "advertising on the link"
                    );
                } else if was && !now_can {
                    scheduler.stop();
                    tracing::info!(up = next.up, link_local = ?next.link_local, "link not usable; stopped advertising");
                } else {
                    tracing::debug!(?next, "link state changed");
                }
                state = next;
            }
        }
        if let Ok(mut st) = status.lock() {
            st.link_up = state.up;
            st.link_local = state.link_local;
            st.advertising = scheduler.is_running();
            if let Some(d) = dhcp.as_ref() {
                st.server_duid = Some(d.server_duid().to_string());
                st.reservations_revision = Some(d.table_revision());
                st.reservations = Some(d.table_len());
            }
        }
        let wake = scheduler.next_wakeup().map(Instant::from_std);
        tokio::select! {
            () = sleep_until(wake) => {
                if scheduler.poll(Instant::now().into_std(), &mut rng)
                    && let Some(source) = state.link_local
                {
                    socket.send(&bytes, ALL_NODES, source).await?;
                    counters.ras_sent.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%source, "sent router advertisement");
                }
            }
            received = socket.recv(&mut buf) => {
                let received = received?;
                let now = Instant::now();
                let message = buf.get(..received.len).unwrap_or_default();
                match check_received(message, received.source, received.hop_limit, state.link_local) {
                    Err(why) => {
                        counters.invalid_dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(source = %received.source, %why, "dropped invalid ND message");
                    }
                    Ok(None) => {}
                    Ok(Some(NdMessage::RouterSolicit(_))) => {
                        counters.rs_received.fetch_add(1, Ordering::Relaxed);
                        match scheduler.on_rs(now.into_std(), received.source, &mut rng) {
                            RsOutcome::Limited => {
                                counters.rs_limited.fetch_add(1, Ordering::Relaxed);
                                drops.record(now, received.source);
                            }
                            outcome => tracing::debug!(source = %received.source, ?outcome, "router solicitation"),
                        }
                    }
                    Ok(Some(NdMessage::RouterAdvert(theirs))) => {
                        let found = advert::compare(&ours, &theirs);
                        let previous = disagreements.get(&received.source);
                        if previous != Some(&found) {
                            if !found.is_empty() {
                                counters.inconsistent_ras.fetch_add(1, Ordering::Relaxed);
                                for item in &found {
                                    tracing::warn!(router = %received.source, "router advertisement inconsistent with ours: {item}");
                                }
                            } else if previous.is_some() {
                                tracing::info!(router = %received.source, "router advertisement now consistent with ours");
                            }
                            // Bound the table: a link has few routers, but the source is untrusted.
                            if disagreements.len() < 256 || disagreements.contains_key(&received.source) {
                                disagreements.insert(received.source, found);
                            }
                        }
                    }
                }
            }
            event = events.next() => {
                if event.is_none() {
                    tracing::warn!("netlink event stream ended; link changes will not be noticed");
                    events = futures::channel::mpsc::unbounded().1;
                }
                // Coalesce a burst of events into one look.
                while let Ok(()) = events.try_recv() {}
                recheck = true;
            }
            captured = dhcp_recv(dhcp.as_ref(), &mut dhcp_buf) => {
                let captured = captured?;
                if let Some(server) = dhcp.as_mut() {
                    server.answer(captured, &dhcp_buf);
                }
            }
            () = arrivals.notified() => {
                if let Some(server) = dhcp.as_mut() {
                    server.reload(false);
                }
            }
            _ = reload_tick.tick(), if dhcp.is_some() => {
                if let Some(server) = dhcp.as_mut() {
                    server.reload(false);
                    server.save_leases(false);
                }
            }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading reservations");
                if let Some(server) = dhcp.as_mut() {
                    server.reload(true);
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    if let Some(server) = dhcp.as_mut() {
        server.save_leases(true);
    }
    // RFC 4861 §6.2.5: a router that stops being one says so with router lifetime 0.
    if config.ra.enabled
        && config.ra.router_lifetime > 0
        && let Some(source) = state.link_local.filter(|_| state.up)
    {
        let final_bytes = encode(&config, state.mac, true)?;
        let start = Instant::now();
        for offset in Scheduler::final_schedule() {
            tokio::time::sleep_until(start + offset).await;
            socket.send(&final_bytes, ALL_NODES, source).await?;
            counters.ras_sent.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!("sent final router advertisements with router lifetime 0");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Aborts a background task when dropped (the exposition server ends with the VR).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn dhcp_recv(
    server: Option<&DhcpServer>,
    buf: &mut [u8],
) -> Result<dhcp::socket::Captured, dhcp::socket::DhcpSocketError> {
    match server {
        Some(server) => server.recv(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// RFC 4861 §6.1: the checks a received RS or RA must pass before we act on it. `Ok(None)` is a
/// valid message we ignore (our own RA looped back).
fn check_received(
    bytes: &[u8],
    source: Ipv6Addr,
    hop_limit: Option<u8>,
    own_link_local: Option<Ipv6Addr>,
) -> Result<Option<NdMessage>, String> {
    match hop_limit {
        Some(255) => {}
        Some(h) => return Err(format!("hop limit {h}, must be 255")),
        None => return Err("hop limit not reported".into()),
    }
    let message = packet::parse(bytes).map_err(|e| e.to_string())?;
    match &message {
        NdMessage::RouterSolicit(rs) => {
            packet::validate_rs_source(&source, rs).map_err(|e| e.to_string())?
        }
        NdMessage::RouterAdvert(_) => {
            packet::validate_ra_source(&source).map_err(|e| e.to_string())?;
            if Some(source) == own_link_local {
                return Ok(None);
            }
        }
    }
    Ok(Some(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs_bytes() -> Vec<u8> {
        packet::emit_rs(&packet::RouterSolicit::default()).expect("emit rs")
    }

    #[test]
    fn received_messages_need_hop_limit_255() {
        let ll: Ipv6Addr = "fe80::1".parse().expect("addr");
        assert!(
            check_received(&rs_bytes(), ll, Some(64), None)
                .is_err_and(|e| e.contains("hop limit 64"))
        );
        assert!(check_received(&rs_bytes(), ll, None, None).is_err());
        assert!(matches!(
            check_received(&rs_bytes(), ll, Some(255), None),
            Ok(Some(NdMessage::RouterSolicit(_)))
        ));
    }

    #[test]
    fn ra_from_a_global_source_is_dropped_and_our_own_is_ignored() {
        let ra = packet::emit_ra(&packet::RouterAdvert::default()).expect("emit ra");
        let global: Ipv6Addr = "2001:db8::1".parse().expect("addr");
        let ll: Ipv6Addr = "fe80::1".parse().expect("addr");
        assert!(check_received(&ra, global, Some(255), None).is_err());
        assert!(matches!(
            check_received(&ra, ll, Some(255), Some(ll)),
            Ok(None)
        ));
        assert!(matches!(
            check_received(&ra, ll, Some(255), Some("fe80::2".parse().expect("addr"))),
            Ok(Some(NdMessage::RouterAdvert(_)))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let ll: Ipv6Addr = "fe80::1".parse().expect("addr");
        assert!(check_received(&[133], ll, Some(255), None).is_err());
        assert!(check_received(&[], ll, Some(255), None).is_err());
    }
}
