//! Transaction pooling: pool limits and waiting, upstream authentication
//! methods, clients leaving mid-transaction (case 21), upstream restarts
//! (case 22), many clients on a small pool (case 20), prepared statements
//! across server connections (case 17).

mod support;

use std::time::Duration;

use support::{summarize, PgCluster, Proxy, ProxyOptions, RawClient, TENANT_A, TENANT_B};

const TENANT_QUERY: &str = "SELECT current_setting('app.current_tenant_id')";

async fn app_user_backends(pg: &PgCluster, user: &str) -> i64 {
    let su = pg.superuser().await;
    su.query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&user]).await.unwrap().get(0)
}

#[tokio::test]
async fn never_more_than_pool_size_server_connections() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(3)).await;
    let mut clients = Vec::new();
    for i in 0..12 {
        clients.push(proxy.raw_login(if i % 2 == 0 { TENANT_A } else { TENANT_B }).await);
    }
    for c in clients.iter_mut() {
        c.query("SELECT pg_sleep(0.05)").flush().await;
    }
    for c in clients.iter_mut() {
        assert_eq!(summarize(&c.read_until_ready().await), ["T", "D:", "C:SELECT 1", "Z:I"]);
    }
    let backends = app_user_backends(&pg, "app_user").await;
    assert!((1..=3).contains(&backends), "{backends} app_user backends for pool_size 3");
}

