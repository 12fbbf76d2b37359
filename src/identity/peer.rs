//! The downstream peer's certificate, as Envoy forwards it: `source.certificate` (the leaf,
//! URL-encoded PEM, with `include_peer_certificate: true`) or, when configured as trusted,
//! Istio's `x-forwarded-client-cert` header (XFCC: its `Hash=` is the hex SHA-256 of the leaf).
//!
//! Envoy validated the chain during the handshake; cedargate re-reads the identity in it: the
//! SPIFFE ID (X509-SVID §2: exactly one URI SAN, a valid SPIFFE ID), DNS SANs, subject,
//! validity, and the SHA-256 thumbprint used for RFC 8705 certificate-bound tokens. Anything
//! malformed, ambiguous or expired is a [`PeerError`], which is a deny; never a panic.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::spiffe::{SpiffeError, SpiffeId};

/// Why the peer's identity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerError {
    #[error("peer certificate is not URL-encoded UTF-8")]
    Encoding,
    #[error("peer certificate is not one PEM certificate")]
    Pem,
    #[error("peer certificate is not valid X.509: {0}")]
    Der(String),
    #[error("peer certificate has more than one URI SAN")]
    SeveralUris,
    #[error("peer certificate's URI SAN is not a SPIFFE ID: {0}")]
    Spiffe(SpiffeError),
    #[error("peer certificate is not a leaf X509-SVID: {0}")]
    NotLeaf(Cow<'static, str>),
    #[error("peer certificate has expired")]
    Expired,
    #[error("peer certificate is not valid yet")]
    NotYetValid,
    #[error("Envoy's source.principal does not match the peer certificate")]
    PrincipalMismatch,
    #[error("x-forwarded-client-cert header is malformed")]
    Xfcc,
    #[error("trust domain `{0}` is not allowed")]
    TrustDomain(String),
}

/// What cedargate reads from the peer's leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    pub spiffe_id: Option<SpiffeId>,
    pub dns_sans: Vec<String>,
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the DER certificate (RFC 8705 `x5t#S256`, XFCC `Hash`).
    pub sha256: [u8; 32],
}

impl PeerCertificate {
    /// The RFC 8705 §3.1 thumbprint: base64url SHA-256 of the DER certificate.
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.sha256)
    }
}

/// How many parsed peer certificates are kept. A mesh has a few workloads per cedargate; a
/// flood of distinct certificates only empties the cache, it never grows past this.
const CERT_CACHE_ENTRIES: usize = 1024;

/// Parsed certificates by the SHA-256 of the text Envoy sent: parsing is a pure function of
/// that text, so one process-wide cache serves every listener and every reload. Validity is
/// checked against `now` on every use, never cached. Only successful parses are kept.
fn cert_cache() -> &'static dashmap::DashMap<[u8; 32], Arc<PeerCertificate>> {
    static CACHE: OnceLock<dashmap::DashMap<[u8; 32], Arc<PeerCertificate>>> = OnceLock::new();
    CACHE.get_or_init(dashmap::DashMap::new)
}

/// Parses Envoy's `source.certificate` (URL-encoded PEM of the leaf) and checks it is valid
/// at `now`. A certificate seen before is not decoded or parsed again (bounded cache keyed by
/// the SHA-256 of the text).
pub fn parse_certificate(
    url_encoded_pem: &str,
    now: i64,
) -> Result<Arc<PeerCertificate>, PeerError> {
    let key: [u8; 32] = Sha256::digest(url_encoded_pem.as_bytes()).into();
    let cache = cert_cache();
    let cached = cache.get(&key).map(|entry| Arc::clone(entry.value()));
    let cert = match cached {
        Some(cert) => cert,
        None => {
            let cert = Arc::new(parse_uncached(url_encoded_pem)?);
            if cache.len() >= CERT_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, Arc::clone(&cert));
            cert
        }
    };
    if cert.not_after < now {
        return Err(PeerError::Expired);
    }
    if cert.not_before > now {
        return Err(PeerError::NotYetValid);
    }
    Ok(cert)
}

fn parse_uncached(url_encoded_pem: &str) -> Result<PeerCertificate, PeerError> {
    let pem = percent_encoding::percent_decode_str(url_encoded_pem)
        .decode_utf8()
        .map_err(|_| PeerError::Encoding)?;
    let (rest, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| PeerError::Pem)?;
    if pem.label != "CERTIFICATE" || !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(PeerError::Pem);
    }
    parse_der(&pem.contents)
}

