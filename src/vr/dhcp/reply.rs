//! The DHCPv6 server's decision (RFC 8415 §16 validation, §18.3 server behaviour), as a pure function.
//!
//! [`reply`] takes a decoded client message, what the shell saw around it ([`Received`]), the
//! reservation table (through [`Lookup`]), the addresses the client has declined, and the
//! [`Settings`], and returns a [`Decision`]: the message to send back, or why none is sent. It keeps no
//! state: a server restarted a second ago answers a Renew exactly like one that handed out the lease,
//! because the answer only ever comes from the reservations. [`reply_to_bytes`] adds decoding and is
//! safe on any input.
//!
//! Choices worth knowing:
//! - Configuration options (DNS 23, domain list 24, SNTP 31, NTP 56) are included only when the client
//!   asked for them in its Option Request option and they are configured (RFC 8415 §18.3: "the server
//!   includes options … identified in the Option Request option that the server has been configured to
//!   return"). Every common client (systemd-networkd, NetworkManager, dhclient, dhcpcd) asks for DNS.
//!   A client that sends no Option Request option at all (WIDE `dhcp6c -i`) gets the configured DNS
//!   servers and domain list anyway, not NTP.
//! - The Information Refresh Time (32) is in every Information-request reply, asked for or not: a
//!   client must ask for it anyway (§18.2.6) and without it a stateless client never refreshes.
//! - Every IA_NA of the client gets every reserved address (minus declined ones); a client that asks
//!   for two IA_NAs sees the same addresses in both.
//! - IA_TA and IA_PD are never served: each is answered with NoAddrsAvail or NoPrefixAvail inside it.
//! - Domain names are encoded here (RFC 1035 §3.1, uncompressed as RFC 8415 §10 requires) rather than
//!   through the DNS library's encoder, which may compress repeated suffixes.

use std::net::Ipv6Addr;

use dhcproto::v6::{
    self, DhcpOption, IAAddr, IANA, IAPD, IATA, MessageType, NtpSuboption, OptionCode, Status,
    StatusCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder};

use crate::config::MacSource;
use crate::model::{Duid, Mac};

/// The reservation queries [`reply`] needs. Implemented by
/// [`Reservations`](super::reservations::Reservations); tests use a small in-memory table.
pub trait Lookup {
    /// The addresses reserved for a client known by its link-layer address.
    fn for_mac(&self, mac: &Mac) -> Option<&[Ipv6Addr]>;
    /// The addresses reserved for a client known by its exact DUID (RFC 8415 §11).
    fn for_duid(&self, duid: &Duid) -> Option<&[Ipv6Addr]>;
    /// Whether an address lies in one of the prefixes served on this link (RFC 8415 §18.3.3).
    fn on_link(&self, address: &Ipv6Addr) -> bool;
}

impl Lookup for super::reservations::Reservations {
    fn for_mac(&self, mac: &Mac) -> Option<&[Ipv6Addr]> {
        super::reservations::Reservations::for_mac(self, mac)
    }

    fn for_duid(&self, duid: &Duid) -> Option<&[Ipv6Addr]> {
        super::reservations::Reservations::for_duid(self, duid)
    }

    fn on_link(&self, address: &Ipv6Addr) -> bool {
        self.is_on_link(address)
    }
}

/// How the server answers: identity, lifetimes and the other-configuration options it hands out.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Our DUID, sent in every Server Identifier option (RFC 8415 §21.3).
    pub server_duid: Duid,
    /// Preferred lifetime of every address handed out, seconds (§21.6).
    pub preferred_lifetime: u32,
    /// Valid lifetime of every address handed out, seconds (§21.6).
    pub valid_lifetime: u32,
    /// T1 of every IA_NA, seconds (§21.4).
    pub t1: u32,
    /// T2 of every IA_NA, seconds (§21.4).
    pub t2: u32,
    /// Answer a Solicit carrying Rapid Commit with a committed Reply (§18.3.1, §21.14).
    pub rapid_commit: bool,
    /// Value of the Preference option in Advertise messages (§21.8).
    pub preference: u8,
    /// Recursive DNS servers (option 23, RFC 3646 §3).
    pub dns_servers: Vec<Ipv6Addr>,
    /// Domain search list (option 24, RFC 3646 §4).
    pub domain_search: Vec<String>,
    /// NTP servers: option 56 with server-address suboptions (RFC 5908) and SNTP option 31 (RFC 4075).
    pub ntp_servers: Vec<Ipv6Addr>,
    /// Information Refresh Time (option 32, RFC 8415 §21.23) in Information-request replies, seconds.
    pub info_refresh_time: u32,
    /// Where the client's MAC comes from, most trusted first.
    pub mac_sources: Vec<MacSource>,
}

/// What the shell knows about a received message besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Received {
    /// Ethernet source address of the frame that carried the message, if the shell saw it.
    pub frame_mac: Option<Mac>,
    /// The message was sent to our unicast address, not to All_DHCP_Relay_Agents_and_Servers
    /// (ff02::1:2). We never send a Server Unicast option, so such a Request, Renew, Release or
    /// Decline is answered with UseMulticast (RFC 8415 §18.4).
    pub unicast: bool,
}

/// Which reservation matched the client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The exact DUID of the Client Identifier option.
    Duid(Duid),
    /// A MAC from one of the configured [`MacSource`]s.
    Mac(Mac),
}

/// What a reply did, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Solicit answered with an Advertise offering addresses (RFC 8415 §18.3.1).
    Advertise,
    /// Solicit with Rapid Commit answered with a committed Reply (§18.3.1).
    RapidCommit,
    /// Request answered with addresses (§18.3.2).
    Reply,
    /// Renew answered from the client's reservation (§18.3.4).
    Renewed,
    /// Rebind answered from the client's reservation (§18.3.5).
    Rebound,
    /// Confirm: every address is the client's (§18.3.3).
    Confirmed,
    /// Confirm: some address is not the client's (§18.3.3).
    NotOnLink,
    /// Release acknowledged; the reservation stays (§18.3.7).
    Released,
    /// Decline acknowledged; the shell should remember these addresses for the client (§18.3.8).
    Declined(Vec<Ipv6Addr>),
    /// Information-request answered (§18.3.6).
    InformationReply,
    /// Solicit or Request from a client with nothing to give it (§18.3.2, §18.3.9).
    NoAddrsAvail,
    /// Renew or Rebind from a client without a reservation (§18.3.4, §18.3.5).
    NoBinding,
    /// Request, Renew, Release or Decline sent to our unicast address (§18.4).
    UseMulticast,
}

impl Outcome {
    /// A short stable name for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Advertise => "advertise",
            Outcome::RapidCommit => "rapid_commit",
            Outcome::Reply => "reply",
            Outcome::Renewed => "renewed",
            Outcome::Rebound => "rebound",
            Outcome::Confirmed => "confirmed",
            Outcome::NotOnLink => "not_on_link",
            Outcome::Released => "released",
            Outcome::Declined(_) => "declined",
            Outcome::InformationReply => "information_reply",
            Outcome::NoAddrsAvail => "no_addrs_avail",
            Outcome::NoBinding => "no_binding",
            Outcome::UseMulticast => "use_multicast",
        }
    }
}

/// Why a received message gets no answer (RFC 8415 §16).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    /// The Server Identifier names another server (§16.4, §16.6, §16.8, §16.9, §16.12).
    #[error("server identifier names another server")]
    NotForUs,
    /// A message that needs a Client Identifier has none (§16.2–§16.9).
    #[error("no client identifier")]
    MissingClientId,
    /// A Request, Renew, Decline or Release without a Server Identifier (§16.4, §16.6, §16.8, §16.9).
    #[error("no server identifier")]
    MissingServerId,
    /// A Solicit, Confirm or Rebind with a Server Identifier (§16.2, §16.5, §16.7).
    #[error("server identifier in a message that must not carry one")]
    UnexpectedServerId,
    /// A Confirm listing no address: the server cannot tell whether they are on link (§18.3.3).
    #[error("confirm without addresses")]
    NothingToConfirm,
    /// Relay-forward or Relay-reply: we serve the link directly, never through relays (§16.13).
    #[error("relay message")]
    RelayMessage,
    /// A message only servers send, or a type we do not serve (§16.3, §16.10, §16.11).
    #[error("{0:?} is not a client message we serve")]
    NotAClientMessage(MessageType),
    /// Bytes that do not decode, or a message that breaks RFC 8415's format rules.
    #[error("malformed: {0}")]
    Malformed(String),
}

impl Ignored {
    /// A short stable name for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            Ignored::NotForUs => "not_for_us",
            Ignored::MissingClientId => "missing_client_id",
            Ignored::MissingServerId => "missing_server_id",
            Ignored::UnexpectedServerId => "unexpected_server_id",
            Ignored::NothingToConfirm => "nothing_to_confirm",
            Ignored::RelayMessage => "relay_message",
            Ignored::NotAClientMessage(_) => "not_a_client_message",
            Ignored::Malformed(_) => "malformed",
        }
    }
}

/// The answer to one received message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send `message` back to the client.
    Reply {
        /// The Advertise or Reply.
        message: v6::Message,
        /// The reservation that matched, if any.
        client: Option<ClientKey>,
        /// What the reply did.
        outcome: Outcome,
    },
    /// Send nothing.
    Ignore(Ignored),
}

