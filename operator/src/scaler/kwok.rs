//! A fake node pool for local runs, tests and demos: the scaler creates and deletes v1 Nodes
//! that kwok manages (annotation `kwok.x-k8s.io/node=fake`), labelled with the pool, so scoring
//! pods that select the pool stay Pending until nodes exist, exactly as on AKS.

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;

/// The label every pool node carries (`fleetscore.dev/pool=<pool>`); scoring pods select it.
pub const POOL_LABEL: &str = "fleetscore.dev/pool";
/// kwok takes over nodes with this annotation.
pub const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// The field manager for node writes.
pub const FIELD_MANAGER: &str = "fleetscore-scaler";

/// A kwok pool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KwokError {
    /// Listing the pool's nodes failed.
    #[error("kwok pool {pool}: cannot list nodes: {source}")]
    List {
        /// Pool.
        pool: String,
        /// API error.
        #[source]
        source: kube::Error,
    },
    /// Creating a node failed.
    #[error("kwok pool {pool}: cannot create node {node}: {source}")]
    Create {
        /// Pool.
        pool: String,
        /// Node name.
        node: String,
        /// API error.
        #[source]
        source: kube::Error,
    },
    /// Cordoning, checking or deleting a node failed.
    #[error("kwok pool {pool}: cannot remove node {node}: {source}")]
    Remove {
        /// Pool.
        pool: String,
        /// Node name.
        node: String,
        /// API error.
        #[source]
        source: kube::Error,
    },
}

/// What a fake node looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTemplate {
    /// CPU capacity, e.g. `4`.
    pub cpu: String,
    /// Memory capacity, e.g. `16Gi`.
    pub memory: String,
    /// Pod capacity.
    pub pods: u32,
    /// Optional NoSchedule taint `key=value` that scoring pods tolerate.
    pub taint: Option<(String, String)>,
}

impl Default for NodeTemplate {
    fn default() -> Self {
        Self {
            cpu: "4".into(),
            memory: "16Gi".into(),
            pods: 110,
            taint: None,
        }
    }
}

/// The pool's nodes as seen now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolNodes {
    /// Node names, sorted.
    pub names: Vec<String>,
}

/// A pool of kwok Nodes named `fleetscore-<pool>-<n>`.
#[derive(Clone)]
pub struct KwokPool {
    nodes: Api<Node>,
    pods: Api<Pod>,
    pool: String,
    template: NodeTemplate,
}

impl KwokPool {
    /// A pool called `pool` in the cluster behind `client`.
    pub fn new(client: kube::Client, pool: impl Into<String>, template: NodeTemplate) -> Self {
        Self {
            nodes: Api::all(client.clone()),
            pods: Api::all(client),
            pool: pool.into(),
            template,
        }
    }

