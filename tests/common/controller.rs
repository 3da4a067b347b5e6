//! A controller in a test namespace (SQLite in the namespace's work directory) and calls to its
//! API from inside that namespace.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use flat6::controller::client::Client;

use super::{Netns, Proc, flat6_bin, wait_until};

pub const ADMIN: &str = "admin-token-0123456789abcdef";
pub const AGENT: &str = "agent-token-0123456789abcdef";
pub const PORT: u16 = 8640;

pub fn start_controller(ns: &Netns) -> Proc {
    start_controller_with(ns, "")
}

/// [`start_controller`] with `extra` lines in its config.
pub fn start_controller_with(ns: &Netns, extra: &str) -> Proc {
    let dir = ns.work_dir();
    std::fs::write(dir.join("admin.token"), ADMIN).expect("token");
    std::fs::write(dir.join("agent.token"), AGENT).expect("token");
    let config = dir.join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"controller\"\nlisten = \"[::1]:{PORT}\"\ndatabase = \"sqlite://{}/controller.db\"\nadmin_token_file = \"{}\"\nagent_token_file = \"{}\"\n{extra}\n",
            dir.display(),
            dir.join("admin.token").display(),
            dir.join("agent.token").display()
        ),
    )
    .expect("config");
    let proc = ns.spawn([
        flat6_bin().to_string_lossy().as_ref(),
        "controller",
        "--config",
        config.to_string_lossy().as_ref(),
    ]);
    wait_until("the controller to listen", Duration::from_secs(30), || {
        assert!(proc.is_running(), "controller exited:\n{}", proc.logs());
        proc.logs()
            .contains("controller API listening")
            .then_some(())
    });
    proc
}

/// Call the controller API from inside `ns` (where it listens on [::1]).
pub fn api(
    ns: &Netns,
    method: &'static str,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let path = path.to_string();
    ns.enter(move || {
        Client::new(
            &format!("http://[::1]:{PORT}"),
            ADMIN,
            Duration::from_secs(10),
        )
        .request(method, &path, body.as_ref())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    })
}

/// A VR in `ns` following pod `pod1` of the controller there (see [`super::dhcp::spawn_vr_from`]).
pub fn start_vr(ns: &Netns) -> Proc {
    let token = ns.work_dir().join("agent.token");
    super::dhcp::spawn_vr_from(
        ns,
        &format!(
            "controller = \"http://[::1]:{PORT}\"\npod = \"pod1\"\ntoken_file = \"{}\"",
            token.display()
        ),
        "",
    )
}

/// A guard in `ns` following `host` of the controller there, on the nftables table `table`,
/// started once it applied its first ruleset.
pub fn start_guard(ns: &Netns, host: &str, table: &str) -> Proc {
    let dir = ns.work_dir().join(format!("guard-{host}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let token = ns.work_dir().join("agent.token");
    std::fs::write(&token, AGENT).expect("token");
    let config = dir.join("guard.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"guard\"\ntable = \"{table}\"\nstate_dir = \"{}\"\n[source]\ncontroller = \"http://[::1]:{PORT}\"\nhost = \"{host}\"\ntoken_file = \"{}\"\n",
            dir.join("state").display(),
            token.display()
        ),
    )
    .expect("guard.toml");
    let guard = ns.spawn([
        flat6_bin().to_string_lossy().as_ref(),
        "guard",
        "--config",
        config.to_string_lossy().as_ref(),
    ]);
    wait_until("the guard's first apply", Duration::from_secs(20), || {
        assert!(guard.is_running(), "{}", guard.logs());
        guard.logs().contains("applied ruleset").then_some(())
    });
    guard
}
