//! Client login through the proxy: JWT checks, startup-packet checks, TLS negotiation, the
//! loopback-only plaintext rule, the startup timeout and cancel keys.

mod support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::{Buf, BufMut, BytesMut};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

use support::proxy::{describe, now_secs};
use support::{cancel, default_claims, mint, summarize, ErrorFields, PgCluster, Proxy, ProxyOptions, RawClient};
use support::{TENANT_A, TENANT_B};

const CURRENT_TENANT: &str = "SELECT current_setting('app.current_tenant_id')";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Logs in over a raw connection with `password`, expecting a refusal: FATAL, SQLSTATE 28P01,
/// a message containing `needle`, no trace of the password in any field, then a closed socket.
async fn refused(proxy: &Proxy, password: &str, needle: &str) -> ErrorFields {
    let mut raw = RawClient::connect(proxy.port()).await;
    let err = match raw.login("anyname", "app", password).await {
        Ok(info) => panic!("a login that should fail on {needle:?} succeeded: {info:?}"),
        Err(err) => err,
    };
    assert_eq!(err.severity(), "FATAL", "{err:?}");
    assert_eq!(err.code(), "28P01", "{err:?}");
    assert!(err.message().contains(needle), "expected {needle:?} in the message {:?}", err.message());
    for value in err.0.values() {
        assert_not_leaked(value, password, "the error response");
    }
    let after = raw.expect_closed().await;
    assert!(after.is_empty(), "messages after the FATAL: {:?}", summarize(&after));
    err
}

/// Connects with tokio-postgres using `token` and returns the tenant the session sees.
async fn accepted(proxy: &Proxy, token: &str) -> String {
    let client = match proxy.try_connect(token).await {
        Ok(client) => client,
        Err(e) => panic!("a valid token was refused: {}\n--- proxy log ---\n{}", describe(&e), proxy.log()),
    };
    current_tenant(&client).await
}

async fn current_tenant(client: &Client) -> String {
    client.query_one(CURRENT_TENANT, &[]).await.expect("current_setting through the proxy").get(0)
}

/// Panics if `text` contains `secret` or any of its long dot-separated parts (a JWT's payload
/// or signature alone would leak it too).
fn assert_not_leaked(text: &str, secret: &str, place: &str) {
    assert!(secret.is_empty() || !text.contains(secret), "{place} contains the token");
    for part in secret.split('.').filter(|p| p.len() >= 16) {
        assert!(!text.contains(part), "{place} contains part of the token: {part:.40}...");
    }
}

/// Waits until the proxy logged at least `refusals` logins refused with 28P01, then checks that
/// none of `secrets` appears in its log.
async fn assert_log_clean(proxy: &Proxy, refusals: usize, secrets: &[&str]) {
    let count = |log: &str| log.lines().filter(|l| l.contains("login refused") && l.contains("28P01")).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = proxy.log();
    while count(&log) < refusals && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = proxy.log();
    }
    assert!(count(&log) >= refusals, "expected {refusals} logins refused with 28P01 in the proxy log:\n{log}");
    for secret in secrets {
        assert_not_leaked(&log, secret, "the proxy log");
    }
}

/// `default_claims(tenant)` with `changes` applied (`null` removes a claim).
fn claims_with(tenant: &str, changes: Value) -> Value {
    let mut claims = default_claims(tenant);
    let map = claims.as_object_mut().expect("claims are an object");
    for (name, value) in changes.as_object().expect("changes are an object") {
        match value {
            Value::Null => map.remove(name),
            v => map.insert(name.clone(), v.clone()),
        };
    }
    claims
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("serialize JSON"))
}

/// The first column of the first DataRow of a simple-query reply.
fn first_value(messages: &[support::Message]) -> String {
    let row = messages.iter().find(|m| m.tag == b'D').unwrap_or_else(|| panic!("no row in {:?}", summarize(messages)));
    row.data_row()[0].clone().expect("not NULL")
}

