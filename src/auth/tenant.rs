//! Tenant identifiers: validated once so they can be embedded in a single-quoted SQL literal.

use std::fmt;

/// Longest accepted text tenant id, in bytes.
pub const MAX_TEXT_LEN: usize = 64;

/// How tenant ids are written in the token claim (`auth.tenant_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantFormat {
    /// A hyphenated UUID (`8-4-4-4-12` hex digits, any case), stored lowercase.
    Uuid,
    /// 1 to 64 bytes of `[A-Za-z0-9_.:@-]`.
    Text,
}

impl TenantFormat {
    /// The config-file spelling: `uuid` or `text`.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantFormat::Uuid => "uuid",
            TenantFormat::Text => "text",
        }
    }
}

impl fmt::Display for TenantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a raw value is not an acceptable tenant id.
///
/// Messages never repeat the rejected value: it comes from a client token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// The value is the empty string.
    #[error("tenant id is empty")]
    Empty,
    /// A text tenant id longer than [`MAX_TEXT_LEN`] bytes.
    #[error("tenant id is {0} bytes long (at most 64 allowed)")]
    TooLong(usize),
    /// Not a 36-character hyphenated UUID.
    #[error("tenant id is not a hyphenated uuid")]
    InvalidUuid,
    /// A text tenant id with a byte outside `[A-Za-z0-9_.:@-]`.
    #[error("tenant id contains characters outside [A-Za-z0-9_.:@-]")]
    InvalidCharacter,
}

/// A validated tenant id.
///
/// Only ASCII letters, digits and `_ . : @ -` can occur (UUIDs are a subset),
/// so the value contains no quote, backslash, NUL or non-ASCII byte and is
/// safe inside a single-quoted SQL literal without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Validates `raw` against `format`; UUIDs are normalised to lowercase.
    pub fn parse(raw: &str, format: TenantFormat) -> Result<TenantId, TenantError> {
        if raw.is_empty() {
            return Err(TenantError::Empty);
        }
        match format {
            TenantFormat::Uuid => parse_uuid(raw),
            TenantFormat::Text => parse_text(raw),
        }
    }

    /// The validated value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Only the canonical hyphenated form: braces, `urn:uuid:` and the 32-digit
// simple form are refused so that one tenant has exactly one spelling.
fn parse_uuid(raw: &str) -> Result<TenantId, TenantError> {
    let bytes = raw.as_bytes();
    if bytes.len() != 36 {
        return Err(TenantError::InvalidUuid);
    }
    for (i, b) in bytes.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        };
        if !ok {
            return Err(TenantError::InvalidUuid);
        }
    }
    Ok(TenantId(raw.to_ascii_lowercase()))
}

fn parse_text(raw: &str) -> Result<TenantId, TenantError> {
    if raw.len() > MAX_TEXT_LEN {
        return Err(TenantError::TooLong(raw.len()));
    }
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-');
    if !raw.as_bytes().iter().all(allowed) {
        return Err(TenantError::InvalidCharacter);
    }
    Ok(TenantId(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "3f2a8c1e-9b4d-4e6f-a0b1-c2d3e4f5a6b7";

    #[test]
    fn uuid_canonical_forms() {
        let id = TenantId::parse(UUID, TenantFormat::Uuid).unwrap();
        assert_eq!(id.as_str(), UUID);
        let upper = TenantId::parse(&UUID.to_uppercase(), TenantFormat::Uuid).unwrap();
        assert_eq!(upper, id);
        assert_eq!(upper.to_string(), UUID);
        let nil = "00000000-0000-0000-0000-000000000000";
        assert_eq!(TenantId::parse(nil, TenantFormat::Uuid).unwrap().as_str(), nil);
    }

    #[test]
    fn uuid_other_spellings_rejected() {
        let bad = [
            format!("{{{UUID}}}"),
            format!("urn:uuid:{UUID}"),
            UUID.replace('-', ""),
            format!(" {UUID}"),
            format!("{UUID} "),
            format!("{UUID}\0"),
            UUID.replacen('-', "_", 1),
            UUID.replacen('a', "g", 1),
            "3f2a8c1e9-b4d-4e6f-a0b1-c2d3e4f5a6b7".to_owned(),
            UUID[..35].to_owned(),
            // Fullwidth digit: same look, multi-byte, and not ASCII hex.
            UUID.replacen('3', "\u{FF13}", 1),
            "x".repeat(36),
            "'; drop table t; --------------------".to_owned(),
        ];
        for raw in bad {
            assert_eq!(TenantId::parse(&raw, TenantFormat::Uuid), Err(TenantError::InvalidUuid), "{raw:?}");
        }
        assert_eq!(TenantId::parse("", TenantFormat::Uuid), Err(TenantError::Empty));
    }

    #[test]
    fn text_accepts_allowed_alphabet() {
        for raw in ["a", "acme", "Acme-Corp_01", "org:acme.eu@west-1", UUID] {
            assert_eq!(TenantId::parse(raw, TenantFormat::Text).unwrap().as_str(), raw);
        }
        let max = "a".repeat(64);
        assert_eq!(TenantId::parse(&max, TenantFormat::Text).unwrap().as_str(), max);
    }

    #[test]
    fn text_hostile_values_rejected() {
        use TenantError::*;
        let cases: &[(&str, TenantError)] = &[
            ("", Empty),
            ("acme'", InvalidCharacter),
            ("ac'me' OR '1'='1", InvalidCharacter),
            ("acme\"", InvalidCharacter),
            ("acme\\", InvalidCharacter),
            ("acme\0", InvalidCharacter),
            ("ac me", InvalidCharacter),
            ("acme\n", InvalidCharacter),
            ("acme;", InvalidCharacter),
            ("$$acme$$", InvalidCharacter),
            ("acme/", InvalidCharacter),
            ("acme%", InvalidCharacter),
            // Lookalikes: Cyrillic 'а', fullwidth apostrophe, right single quote.
            ("\u{0430}cme", InvalidCharacter),
            ("acme\u{FF07}", InvalidCharacter),
            ("acme\u{2019}", InvalidCharacter),
            ("é", InvalidCharacter),
        ];
        for (raw, want) in cases {
            assert_eq!(TenantId::parse(raw, TenantFormat::Text).as_ref(), Err(want), "{raw:?}");
        }
        let long = "a".repeat(65);
        assert_eq!(TenantId::parse(&long, TenantFormat::Text), Err(TooLong(65)));
    }

    #[test]
    fn errors_do_not_echo_value() {
        let err = TenantId::parse("secret'value", TenantFormat::Text).unwrap_err();
        assert!(!err.to_string().contains("secret"));
        let err = TenantId::parse("secret-value", TenantFormat::Uuid).unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn format_names() {
        assert_eq!(TenantFormat::Uuid.to_string(), "uuid");
        assert_eq!(TenantFormat::Text.as_str(), "text");
    }
}
