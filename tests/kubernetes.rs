//! Runtime `kubernetes` end to end against a real kube-apiserver and
//! kube-controller-manager (v1.20.2, under RBAC), driven by the real `ripcord watch` and
//! CLI running as a user that holds only `deploy/kubernetes/role.yaml`. Pods never run
//! (no kubelet): the fixture's stand-in marks them ready and serves, at the
//! Deployment's address, the version and GREETING of the pods the control plane
//! rolled out. Verification checks that address through the built-in proxy, after
//! ripcord's own rollout check against the API. Fails, never skips, without the
//! control plane's binaries.

mod common;
mod docker_fixture;
mod kube_fixture;
mod pg_fixture;
mod registry_fixture;

use std::process::{Child, Command, Output};
use std::time::Duration;

use common::{BIN, assert_ok, eventually, free_port, stderr, stdout};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, Patch, PatchParams};
use kube_fixture::{TestNamespace, config, copies, deployment, fake_digest, user_objects};

struct KubeProject {
    dir: tempfile::TempDir,
    listen: u16,
    /// KUBECONFIG for the watcher and the CLI (else it is removed from their env).
    kubeconfig_env: Option<std::path::PathBuf>,
    watcher: Option<Child>,
    // Last: the namespace goes after the watcher is stopped.
    ns: TestNamespace,
}

impl KubeProject {
    fn new(ns: TestNamespace, extra: &str) -> KubeProject {
        let dir = tempfile::tempdir().unwrap();
        let listen = free_port();
        std::fs::write(dir.path().join("ripcord.toml"), config(&ns, listen, extra)).unwrap();
        KubeProject {
            dir,
            listen,
            kubeconfig_env: None,
            watcher: None,
            ns,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.dir.path().join("ripcord.toml"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RIPCORD_CONFIG")
            .env_remove("RIPCORD_STATE_DIR")
            .env_remove("KUBECONFIG")
            // A registry login comes from here, never from the real ~/.docker.
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"));
        if let Some(k) = &self.kubeconfig_env {
            c.env("KUBECONFIG", k);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {} {}",
                stdout(&out),
                stderr(&out)
            )
        })
    }

    fn start_watcher(&mut self) {
        self.start_watcher_env(&[]);
    }

    /// Starts the watcher with more environment (a failpoint).
    fn start_watcher_env(&mut self, env: &[(&str, &str)]) {
        let mut cmd = self.cmd(&["watch"]);
        cmd.envs(env.iter().copied());
        let child = common::start_watch(cmd, &self.dir.path().join("watcher.log"), || {
            self.run(&["--json", "status", "web"])
        });
        self.watcher = Some(child);
    }

    fn watcher_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("watcher.log")).unwrap_or_default()
    }

    fn deploy(&self, version: &str) -> Output {
        self.run(&["deploy", "web", version])
    }

    fn must(&self, out: Output, what: &str) {
        if !out.status.success() {
            panic!(
                "{what} failed ({}):\nstdout: {}\nstderr: {}\nwatcher: {}",
                out.status,
                stdout(&out),
                stderr(&out),
                self.watcher_log()
            );
        }
    }

    /// What the service answers through the built-in proxy: (version, greeting).
    fn answer(&self) -> (String, String) {
        let (status, body) = common::get(&format!("http://127.0.0.1:{}/api/status", self.listen));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            v["version"].as_str().unwrap_or_default().to_string(),
            v["greeting"].as_str().unwrap_or_default().to_string(),
        )
    }

    fn release(&self, version: &str) -> serde_json::Value {
        let list = self.json(&["releases", "web"]);
        let releases = list
            .as_array()
            .cloned()
            .or_else(|| list["releases"].as_array().cloned())
            .unwrap_or_default();
        releases
            .into_iter()
            .find(|r| r["version"] == version)
            .unwrap_or_else(|| panic!("no release {version} in {list}"))
    }

    fn events(&self) -> String {
        self.json(&["events", "web", "--limit", "200"]).to_string()
    }
}

impl Drop for KubeProject {
    fn drop(&mut self) {
        if let Some(mut child) = self.watcher.take() {
            common::stop_quietly(&mut child, Duration::from_secs(20));
        }
    }
}

fn ready_project(prefix: &str, history: i32, progress_deadline: i32) -> KubeProject {
    ready_project_with(prefix, history, progress_deadline, "", |_| {})
}

/// As `ready_project`, with `extra` inside `[service.web]` (sub-tables allowed: it ends
/// before `[service.web.kubernetes]`) and `prepare` run on the project's directory
/// before the watcher starts.
fn ready_project_with(
    prefix: &str,
    history: i32,
    progress_deadline: i32,
    extra: &str,
    prepare: impl FnOnce(&std::path::Path),
) -> KubeProject {
    let ns = TestNamespace::new(prefix, true);
    user_objects(&ns, "hello from v1's config");
    ns.apply::<Deployment>(deployment(2, history, progress_deadline));
    let mut p = KubeProject::new(ns, extra);
    prepare(p.dir.path());
    p.start_watcher();
    p
}

