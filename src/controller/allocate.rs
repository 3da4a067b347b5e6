//! Choosing an instance's addresses and, for pods with per-instance /64s, its /64 (pure; the RNG is
//! passed in).
//!
//! # Policy
//!
//! A pod has a prefix and an `instance_prefix_length`:
//! - equal to the pod's length: every instance draws its addresses from the whole pod prefix (a /64,
//!   or a /120 in small labs);
//! - 64 with a pod prefix shorter than /64: every instance owns one /64 of the pod (chosen with
//!   [`random_prefix`] / [`scan_free_prefix`]) and draws its addresses from it.
//!
//! Addresses are drawn **uniformly** from the addresses that may be handed out, with the caller's
//! CSPRNG, so that they cannot be guessed (RFC 7721 §3, RFC 8981 §3). The database's unique index is
//! the duplicate check: the caller inserts the address from [`random_address`], and on a conflict asks
//! again; after [`random_attempts`] conflicts it loads the used addresses of the range and calls
//! [`scan_free_address`], which picks uniformly among the free ones or reports the range exhausted.
//! Nothing here loops: the k-th allowed address is computed directly from sorted blocked intervals, so
//! even a /48 with millions of used addresses is never enumerated.
//!
//! A range that can fill up ([`Dense`]: a pod's /64s, a small shared range) is not chosen at random
//! and then scanned; it goes through per-block used counts, so that a choice reads about 2√n rows
//! at any fill, and a full range is known from the counts.
//!
//! # Addresses never handed out
//!
//! - Ranges of /64 or shorter (64 or more host bits): in **every** /64 of the range, the interface
//!   identifier 0 (the Subnet-Router anycast address, RFC 4291 §2.6.1) and the reserved subnet anycast
//!   identifiers `fdff:ffff:ffff:ff80`–`fdff:ffff:ffff:ffff` (RFC 2526 §2 for the EUI-64 format, listed
//!   in RFC 5453 §3), i.e. 129 addresses per /64.
//! - Ranges longer than /64 (e.g. a lab /120): the all-zeros address of the range (Subnet-Router
//!   anycast), and, when the range has more than 128 + 1 addresses, its highest 128 addresses (RFC 2526
//!   §2: "for other IPv6 address types ... the highest 128 interface identifier values"). So a /120
//!   keeps 127 usable addresses, a /121 keeps 127 (only the all-zeros address is removed), a /127 keeps
//!   1 and a /128 none.
//! - Every address inside any prefix of the pod's `exclude` list (single addresses are /128s).
//!
//! A /64 for an instance is drawn uniformly among the pod's /64s that do not overlap an excluded (or,
//! when scanning, used) prefix; the /64 whose subnet id is 0 is an ordinary candidate.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use rand::Rng;

/// Why no address or prefix could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    /// Every allowed address of the range is used.
    #[error("no free address left in {range} of pod {pod}")]
    Exhausted {
        /// The pod's name.
        pod: String,
        /// The range that is full (the pod prefix or the instance's /64).
        range: Ipv6Net,
    },
    /// Every allowed prefix of the wanted length inside the pod prefix is used or excluded.
    #[error("no free /{len} left in {prefix} of pod {pod}")]
    NoFreePrefix {
        /// The pod's name.
        pod: String,
        /// The pod prefix.
        prefix: Ipv6Net,
        /// The length that was asked for.
        len: u8,
    },
    /// The request itself makes no sense (lengths, a missing or foreign instance prefix).
    #[error("{0}")]
    Invalid(String),
}

/// How many random tries (database insert conflicts) before the caller switches to
/// [`scan_free_address`] / [`scan_free_prefix`] in a large range.
pub const RANDOM_ATTEMPTS: usize = 16;

/// How many random tries before scanning in a small range (fewer than [`SMALL_RANGE`] allowed
/// addresses), where collisions mean the range is filling up and scanning is cheap.
pub const SMALL_RANGE_ATTEMPTS: usize = 3;

/// Below this many allowed addresses (or prefixes) a range counts as small for [`random_attempts`].
pub const SMALL_RANGE: u128 = 65_536;

/// The attempt policy: how many random tries before scanning, given [`allowed_count`] (or the count
/// of allowed prefixes).
pub fn random_attempts(allowed: u128) -> usize {
    if allowed < SMALL_RANGE {
        SMALL_RANGE_ATTEMPTS
    } else {
        RANDOM_ATTEMPTS
    }
}

/// First reserved subnet anycast interface identifier in EUI-64 format (RFC 2526 §2, RFC 5453 §3).
const ANYCAST_IID_FIRST: u64 = 0xfdff_ffff_ffff_ff80;
/// Last reserved subnet anycast interface identifier in EUI-64 format (RFC 2526 §2, RFC 5453 §3).
const ANYCAST_IID_LAST: u64 = 0xfdff_ffff_ffff_ffff;
/// Reserved identifiers per /64: the Subnet-Router anycast (IID 0) and 128 subnet anycast IDs.
const RESERVED_PER_64: u128 = 129;
/// Reserved subnet anycast addresses at the top of a range that is not EUI-64 format (RFC 2526 §2).
const HIGH_ANYCAST: u128 = 128;

/// Where a new instance's addresses come from.
///
/// - `instance_prefix_length` equal to the pod's length: the pod prefix itself (shared range);
///   `instance_prefix` must be `None` or the pod prefix.
/// - `instance_prefix_length` 64 with a pod shorter than /64: `instance_prefix`, which must be a /64
///   inside the pod (chosen before with [`random_prefix`] / [`scan_free_prefix`]).
/// - Anything else is [`AllocateError::Invalid`].
///
/// Host bits in the arguments are ignored (the prefixes are truncated).
///
/// # Errors
/// [`AllocateError::Invalid`] for any other combination of lengths and instance prefix.
pub fn instance_range(
    pod_prefix: Ipv6Net,
    instance_prefix_length: u8,
    instance_prefix: Option<Ipv6Net>,
) -> Result<Ipv6Net, AllocateError> {
    let pod = pod_prefix.trunc();
    let pod_len = pod.prefix_len();
    if instance_prefix_length == pod_len {
        return match instance_prefix.map(|p| p.trunc()) {
            None => Ok(pod),
            Some(p) if p == pod => Ok(pod),
            Some(p) => Err(AllocateError::Invalid(format!(
                "instance prefix {p} given, but pod {pod} has instance_prefix_length \
                 {instance_prefix_length}: instances share the pod range"
            ))),
        };
    }
    if instance_prefix_length != 64 {
        return Err(AllocateError::Invalid(format!(
            "instance_prefix_length {instance_prefix_length} of pod {pod} must be 64 or the pod \
             length {pod_len}"
        )));
    }
    if pod_len > 64 {
        return Err(AllocateError::Invalid(format!(
            "pod {pod} is longer than /64 and cannot hold per-instance /64s"
        )));
    }
    let Some(p) = instance_prefix.map(|p| p.trunc()) else {
        return Err(AllocateError::Invalid(format!(
            "pod {pod} gives each instance a /64, but the instance has none yet"
        )));
    };
    if p.prefix_len() != 64 || !pod.contains(&p) {
        return Err(AllocateError::Invalid(format!(
            "instance prefix {p} is not a /64 inside pod {pod}"
        )));
    }
    Ok(p)
}