#[tokio::test]
async fn waiting_longer_than_pool_timeout_is_a_clear_error() {
    let pg = PgCluster::start().await;
    let options = ProxyOptions::default().pool_size(1).set("upstream", "pool_timeout_seconds", "1");
    let proxy = Proxy::start(&pg, options).await;
    let mut holder = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&holder.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    let mut waiter = proxy.raw_login(TENANT_B).await;
    waiter.query("SELECT 1").flush().await;
    let msgs = waiter.expect_closed().await;
    assert_eq!(summarize(&msgs), ["E:53300"]);
    let fields = msgs[0].error_fields();
    assert_eq!(fields[&'S'], "FATAL");
    assert!(fields[&'M'].contains("no server connection"), "{}", fields[&'M']);
    assert!(fields[&'H'].contains("pool_size"), "{}", fields[&'H']);
    // The holder is unaffected.
    assert_eq!(summarize(&holder.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
}

#[tokio::test]
async fn one_tenant_cannot_take_the_whole_pool() {
    let pg = PgCluster::start().await;
    let options = ProxyOptions::default().pool_size(3).set("upstream", "max_connections_per_tenant", "2").set(
        "upstream",
        "pool_timeout_seconds",
        "1",
    );
    let proxy = Proxy::start(&pg, options).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = proxy.raw_login(TENANT_A).await;
        assert_eq!(summarize(&c.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
        held.push(c);
    }
    // A third client of the same tenant waits although a connection is free...
    let mut third = proxy.raw_login(TENANT_A).await;
    third.query("SELECT 1").flush().await;
    // ...which another tenant gets at once.
    let mut other = proxy.raw_login(TENANT_B).await;
    assert_eq!(
        summarize(&other.simple(TENANT_QUERY).await),
        ["T", format!("D:{TENANT_B}").as_str(), "C:SELECT 1", "Z:I"]
    );
    let msgs = third.expect_closed().await;
    assert_eq!(summarize(&msgs), ["E:53300"]);
    assert!(msgs[0].error_fields()[&'H'].contains("max_connections_per_tenant"), "{:?}", msgs[0].error_fields());
    // Once tenant A finishes a transaction its next client is served.
    assert_eq!(summarize(&held[0].simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
    let mut fourth = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&fourth.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn oversized_client_messages_are_refused_at_the_configured_limit() {
    let pg = PgCluster::start().await;
    let options = ProxyOptions::default().set("listen", "max_message_bytes", "100000");
    let proxy = Proxy::start(&pg, options).await;
    let mut ok = proxy.raw_login(TENANT_A).await;
    let fits = format!("SELECT length('{}')", "x".repeat(90_000));
    assert_eq!(summarize(&ok.simple(&fits).await), ["T", "D:90000", "C:SELECT 1", "Z:I"]);
    let mut big = proxy.raw_login(TENANT_A).await;
    big.query(&format!("SELECT length('{}')", "x".repeat(100_000))).flush().await;
    let msgs = big.expect_closed().await;
    assert_eq!(summarize(&msgs), ["E:08P01"]);
    assert!(msgs[0].error_fields()[&'M'].contains("exceeds the limit of 100000 bytes"), "{:?}", msgs[0].error_fields());
    // Other clients are unaffected.
    assert_eq!(summarize(&ok.simple("SELECT 2").await), ["T", "D:2", "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn upstream_md5_and_trust_logins_work() {
    let pg = PgCluster::start().await;
    let md5 = ProxyOptions::default().upstream_user("md5_user").set(
        "upstream",
        "password",
        format!("\"{}\"", pg.md5_password()),
    );
    let proxy = Proxy::start(&pg, md5).await;
    let mut c = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&c.simple("SELECT current_user").await), ["T", "D:md5_user", "C:SELECT 1", "Z:I"]);
    // postgres has trust on 127.0.0.1 in the test cluster: no password at all.
    let trust = ProxyOptions::default().upstream_user("postgres").unset("upstream", "password").set(
        "upstream",
        "allow_rls_bypassing_role",
        "true",
    );
    let proxy = Proxy::start(&pg, trust).await;
    let mut c = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&c.simple("SELECT current_user").await), ["T", "D:postgres", "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn wrong_upstream_password_is_reported_to_the_client() {
    let pg = PgCluster::start().await;
    let options = ProxyOptions::default().set("upstream", "password", "\"wrong\"");
    let proxy = Proxy::start(&pg, options).await;
    let mut c = RawClient::connect(proxy.port()).await;
    let err = c.login("anyname", "app", &proxy.token(TENANT_A)).await.unwrap_err();
    assert_eq!(err.code(), "08006");
    assert!(err.message().contains("upstream"), "{}", err.message());
    assert!(!proxy.log().contains("\"wrong\""));
}

#[tokio::test]
async fn case21_disconnect_mid_transaction_leaves_nothing_open() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(1)).await;
    let ids = pg.seed_tool_calls(TENANT_A, 1).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&a.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    let lock = format!("UPDATE tool_calls SET tool_name = 'locked' WHERE id = {}", ids[0]);
    assert_eq!(summarize(&a.simple(&lock).await), ["C:UPDATE 1", "Z:T"]);
    drop(a);
    // The only server connection must come back without the open transaction:
    // the row lock is gone and the update was rolled back.
    let mut b = proxy.raw_login(TENANT_A).await;
    let update = format!("UPDATE tool_calls SET tool_name = 'next' WHERE id = {}", ids[0]);
    assert_eq!(summarize(&b.simple("SET lock_timeout = '5s'").await), ["C:SET", "Z:I"]);
    assert_eq!(summarize(&b.simple(&update).await), ["C:UPDATE 1", "Z:I"]);
    let su = pg.superuser().await;
    let open: i64 = su
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_user' AND xact_start IS NOT NULL AND state <> 'active'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0);
}

#[tokio::test]
async fn disconnect_during_a_running_query_cancels_it() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(2)).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    a.query("SELECT pg_sleep(60)").flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(a);
    let su = pg.superuser().await;
    let mut still_running = true;
    for _ in 0..50 {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            still_running = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!still_running, "the abandoned pg_sleep(60) is still running");
}

#[tokio::test]
async fn case22_pool_recovers_after_an_upstream_restart() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(2)).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    let mut b = proxy.raw_login(TENANT_B).await;
    assert_eq!(summarize(&a.simple(TENANT_QUERY).await)[1], format!("D:{TENANT_A}"));
    assert_eq!(summarize(&b.simple(TENANT_QUERY).await)[1], format!("D:{TENANT_B}"));
    pg.restart();
    // Idle clients keep their sessions; the dead server connections are replaced.
    for _ in 0..3 {
        assert_eq!(summarize(&a.simple(TENANT_QUERY).await), ["T", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
        assert_eq!(summarize(&b.simple(TENANT_QUERY).await), ["T", &format!("D:{TENANT_B}"), "C:SELECT 1", "Z:I"]);
    }
}

#[tokio::test]
async fn case20_a_thousand_clients_of_a_hundred_tenants_on_a_pool_of_ten() {
    let pg = PgCluster::start().await;
    let proxy = std::sync::Arc::new(Proxy::start(&pg, ProxyOptions::default().pool_size(10)).await);
    let tenants: Vec<String> = (0..100).map(|i| format!("00000000-0000-4000-8000-{i:012}")).collect();
    {
        let su = pg.superuser().await;
        for t in &tenants {
            let sql = format!("INSERT INTO tool_calls (tenant_id, tool_name) VALUES ('{t}', '{t}')");
            su.batch_execute(&sql).await.unwrap();
        }
    }
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let proxy = proxy.clone();
        let tenant = tenants[i % 100].clone();
        tasks.push(tokio::spawn(async move {
            let client = proxy.connect(&tenant).await;
            let mut seen = Vec::new();
            for _ in 0..3 {
                let rows = client.query("SELECT tool_name FROM tool_calls", &[]).await.unwrap();
                seen.extend(rows.iter().map(|r| r.get::<_, String>(0)));
            }
            (tenant, seen)
        }));
    }
    for task in tasks {
        let (tenant, seen) = task.await.unwrap();
        assert_eq!(seen, vec![tenant.clone(), tenant.clone(), tenant.clone()], "tenant {tenant}");
    }
    let backends = app_user_backends(&pg, "app_user").await;
    assert!(backends <= 10, "{backends} server connections for pool_size 10");
}

#[tokio::test]
async fn case17_named_statement_runs_across_pooled_connections() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(4)).await;
    let a = proxy.connect(TENANT_A).await;
    let stmt = a.prepare("SELECT current_setting('app.current_tenant_id') || '/' || $1::text").await.unwrap();
    // Every other execution, another tenant holds a transaction open on the
    // connection A used last (the pool hands out the most recently returned
    // one), so A's executions alternate between server connections.
    let mut holder = proxy.raw_login(TENANT_B).await;
    let mut backends = std::collections::HashSet::new();
    for i in 0..100 {
        if i % 2 == 0 {
            assert_eq!(summarize(&holder.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
        }
        let row = a.query_one(&stmt, &[&i.to_string()]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("{TENANT_A}/{i}"));
        let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        backends.insert(pid);
        if i % 2 == 0 {
            assert_eq!(summarize(&holder.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
        }
    }
    assert!(backends.len() > 1, "expected executions on several server connections");
    // B cannot use A's statement name (tokio-postgres names them s0, s1, ...).
    let mut b = proxy.raw_login(TENANT_B).await;
    b.bind("", "s0", &[Some(b"x")]).execute("", 0).sync();
    b.flush().await;
    assert_eq!(summarize(&b.read_until_ready().await), ["E:26000", "Z:I"]);
}

#[tokio::test]
async fn discard_all_does_not_break_prepared_statements() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(1)).await;
    let a = proxy.connect(TENANT_A).await;
    let stmt = a.prepare("SELECT $1::int + 1").await.unwrap();
    assert_eq!(a.query_one(&stmt, &[&1i32]).await.unwrap().get::<_, i32>(0), 2);
    let b = proxy.connect(TENANT_B).await;
    let other = b.prepare("SELECT $1::int + 1").await.unwrap();
    b.batch_execute("DISCARD ALL").await.unwrap();
    // A's statement is re-prepared on demand on the (only) server connection.
    assert_eq!(a.query_one(&stmt, &[&41i32]).await.unwrap().get::<_, i32>(0), 42);
    // B's was discarded by B itself, as on a direct connection.
    assert!(b.query_one(&other, &[&1i32]).await.is_err());
}

#[tokio::test]
async fn a_server_connection_killed_mid_transaction_is_replaced() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(1)).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&a.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    let msgs = a.simple("SELECT pg_backend_pid()::text").await;
    let pid: i32 = msgs[1].data_row()[0].clone().unwrap().parse().unwrap();
    let su = pg.superuser().await;
    su.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    // The client learns that its transaction is gone...
    let closed = a.expect_closed().await;
    let codes: Vec<String> = closed.iter().filter(|m| m.tag == b'E').map(|m| m.sqlstate()).collect();
    assert!(codes.contains(&"08006".to_string()) || codes.contains(&"57P01".to_string()), "{codes:?}");
    // ...and the only pool slot is usable again with a fresh server connection.
    let mut b = proxy.raw_login(TENANT_B).await;
    let msgs = b.simple("SELECT pg_backend_pid()::text").await;
    let new_pid: i32 = msgs[1].data_row()[0].clone().unwrap().parse().unwrap();
    assert_ne!(new_pid, pid);
}