/// A CA and a leaf certificate for `localhost`, 127.0.0.1 and `extra_ips`, signed by that CA.
struct Certs {
    _dir: TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn generate(extra_ips: &[IpAddr]) -> Certs {
        let dir = tempfile::Builder::new().prefix("pgtenant-certs-").tempdir().expect("temp dir");
        let d = dir.path();
        let mut san = String::from("DNS:localhost,IP:127.0.0.1");
        for ip in extra_ips {
            san.push_str(&format!(",IP:{ip}"));
        }
        let ext = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName={san}\n"
        );
        std::fs::write(d.join("leaf.ext"), ext).expect("write leaf.ext");
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(
            d,
            &format!("req -x509 {ec} -keyout ca.key -out ca.crt -days 2"),
            &[
                "-subj",
                "/CN=pgtenant test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(d, &format!("req {ec} -keyout server.key -out server.csr"), &["-subj", "/CN=localhost"]);
        let sign = "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 2 -days 2 -out server.crt";
        openssl(d, sign, &["-extfile", "leaf.ext"]);
        Certs { ca: d.join("ca.crt"), cert: d.join("server.crt"), key: d.join("server.key"), _dir: dir }
    }

    /// `options` with `listen.tls_cert` and `listen.tls_key` set to these files.
    fn configure(&self, options: ProxyOptions) -> ProxyOptions {
        options.set("listen", "tls_cert", support::toml_str(&self.cert.display().to_string())).set(
            "listen",
            "tls_key",
            support::toml_str(&self.key.display().to_string()),
        )
    }

    /// A tokio-postgres TLS connector trusting only this CA.
    fn connector(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).expect("read ca.crt") {
            roots.add(cert.expect("parse ca.crt")).expect("add CA");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_postgres_rustls::MakeRustlsConnect::new(config)
    }
}

/// Runs `openssl` in `dir` with the space-separated `args`, then `more` (which may hold spaces).
fn openssl(dir: &Path, args: &str, more: &[&str]) {
    let out = Command::new("openssl").args(args.split(' ')).args(more).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?} {more:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A client config for the proxy's port on `host` (only), as user `anyname` to database `app`.
/// ([`Proxy::config`] already names 127.0.0.1, and `Config::host` adds rather than replaces.)
fn config_for(proxy: &Proxy, host: &str, token: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config.host(host).port(proxy.port()).user("anyname").password(token).dbname("app");
    config.connect_timeout(Duration::from_secs(10));
    config
}

/// Connects with tokio-postgres over TLS (`sslmode=require`, CA-verified) to `host`.
async fn connect_tls(proxy: &Proxy, certs: &Certs, host: &str, token: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config = config_for(proxy, host, token);
    config.ssl_mode(SslMode::Require);
    let (client, connection) = config.connect(certs.connector()).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A non-loopback IPv4 address of this machine, if it has one.
fn non_loopback_ipv4() -> Option<IpAddr> {
    let candidates = |program: &str, args: &[&str]| -> Vec<IpAddr> {
        let Ok(out) = Command::new(program).args(args).output() else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split(|c: char| c.is_whitespace() || c == '/').filter_map(|word| word.parse::<IpAddr>().ok()).collect()
    };
    let mut all = candidates("hostname", &["-I"]);
    all.extend(candidates("ip", &["-4", "-o", "addr", "show"]));
    all.into_iter().find(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast())
}

/// Sends a StartupMessage to `addr` over plain TCP and returns every message up to EOF, as
/// (tag, body). Used where [`RawClient`] (loopback only) cannot go.
async fn startup_replies(ip: IpAddr, port: u16) -> Vec<(u8, Vec<u8>)> {
    let mut stream = TcpStream::connect((ip, port)).await.unwrap_or_else(|e| panic!("connect {ip}:{port}: {e}"));
    let mut body = BytesMut::new();
    body.put_i32(196_608);
    for s in ["user", "anyname", "database", "app", ""] {
        body.put_slice(s.as_bytes());
        body.put_u8(0);
    }
    let mut packet = BytesMut::new();
    packet.put_i32(i32::try_from(body.len() + 4).unwrap());
    packet.put_slice(&body);
    stream.write_all(&packet).await.expect("send startup");
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "the proxy kept the connection open; got {} bytes", bytes.len());
    let mut buf = &bytes[..];
    let mut messages = Vec::new();
    while buf.len() >= 5 {
        let tag = buf.get_u8();
        let len = usize::try_from(buf.get_i32()).expect("length") - 4;
        messages.push((tag, buf[..len].to_vec()));
        buf.advance(len);
    }
    messages
}

fn error_fields(body: &[u8]) -> HashMap<char, String> {
    let mut fields = HashMap::new();
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        fields.insert(field[0] as char, String::from_utf8_lossy(&field[1..]).into_owned());
    }
    fields
}

/// Waits until `app_user` runs a query containing `needle` (as seen by the superuser).
async fn wait_until_running(pg: &PgCluster, needle: &str) {
    let su = pg.superuser().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sql = "SELECT count(*) FROM pg_stat_activity \
                   WHERE usename = 'app_user' AND state = 'active' AND position($1 in query) > 0";
        let n: i64 = su.query_one(sql, &[&needle]).await.expect("pg_stat_activity").get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no running query containing {needle:?} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A valid login
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn valid_token_gets_real_server_parameters_and_a_proxy_cancel_key() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut raw = RawClient::connect(proxy.port()).await;
    let info = raw.login("anyname", "app", &proxy.token(TENANT_A)).await.expect("login with a valid token");

    let su = pg.superuser().await;
    let version: String = su.query_one("SHOW server_version", &[]).await.unwrap().get(0);
    let encoding: String = su.query_one("SHOW server_encoding", &[]).await.unwrap().get(0);
    assert_eq!(info.params.get("server_version"), Some(&version), "{:?}", info.params);
    assert_eq!(info.params.get("server_encoding"), Some(&encoding), "{:?}", info.params);

    let (key_pid, _) = info.backend_key;
    assert_ne!(info.backend_key, (0, 0), "no BackendKeyData");
    let upstream_pid: i32 = first_value(&raw.simple("SELECT pg_backend_pid()").await).parse().unwrap();
    assert_ne!(key_pid, upstream_pid, "the client was given the upstream backend's pid");
    let backends: Vec<i32> =
        su.query("SELECT pid FROM pg_stat_activity", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(!backends.contains(&key_pid), "cancel key pid {key_pid} is a real backend: {backends:?}");

    assert_eq!(first_value(&raw.simple(CURRENT_TENANT).await), TENANT_A);
}

// ---------------------------------------------------------------------------------------------
// Token checks: each failure is FATAL 28P01 naming the check, never echoing the token
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn token_signed_with_another_secret_or_tampered_is_refused() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let foreign = mint(&"not-the-proxy-secret-".repeat(3), &default_claims(TENANT_A));
    refused(&proxy, &foreign, "signature").await;
    // The proxy's own signature over tenant A, with the payload switched to tenant B.
    let genuine = proxy.token(TENANT_A);
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&default_claims(TENANT_B)), parts[2]);
    refused(&proxy, &tampered, "signature").await;
    // An HS256 header with no signature at all.
    let unsigned = format!("{}.{}.", parts[0], parts[1]);
    refused(&proxy, &unsigned, "signature").await;
    assert_log_clean(&proxy, 3, &[&foreign, &tampered, &genuine]).await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let now = now_secs();
    let token = proxy.token_with(claims_with(TENANT_A, json!({ "iat": now - 7200, "exp": now - 3600 })));
    let err = refused(&proxy, &token, "expired").await;
    assert_eq!(err.message(), "authentication failed: token has expired");
    assert_log_clean(&proxy, 1, &[&token]).await;
}