/// Whether `addr` is one of the addresses of `range` that are never handed out because they are
/// reserved anycast addresses (see the module docs: RFC 4291 §2.6.1, RFC 2526 §2, RFC 5453 §3).
/// Addresses outside `range` are not reserved by it.
pub fn is_reserved(range: Ipv6Net, addr: Ipv6Addr) -> bool {
    let range = range.trunc();
    if !range.contains(&addr) {
        return false;
    }
    let a = u128::from(addr);
    let host_bits = 128 - u32::from(range.prefix_len());
    if host_bits >= 64 {
        // Truncation intended: the interface identifier is the low 64 bits.
        let iid = a as u64;
        iid == 0 || (ANYCAST_IID_FIRST..=ANYCAST_IID_LAST).contains(&iid)
    } else {
        let offset = a - u128::from(range.network());
        let size = 1u128 << host_bits;
        offset == 0 || (size > HIGH_ANYCAST + 1 && offset >= size - HIGH_ANYCAST)
    }
}

/// Whether `addr` may be handed out from `range`: inside it, not reserved, not in `exclude`.
pub fn is_allowed(range: Ipv6Net, exclude: &[Ipv6Net], addr: Ipv6Addr) -> bool {
    range.trunc().contains(&addr)
        && !is_reserved(range, addr)
        && !exclude.iter().any(|e| e.trunc().contains(&addr))
}

/// One random candidate address in `range` that is not reserved and not excluded, drawn uniformly
/// among all such addresses; `None` if the range has no allowed address at all (then it is
/// [`AllocateError::Exhausted`]). Pass a CSPRNG so that addresses are unguessable (RFC 7721 §3).
pub fn random_address(range: Ipv6Net, exclude: &[Ipv6Net], rng: &mut impl Rng) -> Option<Ipv6Addr> {
    address_space(range, exclude, &[])
        .choose(rng)
        .map(Ipv6Addr::from)
}

/// A free address given all used ones in `range` (in any order, duplicates and addresses outside the
/// range are ignored): drawn uniformly among the allowed addresses that are not used, so scanning keeps
/// addresses unguessable. Costs O(u log u) for u used addresses, whatever the size of the range.
///
/// # Errors
/// [`AllocateError::Exhausted`] naming `pod` and `range` when none is left.
pub fn scan_free_address(
    pod: &str,
    range: Ipv6Net,
    exclude: &[Ipv6Net],
    used: &[Ipv6Addr],
    rng: &mut impl Rng,
) -> Result<Ipv6Addr, AllocateError> {
    address_space(range, exclude, used)
        .choose(rng)
        .map(Ipv6Addr::from)
        .ok_or_else(|| AllocateError::Exhausted {
            pod: pod.to_string(),
            range: range.trunc(),
        })
}

/// How many addresses of `range` may be handed out at all (after reserved and excluded ones),
/// saturating at `u128::MAX`. Feed it to [`random_attempts`] to decide when to switch to scanning.
pub fn allowed_count(range: Ipv6Net, exclude: &[Ipv6Net]) -> u128 {
    address_space(range, exclude, &[]).count()
}

/// One random prefix of length `len` inside `pod_prefix` (e.g. an instance's /64 in a /48), drawn
/// uniformly among those that overlap no prefix in `exclude`. `None` when there is none, or when `len`
/// is shorter than the pod prefix or longer than 128.
pub fn random_prefix(
    pod_prefix: Ipv6Net,
    len: u8,
    exclude: &[Ipv6Net],
    rng: &mut impl Rng,
) -> Option<Ipv6Net> {
    let pod = pod_prefix.trunc();
    let space = prefix_space(pod, len, exclude, &[])?;
    space.choose(rng).and_then(|i| subnet(pod, len, i))
}

/// A free prefix of length `len` inside `pod_prefix` given the used ones (any order; a used prefix of
/// another length blocks every candidate it overlaps), drawn uniformly among the free candidates.
///
/// # Errors
/// [`AllocateError::NoFreePrefix`] when none is left, [`AllocateError::Invalid`] for a bad `len`.
pub fn scan_free_prefix(
    pod: &str,
    pod_prefix: Ipv6Net,
    len: u8,
    exclude: &[Ipv6Net],
    used: &[Ipv6Net],
    rng: &mut impl Rng,
) -> Result<Ipv6Net, AllocateError> {
    let prefix = pod_prefix.trunc();
    let space = prefix_space(prefix, len, exclude, used).ok_or_else(|| {
        AllocateError::Invalid(format!(
            "prefix length /{len} is not between the length of pod {pod} prefix {prefix} and /128"
        ))
    })?;
    space
        .choose(rng)
        .and_then(|i| subnet(prefix, len, i))
        .ok_or_else(|| AllocateError::NoFreePrefix {
            pod: pod.to_string(),
            prefix,
            len,
        })
}

/// The allowed addresses of `range` as a [`Space`] of address values.
fn address_space(range: Ipv6Net, exclude: &[Ipv6Net], used: &[Ipv6Addr]) -> Space {
    let range = range.trunc();
    let all = (u128::from(range.network()), u128::from(range.broadcast()));
    address_space_within(range, exclude, used, all)
}

