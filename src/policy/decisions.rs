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
/// One slot of a token's table (its control byte included): the table is charged by its
/// capacity, not by its entries, because that is what it holds.
const SLOT: usize = std::mem::size_of::<(Key, Verdict)>() + 1;
/// An allocation's header and rounding, estimated from above.
const ALLOCATION: usize = 32;

/// The bytes a table of `capacity` holds: a hash table's buckets are the next power of two
/// above capacity × 8/7, never more than this.
fn table_bytes(capacity: usize) -> usize {
    if capacity == 0 {
        0
    } else {
        (capacity * 8 / 7 + 1) * SLOT + ALLOCATION
    }
}

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
    PeerIp,
    DestinationAddress,
    DestinationPrincipal,
    DestinationIp,
    DestinationPort,
    Extension,
    RouteMetadata,
    /// A uid of a fetched type with the generation of the answer used for it.
    Fetched,
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

    /// A number (a fetched answer's generation, unique process-wide to that answer).
    pub fn number(&mut self, input: Input, value: u64) {
        self.bytes.push(input as u8);
        self.bytes.extend(value.to_le_bytes());
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
    /// The heap memory an entry with this key and `verdict` holds beyond its table slot,
    /// estimated from above (every text counted as its own allocation).
    fn cost(&self, verdict: &Verdict) -> usize {
        let verdict = match verdict {
            Verdict::Allow { determining } | Verdict::Deny { determining } => determining
                .iter()
                .map(|id| id.len() + 24 + ALLOCATION)
                .sum::<usize>(),
            Verdict::Error { failed } => failed
                .iter()
                .map(|f| f.policy_id.len() + f.message.len() + 48 + 2 * ALLOCATION)
                .sum(),
        };
        3 * ALLOCATION
            + self.inputs.len()
            + self.action.id().unescaped().len()
            + self.resource.id().unescaped().len()
            + verdict
    }
}