#[tokio::test]
async fn expired_token_within_leeway_is_accepted() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().set("auth", "leeway_seconds", "120")).await;
    let now = now_secs();
    let recent = proxy.token_with(claims_with(TENANT_A, json!({ "iat": now - 3600, "exp": now - 60 })));
    assert_eq!(accepted(&proxy, &recent).await, TENANT_A);
    // Past the leeway it is refused again.
    let old = proxy.token_with(claims_with(TENANT_A, json!({ "iat": now - 3600, "exp": now - 600 })));
    refused(&proxy, &old, "expired").await;
    assert_log_clean(&proxy, 1, &[&recent, &old]).await;
}

#[tokio::test]
async fn token_not_valid_yet_is_refused() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let token = proxy.token_with(claims_with(TENANT_A, json!({ "nbf": now_secs() + 3600 })));
    refused(&proxy, &token, "not valid yet").await;
    // Within the leeway (30 s by default) nbf is tolerated.
    let skewed = proxy.token_with(claims_with(TENANT_A, json!({ "nbf": now_secs() + 5 })));
    assert_eq!(accepted(&proxy, &skewed).await, TENANT_A);
    assert_log_clean(&proxy, 1, &[&token, &skewed]).await;
}

#[tokio::test]
async fn token_without_exp_is_refused() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let token = proxy.token_with(claims_with(TENANT_A, json!({ "exp": null })));
    refused(&proxy, &token, "no exp claim").await;
    assert_log_clean(&proxy, 1, &[&token]).await;
}

#[tokio::test]
async fn configured_issuer_must_match() {
    let pg = PgCluster::start().await;
    let issuer = "https://issuer.example";
    let proxy = Proxy::start(&pg, ProxyOptions::default().set("auth", "issuer", support::toml_str(issuer))).await;
    let good = proxy.token_with(claims_with(TENANT_A, json!({ "iss": issuer })));
    assert_eq!(accepted(&proxy, &good).await, TENANT_A);
    let wrong = proxy.token_with(claims_with(TENANT_A, json!({ "iss": "https://evil.example" })));
    refused(&proxy, &wrong, "issuer does not match").await;
    let missing = proxy.token(TENANT_A);
    refused(&proxy, &missing, "no iss claim").await;
    assert_log_clean(&proxy, 2, &[&good, &wrong, &missing]).await;
}

