//! Who is asking: the workload behind the connection Envoy saw (and, with the JWT issue, the
//! subject of a bearer token). Owns the typed [`Identity`] the Cedar mapping reads; never sees
//! protobuf types and never decides.

pub mod authn;
pub mod jwks;
pub mod memo;
pub mod peer;
pub mod spiffe;
pub mod token;
pub mod token_cache;

use std::sync::Arc;

pub use crate::config::PeerSettings;

pub use spiffe::SpiffeId;
pub use token::{TokenError, VerifiedToken};

/// The downstream peer as Envoy described it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Envoy's `source.principal`: the first URI SAN (else the subject) of the verified client
    /// certificate; empty without TLS.
    pub principal: String,
    /// The SPIFFE ID, when `principal` is one.
    pub spiffe_id: Option<SpiffeId>,
    /// The downstream socket address, `ip:port`, when Envoy sent one.
    pub address: String,
    /// DNS SANs of the peer certificate, when Envoy forwarded it.
    pub dns_sans: Vec<String>,
    /// Subject of the peer certificate, when Envoy forwarded it.
    pub subject: Option<String>,
    /// SHA-256 of the peer certificate (from the certificate or a trusted XFCC `Hash`).
    pub cert_sha256: Option<[u8; 32]>,
    /// The client's IP address ([`client_ip`]): `context.peer.ip`.
    pub ip: Option<std::net::IpAddr>,
}

/// The client's IP address: with `trusted_hops` 0, the IP of Envoy's `source.address`
/// (`ip:port` or a bare IP; a pipe has none); otherwise the entry `trusted_hops` from the
/// right of `x-forwarded-for` (each trusted proxy, Envoy with `use_remote_address` too,
/// appends the address it received from). A
/// header too short, or an entry that is not an IP address, gives none: never a guess, and
/// never the address of a proxy taken for the client's.
pub fn client_ip(
    address: &str,
    forwarded_for: Option<&str>,
    trusted_hops: usize,
) -> Option<std::net::IpAddr> {
    use std::net::{IpAddr, SocketAddr};
    // A dual-stack socket reports an IPv4 client as `::ffff:a.b.c.d`: that is the IPv4
    // address (and Cedar refuses IPv4 embedded in IPv6).
    if trusted_hops == 0 {
        return address
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| address.parse::<IpAddr>())
            .ok()
            .map(|ip| ip.to_canonical());
    }
    let entries: Vec<&str> = forwarded_for?
        .split(',')
        .map(|e| e.trim_matches([' ', '\t']))
        .collect();
    let entry = entries
        .len()
        .checked_sub(trusted_hops)
        .and_then(|i| entries.get(i))?;
    entry.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The peer as Envoy sent it, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct PeerSource {
    pub principal: String,
    pub address: String,
    /// `source.certificate`: URL-encoded PEM, or empty.
    pub certificate: String,
}

