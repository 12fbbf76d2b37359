//! A real PKI for tests, made with rcgen: a CA, and workload certificates with SPIFFE URI SANs,
//! as Envoy would forward them (`source.certificate`: URL-encoded PEM of the leaf).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType,
    date_time_ymd,
};
use sha2::{Digest, Sha256};

/// A certificate authority that issues test certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key.
pub struct TestCert {
    pub pem: String,
    pub der: Vec<u8>,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate valid from 2020 to 2090 with these URI and DNS SANs.
    pub fn issue(&self, uris: &[&str], dns: &[&str]) -> TestCert {
        self.issue_valid(uris, dns, (2020, 2090))
    }

    /// A certificate that expired in 2021.
    pub fn issue_expired(&self, uris: &[&str]) -> TestCert {
        self.issue_valid(uris, &[], (2020, 2021))
    }

    fn issue_valid(&self, uris: &[&str], dns: &[&str], (from, to): (i32, i32)) -> TestCert {
        self.issue_with(uris, dns, (from, to), |_| {})
    }

    /// A certificate for `uris` whose parameters `tweak` changes first (a CA flag, another
    /// key usage), for tests of what a leaf must be.
    pub fn issue_tweaked(
        &self,
        uris: &[&str],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> TestCert {
        self.issue_with(uris, &[], (2020, 2090), tweak)
    }

    fn issue_with(
        &self,
        uris: &[&str],
        dns: &[&str],
        (from, to): (i32, i32),
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> TestCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        // An X509-SVID leaf (SPIFFE X509-SVID §4.3): signature use only.
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params
            .distinguished_name
            .push(DnType::CommonName, "workload");
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(to, 1, 1);
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .chain(
                dns.iter()
                    .map(|d| SanType::DnsName((*d).try_into().unwrap())),
            )
            .collect();
        tweak(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TestCert {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl TestCert {
    /// The PEM URL-encoded as Envoy sends it in `source.certificate`.
    pub fn url_encoded(&self) -> String {
        percent_encoding::utf8_percent_encode(&self.pem, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
    }

    /// RFC 8705 `x5t#S256`.
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(&self.der))
    }

    /// The hex SHA-256 that Envoy puts in XFCC's `Hash=`.
    pub fn sha256_hex(&self) -> String {
        Sha256::digest(&self.der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
