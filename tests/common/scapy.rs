//! Running the scapy scripts in `tests/scapy/`.

use std::path::PathBuf;
use std::sync::OnceLock;

use super::{REQUIRE_ROOT_ENV, loud};

/// The system Python, which has scapy; the `python3` first on PATH may be another one.
pub const PYTHON: &str = "/usr/bin/python3";

/// A script in `tests/scapy/`.
pub fn script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("scapy")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// True when [`PYTHON`] can import scapy's IPv6 and DHCPv6 layers. Otherwise, like
/// [`super::require_root`]: a loud `SKIPPED` line, or a panic with `FLAT6_REQUIRE_ROOT=1`.
pub fn require_scapy(test: &str) -> bool {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    let reason = REASON.get_or_init(|| {
        match std::process::Command::new(PYTHON)
            .args(["-c", "import scapy.layers.inet6, scapy.layers.dhcp6"])
            .output()
        {
            Err(err) => Some(format!("cannot run {PYTHON}: {err}")),
            Ok(out) if !out.status.success() => Some(format!(
                "{PYTHON} cannot import scapy: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(_) => None,
        }
    });
    let Some(reason) = reason else {
        return true;
    };
    if std::env::var(REQUIRE_ROOT_ENV).as_deref() == Ok("1") {
        panic!("{REQUIRE_ROOT_ENV}=1 but {test} cannot run: {reason}");
    }
    loud(&format!("SKIPPED {test}: needs python3-scapy ({reason})"));
    false
}
