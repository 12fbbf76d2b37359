//! Maps a normalised request and the caller's identity into a Cedar request: principal, action,
//! resource, context and the per-request entities (README, "Cedar mapping").
//!
//! - principal: the token's subject (`User::"<sub>"`, or the issuer's `principal_type`) in its
//!   groups (`Group::"<name>"`), else the peer workload (`Workload::"spiffe://…"`, attribute
//!   `trust_domain`), else `Anonymous::"anonymous"`;
//! - action and resource: Envoy's per-route `context_extensions` (`cedargate.action`,
//!   `cedargate.resource`) first, then the route table, then `Action::"<METHOD>"` and
//!   `Path::"<path>"`;
//! - context: `request` (method, host, path, scheme, protocol, id, and `headers`, `query`,
//!   `params` as entities whose tags hold the values), `peer` (present, principal, address,
//!   spiffe_id?, trust_domain?), `token?` (issuer, subject, audience and scope as sets,
//!   expires_at, and `claims`, an entity whose tags are the claims) and `time` (epoch seconds).
//!
//! The context's shape and the shapes of the entities built per request are checked against
//! the schema when the policy set loads, so nothing is validated per check. With
//! [`Build::Read`] (the hot path) only what the policies can read is built
//! ([`super::reads`]), and a token's principal, groups, claims, reachable static entities (as
//! one Cedar store, its ancestor closure computed) and (when nothing in it varies per request)
//! context are built once per policy snapshot and cached with the token; a check adds only
//! the resource's side and the request helpers to that store. Request text only ever becomes
//! entity ids, strings or tags: it is never parsed as Cedar.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression, Schema,
};

use super::Snapshot;
use super::body::Body;
use super::decisions::{Decisions, Input, Kept, Key, KeyWriter};
use super::engine::{CedarCall, Verdict};
use super::reads::{Facts, Reads};
use super::routes::{RouteMatch, action_uid};
use super::shapes::Record;
use crate::identity::{Identity, Principal};
use crate::request::{Destination, HttpRequest, Request};

type CedarRequest = cedar_policy::Request;

/// `context_extensions` key that names the action of an Envoy route.
pub const EXTENSION_ACTION: &str = "cedargate.action";
/// `context_extensions` key that names the resource of an Envoy route, in Cedar syntax.
pub const EXTENSION_RESOURCE: &str = "cedargate.resource";

/// Why a request could not become a Cedar request; every variant is a deny.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("action `{0}` is not declared in the schema")]
    UnknownAction(String),
    #[error("context extension `{key}` = `{value}` is not a valid Cedar {what}")]
    BadExtension {
        key: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("the request does not fit the schema: {0}")]
    Invalid(String),
    #[error("the action does not apply to this principal or resource: {0}")]
    NotApplicable(String),
    #[error("path `{0}` matches a route or a `Path::` of the policies only when case is ignored")]
    NearMiss(String),
}

impl MappingError {
    /// True when no action declared in the schema matches the request (an unknown route).
    pub fn is_unknown_action(&self) -> bool {
        matches!(
            self,
            Self::UnknownAction(_) | Self::NotApplicable(_) | Self::NearMiss(_)
        )
    }
}

/// What a mapping leads to: a verdict this token already got on exactly these inputs, or a
/// Cedar call to evaluate.
// One value per check, moved once: boxing the call would add an allocation to every evaluation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Mapped {
    /// The verdict Cedar gave this token under this snapshot on the same inputs
    /// ([`super::decisions`]).
    Recalled {
        principal: EntityUid,
        action: EntityUid,
        resource: EntityUid,
        verdict: Verdict,
    },
    /// A Cedar call, and where its verdict is remembered (when it may be).
    Call {
        call: CedarCall,
        remember: Option<Remember>,
    },
}

/// Where the verdict of a [`Mapped::Call`] is remembered: its token's decisions under the
/// snapshot, under the call's key.
#[derive(Debug)]
pub struct Remember {
    principal: std::sync::Arc<PrincipalParts>,
    key: Key,
}

impl Remember {
    pub fn keep(self, verdict: &Verdict) -> Kept {
        match &self.principal.decisions {
            Some(decisions) => decisions.keep(self.key, verdict),
            None => Kept::Off,
        }
    }
}

/// Helper entity types whose tags carry request maps.
const HEADERS_TYPE: &str = "HttpHeaders";
const QUERY_TYPE: &str = "HttpQuery";
const PARAMS_TYPE: &str = "PathParams";
const CLAIMS_TYPE: &str = "TokenClaims";
/// Envoy's per-route `context_extensions` as tags (an optional fact).
const EXTENSIONS_TYPE: &str = "ContextExtensions";
/// The `cedargate` namespace of Envoy's route metadata as tags (an optional fact).
const ROUTE_METADATA_TYPE: &str = "RouteMetadata";
/// The type of the fallback resource, a request path no route maps.
pub const PATH_TYPE: &str = "Path";
const HELPER_ID: &str = "request";
/// The types of the entities cedargate builds per request to carry maps as tags.
pub const HELPER_TYPES: [&str; 6] = [
    HEADERS_TYPE,
    QUERY_TYPE,
    PARAMS_TYPE,
    CLAIMS_TYPE,
    EXTENSIONS_TYPE,
    ROUTE_METADATA_TYPE,
];

/// The pieces of a Cedar request before its entity store is assembled.
struct Parts {
    principal: std::sync::Arc<PrincipalParts>,
    action: EntityUid,
    resource: EntityUid,
    context: Context,
    /// The helper entities built for this request (headers, query, path parameters).
    helpers: Vec<Entity>,
    /// The values of `context` and `helpers` that differ per request.
    key: KeyWriter,
}