/// The ConfigMap a template's `envFrom` names.
fn env_from(template: &serde_json::Value) -> String {
    template["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn deploys_snapshot_the_config_and_a_rollback_restores_v1s_not_todays() {
    let p = ready_project("snap", 10, 60);
    p.must(p.deploy("v1"), "deploy v1");
    assert_eq!(p.ns.image("web"), "registry.test/app:v1");
    let t1 = p.ns.template("web");
    let copy1 = env_from(&t1);
    // The template reads the release's copy, not the user's ConfigMap; so do the
    // Secret reference and the volume.
    assert!(copy1.starts_with("web-config-rc-"), "{t1}");
    let secret_ref = t1["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"]
        .as_str()
        .unwrap();
    assert!(secret_ref.starts_with("web-secret-rc-"), "{t1}");
    let volume = t1["spec"]["volumes"][0]["configMap"]["name"]
        .as_str()
        .unwrap();
    assert!(volume.starts_with("web-files-rc-"), "{t1}");
    let cm = p.ns.block_on(p.ns.config_maps().get(&copy1)).unwrap();
    assert_eq!(cm.immutable, Some(true), "the copy is immutable");
    let labels = cm.metadata.labels.unwrap_or_default();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "ripcord");
    assert_eq!(labels["ripcord.dev/service"], "web");
    assert_eq!(labels["ripcord.dev/source"], "web-config");
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(kube_fixture::plane().admin.clone(), &p.ns.name);
    let secret = p.ns.block_on(secrets.get(secret_ref)).unwrap();
    assert_eq!(
        secret.immutable,
        Some(true),
        "the Secret's copy is immutable"
    );
    assert_eq!(
        secret.data.unwrap()["password"].0,
        b"s3cret-pw".to_vec(),
        "the Secret's copy holds its content"
    );
    assert_eq!(
        cm.data.unwrap()["GREETING"],
        "hello from v1's config",
        "the copy holds v1's content"
    );
    assert_eq!(
        p.answer(),
        ("v1".to_string(), "hello from v1's config".to_string())
    );

    // The user changes the ConfigMap, then deploys v2: v2 snapshots the new content.
    p.ns.set_config(
        "web-config",
        serde_json::json!({"GREETING": "hello from v2's config"}),
    );
    p.must(p.deploy("v2"), "deploy v2");
    assert_eq!(p.ns.image("web"), "registry.test/app:v2");
    let copy2 = env_from(&p.ns.template("web"));
    assert_ne!(copy1, copy2, "v2 reads its own copy");
    assert_eq!(
        p.answer(),
        ("v2".to_string(), "hello from v2's config".to_string())
    );

    // Today's config changes again; a rollback brings back v1 with v1's config.
    p.ns.set_config(
        "web-config",
        serde_json::json!({"GREETING": "today's config"}),
    );
    p.must(p.run(&["rollback", "web", "--reason", "test"]), "rollback");
    assert_eq!(
        p.answer(),
        ("v1".to_string(), "hello from v1's config".to_string()),
        "the rollback restores v1's image and v1's config, not today's"
    );
    assert_eq!(env_from(&p.ns.template("web")), copy1);
    // v1's pods had reported their digest: the rollback runs exactly that content.
    assert_eq!(
        p.ns.image("web"),
        format!("registry.test/app@{}", fake_digest("registry.test/app:v1"))
    );
    // The user's own ConfigMap is left as the user set it.
    let user = p.ns.block_on(p.ns.config_maps().get("web-config")).unwrap();
    assert_eq!(user.data.unwrap()["GREETING"], "today's config");
    assert_eq!(p.release("v1")["status"], "active");
    // Both snapshots are kept (retention keeps 10 releases).
    let all = copies(&p.ns);
    assert!(
        all.contains_key(&copy1) && all.contains_key(&copy2),
        "{all:?}"
    );
}

#[test]
fn a_rollback_needs_no_replicaset_history() {
    // revisionHistoryLimit 0: the controller deletes every old ReplicaSet, so
    // `kubectl rollout undo` has nothing to go back to.
    let p = ready_project("hist", 0, 60);
    p.must(p.deploy("v1"), "deploy v1");
    p.ns.set_config("web-config", serde_json::json!({"GREETING": "v2's"}));
    p.must(p.deploy("v2"), "deploy v2");
    eventually(
        "the controller trims the old ReplicaSets",
        Duration::from_secs(30),
        || {
            let rs =
                p.ns.block_on(p.ns.replica_sets().list(&ListParams::default()))
                    .unwrap();
            rs.items.len() == 1
        },
    );
    let rs =
        p.ns.block_on(p.ns.replica_sets().list(&ListParams::default()))
            .unwrap();
    let only = serde_json::to_string(&rs.items[0].spec.as_ref().unwrap().template).unwrap();
    assert!(only.contains("registry.test/app:v2"), "{only}");
    p.must(p.run(&["rollback", "web"]), "rollback with no history");
    assert_eq!(
        p.answer(),
        ("v1".to_string(), "hello from v1's config".to_string())
    );
}

#[test]
fn drift_is_reported_and_never_overwritten_silently() {
    let p = ready_project("drift", 10, 60);
    p.must(p.deploy("v1"), "deploy v1");
    p.must(p.deploy("v2"), "deploy v2");
    // doctor: a rollback would work now (the Role lets it read all it checks).
    let out = p.run(&["doctor", "web"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("✓ no drift"), "{}", stdout(&out));
    assert!(stdout(&out).contains("✓ config copies"), "{}", stdout(&out));
    // Someone runs `kubectl set image` behind ripcord's back.
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "registry.test/app:hotfix"}
    ]}}}});
    p.ns.block_on(p.ns.deployments().patch(
        "web",
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    ))
    .unwrap();
    // doctor reports it: a rollback now would be refused.
    let out = p.run(&["doctor", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("✗ no drift") && stdout(&out).contains("changed outside ripcord"),
        "{}",
        stdout(&out)
    );
    let out = p.deploy("v3");
    assert_eq!(out.status.code(), Some(3), "refused: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("changed outside ripcord") && err.contains("registry.test/app:hotfix"),
        "{err}"
    );
    assert_eq!(
        p.ns.image("web"),
        "registry.test/app:hotfix",
        "not overwritten"
    );
    let out = p.run(&["rollback", "web"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a rollback is refused too: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("will not roll back"),
        "{}",
        stderr(&out)
    );
    assert_eq!(p.ns.image("web"), "registry.test/app:hotfix");
    assert!(p.events().contains("\"drift\""), "{}", p.events());
    // Forced, with a reason, the deploy overwrites it, and says so.
    p.must(
        p.run(&[
            "deploy",
            "web",
            "v3",
            "--force",
            "--reason",
            "replace the hotfix",
        ]),
        "forced deploy",
    );
    assert_eq!(p.ns.image("web"), "registry.test/app:v3");
    assert!(p.events().contains("drift_overwritten"), "{}", p.events());
}

#[test]
fn a_stuck_rollout_is_rolled_back_to_the_previous_release() {
    let p = ready_project("stuck", 10, 3);
    p.must(p.deploy("v1"), "deploy v1");
    // v2's pods never become ready: the rollout passes its 3 s progress deadline.
    p.ns.stuck
        .lock()
        .unwrap()
        .push("registry.test/app:v2".to_string());
    let out = p.deploy("v2");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("progress deadline"), "{err}");
    assert!(err.contains("rolled back: v1 runs again"), "{err}");
    assert_eq!(p.release("v2")["status"], "bad");
    assert_eq!(p.release("v1")["status"], "active");
    assert_eq!(
        p.ns.image("web"),
        format!("registry.test/app@{}", fake_digest("registry.test/app:v1"))
    );
    let d = p.ns.deployment("web");
    let st = d.status.unwrap();
    assert_eq!(st.updated_replicas, Some(2), "v1's template is rolled out");
    assert_eq!(st.available_replicas, Some(2));
    assert_eq!(p.answer().0, "v1");
}