impl Peer {
    /// Checks the peer Envoy described: the forwarded certificate (or a trusted XFCC header)
    /// must agree with `source.principal`, and a SPIFFE ID must be of an allowed trust domain.
    pub fn resolve(
        source: PeerSource,
        xfcc: Option<&str>,
        settings: &PeerSettings,
        now: i64,
    ) -> Result<Self, peer::PeerError> {
        let PeerSource {
            principal,
            address,
            certificate,
        } = source;
        // `SPIFFE://other.td/x` must not pass as a name of no trust domain.
        if SpiffeId::claims_to_be(&principal) {
            SpiffeId::parse(&principal).map_err(peer::PeerError::Spiffe)?;
        }
        let mut resolved = Self::from_envoy(principal, address);
        let (spiffe_from_cert, present) = if !certificate.is_empty() {
            let cert = peer::parse_certificate(&certificate, now)?;
            resolved.dns_sans = cert.dns_sans.clone();
            resolved.subject = Some(cert.subject.clone());
            resolved.cert_sha256 = Some(cert.sha256);
            (cert.spiffe_id.clone(), true)
        } else if let (true, Some(header)) = (settings.trust_xfcc, xfcc) {
            let xfcc = peer::parse_xfcc(header)?;
            resolved.dns_sans = xfcc.dns;
            resolved.cert_sha256 = xfcc.sha256;
            let id = xfcc
                .uri
                .filter(|u| SpiffeId::claims_to_be(u))
                .map(|u| SpiffeId::parse(&u).map_err(peer::PeerError::Spiffe))
                .transpose()?;
            (id, true)
        } else {
            (None, false)
        };
        if present {
            // Envoy's source.principal is the first URI SAN: both must name the same workload.
            // A principal that names something else (or a SPIFFE ID the certificate does not
            // carry) means the two disagree about who is calling: refuse rather than pick one.
            if resolved.spiffe_id.is_some() && spiffe_from_cert != resolved.spiffe_id {
                return Err(peer::PeerError::PrincipalMismatch);
            }
            if let Some(id) = &spiffe_from_cert
                && !resolved.principal.is_empty()
                && resolved.principal != id.to_string()
            {
                return Err(peer::PeerError::PrincipalMismatch);
            }
            if resolved.principal.is_empty()
                && let Some(id) = &spiffe_from_cert
            {
                resolved.principal = id.to_string();
            }
            resolved.spiffe_id = spiffe_from_cert.or(resolved.spiffe_id);
        }
        if let Some(id) = &resolved.spiffe_id {
            let allowed = settings.trust_domains.is_empty()
                || settings
                    .trust_domains
                    .iter()
                    .any(|td| td == id.trust_domain());
            if !allowed {
                return Err(peer::PeerError::TrustDomain(id.trust_domain().to_owned()));
            }
        }
        Ok(resolved)
    }

    /// Builds the peer from Envoy's `source.principal` and socket address.
    pub fn from_envoy(principal: String, address: String) -> Self {
        let spiffe_id = SpiffeId::parse(&principal).ok();
        Self {
            principal,
            spiffe_id,
            address,
            ..Self::default()
        }
    }

    /// True when the peer presented an identity (a verified certificate).
    pub fn is_present(&self) -> bool {
        !self.principal.is_empty() || self.cert_sha256.is_some()
    }
}

/// Everything known about the caller of one Check, once the identity rules have passed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub peer: Arc<Peer>,
    /// The verified bearer token, when the request carried one.
    pub token: Option<Arc<VerifiedToken>>,
}

/// Whether a route needs a bearer token (`routes.yaml` `token:`); without the field,
/// `authentication.require_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRequirement {
    Required,
    Optional,
}

/// Why [`Presented::establish`] refused a caller: its token (401) or its peer (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Token(TokenError),
    Peer(peer::PeerError),
}

/// What a check presented: the resolved peer and the outcome of authenticating its bearer
/// token, before the rules that depend on the route are applied ([`Presented::establish`]).
#[derive(Debug, Clone)]
pub struct Presented {
    /// The peer as resolved (only its address when it was refused).
    pub peer: Arc<Peer>,
    /// Why the peer was refused ([`Peer::resolve`]), if it was: decided after the token.
    pub peer_refused: Option<peer::PeerError>,
    /// The verified token, `None` without one, or why the one sent was refused.
    pub token: Result<Option<Arc<VerifiedToken>>, TokenError>,
    /// `authentication.require_token` with at least one issuer: the requirement of a route
    /// that does not set its own.
    pub token_required_by_default: bool,
}

impl Presented {
    /// A caller known only by its peer, with no token and none required (tests, tools).
    pub fn peer_only(peer: Peer) -> Self {
        Self {
            peer: Arc::new(peer),
            peer_refused: None,
            token: Ok(None),
            token_required_by_default: false,
        }
    }

