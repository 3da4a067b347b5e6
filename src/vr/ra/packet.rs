//! Router Solicitation and Router Advertisement wire format: RFC 4861 §4.1, §4.2 and §4.6, with the
//! router preference and Route Information option of RFC 4191 and the DNS options of RFC 8106.
//!
//! The bytes are the ICMPv6 message only, starting with the ICMPv6 type byte: exactly what a Linux raw
//! `IPPROTO_ICMPV6` socket reads and writes. The kernel computes and verifies the checksum, so
//! [`emit_ra`] and [`emit_rs`] write a zero checksum and the parsers ignore it.
//!
//! The layout follows smoltcp: the field offsets are declared once in `field`, the fixed headers and
//! options are only looked at after a length check (so no accessor can panic), and the high-level
//! structs ([`RouterAdvert`], [`RouterSolicit`]) are what the rest of flat6 builds and reads. Unlike
//! smoltcp, emit never truncates a value that does not fit: it returns an [`Error`] naming the field.

use std::fmt;
use std::net::Ipv6Addr;
use std::ops::Range;

/// ICMPv6 type of a Router Solicitation (RFC 4861 §4.1).
pub const ICMPV6_ROUTER_SOLICIT: u8 = 133;
/// ICMPv6 type of a Router Advertisement (RFC 4861 §4.2).
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;

/// Source Link-Layer Address option (RFC 4861 §4.6.1).
const OPT_SOURCE_LLA: u8 = 1;
/// Prefix Information option (RFC 4861 §4.6.2).
const OPT_PREFIX_INFO: u8 = 3;
/// MTU option (RFC 4861 §4.6.4).
const OPT_MTU: u8 = 5;
/// Route Information option (RFC 4191 §2.3).
const OPT_ROUTE_INFO: u8 = 24;
/// Recursive DNS Server option (RFC 8106 §5.1).
const OPT_RDNSS: u8 = 25;
/// DNS Search List option (RFC 8106 §5.2).
const OPT_DNSSL: u8 = 31;

/// The largest message emit produces: the IPv6 payload length is 16 bits (RFC 8200 §3).
const MAX_MESSAGE: usize = 65535;
/// The most RDNSS servers one option holds: the length byte counts 8-byte units, 1 + 2 per server.
const MAX_RDNSS_SERVERS: usize = 127;
/// RFC 1035 §2.3.4: a label is at most 63 bytes, an encoded name at most 255.
const MAX_LABEL: usize = 63;
const MAX_NAME: usize = 255;

const RA_NAME: &str = "router advertisement";
const RS_NAME: &str = "router solicitation";

/// Byte offsets of every field this module reads or writes, relative to the start of the ICMPv6
/// message (headers) or of the option (options).
mod field {
    use std::ops::Range;

    /// RFC 4861 §4.1 and §4.2: the ICMPv6 header both messages share.
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;

    /// RFC 4861 §4.1: type, code, checksum, 4 reserved bytes, then options.
    pub const RS_OPTIONS: usize = 8;

    /// RFC 4861 §4.2: the fixed part of a Router Advertisement.
    pub const RA_HOP_LIMIT: usize = 4;
    pub const RA_FLAGS: usize = 5;
    pub const RA_ROUTER_LIFETIME: Range<usize> = 6..8;
    pub const RA_REACHABLE_TIME: Range<usize> = 8..12;
    pub const RA_RETRANS_TIMER: Range<usize> = 12..16;
    pub const RA_OPTIONS: usize = 16;
    /// RFC 4861 §4.2: M and O in the flags byte.
    pub const RA_FLAG_MANAGED: u8 = 0x80;
    pub const RA_FLAG_OTHER: u8 = 0x40;
    /// RFC 4191 §2.2 and §2.3: the 2-bit preference sits in bits 3..5 of a flags byte, both in the
    /// RA header and in the Route Information option.
    pub const PRF_SHIFT: u32 = 3;
    pub const PRF_MASK: u8 = 0b11;

    /// RFC 4861 §4.6: every option starts with type and length, the length in units of 8 bytes.
    pub const OPT_TYPE: usize = 0;
    pub const OPT_LENGTH: usize = 1;
    pub const OPT_UNIT: usize = 8;

    /// RFC 4861 §4.6.1 with RFC 2464 §6: an Ethernet address fills a length-1 option.
    pub const LLA_ADDRESS: Range<usize> = 2..8;
    pub const LLA_SIZE: usize = 8;

    /// RFC 4861 §4.6.2: Prefix Information, always length 4.
    pub const PI_PREFIX_LEN: usize = 2;
    pub const PI_FLAGS: usize = 3;
    pub const PI_VALID_LIFETIME: Range<usize> = 4..8;
    pub const PI_PREFERRED_LIFETIME: Range<usize> = 8..12;
    pub const PI_PREFIX: Range<usize> = 16..32;
    pub const PI_SIZE: usize = 32;
    pub const PI_FLAG_ON_LINK: u8 = 0x80;
    pub const PI_FLAG_AUTONOMOUS: u8 = 0x40;

    /// RFC 4861 §4.6.4: MTU, always length 1.
    pub const MTU_VALUE: Range<usize> = 4..8;
    pub const MTU_SIZE: usize = 8;

    /// RFC 4191 §2.3: Route Information, length 1 to 3; the prefix carries 0, 8 or 16 bytes.
    pub const RI_PREFIX_LEN: usize = 2;
    pub const RI_FLAGS: usize = 3;
    pub const RI_LIFETIME: Range<usize> = 4..8;
    pub const RI_PREFIX: usize = 8;
    pub const RI_MAX_SIZE: usize = 24;

    /// RFC 8106 §5.1 and §5.2: RDNSS and DNSSL share reserved bytes, lifetime, then data.
    pub const DNS_LIFETIME: Range<usize> = 4..8;
    pub const DNS_DATA: usize = 8;
    /// RFC 8106 §5.1: length is at least 3 (one server); §5.2: DNSSL length is at least 2.
    pub const RDNSS_MIN_SIZE: usize = 24;
    pub const DNSSL_MIN_SIZE: usize = 16;
}

/// RFC 4191 §2.1 2-bit preference: the router preference in the RA header (§2.2) and the preference
/// of a Route Information option (§2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Preference {
    /// Wire value 11.
    Low,
    /// Wire value 00; the default, and the only value allowed with a router lifetime of 0.
    #[default]
    Medium,
    /// Wire value 01.
    High,
}

impl Preference {
    fn bits(self) -> u8 {
        match self {
            Preference::Low => 0b11,
            Preference::Medium => 0b00,
            Preference::High => 0b01,
        }
    }

    /// `None` for the reserved value 10 (RFC 4191 §2.1).
    fn from_bits(bits: u8) -> Option<Self> {
        match bits & field::PRF_MASK {
            0b11 => Some(Preference::Low),
            0b00 => Some(Preference::Medium),
            0b01 => Some(Preference::High),
            _ => None,
        }
    }
}

impl fmt::Display for Preference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preference::Low => "low",
            Preference::Medium => "medium",
            Preference::High => "high",
        })
    }
}

/// Prefix Information option (RFC 4861 §4.6.2): a prefix for on-link determination and SLAAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixInfo {
    /// The prefix; bits beyond `prefix_len` are zero (emit rejects anything else, parse masks them).
    pub prefix: Ipv6Addr,
    /// 0..=128.
    pub prefix_len: u8,
    /// L flag: the prefix is on-link.
    pub on_link: bool,
    /// A flag: hosts may form addresses in the prefix (RFC 4862).
    pub autonomous: bool,
    /// Seconds; 0xffffffff is infinity.
    pub valid_lifetime: u32,
    /// Seconds; 0xffffffff is infinity.
    pub preferred_lifetime: u32,
}

/// Route Information option (RFC 4191 §2.3): a more-specific route through this router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// The route prefix; bits beyond `prefix_len` are zero.
    pub prefix: Ipv6Addr,
    /// 0..=128.
    pub prefix_len: u8,
    /// Route preference (RFC 4191 §2.1).
    pub preference: Preference,
    /// Seconds; 0xffffffff is infinity.
    pub lifetime: u32,
}

/// Recursive DNS Server option (RFC 8106 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rdnss {
    /// Seconds; 0xffffffff is infinity, 0 withdraws the servers.
    pub lifetime: u32,
    /// At least one, at most 127 servers.
    pub servers: Vec<Ipv6Addr>,
}

/// DNS Search List option (RFC 8106 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnssl {
    /// Seconds; 0xffffffff is infinity, 0 withdraws the domains.
    pub lifetime: u32,
    /// Domains without a trailing dot, e.g. `"pod1.example"`: labels of 1..=63 printable ASCII bytes.
    pub domains: Vec<String>,
}

