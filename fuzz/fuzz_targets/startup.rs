//! Fuzzes the login path: startup packets (`wire::startup::parse`: StartupMessage,
//! SSLRequest, GSSENCRequest, CancelRequest), the startup settings
//! (`session::params::from_startup`), PasswordMessage bodies (`wire::startup::password`),
//! the JWT verifier (`auth::jwt::Verifier::verify`, HS256 configs built here) and tenant
//! ids (`auth::tenant::TenantId::parse`).
//!
//! Byte 0 of the input selects a mode (low 2 bits), the rest is its input:
//! - 0: a startup packet; parsed, its settings extracted; a StartupMessage without
//!   protocol options re-encodes to the same bytes;
//! - 1: a PasswordMessage body; an accepted password fills the body and goes to the verifier;
//! - 2: a token (or tenant id) string, given to both verifiers and to both tenant formats;
//! - 3: structured: `arbitrary` builds a near-valid token (base64url segments of JSON with
//!   fuzzed algorithms, claims, times and signatures) and the result is checked against an
//!   oracle: a token that is correctly signed with HS256, unexpired, with the right issuer,
//!   audience and a valid uuid tenant must verify to exactly that tenant; a token with any
//!   decisive defect (wrong signature, other algorithm, `crit`, expired, missing `exp`,
//!   wrong/missing issuer or audience, bad tenant) must be refused.
//!
//! Always: never panics; a verified tenant re-parses to itself and holds only
//! `[A-Za-z0-9_.:@-]`; a token over the size limit is `TooLarge`.
#![no_main]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use pgtenant::auth::jwt::{AuthError, Verifier, MAX_TOKEN_LEN};
use pgtenant::auth::tenant::{TenantFormat, TenantId};
use pgtenant::config::{AuthConfig, KeySource};
use pgtenant::session::params;
use pgtenant::wire::startup::{self, StartupPacket};
use serde_json::{json, Map, Value};

/// The seeds in fuzz/corpus/startup are signed with this secret.
const SECRET: &[u8] = b"pgtenant-fuzz-secret-0123456789abcdef";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "pgtenant";
const LEEWAY: u64 = 30;

/// Verifier A: HS256 only, uuid tenants in `tenant_id`, issuer and audience required.
fn strict() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::new(&AuthConfig {
            algorithms: vec![Algorithm::HS256],
            key: KeySource::HsSecret(SECRET.to_vec()),
            tenant_claim: "tenant_id".into(),
            tenant_format: TenantFormat::Uuid,
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            leeway: LEEWAY,
        })
        .expect("strict verifier")
    })
}

/// Verifier B: all HS algorithms, text tenants at the dotted path `org.tenant`, no issuer/audience.
fn loose() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::new(&AuthConfig {
            algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            key: KeySource::HsSecret(SECRET.to_vec()),
            tenant_claim: "org.tenant".into(),
            tenant_format: TenantFormat::Text,
            issuer: None,
            audience: None,
            leeway: 0,
        })
        .expect("loose verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode & 3 {
        0 => startup_packet(rest),
        1 => {
            if let Ok(password) = startup::password(rest) {
                assert_eq!(password.len() + 1, rest.len());
                assert!(!password.as_bytes().contains(&0));
                verify_both(password);
            }
        }
        2 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                verify_both(s);
                tenant(s);
            }
        }
        _ => {
            if let Ok(case) = Case::arbitrary_take_rest(Unstructured::new(rest)) {
                structured(&case);
            }
        }
    }
});

fn startup_packet(bytes: &[u8]) {
    let Ok(Some((packet, used))) = startup::parse(bytes) else { return };
    assert_eq!(used, u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize);
    if let StartupPacket::Startup(s) = packet {
        if let Ok(settings) = params::from_startup(&s.params) {
            for name in settings.keys() {
                assert!(params::valid_name(name) && *name == name.to_ascii_lowercase(), "{name:?}");
            }
        }
        for (name, value) in &s.params {
            assert!(s.get(name).is_some());
            let _ = pgtenant::sql::inspect::is_unsafe_encoding(value.as_bytes());
        }
        if s.protocol_options.is_empty() {
            let mut body = (3u32 << 16 | u32::from(s.minor)).to_be_bytes().to_vec();
            for (name, value) in &s.params {
                for part in [name, value] {
                    body.extend_from_slice(part.as_bytes());
                    body.push(0);
                }
            }
            body.push(0);
            assert_eq!(&body[..], &bytes[4..used]);
        }
    }
}

