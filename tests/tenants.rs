//! Each configured tenant runs as its own actor under the tenants supervisor, found by its
//! stable name, and is restarted if it crashes.

mod common;

use common::*;
use std::time::Duration;
use switchyard::actors::tenant;
use switchyard::config::{TenantConfig, UserConfig};

fn tenant(id: &str, domain: &str, users: &[&str]) -> TenantConfig {
    TenantConfig {
        id: id.into(),
        domain: domain.into(),
        realm: None,
        users: users
            .iter()
            .map(|u| UserConfig {
                username: u.to_string(),
                ha1_md5: Some("0".repeat(32)),
                ha1_sha256: None,
                outbound: None,
            })
            .collect(),
        users_csv: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_supervised_actors() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), &[]);
    c.tenants = vec![
        tenant("acme", "acme.example.com", &["1001", "1002"]),
        tenant("globex", "globex.example.com", &["1001"]),
    ];
    let node = start_with(c).await;
    let acme = tenant::lookup("acme", &node.name).expect("acme runs");
    let info = tenant::info(&acme).await.unwrap();
    assert_eq!(
        (info.domain.as_str(), info.realm.as_str(), info.users),
        ("acme.example.com", "acme.example.com", 2)
    );
    let globex = tenant::info(&tenant::lookup("globex", &node.name).unwrap())
        .await
        .unwrap();
    assert_eq!(globex.users, 1);
    assert!(tenant::lookup("initech", &node.name).is_none());

    // A killed tenant actor is restarted and found again under its name.
    acme.kill();
    let back = wait_until(Duration::from_secs(5), || {
        tenant::lookup("acme", &node.name).is_some_and(|a| a.get_id() != acme.get_id())
    })
    .await;
    assert!(back, "tenant actor restarted");
    let info = tenant::info(&tenant::lookup("acme", &node.name).unwrap())
        .await
        .unwrap();
    assert_eq!(info.users, 2);
    node.shutdown().await;
}
