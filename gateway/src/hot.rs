//! What the asynchronous hot path needs per function, made once: the call subject (the shard map
//! is fixed once the topology is agreed) and the metric handles. A known function's enqueue then
//! skips parsing its name, formatting its subject and looking up labelled metrics.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::Subject;
use flotilla_queue::{FunctionName, ShardMap, subjects};
use flotilla_runtime::Telemetry;

use crate::metrics::Accepted;

/// Functions beyond this many are served uncached: client-chosen names must not grow the cache
/// without bound.
const MAX_CACHED: usize = 10_000;

/// One function's hot-path state.
pub struct Hot {
    pub function: FunctionName,
    pub shard: u32,
    /// `flotilla.call.<shard>.<function>`; cloning shares the bytes.
    pub subject: Subject,
    pub accepted: Accepted,
}

impl Hot {
    fn new(function: &FunctionName, shards: &ShardMap, telemetry: &Telemetry) -> Self {
        let shard = shards.shard_of(function.as_str());
        Self {
            function: function.clone(),
            shard,
            subject: Subject::from(subjects::call_subject(shard, function)),
            accepted: Accepted::new(telemetry, function.as_str()),
        }
    }
}

impl Hot {
    /// The function's name.
    pub fn function(&self) -> &str {
        self.function.as_str()
    }
}

/// The cache. Entries are made only for valid names, after the topology is agreed, and never
/// change: a function's shard is fixed for the topology's life.
pub struct HotFunctions {
    map: RwLock<HashMap<Box<str>, Arc<Hot>>>,
    /// The gateway's recorder, which the entries' handles are registered with.
    telemetry: Telemetry,
}

impl std::fmt::Debug for HotFunctions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotFunctions").finish_non_exhaustive()
    }
}

impl HotFunctions {
    /// An empty cache whose entries count into `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self {
            map: RwLock::default(),
            telemetry,
        }
    }

    /// The entry of `name`, when it was made before (so `name` is a valid function name).
    pub fn get(&self, name: &str) -> Option<Arc<Hot>> {
        self.map.read().ok()?.get(name).cloned()
    }

    /// Makes the entry of `function`, keeping it while the cache has room.
    pub fn make(&self, function: &FunctionName, shards: &ShardMap) -> Arc<Hot> {
        let hot = Arc::new(Hot::new(function, shards, &self.telemetry));
        if let Ok(mut map) = self.map.write()
            && map.len() < MAX_CACHED
        {
            return map.entry(function.as_str().into()).or_insert(hot).clone();
        }
        hot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_hold_the_shard_and_subject() {
        let shards = ShardMap::new(4);
        let f = FunctionName::parse("echo.ns").unwrap();
        let cache = HotFunctions::new(Telemetry::new(1));
        assert!(cache.get("echo.ns").is_none());
        let made = cache.make(&f, &shards);
        let k = shards.shard_of("echo.ns");
        assert_eq!(made.shard, k);
        assert_eq!(made.subject.as_str(), subjects::call_subject(k, &f));
        let again = cache.get("echo.ns").unwrap();
        assert!(Arc::ptr_eq(&made, &again));
    }
}
