//! CancelRequest with the proxy's key cancels that client's query, and only
//! that one (wire-contract case 18).

mod support;

use std::time::{Duration, Instant};

use support::{cancel, summarize, PgCluster, Proxy, ProxyOptions, RawClient, TENANT_A, TENANT_B};

async fn login(proxy: &Proxy, tenant: &str) -> (RawClient, (i32, i32)) {
    let mut c = RawClient::connect(proxy.port()).await;
    let info = c.login("anyname", "app", &proxy.token(tenant)).await.expect("login");
    (c, info.backend_key)
}

#[tokio::test]
async fn case18_cancel_reaches_only_that_clients_query() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(4)).await;
    let (mut a, key_a) = login(&proxy, TENANT_A).await;
    let (mut b, key_b) = login(&proxy, TENANT_B).await;
    assert_ne!(key_a, key_b);
    a.query("SELECT pg_sleep(30)").flush().await;
    b.query("SELECT pg_sleep(1.5)").flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    cancel(proxy.port(), key_a.0, key_a.1).await;
    let msgs = a.read_until_ready().await;
    assert_eq!(summarize(&msgs), ["T", "E:57014", "Z:I"]);
    assert!(started.elapsed() < Duration::from_secs(20), "cancel did not interrupt pg_sleep(30)");
    // B's query ran to completion.
    assert_eq!(summarize(&b.read_until_ready().await), ["T", "D:", "C:SELECT 1", "Z:I"]);
    // A is still usable.
    assert_eq!(summarize(&a.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn cancel_with_a_wrong_secret_or_for_an_idle_client_does_nothing() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(2)).await;
    let (mut a, key_a) = login(&proxy, TENANT_A).await;
    let (mut idle, key_idle) = login(&proxy, TENANT_B).await;
    a.query("SELECT pg_sleep(1)").flush().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel(proxy.port(), key_a.0, key_a.1.wrapping_add(1)).await;
    cancel(proxy.port(), key_idle.0, key_idle.1).await;
    assert_eq!(summarize(&a.read_until_ready().await), ["T", "D:", "C:SELECT 1", "Z:I"]);
    assert_eq!(summarize(&idle.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
}
