//! When to send Router Advertisements: RFC 4861 §6.2.4 (unsolicited), §6.2.5 (ceasing to advertise)
//! and §6.2.6 (answering Router Solicitations).
//!
//! This is pure decision code. Time comes in as [`Instant`] values from the caller and randomness
//! through `&mut impl rand::Rng`; nothing here reads a clock, sleeps or touches a socket. The socket
//! shell drives it like this:
//!
//! ```text
//! loop {
//!     select! {
//!         sleep_until(sched.next_wakeup()) => if sched.poll(now, rng) { send multicast RA },
//!         rs = socket.recv()               => match sched.on_rs(now, rs.source, rng) { .. },
//!     }
//! }
//! ```
//!
//! There is a single "next multicast RA" time. An RS either merges into it (an RA is already due
//! soon enough) or pulls it earlier. Every multicast RA that is sent, solicited or not, reschedules
//! the next unsolicited one from its send time, so responses double as unsolicited RAs and two
//! multicast RAs are never sent less than [`MIN_DELAY_BETWEEN_RAS`] apart, whatever the RS rate.
//! RSs are only ever answered with multicast RAs (RFC 4861 §6.2.6 "the usual case").
//!
//! Nothing here can fail, so the module has no error type.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use rand::Rng;

/// Cap on the interval after each of the first [`MAX_INITIAL_RTR_ADVERTISEMENTS`] RAs
/// (RFC 4861 §10, used in §6.2.4).
pub const MAX_INITIAL_RTR_ADVERT_INTERVAL: Duration = Duration::from_secs(16);

/// How many RAs after an interface starts advertising have their interval capped at
/// [`MAX_INITIAL_RTR_ADVERT_INTERVAL`] (RFC 4861 §10, used in §6.2.4).
pub const MAX_INITIAL_RTR_ADVERTISEMENTS: u32 = 3;

/// Upper bound on the number of final RAs (Router Lifetime 0) sent when an interface stops
/// advertising (RFC 4861 §10, used in §6.2.5).
pub const MAX_FINAL_RTR_ADVERTISEMENTS: usize = 3;

/// Minimum spacing between multicast RAs sent from an interface (RFC 4861 §10, used in §6.2.6).
pub const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);

/// Upper bound of the random delay before answering a Router Solicitation (RFC 4861 §10, §6.2.6).
pub const MAX_RA_DELAY_TIME: Duration = Duration::from_millis(500);

/// Largest MaxRtrAdvInterval RFC 4861 §6.2.1 allows. Intervals are clamped to it so that an
/// unvalidated [`Timing`] can neither stall advertisements nor overflow [`Instant`] arithmetic.
pub const MAX_RTR_ADV_INTERVAL_LIMIT: Duration = Duration::from_secs(1800);

/// Per-source RS token bucket size: a host may send this many RSs back to back before it is
/// limited. RFC 4861 §6.3.7 has a host send at most MAX_RTR_SOLICITATIONS (3) RSs when its
/// interface comes up, so a well-behaved host never hits the limit.
pub const RS_BURST: u32 = 3;

/// Per-source RS token refill: one token per this interval. Matches [`MIN_DELAY_BETWEEN_RAS`]:
/// RSs faster than that could not earn more multicast RAs anyway.
pub const RS_REFILL_INTERVAL: Duration = Duration::from_secs(3);

/// Most RS sources whose token bucket is remembered. When the table is full the source idle
/// longest is forgotten (it gets a full bucket if it comes back). Spoofed floods from many sources
/// therefore bypass the per-source limit, but still get at most one multicast RA per
/// [`MIN_DELAY_BETWEEN_RAS`].
pub const RS_SOURCE_TABLE_CAPACITY: usize = 1024;

/// Spacing of the final RAs sent at shutdown; see [`Scheduler::final_schedule`].
pub const FINAL_RA_SPACING: Duration = Duration::from_millis(200);

/// How far ahead of `now` a source's theoretical arrival time may run before it is limited: the
/// generic cell rate algorithm form of a token bucket with [`RS_BURST`] tokens.
const RS_BURST_TOLERANCE: Duration = RS_REFILL_INTERVAL.saturating_mul(RS_BURST - 1);

/// The router's advertising interval, RFC 4861 §6.2.1 MinRtrAdvInterval and MaxRtrAdvInterval.
///
/// Config validation enforces 3 s ≤ min ≤ 0.75 · max and max ≤ 1800 s. The scheduler still
/// clamps, rather than panicking, if handed something else: max is clamped to 3 s ..= 1800 s and
/// min to 3 s ..= max (so min ≥ max simply uses max).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// MinRtrAdvInterval: shortest interval between unsolicited multicast RAs.
    pub min_interval: Duration,
    /// MaxRtrAdvInterval: longest interval between unsolicited multicast RAs.
    pub max_interval: Duration,
}