impl Parts {
    /// The entities of this request: the principal's (merged with its static entry, and the
    /// claims) and the helpers.
    fn own_entities(&self) -> Vec<Entity> {
        let mut own = Vec::with_capacity(self.principal.entities.len() + self.helpers.len());
        own.extend(self.principal.entities.iter().cloned());
        own.extend(self.helpers.iter().cloned());
        own
    }

    /// The Cedar request (validated against `schema` when given) with its entity store.
    fn into_call(
        self,
        entities: std::sync::Arc<Entities>,
        schema: Option<&Schema>,
    ) -> Result<CedarCall, MappingError> {
        let principal = self.principal.uid.clone();
        let request = CedarRequest::new(
            principal.clone(),
            self.action.clone(),
            self.resource.clone(),
            self.context,
            schema,
        )
        .map_err(|e| MappingError::NotApplicable(e.to_string()))?;
        Ok(CedarCall {
            principal,
            action: self.action,
            resource: self.resource,
            request,
            entities,
        })
    }
}

/// How much of the per-request data a mapping builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// Only what the snapshot's policies can read ([`Snapshot::reads`]); a token's principal
    /// entities are built once per snapshot and cached with the token. The hot path.
    Read,
    /// The whole context and every tag (Explain shows it; the reference builds it).
    Everything,
}

/// Builds the Cedar request for one Check: its entity store holds the per-request entities
/// and the static entities the evaluation can reach ([`super::index::EntityGraph`]), and the
/// request is checked against the schema's `appliesTo` from the precomputed index (the
/// context's shape is checked for every action when the policy set loads). With a token's
/// cached parts, a verdict the token already got on the same inputs is recalled instead
/// ([`super::decisions`]).
pub fn map(
    snapshot: &Snapshot,
    request: &Request,
    body: Option<&Body>,
    route: Option<RouteMatch<'_>>,
    identity: &Identity,
    now: i64,
    build: Build,
) -> Result<Mapped, MappingError> {
    let mut parts = parts(snapshot, request, body, route, identity, now, build)?;
    if !snapshot.index.applies(
        &parts.action,
        parts.principal.uid.type_name(),
        parts.resource.type_name(),
    ) {
        return Err(MappingError::NotApplicable(format!(
            "{} does not apply to a {} principal and a {} resource",
            parts.action,
            parts.principal.uid.type_name(),
            parts.resource.type_name()
        )));
    }
    if let Some(group) = parts.principal.groups.first()
        && !snapshot
            .index
            .may_join(parts.principal.uid.type_name(), group.type_name())
    {
        return Err(MappingError::Invalid(format!(
            "the token names groups, but the schema does not let a {} be in a {}",
            parts.principal.uid.type_name(),
            group.type_name()
        )));
    }
    // Data fetched from the application changes between two checks with the same inputs:
    // the answers used are inputs too, each by its generation (unique to one answer for one
    // uid, process-wide, so the uid need not be written).
    for (_, generation) in &request.fetched.consulted {
        parts.key.number(Input::Fetched, *generation);
    }
    // Only a token's cached parts have decisions; the key holds every value built above.
    let remember = match &parts.principal.decisions {
        Some(decisions) => {
            let key = std::mem::take(&mut parts.key).finish(&parts.action, &parts.resource);
            if let Some(verdict) = key.as_ref().and_then(|key| decisions.recall(key)) {
                return Ok(Mapped::Recalled {
                    principal: parts.principal.uid.clone(),
                    action: parts.action,
                    resource: parts.resource,
                    verdict,
                });
            }
            key.map(|key| Remember {
                principal: std::sync::Arc::clone(&parts.principal),
                key,
            })
        }
        None => None,
    };
    let entities = match (&parts.principal.store, &parts.principal.statics) {
        // The principal's side is cached with its token as a store whose closure is already
        // computed: only the action's and the resource's statics and the helpers are added,
        // and Cedar repairs the closure of what was added, not of the whole store.
        (Some(store), Some(statics)) => {
            let mut seeds = vec![parts.action.clone(), parts.resource.clone()];
            seeds.extend(fetched_names(request));
            let mut extra: Vec<Entity> = snapshot
                .graph
                .subset_beyond(&snapshot.entities, seeds, statics)
                .into_iter()
                .filter(|e| {
                    store.get(&e.uid()).is_none()
                        && !parts.helpers.iter().any(|h| h.uid() == e.uid())
                })
                .collect();
            extra.append(&mut parts.helpers);
            let fetched: Vec<Entity> = fetched_entities(snapshot, request, |uid| {
                store.get(uid).is_some() || extra.iter().any(|e| &e.uid() == uid)
            })
            .collect();
            extra.extend(fetched);
            if extra.is_empty() {
                std::sync::Arc::clone(store)
            } else {
                std::sync::Arc::new(
                    Entities::clone(store)
                        .add_entities(extra, None)
                        .map_err(invalid)?,
                )
            }
        }
        _ => {
            let mut seeds = Vec::with_capacity(3 + parts.principal.groups.len());
            seeds.extend([
                parts.principal.uid.clone(),
                parts.action.clone(),
                parts.resource.clone(),
            ]);
            seeds.extend(parts.principal.groups.iter().cloned());
            seeds.extend(fetched_names(request));
            let mut list = snapshot.graph.subset(&snapshot.entities, seeds);
            // The request's own entities replace static ones of the same uid (the principal
            // is already merged with its static entry).
            let own = parts.own_entities();
            list.retain(|e| !own.iter().any(|p| p.uid() == e.uid()));
            list.extend(own);
            let fetched: Vec<Entity> = fetched_entities(snapshot, request, |uid| {
                list.iter().any(|e| &e.uid() == uid)
            })
            .collect();
            list.extend(fetched);
            std::sync::Arc::new(Entities::from_entities(list, None).map_err(invalid)?)
        }
    };
    // Checked above against the index: appliesTo here, the context's shape at load time.
    Ok(Mapped::Call {
        call: parts.into_call(entities, None)?,
        remember,
    })
}

