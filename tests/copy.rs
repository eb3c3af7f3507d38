//! COPY through the proxy under RLS (wire-contract case 19), and large
//! streams passing with bounded proxy memory.

mod support;

use support::{summarize, PgCluster, Proxy, ProxyOptions, TENANT_A, TENANT_B};

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn case19_copy_out_sees_only_the_tenants_rows() {
    let pg = PgCluster::start().await;
    pg.seed_tool_calls(TENANT_A, 3).await;
    pg.seed_tool_calls(TENANT_B, 2).await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    let msgs = a.simple("COPY (SELECT tenant_id FROM tool_calls ORDER BY id) TO STDOUT").await;
    let got = summarize(&msgs);
    assert_eq!(got.first().map(String::as_str), Some("H"));
    assert_eq!(&got[got.len() - 3..], ["c", "C:COPY 3", "Z:I"]);
    let lines: Vec<String> =
        msgs.iter().filter(|m| m.tag == b'd').map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect();
    assert_eq!(lines, vec![format!("{TENANT_A}\n"); 3]);
}

#[tokio::test]
async fn case19_copy_in_behaves_as_directly() {
    let pg = PgCluster::start().await;
    let su = pg.superuser().await;
    su.batch_execute("CREATE TABLE sink (t text); GRANT INSERT, SELECT ON sink TO app_user").await.unwrap();
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    // PostgreSQL itself refuses COPY FROM into a table with RLS; the client sees exactly that.
    let msgs = a.simple("COPY tool_calls (tenant_id, tool_name) FROM STDIN").await;
    assert_eq!(summarize(&msgs), ["E:0A000", "Z:I"]);
    assert!(msgs[0].error_fields()[&'M'].contains("COPY FROM not supported with row-level security"));
    // Into a table without RLS it streams through.
    a.query("COPY sink FROM STDIN").flush().await;
    assert_eq!(a.read_message().await.tag, b'G');
    for i in 0..100 {
        a.raw(b'd', format!("copied-{i}\n").as_bytes());
    }
    a.raw(b'c', b"").flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["C:COPY 100", "Z:I"]);
    let n: i64 = su.query_one("SELECT count(*) FROM sink", &[]).await.unwrap().get(0);
    assert_eq!(n, 100);
    // CopyFail aborts cleanly and the session goes on.
    a.query("COPY sink FROM STDIN").flush().await;
    assert_eq!(a.read_message().await.tag, b'G');
    a.raw(b'd', b"never\n").raw(b'f', b"client gave up\0").flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["E:57014", "Z:I"]);
    let n: i64 = su.query_one("SELECT count(*) FROM sink", &[]).await.unwrap().get(0);
    assert_eq!(n, 100);
    assert_eq!(summarize(&a.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn large_results_and_copy_streams_do_not_grow_proxy_memory() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&a.simple("SELECT 1").await).len(), 4);
    let before = peak_rss_kib(proxy.pid());
    // 200 MB of rows, read as fast as the test can.
    a.query("SELECT repeat('x', 1000) FROM generate_series(1, 200000)").flush().await;
    let mut bytes = 0usize;
    let mut rows = 0usize;
    loop {
        let m = a.read_message().await;
        match m.tag {
            b'D' => {
                rows += 1;
                bytes += m.body.len();
            }
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(rows, 200_000);
    assert!(bytes > 200_000_000);
    // 100 MB in through COPY FROM STDIN into a scratch table.
    let su = pg.superuser().await;
    su.batch_execute("CREATE TABLE sink (t text); GRANT INSERT ON sink TO app_user").await.unwrap();
    a.query("COPY sink FROM STDIN").flush().await;
    assert_eq!(a.read_message().await.tag, b'G');
    let line = format!("{}\n", "y".repeat(9_999));
    for _ in 0..100 {
        for _ in 0..100 {
            a.raw(b'd', line.as_bytes());
        }
        a.flush().await;
    }
    a.raw(b'c', b"").flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["C:COPY 10000", "Z:I"]);
    let after = peak_rss_kib(proxy.pid());
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(grown_mib < 64, "proxy peak RSS grew by {grown_mib} MiB while 300 MB passed through");
}
