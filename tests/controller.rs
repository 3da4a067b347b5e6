//! `flat6 controller`: the HTTP API against SQLite (always) and against real MariaDB and PostgreSQL
//! servers (started by `netns-scripts/db.sh`, URLs in `FLAT6_TEST_MYSQL_URL` and
//! `FLAT6_TEST_POSTGRES_URL`).

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::net::{Ipv6Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flat6::controller::client::{Client, ClientError};
use ipnet::Ipv6Net;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-0123456789abcdef";

/// The outage test stops the shared MariaDB server: it takes this for writing, every other test
/// that uses the shared servers for reading, so they never overlap.
static SHARED_DATABASES: std::sync::RwLock<()> = std::sync::RwLock::new(());
const AGENT: &str = "agent-token-0123456789abcdef";

/// A `flat6 controller` process on a free loopback port, killed on drop.
struct Controller {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("[::1]:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Controller {
    fn start(database: &str) -> Controller {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin = dir.path().join("admin.token");
        let agent = dir.path().join("agent.token");
        std::fs::write(&admin, ADMIN).expect("token");
        std::fs::write(&agent, AGENT).expect("token");
        let port = free_port();
        let database = database.replace("{dir}", &dir.path().to_string_lossy());
        let config = dir.path().join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "role = \"controller\"\nlisten = \"[::1]:{port}\"\ndatabase = \"{database}\"\nadmin_token_file = \"{}\"\nagent_token_file = \"{}\"\n",
                admin.display(),
                agent.display()
            ),
        )
        .expect("config");
        let log = dir.path().join("controller.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_flat6"))
            .args(["controller", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start controller");
        let mut c = Controller {
            child,
            url: format!("http://[::1]:{port}"),
            log,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("controller exited {status}:\n{}", c.logs());
            }
            if c.admin().request("GET", "/healthz", None).is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "controller not ready:\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn admin(&self) -> Client {
        Client::new(&self.url, ADMIN, Duration::from_secs(60))
    }

    fn agent(&self) -> Client {
        Client::new(&self.url, AGENT, Duration::from_secs(60))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The databases to run the suite against: SQLite always, the others when their URL is set.
fn databases() -> Vec<(&'static str, String)> {
    let mut out = vec![("sqlite", "sqlite://{dir}/controller.db".to_string())];
    for (name, var) in [
        ("mariadb", "FLAT6_TEST_MYSQL_URL"),
        ("postgresql", "FLAT6_TEST_POSTGRES_URL"),
    ] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => out.push((name, url)),
            _ if std::env::var("FLAT6_REQUIRE_ROOT").as_deref() == Ok("1") => {
                panic!("FLAT6_REQUIRE_ROOT=1 but {var} is not set: run netns-scripts/test.sh")
            }
            _ => common::loud(&format!(
                "SKIPPED the {name} run of the controller suite: {var} is not set (netns-scripts/test.sh sets it)"
            )),
        }
    }
    out
}

/// A name unique to this test process, so suites on a shared server do not collide.
fn unique(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn status(result: Result<Value, ClientError>) -> (u16, Value) {
    match result {
        Ok(v) => (200, v),
        Err(ClientError::Status {
            status,
            message,
            field,
            ..
        }) => (status, json!({"error": message, "field": field})),
        Err(other) => panic!("transport error: {other}"),
    }
}

fn mac(n: u32) -> String {
    let b = n.to_be_bytes();
    format!("02:f6:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

fn api_suite(db: &str, url: &str) {
    let c = Controller::start(url);
    let admin = c.admin();
    let pod = unique("pod");
    // Hosts are global across pods: a unique one keeps runs on a shared server apart.
    let hv = unique("hv");
    let created = admin
        .request(
            "POST",
            "/v1/pods",
            Some(&json!({"name": pod, "prefix": "2001:db8:1::/48"})),
        )
        .unwrap_or_else(|e| panic!("[{db}] create pod: {e}\n{}", c.logs()));
    assert_eq!(created["instance_prefix_length"], 64, "[{db}] {created}");
    let rev0 = created["revision"].as_u64().unwrap();

    // An instance gets its own /64 and one address inside it.
    let inst = admin
        .request(
            "POST",
            &format!("/v1/pods/{pod}/instances"),
            Some(&json!({"name": "i-1", "mac": "02:f6:00:00:10:01", "host": hv, "port": "vnet0"})),
        )
        .expect("create instance");
    let prefix: Ipv6Net = inst["prefix"].as_str().unwrap().parse().unwrap();
    assert_eq!(prefix.prefix_len(), 64, "[{db}] {inst}");
    let first: Ipv6Addr = inst["addresses"][0].as_str().unwrap().parse().unwrap();
    assert!(prefix.contains(&first), "[{db}] {first} outside {prefix}");
    assert!(
        "2001:db8:1::/48"
            .parse::<Ipv6Net>()
            .unwrap()
            .contains(&prefix)
    );
    // Another address, in the same /64.
    let added = admin
        .request(
            "POST",
            &format!("/v1/pods/{pod}/instances/i-1/addresses"),
            None,
        )
        .expect("add address");
    let second: Ipv6Addr = added["address"].as_str().unwrap().parse().unwrap();
    assert!(
        prefix.contains(&second) && second != first,
        "[{db}] {second}"
    );
    let shown = admin
        .request("GET", &format!("/v1/pods/{pod}/instances/i-1"), None)
        .expect("show");
    assert_eq!(
        shown["addresses"].as_array().unwrap().len(),
        2,
        "[{db}] {shown}"
    );

    // The VR's document has both addresses under the MAC, and the revision moved.
    let doc = c
        .agent()
        .request("GET", &format!("/v1/pods/{pod}/reservations"), None)
        .expect("reservations");
    assert!(doc["revision"].as_u64().unwrap() > rev0, "[{db}] {doc}");
    assert_eq!(
        doc["reservations"][0]["mac"], "02:f6:00:00:10:01",
        "[{db}] {doc}"
    );
    assert_eq!(
        doc["reservations"][0]["addresses"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Duplicates: name and MAC, each named.
    let (code, body) = status(admin.request(
        "POST",
        &format!("/v1/pods/{pod}/instances"),
        Some(&json!({"name": "i-1", "mac": "02:f6:00:00:10:02"})),
    ));
    assert_eq!(
        (code, body["field"].as_str()),
        (409, Some("name")),
        "[{db}] {body}"
    );
    let (code, body) = status(admin.request(
        "POST",
        &format!("/v1/pods/{pod}/instances"),
        Some(&json!({"name": "i-2", "mac": "02:f6:00:00:10:01"})),
    ));
    assert_eq!(
        (code, body["field"].as_str()),
        (409, Some("mac")),
        "[{db}] {body}"
    );

    // Invalid input names the field and stores nothing.
    let bad_pod = unique("bad");
    let (code, body) = status(admin.request(
        "POST",
        "/v1/pods",
        Some(&json!({"name": bad_pod, "prefix": "2001:db8::/129"})),
    ));
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("prefix")),
        "[{db}] {body}"
    );
    let (code, _) = status(admin.request("GET", &format!("/v1/pods/{bad_pod}"), None));
    assert_eq!(code, 404, "[{db}] a rejected pod must not be stored");
    let (code, body) = status(admin.request(
        "POST",
        &format!("/v1/pods/{pod}/instances"),
        Some(&json!({"name": "i-3", "mac": "02:f6:00:00:10"})),
    ));
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("mac")),
        "[{db}] {body}"
    );
    let (code, _) = status(admin.request(
        "POST",
        "/v1/pods/no-such-pod/instances",
        Some(&json!({"name": "i-3", "mac": "02:f6:00:00:10:03"})),
    ));
    assert_eq!(code, 404, "[{db}] unknown pod");
    let sg = unique("sg");
    let (code, body) = status(admin.request(
        "PUT",
        &format!("/v1/security-groups/{sg}"),
        Some(&json!({"rules": [{"direction": "ingress", "protocol": "tcp", "ports": "90-80"}]})),
    ));
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("rules[0].ports")),
        "[{db}] {body}"
    );
    let (code, body) = status(admin.request(
        "PUT",
        &format!("/v1/security-groups/{sg}"),
        Some(&json!({"rules": [{"direction": "ingress", "remote_group": "no-such-group"}]})),
    ));
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("rules[0].remote_group")),
        "[{db}] {body}"
    );
    let (code, _) = status(admin.request("GET", &format!("/v1/security-groups/{sg}"), None));
    assert_eq!(code, 404, "[{db}] a rejected group must not be stored");

    // Auth: none → 401, agent on a write → 403, wrong → 401.
    let none = Client::new(&c.url, "", Duration::from_secs(10));
    assert_eq!(
        status(none.request("GET", &format!("/v1/pods/{pod}"), None)).0,
        401
    );
    let wrong = Client::new(&c.url, "not-the-token-at-all", Duration::from_secs(10));
    assert_eq!(
        status(wrong.request("GET", &format!("/v1/pods/{pod}"), None)).0,
        401
    );
    let (code, _) = status(c.agent().request(
        "POST",
        "/v1/pods",
        Some(&json!({"name": unique("x"), "prefix": "2001:db8:9::/48"})),
    ));
    assert_eq!(code, 403, "[{db}] agent token on a write");

    // Security groups and the guard's document for the host.
    let web = unique("web");
    let admins = unique("admins");
    admin
        .request(
            "PUT",
            &format!("/v1/security-groups/{admins}"),
            Some(&json!({"rules": []})),
        )
        .expect("admins");
    admin
        .request(
            "PUT",
            &format!("/v1/security-groups/{web}"),
            Some(&json!({"rules": [
                {"direction": "ingress", "protocol": "tcp", "ports": "80", "remote_prefix": "::/0"},
                {"direction": "ingress", "protocol": "tcp", "ports": "22", "remote_group": admins}]})),
        )
        .expect("web");
    admin
        .request(
            "POST",
            &format!("/v1/pods/{pod}/instances"),
            Some(&json!({"name": "w-1", "mac": "02:f6:00:00:10:05", "host": hv, "port": "vnet5", "security_groups": [web]})),
        )
        .expect("web instance");
    let ports = c
        .agent()
        .request("GET", &format!("/v1/hosts/{hv}/ports"), None)
        .expect("ports");
    // The document is exactly what the guard validates.
    let bytes = serde_json::to_vec(&ports).unwrap();
    let parsed = flat6::guard::document::PortsDoc::parse(&bytes).unwrap_or_else(|p| {
        panic!("[{db}] the guard rejects the controller's document: {p}\n{ports}")
    });
    assert!(
        parsed
            .ports
            .iter()
            .any(|p| p.interface == "vnet5" && p.security_groups == vec![web.clone()])
    );
    assert!(
        parsed.groups.contains_key(&admins),
        "[{db}] referenced group missing: {ports}"
    );

    // A waiting watch answers when the revision moves, with the new document.
    let rev = c
        .agent()
        .request("GET", &format!("/v1/pods/{pod}/reservations"), None)
        .expect("doc")["revision"]
        .as_u64()
        .unwrap();
    let agent = c.agent();
    let path = format!("/v1/pods/{pod}/reservations?after_revision={rev}&wait=60");
    let waiter = std::thread::spawn(move || agent.request("GET", &path, None));
    // Give the watch a chance to be waiting (not a correctness wait: it answers either way).
    std::thread::sleep(Duration::from_millis(200));
    admin
        .request(
            "POST",
            &format!("/v1/pods/{pod}/instances"),
            Some(&json!({"name": "i-9", "mac": "02:f6:00:00:10:09"})),
        )
        .expect("create i-9");
    let doc = waiter.join().unwrap().expect("watch");
    assert!(doc["revision"].as_u64().unwrap() > rev, "[{db}] {doc}");
    assert!(
        doc.to_string().contains("02:f6:00:00:10:09"),
        "[{db}] {doc}"
    );
    // Unchanged: after `wait` seconds the same document comes back.
    let doc2 = c
        .agent()
        .request(
            "GET",
            &format!(
                "/v1/pods/{pod}/reservations?after_revision={}&wait=1",
                doc["revision"]
            ),
            None,
        )
        .expect("timeout watch");
    assert_eq!(doc2, doc, "[{db}]");

    // Deleting frees addresses: the instance is gone from the document.
    admin
        .request(
            "DELETE",
            &format!("/v1/pods/{pod}/instances/i-1/addresses/{second}"),
            None,
        )
        .expect("remove address");
    admin
        .request("DELETE", &format!("/v1/pods/{pod}/instances/i-1"), None)
        .expect("delete");
    let doc = c
        .agent()
        .request("GET", &format!("/v1/pods/{pod}/reservations"), None)
        .expect("doc");
    assert!(
        !doc.to_string().contains("02:f6:00:00:10:01"),
        "[{db}] {doc}"
    );
    let metrics = c.admin().request("GET", "/metrics", None).expect("metrics");
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("flat6_controller_allocations_total"),
        "[{db}] {metrics}"
    );
}

