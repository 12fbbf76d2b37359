//! The entity cache in front of an [`EntitySource`]: per type a bounded cache
//! (`quick_cache`, `max_entries`) of answers, found or not; an answer is used for `ttl` (a
//! "no such entity" for `negative_ttl`), then asked again. Every uid is fetched by at most one
//! request at a time, which every check wanting it awaits (single-flight); the uids one check
//! misses are asked in one batch. A fetch runs as its own task, so a check that gives up (its
//! deadline) does not cancel it for the others, and its answer fills the cache. When a fetch
//! fails or does not answer within the check's budget, a kept answer no older than
//! `ttl + max_stale` is used (keep-last-good); else the uid is unavailable and the check is
//! denied. A kept answer is parsed against the schema of the snapshot in force, once per
//! snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cedar_policy::{Entity, EntityUid};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use super::{EntitySource, Fetched, FetchedEntity, SourceError};
use crate::config::{EntitySourceSettings, EntityTypeSettings};
use crate::identity::memo::Memo;
use crate::telemetry::names::{
    ENTITY_CACHE_TOTAL, ENTITY_FETCH_DURATION, ENTITY_FETCH_FAILURES_TOTAL, ENTITY_STALE_SECONDS,
};

/// How many times the entities fetched for a check may bring the entities they name (of
/// fetched types): bounds the work a source's answers can cause per check.
pub const REFERENCE_ROUNDS: usize = 2;
/// Most uids one round asks for (an answer naming thousands of parents asks for these).
pub const MAX_REFERENCES: usize = 64;

/// The answer of one fetch: each asked uid's JSON, or none when the source does not have it.
type Answer = Result<Arc<HashMap<EntityUid, serde_json::Value>>, SourceError>;
type InFlight = Shared<BoxFuture<'static, Answer>>;

/// Entities fetched from a source, cached.
#[derive(Clone)]
pub struct EntityCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EntityCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let types: Vec<String> = self.inner.types.keys().map(ToString::to_string).collect();
        f.debug_struct("EntityCache")
            .field("types", &types)
            .finish_non_exhaustive()
    }
}

struct Inner {
    source: Arc<dyn EntitySource>,
    types: HashMap<cedar_policy::EntityTypeName, TypeCache>,
    inflight: Mutex<HashMap<EntityUid, InFlight>>,
    timeout: Duration,
}

struct TypeCache {
    settings: EntityTypeSettings,
    entries: quick_cache::sync::Cache<String, Arc<Entry>>,
    /// `cedargate_entity_cache_total{type, result}`, registered once.
    hit: metrics::Counter,
    negative_hit: metrics::Counter,
    miss: metrics::Counter,
    stale: metrics::Counter,
}

/// One kept answer.
struct Entry {
    json: Option<serde_json::Value>,
    at: Instant,
    /// Unique to this answer (process-wide): the decision cache keys verdicts by it.
    generation: u64,
    /// The entity parsed against one snapshot's schema (or why it does not fit).
    parsed: Memo,
}

type Parsed = Result<Arc<FetchedEntity>, String>;

/// The schema fetched entities are validated against, with the id of the policy snapshot it
/// belongs to (a parse is kept per snapshot) and its static entities (a uid with a static
/// entry is never asked of the source: the static entity wins).
pub struct SchemaOf<'a> {
    pub schema: &'a cedar_policy::Schema,
    pub id: u64,
    pub statics: &'a cedar_policy::Entities,
}

impl Entry {
    fn new(json: Option<serde_json::Value>) -> Self {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            json,
            at: Instant::now(),
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            parsed: Memo::default(),
        }
    }
}

