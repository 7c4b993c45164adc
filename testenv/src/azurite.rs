//! Azurite (the Azure Blob emulator) of a test environment: settings, containers, object stores.
//!
//! Azurite, like Azure, only accepts blobs in an existing container, and `object_store` cannot
//! create containers, so [`create_container`] sends the one signed REST call needed.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use object_store::ObjectStore;
use object_store::azure::MicrosoftAzureBuilder;

use crate::TestEnv;

/// Azure Storage REST API version used for container creation (object_store 0.14 uses the same).
const API_VERSION: &str = "2023-11-03";

/// Why an Azurite operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AzuriteError {
    /// The environment runs no Azurite (or its variables are not exported to this process).
    #[error(
        "no Azurite in this environment: AZURITE_BLOB_STORAGE_URL is not set (start it with \
         testenv/up without --no-azurite and source its env file)"
    )]
    NotRunning,
    /// The account key is not valid base64.
    #[error("AZURE_STORAGE_ACCOUNT_KEY is not valid base64: {0}")]
    BadKey(#[source] base64::DecodeError),
    /// The container name breaks Azure's rules (3-63 characters: a-z, 0-9, single '-').
    #[error("invalid container name {0:?}: use 3-63 lowercase letters, digits and single hyphens")]
    BadContainerName(String),
    /// The HTTP request failed.
    #[error("creating container {container} at {url} failed: {source}")]
    Http {
        /// The container.
        container: String,
        /// Azurite's blob endpoint.
        url: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
    /// Azurite answered with an error status.
    #[error("creating container {container} failed with HTTP {status}: {body}")]
    Status {
        /// The container.
        container: String,
        /// The HTTP status.
        status: u16,
        /// Azurite's error body.
        body: String,
    },
    /// object_store rejected the configuration.
    #[error("cannot build an object store for container {container}: {source}")]
    Store {
        /// The container.
        container: String,
        /// What went wrong.
        #[source]
        source: object_store::Error,
    },
}

/// Connection settings of an Azurite blob service, as exported by `testenv/up`'s env file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzuriteSettings {
    /// Blob endpoint without the account, e.g. `http://127.0.0.1:41999` (`AZURITE_BLOB_STORAGE_URL`).
    pub blob_url: String,
    /// Account name (`AZURE_STORAGE_ACCOUNT_NAME`, default `devstoreaccount1`).
    pub account: String,
    /// Base64 account key (`AZURE_STORAGE_ACCOUNT_KEY`, default Azurite's public dev key).
    pub key: String,
}

/// Azurite's well-known development account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known (public) development account key.
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl AzuriteSettings {
    /// Reads the settings from the process environment; `None` when `AZURITE_BLOB_STORAGE_URL`
    /// is unset or empty.
    pub fn from_env() -> Option<AzuriteSettings> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(AzuriteSettings {
            blob_url: var("AZURITE_BLOB_STORAGE_URL")?
                .trim_end_matches('/')
                .to_owned(),
            account: var("AZURE_STORAGE_ACCOUNT_NAME").unwrap_or_else(|| DEV_ACCOUNT.to_owned()),
            key: var("AZURE_STORAGE_ACCOUNT_KEY").unwrap_or_else(|| DEV_KEY.to_owned()),
        })
    }

    /// The environment variables a process (e.g. the scorer) needs to reach this Azurite.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            ("AZURITE_BLOB_STORAGE_URL".into(), self.blob_url.clone()),
            ("AZURE_STORAGE_ACCOUNT_NAME".into(), self.account.clone()),
            ("AZURE_STORAGE_ACCOUNT_KEY".into(), self.key.clone()),
        ]
    }
}

