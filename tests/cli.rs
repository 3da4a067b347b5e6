//! The `flat6` command line: `check`, exit codes, and roles that are not built yet.

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn flat6(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flat6"))
        .args(args)
        .output()
        .expect("run flat6")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_reports_unknown_key_bad_prefix_and_bad_mac_in_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "bad.toml",
        r#"role = "vr"
interface = "vr0"
mac = "02:00:00:00:00:0g"
colour = "blue"
[[ra.prefixes]]
prefix = "2001:db8:1::/48"
[[ra.prefixes]]
prefix = "2001:db8::/129"
[dhcpv6]
enabled = false
"#,
    );
    let out = flat6(&["check", "--config", &path]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(err.contains("\ncolour: unknown key"), "{err}");
    assert!(
        err.contains("\nmac: \"02:00:00:00:00:0g\" is not a MAC address"),
        "{err}"
    );
    assert!(
        err.contains("\nra.prefixes[1].prefix: \"2001:db8::/129\" is not an IPv6 prefix"),
        "{err}"
    );
}

#[test]
fn check_accepts_a_minimal_config_of_each_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text, role) in [
        (
            "vr.toml",
            "role = \"vr\"\ninterface = \"vr0\"\n[dhcpv6]\nenabled = false\n",
            "vr",
        ),
        (
            "guard.toml",
            "role = \"guard\"\n[source]\nfile = \"/var/lib/flat6/guard/ports.json\"\n",
            "guard",
        ),
        (
            "controller.toml",
            "role = \"controller\"\nadmin_token_file = \"/etc/flat6/admin.token\"\nagent_token_file = \"/etc/flat6/agent.token\"\n",
            "controller",
        ),
    ] {
        let path = write(dir.path(), name, text);
        let out = flat6(&["check", "--config", &path]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&format!("valid {role} config")), "{stdout}");
    }
}

#[test]
fn check_warns_about_a_duid_before_the_frame_but_accepts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = "role = \"vr\"\ninterface = \"vr0\"\n[dhcpv6]\nenabled = false\n";
    let trusted = write(
        dir.path(),
        "duid.toml",
        &format!("{base}mac_sources = [\"duid\", \"frame\"]\n"),
    );
    let out = flat6(&["check", "--config", &trusted]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: dhcpv6.mac_sources") && err.contains("trusted links only"),
        "{err}"
    );
    // The default says nothing.
    let plain = write(dir.path(), "plain.toml", base);
    let out = flat6(&["check", "--config", &plain]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn unreadable_config_and_bad_usage_exit_2() {
    let out = flat6(&["check", "--config", "/nonexistent/flat6.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/flat6.toml"));
    assert_eq!(flat6(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        flat6(&["vr"]).status.code(),
        Some(2),
        "--config is required"
    );
}

#[test]
fn a_config_for_another_role_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "guard.toml",
        "role = \"guard\"\n[source]\nfile = \"/tmp/ports.json\"\n",
    );
    let out = flat6(&["vr", "--config", &path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is for role \"guard\", not \"vr\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn controller_without_its_token_file_names_it_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = write(
        dir.path(),
        "controller.toml",
        &format!(
            "role = \"controller\"\nlisten = \"[::1]:0\"\ndatabase = \"sqlite://{}/c.db\"\nadmin_token_file = \"/nonexistent/admin.token\"\nagent_token_file = \"/nonexistent/agent.token\"\n",
            dir.path().display()
        ),
    );
    let out = flat6(&["controller", "--config", &controller]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/admin.token"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_api_cli_needs_a_token_and_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_flat6"))
        .args(["pod", "show", "p1"])
        .env_remove("FLAT6_TOKEN")
        .env_remove("FLAT6_TOKEN_FILE")
        .output()
        .expect("run flat6");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--token-file"), "{}", stderr(&out));
    let out = flat6(&[
        "sg",
        "set",
        "web",
        "--rule",
        "ingress tcp http",
        "--token",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("\"http\""), "{}", stderr(&out));
}

#[test]
fn guard_render_prints_the_ruleset_without_root_and_rejects_bad_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = dir.path().join("ports.json");
    std::fs::write(
        &ports,
        r#"{"revision": 1, "ports": [{"name": "i-1", "interface": "vnet0", "mac": "02:00:00:00:00:01",
            "addresses": ["2001:db8:1:4a2b::9c1"], "security_groups": ["web"]}],
           "security_groups": [{"name": "web", "members": [], "rules": [
             {"direction": "ingress", "protocol": "tcp", "ports": "80"}]}]}"#,
    )
    .expect("ports");
    let config = write(
        dir.path(),
        "guard.toml",
        &format!(
            "role = \"guard\"\nstate_dir = \"{}\"\n[source]\nfile = \"{}\"\n",
            dir.path().join("state").display(),
            ports.display()
        ),
    );
    let out = flat6(&["guard", "render", "--config", &config]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("vnet0") && text.contains("2001:db8:1:4a2b::9c1"),
        "{text}"
    );
    let again = flat6(&["guard", "render", "--config", &config]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        text,
        "render is stable"
    );

    std::fs::write(&ports, r#"{"revision": 2, "ports": [{"name": "x"}]}"#).expect("ports");
    let out = flat6(&["guard", "render", "--config", &config]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("ports[0].interface: missing (required)"),
        "{err}"
    );
    assert!(err.contains("ports[0].mac: missing (required)"), "{err}");
}

#[test]
fn every_role_explains_itself_in_help() {
    for (role, words) in [
        ("controller", "allocates addresses"),
        ("vr", "Router Advertisements"),
        ("guard", "nftables"),
        ("check", "every problem"),
    ] {
        let out = flat6(&[role, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{role}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(words), "{role} --help: {text}");
        assert!(text.contains("--config"), "{role} --help: {text}");
    }
    let out = flat6(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--log-format"), "{text}");
}

#[test]
fn json_logs_are_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A VR on an interface that does not exist logs its start, then fails at runtime: exit 1.
    let path = write(
        dir.path(),
        "vr.toml",
        &format!(
            "role = \"vr\"\ninterface = \"f6nosuchif\"\nstate_dir = \"{}\"\n[dhcpv6]\nenabled = false\n",
            dir.path().join("state").display()
        ),
    );
    let out = flat6(&["--log-format", "json", "vr", "--config", &path]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("f6nosuchif"), "{err}");
    let json: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect();
    assert!(
        json.iter()
            .any(|v| v["message"] == "starting" && v["level"] == "INFO"),
        "{err}"
    );
}
