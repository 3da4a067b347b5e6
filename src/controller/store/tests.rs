//! The store's behaviour, run against every backend at hand: SQLite always (a temporary file),
//! MariaDB/MySQL and PostgreSQL when `FLAT6_TEST_MYSQL_URL` / `FLAT6_TEST_POSTGRES_URL` point at a
//! server (`netns-scripts/db.sh start DIR; eval "$(netns-scripts/db.sh env DIR)"`). Each test gets
//! a fresh database of its own on each server. Without a server URL the test says SKIPPED loudly;
//! with `FLAT6_REQUIRE_ROOT=1` it fails instead.

use std::future::Future;
use std::io::Write as _;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv6Net;
use sqlx::{AnyConnection, Connection as _};
use tokio::sync::RwLock;

use super::*;

/// Held shared by every test that uses the servers, exclusively by the outage test that stops
/// them.
static SERVERS: RwLock<()> = RwLock::const_new(());

const MYSQL_VAR: &str = "FLAT6_TEST_MYSQL_URL";
const POSTGRES_VAR: &str = "FLAT6_TEST_POSTGRES_URL";
const DIR_VAR: &str = "FLAT6_TEST_DB_DIR";

fn skipped(test: &str, what: &str, var: &str) {
    if std::env::var("FLAT6_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!(
            "{test}: {var} is not set and FLAT6_REQUIRE_ROOT=1: start the test servers with \
             netns-scripts/db.sh start DIR && eval \"$(netns-scripts/db.sh env DIR)\""
        );
    }
    // Straight to stderr, past the test harness's capture, so the skip shows in a passing run.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test} on {what}: {var} is not set \
         (netns-scripts/db.sh start DIR && eval \"$(netns-scripts/db.sh env DIR)\") ***\n"
    );
}

/// `scheme://user:pass@host:port/db?query` with the database replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let server = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, _)) => format!("{scheme}://{authority}"),
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

/// A fresh, empty database on the server `url` points at; returns its URL and name.
async fn fresh_database(url: &str) -> (String, String) {
    sqlx::any::install_default_drivers();
    let name = format!("flat6_t_{:016x}", rand::random::<u64>());
    let mut conn = AnyConnection::connect(url)
        .await
        .expect("connect test server");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.expect("close");
    (with_database(url, &name), name)
}

async fn drop_database(url: &str, backend: Backend, name: &str) {
    let Ok(mut conn) = AnyConnection::connect(url).await else {
        return;
    };
    let sql = match backend {
        Backend::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        _ => format!("DROP DATABASE IF EXISTS {name}"),
    };
    let _ = sqlx::raw_sql(&sql).execute(&mut conn).await;
    let _ = conn.close().await;
}

/// One database to test against, removed when the test is done with it.
struct Target {
    what: &'static str,
    backend: Backend,
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Database { server: String, name: String },
}

/// A fresh database on every backend at hand: a temporary SQLite file always, a new database on
/// each server whose URL is set. Hold `SERVERS` while using them.
async fn targets(test: &str) -> Vec<Target> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut out = vec![Target {
        what: "SQLite",
        backend: Backend::Sqlite,
        url: format!("sqlite://{}", dir.path().join("store.db").display()),
        cleanup: Cleanup::Dir(dir),
    }];
    for (var, backend, what) in [
        (MYSQL_VAR, Backend::Mysql, "MySQL/MariaDB"),
        (POSTGRES_VAR, Backend::Postgres, "PostgreSQL"),
    ] {
        let Ok(server) = std::env::var(var) else {
            skipped(test, what, var);
            continue;
        };
        let (url, name) = fresh_database(&server).await;
        out.push(Target {
            what,
            backend,
            url,
            cleanup: Cleanup::Database { server, name },
        });
    }
    out
}

async fn finish(target: Target) {
    if let Cleanup::Database { server, name } = target.cleanup {
        drop_database(&server, target.backend, &name).await;
    }
}

/// Run `body` on a fresh store of every backend at hand.
async fn each_backend<F, Fut>(test: &str, body: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let _servers = SERVERS.read().await;
    for target in targets(test).await {
        let store = Store::connect(&target.url).await.expect("store");
        assert_eq!(store.backend(), target.backend);
        eprintln!("{test}: {}", target.what);
        body(store.clone()).await;
        store.pool.close().await;
        finish(target).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_controllers_may_start_at_once_and_a_newer_schema_is_refused() {
    let test = "four_controllers_may_start_at_once_and_a_newer_schema_is_refused";
    let _servers = SERVERS.read().await;
    for target in targets(test).await {
        eprintln!("{test}: {}", target.what);
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let url = target.url.clone();
                tokio::spawn(async move { Store::connect(&url).await })
            })
            .collect();
        let mut stores = Vec::new();
        for start in starts {
            stores.push(start.await.expect("task").expect("concurrent connect"));
        }
        stores[0]
            .create_pod(&new_pod("p1", "2001:db8:1::/64", 64))
            .await
            .expect("pod");
        assert_eq!(stores[3].pod_revision("p1").await, Ok(1));

        sqlx::query("UPDATE flat6_meta SET schema_version = 99")
            .execute(&stores[0].pool)
            .await
            .expect("pretend a newer flat6 migrated");
        let refused = Store::connect(&target.url).await;
        assert!(
            matches!(&refused, Err(StoreError::Other(m)) if m.contains("version 99")),
            "{refused:?}"
        );
        for store in stores {
            store.pool.close().await;
        }
        finish(target).await;
    }
}

fn addr(text: &str) -> Ipv6Addr {
    text.parse().expect("address")
}

fn net(text: &str) -> Ipv6Net {
    text.parse().expect("prefix")
}

fn new_pod(name: &str, prefix: &str, instance_prefix_length: u8) -> NewPod {
    NewPod {
        name: name.into(),
        prefix: prefix.parse().expect("pod prefix"),
        instance_prefix_length,
        exclude: vec![],
    }
}

