//! Bad input from a client ends that client's connection with a clear error
//! and never disturbs the proxy or other clients.

mod support;

use tokio::io::AsyncWriteExt;

use support::{summarize, PgCluster, Proxy, ProxyOptions, RawClient, TENANT_A, TENANT_B};

async fn still_serves(proxy: &Proxy, bystander: &mut RawClient) {
    let q = "SELECT current_setting('app.current_tenant_id')";
    assert_eq!(summarize(&bystander.simple(q).await), ["T", &format!("D:{TENANT_B}"), "C:SELECT 1", "Z:I"]);
    let mut fresh = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&fresh.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
}

fn fatal_code(msgs: &[support::Message]) -> String {
    let err = msgs.iter().find(|m| m.tag == b'E').unwrap_or_else(|| panic!("no error in {:?}", summarize(msgs)));
    assert_eq!(err.error_fields()[&'S'], "FATAL");
    err.sqlstate()
}

#[tokio::test]
async fn bad_startup_packets_are_refused() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut bystander = proxy.raw_login(TENANT_B).await;
    let cases: [&[u8]; 4] = [
        b"\x00\x00\x00\x03",                                     // shorter than its own header
        b"\x7f\xff\xff\xff\x00\x03\x00\x00",                     // claims 2 GB
        b"\x00\x00\x00\x0c\x00\x02\x00\x00user\x00",             // protocol 2.0
        b"\x00\x00\x00\x10\x00\x03\x00\x00us\xffr\x00x\x00\x00", // invalid UTF-8
    ];
    for bytes in cases {
        let mut c = RawClient::connect(proxy.port()).await;
        c.raw_bytes(bytes).flush().await;
        let msgs = c.expect_closed().await;
        assert_eq!(fatal_code(&msgs), "08P01", "{bytes:?}");
    }
    still_serves(&proxy, &mut bystander).await;
}

#[tokio::test]
async fn oversized_and_unknown_messages_end_only_that_session() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut bystander = proxy.raw_login(TENANT_B).await;
    let cases: [&[u8]; 4] = [
        b"Q\x7f\xff\xff\xff",                   // 2 GB Query: refused before any allocation
        b"Q\x00\x00\x00\x02",                   // length smaller than the length field
        b"z\x00\x00\x00\x04",                   // unknown message type
        b"P\x00\x00\x00\x0as\x00q\x00\xff\xff", // Parse with a negative parameter count
    ];
    for bytes in cases {
        let mut c = proxy.raw_login(TENANT_A).await;
        c.raw_bytes(bytes).flush().await;
        assert_eq!(fatal_code(&c.expect_closed().await), "08P01", "{bytes:?}");
    }
    still_serves(&proxy, &mut bystander).await;
}

#[tokio::test]
async fn truncated_frames_and_abrupt_disconnects_are_harmless() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(2)).await;
    let mut bystander = proxy.raw_login(TENANT_B).await;
    for cut in [1usize, 3, 5, 9] {
        let mut c = proxy.raw_login(TENANT_A).await;
        let full = b"Q\x00\x00\x00\x0dSELECT 1\x00";
        c.stream_mut().write_all(&full[..cut]).await.unwrap();
        drop(c);
    }
    // Invalid UTF-8 in a query is PostgreSQL's to reject; the session goes on.
    let mut c = proxy.raw_login(TENANT_A).await;
    c.raw(b'Q', b"SELECT '\xff\xfe'\x00").flush().await;
    assert_eq!(summarize(&c.read_until_ready().await), ["E:22021", "Z:I"]);
    assert_eq!(summarize(&c.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
    still_serves(&proxy, &mut bystander).await;
}

#[tokio::test]
async fn random_bytes_after_login_never_take_the_proxy_down() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(2)).await;
    let mut bystander = proxy.raw_login(TENANT_B).await;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..60 {
        let mut c = proxy.raw_login(TENANT_A).await;
        let len = (next() % 200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Keep message lengths small half of the time so frames complete.
        if bytes.len() > 5 && next() % 2 == 0 {
            bytes[1..5].copy_from_slice(&((len as u32 - 1).min(64)).to_be_bytes());
        }
        let _ = c.stream_mut().write_all(&bytes).await;
        let _ = c.try_read_message(std::time::Duration::from_millis(50)).await;
    }
    still_serves(&proxy, &mut bystander).await;
}

