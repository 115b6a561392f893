//! Runtime `kubernetes`: a release is the Deployment's pod template, snapshotted at
//! deploy. The image is set (kept as given, pinned to `repo@sha256:…` once the
//! release's pods report a digest, or as given when it names one), and every ConfigMap
//! and Secret the template reads is copied to an immutable, content-named copy labelled
//! as the service's; the template then points at the copies and is recorded in the
//! ledger. A deploy or rollback replaces the Deployment's template with the release's
//! own (so a rollback brings back the config it ran with, whatever today's ConfigMaps
//! say and whatever ReplicaSet history the cluster kept), then waits for the rollout
//! (observedGeneration, updated and available replicas, the progress deadline) and for
//! the service's address to answer its health check.
//!
//! Drift: after each apply the Deployment carries the fingerprint of the template
//! ripcord applied. A template that no longer matches it was changed by someone else
//! (`kubectl set image`, an edit): a deploy or rollback refuses to overwrite it unless
//! forced with a reason, and the refusal is recorded as an event.
//!
//! Never touches a ConfigMap or Secret it did not create (the copies carry
//! `app.kubernetes.io/managed-by=ripcord` and the service's label), and never creates
//! the Deployment: the user does, ripcord only rolls it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ExecError, Progress, ServiceExec, say};
use crate::config::{KubernetesConfig, duration};
use crate::k8s::template::{self, Kind};
use crate::k8s::{
    ANNOTATION_RELEASE, ANNOTATION_RESTORE_REPLICAS, ANNOTATION_TEMPLATE, Cluster, KubeError,
    LABEL_SERVICE, LABEL_SOURCE, MANAGED_BY,
};
use crate::ledger::{KubeCopy, KubeRelease, Release};

/// How often the Deployment's status is read while a rollout runs.
const POLL: Duration = Duration::from_millis(300);

fn failed(e: KubeError) -> ExecError {
    ExecError::Failed(e.to_string())
}

impl ServiceExec {
    pub(super) fn kube_cfg(&self) -> Result<&KubernetesConfig, ExecError> {
        self.cfg.kubernetes.as_ref().ok_or_else(|| {
            ExecError::Failed(format!(
                "{} has runtime \"kubernetes\" but no [service.{}.kubernetes]",
                self.name(),
                self.name()
            ))
        })
    }

    /// The cluster, connected on first use.
    pub async fn cluster(&self) -> Result<&Cluster, ExecError> {
        let k = self.kube_cfg()?.clone();
        self.cluster
            .get_or_try_init(|| async move {
                Cluster::connect(k.kubeconfig.as_deref(), k.context.as_deref(), &k.namespace)
                    .await
                    .map_err(failed)
            })
            .await
    }

    async fn kube_deployment(&self) -> Result<Deployment, ExecError> {
        let k = self.kube_cfg()?;
        let cluster = self.cluster().await?;
        cluster
            .deployment(&k.deployment)
            .await
            .map_err(|e| match e.is_not_found() {
                true => ExecError::Failed(format!(
                    "{e}: ripcord rolls an existing Deployment and never creates one; apply \
                     its manifest first (kubectl apply -f …)"
                )),
                false => failed(e),
            })
    }

    /// What changed behind ripcord's back, if anything: `None` when the Deployment's
    /// template is the one ripcord last applied (or ripcord never applied one).
    pub async fn kube_drift(&self) -> Result<Option<String>, ExecError> {
        let d = self.kube_deployment().await?;
        Ok(self.drift_of(&d))
    }

    fn drift_of(&self, d: &Deployment) -> Option<String> {
        let release = crate::k8s::drifted(d)?;
        let k = self.cfg.kubernetes.as_ref()?;
        let t = d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let recorded = release
            .split_once(' ')
            .and_then(|(id, _)| id.parse::<i64>().ok())
            .and_then(|id| self.ledger().release(id).ok())
            .and_then(|r| r.spec.kubernetes);
        let now = template::image(&t, &k.container).unwrap_or_default();
        let what = match recorded {
            Some(r) if r.image != now => format!(
                "container `{}` runs image {now}, not {} as ripcord applied",
                k.container, r.image
            ),
            _ => "its pod template differs from the one ripcord applied".to_string(),
        };
        Some(format!(
            "Deployment {}/{} was changed outside ripcord since it applied release {release}: {what}",
            k.namespace, k.deployment
        ))
    }