fn verify_both(token: &str) {
    for (verifier, format) in [(strict(), TenantFormat::Uuid), (loose(), TenantFormat::Text)] {
        let result = verifier.verify(token);
        check_result(&result, token, format);
    }
}

fn check_result(result: &Result<pgtenant::auth::jwt::VerifiedToken, AuthError>, token: &str, format: TenantFormat) {
    if token.trim_ascii().len() > MAX_TOKEN_LEN {
        assert_eq!(result.as_ref().err(), Some(&AuthError::TooLarge));
    }
    if let Ok(v) = result {
        check_tenant(&v.tenant, format);
        // An accepted token is at most leeway seconds past its expiry.
        assert!(v.expires_at + LEEWAY + 5 >= now(), "accepted an expired token: {v:?}");
    }
    if let Err(e) = result {
        // Messages never echo the token: they are built from static text and the configured
        // claim name only, so they stay short whatever the token holds.
        let msg = e.to_string();
        assert!(msg.len() <= 80, "error message too long to be static: {msg:?}");
    }
}

fn check_tenant(t: &TenantId, format: TenantFormat) {
    let s = t.as_str();
    assert!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b)), "{s:?}");
    assert_eq!(TenantId::parse(s, format).as_ref(), Ok(t), "tenant does not re-parse to itself");
}

