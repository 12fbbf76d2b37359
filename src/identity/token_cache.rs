//! Verified-token cache: SHA-256(token) → the verified token and the key that verified it.
//! A hit costs one hash and one concurrent-map read: no cryptography, no JSON. An entry is
//! valid until the token's `exp` (plus leeway) and only while its key is still in the issuer's
//! current set. Failures are remembered briefly, so a bad token cannot burn CPU; failures that
//! may pass later (unknown `kid`, not valid yet) are not remembered.
//!
//! Both maps are bounded caches (`quick_cache`, S3-FIFO-like: a token enters a small
//! probation queue and reaches the main one when it is seen again), so a flood of tokens seen
//! once (a scanner, a burst of fresh logins) passes through probation without pushing out the
//! tokens in use. `benches/token_cache.rs` counts the difference: with the earlier map, which
//! dropped an arbitrary 1/16 when full, 83 % of the checks of tokens in use re-verified a
//! signature under such a flood (BENCHMARKS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
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
    verified: Cache<TokenHash, Entry>,
    failed: Cache<TokenHash, (TokenError, Instant)>,
    negative_ttl: Duration,
}

impl TokenCache {
    pub fn new(max_entries: usize, negative_ttl: Duration) -> Self {
        Self {
            verified: Cache::new(max_entries),
            failed: Cache::new(max_entries),
            negative_ttl,
        }
    }

    /// A live entry, if any; dead entries are removed on the way.
    pub fn get(&self, hash: &TokenHash, now: i64) -> Option<Entry> {
        let entry = self.verified.get(hash)?;
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
        self.verified.insert(hash, entry);
    }

    /// The remembered failure of this token, if still fresh.
    pub fn failure(&self, hash: &TokenHash) -> Option<TokenError> {
        let (err, at) = self.failed.get(hash)?;
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
        self.failed.insert(hash, (err, Instant::now()));
    }

    /// Drops what every cached token holds for a policy snapshot (its memo).
    pub fn forget_derived(&self) {
        for (_, entry) in self.verified.iter() {
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