#[test]
fn without_the_role_the_api_server_refuses_ripcord() {
    // The same user in a namespace with no RoleBinding: RBAC is enforced (the other
    // tests pass with the Role alone, not with AlwaysAllow).
    let ns = TestNamespace::new("norole", false);
    user_objects(&ns, "x");
    ns.apply::<Deployment>(deployment(1, 10, 60));
    let mut p = KubeProject::new(ns, "");
    p.start_watcher();
    let out = p.deploy("v1");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("forbidden") && err.contains("role.yaml"),
        "{err}"
    );
    assert_eq!(
        p.ns.image("web"),
        "registry.test/app:v0",
        "nothing was changed"
    );
}

#[test]
fn retention_removes_the_copies_of_releases_no_longer_kept() {
    let ns = TestNamespace::new("keep", true);
    user_objects(&ns, "c1");
    ns.apply::<Deployment>(deployment(1, 10, 60));
    let mut p = KubeProject::new(ns, "");
    let path = p.dir.path().join("ripcord.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "image = \"registry.test/app\"",
            "image = \"registry.test/app\"\nkeep_releases = 2",
        ),
    )
    .unwrap();
    p.start_watcher();
    let mut names = Vec::new();
    for (i, v) in ["v1", "v2", "v3", "v4"].iter().enumerate() {
        p.ns.set_config(
            "web-config",
            serde_json::json!({"GREETING": format!("c{}", i + 1)}),
        );
        p.must(p.deploy(v), &format!("deploy {v}"));
        names.push(env_from(&p.ns.template("web")));
    }
    let all = copies(&p.ns);
    // v3 and v4 are the two newest (v3 the previous good one): theirs are kept.
    assert!(
        all.contains_key(&names[2]) && all.contains_key(&names[3]),
        "{all:?}"
    );
    assert!(
        !all.contains_key(&names[0]) && !all.contains_key(&names[1]),
        "v1's and v2's copies are removed: {all:?}"
    );
    // The user's own objects are never touched.
    assert!(p.ns.block_on(p.ns.config_maps().get("web-config")).is_ok());
    // A rollback to v1 says why it cannot restore its config, and changes nothing.
    let out = p.run(&["rollback", "web", "--to", "v1"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("is gone"), "{}", stderr(&out));
    assert_eq!(env_from(&p.ns.template("web")), names[3]);
    // doctor: the previous release (v3) still has its copies.
    let out = p.run(&["doctor", "web"]);
    assert!(stdout(&out).contains("✓ config copies"), "{}", stdout(&out));
    assert_ok(&p.run(&["status", "web"]), "status");
}

#[test]
fn an_oom_killed_container_makes_the_guard_roll_back() {
    v2_terminated_and_rolled_back("oom", "OOMKilled", 137, "oom_kills", "crash");
}

#[test]
fn a_restarted_container_is_a_crash_and_the_guard_rolls_back() {
    v2_terminated_and_rolled_back("crash", "Error", 1, "crash", "oom_kills");
}

