//! JWT verification for client logins (the token is the password), and HS256 minting for the CLI and tests.
//!
//! The key is one HS secret, one PEM public key, or a JWKS ([`KeyStore`]) where
//! the token's `kid` picks the key. In every case the algorithm must be on the
//! configured allow-list *and* fit the key; the token header alone never decides.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::auth::keystore::{KeyStore, LoadError, Missing};
use crate::auth::tenant::{TenantFormat, TenantId};
use crate::config::{AuthConfig, KeySource, MIN_HS_SECRET_LEN};

/// Largest accepted token, in bytes; anything longer is refused before parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Checks tokens against the configured key or key set. Build once, share behind an `Arc`.
pub struct Verifier {
    keys: Keys,
    // One Validation per allowed algorithm: jsonwebtoken insists that every
    // algorithm in a Validation matches the key family, and ES256/ES384 differ
    // by curve, so the token's algorithm selects its own.
    validations: Vec<(Algorithm, Validation)>,
    tenant_claim: String,
    tenant_format: TenantFormat,
}

/// Where verification keys come from.
enum Keys {
    /// One key for every token (HS secret or PEM public key).
    Single(DecodingKey),
    /// A JWKS: the token's `kid` selects the key.
    Jwks(Arc<KeyStore>),
}

/// What a successfully verified token establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The validated tenant id from the tenant claim.
    pub tenant: TenantId,
    /// The `exp` claim, in Unix seconds.
    pub expires_at: u64,
    /// The `sub` claim, when it is a string.
    pub subject: Option<String>,
}