impl Timing {
    /// The `[lo, hi]` range unsolicited intervals are drawn from, after clamping (see [`Timing`]).
    fn bounds(self) -> (Duration, Duration) {
        let hi = self
            .max_interval
            .clamp(MIN_DELAY_BETWEEN_RAS, MAX_RTR_ADV_INTERVAL_LIMIT);
        let lo = self.min_interval.clamp(MIN_DELAY_BETWEEN_RAS, hi);
        (lo, hi)
    }
}

impl Default for Timing {
    /// RFC 4861 §6.2.1 defaults: MaxRtrAdvInterval 600 s, MinRtrAdvInterval 0.33 · 600 s = 198 s.
    fn default() -> Self {
        Self {
            min_interval: Duration::from_secs(198),
            max_interval: Duration::from_secs(600),
        }
    }
}

/// What the scheduler did with a Router Solicitation (RFC 4861 §6.2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsOutcome {
    /// A multicast RA is now scheduled at this time to answer it (it is also
    /// [`Scheduler::next_wakeup`]).
    Scheduled(Instant),
    /// A multicast RA was already scheduled at or before the time a response would be due; the RS
    /// is answered by that one, at this time.
    Merged(Instant),
    /// The source exceeded its token bucket ([`RS_BURST`], [`RS_REFILL_INTERVAL`]); not answered.
    Limited,
    /// The interface is not advertising; not answered.
    Stopped,
}

/// The RA timer of one advertising interface (RFC 4861 §6.2.4–§6.2.6).
///
/// Created stopped; [`Scheduler::start`] makes it advertise.
#[derive(Debug, Clone)]
pub struct Scheduler {
    timing: Timing,
    /// When the next multicast RA is due; `None` exactly when stopped.
    next_due: Option<Instant>,
    /// `next_due` is a response to an RS (§6.2.6), so further RSs merge into it without drawing a
    /// new delay.
    solicited_pending: bool,
    last_sent: Option<Instant>,
    sent_count: u64,
    initial_remaining: u32,
    limiter: RsLimiter,
}