/// A Router Advertisement (RFC 4861 §4.2) with the options flat6 sends or understands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouterAdvert {
    /// Cur Hop Limit; 0 means unspecified.
    pub hop_limit: u8,
    /// M flag: addresses are available via DHCPv6.
    pub managed: bool,
    /// O flag: other configuration is available via DHCPv6.
    pub other: bool,
    /// Default router preference (RFC 4191 §2.2); must be medium when `router_lifetime` is 0.
    pub preference: Preference,
    /// Seconds as a default router; 0 means not a default router.
    pub router_lifetime: u16,
    /// Milliseconds; 0 means unspecified.
    pub reachable_time: u32,
    /// Milliseconds; 0 means unspecified.
    pub retrans_timer: u32,
    /// Source Link-Layer Address option (RFC 4861 §4.6.1), Ethernet only.
    pub source_lla: Option<[u8; 6]>,
    /// MTU option (RFC 4861 §4.6.4).
    pub mtu: Option<u32>,
    /// Prefix Information options (RFC 4861 §4.6.2).
    pub prefixes: Vec<PrefixInfo>,
    /// Route Information options (RFC 4191 §2.3).
    pub routes: Vec<RouteInfo>,
    /// RDNSS options (RFC 8106 §5.1).
    pub rdnss: Vec<Rdnss>,
    /// DNSSL options (RFC 8106 §5.2).
    pub dnssl: Vec<Dnssl>,
    /// How many options were well-formed in the RFC 4861 §4.6 sense (non-zero length, inside the
    /// message) but not used: unknown types, malformed or reserved-valued known options, repeated
    /// source link-layer address or MTU options. Set by parse only; emit ignores it.
    pub ignored_options: usize,
}

/// A Router Solicitation (RFC 4861 §4.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouterSolicit {
    /// Source Link-Layer Address option (RFC 4861 §4.6.1), Ethernet only.
    pub source_lla: Option<[u8; 6]>,
}

/// A parsed Neighbor Discovery message of one of the two types this module handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NdMessage {
    /// ICMPv6 type 133.
    RouterSolicit(RouterSolicit),
    /// ICMPv6 type 134.
    RouterAdvert(RouterAdvert),
}

/// Why a DNSSL domain cannot be encoded (RFC 1035 §2.3.4 and §3.1, RFC 8106 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DomainProblem {
    /// Empty domain, or two dots in a row, or a leading or trailing dot.
    #[error("has an empty label")]
    EmptyLabel,
    /// A label longer than 63 bytes.
    #[error("has a label longer than 63 bytes ({len})")]
    LabelTooLong {
        /// Length of the offending label.
        len: usize,
    },
    /// A byte outside printable ASCII (0x21..=0x7e).
    #[error("has a character that is not printable ASCII")]
    NotPrintableAscii,
    /// The encoded name is longer than 255 bytes.
    #[error("encodes to {len} bytes, more than 255")]
    TooLong {
        /// Encoded length including the final zero byte.
        len: usize,
    },
}

/// Everything that can be wrong with an RS or RA, received or about to be sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The message is shorter than its fixed part (RFC 4861 §6.1.1: 8 bytes, §6.1.2: 16 bytes).
    #[error("truncated {message}: {len} bytes, need at least {need}")]
    Truncated {
        /// Which message was expected.
        message: &'static str,
        /// Bytes received.
        len: usize,
        /// Minimum length.
        need: usize,
    },
    /// The ICMPv6 type is not the one (or not one of those) asked for.
    #[error("ICMPv6 type {found} is not a {expected}")]
    WrongType {
        /// The type byte received.
        found: u8,
        /// What was expected.
        expected: &'static str,
    },
    /// RFC 4861 §6.1.1 and §6.1.2: the ICMPv6 code must be 0.
    #[error("{message} with ICMPv6 code {code}, must be 0")]
    BadCode {
        /// Which message.
        message: &'static str,
        /// The code received.
        code: u8,
    },
    /// RFC 4861 §6.1.1 and §6.1.2: every option must have a length greater than zero.
    #[error("option at byte {offset} (type {kind}) has length 0")]
    ZeroLengthOption {
        /// Offset of the option in the message.
        offset: usize,
        /// Option type.
        kind: u8,
    },
    /// RFC 4861 §4.6: an option's declared length goes past the end of the message.
    #[error(
        "option at byte {offset} (type {kind}) runs past the end: declares {declared} bytes, {remaining} remain"
    )]
    OptionPastEnd {
        /// Offset of the option in the message.
        offset: usize,
        /// Option type.
        kind: u8,
        /// Length byte times 8.
        declared: usize,
        /// Bytes from the option start to the end of the message.
        remaining: usize,
    },
    /// A single byte after the last option: not even room for type and length.
    #[error(
        "option at byte {offset} is cut off: {remaining} byte remains, an option needs at least 2"
    )]
    TruncatedOptionHeader {
        /// Offset of the stray byte.
        offset: usize,
        /// Bytes left (always 1).
        remaining: usize,
    },
    /// RFC 4861 §4.6.2: a Prefix Information option with a prefix length above 128.
    #[error("prefix information at byte {offset}: prefix length {prefix_len} exceeds 128")]
    PrefixLength {
        /// Offset of the option in the message.
        offset: usize,
        /// The prefix length received.
        prefix_len: u8,
    },
    /// RFC 4861 §6.1.1: an RS from `::` must not carry a source link-layer address option.
    #[error(
        "router solicitation from the unspecified address carries a source link-layer address option"
    )]
    UnspecifiedSourceWithLla,
    /// RFC 4861 §6.1.2: an RA must come from a link-local address.
    #[error("router advertisement from {address}, which is not link-local (fe80::/10)")]
    NotLinkLocalSource {
        /// The IP source address of the RA.
        address: Ipv6Addr,
    },
    /// RFC 4191 §2.2: with a router lifetime of 0 the preference must be medium.
    #[error(
        "emit: router preference {preference} with router lifetime 0, RFC 4191 §2.2 requires medium"
    )]
    EmitPreferenceWithoutLifetime {
        /// The preference asked for.
        preference: Preference,
    },
    /// A prefix or route with a prefix length above 128.
    #[error("emit: {option} prefix length {prefix_len} exceeds 128 (prefix {prefix})")]
    EmitPrefixLength {
        /// `"prefix information"` or `"route"`.
        option: &'static str,
        /// The prefix.
        prefix: Ipv6Addr,
        /// The prefix length asked for.
        prefix_len: u8,
    },
    /// RFC 4861 §4.6.2, RFC 4191 §2.3: bits after the prefix length must be zero.
    #[error("emit: {option} {prefix}/{prefix_len} has bits set beyond the prefix length")]
    EmitPrefixBits {
        /// `"prefix information"` or `"route"`.
        option: &'static str,
        /// The prefix.
        prefix: Ipv6Addr,
        /// The prefix length.
        prefix_len: u8,
    },
    /// RFC 8106 §5.1: an RDNSS option carries at least one server.
    #[error("emit: RDNSS option {index} has no servers")]
    EmitRdnssEmpty {
        /// Index in [`RouterAdvert::rdnss`].
        index: usize,
    },
    /// More servers than the 8-bit option length can describe.
    #[error("emit: RDNSS option {index} has {count} servers, one option holds at most 127")]
    EmitRdnssTooMany {
        /// Index in [`RouterAdvert::rdnss`].
        index: usize,
        /// Number of servers asked for.
        count: usize,
    },
    /// RFC 8106 §5.2: a DNSSL option carries at least one domain.
    #[error("emit: DNSSL option {index} has no domains")]
    EmitDnsslEmpty {
        /// Index in [`RouterAdvert::dnssl`].
        index: usize,
    },
    /// A domain that cannot be encoded as RFC 1035 labels.
    #[error("emit: DNSSL domain {domain:?} {problem}")]
    EmitDomain {
        /// The domain as given.
        domain: String,
        /// What is wrong with it.
        problem: DomainProblem,
    },
    /// More domains than the 8-bit option length can describe.
    #[error("emit: DNSSL option {index} needs {bytes} bytes, one option holds at most 2040")]
    EmitDnsslTooLong {
        /// Index in [`RouterAdvert::dnssl`].
        index: usize,
        /// Padded option size that would be needed.
        bytes: usize,
    },
    /// The whole message would not fit an IPv6 payload.
    #[error("emit: message would be {len} bytes, more than 65535")]
    EmitTooLarge {
        /// Size the message would have.
        len: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// Low-level access. Callers check lengths first; these index with the constant ranges of `field`.

fn read_u16(bytes: &[u8], at: Range<usize>) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&bytes[at]);
    u16::from_be_bytes(raw)
}

fn read_u32(bytes: &[u8], at: Range<usize>) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at]);
    u32::from_be_bytes(raw)
}

fn read_addr(bytes: &[u8], at: Range<usize>) -> Ipv6Addr {
    let mut raw = [0u8; 16];
    raw.copy_from_slice(&bytes[at]);
    Ipv6Addr::from(raw)
}

fn write_u16(bytes: &mut [u8], at: Range<usize>, value: u16) {
    bytes[at].copy_from_slice(&value.to_be_bytes());
}

fn write_u32(bytes: &mut [u8], at: Range<usize>, value: u32) {
    bytes[at].copy_from_slice(&value.to_be_bytes());
}