#[tokio::test]
async fn clients_beyond_max_client_conn_are_refused() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().set("listen", "max_client_conn", "2")).await;
    let mut a = proxy.raw_login(TENANT_A).await;
    let mut b = proxy.raw_login(TENANT_B).await;
    let mut third = RawClient::connect(proxy.port()).await;
    let msgs = third.expect_closed().await;
    assert_eq!(summarize(&msgs), ["E:53300"]);
    assert_eq!(summarize(&a.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
    b.terminate().flush().await;
    // A slot frees when a client leaves.
    let mut again = None;
    for _ in 0..50 {
        let mut c = RawClient::connect(proxy.port()).await;
        if c.login("anyname", "app", &proxy.token(TENANT_B)).await.is_ok() {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut again = again.expect("a slot became free");
    assert_eq!(summarize(&again.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
}

#[tokio::test]
async fn repeated_failed_logins_from_one_address_are_answered_slowly() {
    let pg = PgCluster::start().await;
    let options = ProxyOptions::default().set("listen", "login_failures_before_backoff", "2").set(
        "listen",
        "login_backoff_max_seconds",
        "30",
    );
    let proxy = Proxy::start(&pg, options).await;
    let bad = proxy.config("not-a-token");
    let attempt = move || {
        let bad = bad.clone();
        async move {
            let err = bad.connect(tokio_postgres::NoTls).await.err().expect("a bad token is refused");
            err.as_db_error().map(|e| e.code().code().to_string())
        }
    };
    // Six failures (answered after at most 2 s each, in parallel) ...
    let first: Vec<_> = (0..6).map(|_| tokio::spawn(attempt())).collect();
    for handle in first {
        assert_eq!(handle.await.unwrap().as_deref(), Some("28P01"));
    }
    // ... so the seventh is held for several seconds, while a good login from
    // the same address is not delayed at all.
    let slow = tokio::spawn(attempt());
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut good = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&good.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
    assert!(!slow.is_finished(), "the seventh failed login was answered before a good login completed");
    assert_eq!(slow.await.unwrap().as_deref(), Some("28P01"));
    assert!(proxy.log().contains("repeated failed logins from this address"), "{}", proxy.log());
}

#[tokio::test]
async fn messages_out_of_order_get_errors_not_hangs() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().pool_size(2)).await;
    let mut bystander = proxy.raw_login(TENANT_B).await;
    let within = std::time::Duration::from_secs(10);

    // Execute of a portal nobody bound, Bind of a statement nobody parsed: server errors.
    let mut c = proxy.raw_login(TENANT_A).await;
    c.execute("nope", 0).sync().flush().await;
    let msgs = tokio::time::timeout(within, c.read_until_ready()).await.expect("an answer, not a hang");
    assert_eq!(summarize(&msgs), ["E:34000", "Z:I"]);
    c.bind("", "never_parsed", &[]).execute("", 0).sync().flush().await;
    let msgs = tokio::time::timeout(within, c.read_until_ready()).await.expect("an answer, not a hang");
    assert_eq!(summarize(&msgs), ["E:26000", "Z:I"]);
    // The unnamed portal of a finished transaction is gone, even though the
    // proxy set the tenant at the start of the new one (in its own portal).
    c.parse("", "SELECT 1", &[]).bind("", "", &[]).sync().flush().await;
    let msgs = tokio::time::timeout(within, c.read_until_ready()).await.expect("an answer, not a hang");
    assert_eq!(summarize(&msgs), ["1", "2", "Z:I"]);
    c.execute("", 0).sync().flush().await;
    let msgs = tokio::time::timeout(within, c.read_until_ready()).await.expect("an answer, not a hang");
    assert_eq!(summarize(&msgs), ["E:34000", "Z:I"]);
    // CopyData and CopyDone outside COPY are ignored, as PostgreSQL does.
    c.raw(b'd', b"stray").raw(b'c', b"").flush().await;
    assert_eq!(summarize(&c.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);

    // A second password message, or a second startup packet, after login: a protocol violation.
    for bytes in [&b"p\x00\x00\x00\x09abcd\x00"[..], b"\x00\x00\x00\x08\x00\x03\x00\x00"] {
        let mut c = proxy.raw_login(TENANT_A).await;
        c.raw_bytes(bytes).flush().await;
        let msgs = tokio::time::timeout(within, c.expect_closed()).await.expect("closed, not hung");
        assert_eq!(fatal_code(&msgs), "08P01", "{bytes:?}: {:?}", summarize(&msgs));
    }
    still_serves(&proxy, &mut bystander).await;
}

#[tokio::test]
async fn silent_and_slow_clients_are_cut_off_at_the_startup_timeout() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().set("listen", "startup_timeout_seconds", "1")).await;
    // Silent after connecting.
    let mut silent = RawClient::connect(proxy.port()).await;
    // Sends the startup packet one byte at a time, too slowly to finish.
    let mut slow = RawClient::connect(proxy.port()).await;
    let trickle = tokio::spawn(async move {
        for byte in b"\x00\x00\x00\x08\x04\xd2\x16" {
            if slow.stream_mut().write_all(&[*byte]).await.is_err() {
                return slow;
            }
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        }
        slow
    });
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), silent.expect_closed()).await;
    assert!(closed.expect("the silent client was never cut off").is_empty());
    let mut slow = trickle.await.unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), slow.expect_closed()).await;
    assert!(closed.is_ok(), "the slow client was never cut off");
    let mut fresh = proxy.raw_login(TENANT_A).await;
    assert_eq!(summarize(&fresh.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:I"]);
}