impl Scheduler {
    /// A scheduler for `timing`, stopped until [`Scheduler::start`].
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            next_due: None,
            solicited_pending: false,
            last_sent: None,
            sent_count: 0,
            initial_remaining: MAX_INITIAL_RTR_ADVERTISEMENTS,
            limiter: RsLimiter::default(),
        }
    }

    /// The interface becomes an advertising interface (RFC 4861 §6.2.4), e.g. on link up: the
    /// first RA is due at `now` and the next [`MAX_INITIAL_RTR_ADVERTISEMENTS`] intervals are
    /// capped at [`MAX_INITIAL_RTR_ADVERT_INTERVAL`]. Calling it while running starts over.
    ///
    /// The first RA goes out at once even if the last one was sent less than
    /// [`MIN_DELAY_BETWEEN_RAS`] ago: hosts on a link that was down may have missed everything,
    /// and the spacing rule of §6.2.6 is there against solicitation floods, which a carrier
    /// change is not. Within a running period the spacing always holds.
    pub fn start(&mut self, now: Instant) {
        self.next_due = Some(now);
        self.solicited_pending = false;
        self.initial_remaining = MAX_INITIAL_RTR_ADVERTISEMENTS;
    }

    /// The interface stops advertising, e.g. on link down: nothing is due and RSs are not
    /// answered until [`Scheduler::start`]. Counters, the last send time and the RS source table
    /// are kept. Sending the final RAs of RFC 4861 §6.2.5 is up to the caller, see
    /// [`Scheduler::final_schedule`].
    pub fn stop(&mut self) {
        self.next_due = None;
        self.solicited_pending = false;
    }

    /// Whether the interface is advertising (between [`Scheduler::start`] and
    /// [`Scheduler::stop`]).
    pub fn is_running(&self) -> bool {
        self.next_due.is_some()
    }

    /// When the shell should next call [`Scheduler::poll`]: the time the next multicast RA is due,
    /// or `None` while stopped. It may be at or before the current time, meaning "now".
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.next_due
    }

    /// Whether to send one multicast RA at `now`. When it returns `true` the send is recorded at
    /// `now` and the next unsolicited RA is scheduled uniform(MinRtrAdvInterval,
    /// MaxRtrAdvInterval) later, capped at [`MAX_INITIAL_RTR_ADVERT_INTERVAL`] for the first
    /// [`MAX_INITIAL_RTR_ADVERTISEMENTS`] RAs after start (RFC 4861 §6.2.4). Solicited and
    /// unsolicited RAs count alike. Returns `false` if nothing is due yet or while stopped.
    pub fn poll(&mut self, now: Instant, rng: &mut impl Rng) -> bool {
        match self.next_due {
            Some(due) if due <= now => {}
            _ => return false,
        }
        self.last_sent = Some(now);
        self.solicited_pending = false;
        self.sent_count = self.sent_count.saturating_add(1);
        let (lo, hi) = self.timing.bounds();
        let mut interval = uniform(rng, lo, hi);
        if self.initial_remaining > 0 {
            // §6.2.4: "if the randomly chosen interval is greater than
            // MAX_INITIAL_RTR_ADVERT_INTERVAL, the timer SHOULD be set to
            // MAX_INITIAL_RTR_ADVERT_INTERVAL instead."
            interval = interval.min(MAX_INITIAL_RTR_ADVERT_INTERVAL);
            self.initial_remaining -= 1;
        }
        self.next_due = Some(later(now, interval));
        true
    }

    /// Handle a Router Solicitation from `source` received at `now` (RFC 4861 §6.2.6).
    ///
    /// The response is a multicast RA delayed by uniform(0, [`MAX_RA_DELAY_TIME`]); if a multicast
    /// RA was sent less than [`MIN_DELAY_BETWEEN_RAS`] ago, that delay counts from
    /// `last_sent + MIN_DELAY_BETWEEN_RAS` instead of `now`, as §6.2.6 specifies. If an RA is
    /// already due by then, or a response to an earlier RS is pending, the RS merges into it
    /// (§6.2.6: "the delay is relative to the first solicitation"). Sources over their token bucket get [`RsOutcome::Limited`]; the unspecified
    /// address `::` (hosts without an address yet) shares a single bucket.
    pub fn on_rs(&mut self, now: Instant, source: Ipv6Addr, rng: &mut impl Rng) -> RsOutcome {
        let Some(due) = self.next_due else {
            return RsOutcome::Stopped;
        };
        if !self.limiter.admit(now, source) {
            return RsOutcome::Limited;
        }
        if self.solicited_pending {
            // Redrawing would pull the response earlier with every RS (the minimum of many
            // draws tends to 0), defeating the random delay that desynchronises routers.
            return RsOutcome::Merged(due);
        }
        let delay = uniform(rng, Duration::ZERO, MAX_RA_DELAY_TIME);
        let base = match self.last_sent {
            Some(last) if now.saturating_duration_since(last) < MIN_DELAY_BETWEEN_RAS => {
                later(last, MIN_DELAY_BETWEEN_RAS)
            }
            _ => now,
        };
        let target = later(base, delay);
        if due <= target {
            RsOutcome::Merged(due)
        } else {
            self.next_due = Some(target);
            self.solicited_pending = true;
            RsOutcome::Scheduled(target)
        }
    }

    /// Offsets, from the start of shutdown, of the [`MAX_FINAL_RTR_ADVERTISEMENTS`] final
    /// multicast RAs with Router Lifetime 0 (RFC 4861 §6.2.5): 0 ms, 200 ms, 400 ms.
    ///
    /// §6.2.5 asks for "one or more (but not more than MAX_FINAL_RTR_ADVERTISEMENTS)" final RAs and
    /// does not apply MIN_DELAY_BETWEEN_RAS to them (that limit is §6.2.6's, for solicited
    /// responses). We space them closely because the shell must exit within about a second and,
    /// more importantly, hosts must drop the default route through us at once instead of
    /// black-holing traffic until the old Router Lifetime runs out; repeats only cover packet
    /// loss. The first may follow a regular RA by less than [`MIN_DELAY_BETWEEN_RAS`].
    pub const fn final_schedule() -> [Duration; MAX_FINAL_RTR_ADVERTISEMENTS] {
        [
            Duration::ZERO,
            FINAL_RA_SPACING,
            FINAL_RA_SPACING.saturating_mul(2),
        ]
    }

    /// The configured timing (unclamped, as passed to [`Scheduler::new`]).
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Multicast RAs sent (every `poll` that returned `true`) since [`Scheduler::new`]; not reset
    /// by [`Scheduler::start`].
    pub fn sent_count(&self) -> u64 {
        self.sent_count
    }

    /// How many of the next RAs will still be followed by an interval capped at
    /// [`MAX_INITIAL_RTR_ADVERT_INTERVAL`] (RFC 4861 §6.2.4); reset to
    /// [`MAX_INITIAL_RTR_ADVERTISEMENTS`] by [`Scheduler::start`].
    pub fn initial_remaining(&self) -> u32 {
        self.initial_remaining
    }

    /// When the last multicast RA was sent, if any (kept across stop/start).
    pub fn last_sent(&self) -> Option<Instant> {
        self.last_sent
    }

    /// How many RS sources the rate limiter currently remembers (at most
    /// [`RS_SOURCE_TABLE_CAPACITY`]).
    pub fn tracked_sources(&self) -> usize {
        self.limiter.entries.len()
    }
}

/// `t + d`, or `t` in the (centuries away) case that overflows [`Instant`]. Durations added here
/// are at most [`MAX_RTR_ADV_INTERVAL_LIMIT`] + [`MIN_DELAY_BETWEEN_RAS`], so this never loses
/// time in practice; it only keeps the scheduler panic-free.
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

