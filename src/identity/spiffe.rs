//! SPIFFE IDs (`spiffe://trust-domain/path`), parsed exactly as the SPIFFE-ID specification §2
//! says: lowercase trust domain of `[a-z0-9.-_]`, path segments of `[A-Za-z0-9.-_]`, no empty,
//! `.` or `..` segment, no query, fragment, port or user info, at most 2048 bytes.

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpiffeError {
    #[error("a SPIFFE ID starts with `spiffe://`")]
    Scheme,
    #[error("a SPIFFE ID is at most 2048 bytes")]
    TooLong,
    #[error("the trust domain is empty or has a character outside [a-z0-9.-_]")]
    TrustDomain,
    #[error("the path has an empty, `.` or `..` segment, or a character outside [A-Za-z0-9.-_]")]
    Path,
}

/// A valid SPIFFE ID; its trust domain is the part between `spiffe://` and the path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: String,
    trust_domain_len: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeError> {
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeError::Scheme)?;
        if s.len() > 2048 {
            return Err(SpiffeError::TooLong);
        }
        let (domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let domain_ok = !domain.is_empty()
            && domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !domain_ok {
            return Err(SpiffeError::TrustDomain);
        }
        if !path.is_empty() {
            let segments_ok = path.split('/').skip(1).all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            });
            if !segments_ok {
                return Err(SpiffeError::Path);
            }
        }
        Ok(Self {
            id: s.to_owned(),
            trust_domain_len: domain.len(),
        })
    }

    /// True when `uri`'s scheme is `spiffe` in any case (`SPIFFE://…`, `spiffe:/…`): such a
    /// URI claims to be a SPIFFE ID and must be a valid one, never be read as another kind of
    /// name (which would skip the trust-domain checks).
    pub fn claims_to_be(uri: &str) -> bool {
        uri.split_once(':')
            .is_some_and(|(scheme, _)| scheme.trim().eq_ignore_ascii_case("spiffe"))
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn trust_domain(&self) -> &str {
        self.id
            .get(SCHEME.len()..SCHEME.len() + self.trust_domain_len)
            .unwrap_or_default()
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_per_spec() {
        let id = SpiffeId::parse("spiffe://prod.example.org/ns/shop/sa/checkout").unwrap();
        assert_eq!(id.trust_domain(), "prod.example.org");
        assert_eq!(id.as_str(), "spiffe://prod.example.org/ns/shop/sa/checkout");
        assert_eq!(SpiffeId::parse("spiffe://td").unwrap().trust_domain(), "td");

        let bad: &[(&str, SpiffeError)] = &[
            ("https://td/x", SpiffeError::Scheme),
            ("spiffe://", SpiffeError::TrustDomain),
            ("spiffe://TD/x", SpiffeError::TrustDomain),
            ("spiffe://td:443/x", SpiffeError::TrustDomain),
            ("spiffe://user@td/x", SpiffeError::TrustDomain),
            ("spiffe://td/", SpiffeError::Path),
            ("spiffe://td/a//b", SpiffeError::Path),
            ("spiffe://td/a/../b", SpiffeError::Path),
            ("spiffe://td/a?x=1", SpiffeError::Path),
            ("spiffe://td/a#f", SpiffeError::Path),
        ];
        for (input, err) in bad {
            assert_eq!(SpiffeId::parse(input).as_ref(), Err(err), "{input}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2048));
        assert_eq!(SpiffeId::parse(&long), Err(SpiffeError::TooLong));
    }
}