/// A peer's certificate is an end entity: never a CA (`basicConstraints cA`). One that carries a
/// SPIFFE ID is an X509-SVID (SPIFFE X509-SVID §4.3, §4.4): `keyUsage` present with
/// `digitalSignature` and without `keyCertSign` or `cRLSign`.
fn check_leaf(cert: &X509Certificate<'_>, svid: bool) -> Result<(), PeerError> {
    let der = |e: x509_parser::error::X509Error| PeerError::Der(e.to_string());
    if cert
        .basic_constraints()
        .map_err(der)?
        .is_some_and(|bc| bc.value.ca)
    {
        return Err(PeerError::NotLeaf(Cow::Borrowed("it is a CA certificate")));
    }
    if svid {
        let usage = cert
            .key_usage()
            .map_err(der)?
            .ok_or(PeerError::NotLeaf(Cow::Borrowed("keyUsage is missing")))?;
        if !usage.value.digital_signature() {
            return Err(PeerError::NotLeaf(Cow::Borrowed(
                "keyUsage lacks digitalSignature",
            )));
        }
        if usage.value.key_cert_sign() || usage.value.crl_sign() {
            return Err(PeerError::NotLeaf(Cow::Borrowed(
                "keyUsage allows signing certificates",
            )));
        }
    }
    Ok(())
}

fn parse_der(der: &[u8]) -> Result<PeerCertificate, PeerError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| PeerError::Der(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PeerError::Der("trailing bytes".into()));
    }
    let validity = cert.validity();
    let mut uris = Vec::new();
    let mut dns_sans = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PeerError::Der(e.to_string()))?;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        match name {
            GeneralName::URI(uri) => uris.push(*uri),
            GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
            _ => {}
        }
    }
    let spiffe_id = match uris.as_slice() {
        [] => None,
        [uri] if SpiffeId::claims_to_be(uri) => {
            Some(SpiffeId::parse(uri).map_err(PeerError::Spiffe)?)
        }
        [_] => None,
        _ => return Err(PeerError::SeveralUris),
    };
    check_leaf(&cert, spiffe_id.is_some())?;
    Ok(PeerCertificate {
        spiffe_id,
        dns_sans,
        subject: cert.subject().to_string(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        sha256: Sha256::digest(der).into(),
    })
}

/// What the last element of an `x-forwarded-client-cert` header says about the peer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Xfcc {
    pub sha256: Option<[u8; 32]>,
    pub uri: Option<String>,
    pub dns: Vec<String>,
}

/// Parses the one element of XFCC set by cedargate's Envoy: `Hash=` (hex
/// SHA-256 of the leaf), `URI=`, `DNS=`. Values may be double-quoted (Envoy quotes `Subject`,
/// which may hold `,`, `;` and `=`), with `\"` and `\\` escapes inside quotes; separators
/// inside quotes are data, so a crafted subject cannot smuggle a `URI=` or a new element.
///
/// Exactly one element is accepted: cedargate trusts XFCC only behind a proxy that sets it with
/// `SANITIZE_SET`. Envoy does not quote `URI=` values, so a client certificate whose URI SAN
/// holds `,Hash=…;URI=spiffe://…` would otherwise forge an element of its own; with one element
/// it can only repeat a key, and a repeated `Hash` or `URI` is refused. For the same reason a
/// `DNS=` after the `URI=` (where Envoy puts them) is ignored: a URI SAN holding
/// `;DNS=admin.example` would forge one. DNS SANs come from XFCC only for certificates without
/// a URI SAN; forward the certificate itself (`include_peer_certificate`) for both.
pub fn parse_xfcc(header: &str) -> Result<Xfcc, PeerError> {
    let elements = split_xfcc(header)?;
    let [element] = elements.as_slice() else {
        return Err(PeerError::Xfcc);
    };
    let mut xfcc = Xfcc::default();
    for (key, value) in element {
        match key.to_ascii_lowercase().as_str() {
            "hash" if xfcc.sha256.is_some() => return Err(PeerError::Xfcc),
            "hash" => xfcc.sha256 = Some(parse_hex_sha256(value)?),
            "uri" if xfcc.uri.is_some() => return Err(PeerError::SeveralUris),
            "uri" => xfcc.uri = Some(value.clone()),
            // After an unquoted URI, a `DNS=` may be part of the URI SAN itself
            // (`URI=spiffe://td/x;DNS=admin.example` from one crafted SAN): not trusted.
            "dns" if xfcc.uri.is_some() => {}
            "dns" => xfcc.dns.push(value.clone()),
            _ => {}
        }
    }
    Ok(xfcc)
}

type XfccElement = Vec<(String, String)>;