/// A uniformly random duration in `lo ..= hi` (nanosecond resolution); `hi` if `lo >= hi`.
fn uniform(rng: &mut impl Rng, lo: Duration, hi: Duration) -> Duration {
    if lo >= hi {
        return hi;
    }
    // Both are at most MAX_RTR_ADV_INTERVAL_LIMIT here, well inside u64 nanoseconds; saturating
    // keeps lo_ns <= hi_ns anyway, so the range is never empty.
    let lo_ns = u64::try_from(lo.as_nanos()).unwrap_or(u64::MAX);
    let hi_ns = u64::try_from(hi.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(lo_ns..=hi_ns))
}

/// Per-source RS token buckets in a bounded table with least-recently-seen eviction.
///
/// Each bucket is stored as a generic cell rate algorithm "theoretical arrival time" (one
/// [`Instant`]), which behaves exactly like a token bucket of [`RS_BURST`] tokens refilled one per
/// [`RS_REFILL_INTERVAL`]. Recency is a sequence number indexed by a `BTreeMap`, so admitting an RS
/// is O(log n) including eviction. The `HashMap` uses std's randomly keyed SipHash, so spoofed
/// sources cannot be chosen to collide.
#[derive(Debug, Clone, Default)]
struct RsLimiter {
    entries: HashMap<Ipv6Addr, SourceBucket>,
    /// Last-seen sequence number → source; the first entry is the source idle longest.
    by_recency: BTreeMap<u64, Ipv6Addr>,
    next_seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct SourceBucket {
    /// Theoretical arrival time: the bucket is full again at this time.
    tat: Instant,
    /// Key of this source in `by_recency`.
    seq: u64,
}

impl RsLimiter {
    /// Whether an RS from `source` at `now` is within its bucket; records it either way (a limited
    /// source is still active, so it is not the one to evict).
    fn admit(&mut self, now: Instant, source: Ipv6Addr) -> bool {
        let seq = self.next_seq;
        // u64 sequence numbers do not wrap at any real packet rate.
        self.next_seq = self.next_seq.saturating_add(1);

        if let Some(bucket) = self.entries.get_mut(&source) {
            self.by_recency.remove(&bucket.seq);
            bucket.seq = seq;
        } else {
            if self.entries.len() >= RS_SOURCE_TABLE_CAPACITY
                && let Some((_, evicted)) = self.by_recency.pop_first()
            {
                self.entries.remove(&evicted);
            }
            self.entries.insert(source, SourceBucket { tat: now, seq });
        }
        self.by_recency.insert(seq, source);

        let Some(bucket) = self.entries.get_mut(&source) else {
            // Inserted just above; unreachable, but failing open for one RS is harmless.
            return true;
        };
        let tat = bucket.tat.max(now);
        if tat.saturating_duration_since(now) > RS_BURST_TOLERANCE {
            return false;
        }
        bucket.tat = later(tat, RS_REFILL_INTERVAL);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    fn slow() -> Timing {
        Timing {
            min_interval: secs(200),
            max_interval: secs(600),
        }
    }

    fn host(n: u32) -> Ipv6Addr {
        let [a, b, c, d] = n.to_be_bytes();
        Ipv6Addr::new(
            0xfe80,
            0,
            0,
            0,
            0,
            0,
            u16::from_be_bytes([a, b]),
            u16::from_be_bytes([c, d]),
        )
    }

    /// A running scheduler that has just sent its first RA at `base`.
    fn sent_once(timing: Timing, base: Instant, r: &mut StdRng) -> Scheduler {
        let mut s = Scheduler::new(timing);
        s.start(base);
        assert!(s.poll(base, r));
        s
    }

    /// Poll the way the shell does: wake at each `next_wakeup` until `until`, recording sends.
    fn run_until(s: &mut Scheduler, until: Instant, r: &mut StdRng, sends: &mut Vec<Instant>) {
        while let Some(w) = s.next_wakeup() {
            if w > until {
                break;
            }
            assert!(s.poll(w, r));
            sends.push(w);
        }
    }

    #[test]
    fn new_is_stopped() {
        let base = Instant::now();
        let mut s = Scheduler::new(slow());
        assert!(!s.is_running());
        assert_eq!(s.next_wakeup(), None);
        assert!(!s.poll(base, &mut rng(1)));
        assert_eq!(s.on_rs(base, host(1), &mut rng(1)), RsOutcome::Stopped);
        assert_eq!(s.sent_count(), 0);
        assert_eq!(s.last_sent(), None);
    }

    #[test]
    fn first_ra_due_at_start() {
        let base = Instant::now();
        let mut r = rng(2);
        let mut s = Scheduler::new(slow());
        s.start(base);
        assert!(s.is_running());
        assert_eq!(s.next_wakeup(), Some(base));
        assert!(s.poll(base, &mut r));
        assert_eq!(s.sent_count(), 1);
        assert_eq!(s.last_sent(), Some(base));
    }

    #[test]
    fn early_poll_sends_nothing() {
        let base = Instant::now();
        let mut r = rng(3);
        let mut s = sent_once(slow(), base, &mut r);
        let Some(due) = s.next_wakeup() else {
            panic!("running scheduler has a wakeup");
        };
        assert!(!s.poll(due - ms(1), &mut r));
        assert_eq!(s.next_wakeup(), Some(due));
        assert!(s.poll(due, &mut r));
    }

    #[test]
    fn first_three_intervals_capped_at_16s() {
        for seed in 0..20 {
            let base = Instant::now();
            let mut r = rng(seed);
            let mut s = Scheduler::new(slow());
            s.start(base);
            assert_eq!(s.initial_remaining(), 3);
            // Send 4 RAs and look at the 3 intervals between them.
            let mut sends = Vec::new();
            for expected_remaining in [2, 1, 0, 0] {
                let Some(w) = s.next_wakeup() else {
                    panic!("running");
                };
                assert!(s.poll(w, &mut r));
                sends.push(w);
                assert_eq!(s.initial_remaining(), expected_remaining);
            }
            for pair in sends.windows(2) {
                let gap = pair[1] - pair[0];
                // §6.2.4: the random interval (≥ 200 s here) is replaced by the cap.
                assert_eq!(gap, MAX_INITIAL_RTR_ADVERT_INTERVAL, "seed {seed}");
            }
        }
    }

    #[test]
    fn initial_cap_keeps_shorter_intervals() {
        let timing = Timing {
            min_interval: secs(4),
            max_interval: secs(10),
        };
        let base = Instant::now();
        let mut r = rng(4);
        let mut s = Scheduler::new(timing);
        s.start(base);
        let mut sends = Vec::new();
        run_until(&mut s, base + secs(100), &mut r, &mut sends);
        assert!(sends.len() >= 10);
        for pair in sends.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= secs(4) && gap <= secs(10), "{gap:?}");
        }
    }