impl EntityCache {
    pub fn new(source: Arc<dyn EntitySource>, settings: &EntitySourceSettings) -> Self {
        let types = settings
            .types
            .iter()
            .filter_map(|(name, settings)| {
                let counter = |result: &'static str| {
                    metrics::counter!(ENTITY_CACHE_TOTAL, "type" => name.clone(), "result" => result)
                };
                let cache = TypeCache {
                    settings: *settings,
                    entries: quick_cache::sync::Cache::new(settings.max_entries),
                    hit: counter("hit"),
                    negative_hit: counter("negative_hit"),
                    miss: counter("miss"),
                    stale: counter("stale"),
                };
                // A name that is not a type name can name no entity (start-up checks the
                // names against the schema).
                Some((name.parse().ok()?, cache))
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                source,
                types,
                inflight: Mutex::new(HashMap::new()),
                timeout: settings.timeout,
            }),
        }
    }

    /// True when entities of this type are fetched.
    pub fn fetches(&self, uid: &EntityUid) -> bool {
        self.inner.types.contains_key(uid.type_name())
    }

    /// The entities among `wanted` of fetched types, from the cache or the source, and then
    /// those of fetched types that they name (parents, attributes), to [`REFERENCE_ROUNDS`]
    /// rounds: an order in a fetched shop brings the shop. All within `budget` (and the
    /// source's own timeout per fetch).
    pub async fn get(
        &self,
        schema: &SchemaOf<'_>,
        wanted: &[EntityUid],
        budget: Duration,
    ) -> Fetched {
        let started = Instant::now();
        let mut fetched = self.get_once(schema, wanted, budget).await;
        for _ in 0..REFERENCE_ROUNDS {
            let mut next: Vec<EntityUid> = fetched
                .entities
                .iter()
                .flat_map(|f| f.names.iter())
                .filter(|uid| self.fetches(uid))
                .filter(|uid| !fetched.consulted.iter().any(|(seen, _)| seen == *uid))
                .filter(|uid| !fetched.unavailable.contains(uid))
                .take(MAX_REFERENCES)
                .cloned()
                .collect();
            next.sort_unstable_by_key(ToString::to_string);
            next.dedup();
            if next.is_empty() {
                break;
            }
            let left = budget.saturating_sub(started.elapsed());
            let more = self.get_once(schema, &next, left).await;
            fetched.entities.extend(more.entities);
            fetched.unavailable.extend(more.unavailable);
            fetched.consulted.extend(more.consulted);
        }
        fetched
    }

    async fn get_once(
        &self,
        schema: &SchemaOf<'_>,
        wanted: &[EntityUid],
        budget: Duration,
    ) -> Fetched {
        let inner = &self.inner;
        let now = Instant::now();
        let mut fetched = Fetched::default();
        // Uids to wait for, each with the kept answer to fall back on.
        let mut waits: Vec<(EntityUid, InFlight, Option<Arc<Entry>>)> = Vec::new();
        let mut missed: Vec<(EntityUid, Option<Arc<Entry>>)> = Vec::new();
        let mut seen: Vec<&EntityUid> = Vec::new();
        for uid in wanted {
            if seen.contains(&uid) {
                continue;
            }
            seen.push(uid);
            let Some(cache) = inner.types.get(uid.type_name()) else {
                continue;
            };
            if schema.statics.get(uid).is_some() {
                continue;
            }
            let kept = cache.entries.get(uid.id().unescaped());
            if let Some(entry) = &kept {
                let ttl = match entry.json {
                    Some(_) => cache.settings.ttl,
                    None => cache.settings.negative_ttl,
                };
                if now.duration_since(entry.at) < ttl {
                    match entry.json {
                        Some(_) => cache.hit.increment(1),
                        None => cache.negative_hit.increment(1),
                    }
                    use_entry(&mut fetched, schema, uid, entry);
                    continue;
                }
            }
            cache.miss.increment(1);
            missed.push((uid.clone(), kept));
        }
        if !missed.is_empty() {
            // Under one lock: joining a fetch in flight, or starting one and registering it,
            // so that two checks missing the same uid never both fetch it.
            let mut inflight = lock(&inner.inflight);
            let mut batch = Vec::new();
            for (uid, kept) in missed {
                match inflight.get(&uid) {
                    Some(flight) => waits.push((uid, flight.clone(), kept)),
                    None => batch.push((uid, kept)),
                }
            }
            if !batch.is_empty() {
                let uids: Vec<EntityUid> = batch.iter().map(|(uid, _)| uid.clone()).collect();
                // The task removes its uids under this lock when it ends: after they are in.
                let flight = Inner::start(inner, uids);
                for (uid, kept) in batch {
                    inflight.insert(uid.clone(), flight.clone());
                    waits.push((uid, flight.clone(), kept));
                }
            }
        }
        if waits.is_empty() {
            return fetched;
        }
        // A fetch ends by the source's timeout: wait that long (and a little), so that a source
        // too slow is a failed fetch (a kept copy may serve), unless the check's own deadline
        // is shorter.
        let budget = budget.min(inner.timeout + Duration::from_millis(50));
        let answers = tokio::time::timeout(
            budget,
            futures_util::future::join_all(waits.iter().map(|(_, flight, _)| flight.clone())),
        )
        .await;
        // The check's own deadline passed while the fetch runs: the source has not failed, so
        // a kept copy past its TTL is not used (a caller choosing a short deadline must not
        // get the stale answer of a healthy source); the uids are unavailable.
        let Ok(answers) = answers else {
            fetched
                .unavailable
                .extend(waits.into_iter().map(|(uid, _, _)| uid));
            return fetched;
        };
        for ((uid, _, kept), answer) in waits.into_iter().zip(answers) {
            match answer {
                Ok(map) => {
                    // The answer as the fetch kept it (its generation and parse), unless it
                    // was evicted already.
                    let kept = inner
                        .types
                        .get(uid.type_name())
                        .and_then(|c| c.entries.get(uid.id().unescaped()));
                    let entry =
                        kept.unwrap_or_else(|| Arc::new(Entry::new(map.get(&uid).cloned())));
                    use_entry(&mut fetched, schema, &uid, &entry);
                }
                Err(_) => {
                    let cache = inner.types.get(uid.type_name());
                    let max_stale =
                        cache.map_or(Duration::ZERO, |c| c.settings.ttl + c.settings.max_stale);
                    match (
                        cache,
                        kept.filter(|entry| now.duration_since(entry.at) < max_stale),
                    ) {
                        (Some(cache), Some(entry)) => {
                            cache.stale.increment(1);
                            metrics::gauge!(ENTITY_STALE_SECONDS, "type" => uid.type_name().to_string())
                                .set(now.duration_since(entry.at).as_secs_f64());
                            use_entry(&mut fetched, schema, &uid, &entry);
                        }
                        _ => fetched.unavailable.push(uid),
                    }
                }
            }
        }
        fetched
    }
}