fn new_instance(
    name: &str,
    mac: u8,
    host: Option<&str>,
    port: Option<&str>,
    groups: &[&str],
) -> NewInstance {
    NewInstance {
        name: name.into(),
        mac: Mac([2, 0, 0, 0, 0, mac]),
        host: host.map(str::to_string),
        port: port.map(str::to_string),
        security_groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn conflict_on<T: std::fmt::Debug>(result: Result<T, StoreError>) -> ConflictOn {
    match result {
        Err(StoreError::Conflict { what, .. }) => what,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn not_found<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::NotFound(what)) => what,
        other => panic!("expected not found, got {other:?}"),
    }
}

#[tokio::test]
async fn pods_are_created_read_and_deleted() {
    each_backend("pods_are_created_read_and_deleted", |store| async move {
        let mut pod = new_pod("p1", "2001:db8:1::/48", 64);
        pod.exclude = vec![net("2001:db8:1::/64"), net("2001:db8:1:ff::1/128")];
        let row = store.create_pod(&pod).await.expect("create");
        assert_eq!(row.revision, 1);
        assert_eq!(store.get_pod("p1").await.expect("get"), row);
        assert_eq!(row.exclude, pod.exclude);
        assert_eq!(store.pod_revision("p1").await, Ok(1));
        assert_eq!(conflict_on(store.create_pod(&pod).await), ConflictOn::Name);
        assert_eq!(not_found(store.get_pod("nope").await), "pod nope");
        assert_eq!(not_found(store.pod_revision("nope").await), "pod nope");

        let shared = store
            .create_pod(&new_pod("small", "2001:db8:2::/120", 120))
            .await
            .expect("shared range pod");
        assert_eq!(shared.instance_prefix_length, 120);

        store
            .create_instance(
                "p1",
                &new_instance("vm1", 1, None, None, &[]),
                None,
                addr("2001:db8:1:1::1"),
            )
            .await
            .expect("instance");
        assert_eq!(conflict_on(store.delete_pod("p1").await), ConflictOn::Other);
        store
            .delete_instance("p1", "vm1")
            .await
            .expect("delete vm1");
        store.delete_pod("p1").await.expect("delete pod");
        assert_eq!(not_found(store.get_pod("p1").await), "pod p1");
        assert_eq!(not_found(store.delete_pod("p1").await), "pod p1");
        store.ping().await.expect("ping");
    })
    .await;
}

#[tokio::test]
async fn instances_and_their_conflicts() {
    each_backend("instances_and_their_conflicts", |store| async move {
        store
            .create_pod(&new_pod("p1", "2001:db8:1::/48", 64))
            .await
            .expect("pod");
        store.put_group("web", "[]").await.expect("group");
        let vm1 = new_instance("vm1", 1, Some("h1"), Some("tap1"), &["web", "web"]);
        let row = store
            .create_instance(
                "p1",
                &vm1,
                Some(net("2001:db8:1:1::/64")),
                addr("2001:db8:1:1::10"),
            )
            .await
            .expect("vm1");
        assert_eq!(
            row,
            InstanceRow {
                name: "vm1".into(),
                mac: vm1.mac,
                host: Some("h1".into()),
                port: Some("tap1".into()),
                prefix: Some(net("2001:db8:1:1::/64")),
                addresses: vec![addr("2001:db8:1:1::10")],
                security_groups: vec!["web".into()],
            }
        );
        assert_eq!(store.get_instance("p1", "vm1").await.expect("get"), row);
        let rev = store.pod_revision("p1").await.expect("rev");

        let create = |inst: NewInstance, prefix: &str, address: &str| {
            let store = store.clone();
            let (prefix, address) = (net(prefix), addr(address));
            async move {
                store
                    .create_instance("p1", &inst, Some(prefix), address)
                    .await
            }
        };
        let fresh = ("2001:db8:1:2::/64", "2001:db8:1:2::10");
        let name = create(new_instance("vm1", 2, None, None, &[]), fresh.0, fresh.1).await;
        assert_eq!(conflict_on(name), ConflictOn::Name);
        let mac = create(new_instance("vm2", 1, None, None, &[]), fresh.0, fresh.1).await;
        let Err(StoreError::Conflict { what, message }) = mac else {
            panic!("{mac:?}");
        };
        assert_eq!(what, ConflictOn::Mac);
        assert!(message.contains("02:00:00:00:00:01"), "{message}");
        let prefix = create(
            new_instance("vm2", 2, None, None, &[]),
            "2001:db8:1:1::/64",
            fresh.1,
        )
        .await;
        assert_eq!(conflict_on(prefix), ConflictOn::Prefix);
        let address = create(
            new_instance("vm2", 2, None, None, &[]),
            fresh.0,
            "2001:db8:1:1::10",
        )
        .await;
        assert_eq!(conflict_on(address), ConflictOn::Address);
        let port = create(
            new_instance("vm2", 2, Some("h1"), Some("tap1"), &[]),
            fresh.0,
            fresh.1,
        )
        .await;
        assert_eq!(conflict_on(port), ConflictOn::Other);
        let group = create(
            new_instance("vm2", 2, None, None, &["nope"]),
            fresh.0,
            fresh.1,
        )
        .await;
        assert_eq!(not_found(group), "security group nope");
        let pod = store
            .create_instance(
                "nope",
                &new_instance("vm2", 2, None, None, &[]),
                None,
                addr("2001:db8:1:2::10"),
            )
            .await;
        assert_eq!(not_found(pod), "pod nope");
        // Every failure rolled back, its pod-revision bump included.
        assert_eq!(store.pod_revision("p1").await, Ok(rev));
        assert_eq!(
            not_found(store.get_instance("p1", "vm2").await),
            "instance vm2 in pod p1"
        );

        // The same address in another pod is fine: uniqueness is per pod.
        store
            .create_pod(&new_pod("p2", "2001:db8:1::/48", 64))
            .await
            .expect("p2");
        store
            .create_instance(
                "p2",
                &new_instance("vm1", 1, None, None, &[]),
                Some(net("2001:db8:1:1::/64")),
                addr("2001:db8:1:1::10"),
            )
            .await
            .expect("same address, other pod");

        store
            .add_address("p1", "vm1", addr("2001:db8:1:1::9"))
            .await
            .expect("second address");
        assert_eq!(
            store
                .get_instance("p1", "vm1")
                .await
                .expect("get")
                .addresses,
            [addr("2001:db8:1:1::9"), addr("2001:db8:1:1::10")]
        );
        assert_eq!(
            conflict_on(
                store
                    .add_address("p1", "vm1", addr("2001:db8:1:1::9"))
                    .await
            ),
            ConflictOn::Address
        );
        assert_eq!(
            not_found(
                store
                    .add_address("p1", "vm9", addr("2001:db8:1:1::8"))
                    .await
            ),
            "instance vm9 in pod p1"
        );
        assert_eq!(
            store
                .used_addresses("p1", net("2001:db8:1:1::/64"))
                .await
                .expect("used"),
            [addr("2001:db8:1:1::9"), addr("2001:db8:1:1::10")]
        );
        assert_eq!(
            store
                .used_addresses("p1", net("2001:db8:1:1::8/125"))
                .await
                .expect("used"),
            [addr("2001:db8:1:1::9")]
        );
        assert_eq!(
            store
                .used_addresses("p1", net("2001:db8:1:2::/64"))
                .await
                .expect("used"),
            Vec::<Ipv6Addr>::new()
        );
        assert_eq!(
            store.used_prefixes("p1").await.expect("prefixes"),
            [net("2001:db8:1:1::/64")]
        );
        store
            .remove_address("p1", "vm1", addr("2001:db8:1:1::9"))
            .await
            .expect("remove");
        assert_eq!(
            not_found(
                store
                    .remove_address("p1", "vm1", addr("2001:db8:1:1::9"))
                    .await
            ),
            "address 2001:db8:1:1::9 of instance vm1 in pod p1"
        );
        assert_eq!(
            not_found(store.delete_instance("p1", "vm9").await),
            "instance vm9 in pod p1"
        );
    })
    .await;
}

#[tokio::test]
async fn every_change_bumps_the_right_revisions() {
    each_backend(
        "every_change_bumps_the_right_revisions",
        |store| async move {
            store
                .create_pod(&new_pod("p1", "2001:db8:1::/64", 64))
                .await
                .expect("pod");
            let revs = || {
                let store = store.clone();
                async move {
                    (
                        store.pod_revision("p1").await.expect("pod rev"),
                        store.host_revision("h1").await.expect("h1 rev"),
                        store.host_revision("h2").await.expect("h2 rev"),
                    )
                }
            };
            assert_eq!(revs().await, (1, 0, 0));
            let create = |name: &str, mac: u8, host: &str, groups: &[&str], address: &str| {
                let store = store.clone();
                let inst = new_instance(name, mac, Some(host), Some(name), groups);
                let address = addr(address);
                async move { store.create_instance("p1", &inst, None, address).await }
            };
            create("vm1", 1, "h1", &[], "2001:db8:1::1")
                .await
                .expect("vm1");
            assert_eq!(revs().await, (2, 1, 0));
            create("vm2", 2, "h2", &[], "2001:db8:1::2")
                .await
                .expect("vm2");
            assert_eq!(revs().await, (3, 1, 1));
            store
                .add_address("p1", "vm1", addr("2001:db8:1::11"))
                .await
                .expect("add");
            assert_eq!(revs().await, (4, 2, 1));
            store
                .remove_address("p1", "vm1", addr("2001:db8:1::11"))
                .await
                .expect("remove");
            assert_eq!(revs().await, (5, 3, 1));
            // Failures change nothing.
            assert!(create("vm9", 9, "h1", &[], "2001:db8:1::1").await.is_err());
            assert!(
                store
                    .add_address("p1", "vm1", addr("2001:db8:1::2"))
                    .await
                    .is_err()
            );
            assert_eq!(revs().await, (5, 3, 1));
            // Groups have feeds of their own: no host, no pod.
            let group_rev = || {
                let store = store.clone();
                async move {
                    store
                        .feed_revision(&FeedKey::group("g"))
                        .await
                        .expect("group rev")
                }
            };
            store.put_group("g", "[]").await.expect("group");
            assert_eq!((revs().await, group_rev().await), ((5, 3, 1), 1));
            store
                .put_group("g", r#"[{"direction":"in","remote_prefix":"::/0"}]"#)
                .await
                .expect("group again");
            assert_eq!((revs().await, group_rev().await), ((5, 3, 1), 2));
            // An instance in a group changes the group's members: its pod, its host, the group.
            create("vm3", 3, "h1", &["g"], "2001:db8:1::3")
                .await
                .expect("vm3");
            assert_eq!((revs().await, group_rev().await), ((6, 4, 1), 3));
            store
                .add_address("p1", "vm3", addr("2001:db8:1::33"))
                .await
                .expect("add");
            assert_eq!((revs().await, group_rev().await), ((7, 5, 1), 4));
            store
                .delete_instance("p1", "vm3")
                .await
                .expect("delete vm3");
            assert_eq!((revs().await, group_rev().await), ((8, 6, 1), 5));
            store
                .delete_instance("p1", "vm2")
                .await
                .expect("delete vm2");
            assert_eq!((revs().await, group_rev().await), ((9, 6, 2), 5));
            store.delete_group("g").await.expect("delete group");
            assert_eq!((revs().await, group_rev().await), ((9, 6, 2), 6));
            // No host: only the pod.
            store
                .create_instance(
                    "p1",
                    &new_instance("vm4", 4, None, None, &[]),
                    None,
                    addr("2001:db8:1::4"),
                )
                .await
                .expect("vm4");
            assert_eq!(revs().await, (10, 6, 2));
            assert_eq!(store.host_revision("unknown").await, Ok(0));
        },
    )
    .await;
}

#[tokio::test]
async fn reservations_and_host_ports_carry_everything_agents_need() {
    each_backend(
        "reservations_and_host_ports_carry_everything_agents_need",
        |store| async move {
            store.put_group("admin", "[]").await.expect("admin");
            let web_rules = r#"[{"direction":"in","protocol":"tcp","ports":"22","remote_group":"admin"},{"direction":"in","protocol":"any","remote_group":"web"}]"#;
            store.put_group("web", web_rules).await.expect("web");
            let db_rules =
                r#"[{"direction":"in","protocol":"tcp","ports":"5432","remote_group":"web"}]"#;
            store.put_group("db", db_rules).await.expect("db");
            store
                .put_group("unrelated", r#"[{"remote_prefix":"::/0"}]"#)
                .await
                .expect("unrelated");
            store
                .create_pod(&new_pod("p1", "2001:db8:1::/48", 64))
                .await
                .expect("p1");
            store
                .create_pod(&new_pod("p2", "2001:db8:2::/64", 64))
                .await
                .expect("p2");
            let create = |pod: &str, inst: NewInstance, prefix: Option<&str>, address: &str| {
                let store = store.clone();
                let pod = pod.to_string();
                let (prefix, address) = (prefix.map(net), addr(address));
                async move {
                    store
                        .create_instance(&pod, &inst, prefix, address)
                        .await
                        .expect("instance")
                }
            };
            let vm1 = create(
                "p1",
                new_instance("vm1", 1, Some("h1"), Some("tap1"), &["web"]),
                Some("2001:db8:1:1::/64"),
                "2001:db8:1:1::10",
            )
            .await;
            store
                .add_address("p1", "vm1", addr("2001:db8:1:1::11"))
                .await
                .expect("second address");
            let vm2 = create(
                "p1",
                new_instance("vm2", 2, Some("h2"), Some("tap2"), &["web"]),
                Some("2001:db8:1:2::/64"),
                "2001:db8:1:2::10",
            )
            .await;
            let vm3 = create(
                "p1",
                new_instance("vm3", 3, Some("h2"), Some("tap0"), &["db"]),
                Some("2001:db8:1:3::/64"),
                "2001:db8:1:3::10",
            )
            .await;
            // On h1 but without a port: nothing for the guard to program.
            let vm4 = create(
                "p1",
                new_instance("vm4", 4, Some("h1"), None, &[]),
                Some("2001:db8:1:4::/64"),
                "2001:db8:1:4::10",
            )
            .await;
            // In another pod, on another host: still a member of its group.
            create(
                "p2",
                new_instance("adm", 1, Some("h3"), Some("tap9"), &["admin"]),
                None,
                "2001:db8:2::5",
            )
            .await;

            let (rev, reservations) = store.reservations("p1").await.expect("reservations");
            assert_eq!(rev, store.pod_revision("p1").await.expect("rev"));
            assert_eq!(
                reservations,
                vec![
                    (
                        vm1.mac,
                        vec![addr("2001:db8:1:1::10"), addr("2001:db8:1:1::11")]
                    ),
                    (vm2.mac, vec![addr("2001:db8:1:2::10")]),
                    (vm3.mac, vec![addr("2001:db8:1:3::10")]),
                    (vm4.mac, vec![addr("2001:db8:1:4::10")]),
                ]
            );
            assert_eq!(not_found(store.reservations("nope").await), "pod nope");

            let web_members = vec![
                addr("2001:db8:1:1::10"),
                addr("2001:db8:1:1::11"),
                addr("2001:db8:1:2::10"),
            ];
            let h1 = store.host_ports("h1").await.expect("h1");
            assert_eq!(
                h1,
                HostPorts {
                    revision: store.host_revision("h1").await.expect("rev"),
                    ports: vec![PortEntry {
                        name: "vm1".into(),
                        interface: "tap1".into(),
                        mac: vm1.mac,
                        addresses: vec![addr("2001:db8:1:1::10"), addr("2001:db8:1:1::11")],
                        prefix: Some(net("2001:db8:1:1::/64")),
                        security_groups: vec!["web".into()],
                    }],
                    groups: vec![
                        ("admin".into(), "[]".into(), vec![addr("2001:db8:2::5")]),
                        ("web".into(), web_rules.into(), web_members.clone()),
                    ],
                }
            );
            let h2 = store.host_ports("h2").await.expect("h2");
            assert!(h2.revision > 0);
            assert_eq!(
                h2.ports,
                vec![
                    PortEntry {
                        name: "vm3".into(),
                        interface: "tap0".into(),
                        mac: vm3.mac,
                        addresses: vec![addr("2001:db8:1:3::10")],
                        prefix: Some(net("2001:db8:1:3::/64")),
                        security_groups: vec!["db".into()],
                    },
                    PortEntry {
                        name: "vm2".into(),
                        interface: "tap2".into(),
                        mac: vm2.mac,
                        addresses: vec![addr("2001:db8:1:2::10")],
                        prefix: Some(net("2001:db8:1:2::/64")),
                        security_groups: vec!["web".into()],
                    },
                ]
            );
            assert_eq!(
                h2.groups,
                vec![
                    ("admin".into(), "[]".into(), vec![addr("2001:db8:2::5")]),
                    (
                        "db".into(),
                        db_rules.into(),
                        vec![addr("2001:db8:1:3::10")]
                    ),
                    ("web".into(), web_rules.into(), web_members),
                ]
            );
            let h3 = store.host_ports("h3").await.expect("h3");
            assert_eq!(h3.ports.len(), 1);
            assert_eq!(
                h3.groups,
                vec![("admin".into(), "[]".into(), vec![addr("2001:db8:2::5")])]
            );
            assert_eq!(
                store.host_ports("nowhere").await.expect("unknown host"),
                HostPorts {
                    revision: 0,
                    ports: vec![],
                    groups: vec![],
                }
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_write_reads_under_its_lock_and_rolls_back_unless_it_commits() {
    let test = "a_pod_write_reads_under_its_lock_and_rolls_back_unless_it_commits";
    each_backend(test, |store| async move {
        store
            .create_pod(&new_pod("p1", "2001:db8:1::/48", 64))
            .await
            .expect("pod");
        let own = net("2001:db8:1:1::/64");
        store
            .create_instance(
                "p1",
                &new_instance("i1", 1, Some("h1"), Some("tap1"), &[]),
                Some(own),
                addr("2001:db8:1:1::5"),
            )
            .await
            .expect("instance");
        let pod_revision = store.pod_revision("p1").await.expect("revision");
        let host_revision = store.host_revision("h1").await.expect("host revision");
        {
            let mut write = store.begin_address_write("p1", "i1").await.expect("begin");
            assert_eq!(write.pod().prefix.net(), net("2001:db8:1::/48"));
            assert_eq!(
                write.pod().revision,
                pod_revision + 1,
                "bumped under the lock"
            );
            assert_eq!(write.instance_prefix(), Some(own));
            assert_eq!(
                write.used_addresses(own).await.expect("used"),
                [addr("2001:db8:1:1::5")]
            );
            assert_eq!(write.used_prefixes().await.expect("prefixes"), [own]);
            assert_eq!(
                write
                    .missing_group(&["ghost".to_string()])
                    .await
                    .expect("groups"),
                Some(0)
            );
            // Dropped without add_address: rolled back.
        }
        assert_eq!(
            store.pod_revision("p1").await.expect("revision"),
            pod_revision
        );
        assert!(
            not_found(store.begin_address_write("p1", "ghost").await)
                .contains("instance ghost in pod p1")
        );
        assert!(not_found(store.begin_address_write("p9", "i1").await).contains("pod p9"));
        assert_eq!(
            conflict_on(
                store
                    .begin_address_write("p1", "i1")
                    .await
                    .expect("begin")
                    .add_address(addr("2001:db8:1:1::5"))
                    .await
            ),
            ConflictOn::Address
        );
        assert_eq!(
            store.pod_revision("p1").await.expect("revision"),
            pod_revision
        );
        store
            .begin_address_write("p1", "i1")
            .await
            .expect("begin")
            .add_address(addr("2001:db8:1:1::6"))
            .await
            .expect("add");
        assert_eq!(
            store.pod_revision("p1").await.expect("revision"),
            pod_revision + 1
        );
        assert_eq!(
            store.host_revision("h1").await.expect("host revision"),
            host_revision + 1
        );
        // An instance write for a host the store has not seen makes its row first.
        let write = store
            .begin_instance_write("p1", Some("h2"))
            .await
            .expect("begin");
        write
            .create_instance(
                &new_instance("i2", 2, Some("h2"), Some("tap1"), &[]),
                Some(net("2001:db8:1:2::/64")),
                addr("2001:db8:1:2::5"),
            )
            .await
            .expect("create");
        assert_eq!(store.host_revision("h2").await.expect("host revision"), 1);
        let write = store
            .begin_instance_write("p1", Some("h2"))
            .await
            .expect("begin");
        assert!(matches!(
            write
                .create_instance(
                    &new_instance("i3", 3, Some("h3"), None, &[]),
                    None,
                    addr("2001:db8:1:3::5"),
                )
                .await,
            Err(StoreError::Other(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn deleting_an_instance_frees_its_address_and_prefix() {
    each_backend(
        "deleting_an_instance_frees_its_address_and_prefix",
        |store| async move {
            store
                .create_pod(&new_pod("p1", "2001:db8:1::/48", 64))
                .await
                .expect("pod");
            store.put_group("g", "[]").await.expect("group");
            let inst = new_instance("vm1", 1, Some("h1"), Some("tap1"), &["g"]);
            let prefix = Some(net("2001:db8:1:7::/64"));
            let address = addr("2001:db8:1:7::1");
            store
                .create_instance("p1", &inst, prefix, address)
                .await
                .expect("first");
            store
                .add_address("p1", "vm1", addr("2001:db8:1:7::2"))
                .await
                .expect("second");
            store.delete_instance("p1", "vm1").await.expect("delete");
            assert_eq!(
                store
                    .used_addresses("p1", net("2001:db8:1::/48"))
                    .await
                    .expect("used"),
                Vec::<Ipv6Addr>::new()
            );
            assert_eq!(store.used_prefixes("p1").await.expect("prefixes"), []);
            assert_eq!(store.host_ports("h1").await.expect("ports").ports, []);
            // Everything it had can be handed out again, even to a namesake.
            let again = store
                .create_instance("p1", &inst, prefix, address)
                .await
                .expect("again");
            assert_eq!(again.addresses, [address]);
            store
                .add_address("p1", "vm1", addr("2001:db8:1:7::2"))
                .await
                .expect("second again");
            // The group can go once nobody is in it.
            store.delete_instance("p1", "vm1").await.expect("delete");
            store.delete_group("g").await.expect("delete group");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_of_one_address_let_exactly_one_win() {
    each_backend(
        "concurrent_claims_of_one_address_let_exactly_one_win",
        |store| async move {
            store
                .create_pod(&new_pod("p1", "2001:db8:1::/120", 120))
                .await
                .expect("pod");
            let contested = addr("2001:db8:1::42");
            let tasks: Vec<_> = (0..8u8)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let inst = new_instance(
                            &format!("vm{i}"),
                            i,
                            Some("h1"),
                            Some(&format!("t{i}")),
                            &[],
                        );
                        store.create_instance("p1", &inst, None, contested).await
                    })
                })
                .collect();
            let mut won = 0;
            for task in tasks {
                match task.await.expect("task") {
                    Ok(_) => won += 1,
                    Err(StoreError::Conflict {
                        what: ConflictOn::Address,
                        ..
                    }) => {}
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(won, 1);
            assert_eq!(
                store
                    .used_addresses("p1", net("2001:db8:1::/120"))
                    .await
                    .expect("used"),
                [contested]
            );

            // Two existing instances race for one more address.
            for (i, address) in [(20u8, "2001:db8:1::20"), (21, "2001:db8:1::21")] {
                store
                    .create_instance(
                        "p1",
                        &new_instance(&format!("vm{i}"), i, None, None, &[]),
                        None,
                        addr(address),
                    )
                    .await
                    .expect("instance");
            }
            let second = addr("2001:db8:1::99");
            let a = tokio::spawn({
                let store = store.clone();
                async move { store.add_address("p1", "vm20", second).await }
            });
            let b = tokio::spawn({
                let store = store.clone();
                async move { store.add_address("p1", "vm21", second).await }
            });
            let results = [a.await.expect("a"), b.await.expect("b")];
            assert_eq!(
                results.iter().filter(|r| r.is_ok()).count(),
                1,
                "{results:?}"
            );
            assert!(results.iter().any(|r| matches!(
                r,
                Err(StoreError::Conflict {
                    what: ConflictOn::Address,
                    ..
                })
            )));
        },
    )
    .await;
}

/// Instance writes in two pods, on four hosts, in groups, racing group rewrites: the fixed lock
/// order (pod, then group rows, then hosts in name order) means none of them may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_concurrent_writers_do_not_deadlock() {
    each_backend(
        "mixed_concurrent_writers_do_not_deadlock",
        |store| async move {
            for group in ["g0", "g1", "g2"] {
                store.put_group(group, "[]").await.expect("group");
            }
            for pod in ["p0", "p1"] {
                store
                    .create_pod(&new_pod(pod, "2001:db8:1::/64", 64))
                    .await
                    .expect("pod");
            }
            let tasks: Vec<_> = (0..6u8)
                .map(|task| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for round in 0..12u8 {
                            let pod = format!("p{}", task % 2);
                            let name = format!("vm{task}-{round}");
                            let group = format!("g{}", round % 3);
                            let inst = NewInstance {
                                name: name.clone(),
                                mac: Mac([2, 0, 0, 0, task, round]),
                                host: Some(format!("h{}", (task + round) % 4)),
                                port: Some(format!("t{task}-{round}")),
                                security_groups: if round % 2 == 0 {
                                    vec![group.clone()]
                                } else {
                                    vec![]
                                },
                            };
                            let first = Ipv6Addr::new(
                                0x2001,
                                0xdb8,
                                1,
                                0,
                                0,
                                0,
                                u16::from(task),
                                u16::from(round),
                            );
                            let second = Ipv6Addr::new(
                                0x2001,
                                0xdb8,
                                1,
                                0,
                                0,
                                1,
                                u16::from(task),
                                u16::from(round),
                            );
                            store.create_instance(&pod, &inst, None, first).await?;
                            store.add_address(&pod, &name, second).await?;
                            if task % 3 == 0 {
                                let rules =
                                    format!(r#"[{{"remote_group":"g{}"}}]"#, (round + 1) % 3);
                                store.put_group(&group, &rules).await?;
                            }
                            store.delete_instance(&pod, &name).await?;
                        }
                        Ok::<(), StoreError>(())
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task").expect("no write may fail");
            }
            assert_eq!(store.reservations("p0").await.expect("p0").1, vec![]);
        },
    )
    .await;
}

#[tokio::test]
async fn security_groups_are_put_read_and_deleted_only_when_unused() {
    each_backend(
        "security_groups_are_put_read_and_deleted_only_when_unused",
        |store| async move {
            store.put_group("a", "[]").await.expect("a");
            let rules = r#"[{"direction":"in","protocol":"tcp","ports":"80","remote_group":"a"}]"#;
            store.put_group("b", rules).await.expect("b");
            assert_eq!(
                store.get_group("b").await,
                Ok(GroupRow {
                    name: "b".into(),
                    rules_json: rules.into(),
                })
            );
            assert_eq!(store.group_exists("a").await, Ok(true));
            assert_eq!(store.group_exists("zz").await, Ok(false));
            assert_eq!(not_found(store.get_group("zz").await), "security group zz");

            let Err(StoreError::Conflict { what, message }) = store.delete_group("a").await else {
                panic!("a is named by b");
            };
            assert_eq!(what, ConflictOn::Other);
            assert!(message.contains("group(s) b"), "{message}");

            // A rule naming a missing group is refused and leaves nothing behind.
            assert_eq!(
                not_found(
                    store
                        .put_group("c", r#"[{"remote_group":"missing"}]"#)
                        .await
                ),
                "security group missing (named by a rule of group c)"
            );
            assert_eq!(store.group_exists("c").await, Ok(false));
            assert!(matches!(
                store.put_group("c", "not json").await,
                Err(StoreError::Other(_))
            ));

            // A group may name itself, and is still deletable.
            store
                .put_group("self", r#"[{"remote_group":"self"}]"#)
                .await
                .expect("self");
            store.delete_group("self").await.expect("delete self");

            // Replacing rules drops the old references.
            store.put_group("b", "[]").await.expect("replace b");
            assert_eq!(store.get_group("b").await.expect("b").rules_json, "[]");

            store
                .create_pod(&new_pod("p1", "2001:db8:1::/64", 64))
                .await
                .expect("pod");
            store
                .create_instance(
                    "p1",
                    &new_instance("vm1", 1, None, None, &["a"]),
                    None,
                    addr("2001:db8:1::1"),
                )
                .await
                .expect("member");
            let in_use = store.delete_group("a").await;
            let Err(StoreError::Conflict { message, .. }) = in_use else {
                panic!("{in_use:?}");
            };
            assert!(message.contains("p1/vm1"), "{message}");
            store
                .delete_instance("p1", "vm1")
                .await
                .expect("delete vm1");
            store.delete_group("a").await.expect("delete a");
            store.delete_group("b").await.expect("delete b");
            assert_eq!(not_found(store.delete_group("a").await), "security group a");
        },
    )
    .await;
}

/// A 127.0.0.1 port that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    let port = closed_port();
    for url in [
        format!("mysql://flat6:flat6@127.0.0.1:{port}/flat6"),
        format!("postgres://flat6:flat6@127.0.0.1:{port}/flat6"),
        "sqlite:///nonexistent-flat6-dir/sub/store.db".to_string(),
    ] {
        let started = Instant::now();
        let result = Store::connect(&url).await;
        assert!(
            matches!(&result, Err(StoreError::Unavailable(_))),
            "{url}: {result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{url}");
        if let Err(err) = result {
            assert!(!err.to_string().contains("flat6:flat6"), "{err}");
        }
    }
}

fn db_script(action: &str, dir: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/netns-scripts/db.sh");
    let status = std::process::Command::new("bash")
        .args([script, action, dir])
        .status()
        .expect("run db.sh");
    assert!(status.success(), "db.sh {action} {dir}: {status}");
}

/// Stop a server under a live store, expect `Unavailable`, start it again and expect the same
/// store to work without being rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_recovers_when_the_database_comes_back() {
    let test = "the_pool_recovers_when_the_database_comes_back";
    let _exclusive = SERVERS.write().await;
    for (var, what, stop, start) in [
        (MYSQL_VAR, "MySQL/MariaDB", "stop-mysql", "start-mysql"),
        (
            POSTGRES_VAR,
            "PostgreSQL",
            "stop-postgres",
            "start-postgres",
        ),
    ] {
        let (Ok(server), Ok(dir)) = (std::env::var(var), std::env::var(DIR_VAR)) else {
            skipped(test, what, &format!("{var} or {DIR_VAR}"));
            continue;
        };
        let (url, name) = fresh_database(&server).await;
        let store = Store::connect(&url).await.expect("store");
        store
            .create_pod(&new_pod("p1", "2001:db8:1::/64", 64))
            .await
            .expect("pod");
        db_script(stop, &dir);
        let started = Instant::now();
        let down = store.get_pod("p1").await;
        assert!(
            matches!(&down, Err(StoreError::Unavailable(_))),
            "{what}: {down:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(matches!(
            store
                .create_pod(&new_pod("p2", "2001:db8:2::/64", 64))
                .await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable(_))
        ));
        db_script(start, &dir);
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.ping().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "{what}: the pool did not recover"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(store.get_pod("p1").await.expect("p1 again").revision, 1);
        store
            .create_pod(&new_pod("p2", "2001:db8:2::/64", 64))
            .await
            .expect("write again");
        eprintln!("{test}: {what} recovered");
        store.pool.close().await;
        let backend = store.backend();
        drop_database(&server, backend, &name).await;
    }
}

/// SQLite's writer connection (see `Store::sqlite_writer`): a write abandoned mid-way (an early
/// return, a cancelled request) is rolled back at once, not only when this process next writes,
/// so another process on the same file is not kept waiting; a connection marked broken is
/// replaced.
#[tokio::test]
async fn the_sqlite_writer_rolls_back_abandoned_writes_and_replaces_a_broken_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = Store::connect(&url).await.expect("store");
    let other_process = Store::connect(&url).await.expect("second store");
    store
        .create_pod(&new_pod("p1", "2001:db8:1::/48", 64))
        .await
        .expect("pod");
    let write = store
        .begin_instance_write("p1", Some("h1"))
        .await
        .expect("begin");
    let i1 = new_instance("i1", 1, Some("h1"), None, &[]);
    let own = net("2001:db8:1:1::/64");
    write
        .create_instance(&i1, Some(own), addr("2001:db8:1:1::5"))
        .await
        .expect("instance");
    let revision = store.pod_revision("p1").await.expect("revision");
    // Begun (the pod locked, the SQLite write lock taken) and dropped without a commit.
    let abandoned = store.begin_address_write("p1", "i1").await.expect("begin");
    drop(abandoned);
    let started = Instant::now();
    other_process
        .create_pod(&new_pod("p2", "2001:db8:2::/48", 64))
        .await
        .expect("a write by another process");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the other process waited {:?} for the write lock",
        started.elapsed()
    );
    assert_eq!(store.pod_revision("p1").await.expect("revision"), revision);
    if let Some(writer) = store.sqlite_writer.lock().await.as_mut() {
        writer.broken = true;
    }
    store
        .add_address("p1", "i1", addr("2001:db8:1:1::7"))
        .await
        .expect("a write on a new writer connection");
    let writer = store.sqlite_writer.lock().await;
    assert!(writer.as_ref().is_some_and(|w| !w.broken && !w.open));
    drop(writer);
    assert_eq!(
        store.get_instance("p1", "i1").await.expect("i1").addresses,
        [addr("2001:db8:1:1::5"), addr("2001:db8:1:1::7")]
    );
    assert_eq!(
        store.pod_revision("p1").await.expect("revision"),
        revision + 1
    );
}

#[test]
fn database_urls_are_rewritten_per_test() {
    assert_eq!(
        with_database("mysql://u:p@127.0.0.1:3306/flat6", "t1"),
        "mysql://u:p@127.0.0.1:3306/t1"
    );
    assert_eq!(
        with_database("postgres://u:p@h:5/flat6?sslmode=disable", "t1"),
        "postgres://u:p@h:5/t1?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h:5", "t1"), "postgres://h:5/t1");
}

// ------------------------------------------------------------------ the change feed

use crate::model::doc::{GroupChange, HostChanges, PortEntry, Reservation, ReservationChanges};

/// A follower's view of a pod: MAC → addresses.
type PodState = BTreeMap<Mac, Vec<Ipv6Addr>>;

fn apply_reservations(state: &mut PodState, change: &ReservationChanges) {
    if change.snapshot {
        state.clear();
    }
    for mac in &change.removed {
        state.remove(mac);
    }
    for Reservation { mac, addresses } in &change.reservations {
        state.insert(*mac, addresses.clone());
    }
}

/// A follower's view of a host: ports by interface; groups: name → (rules JSON, members).
#[derive(Debug, Clone, Default, PartialEq)]
struct HostState {
    ports: BTreeMap<String, PortEntry>,
    groups: BTreeMap<String, (String, BTreeSet<Ipv6Addr>)>,
    cursor: GroupCursor,
}

fn apply_host(state: &mut HostState, change: &HostChanges) {
    if change.snapshot {
        *state = HostState::default();
    }
    for gone in &change.removed_ports {
        state.ports.remove(gone);
    }
    for port in &change.ports {
        state.ports.insert(port.interface.clone(), port.clone());
    }
    for gone in &change.removed_groups {
        state.groups.remove(gone);
        state.cursor.remove(gone);
    }
    for GroupChange {
        name,
        revision,
        snapshot,
        rules,
        members,
        removed_members,
    } in &change.groups
    {
        let entry = state.groups.entry(name.clone()).or_default();
        if *snapshot {
            *entry = Default::default();
        }
        if let Some(rules) = rules {
            entry.0 = serde_json::to_string(rules).expect("rules");
        }
        for m in removed_members {
            entry.1.remove(m);
        }
        entry.1.extend(members.iter().copied());
        state.cursor.insert(name.clone(), *revision);
    }
}

/// Random writes on one pod and two hosts; after each, the snapshot each follower would get.
/// Then, from every recorded revision, the changes since it applied to what the follower had
/// then must give exactly the final snapshot — with the whole history, and again after the
/// history was compacted (the old revisions then get snapshots).
#[tokio::test]
async fn the_feed_from_any_revision_gives_the_latest_documents() {
    use rand::{Rng, SeedableRng};
    each_backend(
        "the_feed_from_any_revision_gives_the_latest_documents",
        |store| async move {
            let cluster = store.cluster_id().await.expect("cluster");
            store.put_group("g1", "[]").await.expect("g1");
            store
                .put_group("g2", r#"[{"direction":"ingress","remote_group":"g1"}]"#)
                .await
                .expect("g2");
            store
                .create_pod(&new_pod("p1", "2001:db8:1::/48", 64))
                .await
                .expect("pod");
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let hosts = ["h1", "h2"];
            let groups = ["g1", "g2"];
            let mut pod_history: Vec<(u64, PodState)> = Vec::new();
            let mut host_history: Vec<(String, u64, HostState)> = Vec::new();
            let mut live: Vec<(String, Ipv6Net)> = Vec::new();
            let mut next = 0u32;
            for step in 0..60 {
                let op = if live.is_empty() {
                    0
                } else {
                    rng.random_range(0..7)
                };
                match op {
                    0 | 1 => {
                        next += 1;
                        let name = format!("vm{next}");
                        let host = hosts[rng.random_range(0..2)];
                        let picked: Vec<&str> = groups
                            .iter()
                            .copied()
                            .filter(|_| rng.random_bool(0.5))
                            .collect();
                        let port = format!("tap{next}");
                        let mut inst = new_instance(
                            &name,
                            (next % 250) as u8 + 1,
                            Some(host),
                            Some(&port),
                            &picked,
                        );
                        inst.mac = Mac([2, 0, 0, 0, (next / 250) as u8, (next % 250) as u8 + 1]);
                        if rng.random_bool(0.2) {
                            inst.port = None;
                        }
                        let prefix = net(&format!("2001:db8:1:{next:x}::/64"));
                        store
                            .create_instance(
                                "p1",
                                &inst,
                                Some(prefix),
                                addr(&format!("2001:db8:1:{next:x}::1")),
                            )
                            .await
                            .expect("create");
                        live.push((name, prefix));
                    }
                    2 => {
                        let (name, prefix) = &live[rng.random_range(0..live.len())];
                        let a = Ipv6Addr::from(
                            u128::from(prefix.network()) + rng.random_range(2..1000u128),
                        );
                        let _ = store.add_address("p1", name, a).await;
                    }
                    3 => {
                        let (name, _) = &live[rng.random_range(0..live.len())];
                        let row = store.get_instance("p1", name).await.expect("get");
                        if let Some(a) = row.addresses.last() {
                            store.remove_address("p1", name, *a).await.expect("remove");
                        }
                    }
                    4 => {
                        let i = rng.random_range(0..live.len());
                        let (name, _) = live.remove(i);
                        store.delete_instance("p1", &name).await.expect("delete");
                    }
                    5 => {
                        let (name, _) = &live[rng.random_range(0..live.len())];
                        let host = hosts[rng.random_range(0..2)];
                        let change = InstanceChange {
                            host: Some(Some(host.to_string())),
                            port: Some(Some(format!("mv{step}"))),
                            security_groups: Some(
                                groups
                                    .iter()
                                    .filter(|_| rng.random_bool(0.5))
                                    .map(|g| g.to_string())
                                    .collect(),
                            ),
                        };
                        let moved = store
                            .update_instance("p1", name, &change)
                            .await
                            .expect("move");
                        assert!(moved.is_ok());
                    }
                    _ => {
                        let rules = if rng.random_bool(0.5) {
                            r#"[{"direction":"ingress","remote_group":"g1"}]"#
                        } else {
                            r#"[{"direction":"egress","protocol":"tcp","ports":"80"}]"#
                        };
                        store.put_group("g2", rules).await.expect("rules");
                    }
                }
                let snapshot = store
                    .reservation_changes("p1", None, None)
                    .await
                    .expect("pod snapshot");
                assert!(snapshot.snapshot);
                let mut state = PodState::new();
                apply_reservations(&mut state, &snapshot);
                pod_history.push((snapshot.revision, state));
                for host in hosts {
                    let snapshot = store
                        .host_changes(host, None, &GroupCursor::new(), None)
                        .await
                        .expect("host snapshot");
                    let mut state = HostState::default();
                    apply_host(&mut state, &snapshot);
                    host_history.push((host.to_string(), snapshot.revision, state));
                }
            }
            for compacted in [false, true] {
                if compacted {
                    let removed = store.compact_feed(5).await.expect("compact");
                    assert!(removed > 0);
                }
                let latest = pod_history.last().expect("history").1.clone();
                let mut snapshots = 0;
                for (revision, state) in &pod_history {
                    let change = store
                        .reservation_changes("p1", Some(*revision), Some(&cluster))
                        .await
                        .expect("changes");
                    snapshots += usize::from(change.snapshot);
                    let mut state = state.clone();
                    apply_reservations(&mut state, &change);
                    assert_eq!(
                        state, latest,
                        "pod from revision {revision} (compacted: {compacted})"
                    );
                }
                assert_eq!(snapshots > 0, compacted, "{snapshots} snapshots");
                for host in hosts {
                    let latest = host_history
                        .iter()
                        .rev()
                        .find(|(h, _, _)| h == host)
                        .expect("host history")
                        .2
                        .clone();
                    for (h, revision, state) in host_history.iter().filter(|(h, _, _)| h == host) {
                        let change = store
                            .host_changes(h, Some(*revision), &state.cursor, Some(&cluster))
                            .await
                            .expect("host changes");
                        let mut state = state.clone();
                        apply_host(&mut state, &change);
                        assert_eq!(
                            (&state.ports, &state.groups),
                            (&latest.ports, &latest.groups),
                            "host {h} from revision {revision} (compacted: {compacted})"
                        );
                    }
                }
            }
            // Another database's revision is never resumed: a snapshot.
            let other = store
                .reservation_changes("p1", Some(1), Some("another-cluster"))
                .await
                .expect("changes");
            assert!(other.snapshot);
        },
    )
    .await;
}

// ------------------------------------------------------------------ dense ranges

/// A small shared range and a small per-instance pod fill to their last address or /64 and then
/// answer "exhausted" (409), every choice reading at most the block counts and one block: never
/// the whole range.
#[tokio::test]
async fn dense_ranges_fill_to_the_last_value_then_409_reading_one_block_per_choice() {
    use crate::controller::metrics::Metrics;
    use crate::controller::service::{self, ErrorKind, InstanceRequest};
    use rand::SeedableRng;
    use std::sync::atomic::Ordering;
    each_backend(
        "dense_ranges_fill_to_the_last_value_then_409_reading_one_block_per_choice",
        |store| async move {
            let metrics = Metrics::default();
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let request = |n: u32| InstanceRequest {
                name: format!("i-{n}"),
                mac: format!("02:00:00:00:{:02x}:{:02x}", n >> 8, n & 0xff),
                host: None,
                port: None,
                security_groups: vec![],
            };
            // A /117 shared range: 2048 addresses, less the subnet-router anycast and the top 128.
            store
                .create_pod(&new_pod("shared", "fd00:5::/117", 117))
                .await
                .expect("pod");
            let allowed = crate::controller::allocate::allowed_count(net("fd00:5::/117"), &[]);
            assert_eq!(allowed, 1919);
            service::create_instance(&store, &metrics, "shared", &request(0), &mut rng)
                .await
                .expect("first instance");
            let mut most = 0;
            let mut handed = 1u128;
            let exhausted = loop {
                let before = metrics.allocation_rows_read.load(Ordering::Relaxed);
                let result =
                    service::add_address(&store, &metrics, "shared", "i-0", &mut rng).await;
                most = most.max(metrics.allocation_rows_read.load(Ordering::Relaxed) - before);
                match result {
                    Ok(_) => handed += 1,
                    Err(err) => break err,
                }
                assert!(handed <= allowed, "more than the allowed addresses");
            };
            assert_eq!(handed, allowed);
            assert_eq!(exhausted.kind, ErrorKind::Conflict, "{exhausted:?}");
            assert!(
                exhausted.message.contains("no free address"),
                "{exhausted:?}"
            );
            // 8 random draws looked up, 32 block counts and one block of 64.
            assert!(most <= 8 + 32 + 64, "a choice read {most} rows");
            let row = store.get_instance("shared", "i-0").await.expect("instance");
            assert_eq!(row.addresses.len() as u128, allowed);

            // A /54 with one /64 per instance: 1024 of them.
            store
                .create_pod(&new_pod("per", "2001:db8:5:fc00::/54", 64))
                .await
                .expect("pod");
            let mut created = 0u32;
            let mut most = 0;
            let exhausted = loop {
                let before = metrics.allocation_rows_read.load(Ordering::Relaxed);
                let result =
                    service::create_instance(&store, &metrics, "per", &request(created), &mut rng)
                        .await;
                most = most.max(metrics.allocation_rows_read.load(Ordering::Relaxed) - before);
                match result {
                    Ok(_) => created += 1,
                    Err(err) => break err,
                }
                assert!(created <= 1024);
            };
            assert_eq!(created, 1024);
            assert_eq!(exhausted.kind, ErrorKind::Conflict, "{exhausted:?}");
            assert!(most <= 8 + 32 + 32, "a choice read {most} rows");
            // A deleted instance frees its /64 (and its count): exactly one more fits.
            store.delete_instance("per", "i-7").await.expect("delete");
            service::create_instance(&store, &metrics, "per", &request(5000), &mut rng)
                .await
                .expect("the freed /64");
            assert!(
                service::create_instance(&store, &metrics, "per", &request(5001), &mut rng)
                    .await
                    .is_err()
            );
        },
    )
    .await;
}