    #[test]
    fn later_intervals_within_min_max() {
        for seed in 0..5 {
            let base = Instant::now();
            let mut r = rng(seed);
            let mut s = Scheduler::new(slow());
            s.start(base);
            let mut sends = Vec::new();
            run_until(&mut s, base + secs(40_000), &mut r, &mut sends);
            assert!(sends.len() > 60);
            let gaps: Vec<Duration> = sends.windows(2).map(|p| p[1] - p[0]).collect();
            for gap in &gaps[3..] {
                assert!(*gap >= secs(200) && *gap <= secs(600), "{gap:?}");
            }
            // Randomised, not fixed: the gaps are not all equal.
            assert!(gaps[3..].iter().any(|g| *g != gaps[3]));
        }
    }

    #[test]
    fn rs_answered_within_500ms() {
        for seed in 0..20 {
            let base = Instant::now();
            let mut r = rng(seed);
            let mut s = sent_once(slow(), base, &mut r);
            let now = base + secs(10);
            let RsOutcome::Scheduled(at) = s.on_rs(now, host(1), &mut r) else {
                panic!("RS not scheduled");
            };
            assert!(at >= now && at <= now + MAX_RA_DELAY_TIME, "{:?}", at - now);
            assert_eq!(s.next_wakeup(), Some(at));
            assert!(s.poll(at, &mut r));
            assert_eq!(s.last_sent(), Some(at));
            // The next unsolicited RA is scheduled afresh from the solicited one.
            let Some(next) = s.next_wakeup() else {
                panic!("running");
            };
            assert_eq!(next - at, MAX_INITIAL_RTR_ADVERT_INTERVAL);
        }
    }

    #[test]
    fn two_rs_10ms_apart_merge() {
        let base = Instant::now();
        let mut r = rng(5);
        let mut s = sent_once(slow(), base, &mut r);
        let first = base + secs(10);
        let RsOutcome::Scheduled(at) = s.on_rs(first, host(1), &mut r) else {
            panic!("first RS not scheduled");
        };
        // The second RS does not draw a new delay: one response, timed from the first RS.
        assert_eq!(
            s.on_rs(first + ms(10), host(2), &mut r),
            RsOutcome::Merged(at)
        );
        assert_eq!(s.next_wakeup(), Some(at));
        assert!(s.poll(at, &mut r));
        assert_eq!(s.sent_count(), 2);
        assert!(s.next_wakeup() > Some(at + MIN_DELAY_BETWEEN_RAS));
    }

    #[test]
    fn rs_merges_into_due_unsolicited_ra() {
        let timing = Timing {
            min_interval: secs(4),
            max_interval: secs(4),
        };
        let base = Instant::now();
        let mut r = rng(6);
        let mut s = sent_once(timing, base, &mut r);
        assert_eq!(s.next_wakeup(), Some(base + secs(4)));
        assert_eq!(
            s.on_rs(base + secs(4), host(1), &mut r),
            RsOutcome::Merged(base + secs(4))
        );
    }