#[tokio::test]
async fn configured_audience_must_match() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().set("auth", "audience", "\"pgtenant\"")).await;
    let single = proxy.token_with(claims_with(TENANT_A, json!({ "aud": "pgtenant" })));
    assert_eq!(accepted(&proxy, &single).await, TENANT_A);
    let list = proxy.token_with(claims_with(TENANT_B, json!({ "aud": ["billing", "pgtenant"] })));
    assert_eq!(accepted(&proxy, &list).await, TENANT_B);
    let wrong = proxy.token_with(claims_with(TENANT_A, json!({ "aud": "billing" })));
    refused(&proxy, &wrong, "audience does not match").await;
    let missing = proxy.token(TENANT_A);
    refused(&proxy, &missing, "no aud claim").await;
    assert_log_clean(&proxy, 2, &[&single, &list, &wrong, &missing]).await;
}

#[tokio::test]
async fn token_without_tenant_claim_is_refused() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let missing = proxy.token_with(claims_with(TENANT_A, json!({ "tenant_id": null })));
    refused(&proxy, &missing, "no tenant claim \"tenant_id\"").await;
    let number = proxy.token_with(claims_with(TENANT_A, json!({ "tenant_id": 42 })));
    refused(&proxy, &number, "is not a string").await;
    assert_log_clean(&proxy, 2, &[&missing, &number]).await;
}

#[tokio::test]
async fn uuid_tenant_must_be_a_uuid_and_is_normalised() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    for bad in ["not-a-uuid", "aaaaaaaa0000400080000000000000000a", "aaaaaaaa-0000-4000-8000-00000000000a'"] {
        let token = proxy.token_with(claims_with(bad, json!({})));
        refused(&proxy, &token, "is not a valid uuid").await;
        assert_log_clean(&proxy, 1, &[&token]).await;
    }
    let upper = proxy.token_with(claims_with(&TENANT_A.to_uppercase(), json!({})));
    assert_eq!(accepted(&proxy, &upper).await, TENANT_A);
}

#[tokio::test]
async fn nested_tenant_claim_path() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().set("auth", "tenant_claim", "\"org.tenant\"")).await;
    let nested = proxy.token_with(claims_with(TENANT_B, json!({ "tenant_id": null, "org": { "tenant": TENANT_B } })));
    assert_eq!(accepted(&proxy, &nested).await, TENANT_B);
    // The top-level default claim name no longer counts.
    let flat = proxy.token(TENANT_A);
    refused(&proxy, &flat, "no tenant claim \"org.tenant\"").await;
    let not_object = proxy.token_with(claims_with(TENANT_A, json!({ "org": "acme" })));
    refused(&proxy, &not_object, "no tenant claim \"org.tenant\"").await;
    assert_log_clean(&proxy, 2, &[&nested, &flat, &not_object]).await;
}

#[tokio::test]
async fn text_tenant_format_accepts_safe_ids_and_refuses_hostile_ones() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().set("auth", "tenant_format", "\"text\"")).await;
    let safe = "acme-corp_1.eu:team@x";
    assert_eq!(accepted(&proxy, &proxy.token_with(claims_with(safe, json!({})))).await, safe);
    let long = "x".repeat(65);
    let hostile = ["a'; drop", "a'; DROP TABLE tool_calls; --", "a\\", "", long.as_str()];
    let mut tokens = Vec::new();
    for value in hostile {
        let token = proxy.token_with(claims_with(value, json!({})));
        refused(&proxy, &token, "is not a valid text tenant id").await;
        tokens.push(token);
    }
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_log_clean(&proxy, hostile.len(), &tokens).await;
    assert!(!proxy.log().contains("a'; drop"), "the hostile tenant reached the log");
    assert_eq!(pg.superuser().await.query("SELECT 1 FROM tool_calls", &[]).await.unwrap().len(), 0);
}

#[tokio::test]
async fn alg_none_token_is_refused() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let payload = b64(&default_claims(TENANT_A));
    let mut tokens = Vec::new();
    for alg in ["none", "NONE"] {
        let token = format!("{}.{payload}.", b64(&json!({ "alg": alg, "typ": "JWT" })));
        refused(&proxy, &token, "algorithm none is not allowed").await;
        tokens.push(token);
    }
    // An algorithm the proxy knows but the config does not allow is refused the same way.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &default_claims(TENANT_A),
        &jsonwebtoken::EncodingKey::from_secret(proxy.secret().as_bytes()),
    )
    .unwrap();
    refused(&proxy, &hs512, "algorithm HS512 is not allowed").await;
    assert_log_clean(&proxy, 3, &[&tokens[0], &tokens[1], &hs512]).await;
}

