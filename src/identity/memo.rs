//! Slots that cache, beside a value shared by many checks (a verified token, a peer), what is
//! derived from it for one policy snapshot (two at most: the live set and a candidate set
//! evaluated beside it): the Cedar entities of a token's principal. The identity side owns
//! the slots and never looks inside it; the policy side fills it and
//! reads it back. Keyed by the snapshot's id, so a reload is never served parts built from
//! the previous set; it lives and dies with the value it sits in (a token leaving the token
//! cache takes its parts with it).

use std::any::Any;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

/// Cached values of any type, each for one key (a policy snapshot's id), at most [`SLOTS`]:
/// the set in force and a candidate set evaluated beside it keep their parts side by side.
/// Lock-free to read.
#[derive(Default)]
pub struct Memo([ArcSwapOption<Entry>; SLOTS]);

/// Keys kept at once: the live policy set and the candidate (shadow) set.
pub const SLOTS: usize = 2;

struct Entry {
    key: u64,
    value: Arc<dyn Any + Send + Sync>,
}

impl Memo {
    /// The value cached for `key`, when it is one of type `T`.
    pub fn get<T: Any + Send + Sync>(&self, key: u64) -> Option<Arc<T>> {
        self.0.iter().find_map(|slot| {
            let entry = slot.load();
            let entry = entry.as_ref().filter(|e| e.key == key)?;
            Arc::clone(&entry.value).downcast::<T>().ok()
        })
    }

    /// Drops what is cached.
    pub fn clear(&self) {
        for slot in &self.0 {
            slot.store(None);
        }
    }

    /// Caches `value` for `key`: in the slot that holds `key`, else an empty one, else in
    /// place of the oldest key (snapshot ids only grow, and the newest sets are in use).
    pub fn set<T: Any + Send + Sync>(&self, key: u64, value: Arc<T>) {
        let keys: Vec<Option<u64>> = self
            .0
            .iter()
            .map(|slot| slot.load().as_ref().map(|e| e.key))
            .collect();
        let index = keys
            .iter()
            .position(|k| *k == Some(key))
            .or_else(|| keys.iter().position(Option::is_none))
            .or_else(|| {
                keys.iter()
                    .enumerate()
                    .min_by_key(|(_, k)| k.unwrap_or(0))
                    .map(|(i, _)| i)
            })
            .unwrap_or(0);
        if let Some(slot) = self.0.get(index) {
            slot.store(Some(Arc::new(Entry { key, value })));
        }
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

/// A copy starts empty: what is cached belongs to the original.
impl Clone for Memo {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// A cache never makes two values differ.
impl PartialEq for Memo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Memo {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_and_typed() {
        let memo = Memo::default();
        assert!(memo.get::<u32>(1).is_none());
        memo.set(1, Arc::new(7u32));
        assert_eq!(memo.get::<u32>(1).as_deref(), Some(&7));
        assert!(memo.get::<u32>(2).is_none(), "another snapshot");
        assert!(memo.get::<String>(1).is_none(), "another type");
        memo.set(2, Arc::new(8u32));
        assert_eq!(
            memo.get::<u32>(1).as_deref(),
            Some(&7),
            "two keys side by side"
        );
        assert_eq!(memo.get::<u32>(2).as_deref(), Some(&8));
        memo.set(3, Arc::new(9u32));
        assert!(memo.get::<u32>(1).is_none(), "the oldest key replaced");
        assert_eq!(memo.get::<u32>(2).as_deref(), Some(&8));
        memo.set(2, Arc::new(10u32));
        assert_eq!(memo.get::<u32>(2).as_deref(), Some(&10), "its own slot");
        assert_eq!(memo.get::<u32>(3).as_deref(), Some(&9));
        assert!(memo.clone().get::<u32>(2).is_none(), "a copy starts empty");
        memo.clear();
        assert!(memo.get::<u32>(3).is_none());
    }
}