    #[test]
    fn rs_within_3s_of_last_ra_is_deferred() {
        for seed in 0..20 {
            let base = Instant::now();
            let mut r = rng(seed);
            let mut s = sent_once(slow(), base, &mut r);
            let RsOutcome::Scheduled(at) = s.on_rs(base + secs(1), host(1), &mut r) else {
                panic!("RS not scheduled");
            };
            let earliest = base + MIN_DELAY_BETWEEN_RAS;
            assert!(at >= earliest && at <= earliest + MAX_RA_DELAY_TIME);
            assert!(!s.poll(earliest - ms(1), &mut r));
            assert!(s.poll(at, &mut r));
        }
    }

    #[test]
    fn flood_from_one_source_is_limited() {
        let base = Instant::now();
        let mut r = rng(7);
        let mut s = Scheduler::new(slow());
        s.start(base);
        let step = Duration::from_micros(500);
        let (mut sends, mut limited, mut answered) = (0, 0, 0);
        for i in 0..10_000u32 {
            let now = base + step * i;
            if s.poll(now, &mut r) {
                sends += 1;
            }
            match s.on_rs(now, host(1), &mut r) {
                RsOutcome::Limited => limited += 1,
                RsOutcome::Scheduled(_) | RsOutcome::Merged(_) => answered += 1,
                RsOutcome::Stopped => panic!("running"),
            }
        }
        assert!(sends <= 3, "{sends} sends in 5 s");
        // Burst of 3, then one token per 3 s: 4 admitted in 5 s.
        assert_eq!(answered, 4);
        assert_eq!(limited, 10_000 - 4);
        assert_eq!(s.tracked_sources(), 1);
    }

    #[test]
    fn flood_from_many_sources_is_bounded() {
        let base = Instant::now();
        let mut r = rng(8);
        let mut s = Scheduler::new(slow());
        s.start(base);
        let step = Duration::from_micros(500);
        let mut sends = Vec::new();
        for i in 0..10_000u32 {
            let now = base + step * i;
            if s.poll(now, &mut r) {
                sends.push(now);
            }
            assert!(matches!(
                s.on_rs(now, host(i), &mut r),
                RsOutcome::Scheduled(_) | RsOutcome::Merged(_)
            ));
            assert!(s.tracked_sources() <= RS_SOURCE_TABLE_CAPACITY);
        }
        assert!(sends.len() <= 3, "{} sends in 5 s", sends.len());
        for pair in sends.windows(2) {
            assert!(pair[1] - pair[0] >= MIN_DELAY_BETWEEN_RAS);
        }
        assert_eq!(s.tracked_sources(), RS_SOURCE_TABLE_CAPACITY);
    }

    #[test]
    fn token_bucket_burst_and_refill() {
        let base = Instant::now();
        let mut r = rng(9);
        let mut s = sent_once(slow(), base, &mut r);
        let answered = |o: RsOutcome| matches!(o, RsOutcome::Scheduled(_) | RsOutcome::Merged(_));
        for _ in 0..RS_BURST {
            assert!(answered(s.on_rs(base, host(1), &mut r)));
        }
        assert_eq!(s.on_rs(base, host(1), &mut r), RsOutcome::Limited);
        // Another source has its own bucket.
        assert!(answered(s.on_rs(base, host(2), &mut r)));
        // One token back after the refill interval, not before.
        let refill = base + RS_REFILL_INTERVAL;
        assert_eq!(s.on_rs(refill - ms(1), host(1), &mut r), RsOutcome::Limited);
        assert!(answered(s.on_rs(refill, host(1), &mut r)));
        assert_eq!(s.on_rs(refill, host(1), &mut r), RsOutcome::Limited);
        // Idle long enough, the bucket is full again (and never holds more than RS_BURST).
        let rested = base + secs(600);
        for _ in 0..RS_BURST {
            assert!(answered(s.on_rs(rested, host(1), &mut r)));
        }
        assert_eq!(s.on_rs(rested, host(1), &mut r), RsOutcome::Limited);
    }

    #[test]
    fn unspecified_sources_share_one_bucket() {
        let base = Instant::now();
        let mut r = rng(10);
        let mut s = sent_once(slow(), base, &mut r);
        for _ in 0..RS_BURST {
            assert_ne!(
                s.on_rs(base, Ipv6Addr::UNSPECIFIED, &mut r),
                RsOutcome::Limited
            );
        }
        assert_eq!(
            s.on_rs(base, Ipv6Addr::UNSPECIFIED, &mut r),
            RsOutcome::Limited
        );
        assert_eq!(s.tracked_sources(), 1);
    }