    /// The identity rules, in order (authentication before authorization: every 401 before
    /// any 403, so a caller with a bad or missing token is told to authenticate, and learns
    /// nothing about routes or peers first):
    /// - a token that is present must be valid, on every route, whatever the route requires;
    /// - RFC 8705 §3: a certificate-bound token is valid only from the certificate it is bound
    ///   to, checked on every request (a cached token may be replayed from another workload);
    /// - a missing token is refused where the route (else the default) requires one;
    /// - a present token's claims must fit what the policy set declares (`claims_fit`: typed
    ///   claims, judged by the policy side);
    /// - then a refused peer (a bad certificate, a foreign trust domain) is a 403.
    pub fn establish(
        &self,
        route: Option<TokenRequirement>,
        claims_fit: impl FnOnce(&VerifiedToken) -> Result<(), TokenError>,
    ) -> Result<Identity, Refused> {
        let token = self.token.clone().map_err(Refused::Token)?;
        if let Some(token) = &token {
            token
                .check_binding(self.peer.cert_sha256.as_ref())
                .map_err(Refused::Token)?;
            claims_fit(token).map_err(Refused::Token)?;
        }
        let required = route.map_or(self.token_required_by_default, |r| {
            r == TokenRequirement::Required
        });
        if token.is_none() && required {
            return Err(Refused::Token(TokenError::Missing));
        }
        if let Some(err) = &self.peer_refused {
            return Err(Refused::Peer(err.clone()));
        }
        Ok(Identity {
            peer: self.peer.clone(),
            token,
        })
    }
}

/// The Cedar principal an identity maps to, before it becomes an entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal<'a> {
    /// The token's subject (`<principal_type>::"<sub>"`), member of its groups.
    Token(&'a VerifiedToken),
    /// A workload known by its SPIFFE ID (`Workload::"spiffe://…"`).
    Workload(&'a SpiffeId),
    /// Nobody we could identify (`Anonymous::"anonymous"`).
    Anonymous,
}

impl Identity {
    /// The token's subject when present, else the peer workload, else anonymous (README,
    /// "Cedar mapping").
    pub fn principal(&self) -> Principal<'_> {
        match (&self.token, &self.peer.spiffe_id) {
            (Some(token), _) => Principal::Token(token),
            (None, Some(id)) => Principal::Workload(id),
            (None, None) => Principal::Anonymous,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client_ip;

    #[test]
    fn the_client_ip_is_envoys_source_or_a_trusted_forwarded_entry() {
        let ip = |address: &str, xff: Option<&str>, hops| {
            client_ip(address, xff, hops).map(|ip| ip.to_string())
        };
        assert_eq!(ip("10.0.0.1:443", None, 0).as_deref(), Some("10.0.0.1"));
        assert_eq!(ip("[fd00::1]:443", None, 0).as_deref(), Some("fd00::1"));
        assert_eq!(ip("fd00::1", None, 0).as_deref(), Some("fd00::1"));
        assert_eq!(ip("/run/envoy.sock", None, 0), None);
        assert_eq!(ip("", Some("10.0.0.1"), 0), None, "not read without hops");
        let xff = Some("1.1.1.1, 2.2.2.2 ,3.3.3.3");
        assert_eq!(ip("9.9.9.9:1", xff, 1).as_deref(), Some("3.3.3.3"));
        assert_eq!(ip("9.9.9.9:1", xff, 3).as_deref(), Some("1.1.1.1"));
        assert_eq!(ip("9.9.9.9:1", xff, 4), None, "never the proxy's address");
        assert_eq!(ip("9.9.9.9:1", Some("1.1.1.1:80"), 1), None);
        assert_eq!(ip("9.9.9.9:1", None, 1), None);
        assert_eq!(
            ip("[::ffff:10.0.0.1]:443", None, 0).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            ip("", Some("::ffff:10.0.0.5"), 1).as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            ip("", Some("\u{a0}10.0.0.5"), 1),
            None,
            "only ASCII blanks are trimmed"
        );
    }
}
