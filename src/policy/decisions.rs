//! The decision cache: Cedar's verdict remembered for one verified token under one policy
//! snapshot, keyed on exactly the per-request values its Cedar call was built from.
//!
//! Why a remembered verdict is the verdict Cedar would give: Cedar is a pure function of the
//! policies, the entity store and the request. For one token under one snapshot, the policies,
//! the static entities and the token's own side (principal, groups, claims, the context's
//! token record) are fixed; everything else a check builds is written into the [`Key`] by the
//! same code that builds it ([`super::mapping`]): the action, the resource, and each value of
//! the context and of the header, query and path-parameter entities, with its field and length
//! so that two different inputs never write the same key. What the policies cannot read is
//! never built, so it is not in the key either, and a request that differs only there is a hit.
//!
//! Nothing is remembered when the policies read the time or the request id (values unique to
//! one request) or for a caller without a token (its parts are not cached). Entries live in
//! the token's parts for one snapshot: a reload, a token leaving the token cache, or a key set
//! that no longer verifies the token (authentication runs before the core on every check)
//! leaves them unreachable, and installing a snapshot drops every token's parts at once, so
//! the previous set's verdicts do not linger. Bounded per token (64) and in bytes for the
//! whole process ([`Budget`], `limits.decision_cache_bytes`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use cedar_policy::EntityUid;

use super::engine::Verdict;

/// Verdicts one token keeps under one snapshot; a full token starts over.
const PER_TOKEN: usize = 64;
/// Longest key remembered, in bytes (the values written, the action's and the resource's ids):
/// a request with more readable data is evaluated each time.
const MAX_KEY_BYTES: usize = 2048;
/// What an entry costs beyond its key's and its verdict's text: the map slot, the uids'
/// type names, the allocations' headers (an upper estimate).
const ENTRY_OVERHEAD: usize = 256;

/// A per-request value the mapping writes into a [`Key`]: which field it fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Input {
    Method = 1,
    Host,
    Path,
    Scheme,
    Protocol,
    PeerPresent,
    PeerPrincipal,
    PeerAddress,
    PeerDnsSan,
    PeerSpiffeId,
    PeerTrustDomain,
    PeerSubject,
    Header,
    Query,
    Param,
}

/// Collects the per-request values of one Cedar call as they are built.
#[derive(Debug, Default)]
pub struct KeyWriter {
    bytes: Vec<u8>,
    /// A value unique to the request was built (the time, the request id), or the key grew too
    /// long: this call is not remembered.
    unique: bool,
}

impl KeyWriter {
    /// A value of the request.
    pub fn value(&mut self, input: Input, value: &str) {
        self.bytes.push(input as u8);
        self.text(value);
    }

    /// A tag of a request map (a header, a query parameter, a path parameter).
    pub fn tag(&mut self, input: Input, name: &str, value: &str) {
        self.bytes.push(input as u8);
        self.text(name);
        self.text(value);
    }

    pub fn flag(&mut self, input: Input, value: bool) {
        self.bytes.extend([input as u8, u8::from(value)]);
    }

    /// A value different for every request was built: nothing to remember.
    pub fn unique(&mut self) {
        self.unique = true;
    }

    fn text(&mut self, value: &str) {
        // The length first: `("ab", "c")` and `("a", "bc")` write different bytes.
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        self.bytes.extend(len.to_le_bytes());
        self.bytes.extend(value.as_bytes());
    }

    /// The key of a call to `action` on `resource` with the values written, when it may be
    /// remembered.
    pub fn finish(self, action: &EntityUid, resource: &EntityUid) -> Option<Key> {
        // A resource may come from the path (`Path::"<path>"`): its id counts too.
        let ids = action.id().unescaped().len() + resource.id().unescaped().len();
        (!self.unique && self.bytes.len() + ids <= MAX_KEY_BYTES).then(|| Key {
            action: action.clone(),
            resource: resource.clone(),
            inputs: self.bytes.into_boxed_slice(),
        })
    }
}

/// Everything a check adds to a token's fixed side, compared exactly (no hash stands in for
/// it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    action: EntityUid,
    resource: EntityUid,
    inputs: Box<[u8]>,
}

impl Key {
    /// The memory an entry with this key and `verdict` holds, estimated from above.
    fn cost(&self, verdict: &Verdict) -> usize {
        let verdict = match verdict {
            Verdict::Allow { determining } | Verdict::Deny { determining } => {
                determining.iter().map(|id| id.len() + 24).sum::<usize>()
            }
            Verdict::Error { failed } => failed
                .iter()
                .map(|f| f.policy_id.len() + f.message.len() + 48)
                .sum(),
        };
        ENTRY_OVERHEAD
            + self.inputs.len()
            + self.action.id().unescaped().len()
            + self.resource.id().unescaped().len()
            + verdict
    }
}

/// How many bytes of verdicts may be held, over all tokens and snapshots.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    max: AtomicUsize,
}