    #[test]
    fn full_table_evicts_the_source_idle_longest() {
        let base = Instant::now();
        let mut r = rng(11);
        let mut s = sent_once(slow(), base, &mut r);
        let (oldest, active) = (host(1_000_000), host(2_000_000));
        for src in [oldest, active] {
            for _ in 0..RS_BURST {
                s.on_rs(base, src, &mut r);
            }
            assert_eq!(s.on_rs(base, src, &mut r), RsOutcome::Limited);
        }
        let fill = u32::try_from(RS_SOURCE_TABLE_CAPACITY - 2).unwrap_or(u32::MAX);
        for i in 0..fill {
            s.on_rs(base, host(i), &mut r);
        }
        assert_eq!(s.tracked_sources(), RS_SOURCE_TABLE_CAPACITY);
        // `active` keeps sending (limited), so it is not idle; `oldest` is.
        assert_eq!(s.on_rs(base, active, &mut r), RsOutcome::Limited);
        s.on_rs(base, host(3_000_000), &mut r);
        assert_eq!(s.tracked_sources(), RS_SOURCE_TABLE_CAPACITY);
        assert_eq!(s.on_rs(base, active, &mut r), RsOutcome::Limited);
        // `oldest` was forgotten and comes back with a full bucket.
        assert_ne!(s.on_rs(base, oldest, &mut r), RsOutcome::Limited);
        assert_eq!(s.tracked_sources(), RS_SOURCE_TABLE_CAPACITY);
    }

    #[test]
    fn stop_then_nothing_due_and_rs_stopped() {
        let base = Instant::now();
        let mut r = rng(12);
        let mut s = sent_once(slow(), base, &mut r);
        s.stop();
        assert!(!s.is_running());
        assert_eq!(s.next_wakeup(), None);
        assert!(!s.poll(base + secs(10_000), &mut r));
        assert_eq!(s.on_rs(base + secs(5), host(1), &mut r), RsOutcome::Stopped);
        assert_eq!(s.sent_count(), 1);
        assert_eq!(s.last_sent(), Some(base));
    }

    #[test]
    fn restart_sends_at_once_and_resets_initial_counter() {
        let base = Instant::now();
        let mut r = rng(13);
        let mut s = Scheduler::new(slow());
        s.start(base);
        let mut sends = Vec::new();
        run_until(&mut s, base + secs(2_000), &mut r, &mut sends);
        assert_eq!(s.initial_remaining(), 0);
        s.stop();
        let up = base + secs(3_000);
        s.start(up);
        assert_eq!(s.next_wakeup(), Some(up));
        assert_eq!(s.initial_remaining(), MAX_INITIAL_RTR_ADVERTISEMENTS);
        assert!(s.poll(up, &mut r));
        assert_eq!(s.next_wakeup(), Some(up + MAX_INITIAL_RTR_ADVERT_INTERVAL));
        assert_eq!(s.sent_count(), u64::try_from(sends.len()).unwrap_or(0) + 1);
    }

    #[test]
    fn quick_restart_sends_at_once_and_then_keeps_min_delay() {
        let base = Instant::now();
        let mut r = rng(14);
        let mut s = sent_once(slow(), base, &mut r);
        s.stop();
        s.start(base + secs(1));
        assert_eq!(s.next_wakeup(), Some(base + secs(1)));
        assert!(s.poll(base + secs(1), &mut r));
        // The next one respects the spacing again.
        assert!(
            s.next_wakeup()
                .is_some_and(|t| t >= base + secs(1) + MIN_DELAY_BETWEEN_RAS)
        );
    }

    #[test]
    fn late_poll_schedules_from_actual_send() {
        let timing = Timing {
            min_interval: secs(5),
            max_interval: secs(5),
        };
        let base = Instant::now();
        let mut r = rng(15);
        let mut s = sent_once(timing, base, &mut r);
        let late = base + secs(7);
        assert!(s.poll(late, &mut r));
        assert_eq!(s.last_sent(), Some(late));
        assert_eq!(s.next_wakeup(), Some(late + secs(5)));
    }

    #[test]
    fn out_of_range_timing_is_clamped() {
        let base = Instant::now();
        let cases = [
            // min ≥ max: uses max.
            (secs(100), secs(50), secs(50), secs(50)),
            // Below the 3 s floor.
            (Duration::ZERO, Duration::ZERO, secs(3), secs(3)),
            // Above the 1800 s ceiling.
            (Duration::MAX, Duration::MAX, secs(1800), secs(1800)),
        ];
        for (min_interval, max_interval, lo, hi) in cases {
            let mut r = rng(16);
            let mut s = Scheduler::new(Timing {
                min_interval,
                max_interval,
            });
            s.start(base);
            let mut sends = Vec::new();
            run_until(&mut s, base + secs(20_000), &mut r, &mut sends);
            let gaps: Vec<Duration> = sends.windows(2).map(|p| p[1] - p[0]).collect();
            assert!(gaps.len() > 4);
            for gap in &gaps[3..] {
                assert!(*gap >= lo && *gap <= hi, "{gap:?} not in {lo:?}..={hi:?}");
            }
        }
    }

