//! Where data, models and outputs live: local files (the default) or Azure Blob (`az://`).
//!
//! Credentials come from the environment (object_store's `AZURE_*` names) or from files mounted
//! from a Secret (`AZURE_STORAGE_ACCOUNT_KEY_FILE`, `AZURE_STORAGE_SAS_KEY_FILE`), never from the
//! command line.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

/// Why a storage location could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL's form is not one we know.
    #[error("unsupported storage URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A mounted credential file could not be read.
    #[error("cannot read credential file {path} (from {var}): {source}")]
    CredentialFile {
        /// The file's path.
        path: String,
        /// The environment variable that named it.
        var: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Azure client could not be configured.
    #[error("cannot configure Azure Blob storage for {url}: {source}")]
    Azure {
        /// The URL being opened.
        url: String,
        /// object_store's error.
        #[source]
        source: object_store::Error,
    },
    /// A request to the store failed.
    #[error("{op} {location}: {source}")]
    Request {
        /// What was being done (read, write, list).
        op: &'static str,
        /// The object or prefix, as a URL-like string.
        location: String,
        /// object_store's error.
        #[source]
        source: object_store::Error,
    },
    /// A local path could not be turned into a store path.
    #[error("invalid local path {path}: {reason}")]
    LocalPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// An opened location: a store plus the path inside it that the URL named.
#[derive(Clone, Debug)]
pub struct Location {
    /// The store holding the objects.
    pub store: Arc<dyn ObjectStore>,
    /// The object or prefix the URL named, inside `store`.
    pub path: Path,
    /// The URL as given (for messages).
    pub url: String,
}

impl Location {
    /// The location of `rel` (slash-separated) under this one.
    pub fn child(&self, rel: &str) -> Location {
        let mut path = self.path.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            path = path.clone().join(part);
        }
        Location {
            store: self.store.clone(),
            path,
            url: format!("{}/{}", self.url.trim_end_matches('/'), rel),
        }
    }

    /// Reads the whole object.
    pub async fn get(&self) -> Result<Bytes, StorageError> {
        let result = self
            .store
            .get(&self.path)
            .await
            .map_err(|source| self.err("read", source))?;
        result
            .bytes()
            .await
            .map_err(|source| self.err("read", source))
    }

    /// Writes (or overwrites) the whole object.
    pub async fn put(&self, data: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&self.path, PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|source| self.err("write", source))
    }

    /// Deletes the object; one that does not exist is not an error.
    pub async fn delete(&self) -> Result<(), StorageError> {
        match self.store.delete(&self.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.err("delete", source)),
        }
    }

    /// Lists every object under this prefix (recursively), sorted by path.
    pub async fn list(&self) -> Result<Vec<Path>, StorageError> {
        let prefix = if self.path.as_ref().is_empty() {
            None
        } else {
            Some(&self.path)
        };
        let mut paths: Vec<Path> = self
            .store
            .list(prefix)
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .or_else(|e| match e {
                // A prefix that does not exist yet lists as empty, like a blob container does.
                object_store::Error::NotFound { .. } => Ok(Vec::new()),
                e => Err(e),
            })
            .map_err(|source| self.err("list", source))?;
        paths.sort();
        Ok(paths)
    }

    /// Deletes every object under this prefix; returns how many there were.
    pub async fn delete_all(&self) -> Result<usize, StorageError> {
        let paths = self.list().await?;
        for p in &paths {
            match self.store.delete(p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(self.err("delete", source)),
            }
        }
        Ok(paths.len())
    }

    /// The object's path relative to this prefix (`a/b.csv`), or None when it is not below it.
    pub fn relative(&self, object: &Path) -> Option<String> {
        let parts: Vec<_> = object
            .prefix_match(&self.path)?
            .map(|p| p.as_ref().to_string())
            .collect();
        Some(parts.join("/"))
    }

    fn err(&self, op: &'static str, source: object_store::Error) -> StorageError {
        StorageError::Request {
            op,
            location: format!("{} ({})", self.url, self.path),
            source,
        }
    }
}