fn tenant(raw: &str) {
    for format in [TenantFormat::Uuid, TenantFormat::Text] {
        if let Ok(t) = TenantId::parse(raw, format) {
            check_tenant(&t, format);
            match format {
                TenantFormat::Uuid => assert_eq!(t.as_str(), raw.to_ascii_lowercase()),
                TenantFormat::Text => assert_eq!(t.as_str(), raw),
            }
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A bounded JSON value (no recursion, so `arbitrary` cannot nest it deeply).
#[derive(Arbitrary, Debug, Clone)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Option<String>>),
    Object(Vec<(String, String)>),
}

impl Scalar {
    fn json(&self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => json!(b),
            Scalar::Int(i) => json!(i),
            Scalar::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Scalar::Str(s) => json!(s),
            Scalar::Array(v) => json!(v),
            Scalar::Object(kv) => Value::Object(kv.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Es256,
    None,
    NoneUpper,
    Missing,
    Other(Scalar),
}

#[derive(Arbitrary, Debug)]
enum Tenant {
    /// A valid uuid from 16 bytes, optionally uppercase.
    Uuid([u8; 16], bool),
    /// A uuid nested under `org.tenant` (what verifier B reads) plus the uuid at `tenant_id`.
    Both([u8; 16], String),
    Raw(Scalar),
    Missing,
}

#[derive(Arbitrary, Debug)]
enum Time {
    /// now + 120 + n seconds.
    Future(u16),
    /// now - leeway - 120 - n seconds (saturating at 0).
    Past(u32),
    Raw(Scalar),
    Missing,
}

#[derive(Arbitrary, Debug)]
enum Text {
    Right,
    /// A list that holds the right value (audience only).
    ListWithRight(Vec<String>),
    Wrong(Scalar),
    Missing,
}

#[derive(Arbitrary, Debug)]
enum Sig {
    Right,
    /// The right signature with one bit flipped.
    FlipBit(u16),
    /// Signed with a different (still long enough) secret.
    OtherKey(u8),
    Raw(Vec<u8>),
    Text(String),
    Empty,
}

#[derive(Arbitrary, Debug)]
struct Case {
    alg: Alg,
    typ: Option<String>,
    crit: bool,
    /// Extra header members; names in the JOSE header registry are skipped for the oracle.
    header_extra: Vec<(String, Scalar)>,
    tenant: Tenant,
    exp: Time,
    nbf: Option<Time>,
    iss: Text,
    aud: Text,
    sub: Option<Scalar>,
    extra: Vec<(String, Scalar)>,
    sig: Sig,
    /// Replace the header or payload segment by this JSON-ish text.
    raw_header: Option<String>,
    raw_payload: Option<String>,
    /// Surround the token with whitespace (trimmed by the verifier).
    padding: Option<(u8, u8)>,
}

fn uuid_text(b: &[u8; 16], upper: bool) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let s = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
    if upper {
        s.to_ascii_uppercase()
    } else {
        s
    }
}

fn time_value(t: &Time, now: u64) -> Option<Value> {
    match t {
        Time::Future(n) => Some(json!(now + 120 + u64::from(*n))),
        Time::Past(n) => Some(json!(now.saturating_sub(LEEWAY + 120 + u64::from(*n)))),
        Time::Raw(s) => Some(s.json()),
        Time::Missing => None,
    }
}

fn structured(case: &Case) {
    let now = now();
    let mut header = Map::new();
    let alg = match &case.alg {
        Alg::Hs256 => Some(Algorithm::HS256),
        Alg::Hs384 => Some(Algorithm::HS384),
        Alg::Hs512 => Some(Algorithm::HS512),
        _ => None,
    };
    let alg_json = match &case.alg {
        Alg::Hs256 => Some(json!("HS256")),
        Alg::Hs384 => Some(json!("HS384")),
        Alg::Hs512 => Some(json!("HS512")),
        Alg::Rs256 => Some(json!("RS256")),
        Alg::Es256 => Some(json!("ES256")),
        Alg::None => Some(json!("none")),
        Alg::NoneUpper => Some(json!("NONE")),
        Alg::Missing => None,
        Alg::Other(s) => Some(s.json()),
    };
    const JOSE: &[&str] = &[
        "alg", "typ", "cty", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "crit", "enc", "zip", "b64", "url",
        "nonce",
    ];
    let mut header_clean = true;
    for (k, v) in &case.header_extra {
        header_clean &= !JOSE.contains(&k.as_str());
        header.insert(k.clone(), v.json());
    }
    if let Some(typ) = &case.typ {
        header.insert("typ".into(), json!(typ));
    }
    if case.crit {
        header.insert("crit".into(), json!(["b64"]));
    }
    if let Some(a) = alg_json {
        header.insert("alg".into(), a);
    }

    let mut claims = Map::new();
    const REGISTERED: &[&str] = &["exp", "nbf", "iss", "aud", "sub", "iat", "jti", "tenant_id", "org"];
    let mut extra_clean = true;
    for (k, v) in &case.extra {
        extra_clean &= !REGISTERED.contains(&k.as_str());
        claims.insert(k.clone(), v.json());
    }
    let mut expected_tenant = None;
    match &case.tenant {
        Tenant::Uuid(b, upper) => {
            let t = uuid_text(b, *upper);
            expected_tenant = Some(t.to_ascii_lowercase());
            claims.insert("tenant_id".into(), json!(t));
        }
        Tenant::Both(b, text) => {
            let t = uuid_text(b, false);
            expected_tenant = Some(t.clone());
            claims.insert("tenant_id".into(), json!(t));
            claims.insert("org".into(), json!({ "tenant": text }));
        }
        Tenant::Raw(s) => {
            claims.insert("tenant_id".into(), s.json());
        }
        Tenant::Missing => {}
    }
    let exp = time_value(&case.exp, now);
    if let Some(v) = &exp {
        claims.insert("exp".into(), v.clone());
    }
    if let Some(v) = case.nbf.as_ref().and_then(|t| time_value(t, now)) {
        claims.insert("nbf".into(), v);
    }
    match &case.iss {
        Text::Right | Text::ListWithRight(_) => {
            claims.insert("iss".into(), json!(ISSUER));
        }
        Text::Wrong(s) => {
            claims.insert("iss".into(), s.json());
        }
        Text::Missing => {}
    }
    match &case.aud {
        Text::Right => {
            claims.insert("aud".into(), json!(AUDIENCE));
        }
        Text::ListWithRight(others) => {
            let mut list: Vec<Value> = others.iter().map(|s| json!(s)).collect();
            let at = others.len() / 2;
            list.insert(at, json!(AUDIENCE));
            claims.insert("aud".into(), Value::Array(list));
        }
        Text::Wrong(s) => {
            claims.insert("aud".into(), s.json());
        }
        Text::Missing => {}
    }
    if let Some(s) = &case.sub {
        claims.insert("sub".into(), s.json());
    }

    let header_text = case.raw_header.clone().unwrap_or_else(|| Value::Object(header).to_string());
    let payload_text = case.raw_payload.clone().unwrap_or_else(|| Value::Object(claims.clone()).to_string());
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_text.as_bytes()),
        URL_SAFE_NO_PAD.encode(payload_text.as_bytes())
    );
    let sign_alg = alg.unwrap_or(Algorithm::HS256);
    let right = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &EncodingKey::from_secret(SECRET), sign_alg)
        .expect("HMAC signing");
    let right_bytes = URL_SAFE_NO_PAD.decode(&right).expect("signature is base64url");
    let (sig, sig_right) = match &case.sig {
        Sig::Right => (right.clone(), true),
        Sig::FlipBit(n) => {
            let mut b = right_bytes.clone();
            let i = usize::from(*n) % (b.len() * 8);
            b[i / 8] ^= 1 << (i % 8);
            (URL_SAFE_NO_PAD.encode(&b), false)
        }
        Sig::OtherKey(x) => {
            let mut other = SECRET.to_vec();
            other[0] ^= x | 1;
            let s = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &EncodingKey::from_secret(&other), sign_alg)
                .expect("HMAC signing");
            (s, false)
        }
        Sig::Raw(b) => (URL_SAFE_NO_PAD.encode(b), *b == right_bytes),
        // Any text that decodes to the right bytes is the right signature, however it is spelled.
        Sig::Text(t) => (t.clone(), URL_SAFE_NO_PAD.decode(t).is_ok_and(|b| b == right_bytes)),
        Sig::Empty => (String::new(), false),
    };
    let mut token = format!("{signing_input}.{sig}");
    if let Some((l, r)) = case.padding {
        token = format!("{}{token}{}", " \t\n\r".repeat(usize::from(l % 3)), "\n".repeat(usize::from(r % 3)));
    }

    let result = strict().verify(&token);
    check_result(&result, &token, TenantFormat::Uuid);
    check_result(&loose().verify(&token), &token, TenantFormat::Text);

    // The oracle for the strict verifier, only over tokens built from the structured parts.
    let built = case.raw_header.is_none() && case.raw_payload.is_none();
    let exp_ok = matches!(case.exp, Time::Future(_));
    let nbf_ok = matches!(case.nbf, None | Some(Time::Past(_)) | Some(Time::Missing));
    let iss_ok = matches!(case.iss, Text::Right | Text::ListWithRight(_));
    let aud_ok = matches!(case.aud, Text::Right | Text::ListWithRight(_));
    // jsonwebtoken refuses (as malformed) a `sub` that is a JSON array or object: its
    // claim parser cannot skip a non-string there. Refusing is safe, so the oracle allows it.
    let sub_ok = !matches!(case.sub, Some(Scalar::Array(_) | Scalar::Object(_)));
    let valid = built
        && sub_ok
        && header_clean
        && extra_clean
        && !case.crit
        && alg == Some(Algorithm::HS256)
        && sig_right
        && exp_ok
        && nbf_ok
        && iss_ok
        && aud_ok
        && expected_tenant.is_some()
        && token.trim_ascii().len() <= MAX_TOKEN_LEN;
    if valid {
        let v = result.as_ref().unwrap_or_else(|e| panic!("valid token refused: {e}: {token}"));
        assert_eq!(Some(v.tenant.as_str()), expected_tenant.as_deref());
        assert_eq!(Some(json!(v.expires_at)), exp);
        let sub = case.sub.as_ref().map(Scalar::json);
        assert_eq!(v.subject, sub.as_ref().and_then(Value::as_str).map(str::to_owned));
    }
    // Decisive defects: each alone must make the strict verifier refuse, whatever else the token holds.
    if built {
        let alg_wrong = !matches!(case.alg, Alg::Hs256);
        let expired = matches!(case.exp, Time::Past(_) | Time::Missing);
        let iss_wrong =
            matches!(&case.iss, Text::Missing) || matches!(&case.iss, Text::Wrong(s) if s.json() != json!(ISSUER));
        let aud_wrong =
            matches!(case.aud, Text::Missing) || matches!(&case.aud, Text::Wrong(s) if !aud_contains(&s.json()));
        let tenant_wrong = matches!(&case.tenant, Tenant::Missing)
            || matches!(&case.tenant, Tenant::Raw(s) if s.json().as_str().is_none_or(|t| TenantId::parse(t, TenantFormat::Uuid).is_err()));
        let defects = [
            ("signature", !sig_right),
            ("algorithm", alg_wrong),
            ("crit", case.crit),
            ("exp", expired),
            ("iss", iss_wrong),
            ("aud", aud_wrong),
            ("tenant", tenant_wrong),
        ];
        if let Some((what, _)) = defects.iter().find(|(_, bad)| *bad) {
            assert!(result.is_err(), "token with a bad {what} accepted: {result:?}: {token}");
        }
    }
}

fn aud_contains(v: &Value) -> bool {
    match v {
        Value::String(s) => s == AUDIENCE,
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(AUDIENCE)),
        _ => false,
    }
}
