//! The JWKS key store: the current [`KeySet`] behind an `ArcSwap`, loaded from
//! a file or an HTTPS URL, refreshed in the background and on demand when a
//! token names an unknown `kid`.
//!
//! Lookups are lock-free and synchronous, so the common login never waits.
//! Loads are serialised by one async mutex: concurrent logins with an unknown
//! `kid` queue behind a single fetch and share its result, and a fetch for an
//! unknown `kid` happens at most once per `auth.jwks_min_refresh_seconds`, so
//! tokens with made-up kids cannot turn the proxy into a fetch amplifier. A
//! failed load keeps the previous set.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::Algorithm;

use crate::auth::fetch::{FetchError, HttpsClient, HttpsUrl, Limits, MAX_BODY};
use crate::auth::jwks::{Jwk, JwksError, KeySet, Parsed};
use crate::config::{JwksConfig, JwksLocation};

/// Longest a login waits for an on-demand refresh before it is answered with what is known.
/// Shorter than the default startup timeout, so a hanging JWKS server yields a clear refusal.
pub const REFRESH_WAIT: Duration = Duration::from_secs(5);
/// Longest pause between retries while no key set has ever loaded.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Verification keys from a JWKS file or URL, kept fresh.
pub struct KeyStore {
    current: ArcSwapOption<KeySet>,
    source: Source,
    allowed: Vec<Algorithm>,
    refresh_every: Duration,
    min_refresh: Duration,
    /// Serialises loads; holds the rate-limit clock and what was last loaded.
    loads: tokio::sync::Mutex<LoadState>,
    /// Finished loads, successful or not: a queued refresh that sees it change knows a load just happened.
    generation: AtomicU64,
    /// Why the last load failed (cleared by a success), for [`KeyStore::keys_ready`].
    last_error: Mutex<Option<String>>,
}

/// Why a key could not be looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No key set has loaded yet.
    NotReady,
    /// The current set has no usable key with that `kid`.
    UnknownKid,
}

/// Why a key set could not be loaded. The underlying error is part of each
/// message rather than a separate `source`, so `{:#}` chains print it once.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The JWKS file could not be read.
    #[error("JWKS file {path}: cannot read it: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The JWKS file is larger than [`MAX_BODY`].
    #[error("JWKS file {0}: is larger than {MAX_BODY} bytes")]
    FileTooLarge(PathBuf),
    /// The JWKS URL could not be fetched.
    #[error("JWKS URL {url}: {error}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        error: FetchError,
    },
    /// The document (from the file or URL) is not a usable key set.
    #[error("JWKS {origin} {error}")]
    Invalid {
        /// `file PATH` or `URL URL`.
        origin: String,
        /// What is wrong with it.
        error: JwksError,
    },
    /// The TLS configuration for the URL (the CA file) could not be built.
    #[error("auth.jwks_ca_file: {0}")]
    Tls(String),
}

/// Where the set comes from.
enum Source {
    File(PathBuf),
    Url { url: HttpsUrl, client: HttpsClient },
}

/// State guarded by the load lock.
struct LoadState {
    /// When the last load started (the rate limit for unknown-kid refreshes).
    last_started: Option<Instant>,
    /// The document last installed, to skip re-parsing and re-logging an unchanged set.
    last_document: Option<Vec<u8>>,
}