/// `addr` with every bit after the first `prefix_len` cleared (`prefix_len` above 128 keeps all).
fn mask_prefix(addr: Ipv6Addr, prefix_len: u8) -> Ipv6Addr {
    let keep = u128::MAX
        .checked_shl(128u32.saturating_sub(u32::from(prefix_len)))
        .unwrap_or(0);
    Ipv6Addr::from(u128::from(addr) & keep)
}

/// The checks on the fixed part that need only the message (RFC 4861 §6.1.1, §6.1.2): type, minimum
/// length, code 0. After this, indexing below `need` cannot panic.
fn check_fixed(
    bytes: &[u8],
    expected_type: u8,
    message: &'static str,
    expected: &'static str,
    need: usize,
) -> Result<(), Error> {
    match bytes.first() {
        Some(&found) if found != expected_type => {
            return Err(Error::WrongType { found, expected });
        }
        _ => {}
    }
    if bytes.len() < need {
        return Err(Error::Truncated {
            message,
            len: bytes.len(),
            need,
        });
    }
    match bytes[field::CODE] {
        0 => Ok(()),
        code => Err(Error::BadCode { message, code }),
    }
}

/// A view of the fixed part of a Router Advertisement (RFC 4861 §4.2). Only built by `new_checked`,
/// so every accessor is in bounds.
struct RaHeader<'a> {
    bytes: &'a [u8],
}

impl<'a> RaHeader<'a> {
    fn new_checked(bytes: &'a [u8]) -> Result<Self, Error> {
        check_fixed(
            bytes,
            ICMPV6_ROUTER_ADVERT,
            RA_NAME,
            "router advertisement (134)",
            field::RA_OPTIONS,
        )?;
        Ok(Self { bytes })
    }

    fn hop_limit(&self) -> u8 {
        self.bytes[field::RA_HOP_LIMIT]
    }

    fn flags(&self) -> u8 {
        self.bytes[field::RA_FLAGS]
    }

    fn router_lifetime(&self) -> u16 {
        read_u16(self.bytes, field::RA_ROUTER_LIFETIME)
    }

    fn reachable_time(&self) -> u32 {
        read_u32(self.bytes, field::RA_REACHABLE_TIME)
    }

    fn retrans_timer(&self) -> u32 {
        read_u32(self.bytes, field::RA_RETRANS_TIMER)
    }

    fn options(&self) -> Result<Vec<RawOption<'a>>, Error> {
        split_options(self.bytes, field::RA_OPTIONS)
    }
}

/// One option as framed by RFC 4861 §4.6: `bytes` is the whole option, type and length included,
/// and is at least 8 bytes long.
struct RawOption<'a> {
    offset: usize,
    kind: u8,
    bytes: &'a [u8],
}

/// Split the options starting at `start`, checking the framing of all of them before any is used:
/// RFC 4861 §6.1 makes a message with a zero-length option invalid as a whole.
fn split_options(message: &[u8], start: usize) -> Result<Vec<RawOption<'_>>, Error> {
    let mut options = Vec::new();
    let mut offset = start;
    while let Some(rest) = message.get(offset..).filter(|rest| !rest.is_empty()) {
        let remaining = rest.len();
        let (kind, units) = match rest {
            [kind, units, ..] => (*kind, *units),
            _ => return Err(Error::TruncatedOptionHeader { offset, remaining }),
        };
        if units == 0 {
            return Err(Error::ZeroLengthOption { offset, kind });
        }
        let declared = usize::from(units) * field::OPT_UNIT;
        let Some(bytes) = rest.get(..declared) else {
            return Err(Error::OptionPastEnd {
                offset,
                kind,
                declared,
                remaining,
            });
        };
        options.push(RawOption {
            offset,
            kind,
            bytes,
        });
        offset += declared;
    }
    Ok(options)
}

// ---------------------------------------------------------------------------------------------
// Options, parse side. `None` means "ignore this option" (counted by the caller); only a Prefix
// Information option with an impossible prefix length invalidates the whole message.

/// RFC 4861 §4.6.1: only the Ethernet form (length 1, RFC 2464 §6) is understood.
fn parse_lla(option: &RawOption<'_>) -> Option<[u8; 6]> {
    if option.bytes.len() != field::LLA_SIZE {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&option.bytes[field::LLA_ADDRESS]);
    Some(mac)
}

/// RFC 4861 §4.6.4: length must be 1.
fn parse_mtu(option: &RawOption<'_>) -> Option<u32> {
    (option.bytes.len() == field::MTU_SIZE).then(|| read_u32(option.bytes, field::MTU_VALUE))
}

/// RFC 4861 §4.6.2: length must be 4; bits after the prefix length are ignored by the receiver.
fn parse_prefix_info(option: &RawOption<'_>) -> Result<Option<PrefixInfo>, Error> {
    let bytes = option.bytes;
    if bytes.len() != field::PI_SIZE {
        return Ok(None);
    }
    let prefix_len = bytes[field::PI_PREFIX_LEN];
    if prefix_len > 128 {
        return Err(Error::PrefixLength {
            offset: option.offset,
            prefix_len,
        });
    }
    let flags = bytes[field::PI_FLAGS];
    Ok(Some(PrefixInfo {
        prefix: mask_prefix(read_addr(bytes, field::PI_PREFIX), prefix_len),
        prefix_len,
        on_link: flags & field::PI_FLAG_ON_LINK != 0,
        autonomous: flags & field::PI_FLAG_AUTONOMOUS != 0,
        valid_lifetime: read_u32(bytes, field::PI_VALID_LIFETIME),
        preferred_lifetime: read_u32(bytes, field::PI_PREFERRED_LIFETIME),
    }))
}

/// RFC 4191 §2.3 and §3.1: ignore the option if the prefix length is above 128, the length is
/// above 3 or too small to carry the prefix, or the preference is the reserved value 10. Bits after
/// the prefix length are ignored.
fn parse_route_info(option: &RawOption<'_>) -> Option<RouteInfo> {
    let bytes = option.bytes;
    let prefix_len = bytes[field::RI_PREFIX_LEN];
    if prefix_len > 128 || bytes.len() > field::RI_MAX_SIZE {
        return None;
    }
    let carried = &bytes[field::RI_PREFIX..];
    if carried.len() < usize::from(prefix_len).div_ceil(8) {
        return None;
    }
    let preference = Preference::from_bits(bytes[field::RI_FLAGS] >> field::PRF_SHIFT)?;
    let mut raw = [0u8; 16];
    raw[..carried.len()].copy_from_slice(carried);
    Some(RouteInfo {
        prefix: mask_prefix(Ipv6Addr::from(raw), prefix_len),
        prefix_len,
        preference,
        lifetime: read_u32(bytes, field::RI_LIFETIME),
    })
}

/// RFC 8106 §5.1: the length must be odd and at least 3, or the option is ignored.
fn parse_rdnss(option: &RawOption<'_>) -> Option<Rdnss> {
    let bytes = option.bytes;
    let units = bytes.len() / field::OPT_UNIT;
    if bytes.len() < field::RDNSS_MIN_SIZE || units % 2 == 0 {
        return None;
    }
    let servers = bytes[field::DNS_DATA..]
        .chunks_exact(16)
        .filter_map(|chunk| <[u8; 16]>::try_from(chunk).ok())
        .map(Ipv6Addr::from)
        .collect();
    Some(Rdnss {
        lifetime: read_u32(bytes, field::DNS_LIFETIME),
        servers,
    })
}

/// RFC 8106 §5.2: length at least 2, then uncompressed RFC 1035 names up to the zero padding. A
/// name that runs past the option, a compression pointer or other non-label length byte, a label
/// byte that is not printable ASCII (or is a dot), or no name at all makes the option ignored.
fn parse_dnssl(option: &RawOption<'_>) -> Option<Dnssl> {
    let bytes = option.bytes;
    if bytes.len() < field::DNSSL_MIN_SIZE {
        return None;
    }
    let data = &bytes[field::DNS_DATA..];
    let mut domains = Vec::new();
    let mut pos = 0;
    // A zero byte where a name would start is the padding.
    while data.get(pos).is_some_and(|&len| len != 0) {
        let (domain, next) = decode_domain(data, pos)?;
        domains.push(domain);
        pos = next;
    }
    if domains.is_empty() {
        return None;
    }
    Some(Dnssl {
        lifetime: read_u32(bytes, field::DNS_LIFETIME),
        domains,
    })
}

/// Decode one name starting at `start`; returns it without a trailing dot and the position after
/// its terminating zero byte.
fn decode_domain(data: &[u8], start: usize) -> Option<(String, usize)> {
    let mut domain = String::new();
    let mut pos = start;
    loop {
        let len = usize::from(*data.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        // 0xc0.. is a compression pointer, 0x40..0xbf the obsolete extended label types.
        if len > MAX_LABEL {
            return None;
        }
        let label = data.get(pos..pos + len)?;
        if !label.iter().all(|&b| is_label_byte(b)) {
            return None;
        }
        if !domain.is_empty() {
            domain.push('.');
        }
        domain.extend(label.iter().map(|&b| char::from(b)));
        pos += len;
    }
    (pos - start <= MAX_NAME).then_some((domain, pos))
}

/// Printable ASCII except the dot, which would make the textual form ambiguous.
fn is_label_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'.'
}

