//! The `identity_headers` section: the headers an allowed request carries to the upstream
//! (who was decided on, and how), under names the operator chooses, and token claims copied
//! into headers, as Envoy's `jwt_authn` `claim_to_headers` does. cedargate alone sets them: a
//! client's copy of any of these names (and of its `_` spelling) is removed on every allowed
//! request, set or not.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Problem;

/// The names of the identity headers, and the claims copied into headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The Cedar principal, in Cedar syntax (`User::"alice"`).
    pub principal: String,
    /// The Cedar action (`Action::"orders:list"`).
    pub action: String,
    /// The SPIFFE ID of the downstream peer, when it presented one.
    pub peer_spiffe_id: String,
    /// The verified token's `sub`, as the token says it.
    pub subject: String,
    /// The verified token's `iss`.
    pub issuer: String,
    /// `(claim, header)`: the value of a verified token's claim (a string as is; another JSON
    /// value as its JSON text) in a header.
    pub claims: Vec<(String, String)>,
}

/// Set on a request that passes only because its decision is not enforced (dry-run).
pub const DRY_RUN_HEADER: &str = "x-cedargate-dry-run";

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            principal: "x-cedargate-principal".into(),
            action: "x-cedargate-action".into(),
            peer_spiffe_id: "x-cedargate-peer-spiffe-id".into(),
            subject: "x-cedargate-subject".into(),
            issuer: "x-cedargate-issuer".into(),
            claims: Vec::new(),
        }
    }
}

impl IdentityHeaders {
    /// Every name cedargate sets, the default names too (an upstream may still read them
    /// after a rename), the dry-run header, and their `_` spellings (CGI, WSGI, Rack and PHP
    /// read `_` as `-`): removed from the client's request on every allowed one.
    pub fn reserved(&self) -> Vec<String> {
        let defaults = Self::default();
        let mut names: Vec<String> = self
            .own_names()
            .chain(defaults.own_names())
            .map(String::as_str)
            .chain([DRY_RUN_HEADER])
            .flat_map(|name| [name.to_owned(), name.replace('-', "_")])
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The names cedargate sets on an allowed request.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.own_names()
    }

    fn own_names(&self) -> impl Iterator<Item = &String> {
        [
            &self.principal,
            &self.action,
            &self.peer_spiffe_id,
            &self.subject,
            &self.issuer,
        ]
        .into_iter()
        .chain(self.claims.iter().map(|(_, header)| header))
    }
}

/// Headers cedargate never sets: what Envoy or the upstream needs to mean what the client or
/// Envoy said (framing, routing, credentials, tracing).
/// Families of such headers: Envoy's own, the forwarding family (`x-forwarded-uri`,
/// `-method`, `-prefix`, … name the original request to forward-auth servers and frameworks),
/// and the body's description.
const FORBIDDEN_PREFIXES: &[&str] = &["x-envoy-", "x-forwarded-", "content-"];

const FORBIDDEN: &[&str] = &[
    "host",
    "authorization",
    "proxy-authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-client-cert",
    "x-request-id",
    "traceparent",
    "tracestate",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentityHeaders {
    principal: Option<String>,
    action: Option<String>,
    peer_spiffe_id: Option<String>,
    subject: Option<String>,
    issuer: Option<String>,
    /// claim → header.
    #[serde(default)]
    claims: BTreeMap<String, String>,
}

pub(super) fn build(raw: RawIdentityHeaders, problems: &mut Vec<Problem>) -> IdentityHeaders {
    let RawIdentityHeaders {
        principal,
        action,
        peer_spiffe_id,
        subject,
        issuer,
        claims,
    } = raw;
    let defaults = IdentityHeaders::default();
    let headers = IdentityHeaders {
        principal: principal.unwrap_or(defaults.principal),
        action: action.unwrap_or(defaults.action),
        peer_spiffe_id: peer_spiffe_id.unwrap_or(defaults.peer_spiffe_id),
        subject: subject.unwrap_or(defaults.subject),
        issuer: issuer.unwrap_or(defaults.issuer),
        claims: claims.into_iter().collect(),
    };
    let named = [
        ("identity_headers.principal".to_owned(), &headers.principal),
        ("identity_headers.action".to_owned(), &headers.action),
        (
            "identity_headers.peer_spiffe_id".to_owned(),
            &headers.peer_spiffe_id,
        ),
        ("identity_headers.subject".to_owned(), &headers.subject),
        ("identity_headers.issuer".to_owned(), &headers.issuer),
    ]
    .into_iter()
    .chain(
        headers
            .claims
            .iter()
            .map(|(claim, header)| (format!("identity_headers.claims.{claim}"), header)),
    );
    let mut seen: Vec<String> = vec![DRY_RUN_HEADER.to_owned()];
    for (field, name) in named {
        let fix = if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Some("a header name in lower case: letters, digits and `-`")
        } else if FORBIDDEN.contains(&name.as_str())
            || FORBIDDEN_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            Some(
                "a header Envoy or the upstream reads as the client or Envoy said it (framing, routing, credentials, tracing): choose another name",
            )
        } else if seen.contains(name) {
            Some(
                "another identity header (or the dry-run header) has this name: choose one name per header",
            )
        } else {
            None
        };
        if let Some(fix) = fix {
            problems.push(Problem {
                field: field.into(),
                value: name.clone(),
                fix,
            });
        }
        seen.push(name.clone());
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (IdentityHeaders, Vec<Problem>) {
        let raw: RawIdentityHeaders = yaml_serde::from_str(yaml).unwrap();
        let mut problems = Vec::new();
        (build(raw, &mut problems), problems)
    }

    #[test]
    fn names_are_chosen_and_checked() {
        let (headers, problems) =
            parse("principal: x-principal\nclaims: { tenant: x-tenant-id, email: x-email }\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(headers.principal, "x-principal");
        assert_eq!(headers.subject, "x-cedargate-subject");
        assert_eq!(
            headers.claims,
            [
                ("email".to_owned(), "x-email".to_owned()),
                ("tenant".to_owned(), "x-tenant-id".to_owned())
            ]
        );
        let reserved = headers.reserved();
        for name in [
            "x-principal",
            "x_principal",
            "x-tenant-id",
            "x_email",
            DRY_RUN_HEADER,
        ] {
            assert!(reserved.contains(&name.to_owned()), "{name}: {reserved:?}");
        }

        let (_, problems) = parse(
            "principal: X-Principal\nsubject: authorization\nissuer: x-envoy-original-path\n\
             claims: { a: x-same, b: x-same, c: x-cedargate-dry-run }\n",
        );
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_ref()).collect();
        assert_eq!(
            fields,
            [
                "identity_headers.principal",
                "identity_headers.subject",
                "identity_headers.issuer",
                "identity_headers.claims.b",
                "identity_headers.claims.c",
            ]
        );
        // A whole family is refused, not only the names listed one by one.
        for name in ["x-forwarded-uri", "x-forwarded-method", "content-encoding"] {
            let (_, problems) = parse(&format!("subject: {name}\n"));
            assert_eq!(problems.len(), 1, "{name}");
        }
    }
}