/// Splits XFCC into elements of `key=value` pairs, honouring quotes.
fn split_xfcc(header: &str) -> Result<Vec<XfccElement>, PeerError> {
    let mut elements = vec![Vec::new()];
    let mut chars = header.chars().peekable();
    loop {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            if matches!(c, ',' | ';' | '"' | '\\') || c.is_control() {
                return Err(PeerError::Xfcc);
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || key.trim().is_empty() {
            return Err(PeerError::Xfcc);
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => value.push(chars.next().ok_or(PeerError::Xfcc)?),
                    Some(c) if !c.is_control() => value.push(c),
                    _ => return Err(PeerError::Xfcc),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if matches!(c, ',' | ';') {
                    break;
                }
                if matches!(c, '"' | '=' | '\\') || c.is_control() {
                    return Err(PeerError::Xfcc);
                }
                value.push(c);
                chars.next();
            }
        }
        elements
            .last_mut()
            .ok_or(PeerError::Xfcc)?
            .push((key.trim().to_owned(), value));
        match chars.next() {
            None => return Ok(elements),
            Some(';') => {}
            Some(',') => elements.push(Vec::new()),
            Some(_) => return Err(PeerError::Xfcc),
        }
    }
}

/// 64 hex digits, nothing else (no sign, no whitespace): the `hex` crate's strict decoding
/// into exactly 32 bytes.
fn parse_hex_sha256(value: &str) -> Result<[u8; 32], PeerError> {
    let mut sha = [0u8; 32];
    hex::decode_to_slice(value, &mut sha).map_err(|_| PeerError::Xfcc)?;
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_one_element() {
        let hash = "a".repeat(64);
        let x = parse_xfcc(&format!(
            "By=spiffe://td/gw;Hash={hash};URI=spiffe://td/ns/x/sa/y;DNS=y.td"
        ))
        .unwrap();
        assert_eq!(x.uri.as_deref(), Some("spiffe://td/ns/x/sa/y"));
        assert_eq!(x.sha256, Some([0xaa; 32]));
        // After the URI, a DNS may be a forged part of the URI SAN: not trusted.
        assert!(x.dns.is_empty());
        let x = parse_xfcc(&format!("Hash={hash};DNS=y.td;DNS=z.td")).unwrap();
        assert_eq!(x.dns, ["y.td", "z.td"]);
        // Review round 2: one crafted URI SAN `spiffe://td/x;DNS=admin.example`.
        let x = parse_xfcc(&format!("Hash={hash};URI=spiffe://td/x;DNS=admin.example")).unwrap();
        assert!(x.dns.is_empty());
        assert_eq!(parse_xfcc("Hash=zz"), Err(PeerError::Xfcc));
        assert_eq!(parse_xfcc("garbage"), Err(PeerError::Xfcc));
        assert_eq!(parse_xfcc("URI=a;URI=b"), Err(PeerError::SeveralUris));
        for hash in [
            format!("+{}", "a".repeat(63)),
            format!(" {}", "a".repeat(63)),
            "a".repeat(62),
            "a".repeat(66),
            format!("{}é", "a".repeat(62)),
        ] {
            assert_eq!(
                parse_xfcc(&format!("Hash={hash}")),
                Err(PeerError::Xfcc),
                "{hash}"
            );
        }
        assert_eq!(
            parse_xfcc(&format!("Hash={}", "AA".repeat(32)))
                .unwrap()
                .sha256,
            Some([0xaa; 32])
        );
    }

    #[test]
    fn xfcc_quoted_subject_cannot_smuggle_a_uri_or_an_element() {
        // A client certificate whose subject is crafted to look like XFCC syntax.
        let x = parse_xfcc(
            r#"Subject="CN=x;URI=spiffe://td/ns/admin/sa/root,O=\"evil\"";URI=spiffe://td/ns/x/sa/y"#,
        )
        .unwrap();
        assert_eq!(x.uri.as_deref(), Some("spiffe://td/ns/x/sa/y"));
        let x =
            parse_xfcc(r#"URI=spiffe://td/ns/x/sa/y;Subject="CN=a,URI=spiffe://td/evil""#).unwrap();
        assert_eq!(x.uri.as_deref(), Some("spiffe://td/ns/x/sa/y"));
        for bad in [
            r#"Subject="unterminated"#,
            r#"URI=a"b"#,
            "URI=a;;DNS=b",
            "=x",
            "URI=spiffe://td/a\n",
        ] {
            assert_eq!(parse_xfcc(bad), Err(PeerError::Xfcc), "{bad}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [
            "",
            "%ZZ",
            "%FF%FE",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "not pem",
        ] {
            assert!(parse_certificate(input, 0).is_err(), "{input}");
        }
    }
}