// ---------------------------------------------------------------------------------------------
// Parse.

/// Parse an RS or RA, dispatching on the ICMPv6 type, with the RFC 4861 §6.1.1 / §6.1.2 checks that
/// need only the message: code 0, minimum length, every option length > 0, options within the
/// message. Any other ICMPv6 type is an error.
pub fn parse(bytes: &[u8]) -> Result<NdMessage, Error> {
    match bytes.first() {
        Some(&ICMPV6_ROUTER_SOLICIT) => parse_rs(bytes).map(NdMessage::RouterSolicit),
        Some(&ICMPV6_ROUTER_ADVERT) => parse_ra(bytes).map(NdMessage::RouterAdvert),
        Some(&found) => Err(Error::WrongType {
            found,
            expected: "router solicitation (133) or router advertisement (134)",
        }),
        None => Err(Error::Truncated {
            message: "ICMPv6 message",
            len: 0,
            need: field::RS_OPTIONS,
        }),
    }
}

/// Parse a Router Advertisement (RFC 4861 §4.2, §6.1.2). The router preference reserved value 10
/// reads as medium, and any preference reads as medium with a router lifetime of 0 (RFC 4191 §2.2).
/// Well-formed options that are unknown, malformed in their own terms or repeated (a second source
/// link-layer address or MTU) are skipped and counted in [`RouterAdvert::ignored_options`].
pub fn parse_ra(bytes: &[u8]) -> Result<RouterAdvert, Error> {
    let header = RaHeader::new_checked(bytes)?;
    let options = header.options()?;
    let flags = header.flags();
    let router_lifetime = header.router_lifetime();
    let preference = if router_lifetime == 0 {
        Preference::Medium
    } else {
        Preference::from_bits(flags >> field::PRF_SHIFT).unwrap_or(Preference::Medium)
    };
    let mut ra = RouterAdvert {
        hop_limit: header.hop_limit(),
        managed: flags & field::RA_FLAG_MANAGED != 0,
        other: flags & field::RA_FLAG_OTHER != 0,
        preference,
        router_lifetime,
        reachable_time: header.reachable_time(),
        retrans_timer: header.retrans_timer(),
        ..RouterAdvert::default()
    };
    for option in &options {
        let used = match option.kind {
            OPT_SOURCE_LLA if ra.source_lla.is_none() => {
                ra.source_lla = parse_lla(option);
                ra.source_lla.is_some()
            }
            OPT_MTU if ra.mtu.is_none() => {
                ra.mtu = parse_mtu(option);
                ra.mtu.is_some()
            }
            OPT_PREFIX_INFO => push_some(&mut ra.prefixes, parse_prefix_info(option)?),
            OPT_ROUTE_INFO => push_some(&mut ra.routes, parse_route_info(option)),
            OPT_RDNSS => push_some(&mut ra.rdnss, parse_rdnss(option)),
            OPT_DNSSL => push_some(&mut ra.dnssl, parse_dnssl(option)),
            _ => false,
        };
        if !used {
            ra.ignored_options += 1;
        }
    }
    Ok(ra)
}

fn push_some<T>(list: &mut Vec<T>, item: Option<T>) -> bool {
    match item {
        Some(item) => {
            list.push(item);
            true
        }
        None => false,
    }
}

/// Parse a Router Solicitation (RFC 4861 §4.1, §6.1.1). Options other than the first Ethernet source
/// link-layer address option are skipped.
pub fn parse_rs(bytes: &[u8]) -> Result<RouterSolicit, Error> {
    check_fixed(
        bytes,
        ICMPV6_ROUTER_SOLICIT,
        RS_NAME,
        "router solicitation (133)",
        field::RS_OPTIONS,
    )?;
    let source_lla = split_options(bytes, field::RS_OPTIONS)?
        .iter()
        .filter(|option| option.kind == OPT_SOURCE_LLA)
        .find_map(parse_lla);
    Ok(RouterSolicit { source_lla })
}

/// RFC 4861 §6.1.1: an RS whose IP source is the unspecified address must not carry a source
/// link-layer address option.
pub fn validate_rs_source(source: &Ipv6Addr, rs: &RouterSolicit) -> Result<(), Error> {
    if source.is_unspecified() && rs.source_lla.is_some() {
        return Err(Error::UnspecifiedSourceWithLla);
    }
    Ok(())
}

/// RFC 4861 §6.1.2: an RA's IP source must be a link-local address (fe80::/10).
pub fn validate_ra_source(source: &Ipv6Addr) -> Result<(), Error> {
    if source.segments()[0] & 0xffc0 == 0xfe80 {
        Ok(())
    } else {
        Err(Error::NotLinkLocalSource { address: *source })
    }
}

// ---------------------------------------------------------------------------------------------
// Emit.

/// Append a zeroed option of `units` × 8 bytes with type and length set, and return it.
fn push_option(out: &mut Vec<u8>, kind: u8, units: u8) -> &mut [u8] {
    let start = out.len();
    out.resize(start + usize::from(units) * field::OPT_UNIT, 0);
    let option = &mut out[start..];
    option[field::OPT_TYPE] = kind;
    option[field::OPT_LENGTH] = units;
    option
}

/// A zeroed fixed header of `len` bytes with type set; code and the checksum stay 0 because the
/// kernel fills the checksum in on a raw ICMPv6 socket.
fn fixed_header(kind: u8, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    out[field::TYPE] = kind;
    out[field::CODE] = 0;
    out[field::CHECKSUM].fill(0);
    out
}

fn emit_lla(out: &mut Vec<u8>, mac: &[u8; 6]) {
    let option = push_option(out, OPT_SOURCE_LLA, 1);
    option[field::LLA_ADDRESS].copy_from_slice(mac);
}

fn check_prefix(option: &'static str, prefix: Ipv6Addr, prefix_len: u8) -> Result<(), Error> {
    if prefix_len > 128 {
        return Err(Error::EmitPrefixLength {
            option,
            prefix,
            prefix_len,
        });
    }
    if mask_prefix(prefix, prefix_len) != prefix {
        return Err(Error::EmitPrefixBits {
            option,
            prefix,
            prefix_len,
        });
    }
    Ok(())
}

fn emit_prefix_info(out: &mut Vec<u8>, info: &PrefixInfo) -> Result<(), Error> {
    check_prefix("prefix information", info.prefix, info.prefix_len)?;
    let option = push_option(out, OPT_PREFIX_INFO, 4);
    option[field::PI_PREFIX_LEN] = info.prefix_len;
    let mut flags = 0;
    if info.on_link {
        flags |= field::PI_FLAG_ON_LINK;
    }
    if info.autonomous {
        flags |= field::PI_FLAG_AUTONOMOUS;
    }
    option[field::PI_FLAGS] = flags;
    write_u32(option, field::PI_VALID_LIFETIME, info.valid_lifetime);
    write_u32(
        option,
        field::PI_PREFERRED_LIFETIME,
        info.preferred_lifetime,
    );
    option[field::PI_PREFIX].copy_from_slice(&info.prefix.octets());
    Ok(())
}

/// RFC 4191 §2.3: the shortest length that carries the prefix (1, 2 or 3).
fn emit_route_info(out: &mut Vec<u8>, route: &RouteInfo) -> Result<(), Error> {
    check_prefix("route", route.prefix, route.prefix_len)?;
    let units: u8 = match route.prefix_len {
        0 => 1,
        1..=64 => 2,
        _ => 3,
    };
    let option = push_option(out, OPT_ROUTE_INFO, units);
    option[field::RI_PREFIX_LEN] = route.prefix_len;
    option[field::RI_FLAGS] = route.preference.bits() << field::PRF_SHIFT;
    write_u32(option, field::RI_LIFETIME, route.lifetime);
    let carried = &mut option[field::RI_PREFIX..];
    let octets = route.prefix.octets();
    carried.copy_from_slice(&octets[..carried.len()]);
    Ok(())
}

fn emit_rdnss(out: &mut Vec<u8>, index: usize, rdnss: &Rdnss) -> Result<(), Error> {
    let count = rdnss.servers.len();
    if count == 0 {
        return Err(Error::EmitRdnssEmpty { index });
    }
    let units = u8::try_from(1 + 2 * count)
        .ok()
        .filter(|_| count <= MAX_RDNSS_SERVERS)
        .ok_or(Error::EmitRdnssTooMany { index, count })?;
    let option = push_option(out, OPT_RDNSS, units);
    write_u32(option, field::DNS_LIFETIME, rdnss.lifetime);
    for (slot, server) in option[field::DNS_DATA..]
        .chunks_exact_mut(16)
        .zip(&rdnss.servers)
    {
        slot.copy_from_slice(&server.octets());
    }
    Ok(())
}

