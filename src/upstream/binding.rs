//! SCRAM channel binding data for `tls-server-end-point` (RFC 5929 §4.1): a
//! hash of the server's certificate, with the hash function its signature
//! uses (SHA-256 for MD5 and SHA-1). Binding ties the SCRAM exchange to the
//! TLS session, so a man in the middle holding another certificate cannot
//! relay the login, even when the certificate is not verified.

use aws_lc_rs::digest;

/// The `tls-server-end-point` binding data for a DER certificate, or `None`
/// when its signature algorithm names no single hash (RSASSA-PSS, Ed25519),
/// as libpq also refuses to bind then.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let algorithm = match signature_oid(cert_der)? {
        // md5/sha1/sha256 with RSA, ecdsa-with-SHA1/SHA256
        [42, 134, 72, 134, 247, 13, 1, 1, 4 | 5 | 11]
        | [42, 134, 72, 206, 61, 4, 1]
        | [42, 134, 72, 206, 61, 4, 3, 2] => &digest::SHA256,
        [42, 134, 72, 134, 247, 13, 1, 1, 12] | [42, 134, 72, 206, 61, 4, 3, 3] => &digest::SHA384,
        [42, 134, 72, 134, 247, 13, 1, 1, 13] | [42, 134, 72, 206, 61, 4, 3, 4] => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// The OID bytes of `Certificate.signatureAlgorithm`:
/// `SEQUENCE { tbsCertificate, SEQUENCE { OID, params }, BIT STRING }`.
fn signature_oid(der: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = element(der, 0x30)?;
    let (_tbs, rest) = element(certificate, 0x30)?;
    let (algorithm, _) = element(rest, 0x30)?;
    let (oid, _) = element(algorithm, 0x06)?;
    Some(oid)
}

/// Splits one DER element with tag `tag` off the front: (contents, rest).
fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = der.split_first()?;
    if first != tag {
        return None;
    }
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = match len0 {
        0..=0x7f => (usize::from(len0), rest),
        0x81..=0x84 => {
            let n = usize::from(len0 & 0x7f);
            let (bytes, rest) = (rest.get(..n)?, &rest[n..]);
            (bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)), rest)
        }
        _ => return None,
    };
    Some((rest.get(..len)?, &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal certificate-shaped DER value with the given signature OID.
    fn cert_with_oid(oid: &[u8]) -> Vec<u8> {
        let tbs = [0x30, 0x03, 0x02, 0x01, 0x01];
        let mut alg = vec![0x30, (oid.len() + 4) as u8, 0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let sig = [0x03, 0x02, 0x00, 0xff];
        let body: Vec<u8> = tbs.iter().chain(&alg).chain(&sig).copied().collect();
        let mut der = vec![0x30, 0x81, body.len() as u8];
        der.extend(body);
        der
    }

    #[test]
    fn hash_follows_the_signature_algorithm() {
        let sha256_rsa = [42, 134, 72, 134, 247, 13, 1, 1, 11];
        let ecdsa_384 = [42, 134, 72, 206, 61, 4, 3, 3];
        let sha1_rsa = [42, 134, 72, 134, 247, 13, 1, 1, 5];
        let der = cert_with_oid(&sha256_rsa);
        assert_eq!(tls_server_end_point(&der).unwrap(), digest::digest(&digest::SHA256, &der).as_ref());
        assert_eq!(tls_server_end_point(&cert_with_oid(&ecdsa_384)).unwrap().len(), 48);
        assert_eq!(tls_server_end_point(&cert_with_oid(&sha1_rsa)).unwrap().len(), 32, "SHA-1 is upgraded to SHA-256");
    }

    #[test]
    fn unknown_algorithms_and_garbage_give_none() {
        let ed25519 = [43, 101, 112];
        assert_eq!(tls_server_end_point(&cert_with_oid(&ed25519)), None);
        for bad in [&b""[..], b"\x30", b"\x30\x85\x00\x00\x00\x00\x00", b"\x30\x02\x30\x05", b"\x31\x00"] {
            assert_eq!(tls_server_end_point(bad), None, "{bad:?}");
        }
    }
}