/// The reference mapping the hot path is tested against: everything built, the whole static
/// store plus the per-request entities (validated against the schema), and the request
/// validated against the schema by Cedar. Same decisions as [`map`], slower (a copy of every
/// static entity).
pub fn map_with_whole_store(
    snapshot: &Snapshot,
    request: &Request,
    body: Option<&Body>,
    route: Option<RouteMatch<'_>>,
    identity: &Identity,
    now: i64,
) -> Result<CedarCall, MappingError> {
    let parts = parts(
        snapshot,
        request,
        body,
        route,
        identity,
        now,
        Build::Everything,
    )?;
    let own = parts.own_entities();
    let fetched: Vec<Entity> =
        fetched_entities(snapshot, request, |uid| own.iter().any(|e| &e.uid() == uid)).collect();
    let entities = snapshot
        .entities
        .clone()
        .upsert_entities(own.into_iter().chain(fetched), Some(&snapshot.schema))
        .map_err(invalid)?;
    parts.into_call(std::sync::Arc::new(entities), Some(&snapshot.schema))
}

fn parts(
    snapshot: &Snapshot,
    request: &Request,
    body: Option<&Body>,
    route: Option<RouteMatch<'_>>,
    identity: &Identity,
    now: i64,
    build: Build,
) -> Result<Parts, MappingError> {
    let names = names()?;
    let everything = snapshot.reads.widened();
    let reads = match build {
        Build::Read => &snapshot.reads,
        Build::Everything => &everything,
    };
    let Request {
        http,
        destination,
        extensions,
        route_metadata,
        body: _,
        fetched: _,
    } = request;
    let action = action_of(snapshot, request, route.as_ref())?;

    let resource = resource(snapshot, request, route.as_ref(), names)?;
    let params = route.map(|m| m.params).unwrap_or_default();

    let principal = principal_parts(
        snapshot,
        identity,
        fetched_principal(request, identity),
        reads,
        build,
    )?;
    let mut key = KeyWriter::default();
    let context = match &principal.context {
        Some(context) => context.clone(),
        None => {
            let values = Values {
                claims: principal.claims.as_ref(),
                body,
            };
            context(
                http,
                destination,
                identity,
                values,
                now,
                reads,
                names,
                &mut key,
            )?
        }
    };
    // The helper entities whose tags carry request maps, when a policy can read their tags.
    let mut helpers = Vec::new();
    let built = Helpers::built(reads);
    if built.headers {
        let headers = &http.headers;
        helpers.push(tagged(
            &names.headers,
            headers,
            reads,
            Some((Input::Header, &mut key)),
        )?);
    }
    if built.query {
        helpers.push(tagged(
            &names.query,
            &http.query,
            reads,
            Some((Input::Query, &mut key)),
        )?);
    }
    if built.params {
        helpers.push(tagged(
            &names.params,
            params.iter().map(|(k, v)| (k, v)),
            reads,
            Some((Input::Param, &mut key)),
        )?);
    }
    if built.extensions {
        helpers.push(tagged(
            &names.extensions,
            extensions,
            reads,
            Some((Input::Extension, &mut key)),
        )?);
    }
    if built.route_metadata {
        helpers.push(tagged(
            &names.route_metadata,
            route_metadata,
            reads,
            Some((Input::RouteMetadata, &mut key)),
        )?);
    }
    Ok(Parts {
        principal,
        action,
        resource,
        context,
        helpers,
        key,
    })
}

/// The request's resource: Envoy's `cedargate.resource` context extension, else the route's
/// resource, else `Path::"<path>"`; a path a `Path::` literal names but for case is refused.
fn resource(
    snapshot: &Snapshot,
    request: &Request,
    route: Option<&RouteMatch<'_>>,
    names: &Names,
) -> Result<EntityUid, MappingError> {
    let path = &request.http.path;
    match request.extensions.get(EXTENSION_RESOURCE) {
        Some(text) => EntityUid::from_str(text).map_err(|_| MappingError::BadExtension {
            key: EXTENSION_RESOURCE,
            value: text.clone(),
            what: "entity uid",
        }),
        None => match route.and_then(|m| m.resource.clone()) {
            Some(uid) => Ok(uid),
            None if snapshot.path_literals.near_miss(path) => {
                Err(MappingError::NearMiss(crate::text::clip(path)))
            }
            None => Ok(EntityUid::from_type_name_and_id(
                names.path.clone(),
                EntityId::new(path),
            )),
        },
    }
}

/// The request's resource as the mapping will name it, when it can be named.
pub fn resource_of(
    snapshot: &Snapshot,
    request: &Request,
    route: Option<&RouteMatch<'_>>,
) -> Option<EntityUid> {
    resource(snapshot, request, route, names().ok()?).ok()
}

