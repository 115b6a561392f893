//! A real Kubernetes control plane for tests: etcd, kube-apiserver (RBAC) and
//! kube-controller-manager v1.20.2, started once per test binary by
//! `scripts/kube/start.sh` on free loopback ports in a temporary directory, and stopped
//! (the directory removed) by its watchdog when the test binary exits, however it
//! exits. The binaries come from `scripts/kube/build.sh` (`scripts/test` builds them
//! when missing); without them the tests fail, never skip.
//!
//! There is no kubelet, so pods never run. Each test namespace gets a stand-in: a task
//! that marks the pods it finds Running and Ready through `pods/status` (with an image
//! digest derived from the image name), unless their image is one the test declared
//! stuck; and a loopback HTTP server, the Deployment's "address", that answers
//! `/health` and `/api/status` with what the ready pods would serve: the version (the
//! image's tag) and `GREETING` from the ConfigMap their `envFrom` names. So an answer
//! there says what the control plane really rolled out, and with which config.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::free_port;

/// Where the control plane's binaries are (`RIPCORD_KUBE_BIN`, else the cache that
/// `scripts/test` fills).
pub fn bin_dir() -> PathBuf {
    std::env::var_os("RIPCORD_KUBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ripcord-test/kube/bin"))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct ControlPlane {
    pub dir: PathBuf,
    pub admin_kubeconfig: PathBuf,
    /// The kubeconfig of user `ripcord`, who may do only what a RoleBinding grants.
    pub ripcord_kubeconfig: PathBuf,
    pub rt: tokio::runtime::Runtime,
    pub admin: kube::Client,
}

/// The control plane of this test binary, started on first use.
pub fn plane() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(start)
}