    /// Refuses (exit 3) to overwrite a Deployment someone else changed, unless forced;
    /// either way the drift is recorded as an event.
    pub(super) async fn kube_refuse_drift(
        &self,
        what: &str,
        force: bool,
        reason: Option<&str>,
    ) -> Result<(), ExecError> {
        let Some(drift) = self.kube_drift().await? else {
            return Ok(());
        };
        if force && reason.is_some() {
            self.event(
                None,
                None,
                "drift_overwritten",
                format!("{drift}; overwritten by a forced {what}"),
            );
            return Ok(());
        }
        self.event(None, None, "drift", drift.clone());
        Err(ExecError::Refused(format!(
            "{drift}. ripcord will not {what} over it silently: make the change through \
             ripcord (deploy), or pass --force --reason TEXT to overwrite it"
        )))
    }

    /// Deploy planning: the Deployment's template for `version` with `image` (default
    /// `IMAGE:VERSION`, pinned by the registry's digest when it gives one), reading the
    /// originals of the ConfigMaps and Secrets; checks that each one it needs exists.
    pub(super) async fn kube_snapshot(
        &self,
        version: &str,
        image: Option<&str>,
        progress: &Progress,
    ) -> Result<KubeRelease, ExecError> {
        let k = self.kube_cfg()?.clone();
        let d = self.kube_deployment().await?;
        let mut t = d.spec.map(|s| s.template).unwrap_or_default();
        // What the template reads today may be the active release's copies: the
        // originals are what the user edits, so a new release copies those again.
        let originals: BTreeMap<(Kind, String), String> = self
            .ledger()
            .releases(self.name())?
            .into_iter()
            .filter_map(|r| r.spec.kubernetes)
            .flat_map(|k| k.copies)
            .filter_map(|c| Some(((Kind::parse(&c.kind)?, c.copy), c.source)))
            .collect();
        template::rename(&mut t, &originals);
        let current = template::image(&t, &k.container).ok_or_else(|| {
            ExecError::Failed(format!(
                "Deployment {}/{} has no container `{}` (it has: {}); set `container` in \
                 [service.{}.kubernetes]",
                k.namespace,
                k.deployment,
                k.container,
                template::container_names(&t).join(", "),
                self.name()
            ))
        })?;
        let reference = image.map_or_else(
            || template::default_image(k.image.as_deref(), &current, version),
            str::to_string,
        );
        let image = self.kube_registry_digest(&k, &reference, progress).await?;
        template::set_image(&mut t, &k.container, &image);
        // Only read here: a deploy refused later (the migration guard) leaves no copy
        // behind. The copies are made by `kube_copy_config` once nothing refuses.
        let cluster = self.cluster().await?.clone();
        for (kind, source, optional) in template::references(&t) {
            let there = match kind {
                Kind::ConfigMap => cluster.config_map(&source).await.map_err(failed)?.is_some(),
                Kind::Secret => cluster.secret(&source).await.map_err(failed)?.is_some(),
            };
            if !there && !optional {
                return Err(missing(&k, kind, &source));
            }
        }
        Ok(KubeRelease {
            image,
            reference,
            template: serde_json::to_value(&t).expect("a pod template always serializes"),
            copies: Vec::new(),
        })
    }

    /// Deploy, once nothing refuses it: copies each ConfigMap and Secret the planned
    /// template reads to its immutable, content-named copy, and points the template at
    /// the copies.
    pub(super) async fn kube_copy_config(
        &self,
        kr: &mut KubeRelease,
        progress: &Progress,
    ) -> Result<(), ExecError> {
        let k = self.kube_cfg()?.clone();
        let mut t: PodTemplateSpec = serde_json::from_value(kr.template.clone()).map_err(|e| {
            ExecError::Failed(format!("the planned pod template is unreadable: {e}"))
        })?;
        let cluster = self.cluster().await?.clone();
        let mut copies = Vec::new();
        let mut names = BTreeMap::new();
        for (kind, source, optional) in template::references(&t) {
            let copy = match kind {
                Kind::ConfigMap => self.copy_config_map(&cluster, &source).await?,
                Kind::Secret => self.copy_secret(&cluster, &source).await?,
            };
            let Some(copy) = copy else {
                if optional {
                    continue;
                }
                return Err(missing(&k, kind, &source));
            };
            say(
                progress,
                format!("{} {source} snapshotted as {copy}", kind.as_str()),
            );
            names.insert((kind, source.clone()), copy.clone());
            copies.push(KubeCopy {
                kind: kind.as_str().to_string(),
                source,
                copy,
            });
        }
        template::rename(&mut t, &names);
        kr.template = serde_json::to_value(&t).expect("a pod template always serializes");
        kr.copies = copies;
        Ok(())
    }

