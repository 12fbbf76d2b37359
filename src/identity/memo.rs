//! A slot that caches, beside a value shared by many checks (a verified token, a peer), one
//! thing derived from it for one policy snapshot: the Cedar entities of a token's principal.
//! The identity side owns the slot and never looks inside it; the policy side fills it and
//! reads it back. Keyed by the snapshot's id, so a reload is never served parts built from
//! the previous set; it lives and dies with the value it sits in (a token leaving the token
//! cache takes its parts with it).

use std::any::Any;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

/// One cached value of any type, for one key (a policy snapshot's id). Lock-free to read.
#[derive(Default)]
pub struct Memo(ArcSwapOption<Entry>);

struct Entry {
    key: u64,
    value: Arc<dyn Any + Send + Sync>,
}

impl Memo {
    /// The value cached for `key`, when it is one of type `T`.
    pub fn get<T: Any + Send + Sync>(&self, key: u64) -> Option<Arc<T>> {
        let entry = self.0.load();
        let entry = entry.as_ref().filter(|e| e.key == key)?;
        Arc::clone(&entry.value).downcast::<T>().ok()
    }

    /// Drops what is cached.
    pub fn clear(&self) {
        self.0.store(None);
    }

    /// Caches `value` for `key`, replacing what was cached for any key.
    pub fn set<T: Any + Send + Sync>(&self, key: u64, value: Arc<T>) {
        self.0.store(Some(Arc::new(Entry { key, value })));
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
        assert!(memo.get::<u32>(1).is_none(), "replaced");
        assert!(memo.clone().get::<u32>(2).is_none(), "a copy starts empty");
    }
}
