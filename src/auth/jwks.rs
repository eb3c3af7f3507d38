//! JSON Web Key Sets (RFC 7517): turning a JWKS document into verification keys by `kid`.
//!
//! Only public signature keys that can verify one of the configured
//! algorithms are kept. Everything else is skipped with a reason rather than
//! failing the whole set, because identity providers publish encryption keys
//! and keys for other consumers alongside the ones we need; a set with no
//! usable key at all is an error. Symmetric (`oct`) keys are always skipped:
//! a shared secret fetched from a URL would let anyone who can read that URL
//! mint tokens.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::auth::jwt::{alg_name, KeyKind};

/// Smallest RSA modulus accepted, in bits (smaller keys are considered breakable).
const MIN_RSA_BITS: usize = 2048;
/// Members that only private JWKs carry (RFC 7518 §6.2.2, §6.3.2, §6.4).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// One usable verification key from a JWKS.
pub struct Jwk {
    key: DecodingKey,
    kind: KeyKind,
    alg: Option<Algorithm>,
}

/// The usable keys of one JWKS document, by `kid`.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, Jwk>,
}

/// A parsed JWKS: the usable keys, and one line per skipped key saying why.
#[derive(Debug)]
pub struct Parsed {
    /// The usable keys.
    pub set: KeySet,
    /// `key N (kid "x") skipped: reason`, for the log.
    pub skipped: Vec<String>,
}

/// Why a whole JWKS document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not JSON at all.
    #[error("is not valid JSON ({0})")]
    Json(String),
    /// JSON, but no `keys` array.
    #[error("is not a JWKS (a JSON object with a \"keys\" array)")]
    NotJwks,
    /// Every key was skipped.
    #[error("has no usable signing key for {algorithms}{reasons}")]
    NoUsableKey {
        /// The allow-list, for the message.
        algorithms: String,
        /// `: key 0 ...; key 1 ...` or empty for an empty set.
        reasons: String,
    },
}