#[tokio::test]
async fn garbage_password_is_refused() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let garbage = ["correct horse battery staple", "a.b.c", "", "eyJhbGciOiJIUzI1NiJ9.!!!.???"];
    for password in garbage {
        refused(&proxy, password, "malformed").await;
    }
    assert_log_clean(&proxy, garbage.len(), &["correct horse battery staple"]).await;
}

#[tokio::test]
async fn token_size_limit_is_16_kib() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let padded = |pad: usize| proxy.token_with(claims_with(TENANT_A, json!({ "pad": "x".repeat(pad) })));
    // The smallest padding giving a token of at least `len` bytes (base64 grows by 4/3).
    let sized = |len: usize| ((len * 3 / 4).saturating_sub(400)..).map(&padded).find(|t| t.len() >= len).unwrap();

    let twelve = sized(12 * 1024);
    assert!(twelve.len() < 13 * 1024);
    assert_eq!(accepted(&proxy, &twelve).await, TENANT_A);
    let limit = sized(16 * 1024);
    assert_eq!(limit.len(), 16 * 1024, "could not build a token of exactly 16 KiB");
    assert_eq!(accepted(&proxy, &limit).await, TENANT_A);

    let over = sized(16 * 1024 + 1);
    assert!(over.len() <= 16 * 1024 + 2);
    refused(&proxy, &over, "too large").await;
    let twenty = sized(20 * 1024);
    refused(&proxy, &twenty, "too large").await;
    assert_log_clean(&proxy, 2, &[&over, &twenty]).await;
}

// ---------------------------------------------------------------------------------------------
// Startup packet checks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_database_is_refused_with_3d000() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let token = proxy.token(TENANT_A);
    for params in [&[("user", "anyname"), ("database", "postgres")][..], &[("user", "anyname")][..]] {
        let mut raw = RawClient::connect(proxy.port()).await;
        let err = raw.login_with(params, &token).await.expect_err("login to a wrong database");
        assert_eq!((err.severity(), err.code()), ("FATAL", "3D000"), "{params:?}: {err:?}");
        assert!(err.message().contains("does not exist"), "{err:?}");
        raw.expect_closed().await;
    }
}

#[tokio::test]
async fn tenant_setting_at_connection_start_is_refused_with_42501() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let token = proxy.token(TENANT_A);
    let attempts: &[(&str, &str)] = &[
        ("app.current_tenant_id", TENANT_B),
        ("APP.Current_Tenant_ID", TENANT_B),
        ("options", "-c app.current_tenant_id=x"),
        ("options", &format!("-c app.current_tenant_id={TENANT_B}")),
        ("options", "--app.current_tenant_id=x"),
        ("options", "-c statement_timeout=0 -cApp.Current_Tenant_Id=x"),
    ];
    for (name, value) in attempts {
        let mut raw = RawClient::connect(proxy.port()).await;
        let params = [("user", "anyname"), ("database", "app"), (*name, *value)];
        let err = raw.login_with(&params, &token).await.expect_err("tenant setting at startup");
        assert_eq!((err.severity(), err.code()), ("FATAL", "42501"), "{name}={value}: {err:?}");
        assert!(err.message().contains("app.current_tenant_id"), "{err:?}");
        raw.expect_closed().await;
    }
    // Other options do not trip the check.
    let mut raw = RawClient::connect(proxy.port()).await;
    let params = [("user", "anyname"), ("database", "app"), ("options", "-c statement_timeout=0")];
    raw.login_with(&params, &token).await.expect("harmless options");
    assert_eq!(first_value(&raw.simple(CURRENT_TENANT).await), TENANT_A);
}

// ---------------------------------------------------------------------------------------------
// Encryption negotiation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ssl_request_is_declined_without_a_certificate() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut raw = RawClient::connect(proxy.port()).await;
    assert_eq!(raw.ssl_request().await, b'N');
    raw.login("anyname", "app", &proxy.token(TENANT_A)).await.expect("startup after N");
    assert_eq!(first_value(&raw.simple(CURRENT_TENANT).await), TENANT_A);
}

#[tokio::test]
async fn gssenc_request_is_declined_and_startup_continues() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut raw = RawClient::connect(proxy.port()).await;
    assert_eq!(raw.gssenc_request().await, b'N');
    raw.login("anyname", "app", &proxy.token(TENANT_A)).await.expect("startup after GSSENC N");
    assert_eq!(first_value(&raw.simple(CURRENT_TENANT).await), TENANT_A);
    // libpq's order with gssencmode=prefer and sslmode=prefer: GSSENC, then SSL, then startup.
    let mut raw = RawClient::connect(proxy.port()).await;
    assert_eq!(raw.gssenc_request().await, b'N');
    assert_eq!(raw.ssl_request().await, b'N');
    raw.login("anyname", "app", &proxy.token(TENANT_B)).await.expect("startup after GSSENC N, SSL N");
    assert_eq!(first_value(&raw.simple(CURRENT_TENANT).await), TENANT_B);
}