#[test]
fn api_suite_on_every_database() {
    let _shared = SHARED_DATABASES.read().unwrap_or_else(|p| p.into_inner());
    for (db, url) in databases() {
        api_suite(db, &url);
    }
}

/// An instance moves to another hypervisor and changes groups with PATCH: its MAC, /64 and
/// addresses stay; the old host's document loses it, the new one's has it, and both hosts'
/// revisions move so that both guards converge. Bad changes are rejected and change nothing.
fn migration(db: &str, url: &str) {
    let c = Controller::start(url);
    let admin = c.admin();
    let agent = c.agent();
    let pod = unique("mig");
    let (hv1, hv2) = (unique("hv"), unique("hv"));
    let web = unique("web");
    admin
        .request(
            "POST",
            "/v1/pods",
            Some(&json!({"name": pod, "prefix": "2001:db8:6::/48"})),
        )
        .expect("pod");
    admin
        .request(
            "PUT",
            &format!("/v1/security-groups/{web}"),
            Some(&json!({"rules": [{"direction": "ingress", "protocol": "tcp", "ports": "80"}]})),
        )
        .expect("group");
    let created = admin
        .request(
            "POST",
            &format!("/v1/pods/{pod}/instances"),
            Some(&json!({"name": "m-1", "mac": "02:f6:00:00:60:01", "host": hv1, "port": "vnet1"})),
        )
        .expect("instance");
    admin
        .request(
            "POST",
            &format!("/v1/pods/{pod}/instances"),
            Some(&json!({"name": "m-2", "mac": "02:f6:00:00:60:02", "host": hv2, "port": "vnet7"})),
        )
        .expect("second instance");
    let ports = |host: &str| {
        agent
            .request("GET", &format!("/v1/hosts/{host}/ports"), None)
            .expect("ports")
    };
    let names = |doc: &serde_json::Value| -> Vec<String> {
        doc["ports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (before1, before2) = (ports(&hv1), ports(&hv2));
    assert_eq!(names(&before1), ["m-1"], "[{db}] {before1}");

    // Live migration to hv2, on a port that is free there, with a new group.
    let moved = admin
        .request(
            "PATCH",
            &format!("/v1/pods/{pod}/instances/m-1"),
            Some(&json!({"host": hv2, "port": "vnet2", "security_groups": [web]})),
        )
        .unwrap_or_else(|e| panic!("[{db}] patch: {e}\n{}", c.logs()));
    assert_eq!(moved["host"], hv2.as_str(), "[{db}] {moved}");
    assert_eq!(moved["port"], "vnet2");
    assert_eq!(moved["mac"], created["mac"]);
    assert_eq!(moved["prefix"], created["prefix"]);
    assert_eq!(moved["addresses"], created["addresses"]);
    assert_eq!(moved["security_groups"], json!([web]));
    let (after1, after2) = (ports(&hv1), ports(&hv2));
    assert!(
        names(&after1).is_empty(),
        "[{db}] still on the old host: {after1}"
    );
    assert_eq!(names(&after2), ["m-1", "m-2"], "[{db}] {after2}");
    assert!(
        after1["revision"].as_u64() > before1["revision"].as_u64(),
        "[{db}] old host revision"
    );
    assert!(
        after2["revision"].as_u64() > before2["revision"].as_u64(),
        "[{db}] new host revision"
    );
    let m1 = after2["ports"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "m-1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(m1["interface"], "vnet2", "[{db}] {after2}");
    assert_eq!(m1["addresses"], created["addresses"], "[{db}] {after2}");
    assert_eq!(m1["security_groups"], json!([web]), "[{db}] {after2}");

    // The lists: every instance of the pod, and those on one host, with their addresses.
    let list = |query: &str| -> Vec<String> {
        admin
            .request("GET", &format!("/v1/pods/{pod}/instances{query}"), None)
            .expect("list")["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(list(""), ["m-1", "m-2"], "[{db}]");
    assert_eq!(list(&format!("?host={hv2}")), ["m-1", "m-2"], "[{db}]");
    assert!(list(&format!("?host={hv1}")).is_empty(), "[{db}]");
    let all = admin
        .request("GET", &format!("/v1/pods/{pod}/instances"), None)
        .expect("list");
    assert_eq!(
        all["instances"][0]["addresses"], created["addresses"],
        "[{db}] {all}"
    );
    assert_eq!(
        all["instances"][0]["security_groups"],
        json!([web]),
        "[{db}] {all}"
    );
    let pods = admin.request("GET", "/v1/pods", None).expect("pods");
    assert!(
        pods["pods"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["name"] == pod.as_str())),
        "[{db}] {pods}"
    );
    let (code, _) = status(admin.request("GET", "/v1/pods/no-such-pod/instances", None));
    assert_eq!(code, 404, "[{db}] list of an unknown pod");
    let (code, _) = status(agent.request("GET", "/v1/pods", None));
    assert_eq!(code, 403, "[{db}] agent token on the admin list");

    // Rejected, and nothing changes: the port m-2 uses, an unknown group, a port without a host,
    // an unknown field.
    for (body, want, field) in [
        (json!({"port": "vnet7"}), 409, None),
        (
            json!({"security_groups": [web, "no-such-group"]}),
            404,
            Some("security_groups[1]"),
        ),
        (json!({"host": null, "port": "vnet3"}), 400, Some("host")),
        (json!({"hots": hv1}), 400, None),
    ] {
        let (code, err) = status(admin.request(
            "PATCH",
            &format!("/v1/pods/{pod}/instances/m-1"),
            Some(&body),
        ));
        assert_eq!(code, want, "[{db}] {body} → {err}");
        if let Some(field) = field {
            assert_eq!(err["field"], field, "[{db}] {body} → {err}");
        }
    }
    let unchanged = admin
        .request("GET", &format!("/v1/pods/{pod}/instances/m-1"), None)
        .expect("get");
    assert_eq!(unchanged["port"], "vnet2", "[{db}] {unchanged}");
    assert_eq!(
        unchanged["security_groups"],
        json!([web]),
        "[{db}] {unchanged}"
    );

    // Off any host: the port goes with it.
    let parked = admin
        .request(
            "PATCH",
            &format!("/v1/pods/{pod}/instances/m-1"),
            Some(&json!({"host": null})),
        )
        .expect("park");
    assert!(
        parked.get("host").is_none() && parked.get("port").is_none(),
        "[{db}] {parked}"
    );
    assert_eq!(names(&ports(&hv2)), ["m-2"], "[{db}]");
    let (code, _) = status(admin.request(
        "PATCH",
        &format!("/v1/pods/{pod}/instances/nope"),
        Some(&json!({"host": hv1})),
    ));
    assert_eq!(code, 404, "[{db}] unknown instance");
}

#[test]
fn an_instance_migrates_to_another_host_and_keeps_its_addresses_and_lists_show_it() {
    let _shared = SHARED_DATABASES.read().unwrap_or_else(|p| p.into_inner());
    for (db, url) in databases() {
        migration(db, &url);
    }
}

/// Panic unless `result` is the error `code` naming `field`.
fn assert_error(db: &str, result: Result<Value, ClientError>, code: u16, field: &str) {
    let (got, body) = status(result);
    assert_eq!(
        (got, body["field"].as_str()),
        (code, Some(field)),
        "[{db}] {body}"
    );
}

fn search(db: &str, url: &str) {
    let c = Controller::start(url);
    let admin = c.admin();
    let pod = unique("find");
    admin
        .request(
            "POST",
            "/v1/pods",
            Some(&json!({"name": pod, "prefix": "2001:db8:5ea::/48"})),
        )
        .expect("pod");
    // MACs are unique per pod only: these are also unique to this run, so that a search across
    // pods finds no instance of an earlier run on the same database.
    let tag = std::process::id() ^ u32::from(db.as_bytes()[0]);
    let mac_of = |n: u8| {
        format!(
            "02:f6:5e:{:02x}:{:02x}:{n:02x}",
            (tag >> 8) & 0xff,
            tag & 0xff
        )
    };
    let (mac1, mac2) = (mac_of(1), mac_of(2));
    let mut created = Vec::new();
    for (name, mac) in [("f-1", &mac1), ("f-2", &mac2)] {
        created.push(
            admin
                .request(
                    "POST",
                    &format!("/v1/pods/{pod}/instances"),
                    Some(&json!({"name": name, "mac": mac, "host": "hv-find"})),
                )
                .expect("instance"),
        );
    }
    let names = |out: &Value| -> Vec<String> {
        out["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let list = |query: &str| {
        admin
            .request("GET", &format!("/v1/pods/{pod}/instances?{query}"), None)
            .unwrap_or_else(|e| panic!("[{db}] list ?{query}: {e}"))
    };
    assert_eq!(names(&list(&format!("mac={mac2}"))), ["f-2"], "[{db}]");
    let address = created[0]["addresses"][0].as_str().unwrap();
    assert_eq!(
        names(&list(&format!("address={address}"))),
        ["f-1"],
        "[{db}]"
    );
    // Any address in f-2's /64, handed out or not, leads to f-2.
    let net: Ipv6Net = created[1]["prefix"].as_str().unwrap().parse().unwrap();
    let inside = Ipv6Addr::from(u128::from(net.network()) | 0x1234);
    assert_eq!(
        names(&list(&format!("address={inside}"))),
        ["f-2"],
        "[{db}]"
    );
    assert_eq!(
        names(&list(&format!("host=hv-find&mac={}", mac_of(9)))),
        Vec::<String>::new()
    );
    assert_error(
        db,
        admin.request("GET", &format!("/v1/pods/{pod}/instances?mac=nope"), None),
        400,
        "mac",
    );
    assert_error(
        db,
        admin.request(
            "GET",
            &format!("/v1/pods/{pod}/instances?address=2001:db8::zz"),
            None,
        ),
        400,
        "address",
    );

    // Across every pod, with the pod named.
    let found = admin
        .request("GET", &format!("/v1/instances?address={address}"), None)
        .expect("find");
    assert_eq!(names(&found), ["f-1"], "[{db}] {found}");
    assert_eq!(found["instances"][0]["pod"], pod.as_str(), "[{db}] {found}");
    let found = admin
        .request("GET", &format!("/v1/instances?mac={mac2}"), None)
        .expect("find");
    assert_eq!(names(&found), ["f-2"], "[{db}] {found}");
    assert_error(db, admin.request("GET", "/v1/instances", None), 400, "mac");
    let (code, _) = status(
        c.agent()
            .request("GET", &format!("/v1/instances?mac={mac2}"), None),
    );
    assert_eq!(code, 403, "[{db}] the agent token cannot search");
}

#[test]
fn instances_are_found_by_mac_and_address_in_a_pod_and_across_pods() {
    let _shared = SHARED_DATABASES.read().unwrap_or_else(|p| p.into_inner());
    for (db, url) in databases() {
        search(db, &url);
    }
}

fn shared_range_exhaustion(db: &str, url: &str) {
    let c = Controller::start(url);
    let admin = c.admin();
    let pod = unique("lab");
    let excluded: Vec<String> = (1..=8).map(|i| format!("2001:db8:7::{i:x}")).collect();
    admin
        .request(
            "POST",
            "/v1/pods",
            Some(&json!({"name": pod, "prefix": "2001:db8:7::/120", "exclude": excluded})),
        )
        .expect("pod");
    let range: Ipv6Net = "2001:db8:7::/120".parse().unwrap();
    let allowed = flat6::controller::allocate::allowed_count(
        range,
        &excluded
            .iter()
            .map(|e| Ipv6Net::from(e.parse::<Ipv6Addr>().unwrap()))
            .collect::<Vec<_>>(),
    ) as usize;
    assert!(allowed > 50 && allowed < 256, "[{db}] allowed {allowed}");
    let mut seen = HashSet::new();
    for i in 0..allowed {
        let inst = admin
            .request(
                "POST",
                &format!("/v1/pods/{pod}/instances"),
                Some(&json!({"name": format!("i-{i}"), "mac": mac(0x0700_0000 + i as u32)})),
            )
            .unwrap_or_else(|e| panic!("[{db}] instance {i} of {allowed}: {e}"));
        let a: Ipv6Addr = inst["addresses"][0].as_str().unwrap().parse().unwrap();
        assert!(range.contains(&a), "[{db}] {a}");
        assert!(
            !excluded.contains(&a.to_string()),
            "[{db}] handed out excluded {a}"
        );
        assert_ne!(
            a,
            range.network(),
            "[{db}] subnet-router anycast handed out"
        );
        assert!(seen.insert(a), "[{db}] duplicate {a}");
    }
    let (code, body) = status(admin.request(
        "POST",
        &format!("/v1/pods/{pod}/instances"),
        Some(&json!({"name": "one-too-many", "mac": mac(0x07ff_ffff)})),
    ));
    assert_eq!(code, 409, "[{db}] {body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&pod) && message.contains("2001:db8:7::/120"),
        "[{db}] {message}"
    );
}

#[test]
fn a_120_shared_pod_hands_out_exactly_the_allowed_count_then_409() {
    let _shared = SHARED_DATABASES.read().unwrap_or_else(|p| p.into_inner());
    for (db, url) in databases() {
        shared_range_exhaustion(db, &url);
    }
}

fn four_controllers(db: &str, url: &str) {
    let controllers: Vec<Controller> = (0..4).map(|_| Controller::start(url)).collect();
    let pod = unique("conc");
    controllers[0]
        .admin()
        .request(
            "POST",
            "/v1/pods",
            Some(&json!({"name": pod, "prefix": "2001:db8:4::/48"})),
        )
        .expect("pod");
    // Each controller: 10 instances and 99 more addresses each = 1,000 addresses, all at once.
    let handles: Vec<_> = controllers
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let client = c.admin();
            let pod = pod.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for i in 0..10u32 {
                    let name = format!("c{k}-i{i}");
                    let inst = client
                        .request(
                            "POST",
                            &format!("/v1/pods/{pod}/instances"),
                            Some(&json!({"name": name, "mac": mac(0x0400_0000 + k as u32 * 100 + i)})),
                        )
                        .expect("instance");
                    let prefix: Ipv6Net = inst["prefix"].as_str().unwrap().parse().unwrap();
                    out.push((prefix, inst["addresses"][0].as_str().unwrap().parse::<Ipv6Addr>().unwrap()));
                    for _ in 0..99 {
                        let a = client
                            .request("POST", &format!("/v1/pods/{pod}/instances/{name}/addresses"), None)
                            .expect("address");
                        out.push((prefix, a["address"].as_str().unwrap().parse().unwrap()));
                    }
                }
                out
            })
        })
        .collect();
    let mut all = HashSet::new();
    let mut prefixes = HashSet::new();
    for h in handles {
        for (prefix, address) in h.join().expect("thread") {
            assert!(
                prefix.contains(&address),
                "[{db}] {address} outside {prefix}"
            );
            assert!(all.insert(address), "[{db}] {address} handed out twice");
            prefixes.insert(prefix);
        }
    }
    assert_eq!(all.len(), 4000, "[{db}]");
    assert_eq!(prefixes.len(), 40, "[{db}] every instance has its own /64");
}

#[test]
fn four_controllers_on_one_shared_database_allocate_4000_distinct_addresses() {
    let _shared = SHARED_DATABASES.read().unwrap_or_else(|p| p.into_inner());
    let shared: Vec<_> = databases()
        .into_iter()
        .filter(|(db, _)| *db != "sqlite")
        .collect();
    if shared.is_empty() {
        common::loud("SKIPPED four_controllers...: no MariaDB or PostgreSQL URL set");
    }
    for (db, url) in shared {
        four_controllers(db, &url);
    }
}

#[test]
fn database_stopped_gives_503_and_the_same_controller_recovers_when_it_returns() {
    let (Ok(url), Ok(dir)) = (
        std::env::var("FLAT6_TEST_MYSQL_URL"),
        std::env::var("FLAT6_TEST_DB_DIR"),
    ) else {
        if std::env::var("FLAT6_REQUIRE_ROOT").as_deref() == Ok("1") {
            panic!("FLAT6_REQUIRE_ROOT=1 but FLAT6_TEST_MYSQL_URL / FLAT6_TEST_DB_DIR are not set");
        }
        common::loud("SKIPPED database_stopped...: FLAT6_TEST_MYSQL_URL is not set");
        return;
    };
    let _exclusive = SHARED_DATABASES.write().unwrap_or_else(|p| p.into_inner());
    let c = Controller::start(&url);
    let admin = c.admin();
    let pod = unique("outage");
    admin
        .request(
            "POST",
            "/v1/pods",
            Some(&json!({"name": pod, "prefix": "2001:db8:5::/48"})),
        )
        .expect("pod");
    let db = |action: &str| {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/netns-scripts/db.sh"))
            .args([action, &dir])
            .output()
            .expect("db.sh");
        assert!(
            out.status.success(),
            "db.sh {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    db("stop-mysql");
    // Make sure the MariaDB server is started again even if an assertion below fails.
    struct Restart<F: Fn()>(F);
    impl<F: Fn()> Drop for Restart<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let restart = Restart(|| db("start-mysql"));
    let (code, body) = status(admin.request(
        "POST",
        &format!("/v1/pods/{pod}/instances"),
        Some(&json!({"name": "i-1", "mac": "02:f6:00:00:50:01"})),
    ));
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("database unavailable"),
        "{body}"
    );
    let (code, _) = status(admin.request("GET", "/healthz", None));
    assert_eq!(code, 503);
    drop(restart);
    // The same process serves again once the database is back (the pool reconnects).
    let started = Instant::now();
    let inst = loop {
        match admin.request(
            "POST",
            &format!("/v1/pods/{pod}/instances"),
            Some(&json!({"name": "i-1", "mac": "02:f6:00:00:50:01"})),
        ) {
            Ok(v) => break v,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "controller did not recover: {e}\n{}",
                    c.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(inst["name"], "i-1");

    // A restart while the pool holds open connections: the first request afterwards is served
    // (on a connection opened anew), not failed.
    db("stop-mysql");
    let restart = Restart(|| db("start-mysql"));
    drop(restart);
    let inst = admin
        .request(
            "POST",
            &format!("/v1/pods/{pod}/instances"),
            Some(&json!({"name": "i-2", "mac": "02:f6:00:00:50:02"})),
        )
        .unwrap_or_else(|e| panic!("first request after a restart failed: {e}\n{}", c.logs()));
    assert_eq!(inst["name"], "i-2");
}

#[test]
fn a_watch_client_that_goes_away_is_no_longer_counted() {
    let c = Controller::start("sqlite://{dir}/controller.db");
    let pod = unique("gauge");
    c.admin()
        .request(
            "POST",
            "/v1/pods",
            Some(&json!({"name": pod, "prefix": "2001:db8:6::/48"})),
        )
        .expect("pod");
    let gauge = |c: &Controller| -> u64 {
        let text = c.admin().request("GET", "/metrics", None).expect("metrics");
        text.as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("flat6_controller_watch_clients "))
            .and_then(|v| v.trim().parse().ok())
            .expect("gauge")
    };
    // A client that gives up after 1 s on a watch that would wait 30 s.
    let impatient = Client::new(&c.url, AGENT, Duration::from_secs(1));
    let path = format!("/v1/pods/{pod}/reservations?after_revision=1000&wait=30");
    let waiter = std::thread::spawn(move || impatient.request("GET", &path, None));
    let started = Instant::now();
    while gauge(&c) != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the watch was never counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        waiter.join().expect("thread").is_err(),
        "the client should have timed out"
    );
    let started = Instant::now();
    while gauge(&c) != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the abandoned watch is still counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