    /// The image a new release runs: `repo@sha256:…` when `reference` is a tag and its
    /// registry gives the digest (`docker/manifest.rs`), so the release is pinned before
    /// any pod pulls it; refused when the registry says it has no such tag. A registry
    /// that does not answer (or `registry_digest = false`) leaves the tag, pinned later
    /// from what the pods report.
    async fn kube_registry_digest(
        &self,
        k: &KubernetesConfig,
        reference: &str,
        progress: &Progress,
    ) -> Result<String, ExecError> {
        if !k.registry_digest || reference.contains('@') {
            return Ok(reference.to_string());
        }
        use crate::docker::manifest::{self, TagDigest};
        match manifest::tag_digest(&self.http, reference, Duration::from_secs(10)).await {
            Ok(TagDigest::Found(digest)) => {
                let pinned = format!(
                    "{}@{digest}",
                    crate::docker::registry::repository_of(reference)
                );
                say(
                    progress,
                    format!("{reference} is pinned to {pinned}, as its registry says"),
                );
                Ok(pinned)
            }
            Ok(TagDigest::Unknown) => Err(ExecError::Failed(format!(
                "registry {} has no image {reference} (it answered 404 for the tag): push it \
                 first; nothing was changed",
                crate::docker::registry::registry_of(reference)
            ))),
            Err(why) => {
                let message = format!(
                    "no digest from the registry ({why}); {reference} is pinned once its pods \
                     report one"
                );
                say(progress, message.clone());
                self.event(None, None, "digest_unknown", message);
                Ok(reference.to_string())
            }
        }
    }

