//! The Kubernetes API (kube-rs over rustls with ring, k8s-openapi's types): the one
//! namespace a service's Deployment lives in, and the few calls ripcord makes there
//! (read and replace the Deployment; read, copy and delete ConfigMaps and Secrets; list
//! the Deployment's pods). `deploy/kubernetes/role.yaml` grants exactly these.
//!
//! This module only talks to the API server: what a release is, and when to apply one,
//! is `execute/kubernetes.rs`'s business. It never creates or changes a Deployment on
//! its own account, and never touches an object that is not the service's.

pub mod template;

use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The label every object ripcord creates carries (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The service a copy belongs to.
pub const LABEL_SERVICE: &str = "ripcord.dev/service";
/// The original a copy was made from.
pub const LABEL_SOURCE: &str = "ripcord.dev/source";
/// On the Deployment: the sha256 of the pod template ripcord last applied (drift).
pub const ANNOTATION_TEMPLATE: &str = "ripcord.dev/template-sha256";
/// On the Deployment: the release ripcord last applied (`ID VERSION`).
pub const ANNOTATION_RELEASE: &str = "ripcord.dev/release";
/// On the Deployment while a database restore has it scaled to 0: the replicas to give
/// back. It outlives a crashed watcher; the next restore or apply gives them back.
pub const ANNOTATION_RESTORE_REPLICAS: &str = "ripcord.dev/restore-replicas";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes: cannot load the client configuration ({what}): {message}")]
    Config { what: String, message: String },
    #[error("kubernetes: {what}: {message}")]
    Api {
        what: String,
        message: String,
        /// The HTTP status the API server answered, when it answered.
        code: Option<u16>,
    },
}

impl KubeError {
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            KubeError::Api {
                code: Some(404),
                ..
            }
        )
    }

    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            KubeError::Api {
                code: Some(409),
                ..
            }
        )
    }
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
    let what = what.into();
    move |e| {
        let (message, code) = match &e {
            kube::Error::Api(s) => (format!("{} ({})", s.message, s.reason), Some(s.code)),
            other => (other.to_string(), None),
        };
        let hint = match code {
            Some(403) => "; the Role in deploy/kubernetes/role.yaml lists what ripcord needs",
            _ => "",
        };
        KubeError::Api {
            what,
            message: format!("{message}{hint}"),
            code,
        }
    }
}

/// Whether the Deployment's template changed since ripcord applied one: `Some(release)`
/// (the `ID VERSION` ripcord applied last) when it no longer matches the fingerprint
/// ripcord left on it; `None` when it matches, or ripcord never applied one.
pub fn drifted(d: &Deployment) -> Option<String> {
    let annotations = d.metadata.annotations.as_ref()?;
    let applied = annotations.get(ANNOTATION_TEMPLATE)?;
    let t = d
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    (template::fingerprint(&t) != *applied).then(|| {
        annotations
            .get(ANNOTATION_RELEASE)
            .cloned()
            .unwrap_or_default()
    })
}

/// A connection to one namespace of one cluster.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    pub namespace: String,
}