/// Append `domain` in RFC 1035 §3.1 label encoding (no compression, RFC 8106 §5.2).
fn encode_domain(domain: &str, out: &mut Vec<u8>) -> Result<(), Error> {
    let fail = |problem| Error::EmitDomain {
        domain: domain.to_owned(),
        problem,
    };
    let start = out.len();
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(fail(DomainProblem::EmptyLabel));
        }
        if !label.bytes().all(is_label_byte) {
            return Err(fail(DomainProblem::NotPrintableAscii));
        }
        let len = u8::try_from(label.len())
            .ok()
            .filter(|&len| usize::from(len) <= MAX_LABEL)
            .ok_or_else(|| fail(DomainProblem::LabelTooLong { len: label.len() }))?;
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    let len = out.len() - start;
    if len > MAX_NAME {
        return Err(fail(DomainProblem::TooLong { len }));
    }
    Ok(())
}

fn emit_dnssl(out: &mut Vec<u8>, index: usize, dnssl: &Dnssl) -> Result<(), Error> {
    if dnssl.domains.is_empty() {
        return Err(Error::EmitDnsslEmpty { index });
    }
    let mut names = Vec::new();
    for domain in &dnssl.domains {
        encode_domain(domain, &mut names)?;
    }
    let needed = (field::DNS_DATA + names.len()).div_ceil(field::OPT_UNIT);
    let units = u8::try_from(needed).map_err(|_| Error::EmitDnsslTooLong {
        index,
        bytes: needed * field::OPT_UNIT,
    })?;
    let option = push_option(out, OPT_DNSSL, units);
    write_u32(option, field::DNS_LIFETIME, dnssl.lifetime);
    // The rest of the option is already the zero padding.
    option[field::DNS_DATA..field::DNS_DATA + names.len()].copy_from_slice(&names);
    Ok(())
}

/// Build a Router Advertisement (RFC 4861 §4.2) with a zero checksum. Options are written in this
/// order: source link-layer address, MTU, prefixes, routes, RDNSS, DNSSL. Anything that cannot be
/// represented exactly is an error naming it; nothing is truncated or masked.
pub fn emit_ra(ra: &RouterAdvert) -> Result<Vec<u8>, Error> {
    if ra.router_lifetime == 0 && ra.preference != Preference::Medium {
        return Err(Error::EmitPreferenceWithoutLifetime {
            preference: ra.preference,
        });
    }
    let mut out = fixed_header(ICMPV6_ROUTER_ADVERT, field::RA_OPTIONS);
    out[field::RA_HOP_LIMIT] = ra.hop_limit;
    let mut flags = ra.preference.bits() << field::PRF_SHIFT;
    if ra.managed {
        flags |= field::RA_FLAG_MANAGED;
    }
    if ra.other {
        flags |= field::RA_FLAG_OTHER;
    }
    out[field::RA_FLAGS] = flags;
    write_u16(&mut out, field::RA_ROUTER_LIFETIME, ra.router_lifetime);
    write_u32(&mut out, field::RA_REACHABLE_TIME, ra.reachable_time);
    write_u32(&mut out, field::RA_RETRANS_TIMER, ra.retrans_timer);

    if let Some(mac) = &ra.source_lla {
        emit_lla(&mut out, mac);
    }
    if let Some(mtu) = ra.mtu {
        let option = push_option(&mut out, OPT_MTU, 1);
        write_u32(option, field::MTU_VALUE, mtu);
    }
    for info in &ra.prefixes {
        emit_prefix_info(&mut out, info)?;
    }
    for route in &ra.routes {
        emit_route_info(&mut out, route)?;
    }
    for (index, rdnss) in ra.rdnss.iter().enumerate() {
        emit_rdnss(&mut out, index, rdnss)?;
    }
    for (index, dnssl) in ra.dnssl.iter().enumerate() {
        emit_dnssl(&mut out, index, dnssl)?;
    }
    if out.len() > MAX_MESSAGE {
        return Err(Error::EmitTooLarge { len: out.len() });
    }
    Ok(out)
}

/// Build a Router Solicitation (RFC 4861 §4.1) with a zero checksum. Cannot currently fail; the
/// `Result` keeps the signature in line with [`emit_ra`].
pub fn emit_rs(rs: &RouterSolicit) -> Result<Vec<u8>, Error> {
    let mut out = fixed_header(ICMPV6_ROUTER_SOLICIT, field::RS_OPTIONS);
    if let Some(mac) = &rs.source_lla {
        emit_lla(&mut out, mac);
    }
    Ok(out)
}