/// v2's pod reports its container terminated (`reason`, `exit_code`) and restarted
/// once, as a kubelet would: the guard rolls v2 back on rule `rule`, not `not_rule`.
fn v2_terminated_and_rolled_back(
    prefix: &str,
    reason: &str,
    exit_code: i32,
    rule: &str,
    not_rule: &str,
) {
    let p = ready_project(prefix, 10, 60);
    p.must(p.deploy("v1"), "deploy v1");
    p.ns.set_config("web-config", serde_json::json!({"GREETING": "v2's"}));
    p.must(p.deploy("v2"), "deploy v2");
    assert_eq!(p.answer().0, "v2");
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(kube_fixture::plane().admin.clone(), &p.ns.name);
    let list = p.ns.block_on(pods.list(&ListParams::default())).unwrap();
    let v2_pod = list
        .items
        .iter()
        .find(|pod| {
            pod.metadata.deletion_timestamp.is_none()
                && pod.spec.as_ref().unwrap().containers[0].image.as_deref()
                    == Some("registry.test/app:v2")
        })
        .expect("a pod of v2")
        .metadata
        .name
        .clone()
        .unwrap();
    let status = serde_json::json!({"status": {"containerStatuses": [{
        "name": "web", "image": "registry.test/app:v2", "ready": true, "restartCount": 1,
        "imageID": format!("docker-pullable://registry.test/app@{}", fake_digest("registry.test/app:v2")),
        "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}},
        "lastState": {"terminated": {"exitCode": exit_code, "reason": reason,
            "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}}
    }]}});
    p.ns.block_on(pods.patch_status(&v2_pod, &PatchParams::default(), &Patch::Merge(&status)))
        .unwrap();
    eventually(
        "the guard rolls v2 back after its container terminated",
        Duration::from_secs(40),
        || p.release("v2")["status"] == "bad",
    );
    eventually("v1 serves again", Duration::from_secs(40), || {
        p.answer() == ("v1".to_string(), "hello from v1's config".to_string())
    });
    let incidents = p
        .json(&["incident", "list", "--service", "web"])
        .to_string();
    assert!(
        incidents.contains(&format!("\"{rule}\"")) && !incidents.contains(not_rule),
        "{incidents}\n{}",
        p.watcher_log()
    );
}

#[test]
fn a_drill_applies_the_previous_release_and_comes_back() {
    let p = ready_project("drill", 10, 60);
    p.must(p.deploy("v1"), "deploy v1");
    p.ns.set_config("web-config", serde_json::json!({"GREETING": "v2's"}));
    p.must(p.deploy("v2"), "deploy v2");
    let v2_template = p.ns.template("web");
    let out = p.run(&["--json", "drill", "web"]);
    p.must(out.clone(), "drill");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = &v["result"];
    assert_eq!(v["outcome"], "passed", "{v}");
    assert_eq!(v["in_place"], true, "{v}");
    assert_eq!(v["on_current"], true, "{v}");
    assert_eq!(v["previous"]["version"], "v1", "{v}");
    assert_eq!(p.answer(), ("v2".to_string(), "v2's".to_string()));
    assert_eq!(p.release("v2")["status"], "active");
    // v2 runs its own template again (its pinned image, its copies).
    let now = p.ns.template("web");
    assert_eq!(env_from(&now), env_from(&v2_template));
    assert_eq!(
        now["spec"]["containers"][0]["image"],
        format!("registry.test/app@{}", fake_digest("registry.test/app:v2"))
    );
    // The drill really applied v1's template (once at its deploy, once in the drill)
    // and v2's again (its deploy, then the way forward).
    let events = p.events();
    assert_eq!(events.matches("rolled out v1").count(), 2, "{events}");
    assert_eq!(events.matches("rolled out v2").count(), 2, "{events}");

    // A restarted watcher adopts the running Deployment (it answers), and a rollback
    // after the restart still applies v1's own template.
    let mut p = p;
    let mut w = p.watcher.take().unwrap();
    common::stop_quietly(&mut w, Duration::from_secs(20));
    p.start_watcher();
    assert_eq!(p.answer().0, "v2");
    p.must(
        p.run(&["rollback", "web"]),
        "rollback after a watcher restart",
    );
    assert_eq!(
        p.answer(),
        ("v1".to_string(), "hello from v1's config".to_string())
    );
    assert!(
        p.events().contains("route to the active release"),
        "{}",
        p.events()
    );
}

#[test]
fn without_a_router_the_address_itself_is_verified_and_kubeconfig_comes_from_the_env() {
    let ns = TestNamespace::new("direct", true);
    user_objects(&ns, "hello from v1's config");
    ns.apply::<Deployment>(deployment(1, 10, 60));
    let p = KubeProject::new(ns, "");
    // router "none": no proxy; verification asks the Deployment's address directly.
    let path = p.dir.path().join("ripcord.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            &format!("router = \"proxy\"\nlisten = \"127.0.0.1:{}\"", p.listen),
            "router = \"none\"",
        )
        .replace(
            &format!("http://127.0.0.1:{}/api/status", p.listen),
            &format!("http://127.0.0.1:{}/api/status", p.ns.address),
        );
    // No `kubeconfig` key: the watcher finds it through KUBECONFIG.
    let kubeconfig = kube_fixture::plane().ripcord_kubeconfig.clone();
    let text = text.replace(
        &format!("kubeconfig = {:?}\n", kubeconfig.display().to_string()),
        "",
    );
    assert!(text.contains("router = \"none\"") && !text.contains(&p.listen.to_string()));
    assert!(!text.contains("kubeconfig"), "{text}");
    std::fs::write(&path, text).unwrap();
    let mut p = p;
    p.kubeconfig_env = Some(kubeconfig);
    p.start_watcher();
    p.must(p.deploy("v1"), "deploy v1");
    p.ns.set_config("web-config", serde_json::json!({"GREETING": "v2's"}));
    p.must(p.deploy("v2"), "deploy v2");
    p.must(p.run(&["rollback", "web"]), "rollback");
    let (status, body) = common::get(&format!("http://127.0.0.1:{}/api/status", p.ns.address));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], "v1");
    assert_eq!(v["greeting"], "hello from v1's config");
}

/// Alembic migrations: 001 and 002 expand (add columns), 003 contracts (drops the
/// column v1 reads).
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "001_status.py",
        "revision = \"001\"\ndown_revision = None\nfrom alembic import op\nimport sqlalchemy as sa\n\ndef upgrade():\n    op.add_column('users', sa.Column('status', sa.String(20), nullable=True))\n\ndef downgrade():\n    op.drop_column('users', 'status')\n",
    ),
    (
        "002_nickname.py",
        "revision = \"002\"\ndown_revision = \"001\"\nfrom alembic import op\nimport sqlalchemy as sa\n\ndef upgrade():\n    op.add_column('users', sa.Column('nickname', sa.String(80), nullable=True))\n\ndef downgrade():\n    op.drop_column('users', 'nickname')\n",
    ),
    (
        "003_drop_email.py",
        "revision = \"003\"\ndown_revision = \"002\"\nfrom alembic import op\n\ndef upgrade():\n    op.drop_column('users', 'email')\n\ndef downgrade():\n    pass\n",
    ),
];