impl Inner {
    /// Starts one fetch of `uids` as its own task, which fills the cache and, when it ends,
    /// removes the uids from the in-flight table (the caller registers them, holding its lock).
    fn start(this: &Arc<Self>, uids: Vec<EntityUid>) -> InFlight {
        let inner = Arc::clone(this);
        let asked = uids;
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let answer = inner.source.fetch(&asked).await;
            metrics::histogram!(ENTITY_FETCH_DURATION).record(started.elapsed().as_secs_f64());
            let answer: Answer = answer.and_then(|items| index(items, &asked).map(Arc::new));
            match &answer {
                Ok(map) => {
                    let at = Instant::now();
                    for uid in &asked {
                        if let Some(cache) = inner.types.get(uid.type_name()) {
                            let entry = Entry {
                                at,
                                ..Entry::new(map.get(uid).cloned())
                            };
                            cache
                                .entries
                                .insert(uid.id().unescaped().to_owned(), Arc::new(entry));
                        }
                    }
                }
                Err(err) => {
                    metrics::counter!(ENTITY_FETCH_FAILURES_TOTAL, "reason" => err.code())
                        .increment(1);
                    tracing::warn!(error = %err, uids = asked.len(), "entity fetch failed");
                }
            }
            let mut inflight = lock(&inner.inflight);
            for uid in &asked {
                inflight.remove(uid);
            }
            answer
        });
        async move {
            task.await
                .unwrap_or_else(|err| Err(SourceError::Unreachable(err.to_string())))
        }
        .boxed()
        .shared()
    }
}

/// The asked uids' entities of an answer, by uid; anything else in it is ignored (a source
/// answers only for what it was asked).
fn index(
    items: Vec<serde_json::Value>,
    asked: &[EntityUid],
) -> Result<HashMap<EntityUid, serde_json::Value>, SourceError> {
    let mut found = HashMap::new();
    let read = |item: &serde_json::Value| {
        let uid = item.get("uid")?;
        let uid = uid.get("__entity").unwrap_or(uid);
        let ty = uid.get("type")?.as_str()?.parse().ok()?;
        let id = cedar_policy::EntityId::new(uid.get("id")?.as_str()?);
        Some(EntityUid::from_type_name_and_id(ty, id))
    };
    for item in items {
        let Some(uid) = read(&item).filter(|uid| asked.contains(uid)) else {
            continue;
        };
        // Two answers for one uid: which one counts would be a guess.
        if found.insert(uid, item).is_some() {
            return Err(SourceError::Invalid("an entity is answered twice".into()));
        }
    }
    Ok(found)
}

/// Adds a kept or fetched answer for `uid` to what the check gets: the entity parsed against
/// the snapshot's schema, nothing for "no such entity", or `unavailable` for an entity that
/// does not fit the schema.
fn use_entry(fetched: &mut Fetched, schema: &SchemaOf<'_>, uid: &EntityUid, entry: &Entry) {
    fetched.consulted.push((uid.clone(), entry.generation));
    let Some(json) = &entry.json else { return };
    let parsed = match entry.parsed.get::<Parsed>(schema.id) {
        Some(parsed) => parsed,
        None => {
            let parsed: Parsed = Entity::from_json_value(json.clone(), Some(schema.schema))
                .map(|entity| {
                    Arc::new(FetchedEntity {
                        entity,
                        names: super::named_uids(json),
                    })
                })
                .map_err(|err| err.to_string());
            let parsed = Arc::new(parsed);
            entry.parsed.set(schema.id, Arc::clone(&parsed));
            parsed
        }
    };
    match parsed.as_ref() {
        Ok(entity) => fetched.entities.push(Arc::clone(entity)),
        Err(err) => {
            metrics::counter!(ENTITY_FETCH_FAILURES_TOTAL, "reason" => "schema").increment(1);
            tracing::warn!(uid = %uid, error = %crate::text::clip(err), "a fetched entity does not fit the schema");
            fetched.unavailable.push(uid.clone());
        }
    }
}

/// The in-flight table's lock; a poisoned one (a panic while it was held) is still a table.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