/// [`address_space`] limited to the values `clip.0..=clip.1` (a block of a [`Dense`] range).
fn address_space_within(
    range: Ipv6Net,
    exclude: &[Ipv6Net],
    used: &[Ipv6Addr],
    clip: (u128, u128),
) -> Space {
    let range = range.trunc();
    let lo = u128::from(range.network());
    let hi = u128::from(range.broadcast());
    let host_bits = 128 - u32::from(range.prefix_len());
    let mut space = Space::new(lo.max(clip.0), hi.min(clip.1), host_bits >= 64);
    if host_bits < 64 {
        space.block(lo, lo);
        if (1u128 << host_bits) > HIGH_ANYCAST + 1 {
            space.block(hi - (HIGH_ANYCAST - 1), hi);
        }
    }
    for e in exclude {
        let e = e.trunc();
        space.block(u128::from(e.network()), u128::from(e.broadcast()));
    }
    for u in used {
        let u = u128::from(*u);
        space.block(u, u);
    }
    space.finish()
}

/// The subnets of length `len` of `pod` as a [`Space`] of subnet indices, minus those overlapping
/// `exclude` or `used`; `None` if `len` is not between the pod length and 128.
fn prefix_space(pod: Ipv6Net, len: u8, exclude: &[Ipv6Net], used: &[Ipv6Net]) -> Option<Space> {
    prefix_space_within(pod, len, exclude, used, (0, u128::MAX))
}

/// [`prefix_space`] limited to the subnet indices `clip.0..=clip.1`.
fn prefix_space_within(
    pod: Ipv6Net,
    len: u8,
    exclude: &[Ipv6Net],
    used: &[Ipv6Net],
    clip: (u128, u128),
) -> Option<Space> {
    let pod_len = pod.prefix_len();
    if len < pod_len || len > 128 {
        return None;
    }
    let index_bits = u32::from(len - pod_len);
    let hi = if index_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << index_bits) - 1
    };
    let shift = 128 - u32::from(len);
    let base = u128::from(pod.network());
    let mut space = Space::new(clip.0, hi.min(clip.1), false);
    for x in exclude.iter().chain(used) {
        let x = x.trunc();
        // Two prefixes overlap iff one contains the other; the overlap is the longer one.
        let inner = if pod.contains(&x) {
            x
        } else if x.contains(&pod) {
            pod
        } else {
            continue;
        };
        let first = shr(u128::from(inner.network()) - base, shift);
        let last = shr(u128::from(inner.broadcast()) - base, shift);
        space.block(first, last);
    }
    Some(space.finish())
}

/// The subnet of length `len` with index `i` inside `pod`.
fn subnet(pod: Ipv6Net, len: u8, i: u128) -> Option<Ipv6Net> {
    let bits = u128::from(pod.network()) | shl(i, 128 - u32::from(len));
    Ipv6Net::new(Ipv6Addr::from(bits), len).ok()
}

fn shl(x: u128, n: u32) -> u128 {
    x.checked_shl(n).unwrap_or(0)
}

fn shr(x: u128, n: u32) -> u128 {
    x.checked_shr(n).unwrap_or(0)
}

/// The reserved EUI-64 anycast addresses in `0..=x` (every /64 has [`RESERVED_PER_64`]).
fn eui64_reserved_upto(x: u128) -> u128 {
    let blocks = x >> 64;
    // Truncation intended: the interface identifier is the low 64 bits.
    let iid = x as u64;
    let mut n = blocks * RESERVED_PER_64 + 1;
    if iid >= ANYCAST_IID_FIRST {
        n += u128::from(iid.min(ANYCAST_IID_LAST) - ANYCAST_IID_FIRST) + 1;
    }
    n
}

/// A range dense enough to fill up — a pod's /64s (in a /32 to /63 pod) or a small shared range
/// (/96 and longer) — chosen through a used count per block instead of by random tries and a
/// scan of everything used.
///
/// The range's values (subnet indices, or addresses) are split into blocks of about √n values.
/// The database keeps, in the same transaction as every allocation and release, how many values
/// of each block are used (`alloc_blocks`). A choice reads those counts (√n rows at most), draws
/// a block with probability proportional to its free values ([`Dense::pick_block`]), reads the
/// used values of that block (√n at most) and draws uniformly among its free ones
/// ([`Dense::pick_in_block`]): every free value is equally likely, whatever the fill, and a full
/// range is known to be full from the counts alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dense {
    kind: DenseKind,
    /// The pod prefix (prefixes) or the shared range (addresses).
    range: Ipv6Net,
    exclude: Vec<Ipv6Net>,
    /// log2 of the number of values in the range.
    bits: u32,
    /// log2 of the values per block.
    block_bits: u32,
}

/// What a [`Dense`] range hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseKind {
    /// One /64 per instance.
    Prefixes,
    /// Addresses of a shared range.
    Addresses,
}

/// Ranges up to this many bits of values are [`Dense`]; larger ones never fill up in practice
/// and are chosen at random.
pub const DENSE_MAX_BITS: u32 = 32;

impl Dense {
    /// The dense range of a pod, if it has one: its /64s when it gives one per instance and has
    /// at most 2^32 of them, or its shared range when that has at most 2^32 addresses.
    pub fn for_pod(pod: Ipv6Net, instance_prefix_length: u8, exclude: &[Ipv6Net]) -> Option<Dense> {
        let pod = pod.trunc();
        let pod_len = u32::from(pod.prefix_len());
        let (kind, bits) = if instance_prefix_length == 64 && pod_len < 64 {
            (DenseKind::Prefixes, 64 - pod_len)
        } else if u32::from(instance_prefix_length) == pod_len {
            (DenseKind::Addresses, 128 - pod_len)
        } else {
            return None;
        };
        if bits > DENSE_MAX_BITS {
            return None;
        }
        Some(Dense {
            kind,
            range: pod,
            exclude: exclude.iter().map(|e| e.trunc()).collect(),
            bits,
            block_bits: bits.div_ceil(2),
        })
    }

    /// What it hands out.
    pub fn kind(&self) -> DenseKind {
        self.kind
    }