#[test]
fn the_migration_guard_refuses_a_rollback_across_a_contract_and_allows_an_expand() {
    let pg = pg_fixture::start();
    pg.sql("postgres", "CREATE DATABASE app");
    pg.sql(
        "app",
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
         CREATE TABLE users (id int PRIMARY KEY, email text);",
    );
    let set_head = |head: &str| {
        pg.sql(
            "app",
            &format!("DELETE FROM alembic_version; INSERT INTO alembic_version VALUES ('{head}')"),
        );
    };
    let extra = format!(
        "[service.web.migrations]\ndir = \"migrations\"\n{}",
        pg.service_table("app", "")
    );
    let p = ready_project_with("migr", 10, 60, &extra, |dir| {
        let versions = dir.join("migrations/versions");
        std::fs::create_dir_all(&versions).unwrap();
        for (name, text) in MIGRATIONS {
            std::fs::write(versions.join(name), text).unwrap();
        }
    });
    set_head("001");
    p.must(p.deploy("v1"), "deploy v1");
    // v2's expand (002) ran: a rollback to v1 leaves a column v1 ignores, so it goes.
    set_head("002");
    p.must(p.deploy("v2"), "deploy v2");
    assert_eq!(p.release("v2")["migration_head"], "002");
    assert_eq!(p.release("v1")["migration_head"], "001");
    let out = p.run(&["rollback", "web", "--reason", "expand only"]);
    p.must(out, "rollback across an expand");
    assert_eq!(p.answer().0, "v1");
    assert_eq!(p.release("v1")["status"], "active");

    // v3's contract (003) ran: it dropped `users.email`, which v1 reads. A rollback
    // to v1 is refused (exit 3) naming the migration, and the Deployment is untouched.
    set_head("003");
    p.must(p.deploy("v3"), "deploy v3");
    assert_eq!(p.release("v3")["migration_head"], "003");
    let before = p.ns.template("web");
    let out = p.run(&["rollback", "web", "--to", "v1"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("003_drop_email.py"),
        "{}",
        stderr(&out)
    );
    assert_eq!(p.ns.template("web"), before, "the Deployment is untouched");
    assert_eq!(p.answer().0, "v3");
    assert_eq!(p.release("v3")["status"], "active");
    // doctor knows it before anyone needs the rollback.
    let out = p.run(&["doctor", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("✗ schema"), "{}", stdout(&out));
}

#[test]
fn runbook_and_status_name_the_deployment_and_each_releases_template() {
    let p = ready_project("book", 10, 60);
    p.must(p.deploy("v1"), "deploy v1");
    let copy1 = env_from(&p.ns.template("web"));
    p.ns.set_config("web-config", serde_json::json!({"GREETING": "v2's"}));
    p.must(p.deploy("v2"), "deploy v2");
    let copy2 = env_from(&p.ns.template("web"));
    assert_ne!(copy1, copy2);
    let v1_pinned = format!("registry.test/app@{}", fake_digest("registry.test/app:v1"));
    let v2_pinned = format!("registry.test/app@{}", fake_digest("registry.test/app:v2"));

    let status = p.json(&["status", "web"]);
    assert_eq!(
        status["kubernetes"]["namespace"],
        p.ns.name.as_str(),
        "{status}"
    );
    assert_eq!(status["kubernetes"]["deployment"], "web", "{status}");
    assert_eq!(status["kubernetes"]["container"], "web", "{status}");
    assert_eq!(
        status["kubernetes"]["address"],
        format!("127.0.0.1:{}", p.ns.address),
        "{status}"
    );
    assert_eq!(status["active"]["version"], "v2", "{status}");
    assert_eq!(
        status["active"]["kubernetes"]["image"],
        v2_pinned.as_str(),
        "{status}"
    );
    assert_eq!(
        status["active"]["kubernetes"]["reference"], "registry.test/app:v2",
        "{status}"
    );
    assert_eq!(status["previous"]["version"], "v1", "{status}");
    assert_eq!(
        status["previous"]["kubernetes"]["image"],
        v1_pinned.as_str(),
        "{status}"
    );
    let copies = status["previous"]["kubernetes"]["copies"]
        .as_array()
        .unwrap();
    assert_eq!(
        copies.len(),
        3,
        "a ConfigMap, a Secret and a volume's ConfigMap: {status}"
    );
    assert!(
        copies.iter().any(|c| c["kind"] == "ConfigMap"
            && c["source"] == "web-config"
            && c["copy"] == copy1.as_str()),
        "{status}"
    );
    assert!(
        copies
            .iter()
            .any(|c| c["kind"] == "Secret" && c["source"] == "web-secret"),
        "{status}"
    );
    // The text form says the same, and where the Deployment is.
    let text = stdout(&p.run(&["status", "web"]));
    assert!(
        text.contains(&format!("Deployment {}/web (container web)", p.ns.name)),
        "{text}"
    );
    assert!(
        text.contains(&format!("previous v1: image {v1_pinned}")),
        "{text}"
    );
    assert!(text.contains(&copy1), "{text}");
    assert!(!text.contains("cold: a rollback starts it first"), "{text}");
    assert!(text.contains("active    v2 (#2) applied since"), "{text}");
    assert!(
        !text.contains("slot"),
        "one Deployment has no slots: {text}"
    );

    let out = p.run(&["runbook", "web"]);
    p.must(out.clone(), "runbook");
    let book = stdout(&out);
    for part in [
        format!("Kubernetes Deployment `web` in namespace `{}`", p.ns.name),
        format!("answering at `127.0.0.1:{}`", p.ns.address),
        format!("A rollback goes to: **v1** (#1), its recorded pod template: image `{v1_pinned}`"),
        format!("ConfigMap `web-config` as its copy `{copy1}`"),
        format!(
            "replaces the pod template of Deployment `{}/web`",
            p.ns.name
        ),
        "It needs no ReplicaSet history".to_string(),
        "Do not use `kubectl rollout undo`".to_string(),
        "refuses to deploy or roll back over it".to_string(),
        "terminated `OOMKilled`".to_string(),
        format!("kubectl -n {} rollout status deployment/web", p.ns.name),
        format!("kubectl -n {} logs deployment/web -c web", p.ns.name),
    ] {
        assert!(book.contains(&part), "missing {part:?} in:\n{book}");
    }
    // Nothing of the two-slot runtimes, which would send a person the wrong way.
    for wrong in [
        "two slots",
        "stays warm",
        "VERSION-SLOT.log",
        "process exits",
    ] {
        assert!(!book.contains(wrong), "{wrong:?} in:\n{book}");
    }
}

#[test]
fn a_database_restore_scales_the_deployment_to_zero_and_back() {
    use futures_util::StreamExt;
    let pg = pg_fixture::start();
    pg.create_app("app");
    let items = || pg.items("app");
    let extra = pg.service_table("app", "checks = [\"SELECT count(*) = 3 FROM items\"]\n");
    let p = ready_project_with("restore", 10, 60, &extra, |_| {});
    p.must(p.deploy("v1"), "deploy v1");
    p.must(p.run(&["db", "backup", "web"]), "db backup");
    pg.sql(
        "app",
        "DELETE FROM items WHERE id = 1; INSERT INTO items VALUES (4, 'four')",
    );
    assert_eq!(items(), "2,3,4");
    let dbs_before = pg.databases();
    let template_before = p.ns.template("web");

    // Every change of the Deployment while the restore runs, as the API server saw it:
    // (spec.replicas, the restore's note, status.replicas, controller caught up).
    type Seen = (Option<i32>, Option<String>, i32, bool);
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>> = Default::default();
    let from = p.ns.deployment("web").metadata.resource_version.unwrap();
    let api = p.ns.deployments();
    let record = seen.clone();
    let watching = kube_fixture::plane().rt.spawn(async move {
        let params = kube::api::WatchParams::default().fields("metadata.name=web");
        let mut stream = api.watch(&params, &from).await.unwrap().boxed();
        while let Some(event) = stream.next().await {
            let Ok(kube::api::WatchEvent::Modified(d)) = event else {
                continue;
            };
            let st = d.status.clone().unwrap_or_default();
            record.lock().unwrap().push((
                d.spec.as_ref().and_then(|s| s.replicas),
                d.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("ripcord.dev/restore-replicas").cloned()),
                st.replicas.unwrap_or(0),
                st.observed_generation == d.metadata.generation,
            ));
        }
    });

    let out = p.run(&["db", "restore", "web", "--confirm", "app"]);
    p.must(out, "db restore");
    // The watch delivers the last changes a moment later.
    eventually(
        "the watch sees the replicas given back",
        Duration::from_secs(10),
        || {
            seen.lock()
                .unwrap()
                .iter()
                .any(|s| s.0 == Some(2) && s.1.is_none() && s.2 == 2)
        },
    );
    watching.abort();
    let seen = seen.lock().unwrap().clone();
    let down = seen
        .iter()
        .position(|s| s.0 == Some(0) && s.1.as_deref() == Some("2"))
        .unwrap_or_else(|| panic!("never scaled to 0 with 2 noted: {seen:?}"));
    let empty = seen
        .iter()
        .position(|s| s.0 == Some(0) && s.2 == 0 && s.3)
        .unwrap_or_else(|| panic!("the controller never reported 0 pods: {seen:?}"));
    let back = seen
        .iter()
        .rposition(|s| s.0 == Some(2) && s.1.is_none())
        .unwrap();
    assert!(down <= empty && empty < back, "{seen:?}");

    // The rows are the backup's; the database before is kept, renamed.
    assert_eq!(items(), "1,2,3");
    let dbs_after = pg.databases();
    assert_eq!(dbs_after.len(), dbs_before.len() + 1, "{dbs_after:?}");
    // The Deployment is as it was: its replicas, its template, no note left.
    let d = p.ns.deployment("web");
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    assert!(
        !d.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("ripcord.dev/restore-replicas")
    );
    assert_eq!(d.status.unwrap().available_replicas, Some(2));
    assert_eq!(p.ns.template("web"), template_before);
    assert_eq!(
        p.answer(),
        ("v1".to_string(), "hello from v1's config".to_string())
    );
    let status = p.json(&["status", "web"]);
    assert!(
        status["frozen"].is_null(),
        "the restore's freeze is lifted: {status}"
    );
    let events = p.events();
    assert!(
        events.contains(&format!(
            "Deployment {}/web scaled from 2 replica(s) to 0 for the restore",
            p.ns.name
        )),
        "{events}"
    );
    assert!(events.contains("restore_finished"), "{events}");
}

/// Images in a real registry: `repo:VERSION` for each version, built FROM scratch by
/// the engine and pushed by the docker CLI (logged in with `login` when the registry
/// wants one). Returns the repository and each version's `repo@sha256:…` as the push
/// got it from the registry. The images go when the returned `Cleanup` is dropped.
fn pushed_images(
    registry: &registry_fixture::Registry,
    login: Option<(&str, &str)>,
    versions: &[&str],
) -> (String, Vec<String>, docker_fixture::Cleanup) {
    let rt = docker_fixture::rt();
    let engine = docker_fixture::engine(&rt);
    let mut cleanup = docker_fixture::Cleanup::new();
    let work = tempfile::tempdir().unwrap();
    let push_config = work.path().join("docker-config");
    std::fs::create_dir(&push_config).unwrap();
    let docker = |args: &[&str]| {
        Command::new("docker")
            .arg("--config")
            .arg(&push_config)
            .args(args)
            .output()
            .unwrap()
    };
    if let Some((user, pass)) = login {
        let mut child = Command::new("docker")
            .arg("--config")
            .arg(&push_config)
            .args(["login", "-u", user, "--password-stdin", &registry.host()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pass.as_bytes())
            .unwrap();
        assert_ok(&child.wait_with_output().unwrap(), "docker login");
    }
    let repo = format!("{}/{}", registry.host(), docker_fixture::unique("kubeapp"));
    let mut pushed = Vec::new();
    for version in versions {
        // Pods never run here: the image's one file need not be a program; its
        // content differs per version, so each is its own image.
        let app = work.path().join("app");
        std::fs::write(&app, format!("{version}: pods never run here\n")).unwrap();
        let reference = format!("{repo}:{version}");
        cleanup.images.push(reference.clone());
        let labels =
            std::collections::BTreeMap::from([("ripcord.test".to_string(), reference.clone())]);
        let id = rt
            .block_on(engine.build_scratch_image_with(&reference, &app, &[], &labels))
            .unwrap_or_else(|e| panic!("building {reference}: {e}"));
        cleanup.images.push(id);
        assert_ok(&docker(&["push", &reference]), "docker push");
        // The digest the engine's push got from the registry: what a deploy must pin.
        let out = docker(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &reference,
        ]);
        assert_ok(&out, "docker image inspect");
        let digests: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        pushed.push(
            digests
                .iter()
                .find(|d| d.starts_with(&format!("{repo}@sha256:")))
                .unwrap_or_else(|| panic!("no digest of {repo} after the push: {digests:?}"))
                .clone(),
        );
    }
    (repo, pushed, cleanup)
}

/// A project whose image is `repo` (a real registry's) instead of `registry.test`, with
/// the registry lookup on; the stand-in kubelet serves `pushed[i]` as `versions[i]`.
fn registry_project(prefix: &str, repo: &str, pushed: &[String], versions: &[&str]) -> KubeProject {
    let ns = TestNamespace::new(prefix, true);
    user_objects(&ns, "hello from v1's config");
    ns.apply::<Deployment>(deployment(1, 10, 60));
    let p = KubeProject::new(ns, "");
    let path = p.dir.path().join("ripcord.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "image = \"registry.test/app\"\nregistry_digest = false\n",
        &format!("image = \"{repo}\"\n"),
    );
    assert!(
        text.contains(repo) && !text.contains("registry_digest"),
        "{text}"
    );
    std::fs::write(&path, text).unwrap();
    for (digest, version) in pushed.iter().zip(versions) {
        let (_, sha) = digest.split_once('@').unwrap();
        p.ns.digests
            .lock()
            .unwrap()
            .insert(sha.to_string(), version.to_string());
    }
    p
}

#[test]
fn a_tag_is_pinned_to_the_digest_its_registry_gives_before_any_pod_runs() {
    // A real registry on loopback, and a real image pushed to it by the engine.
    let registry = registry_fixture::Registry::start(None);
    let (repo, pushed, _cleanup) = pushed_images(&registry, None, &["v1"]);
    let pushed = pushed[0].clone();
    let reference = format!("{repo}:v1");
    let mut p = registry_project("digest", &repo, std::slice::from_ref(&pushed), &["v1"]);
    p.start_watcher();
    let out = p.deploy("v1");
    let err = stderr(&out);
    p.must(out, "deploy v1 by tag");
    assert!(err.contains("as its registry says"), "{err}");
    assert_eq!(
        p.ns.image("web"),
        pushed,
        "the template runs the pushed digest"
    );
    let spec = &p.release("v1")["spec"]["kubernetes"];
    assert_eq!(spec["image"], pushed.as_str(), "{spec}");
    assert_eq!(spec["reference"], reference.as_str(), "{spec}");
    assert_eq!(p.answer().0, "v1");

    // A tag the registry does not have: refused before anything is changed.
    let out = p.deploy("v9");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("has no image {repo}:v9")) && err.contains("404"),
        "{err}"
    );
    assert_eq!(p.ns.image("web"), pushed, "the Deployment is untouched");
    drop(p);
    drop(registry);
}

