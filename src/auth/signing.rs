//! Signed tenant context (`tenant.mode = "signed"`): the proof that travels
//! with the tenant setting so that the database, not the proxy, decides
//! whether the setting was set by pgtenant.
//!
//! The proof is `v1:<kid>:<hex HMAC-SHA256(key, tenant)>`. SQL running as
//! the application role can change the tenant setting (a `DO` block, a
//! `pg_temp` function) but cannot compute a proof for another tenant: the
//! key is readable only by the proxy and by the owner of the `SECURITY
//! DEFINER` function that checks it (see `pgtenant policy --signed`). The
//! key id lets two keys be valid at once while a key is rotated.

use std::fmt;

use aws_lc_rs::{digest, hmac};

/// The transaction-local setting that carries the proof.
pub const PROOF_SETTING: &str = "pgtenant.proof";

/// Session-level settings that carry the tenant and its proof across the
/// transactions of one simple Query (see `session::inject::copy_statement`).
/// They only ever hold the attached client's own values, and are cleared
/// before the server connection goes back to the pool.
pub const CARRY_TENANT_SETTING: &str = "pgtenant.carry_tenant";

/// The carried proof; see [`CARRY_TENANT_SETTING`].
pub const CARRY_PROOF_SETTING: &str = "pgtenant.carry_proof";

/// Version tag at the front of every proof.
pub const PROOF_VERSION: &str = "v1";

/// Shortest key accepted, in bytes: HMAC-SHA256 keys shorter than the hash add no strength.
pub const MIN_KEY_LEN: usize = 32;

/// A signing key and its id. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    key: Vec<u8>,
    kid: String,
}

impl SigningKey {
    /// A key from its bytes (the text of `signing_key_env` or `signing_key_file`).
    pub fn new(key: Vec<u8>) -> Result<SigningKey, String> {
        if key.len() < MIN_KEY_LEN {
            return Err(format!("the signing key is {} bytes; at least {MIN_KEY_LEN} are required", key.len()));
        }
        let kid = key_id(&key);
        Ok(SigningKey { key, kid })
    }

    /// The key id: the first 8 hex digits of SHA-256 of the key, as the database stores it.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The proof for `tenant`: `v1:<kid>:<hex HMAC-SHA256(key, tenant)>`.
    pub fn proof(&self, tenant: &str) -> String {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.key), tenant.as_bytes());
        format!("{PROOF_VERSION}:{}:{}", self.kid, hex(tag.as_ref()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(kid {}, <redacted, {} bytes>)", self.kid, self.key.len())
    }
}

/// The id of `key`: the first 8 hex digits of its SHA-256.
fn key_id(key: &[u8]) -> String {
    let digest = digest::digest(&digest::SHA256, key);
    hex(&digest.as_ref()[..4])
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_is_hmac_sha256_of_the_tenant_in_hex() {
        // Computed independently:
        // echo -n tenant-a | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef
        let key = SigningKey::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
        let proof = key.proof("tenant-a");
        let parts: Vec<&str> = proof.split(':').collect();
        assert_eq!(parts[0], "v1");
        assert_eq!(parts[1], key.kid());
        assert_eq!(parts[2], "c2f012356e630f071a33b2b4ea078fd3e9aaa73ee7cccb9ef208ed838cf01cf3");
    }

    #[test]
    fn kid_is_the_start_of_the_key_hash() {
        // echo -n 0123456789abcdef0123456789abcdef | sha256sum
        let key = SigningKey::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
        assert_eq!(key.kid(), "3eb1bd43");
    }

    #[test]
    fn short_keys_are_refused_and_debug_hides_the_key() {
        assert!(SigningKey::new(vec![b'x'; 31]).unwrap_err().contains("31 bytes"));
        let key = SigningKey::new(b"a-very-secret-signing-key-of-32-bytes".to_vec()).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("secret") && shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn different_tenants_and_keys_give_different_proofs() {
        let a = SigningKey::new(vec![b'a'; 32]).unwrap();
        let b = SigningKey::new(vec![b'b'; 32]).unwrap();
        assert_ne!(a.proof("t1"), a.proof("t2"));
        assert_ne!(a.proof("t1").split(':').nth(2), b.proof("t1").split(':').nth(2));
        assert_ne!(a.kid(), b.kid());
    }
}