impl Cluster {
    /// Connects as the kubeconfig says: `kubeconfig` when given, else `KUBECONFIG`, else
    /// `~/.kube/config`, else the in-cluster service account; `context` picks one of the
    /// file's contexts (default its current one).
    pub async fn connect(
        kubeconfig: Option<&Path>,
        context: Option<&str>,
        namespace: &str,
    ) -> Result<Cluster, KubeError> {
        // kube's TLS builds on the process's default crypto provider: ring, as everywhere
        // in ripcord (`http.rs` says why not aws-lc-rs). Installing it twice is harmless.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = KubeConfigOptions {
            context: context.map(str::to_string),
            ..Default::default()
        };
        let config =
            match (kubeconfig, context) {
                (Some(path), _) => {
                    let file = Kubeconfig::read_from(path).map_err(|e| KubeError::Config {
                        what: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                    kube::Config::from_custom_kubeconfig(file, &options)
                        .await
                        .map_err(|e| KubeError::Config {
                            what: path.display().to_string(),
                            message: e.to_string(),
                        })?
                }
                (None, Some(_)) => kube::Config::from_kubeconfig(&options).await.map_err(|e| {
                    KubeError::Config {
                        what: "KUBECONFIG or ~/.kube/config".to_string(),
                        message: e.to_string(),
                    }
                })?,
                (None, None) => kube::Config::infer().await.map_err(|e| KubeError::Config {
                    what: "KUBECONFIG, ~/.kube/config or in-cluster".to_string(),
                    message: e.to_string(),
                })?,
            };
        let client = kube::Client::try_from(config).map_err(|e| KubeError::Config {
            what: "client".to_string(),
            message: e.to_string(),
        })?;
        Ok(Cluster {
            client,
            namespace: namespace.to_string(),
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn deployment(&self, name: &str) -> Result<Deployment, KubeError> {
        self.api::<Deployment>()
            .get(name)
            .await
            .map_err(api_error(format!(
                "reading Deployment {}/{name}",
                self.namespace
            )))
    }

    /// Replaces the Deployment: refused by the API server (409) when it changed since
    /// `d` was read (its `resourceVersion`), so nothing written meanwhile is overwritten.
    pub async fn replace_deployment(&self, d: &Deployment) -> Result<Deployment, KubeError> {
        let name = d.metadata.name.clone().unwrap_or_default();
        self.api::<Deployment>()
            .replace(&name, &PostParams::default(), d)
            .await
            .map_err(api_error(format!(
                "updating Deployment {}/{name}",
                self.namespace
            )))
    }

    pub async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>, KubeError> {
        self.api::<ConfigMap>()
            .get_opt(name)
            .await
            .map_err(api_error(format!(
                "reading ConfigMap {}/{name}",
                self.namespace
            )))
    }

    pub async fn secret(&self, name: &str) -> Result<Option<Secret>, KubeError> {
        self.api::<Secret>()
            .get_opt(name)
            .await
            .map_err(api_error(format!(
                "reading Secret {}/{name}",
                self.namespace
            )))
    }

    pub async fn create_config_map(&self, c: &ConfigMap) -> Result<ConfigMap, KubeError> {
        let name = c.metadata.name.clone().unwrap_or_default();
        self.api::<ConfigMap>()
            .create(&PostParams::default(), c)
            .await
            .map_err(api_error(format!(
                "creating ConfigMap {}/{name}",
                self.namespace
            )))
    }

    pub async fn create_secret(&self, s: &Secret) -> Result<Secret, KubeError> {
        let name = s.metadata.name.clone().unwrap_or_default();
        self.api::<Secret>()
            .create(&PostParams::default(), s)
            .await
            .map_err(api_error(format!(
                "creating Secret {}/{name}",
                self.namespace
            )))
    }

    /// The names of the ConfigMaps and of the Secrets ripcord copied for `service`.
    pub async fn copies(&self, service: &str) -> Result<(Vec<String>, Vec<String>), KubeError> {
        let lp = ListParams::default()
            .labels(&format!("{MANAGED_BY}=ripcord,{LABEL_SERVICE}={service}"));
        fn names<K>(items: Vec<kube::core::PartialObjectMeta<K>>) -> Vec<String> {
            items.into_iter().filter_map(|o| o.metadata.name).collect()
        }
        let cms = self
            .api::<ConfigMap>()
            .list_metadata(&lp)
            .await
            .map_err(api_error(format!(
                "listing ConfigMaps in {}",
                self.namespace
            )))?;
        let secrets = self
            .api::<Secret>()
            .list_metadata(&lp)
            .await
            .map_err(api_error(format!("listing Secrets in {}", self.namespace)))?;
        Ok((names(cms.items), names(secrets.items)))
    }

    pub async fn delete_copy(&self, kind: &str, name: &str) -> Result<(), KubeError> {
        let what = format!("deleting {kind} {}/{name}", self.namespace);
        let dp = DeleteParams::default();
        let result = match kind {
            "Secret" => self.api::<Secret>().delete(name, &dp).await.map(|_| ()),
            _ => self.api::<ConfigMap>().delete(name, &dp).await.map(|_| ()),
        };
        match result.map_err(api_error(what)) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// The pods a label selector picks (the Deployment's `spec.selector.matchLabels`).
    pub async fn pods(&self, selector: &str) -> Result<Vec<Pod>, KubeError> {
        let lp = ListParams::default().labels(selector);
        self.api::<Pod>()
            .list(&lp)
            .await
            .map(|l| l.items)
            .map_err(api_error(format!("listing pods in {}", self.namespace)))
    }
}