#[cfg(test)]
// The crate denies unwrap outside tests; here a panic is the failure report.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// Header of an RA: hop limit 64, no flags, router lifetime 1800, no timers.
    const MINIMAL_RA: [u8; 16] = [
        0x86, 0x00, 0x00, 0x00, // type 134, code 0, checksum 0
        0x40, 0x00, 0x07, 0x08, // hop limit 64, flags 0, router lifetime 1800
        0x00, 0x00, 0x00, 0x00, // reachable time
        0x00, 0x00, 0x00, 0x00, // retrans timer
    ];

    fn minimal_ra() -> RouterAdvert {
        RouterAdvert {
            hop_limit: 64,
            router_lifetime: 1800,
            ..RouterAdvert::default()
        }
    }

    #[rustfmt::skip]
    const FULL_RA: [u8; 128] = [
        // RA header: hop limit 64, M and O, router lifetime 0, reachable 0, retrans 0
        0x86, 0x00, 0x00, 0x00, 0x40, 0xc0, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        // source link-layer address (byte 16)
        0x01, 0x01, 0x02, 0x00, 0x5e, 0x10, 0x00, 0x01,
        // MTU 1500 (byte 24)
        0x05, 0x01, 0x00, 0x00, 0x00, 0x00, 0x05, 0xdc,
        // prefix information 2001:db8:1::/48, L=1 A=0, valid 3600, preferred 1800 (byte 32)
        0x03, 0x04, 0x30, 0x80, 0x00, 0x00, 0x0e, 0x10,
        0x00, 0x00, 0x07, 0x08, 0x00, 0x00, 0x00, 0x00,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        // route information 2001:db8:ffff::/48, preference high, lifetime 1800 (byte 64)
        0x18, 0x02, 0x30, 0x08, 0x00, 0x00, 0x07, 0x08,
        0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0x00, 0x00,
        // RDNSS 2001:db8::53, lifetime 3600 (byte 80)
        0x19, 0x03, 0x00, 0x00, 0x00, 0x00, 0x0e, 0x10,
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x53,
        // DNSSL pod1.example, lifetime 3600 (byte 104)
        0x1f, 0x03, 0x00, 0x00, 0x00, 0x00, 0x0e, 0x10,
        0x04, b'p', b'o', b'd', b'1', 0x07, b'e', b'x',
        b'a', b'm', b'p', b'l', b'e', 0x00, 0x00, 0x00,
    ];

    fn full_ra() -> RouterAdvert {
        RouterAdvert {
            hop_limit: 64,
            managed: true,
            other: true,
            preference: Preference::Medium,
            router_lifetime: 0,
            reachable_time: 0,
            retrans_timer: 0,
            source_lla: Some(MAC),
            mtu: Some(1500),
            prefixes: vec![PrefixInfo {
                prefix: addr("2001:db8:1::"),
                prefix_len: 48,
                on_link: true,
                autonomous: false,
                valid_lifetime: 3600,
                preferred_lifetime: 1800,
            }],
            routes: vec![RouteInfo {
                prefix: addr("2001:db8:ffff::"),
                prefix_len: 48,
                preference: Preference::High,
                lifetime: 1800,
            }],
            rdnss: vec![Rdnss {
                lifetime: 3600,
                servers: vec![addr("2001:db8::53")],
            }],
            dnssl: vec![Dnssl {
                lifetime: 3600,
                domains: vec!["pod1.example".to_owned()],
            }],
            ignored_options: 0,
        }
    }

    const RS_PLAIN: [u8; 8] = [0x85, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
    #[rustfmt::skip]
    const RS_WITH_LLA: [u8; 16] = [
        0x85, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x01, 0x02, 0x00, 0x5e, 0x10, 0x00, 0x01,
    ];

    /// MINIMAL_RA followed by `options`.
    fn ra_with(options: &[u8]) -> Vec<u8> {
        let mut bytes = MINIMAL_RA.to_vec();
        bytes.extend_from_slice(options);
        bytes
    }

    // --- fixed byte arrays ---------------------------------------------------------------------

    #[test]
    fn minimal_ra_parses_and_emits() {
        assert_eq!(parse_ra(&MINIMAL_RA).unwrap(), minimal_ra());
        assert_eq!(emit_ra(&minimal_ra()).unwrap(), MINIMAL_RA);
        assert_eq!(
            parse(&MINIMAL_RA).unwrap(),
            NdMessage::RouterAdvert(minimal_ra())
        );
    }

    #[test]
    fn full_ra_parses_and_emits() {
        assert_eq!(parse_ra(&FULL_RA).unwrap(), full_ra());
        assert_eq!(emit_ra(&full_ra()).unwrap(), FULL_RA);
    }

    #[test]
    fn rs_parses_and_emits() {
        let plain = RouterSolicit::default();
        let with_lla = RouterSolicit {
            source_lla: Some(MAC),
        };
        assert_eq!(parse_rs(&RS_PLAIN).unwrap(), plain);
        assert_eq!(emit_rs(&plain).unwrap(), RS_PLAIN);
        assert_eq!(parse_rs(&RS_WITH_LLA).unwrap(), with_lla);
        assert_eq!(emit_rs(&with_lla).unwrap(), RS_WITH_LLA);
        assert_eq!(
            parse(&RS_WITH_LLA).unwrap(),
            NdMessage::RouterSolicit(with_lla)
        );
    }

    #[test]
    fn checksum_is_ignored_on_parse() {
        let mut bytes = FULL_RA;
        bytes[2] = 0xde;
        bytes[3] = 0xad;
        assert_eq!(parse_ra(&bytes).unwrap(), full_ra());
    }

    #[test]
    fn router_preference_bits() {
        let mut bytes = MINIMAL_RA;
        bytes[5] = 0b0000_1000;
        assert_eq!(parse_ra(&bytes).unwrap().preference, Preference::High);
        bytes[5] = 0b0001_1000;
        assert_eq!(parse_ra(&bytes).unwrap().preference, Preference::Low);
        // RFC 4191 §2.2: the reserved value 10 reads as medium.
        bytes[5] = 0b0001_0000;
        assert_eq!(parse_ra(&bytes).unwrap().preference, Preference::Medium);
        // Other flag bits (H, P, reserved) are ignored.
        bytes[5] = 0b0010_0111;
        assert_eq!(parse_ra(&bytes).unwrap(), minimal_ra());
        // With router lifetime 0 the preference is ignored.
        let mut zero = MINIMAL_RA;
        zero[5] = 0b0000_1000;
        zero[6] = 0;
        zero[7] = 0;
        assert_eq!(parse_ra(&zero).unwrap().preference, Preference::Medium);
    }

    // --- options that are ignored, not fatal ------------------------------------------------------

    #[test]
    fn unknown_options_are_counted() {
        // Nonce (type 14) and target link-layer address (type 2): skipped.
        let bytes = ra_with(&[14, 1, 1, 2, 3, 4, 5, 6, 2, 1, 0, 0, 0, 0, 0, 0]);
        let ra = parse_ra(&bytes).unwrap();
        assert_eq!(ra.ignored_options, 2);
        assert_eq!(
            RouterAdvert {
                ignored_options: 0,
                ..ra
            },
            minimal_ra()
        );
    }

    #[test]
    fn repeated_lla_and_mtu_are_counted() {
        let bytes = ra_with(&[
            1, 1, 2, 0, 0, 0, 0, 1, // first SLLA
            1, 1, 2, 0, 0, 0, 0, 2, // second SLLA
            5, 1, 0, 0, 0, 0, 5, 0xdc, // MTU 1500
            5, 1, 0, 0, 0, 0, 5, 0x00, // MTU 1280
        ]);
        let ra = parse_ra(&bytes).unwrap();
        assert_eq!(ra.source_lla, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(ra.mtu, Some(1500));
        assert_eq!(ra.ignored_options, 2);
    }

    #[test]
    fn wrong_length_lla_mtu_and_prefix_are_ignored() {
        let bytes = ra_with(&[
            1, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, // 14-byte link-layer address
            5, 2, 0, 0, 0, 0, 5, 0xdc, 0, 0, 0, 0, 0, 0, 0, 0, // MTU with length 2
            3, 1, 64, 0xc0, 0, 0, 0, 0, // prefix information with length 1
        ]);
        let ra = parse_ra(&bytes).unwrap();
        assert_eq!(ra.source_lla, None);
        assert_eq!(ra.mtu, None);
        assert!(ra.prefixes.is_empty());
        assert_eq!(ra.ignored_options, 3);
        // The RS keeps looking for an Ethernet address after a non-Ethernet one.
        let mut rs = RS_PLAIN.to_vec();
        rs.extend_from_slice(&[1, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        rs.extend_from_slice(&RS_WITH_LLA[8..]);
        assert_eq!(parse_rs(&rs).unwrap().source_lla, Some(MAC));
    }

    #[test]
    fn prefix_bits_beyond_length_are_masked_on_parse() {
        let mut bytes = FULL_RA;
        bytes[32 + 16 + 6] = 0xff; // inside the PIO prefix, past /48
        bytes[64 + 8 + 6] = 0xff; // inside the RIO prefix, past /48
        let ra = parse_ra(&bytes).unwrap();
        assert_eq!(ra, full_ra());
    }

    #[test]
    fn route_information_lengths() {
        // ::/0 in a length-1 option, preference low.
        let ra = parse_ra(&ra_with(&[24, 1, 0, 0x18, 0, 0, 0, 60])).unwrap();
        assert_eq!(
            ra.routes,
            vec![RouteInfo {
                prefix: Ipv6Addr::UNSPECIFIED,
                prefix_len: 0,
                preference: Preference::Low,
                lifetime: 60,
            }]
        );
        // RFC 4191 §2.3: a /48 may also come in a length-3 option.
        let mut long = vec![24, 3, 48, 0, 0, 0, 0, 60];
        long.extend_from_slice(&addr("2001:db8:ffff::").octets());
        let ra = parse_ra(&ra_with(&long)).unwrap();
        assert_eq!(ra.routes[0].prefix, addr("2001:db8:ffff::"));
        assert_eq!(ra.ignored_options, 0);
        // A /65 needs length 3; in length 2 the option is ignored.
        let mut short = vec![24, 2, 65, 0, 0, 0, 0, 60];
        short.extend_from_slice(&addr("2001:db8::").octets()[..8]);
        let ra = parse_ra(&ra_with(&short)).unwrap();
        assert!(ra.routes.is_empty());
        assert_eq!(ra.ignored_options, 1);
        // A /48 in a length-1 option: ignored.
        let ra = parse_ra(&ra_with(&[24, 1, 48, 0, 0, 0, 0, 60])).unwrap();
        assert_eq!((ra.routes.len(), ra.ignored_options), (0, 1));
    }

    #[test]
    fn route_information_reserved_preference_and_bad_length_are_ignored() {
        // Reserved preference 10.
        let ra = parse_ra(&ra_with(&[24, 1, 0, 0x10, 0, 0, 0, 60])).unwrap();
        assert_eq!((ra.routes.len(), ra.ignored_options), (0, 1));
        // Prefix length 129.
        let mut bytes = vec![24, 3, 129, 0, 0, 0, 0, 60];
        bytes.extend_from_slice(&[0; 16]);
        let ra = parse_ra(&ra_with(&bytes)).unwrap();
        assert_eq!((ra.routes.len(), ra.ignored_options), (0, 1));
        // Length 4.
        let mut bytes = vec![24, 4, 0, 0, 0, 0, 0, 60];
        bytes.extend_from_slice(&[0; 24]);
        let ra = parse_ra(&ra_with(&bytes)).unwrap();
        assert_eq!((ra.routes.len(), ra.ignored_options), (0, 1));
    }

    #[test]
    fn malformed_rdnss_is_ignored() {
        // Length 2: shorter than one server.
        let ra = parse_ra(&ra_with(&[
            25, 2, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0,
        ]))
        .unwrap();
        assert_eq!((ra.rdnss.len(), ra.ignored_options), (0, 1));
        // Length 4: even.
        let mut bytes = vec![25, 4, 0, 0, 0, 0, 0, 60];
        bytes.extend_from_slice(&[0; 24]);
        let ra = parse_ra(&ra_with(&bytes)).unwrap();
        assert_eq!((ra.rdnss.len(), ra.ignored_options), (0, 1));
        // Length 5: two servers.
        let mut bytes = vec![25, 5, 0, 0, 0, 0, 0, 60];
        bytes.extend_from_slice(&addr("2001:db8::53").octets());
        bytes.extend_from_slice(&addr("2001:db8::54").octets());
        let ra = parse_ra(&ra_with(&bytes)).unwrap();
        assert_eq!(
            ra.rdnss,
            vec![Rdnss {
                lifetime: 60,
                servers: vec![addr("2001:db8::53"), addr("2001:db8::54")],
            }]
        );
    }

    #[test]
    fn dnssl_with_two_domains_and_padding() {
        #[rustfmt::skip]
        let bytes = ra_with(&[
            31, 3, 0, 0, 0, 0, 0, 60,
            1, b'a', 7, b'e', b'x', b'a', b'm', b'p',
            b'l', b'e', 0, 1, b'b', 0, 0, 0,
        ]);
        let ra = parse_ra(&bytes).unwrap();
        assert_eq!(
            ra.dnssl,
            vec![Dnssl {
                lifetime: 60,
                domains: vec!["a.example".to_owned(), "b".to_owned()],
            }]
        );
    }

    #[test]
    fn malformed_dnssl_is_ignored() {
        let cases: [&[u8]; 6] = [
            // Length 1.
            &[31, 1, 0, 0, 0, 0, 0, 60],
            // Only padding: no domain.
            &[31, 2, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0],
            // Compression pointer.
            &[31, 2, 0, 0, 0, 0, 0, 60, 1, b'a', 0xc0, 8, 0, 0, 0, 0],
            // Label length 64 (an obsolete extended label type).
            &[31, 2, 0, 0, 0, 0, 0, 60, 0x40, b'a', 0, 0, 0, 0, 0, 0],
            // Name runs past the option.
            &[
                31, 2, 0, 0, 0, 0, 0, 60, 5, b'a', b'b', b'c', b'd', b'e', 1, b'f',
            ],
            // A dot inside a label.
            &[31, 2, 0, 0, 0, 0, 0, 60, 3, b'a', b'.', b'b', 0, 0, 0, 0],
        ];
        for case in cases {
            let ra = parse_ra(&ra_with(case)).unwrap();
            assert_eq!((ra.dnssl.len(), ra.ignored_options), (0, 1), "{case:?}");
        }
    }

    // --- errors ------------------------------------------------------------------------------------

    #[test]
    fn truncated_messages() {
        let err = parse_ra(&MINIMAL_RA[..12]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "truncated router advertisement: 12 bytes, need at least 16"
        );
        assert_eq!(
            parse(&RS_PLAIN[..4]).unwrap_err(),
            Error::Truncated {
                message: "router solicitation",
                len: 4,
                need: 8
            }
        );
        assert_eq!(
            parse(&[]).unwrap_err(),
            Error::Truncated {
                message: "ICMPv6 message",
                len: 0,
                need: 8
            }
        );
    }

    #[test]
    fn wrong_type() {
        // Echo request.
        let err = parse(&[128, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ICMPv6 type 128 is not a router solicitation (133) or router advertisement (134)"
        );
        assert_eq!(
            parse_ra(&RS_PLAIN).unwrap_err(),
            Error::WrongType {
                found: 133,
                expected: "router advertisement (134)"
            }
        );
        assert!(matches!(
            parse_rs(&MINIMAL_RA),
            Err(Error::WrongType { found: 134, .. })
        ));
    }

    #[test]
    fn bad_code() {
        let mut bytes = MINIMAL_RA;
        bytes[1] = 1;
        assert_eq!(
            parse(&bytes).unwrap_err().to_string(),
            "router advertisement with ICMPv6 code 1, must be 0"
        );
        let mut rs = RS_PLAIN;
        rs[1] = 7;
        assert_eq!(
            parse_rs(&rs).unwrap_err(),
            Error::BadCode {
                message: "router solicitation",
                code: 7
            }
        );
    }

    #[test]
    fn zero_length_option() {
        // Valid options first, then a zero-length one: the whole message is invalid.
        let err = parse_ra(&ra_with(&[
            5, 1, 0, 0, 0, 0, 5, 0xdc, 3, 0, 0, 0, 0, 0, 0, 0,
        ]))
        .unwrap_err();
        assert_eq!(err.to_string(), "option at byte 24 (type 3) has length 0");
        let mut rs = RS_PLAIN.to_vec();
        rs.extend_from_slice(&[1, 0]);
        assert_eq!(
            parse_rs(&rs).unwrap_err(),
            Error::ZeroLengthOption { offset: 8, kind: 1 }
        );
    }

    #[test]
    fn option_past_end() {
        let err = parse_ra(&ra_with(&[1, 2, 0, 0, 0, 0, 0, 0])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "option at byte 16 (type 1) runs past the end: declares 16 bytes, 8 remain"
        );
    }

    #[test]
    fn truncated_option_header() {
        let err = parse_ra(&ra_with(&[5, 1, 0, 0, 0, 0, 5, 0xdc, 25])).unwrap_err();
        assert_eq!(
            err,
            Error::TruncatedOptionHeader {
                offset: 24,
                remaining: 1
            }
        );
        assert!(err.to_string().starts_with("option at byte 24 is cut off"));
    }

    #[test]
    fn prefix_length_over_128() {
        let mut bytes = FULL_RA;
        bytes[34] = 129;
        assert_eq!(
            parse_ra(&bytes).unwrap_err().to_string(),
            "prefix information at byte 32: prefix length 129 exceeds 128"
        );
    }

    #[test]
    fn rs_source_check() {
        let with_lla = RouterSolicit {
            source_lla: Some(MAC),
        };
        let err = validate_rs_source(&Ipv6Addr::UNSPECIFIED, &with_lla).unwrap_err();
        assert_eq!(err, Error::UnspecifiedSourceWithLla);
        assert_eq!(
            err.to_string(),
            "router solicitation from the unspecified address carries a source link-layer address option"
        );
        assert!(validate_rs_source(&Ipv6Addr::UNSPECIFIED, &RouterSolicit::default()).is_ok());
        assert!(validate_rs_source(&addr("fe80::1"), &with_lla).is_ok());
    }

    #[test]
    fn ra_source_check() {
        assert!(validate_ra_source(&addr("fe80::1")).is_ok());
        assert!(validate_ra_source(&addr("febf:ffff::1")).is_ok());
        let err = validate_ra_source(&addr("2001:db8::1")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "router advertisement from 2001:db8::1, which is not link-local (fe80::/10)"
        );
        assert!(validate_ra_source(&addr("fec0::1")).is_err());
        assert!(validate_ra_source(&Ipv6Addr::UNSPECIFIED).is_err());
    }

    #[test]
    fn emit_rejects_preference_without_lifetime() {
        let ra = RouterAdvert {
            preference: Preference::High,
            ..RouterAdvert::default()
        };
        assert_eq!(
            emit_ra(&ra).unwrap_err().to_string(),
            "emit: router preference high with router lifetime 0, RFC 4191 §2.2 requires medium"
        );
    }

    #[test]
    fn emit_rejects_bad_prefixes() {
        let mut ra = full_ra();
        ra.routes[0].prefix_len = 129;
        assert_eq!(
            emit_ra(&ra).unwrap_err().to_string(),
            "emit: route prefix length 129 exceeds 128 (prefix 2001:db8:ffff::)"
        );
        let mut ra = full_ra();
        ra.prefixes[0].prefix_len = 200;
        assert!(matches!(
            emit_ra(&ra),
            Err(Error::EmitPrefixLength {
                option: "prefix information",
                prefix_len: 200,
                ..
            })
        ));
        let mut ra = full_ra();
        ra.prefixes[0].prefix = addr("2001:db8:1::1");
        assert_eq!(
            emit_ra(&ra).unwrap_err().to_string(),
            "emit: prefix information 2001:db8:1::1/48 has bits set beyond the prefix length"
        );
        let mut ra = full_ra();
        ra.routes[0].prefix_len = 0;
        assert!(matches!(
            emit_ra(&ra),
            Err(Error::EmitPrefixBits {
                option: "route",
                ..
            })
        ));
    }

    #[test]
    fn emit_rejects_bad_rdnss() {
        let mut ra = full_ra();
        ra.rdnss.push(Rdnss {
            lifetime: 60,
            servers: vec![],
        });
        assert_eq!(
            emit_ra(&ra).unwrap_err().to_string(),
            "emit: RDNSS option 1 has no servers"
        );
        ra.rdnss[1].servers = vec![addr("2001:db8::53"); 128];
        assert_eq!(
            emit_ra(&ra).unwrap_err(),
            Error::EmitRdnssTooMany {
                index: 1,
                count: 128
            }
        );
        ra.rdnss[1].servers.pop();
        let bytes = emit_ra(&ra).unwrap();
        assert_eq!(parse_ra(&bytes).unwrap(), ra);
    }

    #[test]
    fn emit_rejects_bad_dnssl() {
        let with_domains = |domains: &[&str]| RouterAdvert {
            dnssl: vec![Dnssl {
                lifetime: 60,
                domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            }],
            ..minimal_ra()
        };
        assert_eq!(
            emit_ra(&with_domains(&[])).unwrap_err().to_string(),
            "emit: DNSSL option 0 has no domains"
        );
        assert_eq!(
            emit_ra(&with_domains(&["a..b"])).unwrap_err().to_string(),
            "emit: DNSSL domain \"a..b\" has an empty label"
        );
        for empty in ["", ".", "example.", ".example"] {
            assert!(
                matches!(
                    emit_ra(&with_domains(&[empty])),
                    Err(Error::EmitDomain {
                        problem: DomainProblem::EmptyLabel,
                        ..
                    })
                ),
                "{empty:?}"
            );
        }
        let long_label = format!("{}.example", "a".repeat(64));
        assert_eq!(
            emit_ra(&with_domains(&[&long_label])).unwrap_err(),
            Error::EmitDomain {
                domain: long_label.clone(),
                problem: DomainProblem::LabelTooLong { len: 64 }
            }
        );
        assert!(
            emit_ra(&with_domains(&[&long_label]))
                .unwrap_err()
                .to_string()
                .ends_with("has a label longer than 63 bytes (64)")
        );
        for bad in ["bücher.example", "pod 1.example", "tab\t.example"] {
            assert!(
                matches!(
                    emit_ra(&with_domains(&[bad])),
                    Err(Error::EmitDomain {
                        problem: DomainProblem::NotPrintableAscii,
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        // 4 × 63-byte labels: 4 × 64 + 1 = 257 bytes encoded.
        let too_long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(
            emit_ra(&with_domains(&[&too_long])).unwrap_err(),
            Error::EmitDomain {
                domain: too_long,
                problem: DomainProblem::TooLong { len: 257 }
            }
        );
        // 3 × 63 + 61: exactly 255 bytes encoded, the longest name allowed.
        let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        let ra = with_domains(&[&longest]);
        assert_eq!(parse_ra(&emit_ra(&ra).unwrap()).unwrap(), ra);
        // Nine 255-byte names need 8 + 9 × 255 = 2303 bytes, more than one option holds.
        let nine = vec![longest.as_str(); 9];
        assert_eq!(
            emit_ra(&with_domains(&nine)).unwrap_err(),
            Error::EmitDnsslTooLong {
                index: 0,
                bytes: 2304
            }
        );
    }

    #[test]
    fn emit_rejects_oversized_message() {
        let prefix = PrefixInfo {
            prefix: addr("2001:db8::"),
            prefix_len: 64,
            on_link: true,
            autonomous: true,
            valid_lifetime: 3600,
            preferred_lifetime: 1800,
        };
        // 16 + 2048 × 32 = 65552 bytes.
        let ra = RouterAdvert {
            prefixes: vec![prefix; 2048],
            ..minimal_ra()
        };
        assert_eq!(
            emit_ra(&ra).unwrap_err().to_string(),
            "emit: message would be 65552 bytes, more than 65535"
        );
    }

    // --- round trips -------------------------------------------------------------------------------

    #[test]
    fn round_trips() {
        let cases = [
            RouterAdvert::default(),
            minimal_ra(),
            full_ra(),
            RouterAdvert {
                hop_limit: 255,
                preference: Preference::Low,
                router_lifetime: 9000,
                reachable_time: 30_000,
                retrans_timer: 1_000,
                mtu: Some(9000),
                prefixes: vec![
                    PrefixInfo {
                        prefix: addr("2001:db8:0:1::"),
                        prefix_len: 64,
                        on_link: true,
                        autonomous: true,
                        valid_lifetime: u32::MAX,
                        preferred_lifetime: u32::MAX,
                    },
                    PrefixInfo {
                        prefix: addr("2001:db8:0:2::1"),
                        prefix_len: 128,
                        on_link: false,
                        autonomous: false,
                        valid_lifetime: 0,
                        preferred_lifetime: 0,
                    },
                ],
                routes: vec![
                    RouteInfo {
                        prefix: Ipv6Addr::UNSPECIFIED,
                        prefix_len: 0,
                        preference: Preference::Low,
                        lifetime: 0,
                    },
                    RouteInfo {
                        prefix: addr("2001:db8::1:0:0:0"),
                        prefix_len: 80,
                        preference: Preference::Medium,
                        lifetime: u32::MAX,
                    },
                ],
                rdnss: vec![
                    Rdnss {
                        lifetime: 0,
                        servers: vec![addr("2001:db8::53"), addr("fe80::53")],
                    },
                    Rdnss {
                        lifetime: 600,
                        servers: vec![addr("2001:db8::35")],
                    },
                ],
                dnssl: vec![Dnssl {
                    lifetime: 600,
                    domains: vec![
                        "pod1.example".to_owned(),
                        "svc.pod1.example".to_owned(),
                        "x".to_owned(),
                    ],
                }],
                ..RouterAdvert::default()
            },
        ];
        for ra in cases {
            let bytes = emit_ra(&ra).unwrap();
            assert_eq!(bytes.len() % 8, 0);
            assert_eq!(parse_ra(&bytes).unwrap(), ra);
            assert_eq!(parse(&bytes).unwrap(), NdMessage::RouterAdvert(ra));
        }
        for rs in [
            RouterSolicit::default(),
            RouterSolicit {
                source_lla: Some([0xff; 6]),
            },
        ] {
            assert_eq!(parse_rs(&emit_rs(&rs).unwrap()).unwrap(), rs);
        }
    }

    // --- properties ----------------------------------------------------------------------------------

    fn any_preference() -> impl Strategy<Value = Preference> {
        prop_oneof![
            Just(Preference::Low),
            Just(Preference::Medium),
            Just(Preference::High)
        ]
    }

    fn any_prefix() -> impl Strategy<Value = (Ipv6Addr, u8)> {
        (any::<u128>(), 0u8..=128)
            .prop_map(|(bits, len)| (mask_prefix(Ipv6Addr::from(bits), len), len))
    }

    fn any_prefix_info() -> impl Strategy<Value = PrefixInfo> {
        (
            any_prefix(),
            any::<bool>(),
            any::<bool>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(
                    (prefix, prefix_len),
                    on_link,
                    autonomous,
                    valid_lifetime,
                    preferred_lifetime,
                )| {
                    PrefixInfo {
                        prefix,
                        prefix_len,
                        on_link,
                        autonomous,
                        valid_lifetime,
                        preferred_lifetime,
                    }
                },
            )
    }

    fn any_route_info() -> impl Strategy<Value = RouteInfo> {
        (any_prefix(), any_preference(), any::<u32>()).prop_map(
            |((prefix, prefix_len), preference, lifetime)| RouteInfo {
                prefix,
                prefix_len,
                preference,
                lifetime,
            },
        )
    }

    fn any_rdnss() -> impl Strategy<Value = Rdnss> {
        (
            any::<u32>(),
            prop::collection::vec(any::<u128>().prop_map(Ipv6Addr::from), 1..4),
        )
            .prop_map(|(lifetime, servers)| Rdnss { lifetime, servers })
    }

    fn any_dnssl() -> impl Strategy<Value = Dnssl> {
        (
            any::<u32>(),
            prop::collection::vec("[a-z0-9]{1,12}(\\.[a-z0-9-]{1,12}){0,3}", 1..4),
        )
            .prop_map(|(lifetime, domains)| Dnssl { lifetime, domains })
    }

    fn any_router_advert() -> impl Strategy<Value = RouterAdvert> {
        let header = (
            any::<u8>(),
            any::<bool>(),
            any::<bool>(),
            any_preference(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
        );
        let options = (
            proptest::option::of(any::<[u8; 6]>()),
            proptest::option::of(any::<u32>()),
            prop::collection::vec(any_prefix_info(), 0..4),
            prop::collection::vec(any_route_info(), 0..4),
            prop::collection::vec(any_rdnss(), 0..3),
            prop::collection::vec(any_dnssl(), 0..3),
        );
        (header, options).prop_map(
            |(
                (hop_limit, managed, other, preference, router_lifetime, reachable, retrans),
                (source_lla, mtu, prefixes, routes, rdnss, dnssl),
            )| RouterAdvert {
                hop_limit,
                managed,
                other,
                // RFC 4191 §2.2: only medium goes with a router lifetime of 0.
                preference: if router_lifetime == 0 {
                    Preference::Medium
                } else {
                    preference
                },
                router_lifetime,
                reachable_time: reachable,
                retrans_timer: retrans,
                source_lla,
                mtu,
                prefixes,
                routes,
                rdnss,
                dnssl,
                ignored_options: 0,
            },
        )
    }

    /// Options with valid framing and arbitrary contents, to reach the per-option parsers.
    fn framed_options() -> impl Strategy<Value = Vec<u8>> {
        let option = (
            prop_oneof![
                Just(OPT_SOURCE_LLA),
                Just(OPT_PREFIX_INFO),
                Just(OPT_MTU),
                Just(OPT_ROUTE_INFO),
                Just(OPT_RDNSS),
                Just(OPT_DNSSL),
                any::<u8>()
            ],
            1u8..=5,
            prop::collection::vec(any::<u8>(), 38),
        )
            .prop_map(|(kind, units, filler)| {
                let mut bytes = vec![kind, units];
                bytes.extend(filler.iter().cycle().take(usize::from(units) * 8 - 2));
                bytes
            });
        prop::collection::vec(option, 0..8).prop_map(|options| options.concat())
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
            let _ = parse_ra(&bytes);
            let _ = parse_rs(&bytes);
        }

        #[test]
        fn parse_never_panics_after_valid_header(tail in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&ra_with(&tail));
            let mut rs = RS_PLAIN.to_vec();
            rs.extend_from_slice(&tail);
            let _ = parse(&rs);
        }

        #[test]
        fn framed_options_always_parse(options in framed_options()) {
            // Framing is valid, so only a Prefix Information prefix length can make it fail.
            match parse_ra(&ra_with(&options)) {
                Ok(ra) => {
                    // Parse masks prefixes and keeps only representable values, so whatever
                    // was understood can be sent again.
                    let again = emit_ra(&RouterAdvert { ignored_options: 0, ..ra.clone() });
                    prop_assert!(again.is_ok(), "{again:?}");
                }
                Err(err) => prop_assert!(matches!(err, Error::PrefixLength { .. }), "{err}"),
            }
        }

        #[test]
        fn emit_then_parse_is_identity(ra in any_router_advert()) {
            let bytes = emit_ra(&ra).unwrap();
            prop_assert_eq!(bytes.len() % 8, 0);
            prop_assert_eq!(parse_ra(&bytes).unwrap(), ra);
        }

        #[test]
        fn rs_round_trip(source_lla in proptest::option::of(any::<[u8; 6]>())) {
            let rs = RouterSolicit { source_lla };
            prop_assert_eq!(parse_rs(&emit_rs(&rs).unwrap()).unwrap(), rs);
        }
    }
}