/// Answer a client message (RFC 8415 §16, §18.3).
///
/// The client is found by its exact DUID first, then by a MAC from each of `settings.mac_sources` in
/// order; the first that has a reservation wins. `declined(key)` gives the addresses this client has
/// declined since its reservation last changed (the shell keeps that state); they are never offered.
pub fn reply<L: Lookup + ?Sized>(
    request: &v6::Message,
    received: &Received,
    table: &L,
    declined: &dyn Fn(&ClientKey) -> Vec<Ipv6Addr>,
    settings: &Settings,
) -> Decision {
    let valid = match validate(request, settings) {
        Ok(valid) => valid,
        Err(why) => return Decision::Ignore(why),
    };
    let client = identify(valid.duid.as_ref(), received, table, settings).map(|(key, reserved)| {
        let gone = declined(&key);
        let mut addresses: Vec<Ipv6Addr> = Vec::with_capacity(reserved.len());
        for address in reserved {
            if !gone.contains(address) && !addresses.contains(address) {
                addresses.push(*address);
            }
        }
        Client { key, addresses }
    });
    let exchange = Exchange {
        request,
        settings,
        client_id: valid.client_id,
        addresses: client.as_ref().map(|c| c.addresses.as_slice()),
    };
    let key = client.as_ref().map(|c| c.key.clone());
    let answer = |(message, outcome)| Decision::Reply {
        message,
        client: key.clone(),
        outcome,
    };

    let message_type = request.msg_type();
    if received.unicast
        && matches!(
            message_type,
            MessageType::Request | MessageType::Renew | MessageType::Release | MessageType::Decline
        )
    {
        return answer(exchange.use_multicast());
    }
    match message_type {
        MessageType::Solicit => answer(exchange.solicit()),
        MessageType::Request => answer(exchange.assign()),
        MessageType::Renew => answer(exchange.extend(Extend::Renew)),
        MessageType::Rebind => answer(exchange.extend(Extend::Rebind)),
        MessageType::Confirm => match exchange.confirm(table) {
            Some(reply) => answer(reply),
            None => Decision::Ignore(Ignored::NothingToConfirm),
        },
        MessageType::Release => answer(exchange.release()),
        MessageType::Decline => answer(exchange.decline()),
        MessageType::InformationRequest => answer(exchange.information()),
        // validate() lets only the types above through.
        other => Decision::Ignore(Ignored::NotAClientMessage(other)),
    }
}

/// Decode `bytes` (a DHCPv6 message as carried in UDP, RFC 8415 §8) and answer it with [`reply`].
/// Bytes that do not decode are ignored as [`Ignored::Malformed`]; no input makes this panic.
pub fn reply_to_bytes<L: Lookup + ?Sized>(
    bytes: &[u8],
    received: &Received,
    table: &L,
    declined: &dyn Fn(&ClientKey) -> Vec<Ipv6Addr>,
    settings: &Settings,
) -> Decision {
    match decode(bytes) {
        Ok(request) => reply(&request, received, table, declined, settings),
        Err(why) => Decision::Ignore(why),
    }
}

/// Decode a client message, after checking its option structure ourselves.
///
/// dhcproto 0.14 decodes well-formed messages faithfully but is not hardened against hostile ones: a
/// Status Code shorter than 2 octets underflows a subtraction, and nested IA options recurse without a
/// bound. So the option tree is walked here first (RFC 8415 §21.1 layout) and any option whose length
/// breaks its definition makes the whole message [`Ignored::Malformed`]. Relay messages (§9) are
/// refused before decoding, since their header does not fit the client message layout.
pub fn decode(bytes: &[u8]) -> Result<v6::Message, Ignored> {
    let Some((&message_type, _)) = bytes.split_first() else {
        return Err(Ignored::Malformed(WireError::Short(0).to_string()));
    };
    match MessageType::from(message_type) {
        MessageType::RelayForw | MessageType::RelayRepl => return Err(Ignored::RelayMessage),
        _ => {}
    }
    let options = bytes
        .get(CLIENT_HEADER..)
        .ok_or_else(|| Ignored::Malformed(WireError::Short(bytes.len()).to_string()))?;
    check_options(options, 0).map_err(|e| Ignored::Malformed(e.to_string()))?;
    let message = v6::Message::decode(&mut Decoder::new(bytes))
        .map_err(|e| Ignored::Malformed(e.to_string()))?;
    // dhcproto stops decoding an option list at the first option it cannot read and silently
    // drops the rest (a Confirm could lose the very address that makes it NotOnLink): every option
    // on the wire must be in the decoded message.
    let on_wire = count_wire_options(options);
    let decoded = count_decoded_options(message.opts());
    if on_wire != decoded {
        return Err(Ignored::Malformed(format!(
            "{} of {on_wire} options could not be decoded",
            on_wire.saturating_sub(decoded)
        )));
    }
    Ok(message)
}

/// Option codes whose bodies hold nested options, with the fixed part before them (RFC 8415 §21.4,
/// §21.5, §21.6, §21.21, §21.22). The same set is counted on the decoded side.
fn nested_offset(code: u16) -> Option<usize> {
    match code {
        3 | 25 => Some(12),
        4 => Some(4),
        5 => Some(24),
        26 => Some(25),
        _ => None,
    }
}

/// How many options the bytes hold, counting inside IA_NA, IA_TA, IA_PD, IAADDR and IAPREFIX.
/// Only called after [`check_options`] accepted the bytes.
fn count_wire_options(mut rest: &[u8]) -> usize {
    let mut count = 0;
    while let (Some(code), Some(len)) = (read_u16(rest, 0), read_u16(rest, 2)) {
        let len = usize::from(len);
        let Some(body) = rest.get(OPTION_HEADER..OPTION_HEADER + len) else {
            break;
        };
        count += 1;
        if let Some(fixed) = nested_offset(code) {
            count += count_wire_options(body.get(fixed..).unwrap_or_default());
        }
        rest = rest.get(OPTION_HEADER + len..).unwrap_or_default();
    }
    count
}

/// The same count over a decoded option list.
fn count_decoded_options(opts: &v6::DhcpOptions) -> usize {
    opts.iter()
        .map(|opt| {
            1 + match opt {
                DhcpOption::IANA(ia) => count_decoded_options(&ia.opts),
                DhcpOption::IATA(ia) => count_decoded_options(&ia.opts),
                DhcpOption::IAPD(ia) => count_decoded_options(&ia.opts),
                DhcpOption::IAAddr(a) => count_decoded_options(&a.opts),
                DhcpOption::IAPrefix(p) => count_decoded_options(&p.opts),
                _ => 0,
            }
        })
        .sum()
}

/// RFC 8415 §8: message type (1 octet) and transaction id (3 octets) before the options.
const CLIENT_HEADER: usize = 4;
/// RFC 8415 §21.1: option code and option length, two octets each.
const OPTION_HEADER: usize = 4;
/// Deepest option nesting accepted. A legitimate client message nests at most IA_NA → IAADDR →
/// Status Code (or IA_PD → IAPREFIX → …), i.e. level 2; one more level of slack.
const MAX_NESTING: usize = 3;

/// Why the bytes of a client message are not a well-formed DHCPv6 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum WireError {
    #[error("{0} octets is shorter than the 4-octet message header (RFC 8415 §8)")]
    Short(usize),
    #[error("{0} octets after the last option are not an option header (RFC 8415 §21.1)")]
    Trailing(usize),
    #[error("option {code} claims {len} octets but only {left} follow")]
    Truncated { code: u16, len: usize, left: usize },
    #[error("option {code} is {len} octets, {rule}")]
    Length {
        code: u16,
        len: usize,
        rule: &'static str,
    },
    #[error("options nested deeper than {MAX_NESTING} levels")]
    TooDeep,
    #[error("relay message option (9) in a client message (RFC 8415 §21.10)")]
    RelayOption,
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([*pair.first()?, *pair.get(1)?]))
}

/// Walk one level of options and everything nested in it.
fn check_options(mut rest: &[u8], depth: usize) -> Result<(), WireError> {
    while !rest.is_empty() {
        let (Some(code), Some(len)) = (read_u16(rest, 0), read_u16(rest, 2)) else {
            return Err(WireError::Trailing(rest.len()));
        };
        let len = usize::from(len);
        let after_header = rest.get(OPTION_HEADER..).unwrap_or_default();
        let (Some(body), Some(next)) = (after_header.get(..len), after_header.get(len..)) else {
            return Err(WireError::Truncated {
                code,
                len,
                left: after_header.len(),
            });
        };
        check_option(code, body, depth)?;
        rest = next;
    }
    Ok(())
}

/// The length rules of RFC 8415 §21 for the options dhcproto decodes into fixed-size fields; with them
/// the decoder consumes exactly the declared length of every option.
fn check_option(code: u16, body: &[u8], depth: usize) -> Result<(), WireError> {
    let len = body.len();
    let exact = |want: usize, rule| {
        if len == want {
            Ok(())
        } else {
            Err(WireError::Length { code, len, rule })
        }
    };
    let nested = |fixed: usize, rule| {
        let inner = body
            .get(fixed..)
            .ok_or(WireError::Length { code, len, rule })?;
        if depth + 1 > MAX_NESTING {
            return Err(WireError::TooDeep);
        }
        check_options(inner, depth + 1)
    };
    let at_least = |want: usize, rule| {
        if len >= want {
            Ok(())
        } else {
            Err(WireError::Length { code, len, rule })
        }
    };
    match code {
        // IA_NA (§21.4) and IA_PD (§21.21): IAID, T1, T2, then options.
        3 | 25 => nested(12, "IA_NA and IA_PD need at least 12"),
        // IA_TA (§21.5): IAID, then options.
        4 => nested(4, "IA_TA needs at least 4"),
        // IAADDR (§21.6): address and two lifetimes, then options.
        5 => nested(24, "IAADDR needs at least 24"),
        // IAPREFIX (§21.22): two lifetimes, prefix length and prefix, then options.
        26 => nested(25, "IAPREFIX needs at least 25"),
        // Vendor-specific Information (§21.17): enterprise number, then options.
        17 => nested(4, "vendor options need at least 4"),
        7 => exact(1, "Preference must be 1"),
        8 => exact(2, "Elapsed Time must be 2"),
        9 => Err(WireError::RelayOption),
        11 => at_least(11, "Authentication needs at least 11"),
        12 => exact(16, "Server Unicast must be 16"),
        13 => at_least(2, "Status Code needs at least 2"),
        14 => exact(0, "Rapid Commit must be 0"),
        16 => at_least(4, "Vendor Class needs at least 4"),
        19 => exact(1, "Reconfigure Message must be 1"),
        20 => exact(0, "Reconfigure Accept must be 0"),
        6 if len % 2 != 0 => Err(WireError::Length {
            code,
            len,
            rule: "Option Request must be a multiple of 2",
        }),
        23 if len % 16 != 0 => Err(WireError::Length {
            code,
            len,
            rule: "DNS servers must be a multiple of 16",
        }),
        _ => Ok(()),
    }
}

/// What §16 validation leaves us: the client's identity, if it sent one.
struct Valid<'a> {
    client_id: Option<&'a [u8]>,
    duid: Option<Duid>,
}

