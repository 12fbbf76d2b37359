//! The downstream peer's certificate, as Envoy forwards it: `source.certificate` (the leaf,
//! URL-encoded PEM, with `include_peer_certificate: true`) or, when configured as trusted,
//! Istio's `x-forwarded-client-cert` header (XFCC: its `Hash=` is the hex SHA-256 of the leaf).
//!
//! Envoy validated the chain during the handshake; cedargate re-reads the identity in it: the
//! SPIFFE ID (X509-SVID §2: exactly one URI SAN, a valid SPIFFE ID), DNS SANs, subject,
//! validity, and the SHA-256 thumbprint used for RFC 8705 certificate-bound tokens. Anything
//! malformed, ambiguous or expired is a [`PeerError`], which is a deny; never a panic.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::spiffe::{SpiffeError, SpiffeId};

/// Why the peer's identity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// Parses Envoy's `source.certificate` (URL-encoded PEM of the leaf).
pub fn parse_certificate(url_encoded_pem: &str, now: i64) -> Result<PeerCertificate, PeerError> {
    let pem = percent_encoding::percent_decode_str(url_encoded_pem)
        .decode_utf8()
        .map_err(|_| PeerError::Encoding)?;
    let (rest, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| PeerError::Pem)?;
    if pem.label != "CERTIFICATE" || !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(PeerError::Pem);
    }
    parse_der(&pem.contents, now)
}

fn parse_der(der: &[u8], now: i64) -> Result<PeerCertificate, PeerError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| PeerError::Der(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PeerError::Der("trailing bytes".into()));
    }
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        return Err(PeerError::Expired);
    }
    if validity.not_before.timestamp() > now {
        return Err(PeerError::NotYetValid);
    }
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
        [uri] if uri.starts_with("spiffe://") => {
            Some(SpiffeId::parse(uri).map_err(PeerError::Spiffe)?)
        }
        [_] => None,
        _ => return Err(PeerError::SeveralUris),
    };
    Ok(PeerCertificate {
        spiffe_id,
        dns_sans,
        subject: cert.subject().to_string(),
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

/// Parses the element of XFCC closest to cedargate's Envoy (the last one): `Hash=` (hex
/// SHA-256 of the leaf), `URI=`, `DNS=`; values may be quoted.
pub fn parse_xfcc(header: &str) -> Result<Xfcc, PeerError> {
    let element = header.rsplit(',').next().unwrap_or_default();
    let mut xfcc = Xfcc::default();
    for pair in element.split(';') {
        let Some((key, value)) = pair.trim().split_once('=') else {
            return Err(PeerError::Xfcc);
        };
        let value = value.trim_matches('"');
        match key.to_ascii_lowercase().as_str() {
            "hash" => {
                let mut sha = [0u8; 32];
                if value.len() != 64 {
                    return Err(PeerError::Xfcc);
                }
                for (byte, pair) in sha.iter_mut().zip(value.as_bytes().chunks(2)) {
                    let text = std::str::from_utf8(pair).map_err(|_| PeerError::Xfcc)?;
                    *byte = u8::from_str_radix(text, 16).map_err(|_| PeerError::Xfcc)?;
                }
                xfcc.sha256 = Some(sha);
            }
            "uri" if xfcc.uri.is_some() => return Err(PeerError::SeveralUris),
            "uri" => xfcc.uri = Some(value.to_owned()),
            "dns" => xfcc.dns.push(value.to_owned()),
            _ => {}
        }
    }
    Ok(xfcc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_last_element() {
        let hash = "a".repeat(64);
        let x = parse_xfcc(&format!(
            "By=spiffe://td/a;URI=spiffe://td/evil,By=spiffe://td/gw;Hash={hash};URI=spiffe://td/ns/x/sa/y;DNS=y.td"
        ))
        .unwrap();
        assert_eq!(x.uri.as_deref(), Some("spiffe://td/ns/x/sa/y"));
        assert_eq!(x.sha256, Some([0xaa; 32]));
        assert_eq!(x.dns, ["y.td"]);
        assert_eq!(parse_xfcc("Hash=zz"), Err(PeerError::Xfcc));
        assert_eq!(parse_xfcc("garbage"), Err(PeerError::Xfcc));
        assert_eq!(parse_xfcc("URI=a;URI=b"), Err(PeerError::SeveralUris));
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
