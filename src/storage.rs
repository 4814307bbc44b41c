//! Where outputs go: a local folder (served by us under /images/) by default. Keys are made by
//! us from IDs, never from anything a client wrote.

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

#[derive(Clone)]
pub struct Storage {
    inner: Arc<dyn ObjectStore>,
    /// Base of public URLs, ending without a slash.
    url_base: String,
}

impl Storage {
    pub fn open(location: &str, public_url: &str) -> anyhow::Result<Self> {
        if location.starts_with("s3://") {
            anyhow::bail!("S3 storage is not available in this build yet; use a local folder");
        }
        std::fs::create_dir_all(location)
            .map_err(|e| anyhow::anyhow!("cannot create storage folder {location}: {e}"))?;
        let fs = LocalFileSystem::new_with_prefix(location)?;
        Ok(Self {
            inner: Arc::new(fs),
            url_base: format!("{public_url}/images"),
        })
    }

    /// Stores bytes under `key` (overwriting: storing the same output twice is harmless) and
    /// returns its public URL.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> object_store::Result<String> {
        self.inner
            .put(&Path::from(key), PutPayload::from(bytes))
            .await?;
        Ok(format!("{}/{}", self.url_base, key))
    }
}