/// The declared action of a request: Envoy's `cedargate.action`, else the route's, else the
/// method.
fn action_of(
    snapshot: &Snapshot,
    request: &Request,
    route: Option<&RouteMatch<'_>>,
) -> Result<EntityUid, MappingError> {
    let action = match request.extensions.get(EXTENSION_ACTION) {
        Some(name) => action_uid(name).ok_or_else(|| MappingError::BadExtension {
            key: EXTENSION_ACTION,
            value: name.clone(),
            what: "action",
        })?,
        None => match route {
            Some(m) => m.action.clone(),
            None => action_uid(&request.http.method).ok_or_else(|| {
                MappingError::UnknownAction(crate::text::clip(&request.http.method))
            })?,
        },
    };
    if !snapshot.index.is_action(&action) {
        return Err(MappingError::UnknownAction(crate::text::clip(
            &action.to_string(),
        )));
    }
    Ok(action)
}

/// The resource and the principal of a request whose declared action applies to them (else
/// the request is refused before any policy, and needs no entity): what a check may ask the
/// entity source for. No principal for an anonymous caller.
pub fn entities_wanted(
    snapshot: &Snapshot,
    request: &Request,
    route: Option<&RouteMatch<'_>>,
    identity: &Identity,
) -> Vec<EntityUid> {
    let (Ok(action), Some(resource)) = (
        action_of(snapshot, request, route),
        resource_of(snapshot, request, route),
    ) else {
        return Vec::new();
    };
    let Ok((principal, entity, _)) = names().and_then(|names| principal(identity, names)) else {
        return Vec::new();
    };
    if !snapshot
        .index
        .applies(&action, principal.type_name(), resource.type_name())
    {
        return Vec::new();
    }
    // An anonymous caller has no entity to ask for.
    let principal = entity.map(|_| principal);
    std::iter::once(resource).chain(principal).collect()
}

/// The entity of the caller's principal, when it has one (not an anonymous caller): what a
/// check may ask the entity source for besides its resource.
pub fn principal_of(identity: &Identity) -> Option<EntityUid> {
    match principal(identity, names().ok()?) {
        Ok((uid, Some(_), _)) => Some(uid),
        _ => None,
    }
}

/// The principal's entity as the entity source answered it, when the check fetched it.
fn fetched_principal<'a>(request: &'a Request, identity: &Identity) -> Option<&'a Entity> {
    if request.fetched.entities.is_empty() {
        return None;
    }
    let uid = principal_of(identity)?;
    request
        .fetched
        .entities
        .iter()
        .map(|f| &f.entity)
        .find(|e| e.uid() == uid)
}

/// The fetched entities a check adds to its store: those without a static entry of the same
/// uid (a static entity wins) and not among `taken` (already in the store).
fn fetched_entities<'a>(
    snapshot: &'a Snapshot,
    request: &'a Request,
    taken: impl Fn(&EntityUid) -> bool + 'a,
) -> impl Iterator<Item = Entity> + 'a {
    request
        .fetched
        .entities
        .iter()
        .map(|f| &f.entity)
        .filter(move |e| {
            let uid = e.uid();
            snapshot.entities.get(&uid).is_none() && !taken(&uid)
        })
        .cloned()
}

/// The uids the fetched entities name, whose static entries join the store.
fn fetched_names(request: &Request) -> impl Iterator<Item = EntityUid> + '_ {
    request
        .fetched
        .entities
        .iter()
        .flat_map(|f| f.names.iter().cloned())
}

/// Which request helper entities a check builds: those whose tags a policy can read. The same
/// for every check of a snapshot.
struct Helpers {
    headers: bool,
    query: bool,
    params: bool,
    extensions: bool,
    route_metadata: bool,
}

impl Helpers {
    fn built(reads: &Reads) -> Self {
        let wanted = |field: &str, helper: &str| reads.helper(&["request", field], helper);
        Self {
            headers: wanted("headers", HEADERS_TYPE),
            query: wanted("query", QUERY_TYPE),
            params: wanted("params", PARAMS_TYPE),
            extensions: reads.facts.extensions && wanted("extensions", EXTENSIONS_TYPE),
            route_metadata: reads.facts.route_metadata
                && wanted("route_metadata", ROUTE_METADATA_TYPE),
        }
    }

    /// The uids of the helpers built, which replace static entities of the same uid.
    fn uids<'a>(&self, names: &'a Names) -> impl Iterator<Item = &'a EntityUid> + use<'a> {
        [
            (self.headers, &names.headers),
            (self.query, &names.query),
            (self.params, &names.params),
            (self.extensions, &names.extensions),
            (self.route_metadata, &names.route_metadata),
        ]
        .into_iter()
        .filter_map(|(built, uid)| built.then_some(uid))
    }
}

/// A request's principal with the entities that come with it: the principal merged with its
/// static entry, and for a token the claims entity; its groups seed the reachable store. For
/// a token with [`Build::Read`], built once per snapshot and cached with the token, together
/// with the static entities its side reaches and, when the policies read nothing of the
/// context that varies per request ([`Reads::context_varies`]), the context itself.
#[derive(Debug)]
struct PrincipalParts {
    uid: EntityUid,
    entities: Vec<Entity>,
    groups: Vec<EntityUid>,
    /// The static entities the principal, its groups and the policies' literals reach.
    statics: Option<Vec<Entity>>,
    /// `entities` and `statics` (less those a check's own entities replace) as one Cedar
    /// store, its closure computed once; cached with `statics`.
    store: Option<std::sync::Arc<Entities>>,
    /// The whole context, when it is the same for every request of this token.
    context: Option<Context>,
    /// The typed claims record of `context.token.claims` (only what a policy can read), when
    /// the schema declares one.
    claims: Option<RestrictedExpression>,
    /// The verdicts this token got under this snapshot; cached with `store`.
    decisions: Option<Decisions>,
}