    /// The pool's name.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    fn selector(&self) -> String {
        format!("{POOL_LABEL}={}", self.pool)
    }

    /// The pool's nodes (those not already being deleted).
    pub async fn list(&self) -> Result<PoolNodes, KwokError> {
        let list = self
            .nodes
            .list(&ListParams::default().labels(&self.selector()))
            .await
            .map_err(|source| KwokError::List {
                pool: self.pool.clone(),
                source,
            })?;
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .filter_map(|n| n.metadata.name)
            .collect();
        names.sort_by_key(|n| (index_of(n), n.clone()));
        Ok(PoolNodes { names })
    }

    /// Brings the pool to `desired` nodes: creates the missing ones; removes only nodes that
    /// hold no unfinished pod (an active Job is never stranded). Returns the node count after.
    pub async fn scale_to(&self, desired: u32) -> Result<u32, KwokError> {
        let current = self.list().await?;
        let have = u32::try_from(current.names.len()).unwrap_or(u32::MAX);
        if desired > have {
            let mut taken: Vec<u32> = current.names.iter().filter_map(|n| index_of(n)).collect();
            taken.sort_unstable();
            let mut created = 0;
            let mut i = 0;
            while created < desired - have {
                if taken.binary_search(&i).is_err() {
                    self.create(i).await?;
                    created += 1;
                }
                i += 1;
            }
            return Ok(desired);
        }
        let mut remaining = have;
        // Highest index first, so the pool keeps low, stable names.
        for name in current.names.iter().rev() {
            if remaining <= desired {
                break;
            }
            if self.remove_if_idle(name).await? {
                remaining -= 1;
            }
        }
        Ok(remaining)
    }

    fn node_name(&self, i: u32) -> String {
        format!("fleetscore-{}-{i}", self.pool)
    }

    async fn create(&self, i: u32) -> Result<(), KwokError> {
        let name = self.node_name(i);
        let node = self.node_object(&name);
        match self
            .nodes
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &node,
            )
            .await
        {
            Ok(_) => Ok(()),
            // A leftover from an earlier operator (or a concurrent create): it is ours already.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(source) => Err(KwokError::Create {
                pool: self.pool.clone(),
                node: name,
                source,
            }),
        }
    }

    /// The Node object kwok will manage.
    pub fn node_object(&self, name: &str) -> Node {
        let labels = BTreeMap::from([
            (POOL_LABEL.to_string(), self.pool.clone()),
            ("type".to_string(), "kwok".to_string()),
            ("kubernetes.io/hostname".to_string(), name.to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
            ("kubernetes.io/role".to_string(), "agent".to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "fleetscore".to_string(),
            ),
        ]);
        let annotations = BTreeMap::from([
            (KWOK_ANNOTATION.to_string(), "fake".to_string()),
            ("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string()),
        ]);
        let capacity = BTreeMap::from([
            ("cpu".to_string(), Quantity(self.template.cpu.clone())),
            ("memory".to_string(), Quantity(self.template.memory.clone())),
            ("pods".to_string(), Quantity(self.template.pods.to_string())),
        ]);
        let taints = self.template.taint.as_ref().map(|(k, v)| {
            vec![k8s_openapi::api::core::v1::Taint {
                key: k.clone(),
                value: Some(v.clone()),
                effect: "NoSchedule".into(),
                time_added: None,
            }]
        });
        Node {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                taints,
                ..Default::default()
            }),
            status: Some(k8s_openapi::api::core::v1::NodeStatus {
                allocatable: Some(capacity.clone()),
                capacity: Some(capacity),
                ..Default::default()
            }),
        }
    }

    /// Cordons the node, checks it holds no unfinished pod, deletes it; uncordons if it does.
    /// Cordoning first closes the race with the scheduler binding a pod in between.
    async fn remove_if_idle(&self, name: &str) -> Result<bool, KwokError> {
        let err = |source| KwokError::Remove {
            pool: self.pool.clone(),
            node: name.to_string(),
            source,
        };
        let pp = PatchParams::default();
        if self.busy(name).await.map_err(err)? {
            return Ok(false);
        }
        self.nodes
            .patch(
                name,
                &pp,
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await
            .map_err(err)?;
        if self.busy(name).await.map_err(err)? {
            self.nodes
                .patch(
                    name,
                    &pp,
                    &Patch::Merge(json!({"spec": {"unschedulable": null}})),
                )
                .await
                .map_err(err)?;
            return Ok(false);
        }
        match self.nodes.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
            Err(e) => Err(err(e)),
        }
    }

    /// Whether any pod bound to the node is unfinished.
    async fn busy(&self, node: &str) -> Result<bool, kube::Error> {
        let pods = self
            .pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await?;
        Ok(pods.items.iter().any(|p| {
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Pending");
            !matches!(phase, "Succeeded" | "Failed")
        }))
    }
}

/// The `<n>` of `fleetscore-<pool>-<n>`.
fn index_of(name: &str) -> Option<u32> {
    name.rsplit('-').next().and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_end_in_their_index() {
        assert_eq!(index_of("fleetscore-pool-a-12"), Some(12));
        assert_eq!(index_of("other"), None);
    }
}
