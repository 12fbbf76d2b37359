//! Verified-token cache: SHA-256(token) → the verified token and the key that verified it.
//! A hit costs one hash and one concurrent-map read: no cryptography, no JSON. An entry is
//! valid until the token's `exp` (plus leeway) and only while its key is still in the issuer's
//! current set. Failures are remembered briefly, so a bad token cannot burn CPU; failures that
//! may pass later (unknown `kid`, not valid yet) are not remembered. Both maps are bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::jwks::VerifyKey;
use super::token::{TokenError, VerifiedToken};

pub type TokenHash = [u8; 32];

pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub token: Arc<VerifiedToken>,
    pub key: Arc<VerifyKey>,
    pub issuer: usize,
    /// Unix seconds after which the entry is dead (`exp` + leeway).
    pub valid_until: i64,
}

#[derive(Debug)]
pub struct TokenCache {
    verified: DashMap<TokenHash, Entry>,
    failed: DashMap<TokenHash, (TokenError, Instant)>,
    max_entries: usize,
    negative_ttl: Duration,
}

impl TokenCache {
    pub fn new(max_entries: usize, negative_ttl: Duration) -> Self {
        Self {
            verified: DashMap::new(),
            failed: DashMap::new(),
            max_entries,
            negative_ttl,
        }
    }

    /// A live entry, if any; dead entries are removed on the way.
    pub fn get(&self, hash: &TokenHash, now: i64) -> Option<Entry> {
        let entry = self.verified.get(hash).map(|e| e.value().clone())?;
        if entry.valid_until < now {
            self.verified.remove(hash);
            return None;
        }
        Some(entry)
    }

    pub fn remove(&self, hash: &TokenHash) {
        self.verified.remove(hash);
    }

    pub fn insert(&self, hash: TokenHash, entry: Entry) {
        make_room(&self.verified, self.max_entries);
        self.verified.insert(hash, entry);
    }

    /// The remembered failure of this token, if still fresh.
    pub fn failure(&self, hash: &TokenHash) -> Option<TokenError> {
        let (err, at) = self.failed.get(hash).map(|e| e.value().clone())?;
        if at.elapsed() > self.negative_ttl {
            self.failed.remove(hash);
            return None;
        }
        Some(err)
    }

    pub fn insert_failure(&self, hash: TokenHash, err: TokenError) {
        if err.may_change() {
            return;
        }
        make_room(&self.failed, self.max_entries);
        self.failed.insert(hash, (err, Instant::now()));
    }

    /// Drops what every cached token holds for a policy snapshot (its memo).
    pub fn forget_derived(&self) {
        for entry in &self.verified {
            entry.token.cedar.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.verified.len()
    }

    pub fn failures(&self) -> usize {
        self.failed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verified.is_empty()
    }
}

/// Keeps a map under `max` entries by dropping an arbitrary 1/16 of it when full: eviction is
/// rare and O(n), a lookup stays O(1), and memory stays bounded under a flood of new tokens.
fn make_room<V>(map: &DashMap<TokenHash, V>, max: usize) {
    if map.len() < max {
        return;
    }
    let victims: Vec<TokenHash> = map
        .iter()
        .take((max / 16).max(1))
        .map(|e| *e.key())
        .collect();
    for key in victims {
        map.remove(&key);
    }
}
