//! Entity data from the application, at run time (README, "Entity data from the
//! application"): the entities a check needs that only the application knows (the order and
//! its owner for `GET /orders/{id}`) are asked of an entity source before the decision, kept
//! in a bounded cache, and handed to the pure decision core with the request
//! ([`crate::request::Request::fetched`]).
//!
//! - [`EntitySource`]: a backend answers a batch of uids with Cedar entity JSON; the HTTP one
//!   ([`http::HttpSource`]) is the first, others implement the trait without touching the
//!   core.
//! - [`cache::EntityCache`]: per-type TTL, negative caching, one fetch per uid however many
//!   checks wait for it, keep-last-good within `max_stale`, and a deadline inside the check's.
//!
//! Only the uids asked for, of the configured types, are taken from an answer, validated
//! against the schema of the policy set in force; a static entity (`entities.json`) of the
//! same uid wins. An entity the source cannot give (it fails, and no copy within `max_stale`
//! is kept) makes the check a deny, 503 `entity_unavailable`, never an allow on missing data.

pub mod cache;
pub mod http;

use cedar_policy::{Entity, EntityUid};
use futures_util::future::BoxFuture;

/// A backend that answers for entities by uid.
pub trait EntitySource: Send + Sync {
    /// The entities among `uids` that exist, as Cedar entity JSON values (an array's
    /// elements); a uid left out of the answer does not exist.
    fn fetch<'a>(
        &'a self,
        uids: &'a [EntityUid],
    ) -> BoxFuture<'a, Result<Vec<serde_json::Value>, SourceError>>;
}

/// Why a fetch failed; each is counted (`cedargate_entity_fetch_failures_total{reason}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("the entity source did not answer in time")]
    Timeout,
    #[error("the entity source answered HTTP {0}")]
    Status(u16),
    #[error("the entity source's answer is over {0} bytes")]
    TooLarge(usize),
    #[error("the entity source's answer is not Cedar entity JSON: {0}")]
    Invalid(String),
    #[error("the entity source cannot be reached: {0}")]
    Unreachable(String),
}

impl SourceError {
    /// The `reason` label of the failure metric.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Status(_) => "status",
            Self::TooLarge(_) => "too_large",
            Self::Invalid(_) => "invalid",
            Self::Unreachable(_) => "unreachable",
        }
    }
}

/// The entity data fetched for one request: what the decision core adds to its entity store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Entities the source gave (or a kept copy), each with the uids its attributes and
    /// parents name (so that their static entries join the store).
    /// Shared with the cache that keeps them: a check takes a reference, not a copy.
    pub entities: Vec<std::sync::Arc<FetchedEntity>>,
    /// Uids of fetched types the source could not answer for: the check is denied.
    pub unavailable: Vec<EntityUid>,
    /// Every uid of a fetched type looked up (found or not), with the generation of the
    /// answer used: each answer the cache keeps has its own, so a verdict remembered on one
    /// answer is never recalled on another (they enter the decision cache's key).
    pub consulted: Vec<(EntityUid, u64)>,
}

/// One fetched entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedEntity {
    pub entity: Entity,
    /// The uids its attributes and parents name.
    pub names: Vec<EntityUid>,
}

/// The uids an entity's JSON names: its parents and every entity reference in its attributes
/// (`{"__entity": {"type", "id"}}` or the bare `{"type", "id"}` form). A superset is harmless:
/// it only brings more static entities into the store.
pub fn named_uids(json: &serde_json::Value) -> Vec<EntityUid> {
    let mut found = Vec::new();
    let mut stack: Vec<&serde_json::Value> = Vec::new();
    if let Some(attrs) = json.get("attrs") {
        stack.push(attrs);
    }
    if let Some(parents) = json.get("parents") {
        stack.push(parents);
    }
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                let reference = map.get("__entity").unwrap_or(value);
                if let (Some(ty), Some(id)) = (
                    reference.get("type").and_then(serde_json::Value::as_str),
                    reference.get("id").and_then(serde_json::Value::as_str),
                ) && let Ok(ty) = ty.parse::<cedar_policy::EntityTypeName>()
                {
                    found.push(EntityUid::from_type_name_and_id(
                        ty,
                        cedar_policy::EntityId::new(id),
                    ));
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    found.sort_unstable_by_key(ToString::to_string);
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::named_uids;

    #[test]
    fn the_uids_an_entity_names_are_found_in_parents_and_attributes() {
        let json = serde_json::json!({
            "uid": { "type": "Order", "id": "1" },
            "attrs": {
                "owner": { "__entity": { "type": "User", "id": "alice" } },
                "team": { "type": "Group", "id": "ops" },
                "deep": [ { "x": { "__entity": { "type": "User", "id": "bob" } } } ],
                "label": "type"
            },
            "parents": [ { "type": "Shop", "id": "s1" } ]
        });
        let found: Vec<String> = named_uids(&json).iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                r#"Group::"ops""#,
                r#"Shop::"s1""#,
                r#"User::"alice""#,
                r#"User::"bob""#
            ]
        );
    }
}