fn principal_parts(
    snapshot: &Snapshot,
    identity: &Identity,
    fetched: Option<&Entity>,
    reads: &Reads,
    build: Build,
) -> Result<std::sync::Arc<PrincipalParts>, MappingError> {
    let names = names()?;
    let fresh = |cached: bool| -> Result<PrincipalParts, MappingError> {
        let (uid, entity, groups) = principal(identity, names)?;
        let mut entities: Vec<Entity> = entity
            .map(|e| with_static(snapshot, e))
            .transpose()?
            .map(|e| match fetched {
                Some(fetched) => with_fetched(e, fetched),
                None => Ok(e),
            })
            .transpose()?
            .into_iter()
            .collect();
        let mut claims = None;
        if let Some(token) = &identity.token {
            if reads.claims.is_some() {
                // Judged before the mapping (`decide.rs`): a token that does not fit is a 401.
                let typed = super::claims::typed(snapshot, token).map_err(invalid)?;
                claims = typed.and_then(|typed| typed.record(reads));
            } else if reads.helper(&["token", "claims"], CLAIMS_TYPE) {
                entities.push(tagged(&names.claims, &token.claims, reads, None)?);
            }
        }
        let (statics, store, context, decisions) = match (cached, &identity.token) {
            (true, Some(_)) => {
                let mut seeds = Vec::with_capacity(1 + groups.len());
                seeds.push(uid.clone());
                seeds.extend(groups.iter().cloned());
                let statics = snapshot.graph.subset(&snapshot.entities, seeds);
                // What `map` would assemble per check from this side: the statics that no
                // entity of the check replaces (the principal, the claims, the helpers the
                // snapshot builds), then the principal's own.
                let helpers: Vec<&EntityUid> = Helpers::built(reads).uids(names).collect();
                let mut list: Vec<Entity> = statics
                    .iter()
                    .filter(|e| {
                        let uid = e.uid();
                        !entities.iter().any(|p| p.uid() == uid) && !helpers.contains(&&uid)
                    })
                    .cloned()
                    .collect();
                list.extend(entities.iter().cloned());
                let store = Entities::from_entities(list, None).map_err(invalid)?;
                // Nothing of the request is read when the context is the same for every one.
                let (unread, nowhere) = (&HttpRequest::default(), &Destination::default());
                let context = (!reads.context_varies())
                    .then(|| {
                        let mut key = KeyWriter::default();
                        let values = Values {
                            claims: claims.as_ref(),
                            body: None,
                        };
                        context(unread, nowhere, identity, values, 0, reads, names, &mut key)
                    })
                    .transpose()?;
                let decisions = Decisions::new(std::sync::Arc::clone(&snapshot.decisions));
                (
                    Some(statics),
                    Some(std::sync::Arc::new(store)),
                    context,
                    Some(decisions),
                )
            }
            _ => (None, None, None, None),
        };
        Ok(PrincipalParts {
            uid,
            entities,
            groups,
            statics,
            store,
            context,
            claims,
            decisions,
        })
    };
    match (&identity.token, build) {
        // A principal fetched from the entity source differs from one answer to the next:
        // built per check, not cached with the token (the answer's generation keys the
        // decision cache, which such a check does not use).
        (Some(token), Build::Read) if fetched.is_none() => {
            if let Some(parts) = token.cedar.get::<PrincipalParts>(snapshot.id) {
                return Ok(parts);
            }
            let parts = std::sync::Arc::new(fresh(true)?);
            token.cedar.set(snapshot.id, std::sync::Arc::clone(&parts));
            Ok(parts)
        }
        _ => Ok(std::sync::Arc::new(fresh(false)?)),
    }
}

/// Checks that the entities cedargate builds per request (the helper entities with string
/// tags, a workload with its trust domain) conform to `schema`, so that they need no
/// validation per request. `None` when they do.
pub fn check_entity_shapes(schema: &Schema, typed_claims: bool) -> Option<String> {
    let tags = [("name".to_owned(), "value".to_owned())];
    let everything = Reads::everything();
    let claims = (!typed_claims).then_some(CLAIMS_TYPE);
    let mut samples: Vec<Entity> = [HEADERS_TYPE, QUERY_TYPE, PARAMS_TYPE]
        .into_iter()
        .chain(claims)
        .filter_map(|t| uid(t, HELPER_ID).ok())
        .filter_map(|u| tagged(&u, tags.iter().map(|(k, v)| (k, v)), &everything, None).ok())
        .collect();
    let workload_declared = schema.entity_types().any(|t| t.to_string() == "Workload");
    if workload_declared {
        let id = crate::identity::SpiffeId::parse("spiffe://example.org/sample").ok()?;
        let identity = Identity {
            peer: std::sync::Arc::new(crate::identity::Peer {
                spiffe_id: Some(id),
                ..Default::default()
            }),
            token: None,
        };
        if let Ok((_, Some(entity), _)) = names().and_then(|n| principal(&identity, n)) {
            samples.push(entity);
        }
    }
    Entities::from_entities(samples, Some(schema))
        .err()
        .map(|err| err.to_string())
}