/// Why a token was refused. Messages name the failed check and never contain
/// any part of the token: they may be sent to clients and written to logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token is too large")]
    TooLarge,
    /// Not three base64url JSON segments, or a header/payload that is not a JSON object.
    #[error("token is malformed")]
    Malformed,
    /// The header algorithm is not on the allow-list (`none` and unknown names included).
    #[error("token algorithm {0} is not allowed")]
    AlgorithmNotAllowed(&'static str),
    /// The header lists `crit` extensions, none of which are understood (RFC 7515 §4.1.11).
    #[error("token has unsupported critical header extensions")]
    UnsupportedCritical,
    /// The signature does not verify with the configured key.
    #[error("token signature is invalid")]
    InvalidSignature,
    /// With a JWKS, the header has no `kid`, so no key can be chosen.
    #[error("token has no kid (key id) header; one is required to pick the signing key")]
    MissingKid,
    /// With a JWKS, no usable key has the token's `kid` (even after a refresh, when one was allowed).
    #[error("token key id (kid) is not in the signing key set")]
    UnknownKid,
    /// With a JWKS, the key named by `kid` cannot verify the token's algorithm (key type, or the JWK's `alg`).
    #[error("token algorithm does not match its signing key")]
    KeyAlgorithmMismatch,
    /// With a JWKS URL, no key set has loaded yet (fail closed).
    #[error("signing keys are not available yet")]
    KeysNotReady,
    /// `exp` (plus leeway) is in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` (minus leeway) is in the future.
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    /// A required registered claim (`exp`, or `iss`/`aud` when configured) is absent or not usable.
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    /// `nbf` is present but not a non-negative number.
    #[error("token claim {0} is not a valid timestamp")]
    InvalidTimeClaim(&'static str),
    /// `iss` differs from `auth.issuer`.
    #[error("token issuer does not match")]
    IssuerMismatch,
    /// `aud` does not contain `auth.audience` (or is present when none is configured).
    #[error("token audience does not match")]
    AudienceMismatch,
    /// The configured tenant claim is absent.
    #[error("token has no tenant claim {0:?}")]
    MissingTenant(String),
    /// The tenant claim is not a JSON string.
    #[error("tenant claim {0:?} is not a string")]
    TenantNotString(String),
    /// The tenant claim is a string that does not fit `auth.tenant_format`.
    #[error("tenant claim {claim:?} is not a valid {expected}")]
    InvalidTenant {
        /// The configured claim path.
        claim: String,
        /// What was expected, e.g. `uuid`.
        expected: &'static str,
    },
}

/// Why a [`Verifier`] could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `algorithms` is empty.
    #[error("auth.algorithms lists no algorithm")]
    NoAlgorithms,
    /// The HS secret is shorter than [`MIN_HS_SECRET_LEN`].
    #[error("the HS secret is {0} bytes; at least 32 are required")]
    SecretTooShort(usize),
    /// The public key file could not be read.
    #[error("cannot read public key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds a private key; the proxy must only ever get the public half.
    #[error("public key file {0} holds a private key; give the proxy only the public key")]
    PrivateKey(PathBuf),
    /// The file is not a PEM RSA, EC P-256/P-384 or Ed25519 public key.
    #[error("public key file {0} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519)")]
    NotPublicKey(PathBuf),
    /// An allowed algorithm cannot be verified with the configured key.
    #[error("a {key} key cannot verify {alg} tokens; fix auth.algorithms or the key")]
    AlgorithmKeyMismatch {
        /// The key type, e.g. `RSA`.
        key: &'static str,
        /// The offending algorithm.
        alg: &'static str,
    },
    /// HS algorithms cannot be verified with a JWKS (config rejects this too).
    #[error("a JWKS only verifies asymmetric algorithms; auth.algorithms lists {0}")]
    HmacWithJwks(&'static str),
    /// The JWKS could not be set up (a bad file, or a bad CA file for the URL).
    #[error(transparent)]
    Jwks(#[from] LoadError),
}

/// Claims for [`mint_hs256`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintClaims {
    /// Claim name or dotted path (`org.tenant`) to place the tenant under.
    pub tenant_claim: String,
    /// Tenant id value (not validated, so tests can mint bad ones).
    pub tenant: String,
    /// Lifetime: `exp = now + ttl_seconds` (negative yields an expired token).
    pub ttl_seconds: i64,
    /// `sub`, if any.
    pub subject: Option<String>,
    /// `iss`, if any.
    pub issuer: Option<String>,
    /// `aud`, if any.
    pub audience: Option<String>,
}

/// Key types the proxy understands; each verifies exactly the listed algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyKind::Hmac => "HMAC secret",
            KeyKind::Rsa => "RSA",
            KeyKind::EcP256 => "EC P-256",
            KeyKind::EcP384 => "EC P-384",
            KeyKind::Ed25519 => "Ed25519",
        }
    }

    pub(crate) fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Hmac, HS256 | HS384 | HS512)
                | (KeyKind::Rsa, RS256 | RS384 | RS512)
                | (KeyKind::EcP256, ES256)
                | (KeyKind::EcP384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

impl Verifier {
    /// Loads the key named by `cfg` and checks every allowed algorithm fits it.
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, KeyError> {
        if cfg.algorithms.is_empty() {
            return Err(KeyError::NoAlgorithms);
        }
        let keys = match &cfg.key {
            KeySource::HsSecret(secret) if secret.len() < MIN_HS_SECRET_LEN => {
                return Err(KeyError::SecretTooShort(secret.len()));
            }
            KeySource::HsSecret(secret) => single_key(DecodingKey::from_secret(secret), KeyKind::Hmac, cfg)?,
            KeySource::PublicKeyPem(path) => {
                let (key, kind) = load_public_pem(path)?;
                single_key(key, kind, cfg)?
            }
            KeySource::Jwks(jwks) => {
                if let Some(hs) = cfg.algorithms.iter().find(|a| KeyKind::Hmac.verifies(**a)) {
                    return Err(KeyError::HmacWithJwks(alg_name(*hs)));
                }
                Keys::Jwks(Arc::new(KeyStore::new(jwks, &cfg.algorithms)?))
            }
        };
        let validations = cfg.algorithms.iter().map(|alg| (*alg, validation(cfg, *alg))).collect();
        Ok(Verifier { keys, validations, tenant_claim: cfg.tenant_claim.clone(), tenant_format: cfg.tenant_format })
    }

    /// Starts reloading a JWKS in the background (a URL is fetched at once); a no-op for a single key.
    pub fn spawn_key_refresh(&self) {
        if let Keys::Jwks(store) = &self.keys {
            store.spawn_refresh();
        }
    }

    /// `Ok` when tokens can be verified; otherwise why not (a JWKS URL that has not loaded yet).
    pub fn keys_ready(&self) -> Result<(), String> {
        match &self.keys {
            Keys::Single(_) => Ok(()),
            Keys::Jwks(store) => store.keys_ready(),
        }
    }

    /// [`Verifier::verify`], but a token whose `kid` is unknown (or that arrives
    /// before any key set loaded) waits for one rate-limited JWKS refresh and is
    /// checked once more. The common case never awaits.
    pub async fn verify_with_refresh(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let first = self.verify(token);
        match (&first, &self.keys) {
            (Err(AuthError::UnknownKid | AuthError::KeysNotReady), Keys::Jwks(store)) => {
                store.refresh_for_unknown_kid().await;
                self.verify(token)
            }
            _ => first,
        }
    }

    /// Verifies signature, algorithm, time claims, issuer, audience and tenant claim.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        // Pasted tokens often carry a trailing newline; JWTs never contain whitespace.
        let token = token.trim_ascii();
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLarge);
        }
        // Our own header check first: the allow-list decides, never the header,
        // and it lets `none`/unknown algorithms get a precise message.
        let (alg, kid) = header_fields(token)?;
        let validation = self
            .validations
            .iter()
            .find(|(allowed, _)| *allowed == alg)
            .map(|(_, v)| v)
            .ok_or(AuthError::AlgorithmNotAllowed(alg_name(alg)))?;
        let claims = match &self.keys {
            Keys::Single(key) => decode(token, key, validation)?,
            Keys::Jwks(store) => {
                let kid = kid.ok_or(AuthError::MissingKid)?;
                let checked = store.with_key(&kid, |jwk| match jwk.accepts(alg) {
                    true => decode(token, jwk.decoding_key(), validation),
                    false => Err(AuthError::KeyAlgorithmMismatch),
                });
                match checked {
                    Ok(claims) => claims?,
                    Err(Missing::NotReady) => return Err(AuthError::KeysNotReady),
                    Err(Missing::UnknownKid) => return Err(AuthError::UnknownKid),
                }
            }
        };
        let tenant = self.tenant(&claims)?;
        let expires_at = claims.get("exp").and_then(numeric_date).ok_or(AuthError::MissingClaim("exp"))?;
        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        Ok(VerifiedToken { tenant, expires_at, subject })
    }

    fn tenant(&self, claims: &Map<String, Value>) -> Result<TenantId, AuthError> {
        let claim = &self.tenant_claim;
        let value = lookup_claim(claims, claim).ok_or_else(|| AuthError::MissingTenant(claim.clone()))?;
        let raw = value.as_str().ok_or_else(|| AuthError::TenantNotString(claim.clone()))?;
        TenantId::parse(raw, self.tenant_format).map_err(|_| AuthError::InvalidTenant {
            claim: claim.clone(),
            expected: match self.tenant_format {
                TenantFormat::Uuid => "uuid",
                TenantFormat::Text => "text tenant id",
            },
        })
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<&str> = self.validations.iter().map(|(a, _)| alg_name(*a)).collect();
        let keys = match &self.keys {
            Keys::Single(_) => "single key".to_owned(),
            Keys::Jwks(store) => format!("{store:?}"),
        };
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .field("algorithms", &algs)
            .field("tenant_claim", &self.tenant_claim)
            .field("tenant_format", &self.tenant_format)
            .finish_non_exhaustive()
    }
}