#[test]
fn a_registry_login_comes_from_the_docker_config_and_without_one_the_tag_stays() {
    let registry = registry_fixture::Registry::start(Some(("ci", "s3cret-pw")));
    let (repo, pushed, _cleanup) =
        pushed_images(&registry, Some(("ci", "s3cret-pw")), &["v1", "v2"]);
    let mut p = registry_project("login", &repo, &pushed, &["v1", "v2"]);
    p.start_watcher();
    // No login for it in the Docker config: the registry refuses to say (401); the
    // deploy goes on with the tag, and says why.
    let out = p.deploy("v1");
    let err = stderr(&out);
    p.must(out, "deploy v1 without a login");
    assert!(
        err.contains("no digest from the registry") && err.contains("login"),
        "{err}"
    );
    assert_eq!(p.ns.image("web"), format!("{repo}:v1"));
    assert!(p.events().contains("digest_unknown"), "{}", p.events());
    // `docker login`'s entry in the Docker config the watcher reads: Basic auth.
    let config = p.dir.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        serde_json::json!({"auths": {registry.host(): {"auth": "Y2k6czNjcmV0LXB3"}}}).to_string(),
    )
    .unwrap();
    let out = p.deploy("v2");
    let err = stderr(&out);
    p.must(out, "deploy v2 logged in");
    assert!(err.contains("as its registry says"), "{err}");
    assert_eq!(p.ns.image("web"), pushed[1], "pinned to v2's pushed digest");
    assert_eq!(p.answer().0, "v2");
    drop(p);
    drop(registry);
}

