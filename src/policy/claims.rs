//! Typed claims: a verified token's claims converted to the record the snapshot's schema
//! declares for `context.token.claims` ([`super::shapes`]), once per token and snapshot and
//! cached with the token. A claim of the wrong type, or a required claim that is missing,
//! makes the token invalid for this policy set (a 401 naming the claim, judged with the other
//! token rules before any 403); undeclared claims are dropped. A schema that declares
//! `claims: TokenClaims` (an entity with string tags) keeps the tag form, and nothing here
//! runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use cedar_policy::RestrictedExpression;

use super::Snapshot;
use super::reads::Reads;
use crate::identity::{TokenError, VerifiedToken};

/// A token's declared claims, converted.
#[derive(Debug)]
pub struct TypedClaims(BTreeMap<String, RestrictedExpression>);

impl TypedClaims {
    /// The `context.token.claims` record, with only the claims a policy can read.
    pub fn record(&self, reads: &Reads) -> Option<RestrictedExpression> {
        super::shapes::readable_record(&self.0, |path| reads.context(path), &["token", "claims"])
    }
}

/// The token's claims in the form the snapshot declares: `None` for the tag form.
pub fn typed(
    snapshot: &Snapshot,
    token: &VerifiedToken,
) -> Result<Option<Arc<TypedClaims>>, TokenError> {
    let Some(declared) = &snapshot.reads.claims else {
        return Ok(None);
    };
    type Converted = Result<Arc<TypedClaims>, TokenError>;
    let converted = match token.typed_claims.get::<Converted>(snapshot.id) {
        Some(converted) => converted,
        None => {
            let converted: Converted = declared
                .convert(&token.claims_json)
                .map(|claims| Arc::new(TypedClaims(claims)))
                .map_err(|err| TokenError::InvalidClaim {
                    claim: err.path().to_owned(),
                    problem: err.problem(),
                });
            let converted = Arc::new(converted);
            token.typed_claims.set(snapshot.id, Arc::clone(&converted));
            converted
        }
    };
    Converted::clone(&converted).map(Some)
}