#[tokio::test]
async fn tls_listener_accepts_verified_tls_clients() {
    let pg = PgCluster::start().await;
    let certs = Certs::generate(&[]);
    let proxy = Proxy::start(&pg, certs.configure(ProxyOptions::default())).await;
    let mut raw = RawClient::connect(proxy.port()).await;
    assert_eq!(raw.ssl_request().await, b'S');
    drop(raw);

    let token = proxy.token(TENANT_A);
    let client = match connect_tls(&proxy, &certs, "127.0.0.1", &token).await {
        Ok(client) => client,
        Err(e) => panic!("TLS connection failed: {}\n--- proxy log ---\n{}", describe(&e), proxy.log()),
    };
    assert_eq!(current_tenant(&client).await, TENANT_A);
    let client = connect_tls(&proxy, &certs, "localhost", &proxy.token(TENANT_B)).await.expect("TLS to localhost");
    assert_eq!(current_tenant(&client).await, TENANT_B);
    assert!(proxy.log().contains("tls=true"), "the proxy did not log a TLS login:\n{}", proxy.log());
}

#[tokio::test]
async fn renewed_certificate_files_are_picked_up_without_a_restart() {
    let pg = PgCluster::start().await;
    let (first, renewed) = (Certs::generate(&[]), Certs::generate(&[]));
    let options = first.configure(ProxyOptions::default()).set("listen", "tls_reload_seconds", "1");
    let proxy = Proxy::start(&pg, options).await;
    let old_session =
        connect_tls(&proxy, &first, "localhost", &proxy.token(TENANT_A)).await.expect("TLS with the first CA");
    assert!(connect_tls(&proxy, &renewed, "localhost", &proxy.token(TENANT_A)).await.is_err());

    // Renew: a leaf from another CA replaces the files in place.
    std::fs::copy(&renewed.key, &first.key).unwrap();
    std::fs::copy(&renewed.cert, &first.cert).unwrap();
    let mut served = None;
    for _ in 0..100 {
        if let Ok(client) = connect_tls(&proxy, &renewed, "localhost", &proxy.token(TENANT_B)).await {
            served = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = served.unwrap_or_else(|| panic!("the renewed certificate was never served:\n{}", proxy.log()));
    assert_eq!(current_tenant(&client).await, TENANT_B);
    assert!(connect_tls(&proxy, &first, "localhost", &proxy.token(TENANT_A)).await.is_err(), "old CA still accepted");
    assert_eq!(current_tenant(&old_session).await, TENANT_A, "an open TLS session survives the reload");
    assert!(proxy.log().contains("client TLS certificate reloaded"), "{}", proxy.log());

    // A broken renewal is reported and the working certificate stays in use.
    std::fs::write(&first.cert, "not a certificate").unwrap();
    let mut reported = false;
    for _ in 0..100 {
        if proxy.log().contains("still serving the previous one") {
            reported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reported, "a broken certificate file was not reported:\n{}", proxy.log());
    let client = connect_tls(&proxy, &renewed, "localhost", &proxy.token(TENANT_A)).await.expect("still serving");
    assert_eq!(current_tenant(&client).await, TENANT_A);
}

#[tokio::test]
async fn data_pipelined_after_ssl_request_is_refused() {
    let pg = PgCluster::start().await;
    let certs = Certs::generate(&[]);
    let proxy = Proxy::start(&pg, certs.configure(ProxyOptions::default())).await;
    // SSLRequest and a StartupMessage in one write: the startup would be read as if it had
    // come over TLS (CVE-2021-23214).
    let mut packet = BytesMut::new();
    packet.put_i32(8);
    packet.put_i32(80_877_103);
    let mut startup = BytesMut::new();
    startup.put_i32(196_608);
    startup.put_slice(b"user\0anyname\0database\0app\0\0");
    packet.put_i32(i32::try_from(startup.len() + 4).unwrap());
    packet.put_slice(&startup);
    let mut stream = TcpStream::connect(("127.0.0.1", proxy.port())).await.unwrap();
    stream.write_all(&packet).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "connection still open");
    assert_ne!(answer.first(), Some(&b'S'), "TLS was offered despite pipelined plaintext");
    assert!(matches!(answer.first(), None | Some(b'E')), "unexpected answer {answer:?}");
}

// ---------------------------------------------------------------------------------------------
// Plaintext only on loopback
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn non_loopback_clients_must_use_tls() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("SKIPPED non_loopback_clients_must_use_tls: this machine has no non-loopback IPv4 address");
        return;
    };
    let pg = PgCluster::start().await;
    let certs = Certs::generate(&[ip]);
    let proxy = Proxy::start(&pg, certs.configure(ProxyOptions::default()).listen_host("0.0.0.0")).await;

    // The refusal comes before the password request, so no token crosses the network.
    let replies = startup_replies(ip, proxy.port()).await;
    assert!(!replies.is_empty(), "no answer to a plaintext startup from {ip}");
    assert_eq!(replies[0].0, b'E', "expected an error first, got tags {:?}", replies.iter().map(|m| m.0 as char));
    let fields = error_fields(&replies[0].1);
    assert_eq!(fields.get(&'V').map(String::as_str), Some("FATAL"), "{fields:?}");
    assert_eq!(fields.get(&'C').map(String::as_str), Some("28000"), "{fields:?}");
    assert!(fields[&'M'].contains("TLS"), "{fields:?}");

    let token = proxy.token(TENANT_A);
    let config = config_for(&proxy, &ip.to_string(), &token);
    let err = config.connect(NoTls).await.err().expect("a plaintext login from a non-loopback address");
    let db = err.as_db_error().unwrap_or_else(|| panic!("not a server error: {err:?}"));
    assert_eq!((db.severity(), db.code().code()), ("FATAL", "28000"), "{}", db.message());

    // Over TLS the same client gets in, and loopback clients may still use plaintext.
    let client = match connect_tls(&proxy, &certs, &ip.to_string(), &token).await {
        Ok(client) => client,
        Err(e) => panic!("TLS from {ip} failed: {}\n--- proxy log ---\n{}", describe(&e), proxy.log()),
    };
    assert_eq!(current_tenant(&client).await, TENANT_A);
    assert_eq!(accepted(&proxy, &proxy.token(TENANT_B)).await, TENANT_B);
}