/// Signs an HS256 token with `iat = now` and `exp = now + ttl` (for `pgtenant token` and tests).
pub fn mint_hs256(secret: &[u8], claims: &MintClaims) -> String {
    let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
    let mut body = Map::new();
    // Tenant first so the registered claims below win any name clash.
    insert_claim(&mut body, &claims.tenant_claim, Value::from(claims.tenant.clone()));
    for (name, value) in [("sub", &claims.subject), ("iss", &claims.issuer), ("aud", &claims.audience)] {
        if let Some(value) = value {
            body.insert(name.to_owned(), Value::from(value.clone()));
        }
    }
    body.insert("iat".to_owned(), Value::from(now));
    // Clamped at 0: a negative exp is not a valid NumericDate and would read as "no exp".
    body.insert("exp".to_owned(), Value::from(now.saturating_add(claims.ttl_seconds).max(0)));
    let key = EncodingKey::from_secret(secret);
    // HMAC over a serialised JSON object has no failure mode.
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &body, &key).expect("HS256 signing cannot fail")
}

fn validation(cfg: &AuthConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    // jsonwebtoken only compares iss/aud when present, so presence must be required too.
    let mut required = vec!["exp"];
    if let Some(issuer) = &cfg.issuer {
        v.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &cfg.audience {
        Some(audience) => {
            v.set_audience(&[audience]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

/// The single key's [`Keys`], after checking every allowed algorithm fits it.
fn single_key(key: DecodingKey, kind: KeyKind, cfg: &AuthConfig) -> Result<Keys, KeyError> {
    match cfg.algorithms.iter().find(|a| !kind.verifies(**a)) {
        Some(alg) => Err(KeyError::AlgorithmKeyMismatch { key: kind.name(), alg: alg_name(*alg) }),
        None => Ok(Keys::Single(key)),
    }
}

/// Signature and claim checks by jsonwebtoken, with errors mapped to ours.
fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Map<String, Value>, AuthError> {
    Ok(jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(map_error)?.claims)
}

/// Reads the header's `alg` and `kid` without trusting anything else in it.
fn header_fields(token: &str) -> Result<(Algorithm, Option<String>), AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| AuthError::Malformed)?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    if header.contains_key("crit") {
        return Err(AuthError::UnsupportedCritical);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    let name = header.get("alg").and_then(Value::as_str).ok_or(AuthError::Malformed)?;
    match Algorithm::from_str(name) {
        Ok(alg) => Ok((alg, kid)),
        Err(_) if name.eq_ignore_ascii_case("none") => Err(AuthError::AlgorithmNotAllowed("none")),
        Err(_) => Err(AuthError::AlgorithmNotAllowed("(unrecognized)")),
    }
}

/// Static names, so error messages never carry header text.
pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    use Algorithm::*;
    match alg {
        HS256 => "HS256",
        HS384 => "HS384",
        HS512 => "HS512",
        RS256 => "RS256",
        RS384 => "RS384",
        RS512 => "RS512",
        PS256 => "PS256",
        PS384 => "PS384",
        PS512 => "PS512",
        ES256 => "ES256",
        ES384 => "ES384",
        EdDSA => "EdDSA",
        // Algorithm is non_exhaustive.
        _ => "(unrecognized)",
    }
}

fn map_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => AuthError::InvalidSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::IssuerMismatch,
        ErrorKind::InvalidAudience => AuthError::AudienceMismatch,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(match c.as_str() {
            "iss" => "iss",
            "aud" => "aud",
            "exp" => "exp",
            _ => "required",
        }),
        ErrorKind::InvalidClaimFormat(c) if c == "nbf" => AuthError::InvalidTimeClaim("nbf"),
        ErrorKind::InvalidClaimFormat(_) => AuthError::MissingClaim("exp"),
        _ => AuthError::Malformed,
    }
}

/// Finds a claim by exact name, else by dotted path into nested objects.
fn lookup_claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    // Exact name first: namespaced claims such as "https://example.com/tenant" contain dots.
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

fn insert_claim(body: &mut Map<String, Value>, path: &str, value: Value) {
    let (parents, leaf) = match path.rsplit_once('.') {
        Some((parents, leaf)) => (Some(parents), leaf),
        None => (None, path),
    };
    let mut obj = body;
    for part in parents.into_iter().flat_map(|p| p.split('.')) {
        let entry = obj.entry(part.to_owned()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        match entry {
            Value::Object(next) => obj = next,
            _ => return, // unreachable: replaced by an object just above
        }
    }
    obj.insert(leaf.to_owned(), value);
}

/// A NumericDate as jsonwebtoken reads it: non-negative integer or float.
fn numeric_date(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        let f = value.as_f64()?;
        (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
    })
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn load_public_pem(path: &Path) -> Result<(DecodingKey, KeyKind), KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    let not_public = || KeyError::NotPublicKey(path.to_owned());
    // Refuse private keys outright: jsonwebtoken would accept an RSA private
    // key here, and a proxy should never hold signing material.
    match pem_label(&bytes) {
        Some(label) if label.contains("PRIVATE") => return Err(KeyError::PrivateKey(path.to_owned())),
        Some("PUBLIC KEY" | "RSA PUBLIC KEY") => {}
        _ => return Err(not_public()),
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&bytes) {
        return Ok((key, KeyKind::Rsa));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&bytes) {
        // Uncompressed point length tells the curve: 1 + 2 * field size.
        let kind = match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => KeyKind::EcP256,
            Ok(97) => KeyKind::EcP384,
            _ => return Err(not_public()),
        };
        return Ok((key, kind));
    }
    match DecodingKey::from_ed_pem(&bytes) {
        Ok(key) if key.try_get_as_bytes().map(<[u8]>::len) == Ok(32) => Ok((key, KeyKind::Ed25519)),
        _ => Err(not_public()),
    }
}

