//! What the DHCPv6 server remembers: its DUID (forever), per-client rate limits, and Declines.
//!
//! The DUID file is the only state clients would notice if lost; everything a client is given comes
//! from the reservations, so a restart never turns a Renew into NoBinding.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::reply::ClientKey;
use crate::model::{Duid, Mac};

/// File in `state_dir` holding the server DUID as colon-separated hex.
pub const DUID_FILE: &str = "server-duid";
/// File in `state_dir` recording what was handed out, when, and what was declined.
pub const LEASES_FILE: &str = "leases.json";

/// Errors reading or writing the server's state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// "read", "write", "rename".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The DUID file does not hold a DUID.
    #[error("{path}: {problem}; remove the file only if this server may take a new identity")]
    BadDuid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    // A name of its own per write, so two writers of the same file never share a temporary file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let io = |action, p: &Path| {
        let p = p.to_path_buf();
        move |source| StateError::Io {
            action,
            path: p,
            source,
        }
    };
    let mut file = std::fs::File::create(&tmp).map_err(io("write", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}

/// Seconds since 2000-01-01 00:00 UTC, the DUID-LLT time base (RFC 8415 §11.2).
pub fn duid_time(now: SystemTime) -> u32 {
    const Y2K_UNIX: u64 = 946_684_800;
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(secs.saturating_sub(Y2K_UNIX)).unwrap_or(u32::MAX)
}

/// Read the server DUID from `state_dir`, or create a DUID-LLT from `mac` and `now` and persist it.
/// Returns the DUID and whether it was created.
pub fn load_or_create_duid(
    state_dir: &Path,
    mac: Mac,
    now: SystemTime,
) -> Result<(Duid, bool), StateError> {
    let path = state_dir.join(DUID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let duid = text
                .trim()
                .parse::<Duid>()
                .map_err(|e| StateError::BadDuid {
                    path: path.clone(),
                    problem: e.to_string(),
                })?;
            Ok((duid, false))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let duid = Duid::link_layer_time(mac, duid_time(now));
            write_atomically(&path, format!("{duid}\n").as_bytes())?;
            Ok((duid, true))
        }
        Err(source) => Err(StateError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

/// Per-client-MAC token bucket: `rate` messages per second with a burst of `rate`.
#[derive(Debug)]
pub struct ClientLimiter {
    rate: u32,
    buckets: HashMap<Mac, (f64, Instant)>,
}

/// Most clients tracked at once; beyond this the table is cleared of idle entries.
const MAX_TRACKED_CLIENTS: usize = 65_536;

impl ClientLimiter {
    /// A limiter allowing `rate` messages per second per MAC.
    pub fn new(rate: u32) -> Self {
        Self {
            rate: rate.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Whether a message from `mac` at `now` may be processed (and take a token if so).
    pub fn allow(&mut self, mac: Mac, now: Instant) -> bool {
        let rate = f64::from(self.rate);
        if self.buckets.len() >= MAX_TRACKED_CLIENTS && !self.buckets.contains_key(&mac) {
            // Entries idle for a second are full again; forgetting them changes nothing.
            self.buckets
                .retain(|_, (_, last)| now.duration_since(*last) < Duration::from_secs(1));
        }
        let (tokens, last) = self.buckets.entry(mac).or_insert((rate, now));
        let refill = now.duration_since(*last).as_secs_f64() * rate;
        *tokens = (*tokens + refill).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Addresses clients declined (RFC 8415 §18.3.8): not offered to that client again until its
/// reservation changes.
#[derive(Debug, Default)]
pub struct Declines {
    by_client: HashMap<ClientKey, (Vec<Ipv6Addr>, Vec<Ipv6Addr>)>,
}

impl Declines {
    /// Record that `client`, whose reservation is `reserved`, declined `addresses`.
    pub fn record(&mut self, client: ClientKey, reserved: &[Ipv6Addr], addresses: &[Ipv6Addr]) {
        let entry = self
            .by_client
            .entry(client)
            .or_insert_with(|| (reserved.to_vec(), Vec::new()));
        if entry.0 != reserved {
            *entry = (reserved.to_vec(), Vec::new());
        }
        for a in addresses {
            if reserved.contains(a) && !entry.1.contains(a) {
                entry.1.push(*a);
            }
        }
    }

    /// The addresses `client` declined, as long as its reservation is still `reserved`.
    pub fn declined(&self, client: &ClientKey, reserved: Option<&[Ipv6Addr]>) -> Vec<Ipv6Addr> {
        match (self.by_client.get(client), reserved) {
            (Some((snapshot, declined)), Some(now)) if snapshot.as_slice() == now => {
                declined.clone()
            }
            _ => Vec::new(),
        }
    }

    /// How many clients have declined something.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// True when no client declined anything.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}

/// The text form of a client key in `leases.json`: `mac 02:…` or `duid 00:…`.
pub fn key_text(key: &ClientKey) -> String {
    match key {
        ClientKey::Mac(mac) => format!("mac {mac}"),
        ClientKey::Duid(duid) => format!("duid {duid}"),
    }
}

/// Parse [`key_text`] back.
pub fn parse_key(text: &str) -> Option<ClientKey> {
    let (kind, value) = text.split_once(' ')?;
    match kind {
        "mac" => value.parse().ok().map(ClientKey::Mac),
        "duid" => value.parse().ok().map(ClientKey::Duid),
        _ => None,
    }
}

/// One client's last handed-out addresses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Handed {
    /// The addresses in the last Reply.
    pub addresses: Vec<Ipv6Addr>,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
}

/// One client's declined addresses and the reservation they were declined under.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeclineRecord {
    /// The reservation at the time.
    pub reserved: Vec<Ipv6Addr>,
    /// The addresses declined.
    pub declined: Vec<Ipv6Addr>,
}

/// The content of `leases.json`: for logs, metrics and Decline; never needed to answer a Renew.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseLog {
    /// Keyed by [`key_text`].
    #[serde(default)]
    pub handed_out: BTreeMap<String, Handed>,
    /// Keyed by [`key_text`].
    #[serde(default)]
    pub declined: BTreeMap<String, DeclineRecord>,
}

impl LeaseLog {
    /// Record a Reply that gave `addresses` to `key` at `at` (Unix seconds).
    pub fn record(&mut self, key: &ClientKey, addresses: Vec<Ipv6Addr>, at: u64) {
        self.handed_out
            .insert(key_text(key), Handed { addresses, at });
    }

    /// Read `state_dir/leases.json`; a missing file is an empty log, a corrupt one is logged and
    /// replaced (it only informs, it never decides an answer).
    pub fn load(state_dir: &Path) -> LeaseLog {
        let path = state_dir.join(LEASES_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(path = %path.display(), error = %err, "ignoring unreadable lease log");
                LeaseLog::default()
            }),
            Err(_) => LeaseLog::default(),
        }
    }

    /// Write `state_dir/leases.json` atomically.
    pub fn save(&self, state_dir: &Path, declines: &Declines) -> Result<(), StateError> {
        self.snapshot(declines).write(state_dir)
    }

    /// A copy with the current declines, to be written elsewhere than on the packet path.
    pub fn snapshot(&self, declines: &Declines) -> LeaseLog {
        let mut out = self.clone();
        out.declined = declines.records();
        out
    }

    /// Serialize and write `state_dir/leases.json` atomically (blocking: fsync).
    pub fn write(&self, state_dir: &Path) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        write_atomically(&state_dir.join(LEASES_FILE), &bytes)
    }
}

impl Declines {
    /// The declines as persisted records.
    pub fn records(&self) -> BTreeMap<String, DeclineRecord> {
        self.by_client
            .iter()
            .filter(|(_, (_, declined))| !declined.is_empty())
            .map(|(key, (reserved, declined))| {
                (
                    key_text(key),
                    DeclineRecord {
                        reserved: reserved.clone(),
                        declined: declined.clone(),
                    },
                )
            })
            .collect()
    }

    /// Restore from persisted records (unparseable keys are skipped).
    pub fn from_records(records: &BTreeMap<String, DeclineRecord>) -> Self {
        let by_client = records
            .iter()
            .filter_map(|(k, r)| {
                parse_key(k).map(|key| (key, (r.reserved.clone(), r.declined.clone())))
            })
            .collect();
        Self { by_client }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([2, 0, 0, 0, 0, 1]);

    #[test]
    fn duid_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800 + 1000);
        let (first, created) = load_or_create_duid(dir.path(), MAC, t0).expect("create");
        assert!(created);
        assert_eq!(first, Duid::link_layer_time(MAC, 1000));
        let later = t0 + Duration::from_secs(99);
        let other_mac = Mac([2, 0, 0, 0, 0, 2]);
        let (again, created) = load_or_create_duid(dir.path(), other_mac, later).expect("load");
        assert!(!created);
        assert_eq!(again, first);
    }

    #[test]
    fn a_corrupt_duid_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(DUID_FILE), "garbage\n").expect("write");
        let err = load_or_create_duid(dir.path(), MAC, SystemTime::now()).expect_err("bad");
        assert!(err.to_string().contains("is not a DUID"), "{err}");
    }

    #[test]
    fn limiter_allows_a_burst_then_the_rate() {
        let mut limiter = ClientLimiter::new(5);
        let t = Instant::now();
        let allowed = (0..20).filter(|_| limiter.allow(MAC, t)).count();
        assert_eq!(allowed, 5);
        assert!(limiter.allow(MAC, t + Duration::from_millis(200)));
        assert!(!limiter.allow(MAC, t + Duration::from_millis(200)));
        // Another client is not affected.
        assert!(limiter.allow(Mac([2, 0, 0, 0, 0, 9]), t));
    }

    #[test]
    fn declines_last_until_the_reservation_changes() {
        let a: Ipv6Addr = "2001:db8:1::a".parse().expect("a");
        let b: Ipv6Addr = "2001:db8:1::b".parse().expect("b");
        let key = ClientKey::Mac(MAC);
        let mut declines = Declines::default();
        declines.record(
            key.clone(),
            &[a, b],
            &[a, "2001:db8::ff".parse().expect("x")],
        );
        assert_eq!(declines.declined(&key, Some(&[a, b])), vec![a]);
        assert_eq!(declines.declined(&key, Some(&[b])), Vec::<Ipv6Addr>::new());
        assert_eq!(declines.declined(&key, None), Vec::<Ipv6Addr>::new());
    }

    #[test]
    fn duid_time_counts_from_2000() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800 + 42);
        assert_eq!(duid_time(t), 42);
        assert_eq!(duid_time(SystemTime::UNIX_EPOCH), 0);
    }

    #[test]
    fn lease_log_round_trip_keeps_declines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a: Ipv6Addr = "2001:db8:1::a".parse().expect("a");
        let key = ClientKey::Mac(MAC);
        let mut log = LeaseLog::default();
        log.record(&key, vec![a], 1_700_000_000);
        let mut declines = Declines::default();
        declines.record(key.clone(), &[a], &[a]);
        log.save(dir.path(), &declines).expect("save");
        let loaded = LeaseLog::load(dir.path());
        assert_eq!(
            loaded.handed_out["mac 02:00:00:00:00:01"].addresses,
            vec![a]
        );
        let restored = Declines::from_records(&loaded.declined);
        assert_eq!(restored.declined(&key, Some(&[a])), vec![a]);
        assert_eq!(
            parse_key("duid 00:03:00:01:02:00:00:00:00:01")
                .map(|k| key_text(&k))
                .as_deref(),
            Some("duid 00:03:00:01:02:00:00:00:00:01")
        );
        assert_eq!(parse_key("ip 1"), None);
    }

    #[test]
    fn a_corrupt_lease_log_is_empty_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(LEASES_FILE), b"{not json").expect("write");
        assert_eq!(LeaseLog::load(dir.path()), LeaseLog::default());
    }
}