    #[test]
    fn final_schedule_is_short_and_increasing() {
        let offsets = Scheduler::final_schedule();
        assert_eq!(offsets.len(), MAX_FINAL_RTR_ADVERTISEMENTS);
        assert_eq!(offsets[0], Duration::ZERO);
        assert!(offsets.windows(2).all(|p| p[0] < p[1]));
        assert!(offsets[MAX_FINAL_RTR_ADVERTISEMENTS - 1] < secs(1));
    }

    #[derive(Debug, Clone)]
    enum Event {
        Idle,
        Rs(u8),
        Stop,
        Start,
    }

    fn event() -> impl Strategy<Value = (u64, Event)> {
        (
            0u64..5_000,
            prop_oneof![
                3 => Just(Event::Idle),
                8 => any::<u8>().prop_map(Event::Rs),
                1 => Just(Event::Stop),
                1 => Just(Event::Start),
            ],
        )
    }

    proptest! {
        /// Drive the scheduler as the shell would (wake at `next_wakeup`, poll, handle RSs and
        /// link changes) over random event sequences and random, possibly invalid, timings.
        #[test]
        fn shell_invariants(
            seed in any::<u64>(),
            min_s in 0u64..40,
            max_s in 0u64..60,
            events in proptest::collection::vec(event(), 1..200),
        ) {
            let timing = Timing { min_interval: secs(min_s), max_interval: secs(max_s) };
            let (_, hi) = timing.bounds();
            let base = Instant::now();
            let mut r = rng(seed);
            let mut s = Scheduler::new(timing);
            s.start(base);
            let mut now = base;
            let mut sends: Vec<Instant> = Vec::new();
            let mut periods: Vec<Vec<Instant>> = Vec::new();
            for (advance, ev) in events {
                let until = now + ms(advance);
                while let Some(w) = s.next_wakeup() {
                    if w > until {
                        break;
                    }
                    // Never asked to wake in the past of the last poll.
                    prop_assert!(w >= now);
                    now = w;
                    // A wakeup is never spurious.
                    prop_assert!(s.poll(now, &mut r));
                    sends.push(now);
                    let Some(next) = s.next_wakeup() else {
                        return Err(TestCaseError::fail("running scheduler lost its timer"));
                    };
                    prop_assert!(next >= now + MIN_DELAY_BETWEEN_RAS);
                    // Unsolicited RAs keep coming at least every MaxRtrAdvInterval.
                    prop_assert!(next <= now + hi);
                }
                now = until;
                // Everything due has been sent.
                prop_assert!(!s.poll(now, &mut r));
                match ev {
                    Event::Idle => {}
                    Event::Stop => {
                        s.stop();
                        prop_assert_eq!(s.next_wakeup(), None);
                    }
                    Event::Start => {
                        s.start(now);
                        prop_assert_eq!(s.initial_remaining(), MAX_INITIAL_RTR_ADVERTISEMENTS);
                        let Some(w) = s.next_wakeup() else {
                            return Err(TestCaseError::fail("started without a timer"));
                        };
                        prop_assert_eq!(w, now);
                        // A new running period: the spacing is checked within each period.
                        periods.push(std::mem::take(&mut sends));
                    }
                    Event::Rs(n) => {
                        let source = if n == 0 { Ipv6Addr::UNSPECIFIED } else { host(n.into()) };
                        let running = s.is_running();
                        let out = s.on_rs(now, source, &mut r);
                        prop_assert!(s.tracked_sources() <= RS_SOURCE_TABLE_CAPACITY);
                        match out {
                            RsOutcome::Stopped => prop_assert!(!running),
                            RsOutcome::Limited => prop_assert!(running),
                            RsOutcome::Scheduled(t) | RsOutcome::Merged(t) => {
                                prop_assert!(running);
                                prop_assert_eq!(s.next_wakeup(), Some(t));
                                prop_assert!(t >= now);
                                let base = match s.last_sent() {
                                    Some(last) => now.max(last + MIN_DELAY_BETWEEN_RAS),
                                    None => now,
                                };
                                // Answered no later than §6.2.6 allows.
                                prop_assert!(t <= base + MAX_RA_DELAY_TIME);
                                if let (RsOutcome::Scheduled(_), Some(last)) = (out, s.last_sent()) {
                                    prop_assert!(t >= last + MIN_DELAY_BETWEEN_RAS);
                                }
                            }
                        }
                    }
                }
            }
            // At most one multicast RA per MIN_DELAY_BETWEEN_RAS within a running period.
            periods.push(sends);
            for period in &periods {
                for pair in period.windows(2) {
                    prop_assert!(pair[1] - pair[0] >= MIN_DELAY_BETWEEN_RAS);
                }
            }
        }
    }
}