fn start() -> ControlPlane {
    let bin = bin_dir();
    for b in ["kube-apiserver", "kube-controller-manager"] {
        assert!(
            bin.join(b).exists(),
            "{} is missing: the Kubernetes tests need a real control plane. Build it once \
             (about 3 minutes, as root) with `bash scripts/kube/build.sh \
             /var/cache/ripcord-test/kube/build {}` (scripts/test does this), or point \
             RIPCORD_KUBE_BIN at a directory that has kube-apiserver and \
             kube-controller-manager v1.20",
            bin.join(b).display(),
            bin.display()
        );
    }
    assert!(
        Command::new("etcd").arg("--version").output().is_ok(),
        "etcd is missing: `apt-get install etcd-server` (scripts/kube/build.sh installs it)"
    );
    // Kept until the test binary exits; the watchdog removes it then.
    let dir = tempfile::Builder::new()
        .prefix("ripcord-kube-")
        .tempdir()
        .unwrap()
        .keep();
    let etcd = etcd_port();
    let api = free_port();
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/kube/start.sh"))
        .arg(&bin)
        .arg(&dir)
        .env("ETCD_PORT", etcd.to_string())
        .env("API_PORT", api.to_string())
        .env("OWNER_PID", std::process::id().to_string())
        .env("REMOVE_RUNDIR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/kube/start.sh failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("apiserver.log")).unwrap_or_default()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let admin_kubeconfig = dir.join("admin.kubeconfig");
    let admin = rt.block_on(client(&admin_kubeconfig));
    ControlPlane {
        ripcord_kubeconfig: dir.join("ripcord.kubeconfig"),
        admin_kubeconfig,
        dir,
        rt,
        admin,
    }
}

/// A free port whose neighbour is free too (etcd's peer port is the next one).
fn etcd_port() -> u16 {
    for _ in 0..50 {
        let p = free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two free neighbouring loopback ports in 50 tries");
}

pub async fn client(kubeconfig: &Path) -> kube::Client {
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let file = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// What the stand-in serves: the version and GREETING of the newest ready pod.
#[derive(Default, Clone, Debug)]
pub struct Serving {
    pub version: Option<String>,
    pub greeting: Option<String>,
}

/// One test's namespace: the Role bound to user `ripcord`, the stand-in kubelet and
/// the stand-in address. Dropping it stops both and deletes the namespace.
pub struct TestNamespace {
    pub name: String,
    /// The stand-in's port: the Deployment's address.
    pub address: u16,
    /// Images whose pods the stand-in kubelet never marks ready.
    pub stuck: Arc<Mutex<Vec<String>>>,
    pub serving: Arc<Mutex<Serving>>,
    /// The version each digest stands for, for images pinned by a real registry's
    /// digest (the stand-in kubelet knows only the digests it made up itself).
    pub digests: Arc<Mutex<BTreeMap<String, String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TestNamespace {
    /// `bind_role`: bind deploy/kubernetes/role.yaml to user `ripcord` (else ripcord has
    /// no rights at all there).
    pub fn new(prefix: &str, bind_role: bool) -> TestNamespace {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let p = plane();
        let c = p.admin.clone();
        p.rt.block_on(async {
            let ns: Namespace = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name}
            }))
            .unwrap();
            Api::<Namespace>::all(c.clone())
                .create(&PostParams::default(), &ns)
                .await
                .unwrap();
            if bind_role {
                let role: Role = serde_json::from_value(role_from_repo()).unwrap();
                Api::<Role>::namespaced(c.clone(), &name)
                    .create(&PostParams::default(), &role)
                    .await
                    .unwrap();
                let binding: RoleBinding = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "ripcord"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ripcord"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "ripcord"}]
                }))
                .unwrap();
                Api::<RoleBinding>::namespaced(c.clone(), &name)
                    .create(&PostParams::default(), &binding)
                    .await
                    .unwrap();
            }
        });
        let stuck = Arc::new(Mutex::new(Vec::new()));
        let serving = Arc::new(Mutex::new(Serving::default()));
        let digests = Arc::new(Mutex::new(BTreeMap::new()));
        let address = free_port();
        let kubelet = p.rt.spawn(stand_in_kubelet(
            c.clone(),
            name.clone(),
            stuck.clone(),
            serving.clone(),
            digests.clone(),
        ));
        let listener =
            p.rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", address)))
                .unwrap();
        let server = p.rt.spawn(stand_in_address(listener, serving.clone()));
        TestNamespace {
            name,
            address,
            stuck,
            serving,
            digests,
            tasks: vec![kubelet, server],
        }
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        plane().rt.block_on(f)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(plane().admin.clone(), &self.name)
    }

    pub fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(plane().admin.clone(), &self.name)
    }

    pub fn replica_sets(&self) -> Api<ReplicaSet> {
        Api::namespaced(plane().admin.clone(), &self.name)
    }

    /// Creates (as the admin) what a user applies before ripcord's first deploy.
    pub fn apply<K>(&self, json: serde_json::Value)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let obj: K = serde_json::from_value(json).unwrap();
        let api: Api<K> = Api::namespaced(plane().admin.clone(), &self.name);
        self.block_on(api.create(&PostParams::default(), &obj))
            .unwrap();
    }

    /// Sets ConfigMap `name`'s data (as the user would, with `kubectl apply`).
    pub fn set_config(&self, name: &str, data: serde_json::Value) {
        let patch = serde_json::json!({ "data": data });
        self.block_on(self.config_maps().patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ))
        .unwrap();
    }

    pub fn deployment(&self, name: &str) -> Deployment {
        self.block_on(self.deployments().get(name)).unwrap()
    }

    /// The Deployment's pod template, as JSON.
    pub fn template(&self, name: &str) -> serde_json::Value {
        serde_json::to_value(self.deployment(name).spec.unwrap().template).unwrap()
    }

    pub fn image(&self, name: &str) -> String {
        self.template(name)["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn serving(&self) -> Serving {
        self.serving.lock().unwrap().clone()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let api: Api<Namespace> = Api::all(plane().admin.clone());
        let _ = plane()
            .rt
            .block_on(api.delete(&self.name, &DeleteParams::default()));
    }
}