#[test]
fn a_watcher_killed_mid_restore_leaves_the_deployment_to_the_next_one() {
    let pg = pg_fixture::start();
    pg.create_app("app");
    let items = || pg.items("app");
    let extra = pg.service_table("app", "");
    let ns = TestNamespace::new("crashrestore", true);
    user_objects(&ns, "hello from v1's config");
    ns.apply::<Deployment>(deployment(2, 10, 60));
    let mut p = KubeProject::new(ns, &extra);
    // The watcher dies (SIGKILL) once the Deployment is at 0 for the restore.
    p.start_watcher_env(&[("RIPCORD_FAILPOINT", "restore.kube_scaled_down")]);
    p.must(p.deploy("v1"), "deploy v1");
    p.must(p.deploy("v2"), "deploy v2");
    p.must(p.run(&["db", "backup", "web"]), "db backup");
    pg.sql(
        "app",
        "DELETE FROM items WHERE id = 1; INSERT INTO items VALUES (4, 'four')",
    );
    let out = p.run(&["db", "restore", "web", "--confirm", "app"]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut dead = p.watcher.take().unwrap();
    let status = common::wait_exit(
        &mut dead,
        "the watcher at its failpoint",
        Duration::from_secs(20),
    );
    assert!(!status.success(), "killed at the failpoint: {status:?}");
    assert!(
        p.watcher_log().contains("restore.kube_scaled_down"),
        "{}",
        p.watcher_log()
    );
    // What the dead watcher left: the Deployment at 0 with the replicas to give back
    // noted on it, the database untouched.
    let d = p.ns.deployment("web");
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(0));
    assert_eq!(
        d.metadata.annotations.as_ref().unwrap()["ripcord.dev/restore-replicas"],
        "2"
    );
    assert_eq!(items(), "2,3,4");
    // doctor (no watcher runs) says so, and what to do.
    let out = p.run(&["doctor", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("✗ replicas") && stdout(&out).contains("2 to give back"),
        "{}",
        stdout(&out)
    );

    // The next watcher finds the address dead and puts the active release in place
    // again, which gives the replicas back.
    p.start_watcher();
    eventually("v2 serves again", Duration::from_secs(40), || {
        common::get(&format!("http://127.0.0.1:{}/api/status", p.listen)).0 == 200
    });
    let d = p.ns.deployment("web");
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    assert!(
        !d.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("ripcord.dev/restore-replicas")
    );
    assert_eq!(p.answer().0, "v2");
    assert_eq!(items(), "2,3,4", "no half restore happened");
    // The restore had changed nothing (the names were never swapped): the next
    // watcher says so and lifts the restore's freeze.
    let status = p.json(&["status", "web"]);
    assert!(status["frozen"].is_null(), "{status}");
    let events = p.json(&["events", "web"]).to_string();
    assert!(
        events.contains("restore_interrupted")
            && events.contains("before the databases were swapped"),
        "{events}"
    );
    // The restore, run again, goes to the end.
    p.must(
        p.run(&["db", "restore", "web", "--confirm", "app"]),
        "db restore again",
    );
    assert_eq!(items(), "1,2,3");
    assert_eq!(p.ns.deployment("web").spec.unwrap().replicas, Some(2));
    assert_eq!(p.answer().0, "v2");
}

#[test]
fn a_restore_that_fails_its_checks_gives_the_replicas_back_and_the_database_is_untouched() {
    let pg = pg_fixture::start();
    pg.create_app("crm");
    let items = || pg.items("crm");
    // The restored copy must hold more than 100 items: it holds 3, so the check fails
    // after the Deployment was scaled to 0 and before the swap.
    let extra = pg.service_table("crm", "checks = [\"SELECT count(*) > 100 FROM items\"]\n");
    let p = ready_project_with("restorefail", 10, 60, &extra, |_| {});
    p.must(p.deploy("v1"), "deploy v1");
    p.must(p.run(&["db", "backup", "web"]), "db backup");
    pg.sql("crm", "INSERT INTO items VALUES (9, 'nine')");
    let dbs = pg.databases();
    let out = p.run(&["db", "restore", "web", "--confirm", "crm"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("untouched"), "{}", stderr(&out));
    assert_eq!(items(), "1,2,3,9", "the original database is as it was");
    assert_eq!(pg.databases(), dbs, "the half-made copy was dropped");
    let events = p.events();
    assert!(
        events.contains(&format!(
            "Deployment {}/web scaled from 2 replica(s) to 0",
            p.ns.name
        )),
        "the restore did scale it down: {events}"
    );
    let d = p.ns.deployment("web");
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2), "given back");
    assert!(
        !d.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("ripcord.dev/restore-replicas")
    );
    assert_eq!(d.status.unwrap().available_replicas, Some(2));
    assert_eq!(
        p.answer(),
        ("v1".to_string(), "hello from v1's config".to_string())
    );
    let status = p.json(&["status", "web"]);
    assert!(
        status["frozen"].is_null(),
        "the restore's freeze is lifted: {status}"
    );
}