impl KeyStore {
    /// Sets up the store. A file is loaded now (a missing or invalid file is an
    /// error, as a bad `public_key_file` is); a URL is first fetched by
    /// [`KeyStore::spawn_refresh`], so an unreachable server does not stop startup.
    pub fn new(cfg: &JwksConfig, allowed: &[Algorithm]) -> Result<KeyStore, LoadError> {
        let source = match &cfg.location {
            JwksLocation::File(path) => Source::File(path.clone()),
            JwksLocation::Url { url, ca_file } => {
                let tls = crate::tls::https_client_config(ca_file.as_deref())
                    .map_err(|e| LoadError::Tls(format!("{e:#}")))?;
                Source::Url { url: url.clone(), client: HttpsClient::new(tls, Limits::default()) }
            }
        };
        let file = match &source {
            Source::File(path) => Some(path.clone()),
            Source::Url { .. } => None,
        };
        let mut store = KeyStore {
            current: ArcSwapOption::empty(),
            source,
            allowed: allowed.to_vec(),
            refresh_every: cfg.refresh,
            min_refresh: cfg.min_refresh,
            loads: tokio::sync::Mutex::new(LoadState { last_started: None, last_document: None }),
            generation: AtomicU64::new(0),
            last_error: Mutex::new(None),
        };
        if let Some(path) = file {
            let document = read_file(&path)?;
            let parsed = store.parse(&document)?;
            let mut state = LoadState { last_started: Some(Instant::now()), last_document: None };
            store.install(parsed, document, &mut state);
            *store.loads.get_mut() = state;
        }
        Ok(store)
    }

    /// Runs `f` on the key named `kid` in the current set (lock-free).
    pub fn with_key<T>(&self, kid: &str, f: impl FnOnce(&Jwk) -> T) -> Result<T, Missing> {
        let guard = self.current.load();
        let set = guard.as_deref().ok_or(Missing::NotReady)?;
        set.get(kid).map(f).ok_or(Missing::UnknownKid)
    }

    /// `Ok` once a key set is loaded; otherwise why logins are being refused.
    pub fn keys_ready(&self) -> Result<(), String> {
        if self.current.load().is_some() {
            return Ok(());
        }
        match self.last_error.lock().unwrap_or_else(PoisonError::into_inner).as_deref() {
            Some(error) => Err(format!("signing keys are not available yet: {error}")),
            None => Err("signing keys are not available yet: the first load has not finished".to_owned()),
        }
    }

