//! The bounded plan cache, keyed by (statement text, route); the rewriter keeps one of plans by exact text
//! and one of templates by statement shape (see `literals`). Sharded by key hash so sessions on different
//! statements rarely meet on a lock, and a lock is only held for a map lookup or insert: plans are built
//! outside it. Eviction is FIFO with a second chance (CLOCK), per shard.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::route::Route;

const SHARDS: usize = 16;

/// Hit and miss counts since the rewriter was built, for `dualwrite_rewrite_cache_{hits,misses}_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
}

pub(crate) struct PlanCache<V> {
    shards: Vec<Mutex<Shard<V>>>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Shard<V> {
    slots: HashMap<u64, Vec<Slot<V>>>,
    /// Insertion order of (hash, generation) for eviction.
    order: VecDeque<(u64, u64)>,
    generation: u64,
    len: usize,
}

impl<V> Default for Shard<V> {
    fn default() -> Self {
        Shard { slots: HashMap::new(), order: VecDeque::new(), generation: 0, len: 0 }
    }
}

struct Slot<V> {
    sql: Box<str>,
    route: Route,
    plan: Arc<V>,
    generation: u64,
    referenced: bool,
}

impl<V> PlanCache<V> {
    pub fn new(capacity: usize) -> PlanCache<V> {
        PlanCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: Default::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn hash(&self, sql: &str, route: &Route) -> u64 {
        let mut h = self.hasher.build_hasher();
        sql.hash(&mut h);
        route.hash(&mut h);
        h.finish()
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard<V>> {
        // A panic while holding a shard lock leaves only a plain map behind: keep using it.
        self.shards[(hash >> 59) as usize % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached plan, or the one `build` makes (built without holding any lock, then cached).
    pub fn get_or_build(&self, sql: &str, route: &Route, build: impl FnOnce() -> V) -> Arc<V> {
        let (value, hit) = self.get_or_build_uncounted(sql, route, build);
        self.count(hit);
        value
    }

    /// Counts one lookup as a hit or a miss.
    pub fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// [`get_or_build`](Self::get_or_build) without counting; the flag says whether it was a hit.
    pub fn get_or_build_uncounted(&self, sql: &str, route: &Route, build: impl FnOnce() -> V) -> (Arc<V>, bool) {
        if self.per_shard == 0 {
            return (Arc::new(build()), false);
        }
        let hash = self.hash(sql, route);
        {
            let mut shard = self.shard(hash);
            if let Some(slot) =
                shard.slots.get_mut(&hash).and_then(|v| v.iter_mut().find(|s| &*s.sql == sql && s.route == *route))
            {
                slot.referenced = true;
                return (slot.plan.clone(), true);
            }
        }
        let plan = Arc::new(build());
        let mut shard = self.shard(hash);
        let already = shard
            .slots
            .get(&hash)
            .and_then(|v| v.iter().find(|s| &*s.sql == sql && s.route == *route))
            .map(|s| s.plan.clone());
        if let Some(existing) = already {
            return (existing, false);
        }
        while shard.len >= self.per_shard && shard.evict_one() {}
        shard.generation += 1;
        let generation = shard.generation;
        shard.slots.entry(hash).or_default().push(Slot {
            sql: sql.into(),
            route: route.clone(),
            plan: plan.clone(),
            generation,
            referenced: false,
        });
        shard.order.push_back((hash, generation));
        shard.len += 1;
        (plan, false)
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.shards.iter().map(|s| s.lock().map(|s| s.len).unwrap_or(0)).sum(),
        }
    }
}

impl<V> Shard<V> {
    /// Evicts the oldest entry not used since it was last looked at; returns false if empty.
    fn evict_one(&mut self) -> bool {
        while let Some((hash, generation)) = self.order.pop_front() {
            let Some(slots) = self.slots.get_mut(&hash) else { continue };
            let Some(pos) = slots.iter().position(|s| s.generation == generation) else { continue };
            if slots[pos].referenced {
                slots[pos].referenced = false;
                self.order.push_back((hash, generation));
                continue;
            }
            slots.swap_remove(pos);
            if slots.is_empty() {
                self.slots.remove(&hash);
            }
            self.len -= 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    #[test]
    fn caches_by_text_and_route_and_stays_bounded() {
        let cache = PlanCache::<Plan>::new(32);
        let route = Route::default();
        let mut builds = 0;
        for _ in 0..3 {
            cache.get_or_build("SELECT 1", &route, || {
                builds += 1;
                Plan::PassThrough
            });
        }
        assert_eq!(builds, 1);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (2, 1, 1));
        for i in 0..1000 {
            cache.get_or_build(&format!("SELECT {i}"), &route, || Plan::PassThrough);
        }
        assert!(cache.stats().entries <= 32, "{:?}", cache.stats());
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = PlanCache::<Plan>::new(0);
        cache.get_or_build("x", &Route::default(), || Plan::PassThrough);
        cache.get_or_build("x", &Route::default(), || Plan::PassThrough);
        assert_eq!(cache.stats(), CacheStats { hits: 0, misses: 2, entries: 0 });
    }
}