    /// The name of its counts in the database (`alloc_blocks.scope`).
    pub fn scope(&self) -> &'static str {
        match self.kind {
            DenseKind::Prefixes => "p",
            DenseKind::Addresses => "a",
        }
    }

    /// How many blocks it has.
    pub fn blocks(&self) -> u64 {
        1u64 << (self.bits - self.block_bits)
    }

    /// The value (subnet index or address) of a prefix or an address of the range.
    fn value_of(&self, net: Ipv6Net) -> Option<u128> {
        let base = u128::from(self.range.network());
        if !self.range.contains(&net) {
            return None;
        }
        let offset = u128::from(net.network()) - base;
        Some(match self.kind {
            DenseKind::Prefixes => offset >> 64,
            DenseKind::Addresses => u128::from(net.network()),
        })
    }

    /// The block of an instance's /64 (prefix ranges) or of an address (address ranges).
    pub fn block_of(&self, net: Ipv6Net) -> Option<u64> {
        let value = self.value_of(net)?;
        let first = match self.kind {
            DenseKind::Prefixes => 0,
            DenseKind::Addresses => u128::from(self.range.network()),
        };
        u64::try_from((value - first) >> self.block_bits).ok()
    }

    /// The block of an address (for address ranges).
    pub fn block_of_address(&self, address: Ipv6Addr) -> Option<u64> {
        self.block_of(Ipv6Net::from(address))
    }

    /// The values of `block`, inclusive.
    fn bounds(&self, block: u64) -> (u128, u128) {
        let first = match self.kind {
            DenseKind::Prefixes => 0,
            DenseKind::Addresses => u128::from(self.range.network()),
        };
        let lo = first + (u128::from(block) << self.block_bits);
        (lo, lo + ((1u128 << self.block_bits) - 1))
    }

    /// The addresses `block` spans: what to read its used values with (an index range).
    pub fn block_span(&self, block: u64) -> Ipv6Net {
        let (lo, _) = self.bounds(block);
        match self.kind {
            DenseKind::Prefixes => {
                let base = u128::from(self.range.network());
                let len = 64 - self.block_bits as u8;
                Ipv6Net::new(Ipv6Addr::from(base | (lo << 64)), len)
                    .map(|n| n.trunc())
                    .unwrap_or(self.range)
            }
            DenseKind::Addresses => Ipv6Net::new(Ipv6Addr::from(lo), 128 - self.block_bits as u8)
                .map(|n| n.trunc())
                .unwrap_or(self.range),
        }
    }

    fn space(&self, block: u64, used_prefixes: &[Ipv6Net], used: &[Ipv6Addr]) -> Option<Space> {
        let clip = self.bounds(block);
        match self.kind {
            DenseKind::Prefixes => {
                prefix_space_within(self.range, 64, &self.exclude, used_prefixes, clip)
            }
            DenseKind::Addresses => {
                Some(address_space_within(self.range, &self.exclude, used, clip))
            }
        }
    }

    /// How many values of `block` may be handed out at all (reserved and excluded ones left out).
    pub fn capacity(&self, block: u64) -> u128 {
        self.space(block, &[], &[]).map_or(0, |s| s.count())
    }

    /// A block drawn with probability proportional to its free values, given the used count of
    /// each block that has one (`(block, used)`, any order; a block not listed has none used);
    /// `None` when every block is full.
    pub fn pick_block(&self, used: &[(u64, u64)], rng: &mut impl Rng) -> Option<u64> {
        let counts: std::collections::HashMap<u64, u64> = used.iter().copied().collect();
        let free = |block: u64| {
            self.capacity(block)
                .saturating_sub(u128::from(counts.get(&block).copied().unwrap_or(0)))
        };
        let total: u128 = (0..self.blocks()).map(free).sum();
        if total == 0 {
            return None;
        }
        let mut k = rng.random_range(0..total);
        for block in 0..self.blocks() {
            let here = free(block);
            if k < here {
                return Some(block);
            }
            k -= here;
        }
        None
    }

    /// One value of the whole range (a /64, or an address as a /128) drawn uniformly among those
    /// that may be handed out, used or not: what a choice looks up before it reads the counts.
    pub fn draw(&self, rng: &mut impl Rng) -> Option<Ipv6Net> {
        match self.kind {
            DenseKind::Prefixes => random_prefix(self.range, 64, &self.exclude, rng),
            DenseKind::Addresses => {
                random_address(self.range, &self.exclude, rng).map(Ipv6Net::from)
            }
        }
    }

    /// A free /64 of `block` given the pod's used /64s in it, drawn uniformly.
    pub fn pick_prefix(&self, block: u64, used: &[Ipv6Net], rng: &mut impl Rng) -> Option<Ipv6Net> {
        let index = self.space(block, used, &[])?.choose(rng)?;
        subnet(self.range, 64, index)
    }

    /// A free address of `block` given the used addresses in it, drawn uniformly.
    pub fn pick_address(
        &self,
        block: u64,
        used: &[Ipv6Addr],
        rng: &mut impl Rng,
    ) -> Option<Ipv6Addr> {
        self.space(block, &[], used)?
            .choose(rng)
            .map(Ipv6Addr::from)
    }
}

/// An inclusive interval `lo..=hi` of `u128` values minus merged blocked intervals and, when
/// `eui64_reserved`, minus the reserved interface identifiers of every /64. Counting and picking the
/// k-th allowed value walk the gaps between blocked intervals, never the values themselves.
struct Space {
    lo: u128,
    hi: u128,
    blocked: Vec<(u128, u128)>,
    eui64_reserved: bool,
}

impl Space {
    fn new(lo: u128, hi: u128, eui64_reserved: bool) -> Self {
        Space {
            lo,
            hi,
            blocked: Vec::new(),
            eui64_reserved,
        }
    }

    /// Block `a..=b`, clipped to the space.
    fn block(&mut self, a: u128, b: u128) {
        let (a, b) = (a.max(self.lo), b.min(self.hi));
        if a <= b {
            self.blocked.push((a, b));
        }
    }

