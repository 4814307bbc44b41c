//! Serialized status bodies of finished requests. A finished request changes only when its
//! webhook delivery does, so after one small query for its version the body can be served
//! from memory: scripts that poll a finished request (or a dashboard refreshing many) cost
//! almost nothing. Requests still running are always read fresh.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use crate::core::RequestVersion;
use crate::domain::Owner;
use crate::domain::RequestId;

type Key = (RequestId, Owner);

pub struct StatusCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, (RequestVersion, Bytes)>,
    bytes: usize,
}

impl StatusCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::default(),
        }
    }

    pub fn get(&self, id: RequestId, owner: &Owner, version: &RequestVersion) -> Option<Bytes> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.entries.get(&(id, owner.clone())) {
            Some((v, body)) if v == version => Some(body.clone()),
            _ => None,
        }
    }

    pub fn put(&self, id: RequestId, owner: &Owner, version: RequestVersion, body: Bytes) {
        if body.len() > self.max_bytes / 8 {
            return; // a very large body would evict everything else
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.bytes + body.len() > self.max_bytes {
            // Rare at this size; starting over is simpler than tracking recency.
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.bytes += body.len();
        if let Some((_, old)) = inner.entries.insert((id, owner.clone()), (version, body)) {
            inner.bytes -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    fn version(status: Status, attempts: i64) -> RequestVersion {
        RequestVersion {
            status,
            updated_at: chrono::DateTime::from_timestamp_millis(1_000).unwrap(),
            webhook: Some((
                chrono::DateTime::from_timestamp_millis(2_000).unwrap(),
                attempts,
                "pending".into(),
            )),
        }
    }

    #[test]
    fn serves_only_the_same_version_and_stays_bounded() {
        let cache = StatusCache::new(800);
        let id = RequestId::new();
        cache.put(
            id,
            &Owner::open(),
            version(Status::Completed, 1),
            Bytes::from_static(b"body-1"),
        );
        assert_eq!(
            cache
                .get(id, &Owner::open(), &version(Status::Completed, 1))
                .unwrap(),
            "body-1"
        );
        assert!(cache
            .get(id, &Owner::open(), &version(Status::Completed, 2))
            .is_none());
        assert!(cache
            .get(id, &Owner::of_key("other"), &version(Status::Completed, 1))
            .is_none());
        for _ in 0..50 {
            cache.put(
                RequestId::new(),
                &Owner::open(),
                version(Status::Completed, 1),
                Bytes::from(vec![0u8; 90]),
            );
        }
        assert!(cache.inner.lock().unwrap().bytes <= 800);
        cache.put(
            id,
            &Owner::open(),
            version(Status::Completed, 1),
            Bytes::from(vec![0u8; 500]),
        );
        assert!(
            cache
                .get(id, &Owner::open(), &version(Status::Completed, 1))
                .is_none()
                || cache.inner.lock().unwrap().bytes <= 800
        );
    }
}