/// The label of the first `-----BEGIN <label>-----` line.
fn pem_label(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let rest = &text[text.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    Some(rest[..rest.find("-----")?].trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwks::tests::public_jwk;
    use crate::config::{JwksConfig, JwksLocation};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-only";
    const TENANT: &str = "3f2a8c1e-9b4d-4e6f-a0b1-c2d3e4f5a6b7";
    const RSA_KEY: &str = include_str!("../../tests/keys/rsa.key.pem");
    const RSA_PUB: &str = include_str!("../../tests/keys/rsa.pub.pem");
    const EC256_KEY: &str = include_str!("../../tests/keys/ec256.key.pem");
    const EC256_PUB: &str = include_str!("../../tests/keys/ec256.pub.pem");
    const EC384_KEY: &str = include_str!("../../tests/keys/ec384.key.pem");
    const EC384_PUB: &str = include_str!("../../tests/keys/ec384.pub.pem");
    const ED_KEY: &str = include_str!("../../tests/keys/ed25519.key.pem");
    const ED_PUB: &str = include_str!("../../tests/keys/ed25519.pub.pem");

    fn now() -> i64 {
        unix_now() as i64
    }

    fn config(algorithms: &[Algorithm], key: KeySource) -> AuthConfig {
        AuthConfig {
            algorithms: algorithms.to_vec(),
            key,
            tenant_claim: "tenant_id".to_owned(),
            tenant_format: TenantFormat::Uuid,
            issuer: None,
            audience: None,
            leeway: 30,
        }
    }

    fn hs_config(algorithms: &[Algorithm]) -> AuthConfig {
        config(algorithms, KeySource::HsSecret(SECRET.to_vec()))
    }

    fn hs_verifier() -> Verifier {
        Verifier::new(&hs_config(&[Algorithm::HS256])).unwrap()
    }

    /// Writes `pem` to a temp file; the guard keeps it alive.
    fn pem_config(pem: &str, algorithms: &[Algorithm]) -> (AuthConfig, tempfile::NamedTempFile) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), pem).unwrap();
        (config(algorithms, KeySource::PublicKeyPem(file.path().to_owned())), file)
    }

    fn claims() -> Value {
        json!({ "tenant_id": TENANT, "exp": now() + 300, "iat": now(), "sub": "user-1" })
    }

    fn with(mut base: Value, extra: Value) -> Value {
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    fn without(mut base: Value, key: &str) -> Value {
        base.as_object_mut().unwrap().remove(key);
        base
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    fn hs(claims: &Value) -> String {
        sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn raw_token(header: &str, payload: &str, signature: &str) -> String {
        format!("{}.{}.{signature}", b64(header), b64(payload))
    }

    /// Asserts the error and that its message repeats no part of the token.
    fn assert_refused(verifier: &Verifier, token: &str, want: AuthError) {
        let err = verifier.verify(token).unwrap_err();
        assert_eq!(err, want);
        let msg = err.to_string();
        for part in token.split('.').filter(|p| p.len() >= 4) {
            assert!(!msg.contains(part), "message {msg:?} leaks token text");
        }
    }

    #[test]
    fn hs_family_verifies() {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let verifier = Verifier::new(&hs_config(&[alg])).unwrap();
            let c = claims();
            let token = sign(alg, &EncodingKey::from_secret(SECRET), &c);
            let ok = verifier.verify(&token).unwrap();
            assert_eq!(ok.tenant.as_str(), TENANT);
            assert_eq!(ok.expires_at, c["exp"].as_u64().unwrap());
            assert_eq!(ok.subject.as_deref(), Some("user-1"));
        }
    }

    #[test]
    fn asymmetric_keys_verify() {
        let cases = [
            (Algorithm::RS256, RSA_KEY, RSA_PUB),
            (Algorithm::RS512, RSA_KEY, RSA_PUB),
            (Algorithm::ES256, EC256_KEY, EC256_PUB),
            (Algorithm::ES384, EC384_KEY, EC384_PUB),
            (Algorithm::EdDSA, ED_KEY, ED_PUB),
        ];
        for (alg, private, public) in cases {
            let key = match alg {
                Algorithm::RS256 | Algorithm::RS512 => EncodingKey::from_rsa_pem(private.as_bytes()),
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(private.as_bytes()),
                _ => EncodingKey::from_ed_pem(private.as_bytes()),
            }
            .unwrap();
            let (cfg, _guard) = pem_config(public, &[alg]);
            let verifier = Verifier::new(&cfg).unwrap();
            let ok = verifier.verify(&sign(alg, &key, &claims())).unwrap();
            assert_eq!(ok.tenant.as_str(), TENANT, "{alg:?}");
            // A signature over a different payload must fail.
            let good = sign(alg, &key, &claims());
            let other = sign(alg, &key, &with(claims(), json!({ "sub": "mallory" })));
            let spliced = format!("{}.{}", other.rsplit_once('.').unwrap().0, good.rsplit_once('.').unwrap().1);
            assert_refused(&verifier, &spliced, AuthError::InvalidSignature);
        }
    }

    #[test]
    fn key_loading_errors() {
        let (cfg, _g) = pem_config(RSA_KEY, &[Algorithm::RS256]);
        assert!(matches!(Verifier::new(&cfg), Err(KeyError::PrivateKey(_))));
        let (cfg, _g) = pem_config("not a pem", &[Algorithm::RS256]);
        assert!(matches!(Verifier::new(&cfg), Err(KeyError::NotPublicKey(_))));
        let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        let (cfg, _g) = pem_config(garbage, &[Algorithm::RS256]);
        assert!(matches!(Verifier::new(&cfg), Err(KeyError::NotPublicKey(_))));
        let cfg = config(&[Algorithm::RS256], KeySource::PublicKeyPem("/nonexistent/jwt.pub".into()));
        let err = Verifier::new(&cfg).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/jwt.pub"), "{err}");
        let short = config(&[Algorithm::HS256], KeySource::HsSecret(b"short".to_vec()));
        assert!(matches!(Verifier::new(&short), Err(KeyError::SecretTooShort(5))));
        assert!(matches!(Verifier::new(&hs_config(&[])), Err(KeyError::NoAlgorithms)));
    }

    #[test]
    fn algorithm_must_fit_key() {
        let mismatch = |cfg: &AuthConfig| matches!(Verifier::new(cfg), Err(KeyError::AlgorithmKeyMismatch { .. }));
        assert!(mismatch(&hs_config(&[Algorithm::RS256])));
        assert!(mismatch(&pem_config(RSA_PUB, &[Algorithm::HS256]).0));
        assert!(mismatch(&pem_config(RSA_PUB, &[Algorithm::RS256, Algorithm::ES256]).0));
        assert!(mismatch(&pem_config(EC256_PUB, &[Algorithm::ES384]).0));
        assert!(mismatch(&pem_config(EC384_PUB, &[Algorithm::ES256]).0));
        assert!(mismatch(&pem_config(ED_PUB, &[Algorithm::ES256]).0));
        assert!(mismatch(&pem_config(RSA_PUB, &[Algorithm::PS256]).0));
    }

    #[test]
    fn wrong_secret_and_tampering() {
        let v = hs_verifier();
        let other = EncodingKey::from_secret(b"another-secret-another-secret-xx");
        assert_refused(&v, &sign(Algorithm::HS256, &other, &claims()), AuthError::InvalidSignature);
        // Swap in a different payload under the original signature.
        let good = hs(&claims());
        let evil = hs(&with(claims(), json!({ "tenant_id": "00000000-0000-0000-0000-000000000000" })));
        let (g, e): (Vec<&str>, Vec<&str>) = (good.split('.').collect(), evil.split('.').collect());
        let spliced = format!("{}.{}.{}", g[0], e[1], g[2]);
        assert_refused(&v, &spliced, AuthError::InvalidSignature);
    }

    #[test]
    fn expiry_and_leeway() {
        let v = hs_verifier();
        let expired = with(claims(), json!({ "exp": now() - 120 }));
        assert_refused(&v, &hs(&expired), AuthError::Expired);
        let within = with(claims(), json!({ "exp": now() - 10 }));
        assert!(v.verify(&hs(&within)).is_ok());
        let mut strict = hs_config(&[Algorithm::HS256]);
        strict.leeway = 0;
        let strict = Verifier::new(&strict).unwrap();
        assert_refused(&strict, &hs(&within), AuthError::Expired);
        let float_exp = with(claims(), json!({ "exp": (now() + 300) as f64 + 0.25 }));
        assert_eq!(v.verify(&hs(&float_exp)).unwrap().expires_at, (now() + 300) as u64);
    }

    #[test]
    fn not_before() {
        let v = hs_verifier();
        let future = with(claims(), json!({ "nbf": now() + 120 }));
        assert_refused(&v, &hs(&future), AuthError::NotYetValid);
        let within = with(claims(), json!({ "nbf": now() + 10 }));
        assert!(v.verify(&hs(&within)).is_ok());
        let past = with(claims(), json!({ "nbf": now() - 10 }));
        assert!(v.verify(&hs(&past)).is_ok());
        let bad = with(claims(), json!({ "nbf": "soon" }));
        assert_refused(&v, &hs(&bad), AuthError::InvalidTimeClaim("nbf"));
    }

    #[test]
    fn exp_is_required() {
        let v = hs_verifier();
        assert_refused(&v, &hs(&without(claims(), "exp")), AuthError::MissingClaim("exp"));
        assert_eq!(v.verify(&hs(&without(claims(), "exp"))).unwrap_err().to_string(), "token has no exp claim");
        for bad in [json!("tomorrow"), json!(-5), json!(null), json!(1.5e300)] {
            let c = with(claims(), json!({ "exp": bad }));
            assert_refused(&v, &hs(&c), AuthError::MissingClaim("exp"));
        }
        // jsonwebtoken's claim parser cannot skip a non-scalar exp; still refused.
        let c = with(claims(), json!({ "exp": [now() + 300] }));
        assert_refused(&v, &hs(&c), AuthError::Malformed);
    }

    #[test]
    fn issuer_checked_when_configured() {
        let mut cfg = hs_config(&[Algorithm::HS256]);
        cfg.issuer = Some("https://issuer.example".to_owned());
        let v = Verifier::new(&cfg).unwrap();
        let good = with(claims(), json!({ "iss": "https://issuer.example" }));
        assert!(v.verify(&hs(&good)).is_ok());
        let wrong = with(claims(), json!({ "iss": "https://evil.example" }));
        assert_refused(&v, &hs(&wrong), AuthError::IssuerMismatch);
        assert_refused(&v, &hs(&claims()), AuthError::MissingClaim("iss"));
        // Without a configured issuer any iss is fine.
        assert!(hs_verifier().verify(&hs(&wrong)).is_ok());
    }

    #[test]
    fn audience_checked_when_configured() {
        let mut cfg = hs_config(&[Algorithm::HS256]);
        cfg.audience = Some("pgtenant".to_owned());
        let v = Verifier::new(&cfg).unwrap();
        for ok in [json!("pgtenant"), json!(["other", "pgtenant"])] {
            assert!(v.verify(&hs(&with(claims(), json!({ "aud": ok })))).is_ok());
        }
        for bad in [json!("other"), json!(["a", "b"]), json!([])] {
            let token = hs(&with(claims(), json!({ "aud": bad })));
            assert_refused(&v, &token, AuthError::AudienceMismatch);
        }
        assert_refused(&v, &hs(&claims()), AuthError::MissingClaim("aud"));
        // Without a configured audience, aud is ignored.
        assert!(hs_verifier().verify(&hs(&with(claims(), json!({ "aud": "x" })))).is_ok());
    }

    #[test]
    fn nested_and_namespaced_tenant_claims() {
        let mut cfg = hs_config(&[Algorithm::HS256]);
        cfg.tenant_claim = "org.tenant".to_owned();
        let v = Verifier::new(&cfg).unwrap();
        let nested = with(without(claims(), "tenant_id"), json!({ "org": { "tenant": TENANT } }));
        assert_eq!(v.verify(&hs(&nested)).unwrap().tenant.as_str(), TENANT);
        let flat = with(without(claims(), "tenant_id"), json!({ "org.tenant": TENANT }));
        assert!(v.verify(&hs(&flat)).is_ok());
        let not_obj = with(without(claims(), "tenant_id"), json!({ "org": "acme" }));
        assert_refused(&v, &hs(&not_obj), AuthError::MissingTenant("org.tenant".to_owned()));

        cfg.tenant_claim = "https://example.com/tenant".to_owned();
        let v = Verifier::new(&cfg).unwrap();
        let ns = with(without(claims(), "tenant_id"), json!({ "https://example.com/tenant": TENANT }));
        assert!(v.verify(&hs(&ns)).is_ok());
    }

    #[test]
    fn tenant_claim_problems() {
        let v = hs_verifier();
        let missing = hs(&without(claims(), "tenant_id"));
        assert_refused(&v, &missing, AuthError::MissingTenant("tenant_id".to_owned()));
        assert_eq!(v.verify(&missing).unwrap_err().to_string(), "token has no tenant claim \"tenant_id\"");
        for bad in [json!(42), json!(null), json!({ "id": TENANT }), json!([TENANT]), json!(true)] {
            let token = hs(&with(claims(), json!({ "tenant_id": bad })));
            assert_refused(&v, &token, AuthError::TenantNotString("tenant_id".to_owned()));
        }
        let invalid = AuthError::InvalidTenant { claim: "tenant_id".to_owned(), expected: "uuid" };
        for bad in ["", "acme", "{3f2a8c1e-9b4d-4e6f-a0b1-c2d3e4f5a6b7}", "3f2a8c1e9b4d4e6fa0b1c2d3e4f5a6b7"] {
            let token = hs(&with(claims(), json!({ "tenant_id": bad })));
            assert_refused(&v, &token, invalid.clone());
        }
        assert_eq!(invalid.to_string(), "tenant claim \"tenant_id\" is not a valid uuid");
        let upper = hs(&with(claims(), json!({ "tenant_id": TENANT.to_uppercase() })));
        assert_eq!(v.verify(&upper).unwrap().tenant.as_str(), TENANT);
    }

    #[test]
    fn text_tenants() {
        let mut cfg = hs_config(&[Algorithm::HS256]);
        cfg.tenant_format = TenantFormat::Text;
        let v = Verifier::new(&cfg).unwrap();
        let ok = hs(&with(claims(), json!({ "tenant_id": "acme-corp" })));
        assert_eq!(v.verify(&ok).unwrap().tenant.as_str(), "acme-corp");
        let invalid = AuthError::InvalidTenant { claim: "tenant_id".to_owned(), expected: "text tenant id" };
        for bad in ["acme'; drop table t; --", "a\\b", "a\0b", &"a".repeat(65)] {
            assert_refused(&v, &hs(&with(claims(), json!({ "tenant_id": bad }))), invalid.clone());
        }
    }

    #[test]
    fn alg_none_rejected() {
        let v = hs_verifier();
        let payload = claims().to_string();
        for alg in ["none", "None", "NONE"] {
            let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            assert_refused(&v, &raw_token(&header, &payload, ""), AuthError::AlgorithmNotAllowed("none"));
            let with_sig = raw_token(&header, &payload, "c2lnbmF0dXJl");
            assert_refused(&v, &with_sig, AuthError::AlgorithmNotAllowed("none"));
        }
    }

    #[test]
    fn alg_outside_allow_list_rejected() {
        let v = hs_verifier();
        let hs512 = sign(Algorithm::HS512, &EncodingKey::from_secret(SECRET), &claims());
        assert_refused(&v, &hs512, AuthError::AlgorithmNotAllowed("HS512"));
        assert_eq!(v.verify(&hs512).unwrap_err().to_string(), "token algorithm HS512 is not allowed");
        let payload = claims().to_string();
        let ps = raw_token(r#"{"alg":"PS256"}"#, &payload, "AAAA");
        assert_refused(&v, &ps, AuthError::AlgorithmNotAllowed("PS256"));
        let odd = raw_token(r#"{"alg":"HS256'; evil"}"#, &payload, "AAAA");
        assert_refused(&v, &odd, AuthError::AlgorithmNotAllowed("(unrecognized)"));
        for header in [r#"{"typ":"JWT"}"#, r#"{"alg":256}"#, r#"["HS256"]"#, "not json"] {
            assert_refused(&v, &raw_token(header, &payload, "AAAA"), AuthError::Malformed);
        }
        let crit = raw_token(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#, &payload, "AAAA");
        assert_refused(&v, &crit, AuthError::UnsupportedCritical);
    }

    #[test]
    fn hs_rs_key_confusion_rejected() {
        let (cfg, _g) = pem_config(RSA_PUB, &[Algorithm::RS256]);
        let v = Verifier::new(&cfg).unwrap();
        // The classic attack: HMAC-sign with the (public) RSA key bytes as secret.
        let forged = sign(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUB.as_bytes()), &claims());
        assert_refused(&v, &forged, AuthError::AlgorithmNotAllowed("HS256"));
        // And an RS256 header on an HMAC signature does not verify either.
        let hmac = forged.split('.').nth(2).unwrap();
        let relabelled = raw_token(r#"{"alg":"RS256","typ":"JWT"}"#, &claims().to_string(), hmac);
        assert_refused(&v, &relabelled, AuthError::InvalidSignature);
    }

    /// Signs `claims` plus a `pad` claim sized so the token lands just under `target` bytes.
    fn padded_token(target: usize) -> String {
        let base = hs(&with(claims(), json!({ "pad": "" }))).len();
        let pad = (target - base) * 3 / 4 - 2;
        let token = hs(&with(claims(), json!({ "pad": "x".repeat(pad) })));
        assert!(token.len() <= target && token.len() + 8 > target, "{} vs {target}", token.len());
        token
    }

    #[test]
    fn size_limit() {
        let v = hs_verifier();
        assert!(v.verify(&padded_token(12 * 1024)).is_ok());
        assert!(v.verify(&padded_token(MAX_TOKEN_LEN)).is_ok());
        let big = padded_token(17 * 1024);
        assert_refused(&v, &big, AuthError::TooLarge);
        assert_eq!(v.verify(&big).unwrap_err().to_string(), "token is too large");
    }

    #[test]
    fn surrounding_whitespace_tolerated() {
        let token = hs(&claims());
        assert!(hs_verifier().verify(&format!("{token}\n")).is_ok());
        assert!(hs_verifier().verify(&format!(" {token}\r\n")).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        let v = hs_verifier();
        let valid = hs(&claims());
        let header = valid.split('.').next().unwrap().to_owned();
        let fixed = [
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            "a.b.c".into(),
            "a.b.c.d.e".into(),
            "\0\0\0".into(),
            "ünïcödé.☃.💥".into(),
            format!("{header}.."),
            format!("{header}.!!!.###"),
            format!("{header}.{}.", b64("[1,2,3]")),
            format!("{header}.{}.AAAA", b64("null")),
            format!("{header}.{}.AAAA", b64(&"[".repeat(5000))),
            format!("{header}.{}.AAAA", b64(r#"{"exp":1e400}"#)),
            format!("{header}.{}.AAAA", b64(r#"{"exp":18446744073709551615,"nbf":-1}"#)),
            raw_token(&"{".repeat(10_000), "{}", ""),
            valid.replace('.', ""),
            valid.chars().rev().collect(),
        ];
        for token in &fixed {
            let _ = v.verify(token);
        }
        // Deterministic xorshift fuzzing over the JWT alphabet and a mutated valid token.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \"{}";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let len = (next() % 300) as usize;
            let s: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char).collect();
            let _ = v.verify(&s);
            let _ = v.verify(&format!("{header}.{s}"));
            let mut bytes = valid.clone().into_bytes();
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = alphabet[(next() % alphabet.len() as u64) as usize];
            let mutated = String::from_utf8(bytes).unwrap();
            if mutated != valid {
                assert!(v.verify(&mutated).is_err() || mutated.trim_ascii() == valid);
            }
        }
    }

    #[test]
    fn mint_round_trip() {
        let mut cfg = hs_config(&[Algorithm::HS256]);
        cfg.tenant_claim = "org.tenant".to_owned();
        cfg.issuer = Some("pgtenant-cli".to_owned());
        cfg.audience = Some("pgtenant".to_owned());
        let v = Verifier::new(&cfg).unwrap();
        let mut mint = MintClaims {
            tenant_claim: "org.tenant".to_owned(),
            tenant: TENANT.to_owned(),
            ttl_seconds: 600,
            subject: Some("alice".to_owned()),
            issuer: Some("pgtenant-cli".to_owned()),
            audience: Some("pgtenant".to_owned()),
        };
        let ok = v.verify(&mint_hs256(SECRET, &mint)).unwrap();
        assert_eq!(ok.tenant.as_str(), TENANT);
        assert_eq!(ok.subject.as_deref(), Some("alice"));
        assert!(ok.expires_at >= unix_now() + 590);
        mint.ttl_seconds = -3600;
        assert_refused(&v, &mint_hs256(SECRET, &mint), AuthError::Expired);
        mint.ttl_seconds = i64::MIN;
        assert_refused(&v, &mint_hs256(SECRET, &mint), AuthError::Expired);
        mint.ttl_seconds = i64::MAX;
        assert!(v.verify(&mint_hs256(SECRET, &mint)).is_ok());
    }

    // -----------------------------------------------------------------------------------------
    // JWKS
    // -----------------------------------------------------------------------------------------

    const ALL_ASYMMETRIC: &[Algorithm] = {
        use Algorithm::*;
        &[RS256, RS384, ES256, ES384, EdDSA]
    };

    /// A verifier over a JWKS file holding `keys`; the guard keeps the file alive.
    fn jwks_verifier(keys: Vec<Value>, algorithms: &[Algorithm]) -> (Verifier, tempfile::NamedTempFile) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), json!({ "keys": keys }).to_string()).unwrap();
        let jwks = JwksConfig {
            location: JwksLocation::File(file.path().to_owned()),
            refresh: std::time::Duration::from_secs(300),
            min_refresh: std::time::Duration::from_secs(1),
        };
        (Verifier::new(&config(algorithms, KeySource::Jwks(jwks))).unwrap(), file)
    }

    fn private_key(alg: Algorithm) -> EncodingKey {
        match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(EC256_KEY.as_bytes()),
            Algorithm::ES384 => EncodingKey::from_ec_pem(EC384_KEY.as_bytes()),
            _ => EncodingKey::from_ed_pem(ED_KEY.as_bytes()),
        }
        .unwrap()
    }

    /// Signs `claims` with the test key for `alg`, naming `kid` in the header.
    fn sign_kid(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &private_key(alg)).unwrap()
    }

    fn all_key_types() -> Vec<Value> {
        vec![
            public_jwk(Algorithm::RS256, "rsa-1"),
            public_jwk(Algorithm::ES256, "ec256-1"),
            public_jwk(Algorithm::ES384, "ec384-1"),
            public_jwk(Algorithm::EdDSA, "ed-1"),
        ]
    }

    #[test]
    fn jwks_keys_of_every_type_verify_by_kid() {
        let (v, _g) = jwks_verifier(all_key_types(), ALL_ASYMMETRIC);
        assert_eq!(v.keys_ready(), Ok(()));
        for (alg, kid) in [
            (Algorithm::RS256, "rsa-1"),
            (Algorithm::RS384, "rsa-1"),
            (Algorithm::ES256, "ec256-1"),
            (Algorithm::ES384, "ec384-1"),
            (Algorithm::EdDSA, "ed-1"),
        ] {
            let ok = v.verify(&sign_kid(alg, Some(kid), &claims())).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(ok.tenant.as_str(), TENANT);
            // The right key type under another kid is still the wrong key.
            let other = if kid == "rsa-1" { "ec256-1" } else { "rsa-1" };
            assert_refused(&v, &sign_kid(alg, Some(other), &claims()), AuthError::KeyAlgorithmMismatch);
        }
        // Tampering is still caught.
        let good = sign_kid(Algorithm::ES256, Some("ec256-1"), &claims());
        let other = sign_kid(Algorithm::ES256, Some("ec256-1"), &with(claims(), json!({ "sub": "mallory" })));
        let spliced = format!("{}.{}", other.rsplit_once('.').unwrap().0, good.rsplit_once('.').unwrap().1);
        assert_refused(&v, &spliced, AuthError::InvalidSignature);
    }

    #[test]
    fn jwks_requires_a_kid() {
        let (v, _g) = jwks_verifier(all_key_types(), ALL_ASYMMETRIC);
        let token = sign_kid(Algorithm::RS256, None, &claims());
        assert_refused(&v, &token, AuthError::MissingKid);
        assert!(v.verify(&token).unwrap_err().to_string().contains("token has no kid"));
        assert_refused(&v, &sign_kid(Algorithm::RS256, Some("nope"), &claims()), AuthError::UnknownKid);
        let numeric_kid = raw_token(r#"{"alg":"RS256","kid":7}"#, &claims().to_string(), "AAAA");
        assert_refused(&v, &numeric_kid, AuthError::Malformed);
        // A single PEM key ignores kid, as before.
        let (cfg, _p) = pem_config(RSA_PUB, &[Algorithm::RS256]);
        assert!(Verifier::new(&cfg).unwrap().verify(&sign_kid(Algorithm::RS256, None, &claims())).is_ok());
    }

    #[test]
    fn jwks_oct_keys_never_verify() {
        let secret = URL_SAFE_NO_PAD.encode(SECRET);
        let oct = json!({ "kty": "oct", "kid": "hmac", "k": secret, "alg": "HS256" });
        let (v, _g) = jwks_verifier(vec![oct.clone(), public_jwk(Algorithm::RS256, "rsa-1")], &[Algorithm::RS256]);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("hmac".to_owned());
        let hs = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(SECRET)).unwrap();
        assert_refused(&v, &hs, AuthError::AlgorithmNotAllowed("HS256"));
        // Relabelled as RS256 with kid "hmac": the oct key was never loaded.
        let relabelled = raw_token(r#"{"alg":"RS256","kid":"hmac"}"#, &claims().to_string(), "AAAA");
        assert_refused(&v, &relabelled, AuthError::UnknownKid);
        // A set of only oct keys cannot be loaded at all.
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), json!({ "keys": [oct] }).to_string()).unwrap();
        let jwks = JwksConfig {
            location: JwksLocation::File(file.path().to_owned()),
            refresh: std::time::Duration::from_secs(300),
            min_refresh: std::time::Duration::from_secs(30),
        };
        let err = Verifier::new(&config(&[Algorithm::RS256], KeySource::Jwks(jwks.clone()))).unwrap_err();
        assert!(err.to_string().contains("no usable signing key") && err.to_string().contains("oct"), "{err}");
        // And HS algorithms with a JWKS are refused outright.
        let err = Verifier::new(&config(&[Algorithm::HS256], KeySource::Jwks(jwks))).unwrap_err();
        assert!(matches!(err, KeyError::HmacWithJwks("HS256")), "{err}");
    }

    #[test]
    fn jwks_alg_member_must_equal_the_token_alg() {
        let pinned = with(public_jwk(Algorithm::RS256, "rsa-384"), json!({ "alg": "RS384" }));
        let (v, _g) = jwks_verifier(vec![pinned], &[Algorithm::RS256, Algorithm::RS384]);
        assert!(v.verify(&sign_kid(Algorithm::RS384, Some("rsa-384"), &claims())).is_ok());
        let rs256 = sign_kid(Algorithm::RS256, Some("rsa-384"), &claims());
        assert_refused(&v, &rs256, AuthError::KeyAlgorithmMismatch);
        assert_eq!(v.verify(&rs256).unwrap_err().to_string(), "token algorithm does not match its signing key");
    }

    #[test]
    fn jwks_hs_rs_confusion_and_alg_none_rejected() {
        let (v, _g) = jwks_verifier(vec![public_jwk(Algorithm::RS256, "rsa-1")], &[Algorithm::RS256]);
        // HMAC-signed with the RSA public key (PEM, and the JWK's n) as the secret.
        let n = public_jwk(Algorithm::RS256, "x")["n"].as_str().unwrap().to_owned();
        for secret in [RSA_PUB.as_bytes(), n.as_bytes()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("rsa-1".to_owned());
            let forged = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap();
            assert_refused(&v, &forged, AuthError::AlgorithmNotAllowed("HS256"));
            let hmac = forged.rsplit_once('.').unwrap().1;
            let relabelled = raw_token(r#"{"alg":"RS256","kid":"rsa-1"}"#, &claims().to_string(), hmac);
            assert_refused(&v, &relabelled, AuthError::InvalidSignature);
        }
        for alg in ["none", "None"] {
            let header = format!(r#"{{"alg":"{alg}","kid":"rsa-1"}}"#);
            assert_refused(&v, &raw_token(&header, &claims().to_string(), ""), AuthError::AlgorithmNotAllowed("none"));
        }
    }

    #[tokio::test]
    async fn jwks_unknown_kid_refreshes_once_then_verifies() {
        let (v, file) = jwks_verifier(vec![public_jwk(Algorithm::RS256, "old")], &[Algorithm::RS256, Algorithm::ES256]);
        let old = sign_kid(Algorithm::RS256, Some("old"), &claims());
        let new = sign_kid(Algorithm::ES256, Some("new"), &claims());
        assert!(v.verify_with_refresh(&old).await.is_ok());
        let rotated = json!({ "keys": [public_jwk(Algorithm::RS256, "old"), public_jwk(Algorithm::ES256, "new")] });
        std::fs::write(file.path(), rotated.to_string()).unwrap();
        // Within auth.jwks_min_refresh_seconds of the startup load: not refetched yet.
        assert_refused(&v, &new, AuthError::UnknownKid);
        assert_eq!(v.verify_with_refresh(&new).await.unwrap_err(), AuthError::UnknownKid);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        assert_eq!(v.verify_with_refresh(&new).await.unwrap().tenant.as_str(), TENANT);
        assert!(v.verify(&new).is_ok(), "the refreshed set is kept");
        // Errors other than an unknown kid never trigger a refresh.
        assert_eq!(
            v.verify_with_refresh(&sign_kid(Algorithm::ES256, None, &claims())).await,
            Err(AuthError::MissingKid)
        );
    }

    #[test]
    fn verifier_is_shareable_and_debug_is_safe() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
        let shown = format!("{:?}", hs_verifier());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("HS256"));
    }
}