/// What [`Decisions::keep`] did with a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Remembered (or already was).
    Yes,
    /// Not remembered: the budget is spent.
    Full,
    /// Not remembered: the cache is off (`limits.decision_cache_bytes: 0`).
    Off,
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

    fn is_off(&self) -> bool {
        self.max.load(Ordering::Relaxed) == 0
    }

    fn take(&self, bytes: usize) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + bytes <= max).then_some(held + bytes)
            })
            .is_ok()
    }

    fn charge(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }

    fn give(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// The verdicts of one token under one snapshot, and what they hold.
#[derive(Debug)]
pub struct Decisions {
    verdicts: Mutex<Table>,
    budget: std::sync::Arc<Budget>,
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<Key, Verdict>,
    /// The entries' own heap bytes.
    heap: usize,
    /// What is charged to the budget: the table by its capacity, plus `heap`.
    held: usize,
}

impl Table {
    fn bytes(&self) -> usize {
        table_bytes(self.map.capacity()) + self.heap
    }

    /// Charges what the table holds now: gives back what was foreseen and not used, and
    /// charges (past the bound if it must: the memory is held) what was not foreseen.
    fn settle(&mut self, budget: &Budget) {
        let now = self.bytes();
        if now < self.held {
            budget.give(self.held - now);
        } else {
            budget.charge(now - self.held);
        }
        self.held = now;
    }
}

impl Decisions {
    pub fn new(budget: std::sync::Arc<Budget>) -> Self {
        Self {
            verdicts: Mutex::new(Table::default()),
            budget,
        }
    }

    /// The verdict remembered for `key`.
    pub fn recall(&self, key: &Key) -> Option<Verdict> {
        self.verdicts.lock().ok()?.map.get(key).cloned()
    }

    /// Remembers a verdict (an evaluation error too: Cedar errs the same way on the same
    /// inputs) while the budget lasts. The table is charged by its capacity: a growth is
    /// paid for before the entry goes in, and a token that reaches [`PER_TOKEN`] verdicts
    /// starts over with a new, empty table (its old one freed, not kept for reuse).
    pub fn keep(&self, key: Key, verdict: &Verdict) -> Kept {
        if self.budget.is_off() {
            return Kept::Off;
        }
        let Ok(mut table) = self.verdicts.lock() else {
            return Kept::Full;
        };
        if table.map.contains_key(&key) {
            return Kept::Yes;
        }
        if table.map.len() >= PER_TOKEN {
            self.budget.give(table.held);
            *table = Table::default();
        }
        let entry = key.cost(verdict);
        // What the table holds once the entry is in: a full table grows first.
        let capacity = if table.map.len() < table.map.capacity() {
            table.map.capacity()
        } else {
            // Growth doubles the buckets; a first table has room for 3.
            (table.map.capacity() * 2).max(3)
        };
        let after = table_bytes(capacity) + table.heap + entry;
        if !self.budget.take(after.saturating_sub(table.held)) {
            return Kept::Full;
        }
        table.map.insert(key, verdict.clone());
        table.heap += entry;
        table.held = after;
        table.settle(&self.budget);
        Kept::Yes
    }
}

impl Drop for Decisions {
    fn drop(&mut self) {
        let held = match self.verdicts.get_mut() {
            Ok(table) => table.held,
            Err(poisoned) => poisoned.into_inner().held,
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
        let keys: Vec<Key> = (0..4)
            .map(|i| key(|w| w.value(Input::Path, &i.to_string())).unwrap())
            .collect();
        // What one token's first verdict holds: its table and its entry.
        let probe = Arc::new(Budget::new(1 << 20));
        assert_eq!(
            Decisions::new(Arc::clone(&probe)).keep(keys[0].clone(), &allow),
            Kept::Yes
        );
        assert_eq!(
            probe.held(),
            0,
            "given back when the token's parts are dropped"
        );
        let one = {
            let decisions = Decisions::new(Arc::clone(&probe));
            decisions.keep(keys[0].clone(), &allow);
            probe.held()
        };
        assert!(one > table_bytes(3), "{one}");

        let budget = Arc::new(Budget::new(one));
        let first = Decisions::new(Arc::clone(&budget));
        let second = Decisions::new(Arc::clone(&budget));
        assert_eq!(first.keep(keys[0].clone(), &allow), Kept::Yes);
        assert_eq!(second.keep(keys[1].clone(), &allow), Kept::Full);
        assert!(second.recall(&keys[1]).is_none(), "over the budget");
        assert_eq!(first.recall(&keys[0]), Some(allow.clone()));
        drop(first);
        assert_eq!(budget.held(), 0);
        let error = Verdict::Error { failed: Vec::new() };
        assert_eq!(second.keep(keys[2].clone(), &error), Kept::Yes);
        assert_eq!(
            second.recall(&keys[2]),
            Some(error),
            "an error is a verdict too"
        );
        budget.limit(0);
        assert_eq!(second.keep(keys[3].clone(), &allow), Kept::Off);
        assert!(second.recall(&keys[3]).is_none(), "turned off");
    }

    #[test]
    fn a_full_token_starts_over_with_a_new_table() {
        let budget = Arc::new(Budget::new(1 << 24));
        let deny = Verdict::Deny {
            determining: Vec::new(),
        };
        let last = key(|w| w.value(Input::Path, "last")).unwrap();
        let fresh = {
            let decisions = Decisions::new(Arc::clone(&budget));
            decisions.keep(last.clone(), &deny);
            budget.held()
        };
        let decisions = Decisions::new(Arc::clone(&budget));
        for i in 0..PER_TOKEN {
            decisions.keep(
                key(|w| w.value(Input::Path, &i.to_string())).unwrap(),
                &deny,
            );
        }
        let full = budget.held();
        assert!(
            full > PER_TOKEN * SLOT,
            "a full table is charged by its capacity: {full}"
        );
        decisions.keep(last, &deny);
        // The 64-entry table is freed, not cleared for reuse: the token holds one entry's table.
        assert_eq!(budget.held(), fresh);
        drop(decisions);
        assert_eq!(budget.held(), 0);
    }
}