/// Why one key of a set was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// Not a JSON object.
    #[error("it is not a JSON object")]
    NotObject,
    /// No string `kid`: tokens pick their key by kid, so it could never be selected.
    #[error("it has no kid")]
    NoKid,
    /// An earlier usable key has the same kid; the first one wins.
    #[error("its kid is already used by an earlier key")]
    DuplicateKid,
    /// `use` is present and is not `sig`.
    #[error("its use is {0}, not \"sig\"")]
    NotForSigning(String),
    /// `key_ops` is present and does not allow `verify`.
    #[error("its key_ops do not include \"verify\"")]
    NoVerifyOp,
    /// `kty: oct`.
    #[error("it is a symmetric (oct) key; shared secrets are never taken from a JWKS")]
    Symmetric,
    /// Private members such as `d` are present.
    #[error("it contains private key material; a JWKS must hold public keys only")]
    Private,
    /// A `kty` other than RSA, EC and OKP.
    #[error("key type {0} is not supported")]
    UnsupportedType(String),
    /// An EC or OKP curve other than P-256, P-384 and Ed25519.
    #[error("curve {0} is not supported")]
    UnsupportedCurve(String),
    /// An `alg` this proxy does not know.
    #[error("its alg {0} is not supported")]
    UnsupportedAlg(String),
    /// An `alg` the key type cannot verify (e.g. ES256 on an RSA key).
    #[error("its alg {alg} does not fit a {key} key")]
    AlgDoesNotFit {
        /// The JWK's alg.
        alg: &'static str,
        /// The key type.
        key: &'static str,
    },
    /// An `alg` outside `auth.algorithms`.
    #[error("its alg {0} is not in auth.algorithms")]
    AlgNotAllowed(&'static str),
    /// The key type verifies none of `auth.algorithms`.
    #[error("a {0} key verifies none of auth.algorithms")]
    NoAllowedAlg(&'static str),
    /// A required member is missing, not base64url, or has the wrong length.
    #[error("its {0} member is missing or invalid")]
    BadMember(&'static str),
    /// An RSA modulus below [`MIN_RSA_BITS`].
    #[error("its RSA modulus has {0} bits; at least 2048 are required")]
    WeakRsa(usize),
}

impl Jwk {
    /// The key material to verify signatures with.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// Whether this key may verify a token signed with `alg`: the key type must
    /// fit, and the JWK's own `alg`, when present, must be exactly `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.verifies(alg) && self.alg.is_none_or(|own| own == alg)
    }
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk").field("kind", &self.kind.name()).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys that can verify at least one of `allowed`.
    pub fn parse(bytes: &[u8], allowed: &[Algorithm]) -> Result<Parsed, JwksError> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| JwksError::Json(e.to_string()))?;
        let entries = doc.get("keys").and_then(Value::as_array).ok_or(JwksError::NotJwks)?;
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let kid = entry.get("kid").and_then(Value::as_str);
            let parsed = match kid {
                None => Err(Skip::NoKid),
                Some(kid) if set.keys.contains_key(kid) => Err(Skip::DuplicateKid),
                Some(_) => parse_key(entry, allowed),
            };
            match (parsed, kid) {
                (Ok(jwk), Some(kid)) => {
                    set.keys.insert(kid.to_owned(), jwk);
                }
                (Ok(_), None) => unreachable!("a key without kid is skipped above"),
                (Err(skip), kid) => skipped.push(skip_line(index, kid, &skip)),
            }
        }
        if set.keys.is_empty() {
            let algorithms = allowed.iter().map(|a| alg_name(*a)).collect::<Vec<_>>().join(", ");
            let reasons = match skipped.is_empty() {
                true => " (the set is empty)".to_owned(),
                false => format!(": {}", skipped.join("; ")),
            };
            return Err(JwksError::NoUsableKey { algorithms, reasons });
        }
        Ok(Parsed { set, skipped })
    }

    /// The key with this `kid`, if the set has a usable one.
    pub fn get(&self, kid: &str) -> Option<&Jwk> {
        self.keys.get(kid)
    }

    /// The kids of all usable keys, sorted (for logs).
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// How many usable keys the set has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no usable key (a parsed set never is).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet").field("kids", &self.kids()).finish()
    }
}

/// `key 2 (kid "abc") skipped: reason`. The kid comes from the key set, not a
/// token, but is still quoted and cut short so a hostile set cannot flood the log.
fn skip_line(index: usize, kid: Option<&str>, skip: &Skip) -> String {
    match kid {
        Some(kid) => format!("key {index} (kid {:?}) skipped: {skip}", kid.chars().take(64).collect::<String>()),
        None => format!("key {index} skipped: {skip}"),
    }
}

/// One JWK, checked and converted; `Err` says why it is not usable.
fn parse_key(entry: &Value, allowed: &[Algorithm]) -> Result<Jwk, Skip> {
    let obj = entry.as_object().ok_or(Skip::NotObject)?;
    check_purpose(obj)?;
    let kty = obj.get("kty").and_then(Value::as_str).ok_or(Skip::BadMember("kty"))?;
    if kty == "oct" {
        return Err(Skip::Symmetric);
    }
    if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
        return Err(Skip::Private);
    }
    let (key, kind) = match kty {
        "RSA" => rsa_key(obj)?,
        "EC" => ec_key(obj)?,
        "OKP" => okp_key(obj)?,
        other => return Err(Skip::UnsupportedType(quoted(other))),
    };
    let alg = declared_alg(obj, kind, allowed)?;
    if !allowed.iter().any(|a| kind.verifies(*a)) {
        return Err(Skip::NoAllowedAlg(kind.name()));
    }
    Ok(Jwk { key, kind, alg })
}

/// `use` must be `sig` and `key_ops` must include `verify`, when present.
fn check_purpose(obj: &Map<String, Value>) -> Result<(), Skip> {
    match obj.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(Value::String(other)) => return Err(Skip::NotForSigning(quoted(other))),
        Some(other) => return Err(Skip::NotForSigning(quoted(&other.to_string()))),
    }
    match obj.get("key_ops") {
        None => Ok(()),
        Some(Value::Array(ops)) if ops.iter().any(|op| op == "verify") => Ok(()),
        Some(_) => Err(Skip::NoVerifyOp),
    }
}