#[tokio::test]
async fn prepared_statements_per_server_connection_are_bounded() {
    let pg = PgCluster::start().await;
    let options = ProxyOptions::default().pool_size(1).set("upstream", "max_prepared_statements", "3");
    let proxy = Proxy::start(&pg, options).await;
    let a = proxy.connect(TENANT_A).await;
    let mut stmts = Vec::new();
    for i in 0..10 {
        stmts.push(a.prepare(&format!("SELECT {i}::int + $1::int")).await.unwrap());
    }
    for round in 0..3 {
        for (i, stmt) in stmts.iter().enumerate() {
            let got: i32 = a.query_one(stmt, &[&round]).await.unwrap().get(0);
            assert_eq!(got, i as i32 + round);
        }
    }
    let count = "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgtenant%'";
    let n: i64 = a.query_one(count, &[]).await.unwrap().get(0);
    // Three of the client's, the proxy's tenant statement, and the count query itself.
    assert!(n <= 5, "{n} statements prepared on the server connection");
}

/// A pool of one server connection, held by tenant B's open transaction.
async fn pool_of_one_held_open() -> (PgCluster, Proxy, RawClient) {
    let pg = PgCluster::start().await;
    let options = ProxyOptions::default().pool_size(1).set("upstream", "pool_timeout_seconds", "1");
    let proxy = Proxy::start(&pg, options).await;
    let mut holder = proxy.raw_login(TENANT_B).await;
    assert_eq!(summarize(&holder.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    (pg, proxy, holder)
}

#[tokio::test]
async fn named_parse_outside_a_transaction_needs_no_server() {
    let (_pg, proxy, mut holder) = pool_of_one_held_open().await;
    // The only server connection is busy, yet a synchronous prepare completes.
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("q", TENANT_QUERY, &[]).sync();
    a.parse("bad", "SELEC 1", &[]).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "Z:I"]);
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "Z:I"]);
    assert_eq!(summarize(&holder.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
    a.bind("", "q", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["2", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
    // A statement with an error reports it at its first use.
    a.bind("", "bad", &[]).execute("", 0).sync();
    a.flush().await;
    let msgs = a.read_until_ready().await;
    assert_eq!(summarize(&msgs), ["E:42601", "Z:I"]);
}

#[tokio::test]
async fn upstream_cleartext_password_login_works() {
    let pg = PgCluster::start().await;
    let su = pg.superuser().await;
    su.batch_execute(
        "CREATE ROLE plain_user LOGIN PASSWORD 'plain-secret'; GRANT CONNECT ON DATABASE app TO plain_user;",
    )
    .await
    .unwrap();
    // First matching pg_hba line wins: ask plain_user for a cleartext password.
    let hba = pg.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host all plain_user 127.0.0.1/32 password\n{old}")).unwrap();
    su.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let options = ProxyOptions::default().upstream_user("plain_user").set("upstream", "password", "\"plain-secret\"");
    let proxy = Proxy::start(&pg, options).await;
    let mut c = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&c.simple("SELECT current_user").await), ["T", "D:plain_user", "C:SELECT 1", "Z:I"]);
    let method: String = su
        .query_one("SELECT auth_method FROM pg_hba_file_rules WHERE 'plain_user' = ANY(user_name)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(method, "password");
}

#[tokio::test]
async fn sql_deallocate_of_a_protocol_statement_is_honoured() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(2)).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("_pg3_0", TENANT_QUERY, &[]).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "Z:I"]);
    a.bind("", "_pg3_0", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["2", &format!("D:{TENANT_A}"), "C:SELECT 1", "Z:I"]);
    // psycopg 3 evicts its prepared statements with SQL DEALLOCATE.
    assert_eq!(summarize(&a.simple("DEALLOCATE _pg3_0").await), ["C:DEALLOCATE", "Z:I"]);
    a.bind("", "_pg3_0", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["E:26000", "Z:I"]);
    // The name can be prepared again, inside a transaction too.
    assert_eq!(summarize(&a.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    a.parse("_pg3_0", "SELECT 2", &[]).bind("", "_pg3_0", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "2", "D:2", "C:SELECT 1", "Z:T"]);
    assert_eq!(summarize(&a.simple("DEALLOCATE _pg3_0").await), ["C:DEALLOCATE", "Z:T"]);
    assert_eq!(summarize(&a.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
    // Unknown names still get PostgreSQL's own error.
    assert_eq!(summarize(&a.simple("DEALLOCATE nosuch").await), ["E:26000", "Z:I"]);
}

#[tokio::test]
async fn close_and_fastpath_are_answered_without_waiting_for_the_pool() {
    let (_pg, proxy, mut holder) = pool_of_one_held_open().await;
    let mut a = proxy.raw_login(TENANT_A).await;
    a.parse("q", TENANT_QUERY, &[]).sync().close_statement("q").sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["1", "Z:I"]);
    assert_eq!(summarize(&a.read_until_ready().await), ["3", "Z:I"]);
    a.function_call(2078, &[]).flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["E:42501", "Z:I"]);
    assert_eq!(summarize(&holder.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
    // The closed name is gone for the client.
    a.bind("", "q", &[]).execute("", 0).sync();
    a.flush().await;
    assert_eq!(summarize(&a.read_until_ready().await), ["E:26000", "Z:I"]);
}

#[tokio::test]
async fn named_statements_per_client_are_bounded() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut c = proxy.raw_login(TENANT_A).await;
    const LIMIT: usize = 10_000;
    for i in 0..LIMIT {
        c.parse(&format!("s{i}"), &format!("SELECT {i}"), &[]);
    }
    c.sync().flush().await;
    let msgs = c.read_until_ready().await;
    assert_eq!(msgs.iter().filter(|m| m.tag == b'1').count(), LIMIT);
    // One more is refused with a clear error; the session goes on.
    c.parse("one_too_many", "SELECT 1", &[]).sync().flush().await;
    let msgs = c.read_until_ready().await;
    assert_eq!(summarize(&msgs), ["E:53400", "Z:I"]);
    assert!(msgs[0].error_fields()[&'M'].contains("too many prepared statements"), "{:?}", msgs[0].error_fields());
    // Closing one makes room; the statements still work.
    c.close_statement("s0").parse("room", "SELECT 42", &[]).bind("", "room", &[]).execute("", 0).sync().flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["3", "1", "2", "D:42", "C:SELECT 1", "Z:I"]);
    c.bind("", "s9999", &[]).execute("", 0).sync().flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["2", "D:9999", "C:SELECT 1", "Z:I"]);
}