/// The optional context facts `schema` declares: the largest set of them with which every
/// action's context accepts the context cedargate builds (a schema written before a fact
/// existed does not accept it, and still loads without it; a schema may also require one).
/// `None` when no set fits: the schema does not accept cedargate's context at all.
pub fn supported_facts(schema: &Schema, claims: Option<&Arc<Record>>) -> Option<Facts> {
    let extensions_fit = tags_fit(schema, EXTENSIONS_TYPE);
    let route_metadata_fit = tags_fit(schema, ROUTE_METADATA_TYPE);
    let fits = |facts: &Facts| {
        (extensions_fit || !facts.extensions)
            && (route_metadata_fit || !facts.route_metadata)
            && check_schema(schema, *facts, claims).is_empty()
    };
    let all = Facts::ALL;
    let none = Facts::default();
    // Each check validates every action's context: a schema of thousands of actions makes
    // them count at load. The common cases take one check (a schema with every fact) or six
    // (a schema from before them); only a schema that requires some facts and lacks others
    // searches every combination.
    if fits(&all) {
        return Some(all);
    }
    if fits(&none) {
        let one = |pick: fn(&mut Facts)| {
            let mut facts = none;
            pick(&mut facts);
            fits(&facts)
        };
        let union = Facts {
            peer_ip: one(|f| f.peer_ip = true),
            destination: one(|f| f.destination = true),
            extensions: one(|f| f.extensions = true),
            route_metadata: one(|f| f.route_metadata = true),
        };
        return Some(if fits(&union) { union } else { none });
    }
    (0u8..16)
        .map(|bits| Facts {
            peer_ip: bits & 1 != 0,
            destination: bits & 2 != 0,
            extensions: bits & 4 != 0,
            route_metadata: bits & 8 != 0,
        })
        .filter(fits)
        .max_by_key(|facts| {
            u8::from(facts.peer_ip)
                + u8::from(facts.destination)
                + u8::from(facts.extensions)
                + u8::from(facts.route_metadata)
        })
}

/// True when `schema` declares `helper` as an entity type with string tags.
fn tags_fit(schema: &Schema, helper: &str) -> bool {
    let tags = [("name".to_owned(), "value".to_owned())];
    uid(helper, HELPER_ID)
        .and_then(|u| {
            tagged(
                &u,
                tags.iter().map(|(k, v)| (k, v)),
                &Reads::everything(),
                None,
            )
        })
        .is_ok_and(|entity| Entities::from_entities([entity], Some(schema)).is_ok())
}

/// Checks that every action's context type in `schema` accepts the context cedargate builds,
/// with the optional `facts` and the typed `claims` record the schema declares (if any).
pub fn check_schema(
    schema: &Schema,
    facts: Facts,
    claims: Option<&Arc<Record>>,
) -> Vec<(EntityUid, String)> {
    let sample = HttpRequest {
        method: "GET".into(),
        host: "example.org".into(),
        path: "/".into(),
        scheme: "https".into(),
        protocol: "HTTP/1.1".into(),
        query: Default::default(),
        headers: Default::default(),
        request_id: "sample".into(),
    };
    // Both shapes the peer record takes: without and with a SPIFFE ID.
    let mut peer = crate::identity::Peer::from_envoy(
        "spiffe://example.org/sample".into(),
        "127.0.0.1:1".into(),
    );
    peer.subject = Some("CN=sample".into());
    peer.ip = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    let destination = Destination {
        address: "127.0.0.1:8443".into(),
        principal: "spiffe://example.org/gateway".into(),
    };
    let everything = Reads::everything()
        .with_facts(facts)
        .with_claims(claims.cloned());
    let sample_claims = claims.map(|record| record.sample());
    let workload = Identity {
        peer: std::sync::Arc::new(peer),
        token: None,
    };

    let user = Identity {
        token: Some(std::sync::Arc::new(crate::identity::VerifiedToken {
            issuer: "https://issuer.example".into(),
            subject: "sample".into(),
            principal_type: "User".into(),
            group_type: "Group".into(),
            audience: vec!["api".into()],
            scopes: vec!["read".into()],
            groups: Vec::new(),
            expires_at: 0,
            issued_at: None,
            claims: Default::default(),
            claims_json: Default::default(),
            cnf_x5t_s256: None,
            require_cert_binding: false,
            cedar: Default::default(),
            typed_claims: Default::default(),
        })),
        ..Identity::default()
    };
    let contexts: Vec<Context> = [Identity::default(), workload, user]
        .iter()
        .filter_map(|identity| {
            context(
                &sample,
                &destination,
                identity,
                Values {
                    claims: sample_claims.as_ref(),
                    body: None,
                },
                0,
                &everything,
                names().ok()?,
                &mut KeyWriter::default(),
            )
            .ok()
        })
        .collect();
    // An action without `appliesTo` (an action group) never is a request's action.
    let applies = |action: &EntityUid| {
        schema
            .principals_for_action(action)
            .is_some_and(|mut principals| principals.next().is_some())
    };
    schema
        .actions()
        .filter(|action| applies(action))
        .filter_map(|action| {
            contexts
                .iter()
                .find_map(|context| context.validate(schema, action).err())
                .map(|err| (action.clone(), err.to_string()))
        })
        .collect()
}

fn invalid(err: impl std::fmt::Display) -> MappingError {
    MappingError::Invalid(err.to_string())
}

fn uid(type_name: &str, id: &str) -> Result<EntityUid, MappingError> {
    Ok(EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(type_name).map_err(invalid)?,
        EntityId::new(id),
    ))
}

/// The entity types and uids cedargate itself names, parsed once per process.
#[derive(Debug)]
struct Names {
    headers: EntityUid,
    query: EntityUid,
    params: EntityUid,
    claims: EntityUid,
    extensions: EntityUid,
    route_metadata: EntityUid,
    workload: EntityTypeName,
    path: EntityTypeName,
    anonymous: EntityUid,
}