/// RFC 8415 §16: the checks every message passes before a server acts on it.
fn validate<'a>(request: &'a v6::Message, settings: &Settings) -> Result<Valid<'a>, Ignored> {
    enum ServerIdRule {
        MustBeAbsent,
        MustBeOurs,
        OursIfPresent,
    }
    let message_type = request.msg_type();
    let rule = match message_type {
        MessageType::Solicit | MessageType::Confirm | MessageType::Rebind => {
            ServerIdRule::MustBeAbsent
        }
        MessageType::Request | MessageType::Renew | MessageType::Release | MessageType::Decline => {
            ServerIdRule::MustBeOurs
        }
        MessageType::InformationRequest => ServerIdRule::OursIfPresent,
        MessageType::RelayForw | MessageType::RelayRepl => return Err(Ignored::RelayMessage),
        other => return Err(Ignored::NotAClientMessage(other)),
    };
    let client_id = request.opts().iter().find_map(|o| match o {
        DhcpOption::ClientId(id) => Some(id.as_slice()),
        _ => None,
    });
    let duid = match client_id {
        Some(bytes) => Some(
            Duid::from_bytes(bytes)
                .map_err(|e| Ignored::Malformed(format!("client identifier: {e}")))?,
        ),
        // §16.12: only an Information-request may leave out the Client Identifier.
        None if message_type == MessageType::InformationRequest => None,
        None => return Err(Ignored::MissingClientId),
    };
    let server_id = request.opts().iter().find_map(|o| match o {
        DhcpOption::ServerId(id) => Some(id.as_slice()),
        _ => None,
    });
    let ours = settings.server_duid.as_bytes();
    match (rule, server_id) {
        (ServerIdRule::MustBeAbsent, Some(_)) => return Err(Ignored::UnexpectedServerId),
        (ServerIdRule::MustBeOurs, None) => return Err(Ignored::MissingServerId),
        (ServerIdRule::MustBeOurs | ServerIdRule::OursIfPresent, Some(id)) if id != ours => {
            return Err(Ignored::NotForUs);
        }
        _ => {}
    }
    if message_type == MessageType::InformationRequest
        && request.opts().iter().any(|o| {
            matches!(
                o,
                DhcpOption::IANA(_) | DhcpOption::IATA(_) | DhcpOption::IAPD(_)
            )
        })
    {
        return Err(Ignored::Malformed(
            "information-request carries an IA option (RFC 8415 §16.12)".into(),
        ));
    }
    Ok(Valid { client_id, duid })
}

/// The reservation that matches: exact DUID first, then each MAC source in order of trust.
fn identify<'t, L: Lookup + ?Sized>(
    duid: Option<&Duid>,
    received: &Received,
    table: &'t L,
    settings: &Settings,
) -> Option<(ClientKey, &'t [Ipv6Addr])> {
    if let Some(duid) = duid {
        if let Some(addresses) = table.for_duid(duid) {
            return Some((ClientKey::Duid(duid.clone()), addresses));
        }
    }
    settings.mac_sources.iter().find_map(|source| {
        let mac = match source {
            MacSource::Frame => received.frame_mac,
            MacSource::Duid => duid.and_then(Duid::mac),
        }?;
        table
            .for_mac(&mac)
            .map(|addresses| (ClientKey::Mac(mac), addresses))
    })
}

struct Client {
    key: ClientKey,
    /// Reserved and not declined, in reservation order, without duplicates.
    addresses: Vec<Ipv6Addr>,
}

/// Which of the two lease-extending messages is being answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extend {
    Renew,
    Rebind,
}

/// One request being answered.
struct Exchange<'a> {
    request: &'a v6::Message,
    settings: &'a Settings,
    client_id: Option<&'a [u8]>,
    /// The client's usable addresses; `None` when no reservation matched.
    addresses: Option<&'a [Ipv6Addr]>,
}

