//! Bundle signing keys: an Ed25519 or ECDSA P-256 private key (PKCS#8 PEM, as
//! `openssl genpkey -algorithm ed25519` or `cedargate bundle keygen` writes it) signs a
//! manifest; the matching public key (SubjectPublicKeyInfo PEM, `BEGIN PUBLIC KEY`) verifies
//! it. The signature file (`manifest.sig`) is JSON: the algorithm and the base64 signature,
//! so that a key of one algorithm never verifies a signature made for the other.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};

/// The signature algorithms a bundle may be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    Ed25519,
    EcdsaP256Sha256,
}

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "not a PKCS#8 PEM private key of Ed25519 or ECDSA P-256 (`openssl genpkey -algorithm ed25519`)"
    )]
    Private,
    #[error("not a PEM public key (`BEGIN PUBLIC KEY`) of Ed25519 or ECDSA P-256")]
    Public,
    #[error("the signature file is not a cedargate bundle signature")]
    SignatureFile,
    #[error("signing failed")]
    Sign,
}

/// `manifest.sig`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    algorithm: Algorithm,
    signature: String,
}

/// A private key that signs manifests.
#[derive(Debug)]
pub enum SigningKey {
    Ed25519(signature::Ed25519KeyPair),
    P256(signature::EcdsaKeyPair),
}

impl SigningKey {
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|_| KeyError::Private)?;
        let der = der.secret_pkcs8_der();
        if let Ok(key) = signature::Ed25519KeyPair::from_pkcs8(der) {
            return Ok(Self::Ed25519(key));
        }
        signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der)
            .map(Self::P256)
            .map_err(|_| KeyError::Private)
    }

    /// A new key of `algorithm`, as PKCS#8 PEM.
    pub fn generate(algorithm: Algorithm) -> Result<String, KeyError> {
        let der = match algorithm {
            Algorithm::Ed25519 => {
                signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
                    .map_err(|_| KeyError::Sign)?
                    .as_ref()
                    .to_vec()
            }
            Algorithm::EcdsaP256Sha256 => signature::EcdsaKeyPair::generate_pkcs8(
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &aws_lc_rs::rand::SystemRandom::new(),
            )
            .map_err(|_| KeyError::Sign)?
            .as_ref()
            .to_vec(),
        };
        Ok(pem("PRIVATE KEY", &der))
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Ed25519(_) => Algorithm::Ed25519,
            Self::P256(_) => Algorithm::EcdsaP256Sha256,
        }
    }

    /// The public key, as SubjectPublicKeyInfo PEM (what `policies.bundle.public_key` reads).
    pub fn public_pem(&self) -> Result<String, KeyError> {
        let der = match self {
            Self::Ed25519(key) => key.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Self::P256(key) => key.public_key().as_der().map(|d| d.as_ref().to_vec()),
        }
        .map_err(|_| KeyError::Sign)?;
        Ok(pem("PUBLIC KEY", &der))
    }

    /// The signature file for `message`.
    pub fn sign(&self, message: &[u8]) -> Result<String, KeyError> {
        let signature = match self {
            Self::Ed25519(key) => key.sign(message).as_ref().to_vec(),
            Self::P256(key) => key
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map_err(|_| KeyError::Sign)?
                .as_ref()
                .to_vec(),
        };
        serde_json::to_string_pretty(&SignatureFile {
            algorithm: self.algorithm(),
            signature: STANDARD.encode(signature),
        })
        .map_err(|_| KeyError::Sign)
    }
}

/// A public key that verifies manifests.
#[derive(Debug)]
pub struct PublicKey {
    algorithm: Algorithm,
    key: signature::ParsedPublicKey,
}

impl PublicKey {
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|_| KeyError::Public)?;
        if let Ok(key) = signature::ParsedPublicKey::new(&signature::ED25519, der.as_ref()) {
            return Ok(Self {
                algorithm: Algorithm::Ed25519,
                key,
            });
        }
        signature::ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, der.as_ref())
            .map(|key| Self {
                algorithm: Algorithm::EcdsaP256Sha256,
                key,
            })
            .map_err(|_| KeyError::Public)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Checks `signature_file` (`manifest.sig`) over `message`: it must name this key's
    /// algorithm and verify.
    pub fn verify(&self, message: &[u8], signature_file: &[u8]) -> Result<(), super::BundleError> {
        let file: SignatureFile = serde_json::from_slice(signature_file)
            .map_err(|_| super::BundleError::Key(KeyError::SignatureFile))?;
        let signature = STANDARD
            .decode(file.signature.as_bytes())
            .map_err(|_| super::BundleError::Key(KeyError::SignatureFile))?;
        if file.algorithm != self.algorithm {
            return Err(super::BundleError::Signature);
        }
        self.key
            .verify_sig(message, &signature)
            .map_err(|_| super::BundleError::Signature)
    }
}

/// PEM text of `der` under `label`.
fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_algorithm_signs_and_only_its_own_key_verifies() {
        let message = b"manifest";
        for algorithm in [Algorithm::Ed25519, Algorithm::EcdsaP256Sha256] {
            let key =
                SigningKey::from_pem(SigningKey::generate(algorithm).unwrap().as_bytes()).unwrap();
            assert_eq!(key.algorithm(), algorithm);
            let public = PublicKey::from_pem(key.public_pem().unwrap().as_bytes()).unwrap();
            assert_eq!(public.algorithm(), algorithm);
            let signed = key.sign(message).unwrap();
            assert!(public.verify(message, signed.as_bytes()).is_ok());
            assert!(public.verify(b"manifesT", signed.as_bytes()).is_err());
            let other =
                SigningKey::from_pem(SigningKey::generate(algorithm).unwrap().as_bytes()).unwrap();
            assert!(
                public
                    .verify(message, other.sign(message).unwrap().as_bytes())
                    .is_err()
            );
        }
        assert_eq!(
            SigningKey::from_pem(b"not a key").unwrap_err(),
            KeyError::Private
        );
        assert_eq!(PublicKey::from_pem(b"x").unwrap_err(), KeyError::Public);
    }
}
