//! Singleton checkpoints handed over across the cluster, with a real etcd and two real
//! switchyard processes on 127.0.0.1 and 127.0.0.2: a queue's statistics and a trunk's
//! health survive a SIGKILL of their owner (from the checkpoint it wrote at most a second
//! before) and a give-away to a rejoining node (exactly).

mod common;

use common::cluster::{get_json, owners_of, wait_etcd, NodeProc};
use common::etcd::{etcd_binary, etcd_urls, start_etcd};
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::cluster::{checkpoints, ownership};

const PREFIX: &str = "/ckpt";

/// A metric's value on a node: the series `name` with every one of `labels` (`k="v"`).
async fn metric(node: SocketAddr, name: &str, labels: &[&str]) -> Option<f64> {
    tokio::net::TcpStream::connect(node).await.ok()?;
    let reply = http_request(node, "GET", "/metrics", None, "").await;
    reply
        .body
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// Polls until the trunk's up gauge on `node` reads `want`.
async fn trunk_up_is(node: SocketAddr, trunk: &str, want: f64, what: &str) {
    let label = format!("trunk=\"{trunk}\"");
    poll(what, Duration::from_secs(5), || {
        let label = label.clone();
        async move {
            let v = metric(node, "switchyard_trunk_up", &[&label]).await?;
            (v == want).then_some(())
        }
    })
    .await;
}

/// Polls `f` every 50 ms until it gives Some, or panics naming `what` after `limit`.
async fn poll<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The owner of `key` according to `node`'s `GET /cluster`.
async fn owner_seen(node: SocketAddr, key: &str) -> Option<String> {
    owners_of(node, key).await.into_iter().next()
}

/// A queue's `overflowed` count on a node (None while it does not run the queue).
async fn overflowed(node: SocketAddr) -> Option<u64> {
    get_json(node, "/queues/cc/support").await?["overflowed"].as_u64()
}

/// Calls the queue's number on `sw`; nobody is logged in and the queue takes no caller then,
/// so each call overflows (480) and counts.
async fn overflow_calls(caller: &Ua, sw: SocketAddr, ids: std::ops::Range<u32>) {
    for i in ids {
        let cid = format!("ckpt-{i}-{}", rand_token());
        caller
            .send(sw, &invite(&cid, "5000", caller.addr, sw))
            .await;
        caller
            .expect("480 (queue overflow)", |m| {
                m.status() == Some(480) && call_id(m) == cid
            })
            .await;
    }
}

/// A carrier gateway that answers OPTIONS probes with `status` (changed by the test).
fn gateway(ua: Ua, status: Arc<AtomicU16>) {
    tokio::spawn(async move {
        loop {
            if let Some((m, from)) = ua.recv(Duration::from_millis(200)).await {
                if m.method().is_some_and(|x| x.to_string() == "OPTIONS") {
                    let s = status.load(Ordering::Relaxed);
                    let reason = if s == 200 {
                        "OK"
                    } else {
                        "Service Unavailable"
                    };
                    ua.send(from, &answer(&m, s, reason, "gw", ua.addr, ""))
                        .await;
                }
            }
        }
    });
}

/// The checkpoint of `key` in etcd, decoded by `decode`.
async fn etcd_checkpoint<T>(
    mut client: etcd_client::Client,
    key: &str,
    decode: impl Fn(&[u8]) -> Result<T, String>,
) -> Option<T> {
    let resp = client
        .get(format!("{PREFIX}/checkpoints/{key}"), None)
        .await
        .ok()?;
    let kv = resp.kvs().first()?;
    Some(decode(kv.value()).expect("a valid checkpoint"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_counts_and_trunk_health_survive_sigkill_and_give_away() {
    let Some(etcd_bin) = etcd_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (client_url, peer_url) = etcd_urls();
    let _etcd = start_etcd(&etcd_bin, dir.path(), &client_url, &peer_url);

    // The trunk is placed with the tenant, so one SIGKILL moves both.
    let names = ["n1", "n2"];
    let tenant_owner = ownership::owner("tenant/cc", &names).unwrap().to_string();
    let trunk = (0..100)
        .map(|i| format!("t{i}"))
        .find(|t| ownership::owner(&format!("trunk/{t}"), &names) == Some(tenant_owner.as_str()))
        .unwrap();
    let gw = Ua::new().await;
    let gw_addr = gw.addr;
    let probe_answer = Arc::new(AtomicU16::new(503));
    gateway(gw, probe_answer.clone());

    let token = common::API_TOKEN;
    let config = format!(
        "[http]\ntoken = \"{token}\"\n\
         [security]\ntrusted = [\"127.0.0.1\"]\n\
         [[tenants]]\nid = \"cc\"\ndomain = \"cc.test\"\n\
         [[tenants.queues]]\nid = \"support\"\njoin_empty = false\n\
         [[tenants.numbers]]\nnumber = \"5000\"\ntarget = \"queue:support\"\n\
         [[trunks]]\nid = \"{trunk}\"\ngateways = [\"sip:{gw_addr}\"]\n\
         probe_interval_secs = 1\ndown_after_failed_probes = 2\nup_after_good_probes = 60\n"
    );
    let config_path = dir.path().join("switchyard.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut nodes: Vec<NodeProc> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ip = format!("127.0.0.{}", i + 1);
            NodeProc::new(
                dir.path(),
                name,
                &ip,
                &config_path,
                (&client_url, PREFIX),
                "",
            )
        })
        .collect();
    wait_etcd(&client_url).await;
    let etcd = etcd_client::Client::connect([client_url.as_str()], None)
        .await
        .expect("etcd client");
    for n in &mut nodes {
        n.spawn(dir.path());
    }
    let vi = nodes.iter().position(|n| n.name == tenant_owner).unwrap();
    let si = 1 - vi;
    let (victim, survivor) = (nodes[vi].http, nodes[si].http);
    let trunk_key = format!("trunk/{trunk}");
    for key in ["tenant/cc", trunk_key.as_str()] {
        let want = tenant_owner.clone();
        poll(
            &format!("{key} owned by {want}"),
            Duration::from_secs(20),
            || {
                let want = want.clone();
                async move { (owner_seen(survivor, key).await? == want).then_some(()) }
            },
        )
        .await;
    }

    // 1. On the owner: three callers overflow, the trunk's probes fail and it goes down.
    let caller = Ua::new().await;
    overflow_calls(&caller, nodes[vi].sip, 0..3).await;
    let before = poll(
        "3 overflows on the owner",
        Duration::from_secs(5),
        || async { overflowed(victim).await.filter(|n| *n >= 3) },
    )
    .await;
    assert_eq!(before, 3);
    trunk_up_is(victim, &trunk, 0.0, "the trunk down on its owner").await;
    // Both are in etcd within about a second.
    poll(
        "the queue's checkpoint in etcd",
        Duration::from_secs(5),
        || {
            let etcd = etcd.clone();
            async move {
                let r =
                    etcd_checkpoint(etcd, "queue/cc/support", checkpoints::decode_queue).await?;
                (r.counts.overflowed == 3 && r.counts.joined == 0).then_some(())
            }
        },
    )
    .await;
    poll(
        "the trunk's checkpoint in etcd",
        Duration::from_secs(5),
        || {
            let (etcd, key) = (etcd.clone(), trunk_key.clone());
            async move {
                let r = etcd_checkpoint(etcd, &key, checkpoints::decode_trunk).await?;
                (!r.trunk.up).then_some(())
            }
        },
    )
    .await;

    // The other node follows the owner's view: its calls skip the trunk too.
    trunk_up_is(
        survivor,
        &trunk,
        0.0,
        "the owner's down followed by the other node",
    )
    .await;
    assert!(
        metric(
            survivor,
            "switchyard_cluster_trunk_followed_total",
            &["outcome=\"applied\""]
        )
        .await
        .is_some_and(|n| n >= 1.0),
        "trunk checkpoints applied on the other node"
    );

    // 2. SIGKILL the owner. From now on the gateway answers its probes, so a trunk started
    // from its configuration would come up at once: down on the survivor once its actor
    // runs there can only be the checkpoint.
    probe_answer.store(200, Ordering::Relaxed);
    let killed = Instant::now();
    nodes[vi].kill9();
    let survivor_name = nodes[si].name.clone();
    for key in ["tenant/cc", trunk_key.as_str()] {
        let want = survivor_name.clone();
        poll(
            &format!("{key} taken over"),
            Duration::from_secs(15),
            || {
                let want = want.clone();
                async move { (owner_seen(survivor, key).await? == want).then_some(()) }
            },
        )
        .await;
    }
    eprintln!("takeover after SIGKILL: {:?}", killed.elapsed());
    let after = poll(
        "the queue on the survivor",
        Duration::from_secs(5),
        || async { overflowed(survivor).await },
    )
    .await;
    assert!(after >= before, "counts went back: {after} < {before}");
    assert_eq!(after, 3);
    trunk_up_is(survivor, &trunk, 0.0, "the trunk down on the survivor").await;
    for kind in ["queue", "trunk"] {
        let restored = metric(
            survivor,
            "switchyard_cluster_checkpoints_restored_total",
            &[&format!("kind=\"{kind}\""), "outcome=\"restored\""],
        )
        .await;
        assert_eq!(restored, Some(1.0), "{kind} checkpoints restored");
    }

    // 3. Two more overflows on the survivor; the killed node comes back and, by rendezvous
    // hashing, takes both back: the survivor's final checkpoint hands them over exactly.
    overflow_calls(&caller, nodes[si].sip, 3..5).await;
    poll(
        "5 overflows on the survivor",
        Duration::from_secs(5),
        || async { overflowed(survivor).await.filter(|n| *n == 5) },
    )
    .await;
    nodes[vi].spawn(dir.path());
    for key in ["tenant/cc", trunk_key.as_str()] {
        let want = tenant_owner.clone();
        poll(
            &format!("{key} handed back"),
            Duration::from_secs(20),
            || {
                let want = want.clone();
                async move { (owner_seen(survivor, key).await? == want).then_some(()) }
            },
        )
        .await;
    }
    let back = poll(
        "the queue on the rejoined node",
        Duration::from_secs(5),
        || async { overflowed(victim).await },
    )
    .await;
    assert_eq!(back, 5, "the give-away lost counts");
    trunk_up_is(victim, &trunk, 0.0, "the trunk down after the give-away").await;
}
