//! A pod with `flat6 vr` serving DHCPv6 from a reservation file, and ISC dhclient as the client.

// Test support: failing loudly is the point.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Lan, Netns, Proc, flat6_bin, wait_until};

/// The VR's MAC.
pub const VR_MAC: &str = "02:f6:00:00:00:fe";

/// dhclient's hook: put the address on the interface itself (as /128, like dhclient-script does)
/// and record what the server sent, without touching any resolv.conf.
pub const HOOK: &str = r#"#!/bin/sh
case "$reason" in
  BOUND6|RENEW6|REBIND6|REBOOT6)
    [ -n "$new_ip6_address" ] && ip -6 addr replace "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" valid_lft "${new_max_life:-forever}" preferred_lft "${new_preferred_life:-forever}" 2>/dev/null || ip -6 addr replace "$new_ip6_address/$new_ip6_prefixlen" dev "$interface"
    ;;
esac
# Written last, and renamed into place, so a reader that sees the file sees the address too.
out="$(dirname "$0")/hook-$reason.env"
env | grep -E '^(reason|new_|old_|interface)' | sort > "$out.tmp" && mv "$out.tmp" "$out"
exit 0
"#;

/// A pod link with `flat6 vr` serving DHCPv6 (and RAs) from a reservation file.
pub struct Pod {
    /// The VR process.
    pub vr: Proc,
    /// The VR's namespace (interface `vr0`).
    pub vr_ns: Netns,
    /// The bridge.
    pub lan: Lan,
    /// The reservation file the VR follows.
    pub reservations: PathBuf,
}

pub fn write_reservations(path: &Path, revision: u64, entries: &[(&str, &[&str])]) {
    let reservations: Vec<serde_json::Value> = entries
        .iter()
        .map(|(mac, addrs)| serde_json::json!({"mac": mac, "addresses": addrs}))
        .collect();
    let doc = serde_json::json!({"revision": revision, "reservations": reservations});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

impl Pod {
    pub fn start(entries: &[(&str, &[&str])]) -> Pod {
        Pod::start_with(entries, "")
    }

    pub fn start_with(entries: &[(&str, &[&str])], dhcpv6_extra: &str) -> Pod {
        let lan = Lan::new();
        let vr_ns = Netns::new();
        lan.attach(&vr_ns, "vr0", Some(VR_MAC));
        let reservations = vr_ns.work_dir().join("reservations.json");
        write_reservations(&reservations, 1, entries);
        let vr = spawn_vr(&vr_ns, &reservations, dhcpv6_extra);
        Pod {
            vr,
            vr_ns,
            lan,
            reservations,
        }
    }

    /// A second VR on the same link, following the same reservation file (active-active).
    pub fn second_vr(&self, mac: &str, dhcpv6_extra: &str) -> (Netns, Proc) {
        let ns = Netns::new();
        self.lan.attach(&ns, "vr0", Some(mac));
        let vr = spawn_vr(&ns, &self.reservations, dhcpv6_extra);
        (ns, vr)
    }

    pub fn instance(&self, mac: &str) -> Netns {
        let ns = Netns::new();
        self.lan.attach(&ns, "eth0", Some(mac));
        ns.fast_ipv6("eth0");
        ns.wait_link_local("eth0", Duration::from_secs(10));
        ns
    }
}

/// Run `dhclient -6` in the foreground in `ns`, with the hook above and its own lease file.
pub fn dhclient(ns: &Netns, extra_lease: &str) -> Proc {
    let dir = ns.work_dir().join(format!("dhclient-{}", ns.name()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let hook = dir.join("hook.sh");
    std::fs::write(&hook, HOOK).expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let lease = dir.join("dhclient6.leases");
    if !extra_lease.is_empty() || !lease.exists() {
        std::fs::write(&lease, extra_lease).expect("lease file");
    }
    ns.spawn([
        "dhclient",
        "-6",
        "-d",
        "-v",
        "-sf",
        hook.to_str().expect("utf-8"),
        "-lf",
        lease.to_str().expect("utf-8"),
        "-pf",
        dir.join("dhclient6.pid").to_str().expect("utf-8"),
        "eth0",
    ])
}

pub fn hook_env(ns: &Netns, reason: &str) -> Option<String> {
    let path = ns
        .work_dir()
        .join(format!("dhclient-{}", ns.name()))
        .join(format!("hook-{reason}.env"));
    std::fs::read_to_string(path).ok()
}

pub fn global_addresses(ns: &Netns) -> Vec<(String, u8)> {
    ns.addrs("eth0")
        .into_iter()
        .filter(|a| a.scope == "global")
        .map(|a| (a.addr, a.prefixlen))
        .collect()
}

/// The config for a VR in `ns` (state under its work dir) and the running process, once it serves.
pub fn spawn_vr(ns: &Netns, reservations: &Path, dhcpv6_extra: &str) -> Proc {
    spawn_vr_from(
        ns,
        &format!("file = \"{}\"", reservations.display()),
        dhcpv6_extra,
    )
}

/// [`spawn_vr`] with any `[source]` body (`file = …`, or `controller = …` with `pod` and
/// `token_file`).
pub fn spawn_vr_from(ns: &Netns, source: &str, dhcpv6_extra: &str) -> Proc {
    let dir = vr_dir(ns);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = dir.join("vr.toml");
    std::fs::write(
        &config,
        format!(
            r#"role = "vr"
interface = "vr0"
state_dir = "{state}"
[ra]
router_lifetime = 0
[[ra.prefixes]]
prefix = "2001:db8:1::/48"
[dhcpv6]
dns_servers = ["2001:db8::53"]
domain_search = ["pod1.example"]
ntp_servers = ["2001:db8::123"]
{dhcpv6_extra}
[source]
{source}
"#,
            state = dir.join("state").display(),
        ),
    )
    .expect("write vr.toml");
    let vr = ns.spawn([
        flat6_bin().to_string_lossy().as_ref(),
        "vr",
        "--config",
        config.to_string_lossy().as_ref(),
    ]);
    wait_until("flat6 vr to serve", Duration::from_secs(20), || {
        assert!(vr.is_running(), "flat6 vr exited:\n{}", vr.logs());
        vr.logs().contains("advertising on the link").then_some(())
    });
    vr
}

/// Where [`spawn_vr`] put the config and state of the VR in `ns`.
pub fn vr_dir(ns: &Netns) -> PathBuf {
    ns.work_dir().join(format!("vr-{}", ns.name()))
}