/// Opens a URL: a local path, `file:///...`, or `az://<container>/<path>`.
pub fn open(url: &str) -> Result<Location, StorageError> {
    if let Some(rest) = url
        .strip_prefix("az://")
        .or_else(|| url.strip_prefix("azure://"))
    {
        let (container, path) = rest.split_once('/').unwrap_or((rest, ""));
        if container.is_empty() {
            return Err(StorageError::BadUrl {
                url: url.to_string(),
                reason: "no container name after az://".into(),
            });
        }
        let store = azure_store(url, container)?;
        return Ok(Location {
            store,
            path: Path::from(path.trim_matches('/')),
            url: url.to_string(),
        });
    }
    if let Some(rest) = url.strip_prefix("file://") {
        return open_local(url, rest);
    }
    if url.contains("://") {
        return Err(StorageError::BadUrl {
            url: url.to_string(),
            reason: "expected a local path, file:///..., or az://<container>/<path>".into(),
        });
    }
    open_local(url, url)
}

fn open_local(url: &str, path: &str) -> Result<Location, StorageError> {
    let local_err = |reason: String| StorageError::LocalPath {
        path: path.to_string(),
        reason,
    };
    let abs = std::path::absolute(path).map_err(|e| local_err(e.to_string()))?;
    let store_path = Path::from_absolute_path(&abs).map_err(|e| local_err(e.to_string()))?;
    Ok(Location {
        store: Arc::new(LocalFileSystem::new()),
        path: store_path,
        url: url.to_string(),
    })
}

/// Builds the Azure client from the environment plus mounted credential files.
fn azure_store(url: &str, container: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let mut builder = MicrosoftAzureBuilder::from_env().with_container_name(container);
    for (var, key) in [
        ("AZURE_STORAGE_ACCOUNT_KEY_FILE", AzureConfigKey::AccessKey),
        ("AZURE_STORAGE_SAS_KEY_FILE", AzureConfigKey::SasKey),
        (
            "AZURE_STORAGE_ACCOUNT_NAME_FILE",
            AzureConfigKey::AccountName,
        ),
    ] {
        if let Ok(file) = std::env::var(var) {
            let text =
                std::fs::read_to_string(&file).map_err(|source| StorageError::CredentialFile {
                    path: file.clone(),
                    var,
                    source,
                })?;
            builder = builder.with_config(key, text.trim());
        }
    }
    let retry = RetryConfig {
        max_retries: 5,
        retry_timeout: Duration::from_secs(120),
        ..RetryConfig::default()
    };
    let store = builder
        .with_retry(retry)
        .build()
        .map_err(|source| StorageError::Azure {
            url: url.to_string(),
            source,
        })?;
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_paths_write_read_and_list_below_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let root = open(dir.path().to_str().unwrap()).unwrap();
        root.child("a/b/c.csv")
            .put(Bytes::from_static(b"x"))
            .await
            .unwrap();
        root.child("a/d.csv")
            .put(Bytes::from_static(b"y"))
            .await
            .unwrap();
        assert_eq!(
            root.child("a/b/c.csv").get().await.unwrap(),
            Bytes::from_static(b"x")
        );
        let listed = root.child("a").list().await.unwrap();
        let rel: Vec<_> = listed
            .iter()
            .filter_map(|p| root.child("a").relative(p))
            .collect();
        assert_eq!(rel, vec!["b/c.csv".to_string(), "d.csv".to_string()]);
        let missing = root.child("nothing-here").list().await.unwrap();
        assert!(missing.is_empty());
    }

    #[test]
    fn file_urls_and_unknown_schemes_are_told_apart() {
        assert!(open("file:///tmp/x").is_ok());
        assert!(matches!(
            open("s3://bucket/x"),
            Err(StorageError::BadUrl { .. })
        ));
        assert!(matches!(open("az:///x"), Err(StorageError::BadUrl { .. })));
    }
}
