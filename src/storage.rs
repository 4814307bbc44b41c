//! Where outputs go: a local folder (served by us under /images/) by default, or an
//! S3-compatible bucket. Keys are made by us from IDs, never from anything a client wrote.

use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};

#[derive(Clone)]
pub struct Storage {
    inner: Arc<dyn ObjectStore>,
    /// Prepended to every key (the `prefix` of `s3://bucket/prefix`).
    prefix: String,
    /// Base of public URLs, ending without a slash.
    url_base: String,
    /// Secret mixed into output names (kept in the database, the same for every process).
    key_salt: String,
    /// Object stores serve the Content-Type they were given; a folder is served by us, which
    /// names the type from the extension (and LocalFileSystem keeps no attributes).
    set_content_type: bool,
    /// The folder, for local storage: deleting a request removes its folder whole, with any
    /// file a killed write left staged in it (`LocalFileSystem` writes `name#N`, renames it
    /// into place, and lists neither the staged file nor an empty folder).
    local_root: Option<std::path::PathBuf>,
}

impl Storage {
    /// Opens the storage and proves it is writable, so a missing bucket or bad credentials
    /// stop the service at start rather than failing every image later.
    pub async fn open(
        location: &str,
        public_url: &str,
        s3_public_url: Option<&str>,
    ) -> anyhow::Result<Self> {
        let storage = match location.strip_prefix("s3://") {
            Some(rest) => Self::s3(rest, s3_public_url)?,
            None => {
                std::fs::create_dir_all(location)
                    .with_context(|| format!("cannot create storage folder {location}"))?;
                Self {
                    // Deleting a request's last output removes its folder too (retention).
                    inner: Arc::new(
                        LocalFileSystem::new_with_prefix(location)?.with_automatic_cleanup(true),
                    ),
                    prefix: String::new(),
                    url_base: format!("{public_url}/images"),
                    key_salt: String::new(),
                    set_content_type: false,
                    local_root: Some(location.into()),
                }
            }
        };
        storage
            .probe()
            .await
            .with_context(|| format!("storage {location} is not writable"))?;
        Ok(storage)
    }

    fn s3(rest: &str, public_base: Option<&str>) -> anyhow::Result<Self> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            anyhow::bail!("IMGBATCH_STORAGE must look like s3://bucket/prefix");
        }
        // Endpoint, region, credentials and path style come from the usual AWS_* variables.
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
        if endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
        {
            builder = builder.with_allow_http(true);
        }
        let region = builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".into());
        builder = builder.with_region(&region);
        let store = builder.build().context("invalid S3 settings")?;
        let url_base = match (public_base, endpoint) {
            (Some(base), _) => base.trim_end_matches('/').to_string(),
            (None, Some(e)) => format!("{}/{bucket}", e.trim_end_matches('/')),
            (None, None) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        };
        Ok(Self {
            inner: Arc::new(store),
            prefix: prefix.trim_matches('/').to_string(),
            url_base,
            key_salt: String::new(),
            set_content_type: true,
            local_root: None,
        })
    }

    /// The base of output URLs (`{public_url}/images`, or the bucket's public base).
    pub fn url_base(&self) -> &str {
        &self.url_base
    }

    pub fn with_key_salt(mut self, salt: String) -> Self {
        self.key_salt = salt;
        self
    }

    /// The key of an image's output: `{request}/{ordinal}-{token}.{extension}` (`jpg`, or the
    /// extension of a kept input's format, so local files are served with their real
    /// Content-Type). Output URLs are public
    /// to whoever holds them, so the token (128 bits of a keyed hash) makes them unguessable
    /// even to someone who knows the request ID; being derived, not random, a job that runs
    /// twice (after a crash) writes the same object again instead of leaving a stray one.
    pub fn output_key(
        &self,
        request: crate::domain::RequestId,
        ordinal: i64,
        extension: &str,
    ) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{}/{request}/{ordinal}", self.key_salt));
        let token: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{request}/{ordinal}-{token}.{extension}")
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    async fn probe(&self) -> anyhow::Result<()> {
        // One name per process: several processes may start at once on one storage.
        let name = format!(".imgbatch-write-check-{}", uuid::Uuid::new_v4().simple());
        let path = self.path(&name);
        self.inner
            .put(&path, PutPayload::from_static(b"ok"))
            .await?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores bytes under `key` (overwriting: storing the same output twice is harmless) and
    /// returns its public URL.
    pub async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &'static str,
    ) -> object_store::Result<String> {
        let path = self.path(key);
        let mut opts = PutOptions::default();
        if self.set_content_type {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, content_type.into());
            opts.attributes = attributes;
        }
        self.inner
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await?;
        Ok(format!("{}/{}", self.url_base, path))
    }

    /// The bytes stored under `key`, as they arrive: never the whole object in memory.
    pub async fn read(
        &self,
        key: &str,
    ) -> object_store::Result<BoxStream<'static, object_store::Result<Bytes>>> {
        Ok(self.inner.get(&self.path(key)).await?.into_stream())
    }

    /// Deletes every object of a request (`{request}/…`), whatever rows name them, and says
    /// how many there were. Deleting what is already gone is not an error, so a deletion cut
    /// short can simply run again.
    pub async fn delete_request(&self, request: crate::domain::RequestId) -> anyhow::Result<u64> {
        if let Some(root) = &self.local_root {
            let folder = root.join(request.to_string());
            return tokio::task::spawn_blocking(move || remove_folder(&folder))
                .await
                .context("the deletion's thread died")?
                .context("cannot delete a request's outputs");
        }
        let prefix = self.path(&request.to_string());
        let locations = self
            .inner
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        let mut deleted = self.inner.delete_stream(locations);
        let mut n = 0;
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) => n += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e).context("cannot delete an output"),
            }
        }
        Ok(n)
    }
}

/// Removes a request's folder and everything in it, and says how many files it held. A folder
/// already gone, or emptied by a deletion that was cut short, is not an error.
fn remove_folder(folder: &std::path::Path) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for entry in entries {
        if entry?.file_type()?.is_file() {
            n += 1;
        }
    }
    match std::fs::remove_dir_all(folder) {
        Ok(()) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(n),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deleting_a_local_request_takes_staged_leftovers_and_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let storage = Storage::open(root, "http://x", None).await.unwrap();
        let request = crate::domain::RequestId::new();
        let other = crate::domain::RequestId::new();
        for id in [request, other] {
            let key = storage.output_key(id, 1, "jpg");
            storage
                .put(&key, vec![1, 2, 3], "image/jpeg")
                .await
                .unwrap();
        }
        // What a write killed between its staging and its rename leaves behind.
        let folder = dir.path().join(request.to_string());
        std::fs::write(folder.join("2-abc.jpg#1"), b"partial").unwrap();
        assert_eq!(storage.delete_request(request).await.unwrap(), 2);
        assert!(!folder.exists(), "the folder outlived its request");
        assert!(dir.path().join(other.to_string()).exists());
        // Once more, as after a deletion cut short: nothing left, no error.
        assert_eq!(storage.delete_request(request).await.unwrap(), 0);
    }
}
