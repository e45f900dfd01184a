//! Cluster membership and ownership with a real etcd and three real switchyard processes on
//! 127.0.0.1, 127.0.0.2 and 127.0.0.3: every singleton owned exactly once and spread by
//! rendezvous hashing, SIGKILL of a node and the takeover by the survivors, the killed node's
//! rejoin taking its fair share back, and a drain. The nodes talk to each other over TLS
//! (`[tls]` in cluster.toml, one certificate for the cluster).

mod common;

use common::cluster::{get_json, wait_etcd, NodeProc};
use common::etcd::{etcd_binary, etcd_urls, start_etcd, Proc};
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard::cluster::ownership;

const TOKEN: &str = common::API_TOKEN;

/// A one-member etcd on loopback in a temporary directory, with its client URL.
fn etcd_in(bin: &Path, dir: &Path) -> (Proc, String) {
    let (client, peer) = etcd_urls();
    (start_etcd(bin, dir, &client, &peer), client)
}

/// Owner of every key according to one node's `GET /cluster`, and whether a key is owned
/// twice (which must never be seen).
fn owners(view: &Value) -> (BTreeMap<String, String>, Vec<String>) {
    let mut map = BTreeMap::new();
    let mut twice = Vec::new();
    for n in view["nodes"].as_array().unwrap() {
        let name = n["name"].as_str().unwrap().to_string();
        for k in n["owns"].as_array().unwrap() {
            let k = k.as_str().unwrap().to_string();
            if map.insert(k.clone(), name.clone()).is_some() {
                twice.push(k);
            }
        }
    }
    (map, twice)
}

fn singletons() -> Vec<String> {
    let mut v = Vec::new();
    for t in ["red", "green", "blue"] {
        v.push(format!("tenant/{t}"));
        v.push(format!("queue/{t}/support"));
    }
    for t in ["alpha", "beta", "gamma", "delta"] {
        v.push(format!("trunk/{t}"));
    }
    v.sort();
    v
}

/// Where rendezvous hashing places everything over `up` (queues with their tenant).
fn expected(up: &[&str]) -> BTreeMap<String, String> {
    singletons()
        .into_iter()
        .map(|k| {
            let placed = match k.strip_prefix("queue/") {
                Some(rest) => format!("tenant/{}", rest.split('/').next().unwrap()),
                None => k.clone(),
            };
            let owner = ownership::owner(&placed, up).unwrap().to_string();
            (k, owner)
        })
        .collect()
}