    fn copy_meta(&self, source: &str, copy: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(copy.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.to_string(), "ripcord".to_string()),
                (LABEL_SERVICE.to_string(), self.name().to_string()),
                (LABEL_SOURCE.to_string(), source.to_string()),
            ])),
            ..Default::default()
        }
    }

    /// Copies ConfigMap `source` (if it exists) to its immutable copy; returns the
    /// copy's name. A copy of the same content already made is reused.
    async fn copy_config_map(
        &self,
        cluster: &Cluster,
        source: &str,
    ) -> Result<Option<String>, ExecError> {
        let Some(cm) = cluster.config_map(source).await.map_err(failed)? else {
            return Ok(None);
        };
        let data: BTreeMap<String, Vec<u8>> = cm
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        let binary: BTreeMap<String, Vec<u8>> = cm
            .binary_data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let digest = template::content_digest(&[("data", data), ("binaryData", binary)]);
        let name = template::copy_name(source, Kind::ConfigMap, &digest);
        let copy = ConfigMap {
            metadata: self.copy_meta(source, &name),
            data: cm.data,
            binary_data: cm.binary_data,
            immutable: Some(true),
        };
        match cluster.create_config_map(&copy).await {
            Ok(_) => Ok(Some(name)),
            Err(KubeError::Api {
                code: Some(409), ..
            }) => self.existing_copy(cluster, Kind::ConfigMap, &name).await,
            Err(e) => Err(failed(e)),
        }
    }

    async fn copy_secret(
        &self,
        cluster: &Cluster,
        source: &str,
    ) -> Result<Option<String>, ExecError> {
        let Some(s) = cluster.secret(source).await.map_err(failed)? else {
            return Ok(None);
        };
        let data: BTreeMap<String, Vec<u8>> = s
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let type_ = s.type_.clone().unwrap_or_default();
        let digest = template::content_digest(&[
            ("data", data),
            ("type", BTreeMap::from([(type_, Vec::new())])),
        ]);
        let name = template::copy_name(source, Kind::Secret, &digest);
        let copy = Secret {
            metadata: self.copy_meta(source, &name),
            data: s.data,
            type_: s.type_,
            immutable: Some(true),
            string_data: None,
        };
        match cluster.create_secret(&copy).await {
            Ok(_) => Ok(Some(name)),
            Err(KubeError::Api {
                code: Some(409), ..
            }) => self.existing_copy(cluster, Kind::Secret, &name).await,
            Err(e) => Err(failed(e)),
        }
    }

    /// A copy's name was taken: it is ours (same content, by its name) or a refusal.
    async fn existing_copy(
        &self,
        cluster: &Cluster,
        kind: Kind,
        name: &str,
    ) -> Result<Option<String>, ExecError> {
        let labels = match kind {
            Kind::ConfigMap => cluster
                .config_map(name)
                .await
                .map_err(failed)?
                .and_then(|c| c.metadata.labels),
            Kind::Secret => cluster
                .secret(name)
                .await
                .map_err(failed)?
                .and_then(|s| s.metadata.labels),
        }
        .unwrap_or_default();
        if labels.get(LABEL_SERVICE).map(String::as_str) == Some(self.name())
            && labels.get(MANAGED_BY).map(String::as_str) == Some("ripcord")
        {
            return Ok(Some(name.to_string()));
        }
        Err(ExecError::Failed(format!(
            "{} `{name}` exists and is not {}'s copy (no `{LABEL_SERVICE}={}` label): ripcord \
             never touches what it does not own",
            kind.as_str(),
            self.name(),
            self.name()
        )))
    }

    /// Applies `release`'s recorded template to the Deployment and waits until it has
    /// rolled out and the address answers its health check.
    pub(super) async fn kube_apply(
        &self,
        op: i64,
        release: &Release,
        progress: &Progress,
    ) -> Result<(), ExecError> {
        let k = self.kube_cfg()?.clone();
        let kr = release.spec.kubernetes.clone().ok_or_else(|| {
            ExecError::Failed(format!(
                "{} {} has no pod template in the ledger; deploy it again",
                self.name(),
                release.version
            ))
        })?;
        let mut t: PodTemplateSpec = serde_json::from_value(kr.template.clone()).map_err(|e| {
            ExecError::Failed(format!("the recorded pod template is unreadable: {e}"))
        })?;
        template::set_image(&mut t, &k.container, &kr.image);
        let cluster = self.cluster().await?.clone();
        // The release's own copies must still exist: its config is what it ran with.
        for c in &kr.copies {
            let there = match Kind::parse(&c.kind) {
                Some(Kind::Secret) => cluster.secret(&c.copy).await.map_err(failed)?.is_some(),
                _ => cluster.config_map(&c.copy).await.map_err(failed)?.is_some(),
            };
            if !there {
                return Err(ExecError::Failed(format!(
                    "{} {}'s copy of {} `{}` ({}) is gone, so its config cannot be restored; \
                     deploy it again to snapshot today's",
                    self.name(),
                    release.version,
                    c.kind,
                    c.source,
                    c.copy
                )));
            }
        }
        let fingerprint = template::fingerprint(&t);
        let release_note = format!("{} {}", release.id, release.version);
        self.ledger().step(
            op,
            "kube_apply",
            format!(
                "applying {} {} ({}, {} config copies) to Deployment {}/{}",
                self.name(),
                release.version,
                kr.image,
                kr.copies.len(),
                k.namespace,
                k.deployment
            ),
        )?;
        say(
            progress,
            format!(
                "applying {}'s pod template to Deployment {}/{}",
                release.version, k.namespace, k.deployment
            ),
        );
        let applied = self
            .kube_replace_template(&cluster, &t, &fingerprint, &release_note)
            .await?;
        // The API server defaults a template it stores; ripcord's templates came from
        // it, so the stored one is the same. If not, the stored one's fingerprint is the
        // one a later drift check compares with.
        let stored = applied
            .spec
            .as_ref()
            .map(|s| template::fingerprint(&s.template))
            .unwrap_or_default();
        let generation = applied.metadata.generation.unwrap_or(0);
        // When the change was stored: a progress deadline condition from before it is
        // stale. The later of the API server's clock (the managed fields' times) and
        // ours: a time too late only leaves a real timeout to `start_timeout`, one too
        // early would take a stale condition for a failure.
        let applied_at = applied
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.time.as_ref().map(|t| t.0))
            .chain([jiff::Timestamp::now()])
            .max()
            .unwrap_or_else(jiff::Timestamp::now);
        if stored != fingerprint {
            let stored_template = applied.spec.clone().unwrap_or_default().template;
            self.kube_replace_template(&cluster, &stored_template, &stored, &release_note)
                .await?;
        }
        let t0 = Instant::now();
        let deadline = t0 + self.cfg.start_timeout;
        say(
            progress,
            format!(
                "waiting for Deployment {} to roll out and {} to answer",
                k.deployment,
                self.cfg.health_url(crate::config::Slot::Blue)
            ),
        );
        self.kube_rolled_out(&cluster, &k.deployment, generation, applied_at, deadline)
            .await
            .map_err(|why| {
                ExecError::Failed(format!(
                    "{} {} did not roll out on Deployment {}/{}: {why}",
                    self.name(),
                    release.version,
                    k.namespace,
                    k.deployment
                ))
            })?;
        self.event(
            Some(release.id),
            Some(op),
            "healthy",
            format!(
                "Deployment {} rolled out {} and its address answers after {} ms",
                k.deployment,
                release.version,
                t0.elapsed().as_millis()
            ),
        );
        self.kube_pin_digest(&cluster, release, &kr).await;
        self.kube_retention(&cluster, release.id).await;
        Ok(())
    }

    /// Replaces the Deployment's pod template with `t` and notes the fingerprint and
    /// release on it. Each write names the `resourceVersion` it read, so nothing
    /// written meanwhile is overwritten: the controllers update the Deployment's status
    /// all the time, so a conflict is read again and retried (at most 5 times), unless
    /// the template itself changed since the first read, which is refused.
    async fn kube_replace_template(
        &self,
        cluster: &Cluster,
        t: &PodTemplateSpec,
        fingerprint: &str,
        release_note: &str,
    ) -> Result<Deployment, ExecError> {
        let k = self.kube_cfg()?;
        let mut first: Option<String> = None;
        for _ in 0..5 {
            let mut d = self.kube_deployment().await?;
            let now = template::fingerprint(
                &d.spec
                    .as_ref()
                    .map(|s| s.template.clone())
                    .unwrap_or_default(),
            );
            match &first {
                None => first = Some(now),
                Some(f) if *f != now => {
                    return Err(ExecError::Refused(format!(
                        "the pod template of Deployment {}/{} changed while ripcord was \
                         applying its own: nothing was overwritten; look at what changed, \
                         then try again",
                        k.namespace, k.deployment
                    )));
                }
                Some(_) => {}
            }
            // A restore that scaled the Deployment to 0 and never gave its replicas back
            // (its watcher crashed): an apply gives them back.
            if let Some(n) = restore_replicas(&d)
                && d.spec.as_ref().and_then(|s| s.replicas) == Some(0)
            {
                d.spec.get_or_insert_with(Default::default).replicas = Some(n);
            }
            if let Some(a) = d.metadata.annotations.as_mut() {
                a.remove(ANNOTATION_RESTORE_REPLICAS);
            }
            d.spec.get_or_insert_with(Default::default).template = t.clone();
            let annotations = d.metadata.annotations.get_or_insert_with(Default::default);
            annotations.insert(ANNOTATION_TEMPLATE.to_string(), fingerprint.to_string());
            annotations.insert(ANNOTATION_RELEASE.to_string(), release_note.to_string());
            match cluster.replace_deployment(&d).await {
                Ok(applied) => return Ok(applied),
                Err(e) if e.is_conflict() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(failed(e)),
            }
        }
        Err(ExecError::Failed(format!(
            "Deployment {}/{} kept changing: 5 writes in a row met a newer version",
            k.namespace, k.deployment
        )))
    }

    /// Writes `change` to the Deployment read fresh; a conflict (the controllers update
    /// its status all the time) is read again and retried, at most 5 times.
    async fn kube_update(
        &self,
        cluster: &Cluster,
        change: impl Fn(&mut Deployment),
    ) -> Result<Deployment, ExecError> {
        let k = self.kube_cfg()?;
        for _ in 0..5 {
            let mut d = self.kube_deployment().await?;
            change(&mut d);
            match cluster.replace_deployment(&d).await {
                Ok(applied) => return Ok(applied),
                Err(e) if e.is_conflict() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(failed(e)),
            }
        }
        Err(ExecError::Failed(format!(
            "Deployment {}/{} kept changing: 5 writes in a row met a newer version",
            k.namespace, k.deployment
        )))
    }

    /// A database restore stops the app: the Deployment is scaled to 0, with the
    /// replicas to give back noted on it in the same write (annotation
    /// `ripcord.dev/restore-replicas`, so a crashed watcher's successor, or the next
    /// apply, gives them back), then waits (`stop_timeout` + 30 s) until the controller
    /// has seen the change and reports no pod left. Returns the replicas to give back:
    /// those a crashed restore noted, if it left the Deployment at 0. The template is
    /// not touched.
    pub(super) async fn kube_scale_down(&self, progress: &Progress) -> Result<i32, ExecError> {
        let k = self.kube_cfg()?.clone();
        let cluster = self.cluster().await?.clone();
        let d = self.kube_deployment().await?;
        let now = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let replicas = match restore_replicas(&d) {
            Some(n) if now == 0 => n,
            _ => now,
        };
        say(
            progress,
            format!(
                "scaling Deployment {}/{} from {replicas} replica(s) to 0",
                k.namespace, k.deployment
            ),
        );
        let applied = self
            .kube_update(&cluster, |d| {
                d.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(
                        ANNOTATION_RESTORE_REPLICAS.to_string(),
                        replicas.to_string(),
                    );
                d.spec.get_or_insert_with(Default::default).replicas = Some(0);
            })
            .await?;
        let generation = applied.metadata.generation.unwrap_or(0);
        let wait = self.cfg.stop_timeout + Duration::from_secs(30);
        let deadline = Instant::now() + wait;
        loop {
            let last = match cluster.deployment(&k.deployment).await {
                Ok(d) => {
                    let st = d.status.unwrap_or_default();
                    let observed = st.observed_generation.unwrap_or(0) >= generation;
                    let left = st.replicas.unwrap_or(0);
                    if observed && left == 0 {
                        // A watcher that dies here leaves the Deployment at 0 with its
                        // note: the next one's reconcile gives the replicas back.
                        crate::failpoint::hit("restore.kube_scaled_down");
                        return Ok(replicas);
                    }
                    format!(
                        "{left} pod(s) left{}",
                        if observed {
                            ""
                        } else {
                            "; the controller has not seen the change yet"
                        }
                    )
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                let back = match self.kube_update(&cluster, |d| give_back(d, replicas)).await {
                    Ok(_) => format!("its {replicas} replica(s) were given back"),
                    Err(e) => format!("giving its {replicas} replica(s) back failed too: {e}"),
                };
                return Err(ExecError::Failed(format!(
                    "Deployment {}/{} did not scale to 0 within {}s (last seen: {last}); {back}",
                    k.namespace,
                    k.deployment,
                    duration::secs_text(wait)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// After a restore: gives the Deployment its `replicas` back (and drops the note),
    /// then waits for the rollout and the address's health check, as an apply does. The
    /// template is not touched: the pods come back from the one the Deployment has.
    pub(super) async fn kube_scale_back(
        &self,
        op: i64,
        replicas: i32,
        progress: &Progress,
    ) -> Result<(), ExecError> {
        let k = self.kube_cfg()?.clone();
        let cluster = self.cluster().await?.clone();
        self.ledger().step(
            op,
            "kube_scale",
            format!(
                "scaling Deployment {}/{} back to {replicas} replica(s) after the restore",
                k.namespace, k.deployment
            ),
        )?;
        say(
            progress,
            format!(
                "scaling Deployment {}/{} back to {replicas} replica(s)",
                k.namespace, k.deployment
            ),
        );
        let applied = self
            .kube_update(&cluster, |d| give_back(d, replicas))
            .await?;
        let generation = applied.metadata.generation.unwrap_or(0);
        let t0 = Instant::now();
        self.kube_rolled_out(
            &cluster,
            &k.deployment,
            generation,
            jiff::Timestamp::now(),
            t0 + self.cfg.start_timeout,
        )
        .await
        .map_err(|why| {
            ExecError::Failed(format!(
                "Deployment {}/{} did not come back to {replicas} replica(s) after the \
                 restore: {why}",
                k.namespace, k.deployment
            ))
        })?;
        self.event(
            None,
            Some(op),
            "healthy",
            format!(
                "Deployment {} is back to {replicas} replica(s) and its address answers after {} ms",
                k.deployment,
                t0.elapsed().as_millis()
            ),
        );
        Ok(())
    }

    /// Waits until the Deployment's controller has seen `generation` and every replica
    /// is updated and available, then until the health URL answers. A `Progressing`
    /// condition with reason `ProgressDeadlineExceeded` set after `applied_at` fails at
    /// once. One set before it is stale: the controller keeps a timed-out condition
    /// until the next rollout makes progress, and a rollout that reuses an old
    /// ReplicaSet (a rollback) does not reset it. Condition times have whole seconds
    /// and a real timeout comes at least `progressDeadlineSeconds` (>= 1 s) after the
    /// change, so "later" is a later second.
    async fn kube_rolled_out(
        &self,
        cluster: &Cluster,
        name: &str,
        generation: i64,
        applied_at: jiff::Timestamp,
        deadline: Instant,
    ) -> Result<(), String> {
        let mut last;
        loop {
            match cluster.deployment(name).await {
                Ok(d) => {
                    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    let st = d.status.unwrap_or_default();
                    let observed = st.observed_generation.unwrap_or(0) >= generation;
                    let updated = st.updated_replicas.unwrap_or(0);
                    let available = st.available_replicas.unwrap_or(0);
                    let total = st.replicas.unwrap_or(0);
                    if observed
                        && let Some(c) = st.conditions.iter().flatten().find(|c| {
                            c.type_ == "Progressing"
                                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                                && c.last_update_time
                                    .as_ref()
                                    .is_some_and(|t| t.0.as_second() > applied_at.as_second())
                        })
                    {
                        return Err(format!(
                            "the rollout exceeded its progress deadline ({})",
                            c.message.as_deref().unwrap_or("ProgressDeadlineExceeded")
                        ));
                    }
                    last = format!(
                        "{updated} of {want} replicas updated, {available} available, {total} in all{}",
                        if observed {
                            ""
                        } else {
                            "; the controller has not seen the change yet"
                        }
                    );
                    if observed && updated == want && available == want && total == want {
                        match self.probe(crate::config::Slot::Blue).await {
                            Ok(()) => return Ok(()),
                            Err(e) => last = format!("rolled out, but {e}"),
                        }
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not done after {}s (start_timeout); last seen: {last}",
                    duration::secs_text(self.cfg.start_timeout)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Once a release's pods report the digest their image resolved to, the release is
    /// recorded with `repo@sha256:…`, so a rollback runs exactly that content even if
    /// the tag moved. Best effort: a release without one keeps its reference.
    async fn kube_pin_digest(&self, cluster: &Cluster, release: &Release, kr: &KubeRelease) {
        if kr.image.contains("@sha256:") {
            return;
        }
        let Ok(k) = self.kube_cfg() else { return };
        let Ok(d) = cluster.deployment(&k.deployment).await else {
            return;
        };
        let selector = selector(&d);
        let Ok(pods) = cluster.pods(&selector).await else {
            return;
        };
        let pinned = pods
            .iter()
            .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
            .flatten()
            .filter(|s| s.name == k.container && s.image == kr.image)
            .find_map(|s| template::pinned(&kr.image, &s.image_id));
        let Some(pinned) = pinned else { return };
        let mut spec = release.spec.clone();
        if let Some(k) = spec.kubernetes.as_mut() {
            k.image = pinned.clone();
        }
        // The ledger's guard must be gone before `event` takes it again.
        let recorded = self.ledger().set_release_spec(release.id, &spec);
        match recorded {
            Ok(()) => self.event(
                Some(release.id),
                None,
                "image_pinned",
                format!(
                    "{} {} is pinned to {pinned}, as its pods report",
                    self.name(),
                    release.version
                ),
            ),
            Err(e) => tracing::warn!(service = %self.name(), "cannot record the digest: {e}"),
        }
    }

    /// The terminated containers (current or last state) of the pods that run
    /// `release`'s image, for the guard (`signals/kubernetes.rs`).
    pub(super) async fn kube_terminations(
        &self,
        release: i64,
    ) -> Result<Vec<crate::signals::PodTermination>, ExecError> {
        let k = self.kube_cfg()?.clone();
        let Some(kr) = self.ledger().release(release)?.spec.kubernetes else {
            return Ok(Vec::new());
        };
        let cluster = self.cluster().await?.clone();
        let d = cluster.deployment(&k.deployment).await.map_err(failed)?;
        let selector = selector(&d);
        let pods = cluster.pods(&selector).await.map_err(failed)?;
        let mut out = Vec::new();
        for p in pods {
            let pod = p.metadata.name.unwrap_or_default();
            let statuses = p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default();
            for s in statuses {
                if s.name != k.container || (s.image != kr.image && s.image != kr.reference) {
                    continue;
                }
                let terminated = [s.state.as_ref(), s.last_state.as_ref()]
                    .into_iter()
                    .flatten()
                    .filter_map(|st| st.terminated.as_ref());
                for t in terminated {
                    out.push(crate::signals::PodTermination {
                        release_id: release,
                        key: format!(
                            "{pod}/{}/{}/{}",
                            s.name,
                            s.restart_count,
                            t.finished_at
                                .as_ref()
                                .map(|f| f.0.to_string())
                                .unwrap_or_default()
                        ),
                        pod: pod.clone(),
                        reason: t.reason.clone().unwrap_or_else(|| "Terminated".to_string()),
                        exit_code: t.exit_code,
                        restart_count: s.restart_count,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Deletes the copies no kept release reads: the newest `keep_releases` releases,
    /// the one just applied and the one it replaced (the active one until the operation
    /// ends: the next rollback's target) keep theirs. Best effort: a failure is an
    /// event, and the next deploy tries again.
    async fn kube_retention(&self, cluster: &Cluster, applied: i64) {
        let Ok(k) = self.kube_cfg() else { return };
        let keep_n = k.keep_releases;
        let kept: BTreeSet<String> = {
            let ledger = self.ledger();
            let releases = ledger.releases(self.name()).unwrap_or_default();
            let active = ledger.active_release(self.name()).ok().flatten();
            releases
                .iter()
                .take(keep_n)
                .chain(releases.iter().filter(|r| r.id == applied))
                .chain(active.iter())
                .filter_map(|r| r.spec.kubernetes.as_ref())
                .flat_map(|k| k.copies.iter().map(|c| c.copy.clone()))
                .collect()
        };
        let (cms, secrets) = match cluster.copies(self.name()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(service = %self.name(), "retention: {e}");
                return;
            }
        };
        let doomed = cms
            .into_iter()
            .map(|n| ("ConfigMap", n))
            .chain(secrets.into_iter().map(|n| ("Secret", n)))
            .filter(|(_, n)| !kept.contains(n));
        for (kind, name) in doomed {
            match cluster.delete_copy(kind, &name).await {
                Ok(()) => self.event(
                    None,
                    None,
                    "copy_removed",
                    format!("{kind} {name} removed: no release among the {keep_n} kept reads it"),
                ),
                Err(e) => self.event(None, None, "copy_retention_failed", e.to_string()),
            }
        }
    }
}

/// The Deployment's pod selector (`spec.selector.matchLabels`) as a label selector.
fn selector(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The replicas a restore scaled away, as noted on the Deployment.
fn restore_replicas(d: &Deployment) -> Option<i32> {
    d.metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_RESTORE_REPLICAS)?
        .parse()
        .ok()
}

/// Sets the Deployment's replicas to `replicas` and drops the restore's note.
fn give_back(d: &mut Deployment, replicas: i32) {
    d.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    if let Some(a) = d.metadata.annotations.as_mut() {
        a.remove(ANNOTATION_RESTORE_REPLICAS);
    }
}

/// A ConfigMap or Secret the template needs (not `optional`) does not exist.
fn missing(k: &KubernetesConfig, kind: Kind, source: &str) -> ExecError {
    ExecError::Failed(format!(
        "the pod template of Deployment {}/{} reads {} `{source}`, which does not exist",
        k.namespace,
        k.deployment,
        kind.as_str()
    ))
}