/// The JWK's `alg`, if any: known, fitting the key type, and allowed.
fn declared_alg(obj: &Map<String, Value>, kind: KeyKind, allowed: &[Algorithm]) -> Result<Option<Algorithm>, Skip> {
    let Some(value) = obj.get("alg") else {
        return Ok(None);
    };
    let name = value.as_str().ok_or(Skip::BadMember("alg"))?;
    let alg = Algorithm::from_str(name).map_err(|_| Skip::UnsupportedAlg(quoted(name)))?;
    if !kind.verifies(alg) {
        return Err(Skip::AlgDoesNotFit { alg: alg_name(alg), key: kind.name() });
    }
    if !allowed.contains(&alg) {
        return Err(Skip::AlgNotAllowed(alg_name(alg)));
    }
    Ok(Some(alg))
}

fn rsa_key(obj: &Map<String, Value>) -> Result<(DecodingKey, KeyKind), Skip> {
    let n = member(obj, "n")?;
    let e = member(obj, "e")?;
    let bits = significant_bits(&n);
    if bits < MIN_RSA_BITS {
        return Err(Skip::WeakRsa(bits));
    }
    if significant_bits(&e) == 0 {
        return Err(Skip::BadMember("e"));
    }
    Ok((DecodingKey::from_rsa_raw_components(&n, &e), KeyKind::Rsa))
}

fn ec_key(obj: &Map<String, Value>) -> Result<(DecodingKey, KeyKind), Skip> {
    let (kind, size) = match curve(obj)? {
        "P-256" => (KeyKind::EcP256, 32),
        "P-384" => (KeyKind::EcP384, 48),
        other => return Err(Skip::UnsupportedCurve(quoted(other))),
    };
    let (x, y) = (exact_member(obj, "x", size)?, exact_member(obj, "y", size)?);
    let key = DecodingKey::from_ec_components(x, y).map_err(|_| Skip::BadMember("x"))?;
    Ok((key, kind))
}

fn okp_key(obj: &Map<String, Value>) -> Result<(DecodingKey, KeyKind), Skip> {
    match curve(obj)? {
        "Ed25519" => {}
        other => return Err(Skip::UnsupportedCurve(quoted(other))),
    }
    let x = exact_member(obj, "x", 32)?;
    let key = DecodingKey::from_ed_components(x).map_err(|_| Skip::BadMember("x"))?;
    Ok((key, KeyKind::Ed25519))
}

fn curve(obj: &Map<String, Value>) -> Result<&str, Skip> {
    obj.get("crv").and_then(Value::as_str).ok_or(Skip::BadMember("crv"))
}