/// Creates `container` unless it exists already.
pub async fn create_container(
    settings: &AzuriteSettings,
    container: &str,
) -> Result<(), AzuriteError> {
    if !valid_container_name(container) {
        return Err(AzuriteError::BadContainerName(container.to_owned()));
    }
    let key = BASE64.decode(&settings.key).map_err(AzuriteError::BadKey)?;
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let account = &settings.account;
    let signature =
        shared_key_signature(&key, &container_string_to_sign(account, container, &date));
    let url = format!(
        "{}/{account}/{container}?restype=container",
        settings.blob_url
    );
    let http_err = |source| AzuriteError::Http {
        container: container.to_owned(),
        url: settings.blob_url.clone(),
        source,
    };
    let response = reqwest::Client::new()
        .put(&url)
        .header("x-ms-date", &date)
        .header("x-ms-version", API_VERSION)
        .header("content-length", "0")
        .header("authorization", format!("SharedKey {account}:{signature}"))
        .send()
        .await
        .map_err(http_err)?;
    let status = response.status().as_u16();
    // 409 ContainerAlreadyExists is success for an idempotent create.
    if status == 201 || status == 409 {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(AzuriteError::Status {
        container: container.to_owned(),
        status,
        body,
    })
}

/// A store on `container` of this Azurite, creating the container when needed.
///
/// Uses object_store's emulator mode, which reads `AZURITE_BLOB_STORAGE_URL` from the process
/// environment, exactly as the scorer does.
pub async fn store(
    settings: &AzuriteSettings,
    container: &str,
) -> Result<Arc<dyn ObjectStore>, AzuriteError> {
    create_container(settings, container).await?;
    let store = MicrosoftAzureBuilder::new()
        .with_use_emulator(true)
        .with_account(&settings.account)
        .with_access_key(&settings.key)
        .with_container_name(container)
        .build()
        .map_err(|source| AzuriteError::Store {
            container: container.to_owned(),
            source,
        })?;
    Ok(Arc::new(store))
}

/// A container name no other test uses: `prefix` plus a random suffix (prefix: a-z, 0-9, '-').
pub fn unique_container_name(prefix: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let suffix = RandomState::new().hash_one(std::time::SystemTime::now());
    let mut name = format!("{prefix}-{suffix:016x}");
    name.truncate(63);
    name
}

impl TestEnv {
    /// This environment's Azurite settings, or [`AzuriteError::NotRunning`].
    pub fn azurite_settings(&self) -> Result<&AzuriteSettings, AzuriteError> {
        self.azurite.as_ref().ok_or(AzuriteError::NotRunning)
    }

    /// A store on `container` of this environment's Azurite, creating the container if needed.
    pub async fn azurite_store(
        &self,
        container: &str,
    ) -> Result<Arc<dyn ObjectStore>, AzuriteError> {
        store(self.azurite_settings()?, container).await
    }
}

/// SharedKey string to sign for `PUT ?restype=container` with an empty body: the verb, eleven
/// empty standard headers, the x-ms headers, then the path-style canonical resource.
fn container_string_to_sign(account: &str, container: &str, date: &str) -> String {
    format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n\
         /{account}/{account}/{container}\nrestype:container"
    )
}

fn shared_key_signature(key: &[u8], string_to_sign: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    BASE64.encode(ring::hmac::sign(&key, string_to_sign.as_bytes()).as_ref())
}

fn valid_container_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn container_names_follow_azure_rules() {
        assert!(valid_container_name("models"));
        assert!(valid_container_name("run-1"));
        assert!(!valid_container_name("ab"));
        assert!(!valid_container_name("Models"));
        assert!(!valid_container_name("a--b"));
        assert!(!valid_container_name("-ab"));
        assert!(valid_container_name(&unique_container_name("smoke")));
    }

    #[test]
    fn the_signature_matches_the_shared_key_algorithm() {
        // Same inputs as testenv/azurite/create-container, which signs with openssl.
        let sts =
            container_string_to_sign("devstoreaccount1", "foo", "Thu, 26 Nov 2026 22:00:00 GMT");
        assert!(sts.ends_with("/devstoreaccount1/devstoreaccount1/foo\nrestype:container"));
        assert_eq!(sts.lines().count(), 16);
        let key = BASE64.decode(DEV_KEY).unwrap();
        // Expected value computed with `openssl dgst -sha256 -mac HMAC` over the same bytes.
        assert_eq!(
            shared_key_signature(&key, &sts),
            "nUgsWE9q3L9bq7gD2ibuUOO4k48BOYmt4hbzJXgk38Y="
        );
    }
}
