//! JWKS key sources through the real proxy: `auth.jwks_file`, and `auth.jwks_url` served by an
//! in-test HTTPS server (test CA + leaf for 127.0.0.1): kid selection, rotation through the
//! unknown-kid refresh and its rate limit, failed refreshes, redirects, oversized and silent
//! servers, startup errors, and the tokens a JWKS must refuse.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use support::proxy::{binary, describe};
use support::util::{free_port, random_string};
use support::{default_claims, toml_str, ErrorFields, PgCluster, Proxy, ProxyOptions, RawClient, TENANT_A, TENANT_B};

const CURRENT_TENANT: &str = "SELECT current_setting('app.current_tenant_id')";

// ---------------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------------

fn key_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(file)
}

/// The private test key for `alg` (tests/keys).
fn private_key(alg: Algorithm) -> EncodingKey {
    let pem = |file| std::fs::read(key_path(file)).expect("read test key");
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem("rsa.key.pem")),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("ec256.key.pem")),
        _ => EncodingKey::from_ed_pem(&pem("ed25519.key.pem")),
    }
    .expect("parse test key")
}

/// The public JWK of the test key for `alg`, under `kid` (no `alg` member).
fn public_jwk(alg: Algorithm, kid: &str) -> Value {
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&private_key(alg), alg).expect("JWK from key");
    let mut jwk = serde_json::to_value(jwk).expect("serialize JWK");
    let obj = jwk.as_object_mut().expect("JWK is an object");
    obj.remove("alg");
    obj.insert("kid".into(), json!(kid));
    jwk
}

/// An HS256 key as a JWK (`kty: oct`), which the proxy must never use.
fn oct_jwk(kid: &str, secret: &[u8]) -> Value {
    use base64::Engine;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    json!({ "kty": "oct", "kid": kid, "k": k, "alg": "HS256", "use": "sig" })
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A token for `tenant` signed with the test key for `alg`, naming `kid` (if any).
fn token(alg: Algorithm, kid: Option<&str>, tenant: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &default_claims(tenant), &private_key(alg)).expect("sign token")
}

// ---------------------------------------------------------------------------------------------
// Logins
// ---------------------------------------------------------------------------------------------

/// Connects with `token` and returns the tenant the session sees; panics with the log if refused.
async fn accepted(proxy: &Proxy, token: &str) -> String {
    let client = match proxy.try_connect(token).await {
        Ok(client) => client,
        Err(e) => panic!("a valid token was refused: {}\n--- proxy log ---\n{}", describe(&e), proxy.log()),
    };
    client.query_one(CURRENT_TENANT, &[]).await.expect("current_setting through the proxy").get(0)
}

/// Logs in with `token` expecting FATAL 28P01 whose message contains `needle` and no part of
/// the token.
async fn refused(proxy: &Proxy, token: &str, needle: &str) -> ErrorFields {
    let mut raw = RawClient::connect(proxy.port()).await;
    let err = match raw.login("anyname", "app", token).await {
        Ok(_) => panic!("a login that should fail on {needle:?} succeeded\n--- proxy log ---\n{}", proxy.log()),
        Err(err) => err,
    };
    assert_eq!((err.severity(), err.code()), ("FATAL", "28P01"), "{err:?}");
    assert!(err.message().contains(needle), "expected {needle:?} in {:?}\n--- log ---\n{}", err.message(), proxy.log());
    for part in token.split('.').filter(|p| p.len() >= 16) {
        assert!(!err.message().contains(part), "the error echoes the token");
    }
    err
}

/// Waits up to `timeout` for `needle` to appear in the proxy log.
async fn wait_for_log(proxy: &Proxy, needle: &str, timeout: Duration) {
    wait_for_log_count(proxy, needle, 1, timeout).await;
}

/// How many lines of the proxy log contain `needle`.
fn log_count(proxy: &Proxy, needle: &str) -> usize {
    proxy.log().lines().filter(|l| l.contains(needle)).count()
}