/// A base64url (unpadded) member, decoded.
fn member(obj: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, Skip> {
    let text = obj.get(name).and_then(Value::as_str).ok_or(Skip::BadMember(name))?;
    URL_SAFE_NO_PAD.decode(text).map_err(|_| Skip::BadMember(name))
}

/// A base64url member that must decode to exactly `len` bytes (a curve coordinate); returns the text.
fn exact_member<'a>(obj: &'a Map<String, Value>, name: &'static str, len: usize) -> Result<&'a str, Skip> {
    match member(obj, name)?.len() == len {
        true => Ok(obj.get(name).and_then(Value::as_str).unwrap_or_default()),
        false => Err(Skip::BadMember(name)),
    }
}

/// Bit length of a big-endian unsigned integer, ignoring leading zeros.
fn significant_bits(bytes: &[u8]) -> usize {
    match bytes.iter().position(|b| *b != 0) {
        Some(i) => (bytes.len() - i) * 8 - bytes[i].leading_zeros() as usize,
        None => 0,
    }
}

/// A value from the set, quoted and cut short for messages.
fn quoted(text: &str) -> String {
    format!("{:?}", text.chars().take(40).collect::<String>())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::jwk::Jwk as LibJwk;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    const RSA_KEY: &str = include_str!("../../tests/keys/rsa.key.pem");
    const EC256_KEY: &str = include_str!("../../tests/keys/ec256.key.pem");
    const EC384_KEY: &str = include_str!("../../tests/keys/ec384.key.pem");
    const ED_KEY: &str = include_str!("../../tests/keys/ed25519.key.pem");
    const ASYMMETRIC: &[Algorithm] = {
        use Algorithm::*;
        &[RS256, ES256, ES384, EdDSA]
    };

    /// The public JWK of a test key, with `kid` and without `alg`, as JSON.
    pub(crate) fn public_jwk(alg: Algorithm, kid: &str) -> Value {
        let key = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(EC256_KEY.as_bytes()),
            Algorithm::ES384 => EncodingKey::from_ec_pem(EC384_KEY.as_bytes()),
            _ => EncodingKey::from_ed_pem(ED_KEY.as_bytes()),
        }
        .unwrap();
        let mut jwk = serde_json::to_value(LibJwk::from_encoding_key(&key, alg).unwrap()).unwrap();
        let obj = jwk.as_object_mut().unwrap();
        obj.remove("alg");
        obj.insert("kid".into(), json!(kid));
        jwk
    }

    fn with(mut jwk: Value, extra: Value) -> Value {
        for (k, v) in extra.as_object().unwrap() {
            match v {
                Value::Null => jwk.as_object_mut().unwrap().remove(k),
                v => jwk.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        jwk
    }

    fn parse(keys: Vec<Value>, allowed: &[Algorithm]) -> Result<Parsed, JwksError> {
        KeySet::parse(json!({ "keys": keys }).to_string().as_bytes(), allowed)
    }

    /// Parses a set of `good` plus `candidate`; returns why the candidate was skipped.
    fn skip_reason(candidate: Value, allowed: &[Algorithm]) -> Option<String> {
        let parsed = parse(vec![public_jwk(Algorithm::RS256, "good"), candidate], allowed).unwrap();
        assert!(parsed.set.get("good").is_some());
        parsed.skipped.into_iter().next()
    }

    #[test]
    fn every_supported_key_type_loads() {
        let keys = vec![
            public_jwk(Algorithm::RS256, "rsa"),
            public_jwk(Algorithm::ES256, "p256"),
            public_jwk(Algorithm::ES384, "p384"),
            public_jwk(Algorithm::EdDSA, "ed"),
        ];
        let parsed = parse(keys, ASYMMETRIC).unwrap();
        assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
        assert_eq!(parsed.set.kids(), vec!["ed", "p256", "p384", "rsa"]);
        let accepts = |kid: &str, alg| parsed.set.get(kid).unwrap().accepts(alg);
        assert!(accepts("rsa", Algorithm::RS256) && accepts("rsa", Algorithm::RS512));
        assert!(accepts("p256", Algorithm::ES256) && !accepts("p256", Algorithm::ES384));
        assert!(accepts("p384", Algorithm::ES384) && !accepts("p384", Algorithm::ES256));
        assert!(accepts("ed", Algorithm::EdDSA) && !accepts("ed", Algorithm::RS256));
        assert!(!accepts("rsa", Algorithm::HS256) && !accepts("rsa", Algorithm::ES256));
    }

    #[test]
    fn jwk_alg_pins_the_algorithm() {
        let allowed = &[Algorithm::RS256, Algorithm::RS384];
        let jwk = with(public_jwk(Algorithm::RS256, "pinned"), json!({ "alg": "RS384" }));
        let parsed = parse(vec![jwk], allowed).unwrap();
        let key = parsed.set.get("pinned").unwrap();
        assert!(key.accepts(Algorithm::RS384));
        assert!(!key.accepts(Algorithm::RS256), "a JWK alg must equal the token's alg");
    }

    #[test]
    fn symmetric_keys_are_skipped_and_alone_are_an_error() {
        let oct = json!({ "kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "alg": "HS256" });
        let reason = skip_reason(oct.clone(), ASYMMETRIC).unwrap();
        assert!(reason.contains("kid \"hmac\"") && reason.contains("symmetric (oct)"), "{reason}");
        let err = parse(vec![oct], ASYMMETRIC).unwrap_err();
        assert!(matches!(err, JwksError::NoUsableKey { .. }), "{err}");
        assert!(err.to_string().contains("symmetric (oct)"), "{err}");
        // Even with HS algorithms allowed (which config forbids with a JWKS), oct never loads.
        let oct = json!({ "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" });
        assert!(parse(vec![oct], &[Algorithm::HS256]).is_err());
    }

    #[test]
    fn unusable_keys_are_skipped_with_a_reason() {
        let rsa = || public_jwk(Algorithm::RS256, "k");
        let cases = [
            (with(rsa(), json!({ "kid": null })), "has no kid"),
            (with(rsa(), json!({ "kid": 7 })), "has no kid"),
            (with(rsa(), json!({ "kid": "good" })), "already used"),
            (with(rsa(), json!({ "use": "enc" })), "its use is \"enc\""),
            (with(rsa(), json!({ "key_ops": ["encrypt"] })), "key_ops"),
            (with(rsa(), json!({ "d": "AAAA" })), "private key material"),
            (with(rsa(), json!({ "alg": "ES256" })), "does not fit a RSA key"),
            (with(rsa(), json!({ "alg": "RS512" })), "its alg RS512 is not in auth.algorithms"),
            (with(rsa(), json!({ "alg": "PS256" })), "does not fit a RSA key"),
            (with(rsa(), json!({ "alg": "none" })), "not supported"),
            (with(rsa(), json!({ "alg": "RSA-OAEP" })), "not supported"),
            (with(rsa(), json!({ "n": "AQAB" })), "has 17 bits"),
            (with(rsa(), json!({ "n": "!!!" })), "n member"),
            (with(rsa(), json!({ "e": null })), "e member"),
            (with(rsa(), json!({ "kty": "RSA-X" })), "key type \"RSA-X\""),
            (with(public_jwk(Algorithm::ES256, "k"), json!({ "crv": "P-521" })), "curve \"P-521\""),
            (with(public_jwk(Algorithm::ES256, "k"), json!({ "x": "AAAA" })), "x member"),
            (with(public_jwk(Algorithm::EdDSA, "k"), json!({ "crv": "X25519" })), "curve \"X25519\""),
            (json!("not an object"), "has no kid"),
        ];
        for (jwk, needle) in cases {
            let reason = skip_reason(jwk.clone(), ASYMMETRIC).unwrap_or_else(|| panic!("{jwk} was not skipped"));
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
        }
        // A key whose type verifies none of the allowed algorithms.
        let reason = skip_reason(public_jwk(Algorithm::ES256, "ec"), &[Algorithm::RS256]).unwrap();
        assert!(reason.contains("EC P-256 key verifies none of auth.algorithms"), "{reason}");
        // use "sig" and key_ops with verify are fine.
        let fine = with(rsa(), json!({ "use": "sig", "key_ops": ["verify"] }));
        assert_eq!(skip_reason(fine, ASYMMETRIC), None);
    }

    #[test]
    fn documents_that_are_not_key_sets() {
        assert!(matches!(KeySet::parse(b"not json", ASYMMETRIC), Err(JwksError::Json(_))));
        for doc in [json!([]), json!({}), json!({ "keys": {} }), json!({ "keys": "x" })] {
            let err = KeySet::parse(doc.to_string().as_bytes(), ASYMMETRIC).unwrap_err();
            assert_eq!(err, JwksError::NotJwks, "{doc}");
        }
        let err = KeySet::parse(br#"{"keys":[]}"#, ASYMMETRIC).unwrap_err();
        assert_eq!(err.to_string(), "has no usable signing key for RS256, ES256, ES384, EdDSA (the set is empty)");
    }

    #[test]
    fn bits_count_ignores_leading_zeros() {
        assert_eq!(significant_bits(&[]), 0);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[1]), 1);
        assert_eq!(significant_bits(&[0, 0x80, 0]), 16);
        assert_eq!(significant_bits(&[0x01, 0, 0]), 17);
    }
}
