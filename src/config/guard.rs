//! `role = "guard"`: per-instance nftables rules on a hypervisor.

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::problems::Checker;
use super::source::{SourceConfig, SourceWire};

/// A validated guard config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// The only nftables table the guard touches.
    pub table: String,
    /// How strictly an instance's IPv6 source address is checked.
    pub anti_spoofing: AntiSpoofing,
    /// What happens to egress traffic no rule matches.
    pub egress: EgressDefault,
    /// Link-local addresses of the segment's routers (and VRs): no instance port may send from
    /// them or claim them in a Neighbor Advertisement. Sorted, without duplicates.
    pub router_link_local: Vec<Ipv6Addr>,
    /// Where persistent state lives (the last document); created if missing.
    pub state_dir: PathBuf,
    /// Where `/metrics` and `/status` are served; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the ports document comes from.
    pub source: SourceConfig,
}

/// Source-address enforcement on instance ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AntiSpoofing {
    /// Only the port's own /128s (plus link-local and :: for DAD).
    Address,
    /// Anything inside the port's /64.
    Prefix,
}

/// Default verdict for egress traffic that no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressDefault {
    /// Allow it.
    Allow,
    /// Drop it.
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GuardFile {
    #[allow(dead_code)]
    role: String,
    table: Option<String>,
    anti_spoofing: Option<String>,
    egress: Option<String>,
    #[serde(default)]
    router_link_local: Vec<String>,
    state_dir: Option<String>,
    metrics_listen: Option<String>,
    source: Option<SourceWire>,
}

/// nftables identifiers: a letter, then letters, digits, `_`; we keep them short.
fn table_name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 64 {
        Some(format!(
            "{name:?} is not an nftables table name (a letter, then letters, digits or _; at most 64)"
        ))
    } else {
        None
    }
}

impl GuardFile {
    pub(crate) fn validate(self, check: &mut Checker) -> Option<GuardConfig> {
        let table = self.table.unwrap_or_else(|| "flat6".into());
        if let Some(problem) = table_name_problem(&table) {
            check.problem("table", problem);
        }
        let anti_spoofing = match self.anti_spoofing.as_deref() {
            None | Some("address") => Some(AntiSpoofing::Address),
            Some("prefix") => Some(AntiSpoofing::Prefix),
            Some(other) => {
                check.problem(
                    "anti_spoofing",
                    format!("{other:?} is not a mode; expected \"address\" or \"prefix\""),
                );
                None
            }
        };
        let egress = match self.egress.as_deref() {
            None | Some("allow") => Some(EgressDefault::Allow),
            Some("deny") => Some(EgressDefault::Deny),
            Some(other) => {
                check.problem(
                    "egress",
                    format!("{other:?} is not a default; expected \"allow\" or \"deny\""),
                );
                None
            }
        };
        let mut router_link_local = Vec::new();
        for (i, text) in self.router_link_local.iter().enumerate() {
            let path = format!("router_link_local[{i}]");
            if let Some(addr) = check.ipv6(&path, text) {
                if (addr.segments()[0] & 0xffc0) != 0xfe80 {
                    check.problem(
                        &path,
                        format!("{addr} is not a link-local address (fe80::/10)"),
                    );
                } else {
                    router_link_local.push(addr);
                }
            }
        }
        router_link_local.sort_unstable();
        router_link_local.dedup();
        let metrics_listen = self
            .metrics_listen
            .and_then(|text| check.parse::<SocketAddr>("metrics_listen", &text));
        let source = check
            .required("source", self.source)
            .and_then(|s| s.validate(check, "host"));
        Some(GuardConfig {
            table,
            anti_spoofing: anti_spoofing?,
            egress: egress?,
            router_link_local,
            state_dir: PathBuf::from(
                self.state_dir
                    .unwrap_or_else(|| "/var/lib/flat6/guard".into()),
            ),
            metrics_listen,
            source: source?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, parse};
    use super::*;

    #[test]
    fn the_issue_example_is_valid() {
        let config = parse(
            "role = \"guard\"\ntable = \"flat6\"\nanti_spoofing = \"address\"\negress = \"allow\"\n[source]\nfile = \"/var/lib/flat6/guard/ports.json\"\n",
        );
        let Ok(Config::Guard(g)) = config else {
            panic!("expected a guard config, got {config:?}");
        };
        assert_eq!(g.table, "flat6");
        assert_eq!(g.anti_spoofing, AntiSpoofing::Address);
        assert_eq!(g.egress, EgressDefault::Allow);
    }

    #[test]
    fn negative_cases() {
        let text =
            "role = \"guard\"\ntable = \"1x\"\nanti_spoofing = \"mac\"\negress = \"maybe\"\n";
        let got: Vec<String> = match parse(text) {
            Ok(c) => panic!("expected problems, got {c:?}"),
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].starts_with("table: \"1x\" is not an nftables table name"));
        assert!(got[1].starts_with("anti_spoofing: \"mac\" is not a mode"));
        assert!(got[2].starts_with("egress: \"maybe\" is not a default"));
        assert_eq!(got[3], "source: missing (required)");
    }

    #[test]
    fn router_link_local_takes_link_local_addresses_only() {
        let ok = parse(
            "role = \"guard\"\nrouter_link_local = [\"fe80::2\", \"fe80::1\", \"fe80::2\"]\n[source]\nfile = \"/p.json\"\n",
        );
        let Ok(Config::Guard(g)) = ok else {
            panic!("expected a guard config, got {ok:?}");
        };
        assert_eq!(
            g.router_link_local,
            [
                "fe80::1".parse::<Ipv6Addr>().unwrap(),
                "fe80::2".parse().unwrap()
            ]
        );
        let bad = parse(
            "role = \"guard\"\nrouter_link_local = [\"2001:db8::1\", \"router\"]\n[source]\nfile = \"/p.json\"\n",
        );
        let got: Vec<String> = match bad {
            Ok(c) => panic!("expected problems, got {c:?}"),
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(
            got,
            [
                "router_link_local[0]: 2001:db8::1 is not a link-local address (fe80::/10)",
                "router_link_local[1]: \"router\" is not an IPv6 address"
            ]
        );
    }

    #[test]
    fn controller_source_needs_a_host() {
        let text = "role = \"guard\"\n[source]\ncontroller = \"http://[::1]:8640\"\npod = \"p\"\ntoken_file = \"/t\"\n";
        let got: Vec<String> = match parse(text) {
            Ok(c) => panic!("expected problems, got {c:?}"),
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        };
        assert!(
            got.contains(&"source.pod: not used by this role; it follows one host".to_string()),
            "{got:?}"
        );
        assert!(
            got.contains(&"source.host: missing (required)".to_string()),
            "{got:?}"
        );
    }
}
