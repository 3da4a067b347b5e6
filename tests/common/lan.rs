//! Links between namespaces: plain veth pairs, and a bridged LAN behind a "hypervisor" namespace.

use super::{MAX_IFNAME_LEN, Netns, unique_ifname};

/// Name of the bridge inside a [`Lan`]'s hypervisor namespace.
pub const BRIDGE: &str = "br0";

fn check_ifname(ifname: &str) {
    assert!(
        !ifname.is_empty() && ifname.len() <= MAX_IFNAME_LEN,
        "interface name {ifname:?} must be 1 to {MAX_IFNAME_LEN} bytes"
    );
}

/// Create a veth pair between two namespaces: `a_if` in `a`, `b_if` in `b`, both up, with the
/// kernel's random MACs. See [`veth_with_mac`].
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    veth_with_mac(a, a_if, None, b, b_if, None);
}

/// Create a veth pair between two namespaces with optional MACs, and bring both ends up.
///
/// The pair is created inside `a` with its peer created directly inside `b`
/// (`ip -n a link add a_if type veth peer name b_if netns b`), so neither end ever exists in the
/// host's namespace and the final names can be used from the start.
pub fn veth_with_mac(
    a: &Netns,
    a_if: &str,
    a_mac: Option<&str>,
    b: &Netns,
    b_if: &str,
    b_mac: Option<&str>,
) {
    check_ifname(a_if);
    check_ifname(b_if);
    a.ip([
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    for (ns, ifname, mac) in [(a, a_if, a_mac), (b, b_if, b_mac)] {
        if let Some(mac) = mac {
            ns.ip(["link", "set", "dev", ifname, "address", mac]);
        }
        ns.ip(["link", "set", "dev", ifname, "up"]);
    }
}

/// A shared Ethernet segment: a "hypervisor" namespace holding a Linux bridge [`BRIDGE`] (STP off,
/// forward delay 0, multicast snooping off so Neighbor Discovery multicast always floods), and
/// instance namespaces attached to it through veth pairs.
///
/// Bridge ports have IPv6 disabled (ports are layer 2 only; this keeps their own RS, DAD and MLD
/// off the segment). The bridge device itself keeps the namespace defaults.
pub struct Lan {
    hv: Netns,
}

impl Lan {
    /// A new hypervisor namespace with its bridge up.
    pub fn new() -> Lan {
        let hv = Netns::with_tag('h');
        hv.ip([
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        hv.ip(["link", "set", "dev", BRIDGE, "up"]);
        Lan { hv }
    }

    /// The hypervisor namespace (where `br0` and the bridge ports live; the guard runs here).
    pub fn hv(&self) -> &Netns {
        &self.hv
    }

    /// Attach `ns` to the bridge: a veth whose instance end is `ifname` inside `ns` (with `mac`
    /// if given) and whose other end is a unique port `f6t<tag><n>` enslaved to the bridge. Both
    /// ends are up when this returns. Returns the bridge port's name.
    pub fn attach(&self, ns: &Netns, ifname: &str, mac: Option<&str>) -> String {
        check_ifname(ifname);
        let port = unique_ifname('p');
        self.hv.ip([
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            ns.name(),
        ]);
        self.hv
            .sysctl(&format!("net/ipv6/conf/{port}/disable_ipv6"), "1");
        self.hv
            .ip(["link", "set", "dev", &port, "master", BRIDGE, "up"]);
        if let Some(mac) = mac {
            ns.ip(["link", "set", "dev", ifname, "address", mac]);
        }
        ns.ip(["link", "set", "dev", ifname, "up"]);
        port
    }
}

impl Default for Lan {
    fn default() -> Self {
        Lan::new()
    }
}

impl std::fmt::Debug for Lan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lan").field("hv", &self.hv.name()).finish()
    }
}
