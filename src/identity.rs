//! Who is asking: the workload behind the connection Envoy saw (and, with the JWT issue, the
//! subject of a bearer token). Owns the typed [`Identity`] the Cedar mapping reads; never sees
//! protobuf types and never decides.

pub mod authn;
pub mod jwks;
pub mod spiffe;
pub mod token;
pub mod token_cache;

use std::sync::Arc;

pub use spiffe::SpiffeId;
pub use token::VerifiedToken;

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
}

impl Peer {
    /// Builds the peer from Envoy's `source.principal` and socket address.
    pub fn from_envoy(principal: String, address: String) -> Self {
        let spiffe_id = SpiffeId::parse(&principal).ok();
        Self {
            principal,
            spiffe_id,
            address,
        }
    }

    /// True when the peer presented an identity (a verified certificate).
    pub fn is_present(&self) -> bool {
        !self.principal.is_empty()
    }
}

/// Everything known about the caller of one Check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub peer: Peer,
    /// The verified bearer token, when the request carried one.
    pub token: Option<Arc<VerifiedToken>>,
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
    /// DESIGN.md: the token's subject when present, else the peer workload, else anonymous.
    pub fn principal(&self) -> Principal<'_> {
        match (&self.token, &self.peer.spiffe_id) {
            (Some(token), _) => Principal::Token(token),
            (None, Some(id)) => Principal::Workload(id),
            (None, None) => Principal::Anonymous,
        }
    }
}