fn names() -> Result<&'static Names, MappingError> {
    static NAMES: std::sync::OnceLock<Result<Names, MappingError>> = std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| {
            let type_name = |name: &str| EntityTypeName::from_str(name).map_err(invalid);
            Ok(Names {
                headers: uid(HEADERS_TYPE, HELPER_ID)?,
                query: uid(QUERY_TYPE, HELPER_ID)?,
                params: uid(PARAMS_TYPE, HELPER_ID)?,
                claims: uid(CLAIMS_TYPE, HELPER_ID)?,
                extensions: uid(EXTENSIONS_TYPE, HELPER_ID)?,
                route_metadata: uid(ROUTE_METADATA_TYPE, HELPER_ID)?,
                workload: type_name("Workload")?,
                path: type_name(PATH_TYPE)?,
                anonymous: uid("Anonymous", "anonymous")?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The principal's uid, its entity (none for anonymous) and its groups.
fn principal(
    identity: &Identity,
    names: &Names,
) -> Result<(EntityUid, Option<Entity>, Vec<EntityUid>), MappingError> {
    match identity.principal() {
        Principal::Token(token) => {
            let subject = uid(&token.principal_type, &token.subject)?;
            let group_type = EntityTypeName::from_str(&token.group_type).map_err(invalid)?;
            let groups: Vec<EntityUid> = token
                .groups
                .iter()
                .map(|g| EntityUid::from_type_name_and_id(group_type.clone(), EntityId::new(g)))
                .collect();
            let entity = Entity::new_with_tags(subject.clone(), [], groups.iter().cloned(), [])
                .map_err(invalid)?;
            Ok((subject, Some(entity), groups))
        }
        Principal::Workload(id) => {
            let uid = EntityUid::from_type_name_and_id(
                names.workload.clone(),
                EntityId::new(id.as_str()),
            );
            let attrs = HashMap::from([(
                "trust_domain".to_owned(),
                RestrictedExpression::new_string(id.trust_domain().to_owned()),
            )]);
            let entity = Entity::new(uid.clone(), attrs, Default::default()).map_err(invalid)?;
            Ok((uid, Some(entity), Vec::new()))
        }
        Principal::Anonymous => Ok((names.anonymous.clone(), None, Vec::new())),
    }
}

/// The principal built from the request, merged with its entry in entities.json if it has one:
/// static attributes and parents, plus (overriding) what the token or certificate says. Tags
/// of the static entry are not carried over.
fn with_static(snapshot: &Snapshot, entity: Entity) -> Result<Entity, MappingError> {
    let Some(existing) = snapshot.entities.get(&entity.uid()) else {
        return Ok(entity);
    };
    let (uid, mut attrs, mut parents) = existing.clone().into_inner();
    let (_, request_attrs, request_parents) = entity.into_inner();
    attrs.extend(request_attrs);
    parents.extend(request_parents);
    Entity::new(uid, attrs, parents).map_err(invalid)
}

/// The principal built from the request, with what the entity source answered for it: its
/// attributes and parents are added; an attribute the token or certificate already gives
/// (a workload's `trust_domain`) is kept as they give it, and the token's groups stay. Tags
/// of the answer are not carried over (as for a static entry).
fn with_fetched(entity: Entity, fetched: &Entity) -> Result<Entity, MappingError> {
    let (uid, mut attrs, mut parents) = entity.into_inner();
    let (_, fetched_attrs, fetched_parents) = fetched.clone().into_inner();
    for (name, value) in fetched_attrs {
        attrs.entry(name).or_insert(value);
    }
    parents.extend(fetched_parents);
    Entity::new(uid, attrs, parents).map_err(invalid)
}

/// An entity whose tags are the map's entries (headers, query, path parameters, claims) that
/// a policy can read; each is written to `key` when one is given (the entries of a request).
fn tagged<'a>(
    uid: &EntityUid,
    map: impl IntoIterator<Item = (&'a String, &'a String)> + 'a,
    reads: &Reads,
    mut key: Option<(Input, &mut KeyWriter)>,
) -> Result<Entity, MappingError> {
    let tags = map.into_iter().filter(|(k, _)| reads.tag(k)).map(|(k, v)| {
        if let Some((input, key)) = key.as_mut() {
            key.tag(*input, k, v);
        }
        (k.clone(), RestrictedExpression::new_string(v.clone()))
    });
    Entity::new_with_tags(uid.clone(), [], [], tags).map_err(invalid)
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn record(
    pairs: impl IntoIterator<Item = (&'static str, RestrictedExpression)>,
) -> Result<RestrictedExpression, MappingError> {
    RestrictedExpression::new_record(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)))
        .map_err(invalid)
}

/// The values of the context that are built elsewhere: the token's typed claims record (when
/// the schema declares one; else the claims are the tag entity) and the request's body.
#[derive(Clone, Copy)]
struct Values<'a> {
    claims: Option<&'a RestrictedExpression>,
    body: Option<&'a Body>,
}

/// The context record, with only the attributes a policy can read (all with
/// [`Reads::everything`]). Each value of the request and the peer it holds is written to
/// `key`; the token's are the same for every request of the token.
// One argument per source of the context: grouping them would only move the list.
#[allow(clippy::too_many_arguments)]
fn context(
    http: &HttpRequest,
    destination: &Destination,
    identity: &Identity,
    values: Values<'_>,
    now: i64,
    reads: &Reads,
    names: &Names,
    key: &mut KeyWriter,
) -> Result<Context, MappingError> {
    let entity = |uid: &EntityUid| RestrictedExpression::new_entity_uid(uid.clone());
    let mut pairs = Vec::with_capacity(4);
    if reads.context(&["request"]) {
        // `None`: the request id, unique to one request.
        let fields = [
            ("method", Some(Input::Method), http.method.as_str()),
            ("host", Some(Input::Host), &http.host),
            ("path", Some(Input::Path), &http.path),
            ("scheme", Some(Input::Scheme), &http.scheme),
            ("protocol", Some(Input::Protocol), &http.protocol),
            ("id", None, &http.request_id),
        ];
        let helpers = [
            ("headers", &names.headers),
            ("query", &names.query),
            ("params", &names.params),
        ]
        .into_iter()
        .chain(
            reads
                .facts
                .extensions
                .then_some(("extensions", &names.extensions)),
        )
        .chain(
            reads
                .facts
                .route_metadata
                .then_some(("route_metadata", &names.route_metadata)),
        );
        let body = values
            .body
            .filter(|_| reads.body.is_some() && reads.context(&["request", "body"]))
            .map(|body| {
                // The body differs per request: such a call is not remembered.
                key.unique();
                body.record(reads)
                    .ok_or_else(|| invalid("the request body's record was not built"))
            })
            .transpose()?;
        let request = fields
            .into_iter()
            .filter(|(name, ..)| reads.context(&["request", name]))
            .map(|(name, input, value)| {
                match input {
                    Some(input) => key.value(input, value),
                    None => key.unique(),
                }
                (name, string(value))
            })
            .chain(
                helpers
                    .filter(|(name, _)| reads.context(&["request", name]))
                    .map(|(name, uid)| (name, entity(uid))),
            )
            .chain(body.map(|body| ("body", body)));
        pairs.push(("request".to_owned(), record(request)?));
    }
    if reads.context(&["peer"]) {
        let peer = &identity.peer;
        let read = |name: &str| reads.context(&["peer", name]);
        let mut peer_attrs = Vec::with_capacity(7);
        if read("present") {
            key.flag(Input::PeerPresent, peer.is_present());
            peer_attrs.push(("present", RestrictedExpression::new_bool(peer.is_present())));
        }
        if read("dns_sans") {
            peer.dns_sans
                .iter()
                .for_each(|d| key.value(Input::PeerDnsSan, d));
            let set = RestrictedExpression::new_set(peer.dns_sans.iter().map(|d| string(d)));
            peer_attrs.push(("dns_sans", set));
        }
        let texts = [
            (
                "principal",
                Input::PeerPrincipal,
                Some(peer.principal.as_str()),
            ),
            ("address", Input::PeerAddress, Some(peer.address.as_str())),
            (
                "spiffe_id",
                Input::PeerSpiffeId,
                peer.spiffe_id.as_ref().map(|id| id.as_str()),
            ),
            (
                "trust_domain",
                Input::PeerTrustDomain,
                peer.spiffe_id.as_ref().map(|id| id.trust_domain()),
            ),
            ("subject", Input::PeerSubject, peer.subject.as_deref()),
        ];
        for (name, input, value) in texts {
            if let Some(value) = value
                && read(name)
            {
                key.value(input, value);
                peer_attrs.push((name, string(value)));
            }
        }
        if let Some(ip) = peer.ip
            && reads.facts.peer_ip
            && read("ip")
        {
            let text = ip.to_string();
            key.value(Input::PeerIp, &text);
            peer_attrs.push(("ip", RestrictedExpression::new_ip(text)));
        }
        pairs.push(("peer".to_owned(), record(peer_attrs)?));
    }
    if reads.facts.destination && reads.context(&["destination"]) {
        let read = |name: &str| reads.context(&["destination", name]);
        let mut attrs = Vec::with_capacity(4);
        let texts = [
            ("address", Input::DestinationAddress, &destination.address),
            (
                "principal",
                Input::DestinationPrincipal,
                &destination.principal,
            ),
        ];
        for (name, input, value) in texts {
            if read(name) {
                key.value(input, value);
                attrs.push((name, string(value)));
            }
        }
        if let Ok(socket) = destination.address.parse::<std::net::SocketAddr>() {
            if read("ip") {
                let ip = socket.ip().to_canonical().to_string();
                key.value(Input::DestinationIp, &ip);
                attrs.push(("ip", RestrictedExpression::new_ip(ip)));
            }
            if read("port") {
                key.value(Input::DestinationPort, &socket.port().to_string());
                attrs.push(("port", RestrictedExpression::new_long(socket.port().into())));
            }
        }
        pairs.push(("destination".to_owned(), record(attrs)?));
    }
    if reads.context(&["time"]) {
        key.unique();
        pairs.push(("time".to_owned(), RestrictedExpression::new_long(now)));
    }
    if let Some(token) = &identity.token
        && reads.context(&["token"])
    {
        let set = |items: &[String]| RestrictedExpression::new_set(items.iter().map(|i| string(i)));
        let mut token_attrs = vec![
            ("issuer", string(&token.issuer)),
            ("subject", string(&token.subject)),
            ("audience", set(&token.audience)),
            ("scope", set(&token.scopes)),
            (
                "expires_at",
                RestrictedExpression::new_long(token.expires_at),
            ),
        ];
        if reads.context(&["token", "claims"]) {
            let value = match (&reads.claims, values.claims) {
                (None, _) => entity(&names.claims),
                (Some(_), Some(record)) => record.clone(),
                // Never expected: a typed record is always built for a token.
                (Some(_), None) => return Err(invalid("the token's typed claims were not built")),
            };
            token_attrs.push(("claims", value));
        }
        token_attrs.retain(|(name, _)| reads.context(&["token", name]));
        pairs.push(("token".to_owned(), record(token_attrs)?));
    }
    Context::from_pairs(pairs).map_err(invalid)
}