#[tokio::test]
async fn allow_plaintext_auth_admits_non_loopback_clients() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("SKIPPED allow_plaintext_auth_admits_non_loopback_clients: no non-loopback IPv4 address");
        return;
    };
    let pg = PgCluster::start().await;
    let options = ProxyOptions::default().listen_host("0.0.0.0").set("listen", "allow_plaintext_auth", "true");
    let proxy = Proxy::start(&pg, options).await;
    let config = config_for(&proxy, &ip.to_string(), &proxy.token(TENANT_A));
    let (client, connection) = match config.connect(NoTls).await {
        Ok(pair) => pair,
        Err(e) => panic!("plaintext login from {ip} failed: {}\n--- proxy log ---\n{}", describe(&e), proxy.log()),
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    assert_eq!(current_tenant(&client).await, TENANT_A);
}

#[tokio::test]
async fn dual_stack_listener_judges_ipv4_mapped_peers_by_their_ipv4_address() {
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("SKIPPED dual_stack_listener_judges_ipv4_mapped_peers: no non-loopback IPv4 address");
        return;
    };
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("SKIPPED dual_stack_listener_judges_ipv4_mapped_peers: no IPv6");
        return;
    }
    let pg = PgCluster::start().await;
    // On [::] IPv4 clients arrive as ::ffff:a.b.c.d.
    let proxy = Proxy::start(&pg, ProxyOptions::default().listen_host("[::]")).await;
    assert_eq!(accepted(&proxy, &proxy.token(TENANT_A)).await, TENANT_A);
    let replies = startup_replies(ip, proxy.port()).await;
    assert_eq!(replies.first().map(|m| m.0), Some(b'E'), "tags {:?}", replies.iter().map(|m| m.0 as char));
    assert_eq!(error_fields(&replies[0].1).get(&'C').map(String::as_str), Some("28000"));
    if std::net::TcpStream::connect(("::1", proxy.port())).is_ok() {
        let (client, connection) = config_for(&proxy, "::1", &proxy.token(TENANT_B)).connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        assert_eq!(current_tenant(&client).await, TENANT_B);
    }
}

// ---------------------------------------------------------------------------------------------
// Startup timeout and cancel keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn silent_clients_are_disconnected_after_the_startup_timeout() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().set("listen", "startup_timeout_seconds", "1")).await;
    let logged_in = proxy.connect(TENANT_A).await;

    // Connects and sends nothing.
    let mut silent = TcpStream::connect(("127.0.0.1", proxy.port())).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "a silent client was still connected after 10 s");

    // Sends a startup but never answers the password request.
    let mut stalled = RawClient::connect(proxy.port()).await;
    stalled.startup(&[("user", "anyname"), ("database", "app")]).await;
    let messages = stalled.expect_closed().await;
    assert_eq!(summarize(&messages), ["R:3"]);

    // The timeout covers only the startup phase: a logged-in client outlives it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(current_tenant(&logged_in).await, TENANT_A);
}