    /// Starts the background task: a URL is fetched at once, then (file or URL)
    /// reloaded every `auth.jwks_refresh_seconds`; while no set has ever loaded,
    /// retries come sooner. The task ends when the store is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let mut delay = match self.source {
            Source::Url { .. } => Duration::ZERO,
            Source::File(_) => self.refresh_every,
        };
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                tokio::time::sleep(delay).await;
                let Some(store) = weak.upgrade() else {
                    return;
                };
                let mut state = store.loads.lock().await;
                store.load(&mut state).await;
                drop(state);
                delay = store.next_delay(&mut failures);
            }
        })
    }

    /// Called when a token names a `kid` the set lacks (or no set is loaded):
    /// reloads unless a load finished meanwhile or one started less than
    /// `auth.jwks_min_refresh_seconds` ago. Waits at most [`REFRESH_WAIT`].
    pub async fn refresh_for_unknown_kid(self: &Arc<Self>) {
        let seen = self.generation.load(Ordering::SeqCst);
        let store = Arc::clone(self);
        // Its own task: a login that stops waiting must not cancel a fetch others queue behind.
        let load = tokio::spawn(async move { store.load_if_allowed(seen).await });
        let _ = tokio::time::timeout(REFRESH_WAIT, load).await;
    }

    async fn load_if_allowed(&self, seen: u64) {
        let mut state = self.loads.lock().await;
        if self.generation.load(Ordering::SeqCst) != seen {
            return; // a load finished while this one queued: share its result
        }
        if state.last_started.is_some_and(|at| at.elapsed() < self.min_refresh) {
            tracing::debug!("unknown kid: JWKS refresh skipped (rate limited by auth.jwks_min_refresh_seconds)");
            return;
        }
        tracing::info!(source = %self.describe(), "token names an unknown kid; refreshing the JWKS");
        self.load(&mut state).await;
    }

    /// Loads once, installing the new set or keeping the old one; the caller holds the load lock.
    async fn load(&self, state: &mut LoadState) {
        state.last_started = Some(Instant::now());
        let result = match self.document().await {
            Ok(doc) if state.last_document.as_ref() == Some(&doc) && self.current.load().is_some() => Ok(()),
            Ok(doc) => self.parse(&doc).map(|parsed| self.install(parsed, doc, state)),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.record_failure(&e);
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    async fn document(&self) -> Result<Vec<u8>, LoadError> {
        match &self.source {
            // A local file of at most 1 MiB: reading it inline is cheaper than a blocking-pool hop.
            Source::File(path) => read_file(path),
            Source::Url { url, client } => {
                client.get(url).await.map_err(|error| LoadError::Fetch { url: url.to_string(), error })
            }
        }
    }

    fn parse(&self, document: &[u8]) -> Result<Parsed, LoadError> {
        KeySet::parse(document, &self.allowed).map_err(|error| LoadError::Invalid { origin: self.describe(), error })
    }

    fn install(&self, parsed: Parsed, document: Vec<u8>, state: &mut LoadState) {
        let kids = format!("{:?}", parsed.set.kids());
        // Swap first, log after: whoever reads "JWKS loaded" can rely on the new keys.
        self.current.store(Some(Arc::new(parsed.set)));
        for skipped in &parsed.skipped {
            tracing::warn!(source = %self.describe(), "JWKS {skipped}");
        }
        tracing::info!(source = %self.describe(), kids = %kids, "JWKS loaded");
        state.last_document = Some(document);
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn record_failure(&self, error: &LoadError) {
        match self.current.load().is_some() {
            true => tracing::warn!(error = %error, "JWKS refresh failed; keeping the previous keys"),
            false => tracing::warn!(error = %error, "JWKS not available; logins are refused until it loads"),
        }
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }

    /// The regular period once keys are loaded. Before that, a backoff of 1, 2, 4 ... s, capped
    /// by 30 s, the refresh period and the unknown-kid rate limit: logins are being refused, so
    /// retry as often as an unknown kid could trigger a fetch, but no more.
    fn next_delay(&self, failures: &mut u32) -> Duration {
        if self.current.load().is_some() {
            *failures = 0;
            return self.refresh_every;
        }
        let backoff = Duration::from_secs(1 << (*failures).min(5));
        *failures += 1;
        backoff.min(MAX_RETRY_DELAY).min(self.refresh_every).min(self.min_refresh)
    }

    /// `file PATH` or `URL URL`, for messages.
    fn describe(&self) -> String {
        match &self.source {
            Source::File(path) => format!("file {}", path.display()),
            Source::Url { url, .. } => format!("URL {url}"),
        }
    }
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("source", &self.describe()).finish_non_exhaustive()
    }
}

/// Reads a JWKS file, refusing more than [`MAX_BODY`] bytes as the fetcher does.
fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    let read_error = |error| LoadError::Read { path: path.to_owned(), error };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_BODY as u64 + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() > MAX_BODY {
        return Err(LoadError::FileTooLarge(path.to_owned()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwks::tests::public_jwk;
    use serde_json::{json, Value};

    fn set(keys: &[Value]) -> String {
        json!({ "keys": keys }).to_string()
    }

    fn file_store(dir: &tempfile::TempDir, doc: &str, min_refresh: u64) -> Result<Arc<KeyStore>, LoadError> {
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, doc).unwrap();
        let cfg = JwksConfig {
            location: JwksLocation::File(path),
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(min_refresh),
        };
        KeyStore::new(&cfg, &[Algorithm::RS256, Algorithm::ES256]).map(Arc::new)
    }

    fn has(store: &KeyStore, kid: &str) -> bool {
        store.with_key(kid, |_| ()).is_ok()
    }

    #[test]
    fn file_loads_at_once_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir, &set(&[public_jwk(Algorithm::RS256, "a")]), 30).unwrap();
        assert!(has(&store, "a"));
        assert_eq!(store.with_key("b", |_| ()), Err(Missing::UnknownKid));
        assert_eq!(store.keys_ready(), Ok(()));

        let err = file_store(&dir, "{\"keys\": [", 30).unwrap_err();
        assert!(err.to_string().starts_with("JWKS file ") && err.to_string().contains("is not valid JSON"), "{err}");
        let oct = json!({ "kty": "oct", "kid": "h", "k": "c2VjcmV0" });
        let err = file_store(&dir, &set(&[oct]), 30).unwrap_err();
        assert!(err.to_string().contains("has no usable signing key") && err.to_string().contains("oct"), "{err}");
        let big = format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(MAX_BODY));
        assert!(matches!(file_store(&dir, &big, 30), Err(LoadError::FileTooLarge(_))));
        let cfg = JwksConfig {
            location: JwksLocation::File(dir.path().join("missing.json")),
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(30),
        };
        let err = KeyStore::new(&cfg, &[Algorithm::RS256]).unwrap_err();
        assert!(err.to_string().contains("missing.json: cannot read it"), "{err}");
    }

    #[tokio::test]
    async fn unknown_kid_refresh_is_rate_limited_and_a_failed_load_keeps_the_old_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let store = file_store(&dir, &set(&[public_jwk(Algorithm::RS256, "old")]), 1).unwrap();
        std::fs::write(&path, set(&[public_jwk(Algorithm::ES256, "new")])).unwrap();
        // Just loaded at startup: the rate limit holds the refresh back.
        store.refresh_for_unknown_kid().await;
        assert!(has(&store, "old") && !has(&store, "new"));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        store.refresh_for_unknown_kid().await;
        assert!(has(&store, "new") && !has(&store, "old"), "rotation: the old kid is gone");
        // A broken file later on keeps the last good set.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        std::fs::write(&path, "garbage").unwrap();
        store.refresh_for_unknown_kid().await;
        assert!(has(&store, "new"));
        assert_eq!(store.keys_ready(), Ok(()));
    }

    #[tokio::test]
    async fn concurrent_unknown_kids_share_one_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir, &set(&[public_jwk(Algorithm::RS256, "a")]), 1).unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = store.generation.load(Ordering::SeqCst);
        let waits: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.refresh_for_unknown_kid().await })
            })
            .collect();
        for wait in waits {
            wait.await.unwrap();
        }
        assert_eq!(store.generation.load(Ordering::SeqCst) - before, 1, "20 unknown kids, one load");
    }

    #[tokio::test]
    async fn url_store_is_not_ready_until_loaded_and_says_why() {
        // Nothing listens on this port: every fetch fails fast.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = HttpsUrl::parse(&format!("https://127.0.0.1:{port}/jwks")).unwrap();
        let cfg = JwksConfig {
            location: JwksLocation::Url { url, ca_file: None },
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(30),
        };
        let store = Arc::new(KeyStore::new(&cfg, &[Algorithm::RS256]).unwrap());
        assert_eq!(store.with_key("a", |_| ()), Err(Missing::NotReady));
        assert!(store.keys_ready().unwrap_err().contains("first load has not finished"));
        let task = store.spawn_refresh();
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.last_error.lock().unwrap().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let why = store.keys_ready().unwrap_err();
        assert!(why.starts_with("signing keys are not available yet: JWKS URL https://127.0.0.1:"), "{why}");
        assert!(why.contains("cannot connect"), "{why}");
        task.abort();
    }

    #[test]
    fn retry_backoff_before_the_first_load() {
        let delays = |refresh: u64, min_refresh: u64| {
            let url = HttpsUrl::parse("https://127.0.0.1:9/jwks").unwrap();
            let cfg = JwksConfig {
                location: JwksLocation::Url { url, ca_file: None },
                refresh: Duration::from_secs(refresh),
                min_refresh: Duration::from_secs(min_refresh),
            };
            let store = KeyStore::new(&cfg, &[Algorithm::RS256]).unwrap();
            let mut failures = 0;
            (0..8).map(|_| store.next_delay(&mut failures).as_secs()).collect::<Vec<_>>()
        };
        assert_eq!(delays(300, 3600), vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(delays(20, 30), vec![1, 2, 4, 8, 16, 20, 20, 20]);
        assert_eq!(delays(300, 5), vec![1, 2, 4, 5, 5, 5, 5, 5]);
    }
}