/// deploy/kubernetes/role.yaml as JSON (the Role the project ships, not a copy).
fn role_from_repo() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_root().join("deploy/kubernetes/role.yaml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    yaml_to_json(&docs[0])
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> serde_json::Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::String(s) => serde_json::Value::String(s.clone()),
        Yaml::Integer(i) => serde_json::json!(i),
        Yaml::Boolean(b) => serde_json::json!(b),
        Yaml::Array(a) => serde_json::Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => serde_json::Value::Object(
            h.iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), yaml_to_json(v)))
                .collect(),
        ),
        _ => serde_json::Value::Null,
    }
}

/// The digest the stand-in kubelet reports for an image: sha256 of its name.
pub fn fake_digest(image: &str) -> String {
    let d = sha2::Sha256::digest(image.as_bytes());
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Marks Pending pods Running and Ready (bounded: each pass is one list and a few
/// patches, every 200 ms, until the task is aborted), and works out what the ready
/// pods serve.
async fn stand_in_kubelet(
    c: kube::Client,
    ns: String,
    stuck: Arc<Mutex<Vec<String>>>,
    serving: Arc<Mutex<Serving>>,
    digests: Arc<Mutex<BTreeMap<String, String>>>,
) {
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(c, &ns);
    // The tag each digest this kubelet reported stands for: a pod started from
    // `repo@sha256:…` serves the version it was pinned from.
    let mut tags: BTreeMap<String, String> = BTreeMap::new();
    // When each pod became ready, in the order this kubelet saw it: the newest one is
    // what the address serves (as a Service would once the rollout removed the old).
    let mut ready_since: BTreeMap<String, u64> = BTreeMap::new();
    let mut seq: u64 = 0;
    loop {
        if let Ok(list) = pods.list(&ListParams::default()).await {
            let mut ready: Vec<&Pod> = Vec::new();
            for p in &list.items {
                if p.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let spec = p.spec.as_ref().unwrap();
                let c0 = &spec.containers[0];
                let image = c0.image.clone().unwrap_or_default();
                let phase = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                let name = p.metadata.name.clone().unwrap();
                if phase == "Running" {
                    ready_since.entry(name).or_insert_with(|| {
                        seq += 1;
                        seq
                    });
                    ready.push(p);
                    continue;
                }
                if stuck.lock().unwrap().contains(&image) {
                    continue;
                }
                let now = jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
                let image_id = match image.split_once('@') {
                    // Started by digest: that is the digest it runs.
                    Some(_) => format!("docker-pullable://{image}"),
                    None => {
                        let (repo, tag) = image.rsplit_once(':').unwrap();
                        let digest = fake_digest(&image);
                        tags.insert(digest.clone(), tag.to_string());
                        format!("docker-pullable://{repo}@{digest}")
                    }
                };
                let status = serde_json::json!({"status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
                    "containerStatuses": [{
                        "name": c0.name, "image": image, "ready": true, "restartCount": 0,
                        "imageID": image_id,
                        "state": {"running": {"startedAt": now}}
                    }]
                }});
                let patched = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
                if patched.is_ok() {
                    // Ready from now on: it serves at once, as a kubelet's pod would.
                    seq += 1;
                    ready_since.insert(name, seq);
                    ready.push(p);
                }
            }
            ready.sort_by_key(|p| ready_since.get(p.metadata.name.as_deref().unwrap_or("")));
            let now = match ready.last() {
                Some(p) => {
                    let c0 = &p.spec.as_ref().unwrap().containers[0];
                    let image = c0.image.clone().unwrap_or_default();
                    let version = match image.split_once('@') {
                        Some((_, digest)) => tags
                            .get(digest)
                            .cloned()
                            .or_else(|| digests.lock().unwrap().get(digest).cloned()),
                        None => image.rsplit(':').next().map(str::to_string),
                    };
                    let mut greeting = None;
                    let from = c0.env_from.iter().flatten();
                    for e in from {
                        if let Some(r) = &e.config_map_ref
                            && let Ok(cm) = cms.get(&r.name).await
                        {
                            greeting = cm.data.unwrap_or_default().get("GREETING").cloned();
                        }
                    }
                    Serving { version, greeting }
                }
                None => Serving::default(),
            };
            *serving.lock().unwrap() = now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Deployment's address: `/health` answers 200 while a pod is ready (503 when
/// none is), `/api/status` `{"version": …, "greeting": …}`.
async fn stand_in_address(listener: tokio::net::TcpListener, serving: Arc<Mutex<Serving>>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let serving = serving.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            while n < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let s = serving.lock().unwrap().clone();
            let (status, body) = match (path.as_str(), &s.version) {
                (_, None) => ("503 Service Unavailable", "no pod is ready".to_string()),
                ("/health", Some(_)) => ("200 OK", "ok".to_string()),
                ("/api/status", Some(v)) => (
                    "200 OK",
                    serde_json::json!({"version": v, "greeting": s.greeting}).to_string(),
                ),
                _ => ("404 Not Found", "not found".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// A config for service `web` with runtime kubernetes behind the built-in proxy, run
/// as user `ripcord`; `extra` goes inside `[service.web]`. `registry.test` is no
/// registry: its digests are not asked for (no lookup leaves loopback); the stand-in
/// kubelet reports made-up ones.
pub fn config(ns: &TestNamespace, listen: u16, extra: &str) -> String {
    format!(
        r#"[service.web]
runtime = "kubernetes"
router = "proxy"
listen = "127.0.0.1:{listen}"
start_timeout = "40s"
health_path = "/health"
{extra}

[service.web.kubernetes]
namespace = "{ns}"
deployment = "web"
container = "web"
image = "registry.test/app"
registry_digest = false
address = "127.0.0.1:{address}"
kubeconfig = {kubeconfig:?}

[service.web.triggers]
health = {{ consecutive_failures = 3, interval = "1s", timeout = "1s" }}

[[service.web.verify]]
name = "the API answers with the expected version"
http = "http://127.0.0.1:{listen}/api/status"
json_field = "version"
json_equals = "{{version}}"
"#,
        ns = ns.name,
        address = ns.address,
        kubeconfig = plane().ripcord_kubeconfig.display().to_string(),
    )
}

/// The user's Deployment `web`: reads ConfigMap `web-config` through `envFrom`, Secret
/// `web-secret` through `env[].valueFrom` and ConfigMap `web-files` as a volume.
pub fn deployment(replicas: i32, history: i32, progress_deadline: i32) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": history,
            "progressDeadlineSeconds": progress_deadline,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": "registry.test/app:v0",
                        "envFrom": [{"configMapRef": {"name": "web-config"}}],
                        "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "web-secret", "key": "password"}}}],
                        "volumeMounts": [{"name": "files", "mountPath": "/etc/web"}]
                    }],
                    "volumes": [{"name": "files", "configMap": {"name": "web-files"}}]
                }
            }
        }
    })
}

/// The objects `deployment` reads, with GREETING = `greeting`.
pub fn user_objects(ns: &TestNamespace, greeting: &str) {
    ns.apply::<ConfigMap>(serde_json::json!({
        "metadata": {"name": "web-config"}, "data": {"GREETING": greeting}
    }));
    ns.apply::<ConfigMap>(serde_json::json!({
        "metadata": {"name": "web-files"}, "data": {"app.conf": "port = 8080\n"}
    }));
    ns.apply::<k8s_openapi::api::core::v1::Secret>(serde_json::json!({
        "metadata": {"name": "web-secret"}, "stringData": {"password": "s3cret-pw"}
    }));
}

/// The ConfigMaps ripcord copied in the namespace (name → data).
pub fn copies(ns: &TestNamespace) -> BTreeMap<String, BTreeMap<String, String>> {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=ripcord");
    ns.block_on(ns.config_maps().list(&lp))
        .unwrap()
        .items
        .into_iter()
        .map(|c| (c.metadata.name.unwrap(), c.data.unwrap_or_default()))
        .collect()
}