    /// Sort and merge the blocked intervals.
    fn finish(mut self) -> Self {
        self.blocked.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(self.blocked.len());
        for &(a, b) in &self.blocked {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.blocked = merged;
        self
    }

    fn reserved_in(&self, a: u128, b: u128) -> u128 {
        if !self.eui64_reserved {
            return 0;
        }
        let below = if a == 0 {
            0
        } else {
            eui64_reserved_upto(a - 1)
        };
        eui64_reserved_upto(b) - below
    }

    /// Allowed values in `a..=b` (which holds no blocked value), saturating.
    fn allowed_in(&self, a: u128, b: u128) -> u128 {
        let span_minus_one = b - a;
        match self.reserved_in(a, b) {
            0 => span_minus_one.saturating_add(1),
            r => span_minus_one - (r - 1),
        }
    }

    /// The maximal intervals holding no blocked value.
    fn gaps(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        let mut cursor = Some(self.lo);
        let mut blocked = self.blocked.iter();
        let hi = self.hi;
        std::iter::from_fn(move || {
            loop {
                let start = cursor?;
                match blocked.next() {
                    Some(&(a, b)) => {
                        cursor = b.checked_add(1).filter(|&c| c <= hi);
                        if a > start {
                            return Some((start, a - 1));
                        }
                    }
                    None => {
                        cursor = None;
                        return (start <= hi).then_some((start, hi));
                    }
                }
            }
        })
    }

    fn count(&self) -> u128 {
        self.gaps()
            .fold(0u128, |n, (a, b)| n.saturating_add(self.allowed_in(a, b)))
    }

    /// The `k`-th allowed value (from 0) in ascending order.
    fn nth(&self, mut k: u128) -> Option<u128> {
        for (a, b) in self.gaps() {
            let here = self.allowed_in(a, b);
            if k >= here {
                k -= here;
                continue;
            }
            // The smallest x with more than k allowed values in a..=x is the k-th one, and allowed.
            let (mut lo, mut hi) = (a, b);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if self.allowed_in(a, mid) > k {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            return Some(lo);
        }
        None
    }

    /// A uniformly random allowed value, `None` if there is none.
    fn choose(&self, rng: &mut impl Rng) -> Option<u128> {
        match self.count() {
            0 => None,
            n => self.nth(rng.random_range(0..n)),
        }
    }
}

#[cfg(test)]
mod dense_tests {
    use rand::SeedableRng;

    use super::*;

    fn net(text: &str) -> Ipv6Net {
        text.parse().unwrap()
    }

    #[test]
    fn a_48_has_256_blocks_of_256_prefixes_and_the_counts_add_up() {
        let dense = Dense::for_pod(net("2001:db8:1::/48"), 64, &[net("2001:db8:1:ff00::/56")])
            .expect("dense");
        assert_eq!(dense.kind(), DenseKind::Prefixes);
        assert_eq!(dense.blocks(), 256);
        let total: u128 = (0..256).map(|b| dense.capacity(b)).sum();
        assert_eq!(total, 65_536 - 256);
        assert_eq!(dense.capacity(255), 0);
        assert_eq!(dense.block_of(net("2001:db8:1:0102::/64")), Some(1));
        assert_eq!(dense.block_span(1), net("2001:db8:1:100::/56"));
        // Large ranges are not dense.
        assert!(Dense::for_pod(net("2001:db8::/16"), 64, &[]).is_none());
        assert!(Dense::for_pod(net("2001:db8::/64"), 64, &[]).is_none());
        let shared = Dense::for_pod(net("fd00::/112"), 112, &[]).expect("dense /112");
        assert_eq!(shared.kind(), DenseKind::Addresses);
        let total: u128 = (0..shared.blocks()).map(|b| shared.capacity(b)).sum();
        assert_eq!(total, allowed_count(net("fd00::/112"), &[]));
    }

    #[test]
    fn full_blocks_are_never_picked_and_a_full_range_picks_nothing() {
        let dense = Dense::for_pod(net("fd00::/120"), 120, &[]).expect("dense");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // Every block but 3 is full.
        let used: Vec<(u64, u64)> = (0..dense.blocks())
            .filter(|b| *b != 3)
            .map(|b| (b, u64::try_from(dense.capacity(b)).unwrap()))
            .collect();
        for _ in 0..50 {
            assert_eq!(dense.pick_block(&used, &mut rng), Some(3));
        }
        let full: Vec<(u64, u64)> = (0..dense.blocks())
            .map(|b| (b, u64::try_from(dense.capacity(b)).unwrap()))
            .collect();
        assert_eq!(dense.pick_block(&full, &mut rng), None);
        // Within a block, only its free addresses.
        let span = dense.block_span(3);
        let taken: Vec<Ipv6Addr> = (0..15u128)
            .map(|i| Ipv6Addr::from(u128::from(span.network()) + i))
            .collect();
        for _ in 0..20 {
            let a = dense.pick_address(3, &taken, &mut rng).expect("free");
            assert_eq!(u128::from(a) - u128::from(span.network()), 15);
        }
        assert_eq!(
            dense.pick_address(
                3,
                &[
                    taken.clone(),
                    vec![Ipv6Addr::from(u128::from(span.network()) + 15)]
                ]
                .concat(),
                &mut rng
            ),
            None
        );
    }

    #[test]
    fn every_free_value_is_reachable_and_picks_spread_over_blocks() {
        let dense = Dense::for_pod(net("2001:db8:1::/56"), 64, &[]).expect("dense");
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4000 {
            let block = dense.pick_block(&[], &mut rng).expect("block");
            seen.insert(dense.pick_prefix(block, &[], &mut rng).expect("prefix"));
        }
        assert_eq!(seen.len(), 256, "all 256 /64s drawn");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn net(s: &str) -> Ipv6Net {
        match s.parse() {
            Ok(n) => n,
            Err(e) => panic!("bad test prefix {s}: {e}"),
        }
    }

    fn addr(s: &str) -> Ipv6Addr {
        match s.parse() {
            Ok(a) => a,
            Err(e) => panic!("bad test address {s}: {e}"),
        }
    }

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    /// Independent statement of the reservation rules from the module docs.
    fn reserved_ref(range: Ipv6Net, a: Ipv6Addr) -> bool {
        let host_bits = 128 - u32::from(range.prefix_len());
        let v = u128::from(a);
        if host_bits >= 64 {
            let iid = (v & u128::from(u64::MAX)) as u64;
            iid == 0 || (0xfdff_ffff_ffff_ff80..=0xfdff_ffff_ffff_ffff).contains(&iid)
        } else {
            let off = v - u128::from(range.network());
            let size = 1u128 << host_bits;
            off == 0 || (size > 129 && off >= size - 128)
        }
    }

    /// Prefixes that cover `range` except `keep` (the siblings along the path from `range` to `keep`).
    fn all_but(range: Ipv6Net, keep: Ipv6Net) -> Vec<Ipv6Net> {
        let mut out = Vec::new();
        let k = u128::from(keep.network());
        for len in range.prefix_len() + 1..=keep.prefix_len() {
            let bit = 1u128 << (128 - u32::from(len));
            let sibling = Ipv6Net::new(Ipv6Addr::from(k ^ bit), len).map(|n| n.trunc());
            match sibling {
                Ok(s) => out.push(s),
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    /// Every allowed address of a small range, by brute force.
    fn brute_allowed(range: Ipv6Net, exclude: &[Ipv6Net]) -> BTreeSet<Ipv6Addr> {
        range
            .hosts()
            .chain([range.network(), range.broadcast()])
            .filter(|a| !reserved_ref(range, *a) && !exclude.iter().any(|e| e.contains(a)))
            .collect()
    }

    fn exhaust(range: Ipv6Net, exclude: &[Ipv6Net], seed: u64) -> (Vec<Ipv6Addr>, AllocateError) {
        let mut r = rng(seed);
        let mut used = Vec::new();
        loop {
            match scan_free_address("lab", range, exclude, &used, &mut r) {
                Ok(a) => {
                    assert!(!used.contains(&a), "{a} handed out twice");
                    used.push(a);
                }
                Err(e) => return (used, e),
            }
        }
    }

    #[test]
    fn instance_range_shared_and_per_instance() {
        let p64 = net("2001:db8:1:2::/64");
        assert_eq!(instance_range(p64, 64, None), Ok(p64));
        assert_eq!(instance_range(p64, 64, Some(p64)), Ok(p64));
        let lab = net("fd00::100/120");
        assert_eq!(instance_range(lab, 120, None), Ok(lab));

        let pod = net("2001:db8:1::/48");
        let mine = net("2001:db8:1:beef::/64");
        assert_eq!(instance_range(pod, 64, Some(mine)), Ok(mine));
        // Host bits are ignored.
        assert_eq!(
            instance_range(pod, 64, Some(net("2001:db8:1:beef::1/64"))),
            Ok(mine)
        );
    }

    #[test]
    fn instance_range_rejects_nonsense() {
        let pod = net("2001:db8:1::/48");
        let invalid =
            |r: Result<Ipv6Net, AllocateError>| matches!(r, Err(AllocateError::Invalid(_)));
        assert!(invalid(instance_range(pod, 64, None)));
        assert!(invalid(instance_range(
            pod,
            64,
            Some(net("2001:db8:2:1::/64"))
        )));
        assert!(invalid(instance_range(
            pod,
            64,
            Some(net("2001:db8:1:1::/72"))
        )));
        assert!(invalid(instance_range(pod, 56, None)));
        assert!(invalid(instance_range(net("fd00::/120"), 64, None)));
        assert!(invalid(instance_range(
            net("2001:db8::/64"),
            64,
            Some(net("2001:db8:0:1::/64"))
        )));
        let Err(e) = instance_range(pod, 80, None) else {
            panic!("accepted /80")
        };
        assert!(e.to_string().contains("80"), "{e}");
    }

    #[test]
    fn allowed_counts_follow_the_reservation_rules() {
        let per64 = (1u128 << 64) - 129;
        assert_eq!(allowed_count(net("2001:db8::/64"), &[]), per64);
        assert_eq!(allowed_count(net("2001:db8::/48"), &[]), per64 << 16);
        assert_eq!(allowed_count(net("::/0"), &[]), per64 << 64);
        assert_eq!(allowed_count(net("fd00::/120"), &[]), 127);
        assert_eq!(allowed_count(net("fd00::/121"), &[]), 127);
        assert_eq!(allowed_count(net("fd00::/127"), &[]), 1);
        assert_eq!(allowed_count(net("fd00::/128"), &[]), 0);
        assert_eq!(allowed_count(net("fd00::/112"), &[]), 65_536 - 129);
    }

    #[test]
    fn allowed_count_does_not_subtract_reserved_twice() {
        let r = net("2001:db8::/64");
        let per64 = (1u128 << 64) - 129;
        // 256 addresses of which 128 are the RFC 5453 anycast range.
        let top = net("2001:db8::fdff:ffff:ffff:ff00/120");
        assert_eq!(allowed_count(r, &[top]), per64 - 128);
        // 256 addresses of which one is the Subnet-Router anycast address.
        let bottom = net("2001:db8::/120");
        assert_eq!(allowed_count(r, &[bottom]), per64 - 255);
        // Overlapping and duplicate excludes, one outside the range.
        let more = [
            bottom,
            net("2001:db8::/121"),
            net("2001:db8::5/128"),
            net("2001:db8:1::/64"),
        ];
        assert_eq!(allowed_count(r, &more), per64 - 255);
        assert_eq!(allowed_count(r, &[net("2001:db8::/32")]), 0);
        assert_eq!(
            random_address(r, &[net("2001:db8::/32")], &mut rng(1)),
            None
        );
    }

    #[test]
    fn lab_120_with_eight_excluded_is_used_up_exactly_then_exhausted() {
        let range = net("fd00:0:0:1::100/120");
        let exclude: Vec<Ipv6Net> = (1..=8)
            .map(|i| net(&format!("fd00:0:0:1::1{i:02x}/128")))
            .collect();
        let n = allowed_count(range, &exclude);
        assert_eq!(n, 127 - 8);
        let (used, err) = exhaust(range, &exclude, 7);
        assert_eq!(used.len() as u128, n);
        let distinct: HashSet<_> = used.iter().collect();
        assert_eq!(distinct.len(), used.len());
        for a in &used {
            assert!(range.contains(a));
            assert!(!reserved_ref(range, *a), "{a} is reserved");
            assert!(!exclude.iter().any(|e| e.contains(a)), "{a} is excluded");
        }
        assert_eq!(
            err,
            AllocateError::Exhausted {
                pod: "lab".into(),
                range
            }
        );
        assert_eq!(
            err.to_string(),
            "no free address left in fd00:0:0:1::100/120 of pod lab"
        );
    }

    #[test]
    fn thousand_draws_in_a_64_are_distinct_and_inside() {
        let range = net("2001:db8:5:6::/64");
        let mut r = rng(42);
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let Some(a) = random_address(range, &[], &mut r) else {
                panic!("no address in a /64")
            };
            assert!(range.contains(&a));
            assert!(seen.insert(a), "{a} drawn twice");
        }
    }

    #[test]
    fn rfc5453_anycast_ids_are_never_produced() {
        let range = net("2001:db8::/64");
        // Only fdff:ffff:ffff:ff00..=ffff is left: 128 allowed, 128 reserved.
        let keep = net("2001:db8::fdff:ffff:ffff:ff00/120");
        let exclude = all_but(range, keep);
        assert_eq!(allowed_count(range, &exclude), 128);
        let mut r = rng(3);
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let Some(a) = random_address(range, &exclude, &mut r) else {
                panic!("nothing left")
            };
            assert!(keep.contains(&a));
            assert!(
                u128::from(a) as u64 <= 0xfdff_ffff_ffff_ff7f,
                "{a} is reserved"
            );
            seen.insert(a);
        }
        // Uniform over 128 values: 10,000 draws see all of them.
        assert_eq!(seen.len(), 128);
        let (used, _) = exhaust(range, &exclude, 4);
        assert_eq!(used.len(), 128);
    }

    #[test]
    fn subnet_router_anycast_is_never_produced() {
        let range = net("2001:db8::/64");
        let exclude = all_but(range, net("2001:db8::/126"));
        let mut r = rng(5);
        let mut seen = BTreeSet::new();
        for _ in 0..1000 {
            seen.extend(random_address(range, &exclude, &mut r));
        }
        let want: BTreeSet<_> = [
            addr("2001:db8::1"),
            addr("2001:db8::2"),
            addr("2001:db8::3"),
        ]
        .into_iter()
        .collect();
        assert_eq!(seen, want);

        // In a shared range shorter than /64, each /64's IID 0 is reserved too.
        let wide = net("2001:db8::/48");
        let exclude = all_but(wide, net("2001:db8:0:7::/127"));
        for _ in 0..200 {
            assert_eq!(
                random_address(wide, &exclude, &mut r),
                Some(addr("2001:db8:0:7::1"))
            );
        }

        // A /120: never ::0 nor the top 128.
        let lab = net("fd00::/120");
        for _ in 0..5000 {
            let Some(a) = random_address(lab, &[], &mut r) else {
                panic!("empty lab")
            };
            let off = u128::from(a) - u128::from(lab.network());
            assert!((1..=127).contains(&off), "{a}");
        }
    }

    #[test]
    fn scanning_a_64_with_a_few_used_is_quick_and_avoids_them() {
        let range = net("2001:db8::/64");
        let mut r = rng(9);
        let used: Vec<Ipv6Addr> = (0..1000)
            .filter_map(|_| random_address(range, &[], &mut r))
            .chain([addr("2001:db9::1")]) // outside: ignored
            .collect();
        let used_set: HashSet<_> = used.iter().copied().collect();
        for _ in 0..1000 {
            let Ok(a) = scan_free_address("p", range, &[], &used, &mut r) else {
                panic!("a /64 is not full")
            };
            assert!(range.contains(&a) && !used_set.contains(&a));
        }
    }

    #[test]
    fn scan_is_uniform_among_the_free_ones_in_a_small_range() {
        let range = net("fd00::/124"); // 16 addresses, 15 allowed
        let base = u128::from(range.network());
        let used: Vec<_> = (1u128..=13).map(|i| Ipv6Addr::from(base + i)).collect();
        let mut r = rng(11);
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            match scan_free_address("p", range, &[], &used, &mut r) {
                Ok(a) => {
                    seen.insert(a);
                }
                Err(e) => panic!("{e}"),
            }
        }
        let want: BTreeSet<_> = [addr("fd00::e"), addr("fd00::f")].into_iter().collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn per_instance_64_inside_a_48_never_overlaps_exclude() {
        let pod = net("2001:db8:1::/48");
        let exclude = [
            net("2001:db8:1:8000::/49"),
            net("2001:db8:1:100::/56"),
            net("2001:db8:1:42::1/128"),
            net("2001:db8:1:43::/60"),
            net("2001:db8:2::/48"), // elsewhere: no effect
        ];
        let mut r = rng(17);
        for _ in 0..5000 {
            let Some(p) = random_prefix(pod, 64, &exclude, &mut r) else {
                panic!("no /64 left")
            };
            assert_eq!(p.prefix_len(), 64);
            assert!(pod.contains(&p), "{p}");
            for e in &exclude {
                assert!(!e.contains(&p) && !p.contains(e), "{p} overlaps {e}");
            }
        }
    }

    #[test]
    fn scan_free_prefix_uses_up_a_56_including_subnet_zero() {
        let pod = net("2001:db8:0:100::/56");
        let exclude = [net("2001:db8:0:1f0::/60"), net("2001:db8:0:105::9/128")];
        let mut r = rng(23);
        let mut used: Vec<Ipv6Net> = Vec::new();
        let err = loop {
            match scan_free_prefix("p", pod, 64, &exclude, &used, &mut r) {
                Ok(p) => {
                    assert!(!used.contains(&p), "{p} handed out twice");
                    assert!(pod.contains(&p) && p.prefix_len() == 64);
                    used.push(p);
                }
                Err(e) => break e,
            }
        };
        assert_eq!(used.len(), 256 - 16 - 1);
        assert!(used.contains(&net("2001:db8:0:100::/64")));
        assert_eq!(
            err.to_string(),
            "no free /64 left in 2001:db8:0:100::/56 of pod p"
        );
        assert_eq!(
            random_prefix(pod, 64, &used_and(&used, &exclude), &mut r),
            None
        );

        // A used /60 blocks all 16 of its /64s.
        let used = [net("2001:db8:0:100::/60")];
        for _ in 0..500 {
            match scan_free_prefix("p", pod, 64, &[], &used, &mut r) {
                Ok(p) => assert!(!used[0].contains(&p), "{p}"),
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn used_and(a: &[Ipv6Net], b: &[Ipv6Net]) -> Vec<Ipv6Net> {
        a.iter().chain(b).copied().collect()
    }

    #[test]
    fn prefix_lengths_are_checked() {
        let pod = net("2001:db8::/48");
        let mut r = rng(1);
        assert_eq!(random_prefix(pod, 40, &[], &mut r), None);
        assert!(matches!(
            scan_free_prefix("p", pod, 40, &[], &[], &mut r),
            Err(AllocateError::Invalid(_))
        ));
        assert!(matches!(
            scan_free_prefix("p", pod, 129, &[], &[], &mut r),
            Err(AllocateError::Invalid(_))
        ));
        assert_eq!(random_prefix(pod, 48, &[], &mut r), Some(pod));
        let all = net("::/0");
        assert!(random_prefix(all, 128, &[], &mut r).is_some());
        assert_eq!(random_prefix(all, 0, &[], &mut r), Some(all));
    }

    #[test]
    fn attempt_policy() {
        assert_eq!(random_attempts(127), SMALL_RANGE_ATTEMPTS);
        assert_eq!(random_attempts(65_535), SMALL_RANGE_ATTEMPTS);
        assert_eq!(random_attempts(65_536), RANDOM_ATTEMPTS);
        assert_eq!(
            random_attempts(allowed_count(net("2001:db8::/64"), &[])),
            RANDOM_ATTEMPTS
        );
    }

    #[test]
    fn is_allowed_agrees_with_the_rules() {
        let r = net("2001:db8::/64");
        assert!(!is_allowed(r, &[], addr("2001:db8::")));
        assert!(!is_allowed(r, &[], addr("2001:db8::fdff:ffff:ffff:ff80")));
        assert!(!is_allowed(r, &[], addr("2001:db8::fdff:ffff:ffff:ffff")));
        assert!(is_allowed(r, &[], addr("2001:db8::fdff:ffff:ffff:ff7f")));
        assert!(is_allowed(r, &[], addr("2001:db8::ffff:ffff:ffff:ffff")));
        assert!(!is_allowed(r, &[], addr("2001:db9::1")));
        assert!(!is_allowed(
            r,
            &[net("2001:db8::1/128")],
            addr("2001:db8::1")
        ));
        assert!(is_reserved(net("fd00::/120"), addr("fd00::80")));
        assert!(!is_reserved(net("fd00::/120"), addr("fd00::7f")));
    }

    /// A range /64../127 at a random place, and excludes mostly inside it.
    fn range_and_excludes(
        min_len: u8,
        max_len: u8,
    ) -> impl Strategy<Value = (Ipv6Net, Vec<Ipv6Net>)> {
        (any::<u128>(), min_len..=max_len).prop_flat_map(|(bits, len)| {
            let range = Ipv6Net::new(Ipv6Addr::from(bits), len)
                .map(|n| n.trunc())
                .unwrap_or_default();
            let exclude = prop::collection::vec(
                (any::<u128>(), 0u8..=128, any::<bool>()).prop_map(move |(b, l, inside)| {
                    let host = if inside {
                        u128::from(range.network()) | (b & !u128::from(range.netmask()))
                    } else {
                        b
                    };
                    let l = if inside { l.max(range.prefix_len()) } else { l };
                    Ipv6Net::new(Ipv6Addr::from(host), l)
                        .map(|n| n.trunc())
                        .unwrap_or_default()
                }),
                0..6,
            );
            (Just(range), exclude)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_addresses_are_allowed(
            (range, exclude) in range_and_excludes(64, 127),
            seed in any::<u64>(),
        ) {
            let mut r = rng(seed);
            let n = allowed_count(range, &exclude);
            for _ in 0..20 {
                match random_address(range, &exclude, &mut r) {
                    Some(a) => {
                        prop_assert!(n > 0);
                        prop_assert!(range.contains(&a), "{a} outside {range}");
                        prop_assert!(!reserved_ref(range, a), "{a} reserved in {range}");
                        prop_assert!(!exclude.iter().any(|e| e.contains(&a)), "{a} excluded");
                        prop_assert!(is_allowed(range, &exclude, a));
                    }
                    None => prop_assert_eq!(n, 0),
                }
            }
        }

        #[test]
        fn small_ranges_match_brute_force_and_scan_to_exhaustion(
            (range, exclude) in range_and_excludes(120, 128),
            seed in any::<u64>(),
        ) {
            let want = brute_allowed(range, &exclude);
            prop_assert_eq!(allowed_count(range, &exclude), want.len() as u128);
            let (used, err) = exhaust(range, &exclude, seed);
            let got: BTreeSet<_> = used.iter().copied().collect();
            prop_assert_eq!(got.len(), used.len());
            prop_assert_eq!(got, want);
            let is_exhausted = matches!(err, AllocateError::Exhausted { .. });
            prop_assert!(is_exhausted);
        }

        #[test]
        fn small_pods_scan_every_free_64_exactly_once(
            (pod, exclude) in range_and_excludes(56, 64),
            seed in any::<u64>(),
        ) {
            let overlapping = |p: &Ipv6Net| exclude.iter().any(|e| e.contains(p) || p.contains(e));
            let want: BTreeSet<Ipv6Net> = pod
                .subnets(64)
                .into_iter()
                .flatten()
                .filter(|p| !overlapping(p))
                .collect();
            let mut r = rng(seed);
            let mut used = Vec::new();
            while let Ok(p) = scan_free_prefix("p", pod, 64, &exclude, &used, &mut r) {
                prop_assert!(!used.contains(&p));
                used.push(p);
                prop_assert!(used.len() <= 256);
            }
            let got: BTreeSet<Ipv6Net> = used.iter().copied().collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn random_prefixes_avoid_excludes(
            (pod, exclude) in range_and_excludes(40, 60),
            seed in any::<u64>(),
        ) {
            let mut r = rng(seed);
            let overlapping = |p: &Ipv6Net| exclude.iter().any(|e| e.contains(p) || p.contains(e));
            for _ in 0..20 {
                match random_prefix(pod, 64, &exclude, &mut r) {
                    Some(p) => {
                        prop_assert_eq!(p.prefix_len(), 64);
                        prop_assert!(pod.contains(&p));
                        prop_assert!(!overlapping(&p), "{p} overlaps an exclude");
                    }
                    None => {
                        // Only when some exclude swallows the whole pod, or for small pods all /64s.
                        if pod.prefix_len() >= 52 {
                            let free = pod.subnets(64).into_iter().flatten().filter(|p| !overlapping(p)).count();
                            prop_assert_eq!(free, 0);
                        }
                    }
                }
            }
        }
    }
}
