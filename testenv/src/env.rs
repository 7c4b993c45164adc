//! [`TestEnv`]: the connection to a test environment started by `testenv/up`.

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

use crate::azurite::AzuriteSettings;

/// Environment variable naming the directory `testenv/up` wrote (its `env` file exports it).
pub const TESTENV_VAR: &str = "FLEETSCORE_TESTENV";
/// Environment variable naming the directory with kubectl, helm, kwok and the control plane.
pub const BIN_VAR: &str = "FLEETSCORE_BIN";

/// How to get an environment, repeated in every "not running inside one" message.
const HOW_TO_RUN: &str =
    "run via scripts/test or `testenv/with-env -- cargo test -p fleetscore-testenv`";

/// Why a [`TestEnv`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TestEnvError {
    /// `FLEETSCORE_TESTENV` is not set: the test does not run inside an environment.
    #[error("{TESTENV_VAR} is not set, so there is no test environment: {HOW_TO_RUN}")]
    NotInEnvironment,
    /// The environment's kubeconfig is missing or invalid.
    #[error("cannot read the test environment's kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: KubeconfigError,
    },
    /// The kube client could not be built from the kubeconfig.
    #[error("cannot build a kube client from {path}: {source}")]
    Client {
        /// The kubeconfig file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: kube::Error,
    },
}

/// A running test environment: a kube client on its API server plus its Azurite and binaries.
///
/// Make one per test ([`TestEnv::get`] or [`TestEnv::for_test`]): a kube client belongs to the
/// tokio runtime it was made on, and each `#[tokio::test]` has its own runtime.
#[derive(Clone)]
pub struct TestEnv {
    /// Client with cluster-admin rights (group `system:masters`).
    pub client: Client,
    /// The environment's directory (`env`, `kubeconfig`, `logs/`).
    pub dir: PathBuf,
    /// Directory with kubectl, helm, kwok, etcd and the Kubernetes binaries, if known.
    pub bin_dir: Option<PathBuf>,
    /// Azurite's connection settings, when the environment runs Azurite.
    pub azurite: Option<AzuriteSettings>,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("dir", &self.dir)
            .field("bin_dir", &self.bin_dir)
            .field("azurite", &self.azurite)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// Connects to the environment named by `FLEETSCORE_TESTENV` (its own kubeconfig, never the
    /// user's `KUBECONFIG`, so tests cannot touch a real cluster by accident).
    pub async fn get() -> Result<TestEnv, TestEnvError> {
        install_crypto_provider();
        let dir = std::env::var_os(TESTENV_VAR)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .ok_or(TestEnvError::NotInEnvironment)?;
        let path = dir.join("kubeconfig");
        let kubeconfig =
            Kubeconfig::read_from(&path).map_err(|source| TestEnvError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| TestEnvError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
        let client =
            Client::try_from(config).map_err(|source| TestEnvError::Client { path, source })?;
        let bin_dir = std::env::var_os(BIN_VAR)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        Ok(TestEnv {
            client,
            dir,
            bin_dir,
            azurite: AzuriteSettings::from_env(),
        })
    }

    /// [`TestEnv::get`] for a test: `None` (after printing why) when there is no environment, so
    /// the test returns early; panics instead when `FLEETSCORE_REQUIRE_ALL=1` or when an
    /// environment is named but broken.
    pub async fn for_test() -> Option<TestEnv> {
        match TestEnv::get().await {
            Ok(env) => Some(env),
            Err(e @ TestEnvError::NotInEnvironment) => {
                crate::skip::skip_or_fail(e);
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Path of a tool binary (`kubectl`, `helm`, `kwok`, ...): from `FLEETSCORE_BIN` when set,
    /// otherwise the bare name (looked up on `PATH`, which the env file prepends with that dir).
    pub fn tool(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// A `kubectl` command (the version matching the server) pointed at this environment.
    pub fn kubectl(&self) -> Command {
        self.tool_command("kubectl")
    }

    /// A `helm` command pointed at this environment.
    pub fn helm(&self) -> Command {
        self.tool_command("helm")
    }

    /// The environment's kubeconfig file.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The environment's log directory (one `<component>.log` per process).
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Runs `f` with a fresh namespace, then deletes it (also when `f` panics).
    pub async fn with_temp_ns<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce(Client, String) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        crate::namespace::run_in_temp_ns(self.client.clone(), f).await
    }

    fn tool_command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.tool(name));
        cmd.env("KUBECONFIG", self.kubeconfig());
        cmd
    }
}

/// Selects rustls' ring provider for this process, once. The workspace enables both of rustls'
/// providers (kube: ring, reqwest: aws-lc-rs), so rustls cannot pick one by itself and panics
/// when a kube client is built without this.
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether `path` looks like a test environment directory made by `testenv/up`.
pub fn is_testenv_dir(path: &Path) -> bool {
    path.join(".fleetscore-testenv").exists()
}
