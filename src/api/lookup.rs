//! What a handler answers for a request it cannot read: 410 if retention deleted it (while its
//! tombstone is kept), else 404.

use crate::core::Core;
use crate::domain::{Owner, RequestId};
use crate::error::ApiError;

/// 410 for `owner`'s deleted request `id`, else 404 (also for another owner's).
pub async fn missing(core: &Core, id: RequestId, owner: &Owner) -> ApiError {
    match core.deleted_at(id, owner).await {
        Ok(Some(at)) => ApiError::request_gone(at),
        Ok(None) => ApiError::request_not_found(),
        Err(e) => e.into(),
    }
}