impl Budget {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            max: AtomicUsize::new(max_bytes),
        }
    }

    /// Sets the bound in bytes (0 turns the cache off).
    pub fn limit(&self, max_bytes: usize) {
        self.max.store(max_bytes, Ordering::Relaxed);
    }

    /// The bytes the remembered verdicts hold now (estimated from above).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + bytes <= max).then_some(held + bytes)
            })
            .is_ok()
    }

    fn give(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The verdicts of one token under one snapshot, and the bytes they hold.
#[derive(Debug)]
pub struct Decisions {
    verdicts: Mutex<(HashMap<Key, Verdict>, usize)>,
    budget: std::sync::Arc<Budget>,
}

impl Decisions {
    pub fn new(budget: std::sync::Arc<Budget>) -> Self {
        Self {
            verdicts: Mutex::new((HashMap::new(), 0)),
            budget,
        }
    }

    /// The verdict remembered for `key`.
    pub fn recall(&self, key: &Key) -> Option<Verdict> {
        self.verdicts.lock().ok()?.0.get(key).cloned()
    }

    /// Remembers a verdict (an evaluation error too: Cedar errs the same way on the same
    /// inputs) while the budget lasts.
    pub fn keep(&self, key: Key, verdict: &Verdict) {
        let Ok(mut guard) = self.verdicts.lock() else {
            return;
        };
        let (verdicts, held) = &mut *guard;
        if verdicts.contains_key(&key) {
            return;
        }
        if verdicts.len() >= PER_TOKEN {
            self.budget.give(*held);
            *held = 0;
            verdicts.clear();
        }
        let cost = key.cost(verdict);
        if self.budget.take(cost) {
            *held += cost;
            verdicts.insert(key, verdict.clone());
        }
    }
}

impl Drop for Decisions {
    fn drop(&mut self) {
        let held = match self.verdicts.get_mut() {
            Ok(verdicts) => verdicts.1,
            Err(poisoned) => poisoned.into_inner().1,
        };
        self.budget.give(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use std::sync::Arc;

    fn uid(text: &str) -> EntityUid {
        EntityUid::from_str(text).unwrap()
    }

    fn key(write: impl FnOnce(&mut KeyWriter)) -> Option<Key> {
        let mut writer = KeyWriter::default();
        write(&mut writer);
        writer.finish(&uid(r#"Action::"GET""#), &uid(r#"Path::"/""#))
    }

    #[test]
    fn different_inputs_write_different_keys() {
        let a = key(|w| w.tag(Input::Header, "ab", "c"));
        let b = key(|w| w.tag(Input::Header, "a", "bc"));
        let c = key(|w| w.tag(Input::Query, "ab", "c"));
        let d = key(|w| w.value(Input::Host, "abc"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(a, key(|w| w.tag(Input::Header, "ab", "c")));
    }

    #[test]
    fn unique_or_long_inputs_are_not_remembered() {
        assert!(key(|w| w.unique()).is_none());
        assert!(key(|w| w.value(Input::Path, &"x".repeat(MAX_KEY_BYTES))).is_none());
    }

    #[test]
    fn a_long_resource_counts_toward_the_key() {
        let mut writer = KeyWriter::default();
        writer.value(Input::Method, "GET");
        let path = uid(&format!(r#"Path::"/{}""#, "a".repeat(MAX_KEY_BYTES)));
        assert!(writer.finish(&uid(r#"Action::"GET""#), &path).is_none());
    }

    #[test]
    fn the_budget_bounds_every_token_and_is_given_back() {
        let allow = Verdict::Allow {
            determining: vec!["p".into()],
        };
        let one = key(|w| w.value(Input::Path, "0")).unwrap().cost(&allow);
        let budget = Arc::new(Budget::new(3 * one));
        let first = Decisions::new(Arc::clone(&budget));
        let second = Decisions::new(Arc::clone(&budget));
        let keys: Vec<Key> = (0..4)
            .map(|i| key(|w| w.value(Input::Path, &i.to_string())).unwrap())
            .collect();
        first.keep(keys[0].clone(), &allow);
        first.keep(keys[1].clone(), &allow);
        second.keep(keys[2].clone(), &allow);
        second.keep(keys[3].clone(), &allow);
        assert_eq!(budget.held(), 3 * one);
        assert!(second.recall(&keys[3]).is_none(), "over the budget");
        assert_eq!(first.recall(&keys[0]), Some(allow.clone()));
        drop(first);
        assert_eq!(budget.held(), one);
        let error = Verdict::Error { failed: Vec::new() };
        second.keep(keys[0].clone(), &error);
        assert_eq!(
            second.recall(&keys[0]),
            Some(error),
            "an error is a verdict too"
        );
        budget.limit(0);
        second.keep(keys[1].clone(), &allow);
        assert!(second.recall(&keys[1]).is_none(), "turned off");
    }

    #[test]
    fn a_full_token_starts_over() {
        let budget = Arc::new(Budget::new(1 << 20));
        let decisions = Decisions::new(Arc::clone(&budget));
        let deny = Verdict::Deny {
            determining: Vec::new(),
        };
        let last = key(|w| w.value(Input::Path, "last")).unwrap();
        for i in 0..PER_TOKEN {
            decisions.keep(
                key(|w| w.value(Input::Path, &i.to_string())).unwrap(),
                &deny,
            );
        }
        decisions.keep(last.clone(), &deny);
        assert_eq!(budget.held(), last.cost(&deny));
        drop(decisions);
        assert_eq!(budget.held(), 0);
    }
}