/// Waits up to `timeout` for `needle` to appear in at least `count` lines of the proxy log.
async fn wait_for_log_count(proxy: &Proxy, needle: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while log_count(proxy, needle) < count {
        assert!(Instant::now() < deadline, "{needle:?} not logged {count} times within {timeout:?}:\n{}", proxy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Proxy options with the HS secret replaced by `algorithms` and the given `[auth]` settings.
fn jwks_options(algorithms: &str, settings: &[(&str, String)]) -> ProxyOptions {
    let mut options = ProxyOptions::default().unset("auth", "hs_secret").set("auth", "algorithms", algorithms);
    for (key, value) in settings {
        options = options.set("auth", key, value.clone());
    }
    options
}

/// Replaces `path` by a rename, so the proxy's background re-read never sees half a file.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over the JWKS file");
}

fn path_toml(path: &Path) -> String {
    toml_str(&path.display().to_string())
}

// ---------------------------------------------------------------------------------------------
// A JWKS server: HTTPS on 127.0.0.1 with a certificate from a test CA
// ---------------------------------------------------------------------------------------------

/// A CA certificate and a leaf for 127.0.0.1 signed by it (rustls refuses a self-signed CA as
/// the server certificate itself).
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn generate() -> Certs {
        let dir = tempfile::Builder::new().prefix("pgtenant-jwks-certs-").tempdir().expect("temp dir");
        let d = dir.path();
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"];
        let ca_subject = ["-subj", "/CN=pgtenant JWKS test CA"];
        openssl(d, &format!("req -x509 {ec} -keyout ca.key -out ca.crt -days 2"), &[&ca_subject[..], &ca_ext].concat());
        openssl(d, &format!("req {ec} -keyout server.key -out server.csr"), &["-subj", "/CN=127.0.0.1"]);
        let ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                   extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n";
        std::fs::write(d.join("leaf.ext"), ext).expect("write leaf.ext");
        let sign = "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -set_serial 2 -days 2 -out server.crt";
        openssl(d, sign, &["-extfile", "leaf.ext"]);
        Certs { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(self.dir.path().join("server.crt"))
            .expect("read server.crt")
            .map(|c| c.expect("parse server.crt"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(self.dir.path().join("server.key")).expect("read server.key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("certificate and key");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// Runs `openssl` in `dir` with the space-separated `args`, then `more` (which may hold spaces).
fn openssl(dir: &Path, args: &str, more: &[&str]) {
    let out = Command::new("openssl").args(args.split(' ')).args(more).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?} {more:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// What the JWKS server answers.
#[derive(Clone, Debug)]
enum Answer {
    /// 200 with this body and a Content-Length.
    Jwks(String),
    /// 302 to another path on the same server.
    Redirect,
    /// 200 streaming 2 MiB without a length, then closing.
    Huge,
    /// Reads the request and never answers.
    Silent,
}

/// An HTTPS server for one JWKS path that counts the requests it gets.
struct JwksServer {
    port: u16,
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
    /// Request lines received, in order.
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the server shares with its connection tasks.
#[derive(Clone)]
struct ServerState {
    port: u16,
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl JwksServer {
    async fn start(certs: &Certs, answer: Answer) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind JWKS server");
        let port = listener.local_addr().expect("local addr").port();
        let state = ServerState {
            port,
            answer: Arc::new(Mutex::new(answer)),
            fetches: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let acceptor = certs.acceptor();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, &state).await;
                    }
                });
            }
        });
        let ServerState { answer, fetches, requests, .. } = state;
        JwksServer { port, answer, fetches, requests, task }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/.well-known/jwks.json", self.port)
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Options for a proxy that fetches from this server, trusting the test CA.
    fn options(&self, certs: &Certs, algorithms: &str, min_refresh: u64) -> ProxyOptions {
        jwks_options(
            algorithms,
            &[
                ("jwks_url", toml_str(&self.url())),
                ("jwks_ca_file", path_toml(&certs.ca())),
                ("jwks_min_refresh_seconds", min_refresh.to_string()),
            ],
        )
    }

    /// Waits until the server has answered at least `n` requests.
    async fn wait_fetches(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.fetches() < n {
            assert!(Instant::now() < deadline, "only {} JWKS fetches within {timeout:?}", self.fetches());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers one request on an accepted TLS connection.
async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut tls: S, state: &ServerState) {
    let mut request = Vec::new();
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let mut buf = [0u8; 1024];
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request).lines().next().unwrap_or_default().to_owned();
    state.requests.lock().unwrap().push(line);
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let port = state.port;
    let answer = state.answer.lock().unwrap().clone();
    let _ = match answer {
        Answer::Jwks(body) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/jwk-set+json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            tls.write_all(format!("{head}{body}").as_bytes()).await
        }
        Answer::Redirect => {
            let head = format!(
                "HTTP/1.1 302 Found\r\nLocation: https://127.0.0.1:{port}/elsewhere.json\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            tls.write_all(head.as_bytes()).await
        }
        Answer::Huge => {
            let mut result =
                tls.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"keys\":[],\"pad\":\"").await;
            let block = vec![b'x'; 64 * 1024];
            for _ in 0..32 {
                if result.is_err() {
                    break;
                }
                result = tls.write_all(&block).await;
            }
            result
        }
        Answer::Silent => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok(())
        }
    };
    let _ = tls.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// A config without a running database, for startup and check-config errors
// ---------------------------------------------------------------------------------------------

/// Writes `proxy.toml` into `dir` with the given `[auth]` lines (no database is started: these
/// configs are for `check-config` and for startups that must fail before connecting).
fn standalone_config(dir: &Path, auth: &str) -> PathBuf {
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:{}\"\n[upstream]\nport = {}\ndatabase = \"app\"\nuser = \"app_user\"\n\
         tls = \"disable\"\n[auth]\n{auth}\n[http]\naddr = \"127.0.0.1:{}\"\n",
        free_port(),
        free_port(),
        free_port()
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).expect("write proxy.toml");
    path
}

/// Runs `pgtenant <args>` (inherited PGTENANT_* variables removed); kills it if it runs longer
/// than 20 s, which for these commands means it hung.
fn run(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(binary());
    cmd.args(args).env("RUST_LOG", "info").stdin(std::process::Stdio::null());
    cmd.stdout(std::fs::File::create(&out_path).unwrap()).stderr(std::fs::File::create(&err_path).unwrap());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PGTENANT_") {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd.spawn().expect("spawn pgtenant");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: std::fs::read(out_path).unwrap(), stderr: std::fs::read(err_path).unwrap() }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// auth.jwks_file
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_picks_rs256_and_es256_keys_by_kid() {
    let pg = PgCluster::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("jwks.json");
    let secret = random_string(48);
    let keys = [
        public_jwk(Algorithm::RS256, "rsa-2024"),
        public_jwk(Algorithm::ES256, "ec-2024"),
        oct_jwk("hmac", secret.as_bytes()),
    ];
    std::fs::write(&file, jwks(&keys)).expect("write jwks.json");
    // Unknown-kid refreshes are rate limited to once an hour here, so only the background
    // re-read (every second) can pick up a change to the file.
    let settings = [
        ("jwks_file", path_toml(&file)),
        ("jwks_refresh_seconds", "1".to_owned()),
        ("jwks_min_refresh_seconds", "3600".to_owned()),
    ];
    let proxy = Proxy::start(&pg, jwks_options("[\"RS256\", \"ES256\"]", &settings)).await;
    wait_for_log(&proxy, "skipped: it is a symmetric (oct) key", Duration::from_secs(5)).await;

    assert_eq!(accepted(&proxy, &token(Algorithm::RS256, Some("rsa-2024"), TENANT_A)).await, TENANT_A);
    assert_eq!(accepted(&proxy, &token(Algorithm::ES256, Some("ec-2024"), TENANT_B)).await, TENANT_B);
    // The right signature under the other key's kid: the key type decides, not the header.
    refused(&proxy, &token(Algorithm::ES256, Some("rsa-2024"), TENANT_A), "does not match its signing key").await;
    // (e) no kid, and a kid naming the oct key (HS256 with its secret, or relabelled RS256).
    refused(&proxy, &token(Algorithm::RS256, None, TENANT_A), "token has no kid").await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hmac".to_owned());
    let hs =
        jsonwebtoken::encode(&header, &default_claims(TENANT_A), &EncodingKey::from_secret(secret.as_bytes())).unwrap();
    refused(&proxy, &hs, "algorithm HS256 is not allowed").await;
    let hmac_sig = hs.rsplit_once('.').unwrap().1;
    let relabelled =
        format!("{}.{hmac_sig}", token(Algorithm::RS256, Some("hmac"), TENANT_A).rsplit_once('.').unwrap().0);
    refused(&proxy, &relabelled, "not in the signing key set").await;
    // HS/RS confusion: HMAC with the RSA public key as the secret.
    let pem = std::fs::read(key_path("rsa.pub.pem")).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-2024".to_owned());
    let forged = jsonwebtoken::encode(&header, &default_claims(TENANT_A), &EncodingKey::from_secret(&pem)).unwrap();
    refused(&proxy, &forged, "algorithm HS256 is not allowed").await;

    // Background re-read: a new kid in the file is picked up without a restart.
    let next = token(Algorithm::EdDSA, Some("ed-2025"), TENANT_A);
    let rotated = [public_jwk(Algorithm::ES256, "ec-2024"), public_jwk(Algorithm::EdDSA, "ed-2025")];
    write_atomically(&file, &jwks(&rotated));
    wait_for_log_count(&proxy, "JWKS loaded", 2, Duration::from_secs(5)).await;
    // EdDSA is not in auth.algorithms: its key is skipped, and its tokens are refused by the allow-list.
    assert!(proxy.log().contains("(kid \"ed-2025\") skipped: a Ed25519 key verifies none"), "{}", proxy.log());
    refused(&proxy, &next, "algorithm EdDSA is not allowed").await;
    // The RSA key left the file, so its kid is now unknown.
    refused(&proxy, &token(Algorithm::RS256, Some("rsa-2024"), TENANT_A), "not in the signing key set").await;
    assert_eq!(accepted(&proxy, &token(Algorithm::ES256, Some("ec-2024"), TENANT_A)).await, TENANT_A);

    // A broken file later on keeps the last good keys, with a warning.
    let warned = log_count(&proxy, "JWKS refresh failed; keeping the previous keys");
    write_atomically(&file, "{ not json");
    wait_for_log_count(&proxy, "is not valid JSON", 1, Duration::from_secs(5)).await;
    assert!(log_count(&proxy, "JWKS refresh failed; keeping the previous keys") > warned, "{}", proxy.log());
    assert_eq!(accepted(&proxy, &token(Algorithm::ES256, Some("ec-2024"), TENANT_B)).await, TENANT_B);
}

#[test]
fn bad_jwks_files_stop_startup_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Missing: a config error (exit 2) from both check-config and serve.
    let config = standalone_config(dir.path(), "algorithms = [\"RS256\"]\njwks_file = \"missing.json\"");
    let config = config.to_str().unwrap();
    for command in ["check-config", "serve"] {
        let out = run(&[command, "--config", config]);
        assert_eq!(out.status.code(), Some(2), "{command}: {}", stderr(&out));
        assert!(stderr(&out).contains("auth.jwks_file: ") && stderr(&out).contains("missing.json cannot be read"));
    }
    // Present but unusable (only a symmetric key, or not JSON): serve exits 1 naming the file.
    for (doc, needle) in [
        (jwks(&[oct_jwk("hmac", b"0123456789abcdef0123456789abcdef")]), "has no usable signing key"),
        ("<html>".to_owned(), "is not valid JSON"),
    ] {
        std::fs::write(dir.path().join("jwks.json"), doc).unwrap();
        let config = standalone_config(dir.path(), "algorithms = [\"RS256\"]\njwks_file = \"jwks.json\"");
        let out = run(&["serve", "--config", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("JWKS file ") && err.contains("jwks.json") && err.contains(needle), "{err}");
    }
}

#[test]
fn jwks_config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = "jwks_url = \"https://idp.example/jwks\"";
    let rs = "algorithms = [\"RS256\"]";
    let hs = "algorithms = [\"HS256\"]\nhs_secret = \"0123456789abcdef0123456789abcdef\"";
    for (auth, needle) in [
        (format!("{rs}\njwks_url = \"http://127.0.0.1:8080/jwks\""), "auth.jwks_url: must be an https:// URL"),
        (format!("{rs}\n{url}\njwks_file = \"x.json\""), "auth.jwks_file: "),
        (format!("{rs}\n{url}\njwks_ca_file = \"nope.pem\""), "auth.jwks_ca_file: "),
        (format!("{rs}\n{url}\njwks_refresh_seconds = 0"), "auth.jwks_refresh_seconds: "),
        (format!("{rs}\n{url}\njwks_typo = 1"), "auth.jwks_typo: unknown key"),
        (format!("{hs}\n{url}"), "auth.jwks_url: a JWKS only verifies asymmetric algorithms"),
    ] {
        let config = standalone_config(dir.path(), &auth);
        let out = run(&["check-config", "--config", config.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{auth}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{auth}: expected {needle:?} in {}", stderr(&out));
    }
    let config =
        standalone_config(dir.path(), &format!("{rs}\njwks_url = \"https://idp.example/.well-known/jwks.json\""));
    let out = run(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// auth.jwks_url
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_with_a_private_ca_rotates_keys_under_a_rate_limit() {
    let pg = PgCluster::start().await;
    let certs = Certs::generate();
    let server = JwksServer::start(&certs, Answer::Jwks(jwks(&[public_jwk(Algorithm::RS256, "k1")]))).await;
    let proxy = Proxy::start(&pg, server.options(&certs, "[\"RS256\", \"ES256\"]", 3)).await;
    wait_for_log(&proxy, "JWKS loaded", Duration::from_secs(10)).await;
    assert_eq!(accepted(&proxy, &token(Algorithm::RS256, Some("k1"), TENANT_A)).await, TENANT_A);
    assert_eq!(server.fetches(), 1, "one fetch at startup");
    refused(&proxy, &token(Algorithm::RS256, None, TENANT_A), "token has no kid").await;

    // Rotation: the server starts publishing k2; a token with k2 triggers one refresh.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    server.set(Answer::Jwks(jwks(&[public_jwk(Algorithm::RS256, "k1"), public_jwk(Algorithm::ES256, "k2")])));
    assert_eq!(accepted(&proxy, &token(Algorithm::ES256, Some("k2"), TENANT_B)).await, TENANT_B);
    assert_eq!(server.fetches(), 2, "the unknown kid k2 caused exactly one fetch");

    // 20 concurrent logins with made-up kids: all refused, and the rate limit holds the
    // fetches to at most one more.
    let before = server.fetches();
    let logins: Vec<_> = (0..20)
        .map(|_| {
            let token = token(Algorithm::RS256, Some(&random_string(12)), TENANT_A);
            let port = proxy.port();
            tokio::spawn(async move {
                let mut raw = RawClient::connect(port).await;
                raw.login("anyname", "app", &token).await.expect_err("an unknown kid logged in")
            })
        })
        .collect();
    for login in logins {
        let err = login.await.expect("login task");
        assert_eq!(err.code(), "28P01", "{err:?}");
        assert!(err.message().contains("not in the signing key set"), "{err:?}");
    }
    assert!(server.fetches() - before <= 1, "{} fetches for 20 unknown kids", server.fetches() - before);
    // Known kids keep working throughout, without fetching.
    let during = server.fetches();
    assert_eq!(accepted(&proxy, &token(Algorithm::RS256, Some("k1"), TENANT_A)).await, TENANT_A);
    assert_eq!(server.fetches(), during);

    // A failed refresh keeps the previous keys and logs a warning.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    server.set(Answer::Redirect);
    refused(&proxy, &token(Algorithm::RS256, Some("k3"), TENANT_A), "not in the signing key set").await;
    wait_for_log(&proxy, "JWKS refresh failed; keeping the previous keys", Duration::from_secs(5)).await;
    assert!(proxy.log().contains("HTTP 302"), "{}", proxy.log());
    assert_eq!(accepted(&proxy, &token(Algorithm::ES256, Some("k2"), TENANT_B)).await, TENANT_B);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_first_load_failing_refuses_logins_then_recovers() {
    let pg = PgCluster::start().await;
    let certs = Certs::generate();
    let server = JwksServer::start(&certs, Answer::Redirect).await;
    let options = server.options(&certs, "[\"RS256\"]", 1).set("http", "ready_check_seconds", "1");
    let proxy = Proxy::start(&pg, options).await;
    let good = token(Algorithm::RS256, Some("k1"), TENANT_A);
    // A redirect is an error naming the status, never followed: fail closed.
    server.wait_fetches(1, Duration::from_secs(10)).await;
    refused(&proxy, &good, "signing keys are not available yet").await;
    // Not ready, and /ready says why.
    let body = ready_says(&proxy, 503, "\"keys\":\"signing keys are not available yet").await;
    assert!(body.contains("\"reason\":\"keys: "), "{body}");
    wait_for_log(&proxy, "server answered HTTP 302 (a redirect); redirects are not followed", Duration::from_secs(5))
        .await;
    assert!(server.requests().iter().all(|r| r.starts_with("GET /.well-known/jwks.json ")), "{:?}", server.requests());

    // Too large: the body is cut off at 1 MiB. The proxy retries in the background (here at
    // least every second, the unknown-kid rate limit) without any login asking for it.
    server.set(Answer::Huge);
    wait_for_log(&proxy, "response body is larger than 1048576 bytes", Duration::from_secs(10)).await;
    refused(&proxy, &good, "signing keys are not available yet").await;

    // Once the server is fixed, the background retry loads the keys and logins work.
    server.set(Answer::Jwks(jwks(&[public_jwk(Algorithm::RS256, "k1")])));
    wait_for_log(&proxy, "JWKS loaded", Duration::from_secs(10)).await;
    assert_eq!(accepted(&proxy, &good).await, TENANT_A);
    ready_says(&proxy, 200, "\"keys\":\"ok\"").await;
}

/// Polls `/ready` until it answers `status` with `needle` in the body; returns the body.
async fn ready_says(proxy: &Proxy, status: u16, needle: &str) -> String {
    let mut last = (0, String::new());
    for _ in 0..150 {
        last = proxy.http_get("/ready").await;
        if last.0 == status && last.1.contains(needle) {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/ready never answered {status} with {needle:?}; last: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_that_never_answers_or_is_untrusted_fails_closed_without_hanging() {
    let pg = PgCluster::start().await;
    let certs = Certs::generate();
    let silent = JwksServer::start(&certs, Answer::Silent).await;
    let proxy = Proxy::start(&pg, silent.options(&certs, "[\"RS256\"]", 30)).await;
    let started = Instant::now();
    refused(&proxy, &token(Algorithm::RS256, Some("k1"), TENANT_A), "signing keys are not available yet").await;
    assert!(started.elapsed() < Duration::from_secs(9), "login took {:?}", started.elapsed());
    wait_for_log(&proxy, "no complete response within", Duration::from_secs(15)).await;
    drop(proxy);

    // Without jwks_ca_file the public roots are used, which do not include the test CA.
    let served = JwksServer::start(&certs, Answer::Jwks(jwks(&[public_jwk(Algorithm::RS256, "k1")]))).await;
    let options = jwks_options("[\"RS256\"]", &[("jwks_url", toml_str(&served.url()))]);
    let proxy = Proxy::start(&pg, options).await;
    wait_for_log(&proxy, "TLS handshake failed", Duration::from_secs(10)).await;
    refused(&proxy, &token(Algorithm::RS256, Some("k1"), TENANT_A), "signing keys are not available yet").await;
    assert_eq!(served.fetches(), 0, "no request is sent to an unverified server");
}