/// Polls `node`'s view until every singleton is owned as `want` says; returns the time it
/// took. Panics (with the last view) after `limit`, or at once if a key is owned twice.
async fn wait_owned(
    node: SocketAddr,
    want: &BTreeMap<String, String>,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < limit {
        if let Some(view) = get_json(node, "/cluster").await {
            let (map, twice) = owners(&view);
            assert!(twice.is_empty(), "owned twice: {twice:?} in {view}");
            if &map == want {
                return start.elapsed();
            }
            last = view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ownership not reached in {limit:?}: want {want:?}, last view {last}");
}

async fn metric(node: SocketAddr, name: &str) -> f64 {
    let reply = http_request(node, "GET", "/metrics", None, "").await;
    reply
        .body
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_singletons_take_over_rejoin_and_drain() {
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, etcd_url) = etcd_in(&etcd_bin, dir.path());

    let mut config = String::from("[http]\ntoken = \"");
    config.push_str(TOKEN);
    config.push_str("\"\n[security]\ntrusted = [\"127.0.0.1\"]\n");
    for t in ["red", "green", "blue"] {
        config.push_str(&format!(
            "[[tenants]]\nid = \"{t}\"\ndomain = \"{t}.test\"\n[[tenants.queues]]\nid = \"support\"\n"
        ));
    }
    for (i, t) in ["alpha", "beta", "gamma", "delta"].iter().enumerate() {
        config.push_str(&format!(
            "[[trunks]]\nid = \"{t}\"\ngateways = [\"sip:127.0.0.1:{}\"]\n",
            40000 + i
        ));
    }
    let config_path = dir.path().join("switchyard.toml");
    std::fs::write(&config_path, config).unwrap();
    // One certificate for the cluster, valid for the name the nodes check.
    let ck = rcgen::generate_simple_self_signed(vec!["switchyard-cluster".to_string()]).unwrap();
    let (cert, key) = (
        dir.path().join("cluster.crt"),
        dir.path().join("cluster.key"),
    );
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();

    let tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let mut nodes: Vec<NodeProc> = (1..=3)
        .map(|i| {
            let (name, ip) = (format!("n{i}"), format!("127.0.0.{i}"));
            NodeProc::new(
                dir.path(),
                &name,
                &ip,
                &config_path,
                (&etcd_url, "/test"),
                &tls,
            )
        })
        .collect();
    wait_etcd(&etcd_url).await;
    for n in &mut nodes {
        n.spawn(dir.path());
    }

    // 1. Everything owned exactly once, where rendezvous hashing says.
    let all = ["n1", "n2", "n3"];
    wait_owned(nodes[0].http, &expected(&all), Duration::from_secs(20)).await;
    for n in &nodes {
        // Every node sees the same.
        wait_owned(n.http, &expected(&all), Duration::from_secs(5)).await;
    }
    // The nodes' message ports are connected to each other (over TLS).
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        let peers = loop {
            let peers = metric(n.http, "switchyard_cluster_peers").await;
            if peers == 2.0 || Instant::now() > deadline {
                break peers;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(peers, 2.0, "{} is not connected to both peers", n.name);
    }
    // The owners really run them: each queue answers on its owner.
    let want = expected(&all);
    for t in ["red", "green", "blue"] {
        let owner = &want[&format!("tenant/{t}")];
        let node = nodes.iter().find(|n| &n.name == owner).unwrap();
        let q = get_json(node.http, &format!("/queues/{t}/support")).await;
        assert!(
            q.is_some(),
            "queue {t}/support does not answer on its owner {owner}"
        );
    }
    // Any other node sends the API client there: a 307 to the same path on the owner.
    for t in ["red", "green", "blue"] {
        let owner = &want[&format!("tenant/{t}")];
        let path = format!("/queues/{t}/support?x=1");
        for n in nodes.iter().filter(|n| &n.name != owner) {
            let r = http_request(n.http, "GET", &path, Some(common::API_BEARER), "").await;
            let home = nodes.iter().find(|m| &m.name == owner).unwrap().http;
            assert_eq!(r.status, 307, "{t} on {}: {}", n.name, r.body);
            assert_eq!(r.header("location"), format!("http://{home}{path}"));
            assert!(r.body.contains(owner.as_str()), "{}", r.body);
        }
    }

    // 2. SIGKILL the node that owns the most; the survivors take everything over.
    let victim = ["n1", "n2", "n3"]
        .iter()
        .copied()
        .max_by_key(|n| want.values().filter(|o| o == n).count())
        .unwrap();
    let vi = nodes.iter().position(|n| n.name == victim).unwrap();
    let survivors: Vec<&str> = all.iter().copied().filter(|n| *n != victim).collect();
    let watcher = nodes[(vi + 1) % 3].http;
    let killed_at = Instant::now();
    nodes[vi].kill9();
    wait_owned(watcher, &expected(&survivors), Duration::from_secs(15)).await;
    let takeover = killed_at.elapsed();
    eprintln!("takeover after SIGKILL of {victim}: {takeover:?} (lease 3 s)");
    assert!(
        takeover < Duration::from_secs(8),
        "takeover took {takeover:?}"
    );
    let after = expected(&survivors);
    for t in ["red", "green", "blue"] {
        let owner = &after[&format!("tenant/{t}")];
        let node = nodes.iter().find(|n| &n.name == owner).unwrap();
        assert!(
            get_json(node.http, &format!("/queues/{t}/support"))
                .await
                .is_some(),
            "queue {t}/support not running on its new owner {owner}"
        );
    }
    let takeovers: f64 = {
        let mut sum = 0.0;
        for s in &survivors {
            let n = nodes.iter().find(|n| &n.name == s).unwrap();
            sum += metric(n.http, "switchyard_cluster_takeover_seconds_count").await;
        }
        sum
    };
    assert!(takeovers >= 1.0, "no takeover counted");
    assert!(
        metric(
            watcher,
            "switchyard_cluster_membership_changes_total{change=\"left\"}"
        )
        .await
            >= 1.0
    );

    // 3. The killed node restarts and takes its fair share back (exactly what it owned).
    nodes[vi].spawn(dir.path());
    wait_owned(watcher, &expected(&all), Duration::from_secs(20)).await;

    // 4. Drain: a node gives everything away and claims nothing; undrain takes it back.
    let drained = &nodes[vi];
    let denied = http_request(drained.http, "POST", "/cluster/drain", None, "").await;
    assert_eq!(denied.status, 401);
    let bearer = format!("Bearer {TOKEN}");
    let reply = http_request(drained.http, "POST", "/cluster/drain", Some(&bearer), "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let view: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(view["state"], "draining");
    let (map, twice) = owners(&view);
    assert!(twice.is_empty());
    assert!(
        map.values().all(|o| o != victim) && map.len() == singletons().len(),
        "drain left {victim} owning something: {view}"
    );
    assert_eq!(
        metric(drained.http, "switchyard_cluster_draining").await,
        1.0
    );
    let reply = http_request(drained.http, "POST", "/cluster/undrain", Some(&bearer), "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    wait_owned(watcher, &expected(&all), Duration::from_secs(10)).await;
}