impl Exchange<'_> {
    /// §18.3.10, §18.3.11: the transaction id is echoed; Server Identifier and the client's Client
    /// Identifier are always present.
    fn start(&self, message_type: MessageType) -> v6::Message {
        let mut message = v6::Message::new_with_id(message_type, self.request.xid());
        let opts = message.opts_mut();
        opts.insert(DhcpOption::ServerId(
            self.settings.server_duid.as_bytes().to_vec(),
        ));
        if let Some(id) = self.client_id {
            opts.insert(DhcpOption::ClientId(id.to_vec()));
        }
        message
    }

    fn offered(&self) -> &[Ipv6Addr] {
        self.addresses.unwrap_or_default()
    }

    fn ia_nas(&self) -> impl Iterator<Item = &IANA> {
        self.request.opts().iter().filter_map(|o| match o {
            DhcpOption::IANA(ia) => Some(ia),
            _ => None,
        })
    }

    /// IA_TA and IA_PD are not served: each gets its status inside it (§18.3.1, §18.3.2, §21.13).
    fn unserved_ias(&self) -> Vec<DhcpOption> {
        self.request
            .opts()
            .iter()
            .filter_map(|o| match o {
                DhcpOption::IATA(ia) => Some(DhcpOption::IATA(IATA {
                    id: ia.id,
                    opts: options([status(
                        Status::NoAddrsAvail,
                        "temporary addresses are not served",
                    )]),
                })),
                DhcpOption::IAPD(ia) => Some(DhcpOption::IAPD(IAPD {
                    id: ia.id,
                    t1: 0,
                    t2: 0,
                    opts: options([status(
                        Status::NoPrefixAvail,
                        "prefix delegation is not served",
                    )]),
                })),
                _ => None,
            })
            .collect()
    }

    fn requested(&self) -> Vec<OptionCode> {
        self.request
            .opts()
            .iter()
            .filter_map(|o| match o {
                DhcpOption::ORO(oro) => Some(oro.opts.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The other-configuration options asked for in the Option Request option (§18.3, §21.7) that
    /// are configured. A client that sent no Option Request option at all (WIDE `dhcp6c -i`
    /// sends an Information-request with only its Client Identifier and Elapsed Time) gets the
    /// DNS servers and the domain list: a server may send options that were not requested, and
    /// without them such a client learns nothing from the exchange.
    fn config_options(&self) -> Vec<DhcpOption> {
        let requested = self.requested();
        let sent_oro = self
            .request
            .opts()
            .iter()
            .any(|o| matches!(o, DhcpOption::ORO(_)));
        let wants = |code: OptionCode| {
            if sent_oro {
                requested.contains(&code)
            } else {
                matches!(
                    code,
                    OptionCode::DomainNameServers | OptionCode::DomainSearchList
                )
            }
        };
        let s = self.settings;
        let mut out = Vec::new();
        if wants(OptionCode::DomainNameServers) && !s.dns_servers.is_empty() {
            out.push(DhcpOption::DomainNameServers(s.dns_servers.clone()));
        }
        if wants(OptionCode::DomainSearchList) {
            let list = encode_domain_list(&s.domain_search);
            if !list.is_empty() {
                out.push(DhcpOption::Unknown(UnknownOption::new(
                    OptionCode::DomainSearchList,
                    list,
                )));
            }
        }
        if wants(OptionCode::SntpServers) && !s.ntp_servers.is_empty() {
            let bytes = s.ntp_servers.iter().flat_map(|a| a.octets()).collect();
            out.push(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::SntpServers,
                bytes,
            )));
        }
        if wants(OptionCode::NtpServer) && !s.ntp_servers.is_empty() {
            out.push(DhcpOption::NtpServer(
                s.ntp_servers
                    .iter()
                    .map(|a| NtpSuboption::ServerAddress(*a))
                    .collect(),
            ));
        }
        out
    }

    /// An IA_NA holding `current` with the configured lifetimes and `withdrawn` with lifetimes 0
    /// (§18.3.4, §21.4, §21.6).
    fn ia_na(&self, id: u32, current: &[Ipv6Addr], withdrawn: &[Ipv6Addr]) -> DhcpOption {
        let s = self.settings;
        let lifetimes = current
            .iter()
            .map(|a| (a, s.preferred_lifetime, s.valid_lifetime))
            .chain(withdrawn.iter().map(|a| (a, 0, 0)));
        let opts = lifetimes
            .map(|(addr, preferred_life, valid_life)| {
                DhcpOption::IAAddr(IAAddr {
                    addr: *addr,
                    preferred_life,
                    valid_life,
                    opts: v6::DhcpOptions::new(),
                })
            })
            .collect();
        let (t1, t2) = if current.is_empty() {
            (0, 0)
        } else {
            (s.t1, s.t2)
        };
        DhcpOption::IANA(IANA { id, t1, t2, opts })
    }

    /// §18.3.1, §18.3.9: Advertise the reserved addresses, or a committed Reply with Rapid Commit.
    fn solicit(&self) -> (v6::Message, Outcome) {
        let offered = self.offered();
        if offered.is_empty() || self.ia_nas().next().is_none() {
            // §18.3.9: nothing to assign in a later Request → only status, Server and Client ID.
            let mut message = self.start(MessageType::Advertise);
            message.opts_mut().insert(status(
                Status::NoAddrsAvail,
                "no addresses are reserved for this client",
            ));
            return (message, Outcome::NoAddrsAvail);
        }
        let rapid = self.settings.rapid_commit
            && self
                .request
                .opts()
                .iter()
                .any(|o| matches!(o, DhcpOption::RapidCommit));
        let (message_type, outcome) = if rapid {
            (MessageType::Reply, Outcome::RapidCommit)
        } else {
            (MessageType::Advertise, Outcome::Advertise)
        };
        let mut message = self.start(message_type);
        let opts = message.opts_mut();
        if rapid {
            opts.insert(DhcpOption::RapidCommit);
        } else {
            opts.insert(DhcpOption::Preference(self.settings.preference));
        }
        for ia in self.ia_nas() {
            opts.insert(self.ia_na(ia.id, offered, &[]));
        }
        for option in self.unserved_ias().into_iter().chain(self.config_options()) {
            opts.insert(option);
        }
        (message, outcome)
    }

    /// §18.3.2: assign the reserved addresses; an IA_NA that gets none carries NoAddrsAvail.
    fn assign(&self) -> (v6::Message, Outcome) {
        let offered = self.offered();
        let mut message = self.start(MessageType::Reply);
        let opts = message.opts_mut();
        let mut assigned = false;
        for ia in self.ia_nas() {
            if offered.is_empty() {
                opts.insert(DhcpOption::IANA(IANA {
                    id: ia.id,
                    t1: 0,
                    t2: 0,
                    opts: options([status(
                        Status::NoAddrsAvail,
                        "no addresses are reserved for this client",
                    )]),
                }));
            } else {
                assigned = true;
                opts.insert(self.ia_na(ia.id, offered, &[]));
            }
        }
        for option in self.unserved_ias().into_iter().chain(self.config_options()) {
            opts.insert(option);
        }
        let outcome = if assigned {
            Outcome::Reply
        } else {
            Outcome::NoAddrsAvail
        };
        (message, outcome)
    }

    /// §18.3.4 (Renew) and §18.3.5 (Rebind): answered from the reservation alone, so a restarted
    /// server serves renewals. Every usable reserved address is (re)assigned with the configured
    /// lifetimes; every address the client listed that is no longer its own gets lifetimes 0.
    /// Without a reservation a Renew gets NoBinding in each IA_NA, and a Rebind gets its addresses
    /// back with lifetimes 0 (they are not appropriate for this client on this link).
    fn extend(&self, which: Extend) -> (v6::Message, Outcome) {
        let mut message = self.start(MessageType::Reply);
        let opts = message.opts_mut();
        for ia in self.ia_nas() {
            let listed = listed_addresses(&ia.opts);
            let option = match (self.addresses, which) {
                (Some(current), _) => {
                    let withdrawn: Vec<Ipv6Addr> = listed
                        .into_iter()
                        .filter(|a| !current.contains(a))
                        .collect();
                    let mut option = self.ia_na(ia.id, current, &withdrawn);
                    if current.is_empty() {
                        add_status(
                            &mut option,
                            Status::NoAddrsAvail,
                            "every address reserved for this client was declined",
                        );
                    }
                    option
                }
                (None, Extend::Rebind) if !listed.is_empty() => self.ia_na(ia.id, &[], &listed),
                (None, _) => {
                    let mut option = self.ia_na(ia.id, &[], &[]);
                    add_status(
                        &mut option,
                        Status::NoBinding,
                        "no addresses are reserved for this client",
                    );
                    option
                }
            };
            opts.insert(option);
        }
        for option in self.unserved_ias().into_iter().chain(self.config_options()) {
            opts.insert(option);
        }
        let outcome = match (self.addresses.is_some(), which) {
            (true, Extend::Renew) => Outcome::Renewed,
            (true, Extend::Rebind) => Outcome::Rebound,
            (false, _) => Outcome::NoBinding,
        };
        (message, outcome)
    }

    /// §18.3.3: Success when every listed address is one of the client's usable reserved addresses,
    /// else NotOnLink (stricter than "on link": another client's address on our link is not this
    /// client's). `None` when nothing was listed — the server then sends no reply.
    fn confirm<L: Lookup + ?Sized>(&self, table: &L) -> Option<(v6::Message, Outcome)> {
        let listed: Vec<Ipv6Addr> = self
            .request
            .opts()
            .iter()
            .flat_map(|o| match o {
                DhcpOption::IANA(ia) => listed_addresses(&ia.opts),
                DhcpOption::IATA(ia) => listed_addresses(&ia.opts),
                _ => Vec::new(),
            })
            .collect();
        if listed.is_empty() {
            return None;
        }
        let own = self.offered();
        let mut message = self.start(MessageType::Reply);
        let outcome = match listed.iter().find(|a| !own.contains(a)) {
            None => {
                message
                    .opts_mut()
                    .insert(status(Status::Success, "all addresses still appropriate"));
                Outcome::Confirmed
            }
            Some(address) => {
                let why = if table.on_link(address) {
                    format!("{address} is not reserved for this client")
                } else {
                    format!("{address} is not on this link")
                };
                message.opts_mut().insert(status(Status::NotOnLink, why));
                Outcome::NotOnLink
            }
        };
        Some((message, outcome))
    }

    /// §18.3.7: we keep no bindings, so there is nothing to free; the reservation stays.
    fn release(&self) -> (v6::Message, Outcome) {
        let mut message = self.start(MessageType::Reply);
        message
            .opts_mut()
            .insert(status(Status::Success, "released"));
        (message, Outcome::Released)
    }

    /// §18.3.8: acknowledge, and hand the declined addresses to the shell to remember.
    fn decline(&self) -> (v6::Message, Outcome) {
        let mut declined: Vec<Ipv6Addr> = Vec::new();
        for address in self.ia_nas().flat_map(|ia| listed_addresses(&ia.opts)) {
            if !declined.contains(&address) {
                declined.push(address);
            }
        }
        let mut message = self.start(MessageType::Reply);
        message
            .opts_mut()
            .insert(status(Status::Success, "declined addresses noted"));
        (message, Outcome::Declined(declined))
    }

    /// §18.3.6: other configuration only, with the Information Refresh Time (§21.23).
    fn information(&self) -> (v6::Message, Outcome) {
        let mut message = self.start(MessageType::Reply);
        let opts = message.opts_mut();
        for option in self.config_options() {
            opts.insert(option);
        }
        opts.insert(DhcpOption::InformationRefreshTime(
            self.settings.info_refresh_time,
        ));
        (message, Outcome::InformationReply)
    }

    /// §18.4: a message we did not invite by unicast gets UseMulticast and nothing else.
    fn use_multicast(&self) -> (v6::Message, Outcome) {
        let mut message = self.start(MessageType::Reply);
        message.opts_mut().insert(status(
            Status::UseMulticast,
            "send to ff02::1:2, not to the server's address",
        ));
        (message, Outcome::UseMulticast)
    }
}

/// The addresses of the IAADDR options inside an IA.
fn listed_addresses(opts: &v6::DhcpOptions) -> Vec<Ipv6Addr> {
    opts.iter()
        .filter_map(|o| match o {
            DhcpOption::IAAddr(a) => Some(a.addr),
            _ => None,
        })
        .collect()
}

fn status(status: Status, msg: impl Into<String>) -> DhcpOption {
    DhcpOption::StatusCode(StatusCode {
        status,
        msg: msg.into(),
    })
}

fn options<const N: usize>(list: [DhcpOption; N]) -> v6::DhcpOptions {
    list.into_iter().collect()
}

fn add_status(ia: &mut DhcpOption, code: Status, msg: &str) {
    if let DhcpOption::IANA(ia) = ia {
        ia.opts.insert(status(code, msg));
    }
}

/// RFC 1035 §2.3.4: a label is at most 63 octets, an encoded name at most 255.
const MAX_LABEL: usize = 63;
const MAX_NAME: usize = 255;

/// The Domain Search List option body (RFC 3646 §4): each name in RFC 1035 §3.1 wire form, without
/// compression (RFC 8415 §10). A name that cannot be encoded is left out with a warning; config
/// validation should have refused it already.
fn encode_domain_list(names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for name in names {
        match encode_name(name) {
            Some(wire) => out.extend_from_slice(&wire),
            None => tracing::warn!(%name, "domain search entry cannot be encoded; left out"),
        }
    }
    out
}

fn encode_name(name: &str) -> Option<Vec<u8>> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return None;
    }
    let mut wire = Vec::with_capacity(trimmed.len() + 2);
    for label in trimmed.split('.') {
        let len = u8::try_from(label.len()).ok()?;
        if label.is_empty() || usize::from(len) > MAX_LABEL {
            return None;
        }
        wire.push(len);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    (wire.len() <= MAX_NAME).then_some(wire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::{Encodable, Encoder};
    use ipnet::Ipv6Net;
    use proptest::prelude::*;

    const XID: [u8; 3] = [0x12, 0x34, 0x56];
    const MAC_A: Mac = Mac([0x02, 0, 0, 0, 0, 0x0a]);
    const MAC_B: Mac = Mac([0x02, 0, 0, 0, 0, 0x0b]);
    const ADDR_A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xa);
    const ADDR_A2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xa2);
    const ADDR_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xb);
    const ADDR_D: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xd);
    const OFF_LINK: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
    const DNS: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53);
    const NTP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x123);

    /// An in-memory reservation table: MAC_A → ADDR_A, MAC_B → ADDR_B, and one DUID reservation.
    #[derive(Default)]
    struct Table {
        macs: Vec<(Mac, Vec<Ipv6Addr>)>,
        duids: Vec<(Duid, Vec<Ipv6Addr>)>,
    }

    impl Lookup for Table {
        fn for_mac(&self, mac: &Mac) -> Option<&[Ipv6Addr]> {
            self.macs
                .iter()
                .find(|(m, _)| m == mac)
                .map(|(_, a)| a.as_slice())
        }
        fn for_duid(&self, duid: &Duid) -> Option<&[Ipv6Addr]> {
            self.duids
                .iter()
                .find(|(d, _)| d == duid)
                .map(|(_, a)| a.as_slice())
        }
        fn on_link(&self, address: &Ipv6Addr) -> bool {
            let prefix: Ipv6Net = "2001:db8::/64".parse().expect("prefix");
            prefix.contains(address)
        }
    }

    fn table() -> Table {
        Table {
            macs: vec![(MAC_A, vec![ADDR_A]), (MAC_B, vec![ADDR_B])],
            duids: vec![(uuid_duid(), vec![ADDR_D])],
        }
    }

    fn server_duid() -> Duid {
        Duid::link_layer(Mac([0x02, 0, 0, 0, 0, 0x01]))
    }

    fn other_server() -> Duid {
        Duid::link_layer(Mac([0x02, 0, 0, 0, 0, 0x02]))
    }

    fn uuid_duid() -> Duid {
        "00:04:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00"
            .parse()
            .expect("uuid duid")
    }

    fn another_uuid_duid() -> Duid {
        "00:04:01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f:10"
            .parse()
            .expect("uuid duid")
    }

    fn settings() -> Settings {
        Settings {
            server_duid: server_duid(),
            preferred_lifetime: 3600,
            valid_lifetime: 7200,
            t1: 1800,
            t2: 2880,
            rapid_commit: true,
            preference: 255,
            dns_servers: vec![DNS],
            domain_search: vec!["pod.example".into(), "example.".into()],
            ntp_servers: vec![NTP],
            info_refresh_time: 86400,
            mac_sources: vec![MacSource::Frame, MacSource::Duid],
        }
    }

    fn from_frame(mac: Mac) -> Received {
        Received {
            frame_mac: Some(mac),
            unicast: false,
        }
    }

    fn nothing_declined(_: &ClientKey) -> Vec<Ipv6Addr> {
        Vec::new()
    }

    fn message(message_type: MessageType, opts: Vec<DhcpOption>) -> v6::Message {
        let mut m = v6::Message::new_with_id(message_type, XID);
        m.set_opts(opts.into_iter().collect());
        m
    }

    fn client_id(duid: &Duid) -> DhcpOption {
        DhcpOption::ClientId(duid.as_bytes().to_vec())
    }

    fn server_id(duid: &Duid) -> DhcpOption {
        DhcpOption::ServerId(duid.as_bytes().to_vec())
    }

    fn ia_na(id: u32, addresses: &[Ipv6Addr]) -> DhcpOption {
        DhcpOption::IANA(IANA {
            id,
            t1: 0,
            t2: 0,
            opts: addresses
                .iter()
                .map(|a| {
                    DhcpOption::IAAddr(IAAddr {
                        addr: *a,
                        preferred_life: 0,
                        valid_life: 0,
                        opts: v6::DhcpOptions::new(),
                    })
                })
                .collect(),
        })
    }

    fn oro(codes: &[OptionCode]) -> DhcpOption {
        DhcpOption::ORO(v6::ORO {
            opts: codes.to_vec(),
        })
    }

    fn run(request: &v6::Message, received: Received, table: &Table) -> Decision {
        reply(request, &received, table, &nothing_declined, &settings())
    }

    /// The reply of a decision, failing the test on Ignore.
    fn replied(decision: Decision) -> (v6::Message, Option<ClientKey>, Outcome) {
        match decision {
            Decision::Reply {
                message,
                client,
                outcome,
            } => (message, client, outcome),
            Decision::Ignore(why) => panic!("ignored: {why}"),
        }
    }

    fn ignored(decision: Decision) -> Ignored {
        match decision {
            Decision::Ignore(why) => why,
            Decision::Reply { outcome, .. } => panic!("replied with {outcome:?}"),
        }
    }

    fn top_status(m: &v6::Message) -> Option<Status> {
        m.opts().iter().find_map(|o| match o {
            DhcpOption::StatusCode(s) => Some(s.status),
            _ => None,
        })
    }

    fn ia_nas(m: &v6::Message) -> Vec<&IANA> {
        m.opts()
            .iter()
            .filter_map(|o| match o {
                DhcpOption::IANA(ia) => Some(ia),
                _ => None,
            })
            .collect()
    }

    /// (address, preferred, valid) of every IAADDR in an IA.
    fn leases(ia: &IANA) -> Vec<(Ipv6Addr, u32, u32)> {
        ia.opts
            .iter()
            .filter_map(|o| match o {
                DhcpOption::IAAddr(a) => Some((a.addr, a.preferred_life, a.valid_life)),
                _ => None,
            })
            .collect()
    }

    fn ia_status(ia: &IANA) -> Option<Status> {
        ia.opts.iter().find_map(|o| match o {
            DhcpOption::StatusCode(s) => Some(s.status),
            _ => None,
        })
    }

    /// Whether `m` holds an option `code` (also one this module encodes itself, as an unknown
    /// option: the domain list, SNTP).
    fn has(m: &v6::Message, code: OptionCode) -> bool {
        m.opts().iter().any(|o| match o {
            DhcpOption::Unknown(u) => u.code() == code,
            _ => OptionCode::from(o) == code,
        })
    }

    fn encode(m: &v6::Message) -> Vec<u8> {
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).expect("encode");
        buf
    }

    fn solicit(duid: &Duid, extra: Vec<DhcpOption>) -> v6::Message {
        let mut opts = vec![client_id(duid), ia_na(7, &[])];
        opts.extend(extra);
        message(MessageType::Solicit, opts)
    }

    fn to_us(message_type: MessageType, duid: &Duid, extra: Vec<DhcpOption>) -> v6::Message {
        let mut opts = vec![client_id(duid), server_id(&server_duid())];
        opts.extend(extra);
        message(message_type, opts)
    }

    #[test]
    fn solicit_with_reservation_is_advertised() {
        let duid = Duid::link_layer(MAC_A);
        let (m, client, outcome) =
            replied(run(&solicit(&duid, vec![]), from_frame(MAC_A), &table()));
        assert_eq!(outcome, Outcome::Advertise);
        assert_eq!(client, Some(ClientKey::Mac(MAC_A)));
        assert_eq!(m.msg_type(), MessageType::Advertise);
        assert_eq!(m.xid(), XID);
        assert!(m.opts().iter().any(|o| *o == server_id(&server_duid())));
        assert!(m.opts().iter().any(|o| *o == client_id(&duid)));
        assert!(m.opts().iter().any(|o| *o == DhcpOption::Preference(255)));
        assert!(!has(&m, OptionCode::RapidCommit));
        assert_eq!(top_status(&m), None);
        let ias = ia_nas(&m);
        assert_eq!(ias.len(), 1);
        assert_eq!((ias[0].id, ias[0].t1, ias[0].t2), (7, 1800, 2880));
        assert_eq!(leases(ias[0]), vec![(ADDR_A, 3600, 7200)]);
    }

    #[test]
    fn solicit_without_reservation_gets_no_addrs_avail() {
        let stranger = Mac([0x02, 0, 0, 0, 0, 0xee]);
        let (m, client, outcome) = replied(run(
            &solicit(
                &Duid::link_layer(stranger),
                vec![oro(&[OptionCode::DomainNameServers])],
            ),
            from_frame(stranger),
            &table(),
        ));
        assert_eq!(outcome, Outcome::NoAddrsAvail);
        assert_eq!(client, None);
        assert_eq!(m.msg_type(), MessageType::Advertise);
        assert_eq!(top_status(&m), Some(Status::NoAddrsAvail));
        assert!(ia_nas(&m).is_empty());
        // §18.3.9: only status, Server ID and Client ID.
        assert_eq!(m.opts().iter().count(), 3);
    }

    #[test]
    fn rapid_commit_is_honoured_only_when_enabled() {
        let request = solicit(&Duid::link_layer(MAC_A), vec![DhcpOption::RapidCommit]);
        let (m, _, outcome) = replied(run(&request, from_frame(MAC_A), &table()));
        assert_eq!(outcome, Outcome::RapidCommit);
        assert_eq!(m.msg_type(), MessageType::Reply);
        assert!(has(&m, OptionCode::RapidCommit));
        assert!(!has(&m, OptionCode::Preference));
        assert_eq!(leases(ia_nas(&m)[0]), vec![(ADDR_A, 3600, 7200)]);

        let off = Settings {
            rapid_commit: false,
            ..settings()
        };
        let (m, _, outcome) = replied(reply(
            &request,
            &from_frame(MAC_A),
            &table(),
            &nothing_declined,
            &off,
        ));
        assert_eq!(outcome, Outcome::Advertise);
        assert_eq!(m.msg_type(), MessageType::Advertise);
        assert!(!has(&m, OptionCode::RapidCommit));
    }

    #[test]
    fn duid_uuid_client_is_matched_by_frame_mac() {
        // The UUID is not reserved itself; only the frame says who this is.
        let (m, client, _) = replied(run(
            &solicit(&another_uuid_duid(), vec![]),
            from_frame(MAC_B),
            &table(),
        ));
        assert_eq!(client, Some(ClientKey::Mac(MAC_B)));
        assert_eq!(leases(ia_nas(&m)[0]), vec![(ADDR_B, 3600, 7200)]);
    }

    #[test]
    fn duid_llt_client_is_matched_by_the_mac_inside_without_a_frame_mac() {
        let only_duid = Settings {
            mac_sources: vec![MacSource::Duid],
            ..settings()
        };
        let llt = Duid::link_layer_time(MAC_A, 0x2a2b_2c2d);
        let (m, client, _) = replied(reply(
            &solicit(&llt, vec![]),
            &Received::default(),
            &table(),
            &nothing_declined,
            &only_duid,
        ));
        assert_eq!(client, Some(ClientKey::Mac(MAC_A)));
        assert_eq!(leases(ia_nas(&m)[0]), vec![(ADDR_A, 3600, 7200)]);

        // Frame only: the DUID's MAC is not trusted and there is no frame MAC.
        let only_frame = Settings {
            mac_sources: vec![MacSource::Frame],
            ..settings()
        };
        let (_, client, outcome) = replied(reply(
            &solicit(&llt, vec![]),
            &Received::default(),
            &table(),
            &nothing_declined,
            &only_frame,
        ));
        assert_eq!((client, outcome), (None, Outcome::NoAddrsAvail));
    }

    #[test]
    fn mac_sources_are_tried_in_order() {
        // Frame says B, DUID says A: the first source that has a reservation wins.
        let llt = Duid::link_layer_time(MAC_A, 1);
        let frame_first = Settings {
            mac_sources: vec![MacSource::Frame, MacSource::Duid],
            ..settings()
        };
        let duid_first = Settings {
            mac_sources: vec![MacSource::Duid, MacSource::Frame],
            ..settings()
        };
        let request = solicit(&llt, vec![]);
        let key = |s: &Settings| {
            replied(reply(
                &request,
                &from_frame(MAC_B),
                &table(),
                &nothing_declined,
                s,
            ))
            .1
        };
        assert_eq!(key(&frame_first), Some(ClientKey::Mac(MAC_B)));
        assert_eq!(key(&duid_first), Some(ClientKey::Mac(MAC_A)));
    }

    #[test]
    fn exact_duid_reservation_beats_mac() {
        let (m, client, _) = replied(run(
            &solicit(&uuid_duid(), vec![]),
            from_frame(MAC_A),
            &table(),
        ));
        assert_eq!(client, Some(ClientKey::Duid(uuid_duid())));
        assert_eq!(leases(ia_nas(&m)[0]), vec![(ADDR_D, 3600, 7200)]);
    }

    #[test]
    fn oro_selects_configured_options() {
        let duid = Duid::link_layer(MAC_A);
        // An Option Request option that asks for nothing: nothing given.
        let (m, _, _) = replied(run(
            &solicit(&duid, vec![oro(&[])]),
            from_frame(MAC_A),
            &table(),
        ));
        for code in [
            OptionCode::DomainNameServers,
            OptionCode::DomainSearchList,
            OptionCode::SntpServers,
            OptionCode::NtpServer,
            OptionCode::InformationRefreshTime,
        ] {
            assert!(!has(&m, code), "{code:?} not asked for");
        }
        // No Option Request option at all: DNS and the domain list, not NTP.
        let (m, _, _) = replied(run(&solicit(&duid, vec![]), from_frame(MAC_A), &table()));
        assert!(has(&m, OptionCode::DomainNameServers));
        assert!(has(&m, OptionCode::DomainSearchList));
        assert!(!has(&m, OptionCode::SntpServers));
        assert!(!has(&m, OptionCode::NtpServer));

        let all = oro(&[
            OptionCode::DomainNameServers,
            OptionCode::DomainSearchList,
            OptionCode::SntpServers,
            OptionCode::NtpServer,
        ]);
        let (m, _, _) = replied(run(
            &solicit(&duid, vec![all.clone()]),
            from_frame(MAC_A),
            &table(),
        ));
        assert!(
            m.opts()
                .iter()
                .any(|o| *o == DhcpOption::DomainNameServers(vec![DNS]))
        );
        assert!(
            m.opts()
                .iter()
                .any(|o| *o == DhcpOption::NtpServer(vec![NtpSuboption::ServerAddress(NTP)]))
        );
        let raw = |code: OptionCode| {
            m.opts().iter().find_map(|o| match o {
                DhcpOption::Unknown(u) if u.code() == code => Some(u.data().to_vec()),
                _ => None,
            })
        };
        assert_eq!(
            raw(OptionCode::DomainSearchList),
            Some(b"\x03pod\x07example\x00\x07example\x00".to_vec())
        );
        assert_eq!(raw(OptionCode::SntpServers), Some(NTP.octets().to_vec()));

        // The encoded reply decodes, and dhcproto reads our domain list as two names.
        let decoded = decode(&encode(&m)).expect("decode");
        let names = decoded.opts().iter().find_map(|o| match o {
            DhcpOption::DomainSearchList(names) => Some(names.clone()),
            _ => None,
        });
        let names: Vec<String> = names
            .expect("domain list")
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["pod.example.", "example."]);

        // Asked for but not configured: left out.
        let bare = Settings {
            dns_servers: vec![],
            domain_search: vec![],
            ntp_servers: vec![],
            ..settings()
        };
        let (m, _, _) = replied(reply(
            &solicit(&duid, vec![all]),
            &from_frame(MAC_A),
            &table(),
            &nothing_declined,
            &bare,
        ));
        assert!(!has(&m, OptionCode::DomainNameServers));
        assert!(!has(&m, OptionCode::DomainSearchList));
        assert!(!has(&m, OptionCode::NtpServer));
        assert!(!has(&m, OptionCode::SntpServers));
    }

    #[test]
    fn bad_domain_names_are_left_out() {
        let long_label = "a".repeat(64);
        assert_eq!(encode_name(&long_label), None);
        assert_eq!(encode_name("a..b"), None);
        assert_eq!(encode_name("."), None);
        assert_eq!(encode_name(""), None);
        let long_name = vec!["abcdefghi"; 30].join(".");
        assert_eq!(encode_name(&long_name), None);
        assert_eq!(
            encode_domain_list(&["x.".into(), long_label]),
            b"\x01x\x00".to_vec()
        );
    }

    #[test]
    fn request_is_answered_with_the_reserved_addresses() {
        let duid = Duid::link_layer(MAC_A);
        let request = to_us(
            MessageType::Request,
            &duid,
            vec![ia_na(7, &[ADDR_A]), oro(&[OptionCode::DomainNameServers])],
        );
        let (m, client, outcome) = replied(run(&request, from_frame(MAC_A), &table()));
        assert_eq!(outcome, Outcome::Reply);
        assert_eq!(client, Some(ClientKey::Mac(MAC_A)));
        assert_eq!(m.msg_type(), MessageType::Reply);
        assert!(!has(&m, OptionCode::Preference));
        assert!(has(&m, OptionCode::DomainNameServers));
        assert_eq!(leases(ia_nas(&m)[0]), vec![(ADDR_A, 3600, 7200)]);
    }

    #[test]
    fn request_without_reservation_gets_no_addrs_avail_in_the_ia() {
        let stranger = Mac([0x02, 0, 0, 0, 0, 0xee]);
        let request = to_us(
            MessageType::Request,
            &Duid::link_layer(stranger),
            vec![ia_na(7, &[])],
        );
        let (m, _, outcome) = replied(run(&request, from_frame(stranger), &table()));
        assert_eq!(outcome, Outcome::NoAddrsAvail);
        let ias = ia_nas(&m);
        assert_eq!(ia_status(ias[0]), Some(Status::NoAddrsAvail));
        assert!(leases(ias[0]).is_empty());
    }

    #[test]
    fn server_identifier_rules() {
        let duid = Duid::link_layer(MAC_A);
        let to_other = |t| {
            message(
                t,
                vec![client_id(&duid), server_id(&other_server()), ia_na(7, &[])],
            )
        };
        let bare = |t| message(t, vec![client_id(&duid), ia_na(7, &[ADDR_A])]);
        for t in [
            MessageType::Request,
            MessageType::Renew,
            MessageType::Release,
            MessageType::Decline,
        ] {
            let r = run(&to_other(t), from_frame(MAC_A), &table());
            assert_eq!(ignored(r), Ignored::NotForUs, "{t:?}");
            let r = run(&bare(t), from_frame(MAC_A), &table());
            assert_eq!(ignored(r), Ignored::MissingServerId, "{t:?}");
        }
        for t in [
            MessageType::Solicit,
            MessageType::Confirm,
            MessageType::Rebind,
        ] {
            let r = run(
                &to_us(t, &duid, vec![ia_na(7, &[ADDR_A])]),
                from_frame(MAC_A),
                &table(),
            );
            assert_eq!(ignored(r), Ignored::UnexpectedServerId, "{t:?}");
        }
        let info = message(
            MessageType::InformationRequest,
            vec![server_id(&other_server())],
        );
        assert_eq!(
            ignored(run(&info, Received::default(), &table())),
            Ignored::NotForUs
        );
    }

    #[test]
    fn client_identifier_is_required_except_for_information_request() {
        for t in [
            MessageType::Solicit,
            MessageType::Request,
            MessageType::Confirm,
            MessageType::Renew,
            MessageType::Rebind,
            MessageType::Release,
            MessageType::Decline,
        ] {
            let m = message(t, vec![server_id(&server_duid()), ia_na(1, &[ADDR_A])]);
            assert_eq!(
                ignored(run(&m, from_frame(MAC_A), &table())),
                Ignored::MissingClientId,
                "{t:?}"
            );
        }
        let short = message(MessageType::Solicit, vec![DhcpOption::ClientId(vec![0, 1])]);
        assert!(matches!(
            ignored(run(&short, from_frame(MAC_A), &table())),
            Ignored::Malformed(_)
        ));
    }

    #[test]
    fn unicast_gets_use_multicast() {
        let duid = Duid::link_layer(MAC_A);
        let unicast = Received {
            frame_mac: Some(MAC_A),
            unicast: true,
        };
        for t in [
            MessageType::Request,
            MessageType::Renew,
            MessageType::Release,
            MessageType::Decline,
        ] {
            let request = to_us(t, &duid, vec![ia_na(7, &[ADDR_A])]);
            let (m, _, outcome) = replied(run(&request, unicast, &table()));
            assert_eq!(outcome, Outcome::UseMulticast, "{t:?}");
            assert_eq!(top_status(&m), Some(Status::UseMulticast));
            assert!(ia_nas(&m).is_empty());
            assert_eq!(
                m.opts().iter().count(),
                3,
                "status, server and client id only"
            );
        }
        // Still not for us when it names another server.
        let other = message(
            MessageType::Request,
            vec![client_id(&duid), server_id(&other_server())],
        );
        assert_eq!(ignored(run(&other, unicast, &table())), Ignored::NotForUs);
    }

    #[test]
    fn renew_after_reservation_change_withdraws_the_old_address() {
        let duid = Duid::link_layer(MAC_A);
        let changed = Table {
            macs: vec![(MAC_A, vec![ADDR_A2])],
            ..Table::default()
        };
        let request = to_us(MessageType::Renew, &duid, vec![ia_na(7, &[ADDR_A])]);
        let (m, client, outcome) = replied(run(&request, from_frame(MAC_A), &changed));
        assert_eq!(outcome, Outcome::Renewed);
        assert_eq!(client, Some(ClientKey::Mac(MAC_A)));
        let ias = ia_nas(&m);
        assert_eq!((ias[0].id, ias[0].t1, ias[0].t2), (7, 1800, 2880));
        assert_eq!(leases(ias[0]), vec![(ADDR_A2, 3600, 7200), (ADDR_A, 0, 0)]);
        assert_eq!(ia_status(ias[0]), None);
    }

    #[test]
    fn renew_of_an_unchanged_reservation_is_served_without_lease_state() {
        let duid = Duid::link_layer(MAC_A);
        let request = to_us(MessageType::Renew, &duid, vec![ia_na(7, &[ADDR_A])]);
        let (m, _, outcome) = replied(run(&request, from_frame(MAC_A), &table()));
        assert_eq!(outcome, Outcome::Renewed);
        assert_eq!(leases(ia_nas(&m)[0]), vec![(ADDR_A, 3600, 7200)]);
    }

    #[test]
    fn renew_without_reservation_gets_no_binding() {
        let stranger = Mac([0x02, 0, 0, 0, 0, 0xee]);
        let request = to_us(
            MessageType::Renew,
            &Duid::link_layer(stranger),
            vec![ia_na(7, &[ADDR_A])],
        );
        let (m, client, outcome) = replied(run(&request, from_frame(stranger), &table()));
        assert_eq!((client, outcome), (None, Outcome::NoBinding));
        let ias = ia_nas(&m);
        assert_eq!(ia_status(ias[0]), Some(Status::NoBinding));
        assert!(leases(ias[0]).is_empty());
        assert_eq!((ias[0].t1, ias[0].t2), (0, 0));
    }

    #[test]
    fn rebind_of_a_foreign_address_gets_lifetimes_zero() {
        let duid = Duid::link_layer(MAC_A);
        let request = message(
            MessageType::Rebind,
            vec![client_id(&duid), ia_na(7, &[ADDR_B])],
        );
        let (m, _, outcome) = replied(run(&request, from_frame(MAC_A), &table()));
        assert_eq!(outcome, Outcome::Rebound);
        assert_eq!(
            leases(ia_nas(&m)[0]),
            vec![(ADDR_A, 3600, 7200), (ADDR_B, 0, 0)]
        );

        // Without any reservation the listed addresses come back with lifetimes 0.
        let stranger = Mac([0x02, 0, 0, 0, 0, 0xee]);
        let request = message(
            MessageType::Rebind,
            vec![client_id(&Duid::link_layer(stranger)), ia_na(7, &[ADDR_B])],
        );
        let (m, client, outcome) = replied(run(&request, from_frame(stranger), &table()));
        assert_eq!((client, outcome), (None, Outcome::NoBinding));
        let ias = ia_nas(&m);
        assert_eq!(leases(ias[0]), vec![(ADDR_B, 0, 0)]);
        assert_eq!(ia_status(ias[0]), None);
    }

    #[test]
    fn confirm_of_own_addresses_is_success() {
        let duid = Duid::link_layer(MAC_A);
        let request = message(
            MessageType::Confirm,
            vec![client_id(&duid), ia_na(7, &[ADDR_A])],
        );
        let (m, _, outcome) = replied(run(&request, from_frame(MAC_A), &table()));
        assert_eq!(outcome, Outcome::Confirmed);
        assert_eq!(m.msg_type(), MessageType::Reply);
        assert_eq!(top_status(&m), Some(Status::Success));
        assert!(ia_nas(&m).is_empty());
    }

    #[test]
    fn confirm_of_a_foreign_address_is_not_on_link() {
        let duid = Duid::link_layer(MAC_A);
        let status_text = |m: &v6::Message| {
            m.opts().iter().find_map(|o| match o {
                DhcpOption::StatusCode(s) => Some(s.msg.clone()),
                _ => None,
            })
        };
        // Another client's address on our link.
        let request = message(
            MessageType::Confirm,
            vec![client_id(&duid), ia_na(7, &[ADDR_A, ADDR_B])],
        );
        let (m, _, outcome) = replied(run(&request, from_frame(MAC_A), &table()));
        assert_eq!(outcome, Outcome::NotOnLink);
        assert_eq!(top_status(&m), Some(Status::NotOnLink));
        assert!(status_text(&m).is_some_and(|t| t.contains("not reserved")));
        // An address from elsewhere.
        let request = message(
            MessageType::Confirm,
            vec![client_id(&duid), ia_na(7, &[OFF_LINK])],
        );
        let (m, _, _) = replied(run(&request, from_frame(MAC_A), &table()));
        assert!(status_text(&m).is_some_and(|t| t.contains("not on this link")));
    }

    #[test]
    fn confirm_without_addresses_is_ignored() {
        let duid = Duid::link_layer(MAC_A);
        let request = message(MessageType::Confirm, vec![client_id(&duid), ia_na(7, &[])]);
        assert_eq!(
            ignored(run(&request, from_frame(MAC_A), &table())),
            Ignored::NothingToConfirm
        );
    }

    #[test]
    fn release_is_acknowledged_with_success() {
        let duid = Duid::link_layer(MAC_A);
        let request = to_us(MessageType::Release, &duid, vec![ia_na(7, &[ADDR_A])]);
        let (m, client, outcome) = replied(run(&request, from_frame(MAC_A), &table()));
        assert_eq!(outcome, Outcome::Released);
        assert_eq!(client, Some(ClientKey::Mac(MAC_A)));
        assert_eq!(top_status(&m), Some(Status::Success));
    }

    #[test]
    fn declined_addresses_are_reported_and_not_offered_again() {
        let duid = Duid::link_layer(MAC_A);
        let two = Table {
            macs: vec![(MAC_A, vec![ADDR_A, ADDR_A2])],
            ..Table::default()
        };
        let request = to_us(MessageType::Decline, &duid, vec![ia_na(7, &[ADDR_A])]);
        let (m, client, outcome) = replied(run(&request, from_frame(MAC_A), &two));
        assert_eq!(outcome, Outcome::Declined(vec![ADDR_A]));
        assert_eq!(outcome.label(), "declined");
        assert_eq!(top_status(&m), Some(Status::Success));

        // The shell remembers the decline for this key.
        let key = client.expect("client key");
        let declined = move |k: &ClientKey| {
            if *k == key { vec![ADDR_A] } else { Vec::new() }
        };
        let (m, _, outcome) = replied(reply(
            &solicit(&duid, vec![]),
            &from_frame(MAC_A),
            &two,
            &declined,
            &settings(),
        ));
        assert_eq!(outcome, Outcome::Advertise);
        assert_eq!(leases(ia_nas(&m)[0]), vec![(ADDR_A2, 3600, 7200)]);

        // All declined: nothing left to offer.
        let (m, _, outcome) = replied(reply(
            &solicit(&duid, vec![]),
            &from_frame(MAC_A),
            &table(),
            &declined,
            &settings(),
        ));
        assert_eq!(outcome, Outcome::NoAddrsAvail);
        assert_eq!(top_status(&m), Some(Status::NoAddrsAvail));

        // A Renew then keeps the reservation (no NoBinding) but withdraws the declined address.
        let renew = to_us(MessageType::Renew, &duid, vec![ia_na(7, &[ADDR_A])]);
        let (m, _, outcome) = replied(reply(
            &renew,
            &from_frame(MAC_A),
            &table(),
            &declined,
            &settings(),
        ));
        assert_eq!(outcome, Outcome::Renewed);
        let ias = ia_nas(&m);
        assert_eq!(leases(ias[0]), vec![(ADDR_A, 0, 0)]);
        assert_eq!(ia_status(ias[0]), Some(Status::NoAddrsAvail));
    }

    #[test]
    fn information_request_without_reservation_is_answered() {
        let stranger = another_uuid_duid();
        let request = message(
            MessageType::InformationRequest,
            vec![
                client_id(&stranger),
                oro(&[
                    OptionCode::DomainNameServers,
                    OptionCode::InformationRefreshTime,
                ]),
            ],
        );
        let (m, client, outcome) = replied(run(&request, Received::default(), &table()));
        assert_eq!((client, outcome), (None, Outcome::InformationReply));
        assert_eq!(m.msg_type(), MessageType::Reply);
        assert!(
            m.opts()
                .iter()
                .any(|o| *o == DhcpOption::InformationRefreshTime(86400))
        );
        assert!(has(&m, OptionCode::DomainNameServers));
        assert!(m.opts().iter().any(|o| *o == client_id(&stranger)));
        assert!(ia_nas(&m).is_empty());

        // No Client ID, no ORO (WIDE dhcp6c -i): still the refresh time and our Server ID, and
        // the DNS servers and domain list it did not know to ask for.
        let anonymous = message(MessageType::InformationRequest, vec![]);
        let (m, _, _) = replied(run(&anonymous, Received::default(), &table()));
        assert!(has(&m, OptionCode::InformationRefreshTime));
        assert!(has(&m, OptionCode::ServerId));
        assert!(!has(&m, OptionCode::ClientId));
        assert!(has(&m, OptionCode::DomainNameServers));
        assert!(has(&m, OptionCode::DomainSearchList));
        assert!(!has(&m, OptionCode::NtpServer));

        // Our own Server ID is fine.
        let named = message(
            MessageType::InformationRequest,
            vec![server_id(&server_duid())],
        );
        assert!(matches!(
            run(&named, Received::default(), &table()),
            Decision::Reply { .. }
        ));
    }

    #[test]
    fn information_request_with_an_ia_is_ignored() {
        let request = message(
            MessageType::InformationRequest,
            vec![client_id(&uuid_duid()), ia_na(1, &[])],
        );
        assert!(matches!(
            ignored(run(&request, Received::default(), &table())),
            Ignored::Malformed(_)
        ));
    }

    #[test]
    fn temporary_addresses_and_prefixes_are_not_served() {
        let duid = Duid::link_layer(MAC_A);
        let request = solicit(
            &duid,
            vec![
                DhcpOption::IATA(IATA {
                    id: 3,
                    opts: v6::DhcpOptions::new(),
                }),
                DhcpOption::IAPD(IAPD {
                    id: 4,
                    t1: 0,
                    t2: 0,
                    opts: v6::DhcpOptions::new(),
                }),
            ],
        );
        let (m, _, outcome) = replied(run(&request, from_frame(MAC_A), &table()));
        assert_eq!(outcome, Outcome::Advertise);
        let inner = |o: &DhcpOption| match o {
            DhcpOption::IATA(ia) => Some((ia.id, top_status_of(&ia.opts))),
            DhcpOption::IAPD(ia) => Some((ia.id, top_status_of(&ia.opts))),
            _ => None,
        };
        let found: Vec<_> = m.opts().iter().filter_map(inner).collect();
        assert_eq!(
            found,
            vec![
                (3, Some(Status::NoAddrsAvail)),
                (4, Some(Status::NoPrefixAvail))
            ]
        );
    }

    fn top_status_of(opts: &v6::DhcpOptions) -> Option<Status> {
        opts.iter().find_map(|o| match o {
            DhcpOption::StatusCode(s) => Some(s.status),
            _ => None,
        })
    }

    #[test]
    fn relay_and_server_messages_are_ignored() {
        let duid = Duid::link_layer(MAC_A);
        for (t, want) in [
            (MessageType::RelayForw, Ignored::RelayMessage),
            (MessageType::RelayRepl, Ignored::RelayMessage),
            (
                MessageType::Advertise,
                Ignored::NotAClientMessage(MessageType::Advertise),
            ),
            (
                MessageType::Reply,
                Ignored::NotAClientMessage(MessageType::Reply),
            ),
            (
                MessageType::Reconfigure,
                Ignored::NotAClientMessage(MessageType::Reconfigure),
            ),
        ] {
            let m = message(t, vec![client_id(&duid), server_id(&server_duid())]);
            assert_eq!(ignored(run(&m, from_frame(MAC_A), &table())), want);
        }
        // Relay-forward bytes: hop count, link and peer address, then a Relay Message option.
        let mut relay = vec![12, 0];
        relay.extend_from_slice(&[0; 32]);
        relay.extend_from_slice(&[0, 9, 0, 4, 1, 0, 0, 1]);
        let decision = reply_to_bytes(
            &relay,
            &from_frame(MAC_A),
            &table(),
            &nothing_declined,
            &settings(),
        );
        assert_eq!(ignored(decision), Ignored::RelayMessage);
    }

    #[test]
    fn transaction_id_is_echoed() {
        let duid = Duid::link_layer(MAC_A);
        for xid in [[0, 0, 0], [0xff, 0xfe, 0xfd], [1, 2, 3]] {
            let mut request = solicit(&duid, vec![]);
            request.set_xid(xid);
            let (m, _, _) = replied(run(&request, from_frame(MAC_A), &table()));
            assert_eq!(m.xid(), xid);
        }
    }

    #[test]
    fn bytes_round_trip_through_reply_to_bytes() {
        let duid = Duid::link_layer(MAC_A);
        let request = solicit(&duid, vec![oro(&[OptionCode::DomainNameServers])]);
        let decision = reply_to_bytes(
            &encode(&request),
            &from_frame(MAC_A),
            &table(),
            &nothing_declined,
            &settings(),
        );
        let (m, _, outcome) = replied(decision);
        assert_eq!(outcome, Outcome::Advertise);
        assert_eq!(m.xid(), XID);
        let back = decode(&encode(&m)).expect("reply decodes");
        assert_eq!(back.msg_type(), MessageType::Advertise);
        assert_eq!(back, m);
    }

    #[test]
    fn hostile_bytes_are_malformed_not_panics() {
        let malformed = |bytes: &[u8]| {
            matches!(
                reply_to_bytes(
                    bytes,
                    &from_frame(MAC_A),
                    &table(),
                    &nothing_declined,
                    &settings()
                ),
                Decision::Ignore(Ignored::Malformed(_))
            )
        };
        assert!(malformed(&[]));
        assert!(malformed(&[1, 0, 0]));
        // A Status Code of length 0 would underflow inside dhcproto.
        assert!(malformed(&[1, 0, 0, 0, 0, 13, 0, 0]));
        // Vendor Class of length 1, same.
        assert!(malformed(&[1, 0, 0, 0, 0, 16, 0, 1, 0]));
        // An option longer than the message, and a stray octet after the last option.
        assert!(malformed(&[1, 0, 0, 0, 0, 1, 0, 9, 0, 1]));
        assert!(malformed(&[1, 0, 0, 0, 0, 14, 0, 0, 7]));
        // Preference with a wrong length would shift the decoder off the option boundaries.
        assert!(malformed(&[1, 0, 0, 0, 0, 7, 0, 2, 0, 0]));
        // IA_NA nested in IA_NA thousands of times would exhaust the stack.
        let mut bomb: Vec<u8> = Vec::new();
        for _ in 0..4000 {
            let len = u16::try_from(bomb.len() + 12).expect("fits");
            let mut outer = vec![0, 3];
            outer.extend_from_slice(&len.to_be_bytes());
            outer.extend_from_slice(&[0; 12]);
            outer.extend_from_slice(&bomb);
            bomb = outer;
            if bomb.len() > 60000 {
                break;
            }
        }
        let mut message = vec![1, 0, 0, 0];
        message.extend_from_slice(&bomb);
        assert!(malformed(&message));
    }

    #[test]
    fn reservations_table_is_a_lookup() {
        let table = super::super::reservations::Reservations::parse(
            br#"{ "revision": 1, "reservations": [
                { "mac": "02:00:00:00:00:0a", "addresses": ["2001:db8::a"] },
                { "duid": "00:04:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00",
                  "addresses": ["2001:db8::d"] } ] }"#,
        )
        .expect("reservations");
        assert_eq!(Lookup::for_mac(&table, &MAC_A), Some(&[ADDR_A][..]));
        assert_eq!(Lookup::for_duid(&table, &uuid_duid()), Some(&[ADDR_D][..]));
        assert!(Lookup::on_link(&table, &ADDR_B));
        assert!(!Lookup::on_link(&table, &OFF_LINK));
        let (m, client, _) = replied(reply(
            &solicit(&uuid_duid(), vec![]),
            &Received::default(),
            &table,
            &nothing_declined,
            &settings(),
        ));
        assert_eq!(client, Some(ClientKey::Duid(uuid_duid())));
        assert_eq!(leases(ia_nas(&m)[0]), vec![(ADDR_D, 3600, 7200)]);
    }

    #[test]
    fn labels_are_distinct() {
        let outcomes = [
            Outcome::Advertise,
            Outcome::RapidCommit,
            Outcome::Reply,
            Outcome::Renewed,
            Outcome::Rebound,
            Outcome::Confirmed,
            Outcome::NotOnLink,
            Outcome::Released,
            Outcome::Declined(vec![]),
            Outcome::InformationReply,
            Outcome::NoAddrsAvail,
            Outcome::NoBinding,
            Outcome::UseMulticast,
        ];
        let mut labels: Vec<&str> = outcomes.iter().map(Outcome::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), outcomes.len());
    }

    /// Option TLVs built from codes the decoder treats specially, with lengths that may lie.
    fn tlv_bytes() -> impl Strategy<Value = Vec<u8>> {
        let code = prop::sample::select(vec![
            1u16, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 16, 17, 19, 20, 23, 24, 25, 26, 32, 56,
            999,
        ]);
        let option = (
            code,
            any::<bool>(),
            0u16..64,
            prop::collection::vec(any::<u8>(), 0..48),
        )
            .prop_map(|(code, honest, lie, body)| {
                let len = if honest {
                    u16::try_from(body.len()).unwrap_or(0)
                } else {
                    lie
                };
                let mut out = code.to_be_bytes().to_vec();
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&body);
                out
            });
        (
            0u8..16,
            prop::collection::vec(option, 0..8),
            prop::collection::vec(any::<u8>(), 0..4),
        )
            .prop_map(|(message_type, options, tail)| {
                let mut out = vec![message_type, 1, 2, 3];
                out.extend(options.into_iter().flatten());
                out.extend(tail);
                out
            })
    }

    #[derive(Debug, Clone)]
    struct Generated {
        message_type: MessageType,
        xid: [u8; 3],
        client: u8,
        uuid: bool,
        ias: Vec<(u32, Vec<u8>)>,
        oro: Vec<u16>,
        rapid: bool,
        with_frame: bool,
    }

    fn generated() -> impl Strategy<Value = Generated> {
        (
            prop::sample::select(vec![
                MessageType::Solicit,
                MessageType::Request,
                MessageType::Renew,
            ]),
            any::<[u8; 3]>(),
            0u8..4,
            any::<bool>(),
            prop::collection::vec((any::<u32>(), prop::collection::vec(0u8..4, 0..3)), 0..3),
            prop::collection::vec(prop::sample::select(vec![23u16, 24, 31, 32, 56, 82]), 0..5),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(message_type, xid, client, uuid, ias, oro, rapid, with_frame)| Generated {
                    message_type,
                    xid,
                    client,
                    uuid,
                    ias,
                    oro,
                    rapid,
                    with_frame,
                },
            )
    }

    fn build(g: &Generated) -> (v6::Message, Received) {
        let macs = [MAC_A, MAC_B, Mac([0x02, 0, 0, 0, 0, 0xee]), MAC_A];
        let mac = macs[usize::from(g.client) % macs.len()];
        let duid = if g.uuid {
            uuid_duid()
        } else {
            Duid::link_layer(mac)
        };
        let pool = [ADDR_A, ADDR_A2, ADDR_B, OFF_LINK];
        let mut opts = vec![client_id(&duid)];
        if g.message_type != MessageType::Solicit {
            opts.push(server_id(&server_duid()));
        }
        for (id, picks) in &g.ias {
            let addresses: Vec<Ipv6Addr> = picks
                .iter()
                .map(|p| pool[usize::from(*p) % pool.len()])
                .collect();
            opts.push(ia_na(*id, &addresses));
        }
        if !g.oro.is_empty() {
            opts.push(oro(&g
                .oro
                .iter()
                .map(|c| OptionCode::from(*c))
                .collect::<Vec<_>>()));
        }
        if g.rapid {
            opts.push(DhcpOption::RapidCommit);
        }
        let mut m = message(g.message_type, opts);
        m.set_xid(g.xid);
        let received = Received {
            frame_mac: g.with_frame.then_some(mac),
            unicast: false,
        };
        (m, received)
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = reply_to_bytes(&bytes, &from_frame(MAC_A), &table(), &nothing_declined, &settings());
        }

        #[test]
        fn option_shaped_bytes_never_panic(bytes in tlv_bytes()) {
            let _ = reply_to_bytes(&bytes, &from_frame(MAC_A), &table(), &nothing_declined, &settings());
        }

        #[test]
        fn replies_to_valid_messages_encode(g in generated()) {
            let (request, received) = build(&g);
            // The request survives the wire too.
            let decision = reply_to_bytes(&encode(&request), &received, &table(), &nothing_declined, &settings());
            prop_assert_eq!(&decision, &reply(&request, &received, &table(), &nothing_declined, &settings()));
            match decision {
                Decision::Reply { message, .. } => {
                    let mut buf = Vec::new();
                    prop_assert!(message.encode(&mut Encoder::new(&mut buf)).is_ok());
                    let back = decode(&buf);
                    prop_assert!(back.is_ok(), "reply does not decode: {:?}", back);
                    let back = back.unwrap_or_default();
                    prop_assert_eq!(back.xid(), g.xid);
                    prop_assert!(matches!(back.msg_type(), MessageType::Advertise | MessageType::Reply));
                }
                Decision::Ignore(why) => prop_assert!(false, "ignored: {}", why),
            }
        }
    }

    #[test]
    fn an_option_dhcproto_cannot_decode_makes_the_message_malformed() {
        // A Confirm for the client's own address and a foreign one, with an undecodable NTP option
        // between them: without the count check the foreign IAADDR vanished and the Confirm
        // succeeded.
        let hex = "0428d7c1\
                   0001000a0003000102f600000301\
                   000800020000\
                   0003005b000000010000000000000000\
                   0005001820010db8000100310000000000000001\
                   0000000000000000\
                   003800130001000f000000000000000000000000000000\
                   0005001820010db8ffff00000000000000000001\
                   0000000000000000";
        let clean: String = hex.split_whitespace().collect();
        let bytes: Vec<u8> = (0..clean.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&clean[i..i + 2], 16).expect("hex"))
            .collect();
        match decode(&bytes) {
            Err(Ignored::Malformed(why)) => assert!(why.contains("could not be decoded"), "{why}"),
            other => panic!("expected Malformed, got {other:?}"),
        }
        // An odd-length Option Request is malformed too.
        let oro = [11u8, 0, 0, 1, 0, 6, 0, 1, 23];
        assert!(matches!(decode(&oro), Err(Ignored::Malformed(_))));
    }
}