#[tokio::test]
async fn cancel_request_with_a_wrong_key_does_nothing() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default()).await;
    let mut raw = RawClient::connect(proxy.port()).await;
    let (pid, secret) = raw.login("anyname", "app", &proxy.token(TENANT_A)).await.expect("login").backend_key;

    raw.query("SELECT pg_sleep(1)").flush().await;
    wait_until_running(&pg, "pg_sleep(1)").await;
    cancel(proxy.port(), pid, secret.wrapping_add(1)).await;
    cancel(proxy.port(), pid ^ 0x5555, secret).await;
    let replies = summarize(&raw.read_until_ready().await);
    assert!(replies.contains(&"C:SELECT 1".to_string()) && !replies.iter().any(|r| r.starts_with("E:")), "{replies:?}");

    // Control: the right key does cancel the client's running query.
    raw.query("SELECT pg_sleep(30)").flush().await;
    wait_until_running(&pg, "pg_sleep(30)").await;
    cancel(proxy.port(), pid, secret).await;
    let replies = summarize(&raw.read_until_ready().await);
    assert!(replies.contains(&"E:57014".to_string()), "{replies:?}");
}

/// Signs `claims` with a private key from `tests/keys/`.
fn mint_asymmetric(alg: jsonwebtoken::Algorithm, key_file: &str, claims: &Value) -> String {
    let pem = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(key_file)).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, &key).unwrap()
}

#[tokio::test]
async fn asymmetric_algorithms_verify_with_a_pem_public_key() {
    use jsonwebtoken::Algorithm::{EdDSA, ES256, RS256};
    let pg = PgCluster::start().await;
    for (alg, name, private, public) in [
        (RS256, "RS256", "rsa.key.pem", "rsa.pub.pem"),
        (ES256, "ES256", "ec256.key.pem", "ec256.pub.pem"),
        (EdDSA, "EdDSA", "ed25519.key.pem", "ed25519.pub.pem"),
    ] {
        let public = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(public);
        let options = ProxyOptions::default()
            .unset("auth", "hs_secret")
            .set("auth", "algorithms", format!("[\"{name}\"]"))
            .set("auth", "public_key_file", format!("\"{}\"", public.display()));
        let proxy = Proxy::start(&pg, options).await;
        let token = mint_asymmetric(alg, private, &default_claims(TENANT_A));
        let client = proxy.try_connect(&token).await.unwrap_or_else(|e| panic!("{name}: {}", describe(&e)));
        let tenant: String =
            client.query_one("SELECT current_setting('app.current_tenant_id')", &[]).await.unwrap().get(0);
        assert_eq!(tenant, TENANT_A, "{name}");
        // An HS256 token (HS/RS confusion: the public key as the secret) is refused.
        let pem = std::fs::read_to_string(&public).unwrap();
        let forged = mint(&pem, &default_claims(TENANT_A));
        let mut raw = RawClient::connect(proxy.port()).await;
        let err = raw.login("anyname", "app", &forged).await.unwrap_err();
        assert_eq!(err.code(), "28P01", "{name}");
    }
}

#[tokio::test]
async fn expired_token_may_finish_its_transaction_then_is_disconnected() {
    let pg = PgCluster::start().await;
    let proxy = Proxy::start(&pg, ProxyOptions::default().set("auth", "leeway_seconds", "0")).await;
    let mut claims = default_claims(TENANT_A);
    claims["exp"] = json!(now_secs() + 3);
    let mut c = RawClient::connect(proxy.port()).await;
    c.login("anyname", "app", &proxy.token_with(claims)).await.expect("login while valid");
    assert_eq!(summarize(&c.simple("BEGIN").await), ["C:BEGIN", "Z:T"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The open transaction finishes normally...
    assert_eq!(summarize(&c.simple("SELECT 1").await), ["T", "D:1", "C:SELECT 1", "Z:T"]);
    assert_eq!(summarize(&c.simple("COMMIT").await), ["C:COMMIT", "Z:I"]);
    // ...and the next transaction is refused: the client must reconnect with a fresh token.
    c.query("SELECT 1").flush().await;
    let msgs = c.expect_closed().await;
    assert_eq!(summarize(&msgs), ["E:28P01"]);
    assert_eq!(msgs[0].error_fields()[&'M'], "token has expired");
}