#[test]
fn a_deploy_the_migration_guard_refuses_leaves_no_config_copy_behind() {
    let pg = pg_fixture::start();
    pg.sql("postgres", "CREATE DATABASE shop");
    pg.sql(
        "shop",
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
         CREATE TABLE users (id int PRIMARY KEY, email text);
         INSERT INTO alembic_version VALUES ('001');",
    );
    let extra = format!(
        "[service.web.migrations]\ndir = \"migrations\"\non_contract = \"refuse\"\n{}",
        pg.service_table("shop", "")
    );
    let p = ready_project_with("refused", 10, 60, &extra, |dir| {
        let versions = dir.join("migrations/versions");
        std::fs::create_dir_all(&versions).unwrap();
        for (name, text) in MIGRATIONS {
            std::fs::write(versions.join(name), text).unwrap();
        }
    });
    p.must(p.deploy("v1"), "deploy v1");
    let before = copies(&p.ns);
    let template = p.ns.template("web");
    // New config, so v2 would get a new copy; but v2 ships 002 (expand) with 003
    // (contract): refused (exit 3) before any copy is made.
    p.ns.set_config("web-config", serde_json::json!({"GREETING": "v2's"}));
    let out = p.deploy("v2");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("003_drop_email.py"),
        "{}",
        stderr(&out)
    );
    assert_eq!(copies(&p.ns), before, "no copy was made for the refused v2");
    assert_eq!(
        p.ns.template("web"),
        template,
        "the Deployment is untouched"
    );
    let releases = p.json(&["releases", "web"]);
    assert_eq!(releases.as_array().map(Vec::len), Some(1), "{releases}");
    // Forced with a reason, it goes, and then v2 has its own copy.
    p.must(
        p.run(&[
            "deploy",
            "web",
            "v2",
            "--force",
            "--reason",
            "one-step migration accepted",
        ]),
        "forced deploy v2",
    );
    let now = copies(&p.ns);
    assert_eq!(now.len(), before.len() + 1, "{now:?}");
    assert_eq!(p.answer(), ("v2".to_string(), "v2's".to_string()));
}
