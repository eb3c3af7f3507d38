//! TLS to the upstream, per `upstream.tls`: disable, prefer, require and
//! verify-full against a PostgreSQL with `ssl = on`.

mod support;

use std::path::Path;
use std::process::Command;

use support::{summarize, PgCluster, Proxy, ProxyOptions, RawClient, TENANT_A};

const SSL_QUERY: &str = "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_ca_and_server_cert(dir: &Path, prefix: &str) {
    let ca_key = format!("{prefix}ca.key");
    let ca_crt = format!("{prefix}ca.crt");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca_crt,
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// Turns on TLS in the cluster with a fresh CA; returns the CA file.
async fn enable_ssl(pg: &PgCluster, certs: &Path) -> std::path::PathBuf {
    make_ca_and_server_cert(certs, "");
    let data = pg.data_dir();
    for f in ["server.crt", "server.key"] {
        std::fs::copy(certs.join(f), data.join(f)).unwrap();
        let status = Command::new("chown").arg("--reference").arg(&data).arg(data.join(f)).status().unwrap();
        assert!(status.success());
    }
    let status = Command::new("chmod").arg("600").arg(data.join("server.key")).status().unwrap();
    assert!(status.success());
    let su = pg.superuser().await;
    su.batch_execute("ALTER SYSTEM SET ssl = on").await.unwrap();
    su.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    for _ in 0..50 {
        let on: String = su.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if on == "on" {
            return certs.join("ca.crt");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("ssl did not turn on:\n{}", pg.log());
}

async fn ssl_in_use(proxy: &Proxy) -> String {
    let mut c = RawClient::connect(proxy.port()).await;
    c.login("anyname", "app", &proxy.token(TENANT_A)).await.expect("login");
    let msgs = c.simple(SSL_QUERY).await;
    assert_eq!(msgs.len(), 4, "{:?}", summarize(&msgs));
    msgs[1].data_row()[0].clone().unwrap()
}

fn toml_path(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

#[tokio::test]
async fn tls_modes_against_a_server_with_ssl() {
    let pg = PgCluster::start().await;
    let certs = tempfile::tempdir().unwrap();
    let ca = enable_ssl(&pg, certs.path()).await;
    for (mode, expected) in [("disable", "false"), ("prefer", "true"), ("require", "true")] {
        let proxy = Proxy::start(&pg, ProxyOptions::default().set("upstream", "tls", format!("\"{mode}\""))).await;
        assert_eq!(ssl_in_use(&proxy).await, expected, "tls = {mode}");
    }
    let verify = ProxyOptions::default().set("upstream", "tls", "\"verify-full\"").set(
        "upstream",
        "tls_ca_file",
        toml_path(&ca),
    );
    let proxy = Proxy::start(&pg, verify).await;
    assert_eq!(ssl_in_use(&proxy).await, "true", "verify-full with the right CA");
}

#[tokio::test]
async fn verify_full_with_another_ca_refuses_the_server() {
    let pg = PgCluster::start().await;
    let certs = tempfile::tempdir().unwrap();
    enable_ssl(&pg, certs.path()).await;
    let other = tempfile::tempdir().unwrap();
    make_ca_and_server_cert(other.path(), "");
    let verify = ProxyOptions::default().set("upstream", "tls", "\"verify-full\"").set(
        "upstream",
        "tls_ca_file",
        toml_path(&other.path().join("ca.crt")),
    );
    let proxy = Proxy::start(&pg, verify).await;
    let mut c = RawClient::connect(proxy.port()).await;
    let err = c.login("anyname", "app", &proxy.token(TENANT_A)).await.unwrap_err();
    assert_eq!(err.code(), "08006");
    assert!(err.message().contains("TLS"), "{}", err.message());
}

#[tokio::test]
async fn require_fails_against_a_server_without_ssl_and_prefer_falls_back() {
    let pg = PgCluster::start().await;
    let prefer = Proxy::start(&pg, ProxyOptions::default().set("upstream", "tls", "\"prefer\"")).await;
    assert_eq!(ssl_in_use(&prefer).await, "false");
    let require = Proxy::start(&pg, ProxyOptions::default().set("upstream", "tls", "\"require\"")).await;
    let mut c = RawClient::connect(require.port()).await;
    let err = c.login("anyname", "app", &require.token(TENANT_A)).await.unwrap_err();
    assert_eq!(err.code(), "08006");
    assert!(err.message().contains("does not support TLS"), "{}", err.message());
}

#[tokio::test]
async fn scram_is_bound_to_the_tls_session() {
    let pg = PgCluster::start().await;
    let certs = tempfile::tempdir().unwrap();
    enable_ssl(&pg, certs.path()).await;
    // By default (prefer) the SCRAM exchange over TLS is channel-bound.
    let prefer = Proxy::start(&pg, ProxyOptions::default().set("upstream", "tls", "\"require\"")).await;
    assert_eq!(ssl_in_use(&prefer).await, "true");
    assert!(prefer.log().contains("auth=\"SCRAM-SHA-256-PLUS\""), "{}", prefer.log());
    // With require, the server verified the binding (a wrong certificate hash fails the login).
    let require =
        ProxyOptions::default().set("upstream", "tls", "\"require\"").set("upstream", "channel_binding", "\"require\"");
    let require = Proxy::start(&pg, require).await;
    assert_eq!(ssl_in_use(&require).await, "true");
    // Disabled, the plain mechanism is used.
    let disable =
        ProxyOptions::default().set("upstream", "tls", "\"require\"").set("upstream", "channel_binding", "\"disable\"");
    let disable = Proxy::start(&pg, disable).await;
    assert_eq!(ssl_in_use(&disable).await, "true");
    assert!(disable.log().contains("auth=\"SCRAM-SHA-256\""), "{}", disable.log());
}

#[tokio::test]
async fn channel_binding_require_refuses_logins_that_cannot_bind() {
    let pg = PgCluster::start().await;
    // No SSL on the server: tls = prefer falls back to plaintext, where nothing can bind.
    let plain =
        ProxyOptions::default().set("upstream", "tls", "\"prefer\"").set("upstream", "channel_binding", "\"require\"");
    let proxy = Proxy::start(&pg, plain).await;
    let mut c = RawClient::connect(proxy.port()).await;
    let err = c.login("anyname", "app", &proxy.token(TENANT_A)).await.unwrap_err();
    assert_eq!(err.code(), "08006");
    assert!(err.message().contains("the connection does not use TLS"), "{}", err.message());
    // An md5 login cannot bind either.
    let md5 = ProxyOptions::default()
        .upstream_user("md5_user")
        .set("upstream", "password", format!("\"{}\"", pg.md5_password()))
        .set("upstream", "tls", "\"prefer\"")
        .set("upstream", "channel_binding", "\"require\"");
    let proxy = Proxy::start(&pg, md5).await;
    let mut c = RawClient::connect(proxy.port()).await;
    let err = c.login("anyname", "app", &proxy.token(TENANT_A)).await.unwrap_err();
    assert!(err.message().contains("asked for an md5 password instead of SCRAM"), "{}", err.message());
}
