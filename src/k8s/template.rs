//! A Deployment's pod template as ripcord sees it, pure (no IO): the ConfigMaps and
//! Secrets it reads (volumes, projected volumes, `envFrom`, `env[].valueFrom`, in
//! containers and init containers), their renaming to a release's copies, the image of
//! one container, and the fingerprint that tells a hand edit (drift).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use sha2::{Digest, Sha256};

/// What a template reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "ConfigMap" => Some(Kind::ConfigMap),
            "Secret" => Some(Kind::Secret),
            _ => None,
        }
    }
}

/// Calls `f` with every ConfigMap and Secret name the pod spec reads, and whether the
/// reference is `optional`; `f` may rename it in place.
pub fn visit_refs(spec: &mut PodSpec, f: &mut dyn FnMut(Kind, &mut String, bool)) {
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(c) = v.config_map.as_mut() {
            f(Kind::ConfigMap, &mut c.name, c.optional.unwrap_or(false));
        }
        if let Some(s) = v.secret.as_mut()
            && let Some(name) = s.secret_name.as_mut()
        {
            f(Kind::Secret, name, s.optional.unwrap_or(false));
        }
        if let Some(p) = v.projected.as_mut() {
            for src in p.sources.iter_mut().flatten() {
                if let Some(c) = src.config_map.as_mut() {
                    f(Kind::ConfigMap, &mut c.name, c.optional.unwrap_or(false));
                }
                if let Some(s) = src.secret.as_mut() {
                    f(Kind::Secret, &mut s.name, s.optional.unwrap_or(false));
                }
            }
        }
    }
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        visit_container(c, f);
    }
}

fn visit_container(c: &mut Container, f: &mut dyn FnMut(Kind, &mut String, bool)) {
    for e in c.env_from.iter_mut().flatten() {
        if let Some(r) = e.config_map_ref.as_mut() {
            f(Kind::ConfigMap, &mut r.name, r.optional.unwrap_or(false));
        }
        if let Some(r) = e.secret_ref.as_mut() {
            f(Kind::Secret, &mut r.name, r.optional.unwrap_or(false));
        }
    }
    for e in c.env.iter_mut().flatten() {
        let Some(from) = e.value_from.as_mut() else {
            continue;
        };
        if let Some(r) = from.config_map_key_ref.as_mut() {
            f(Kind::ConfigMap, &mut r.name, r.optional.unwrap_or(false));
        }
        if let Some(r) = from.secret_key_ref.as_mut() {
            f(Kind::Secret, &mut r.name, r.optional.unwrap_or(false));
        }
    }
}

/// Every (kind, name, optional) the template reads, each once (the first optional
/// flag wins: a name read both ways is required).
pub fn references(t: &PodTemplateSpec) -> Vec<(Kind, String, bool)> {
    let mut out: BTreeMap<(Kind, String), bool> = BTreeMap::new();
    let mut spec = t.spec.clone().unwrap_or_default();
    visit_refs(&mut spec, &mut |kind, name, optional| {
        let e = out.entry((kind, name.clone())).or_insert(optional);
        *e &= optional;
    });
    out.into_iter().map(|((k, n), o)| (k, n, o)).collect()
}

/// Renames each reference found in `names` (kind, old name) to its new name.
pub fn rename(t: &mut PodTemplateSpec, names: &BTreeMap<(Kind, String), String>) {
    if let Some(spec) = t.spec.as_mut() {
        visit_refs(spec, &mut |kind, name, _| {
            if let Some(new) = names.get(&(kind, name.clone())) {
                *name = new.clone();
            }
        });
    }
}

/// The image of container `name`, if the template has that container.
pub fn image(t: &PodTemplateSpec, name: &str) -> Option<String> {
    t.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.image.clone().unwrap_or_default())
}

/// Sets container `name`'s image; false when there is no such container.
pub fn set_image(t: &mut PodTemplateSpec, name: &str, image: &str) -> bool {
    let Some(c) = t
        .spec
        .as_mut()
        .and_then(|s| s.containers.iter_mut().find(|c| c.name == name))
    else {
        return false;
    };
    c.image = Some(image.to_string());
    true
}

/// The container names, for a message about a missing one.
pub fn container_names(t: &PodTemplateSpec) -> Vec<String> {
    t.spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

/// The sha256 (hex) of the template's JSON: k8s-openapi writes fields in one order and
/// maps sorted, so the same template always gives the same fingerprint.
pub fn fingerprint(t: &PodTemplateSpec) -> String {
    let json = serde_json::to_vec(t).expect("a pod template always serializes");
    hex(&Sha256::digest(&json))
}

/// The name of a release's copy of `source`: the original's name and a digest of the
/// kind and content, so the same content is one copy, shared by the releases that read
/// it, and a copy's name never stands for other content (copies are immutable).
pub fn copy_name(source: &str, kind: Kind, content_digest: &str) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    h.update(content_digest.as_bytes());
    let tag = &hex(&h.finalize())[..10];
    // A ConfigMap or Secret name is a DNS subdomain of at most 253 characters.
    let keep = source.len().min(253 - "-rc-".len() - tag.len());
    format!("{}-rc-{tag}", source[..keep].trim_end_matches(['-', '.']))
}

/// The digest of a ConfigMap's or Secret's content (its data maps, sorted).
pub fn content_digest(maps: &[(&str, BTreeMap<String, Vec<u8>>)]) -> String {
    let mut h = Sha256::new();
    for (what, map) in maps {
        h.update(what.as_bytes());
        h.update([0]);
        for (k, v) in map {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_be_bytes());
            h.update(v);
        }
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The image a deploy of `version` runs when none is given: `repo:version`, where the
/// repository is `image` from the config, else today's image without its tag or digest.
pub fn default_image(repo: Option<&str>, current: &str, version: &str) -> String {
    let repo = repo.map_or_else(|| strip_tag(current), str::to_string);
    format!("{repo}:{version}")
}

/// `registry:5000/app:v1@sha256:…` → `registry:5000/app`.
pub fn strip_tag(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[last_slash..].rfind(':') {
        Some(i) => no_digest[..last_slash + i].to_string(),
        None => no_digest.to_string(),
    }
}

/// The digest a pod's `imageID` reports (`docker-pullable://app@sha256:…`,
/// `app@sha256:…`), as `repo@sha256:…` for `image`'s repository.
pub fn pinned(image: &str, image_id: &str) -> Option<String> {
    let digest = image_id.rsplit_once('@').map(|(_, d)| d)?;
    let hexpart = digest.strip_prefix("sha256:")?;
    (hexpart.len() == 64 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("{}@{digest}", strip_tag(image)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(json: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(json).unwrap()
    }

    fn sample() -> PodTemplateSpec {
        template(serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "web-files"}},
                    {"name": "tls", "secret": {"secretName": "web-tls"}},
                    {"name": "all", "projected": {"sources": [
                        {"configMap": {"name": "shared"}},
                        {"secret": {"name": "proj-secret", "optional": true}}
                    ]}}
                ],
                "initContainers": [{"name": "init", "image": "busybox",
                    "envFrom": [{"secretRef": {"name": "init-env"}}]}],
                "containers": [{
                    "name": "web", "image": "registry:5000/app:v1",
                    "envFrom": [{"configMapRef": {"name": "web-env"}}],
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "web-env", "key": "b"}}},
                        {"name": "C", "valueFrom": {"secretKeyRef": {"name": "web-db", "key": "pw"}}}
                    ]
                }]
            }
        }))
    }

    #[test]
    fn every_reference_is_found_once() {
        let refs = references(&sample());
        let names: Vec<String> = refs
            .iter()
            .map(|(k, n, o)| format!("{}/{n}{}", k.as_str(), if *o { "?" } else { "" }))
            .collect();
        assert_eq!(
            names,
            [
                "ConfigMap/shared",
                "ConfigMap/web-env",
                "ConfigMap/web-files",
                "Secret/init-env",
                "Secret/proj-secret?",
                "Secret/web-db",
                "Secret/web-tls",
            ]
        );
    }

    #[test]
    fn renaming_reaches_every_place_and_only_the_named_kind() {
        let mut t = sample();
        let mut names = BTreeMap::new();
        for (k, n, _) in references(&t) {
            names.insert((k, n.clone()), format!("{n}-copy"));
        }
        // A Secret of the same name as a ConfigMap is another object.
        names.insert((Kind::Secret, "web-env".into()), "wrong".into());
        rename(&mut t, &names);
        let after: Vec<String> = references(&t).into_iter().map(|(_, n, _)| n).collect();
        assert!(after.iter().all(|n| n.ends_with("-copy")), "{after:?}");
        assert_eq!(after.len(), 7);
        let json = serde_json::to_string(&t).unwrap();
        assert!(!json.contains("wrong"), "{json}");
        assert!(
            json.contains("\"value\":\"1\""),
            "plain env is kept: {json}"
        );
    }

    #[test]
    fn images_and_tags() {
        let mut t = sample();
        assert_eq!(image(&t, "web").as_deref(), Some("registry:5000/app:v1"));
        assert_eq!(image(&t, "nope"), None);
        assert!(set_image(&mut t, "web", "app:v2"));
        assert!(!set_image(&mut t, "nope", "app:v2"));
        assert_eq!(image(&t, "web").as_deref(), Some("app:v2"));
        assert_eq!(strip_tag("registry:5000/app:v1"), "registry:5000/app");
        assert_eq!(strip_tag("registry:5000/app"), "registry:5000/app");
        assert_eq!(strip_tag("app@sha256:abc"), "app");
        assert_eq!(
            default_image(None, "registry:5000/app:v1", "v2"),
            "registry:5000/app:v2"
        );
        assert_eq!(
            default_image(Some("other/app"), "x:1", "v2"),
            "other/app:v2"
        );
        let d = "a".repeat(64);
        assert_eq!(
            pinned(
                "reg/app:v2",
                &format!("docker-pullable://reg/app@sha256:{d}")
            ),
            Some(format!("reg/app@sha256:{d}"))
        );
        assert_eq!(pinned("reg/app:v2", "sha256:short"), None);
        assert_eq!(pinned("reg/app:v2", ""), None);
    }

    #[test]
    fn fingerprints_and_copy_names_follow_content() {
        let a = sample();
        let mut b = sample();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        set_image(&mut b, "web", "app:v2");
        assert_ne!(fingerprint(&a), fingerprint(&b));
        let one = BTreeMap::from([("k".to_string(), b"v1".to_vec())]);
        let two = BTreeMap::from([("k".to_string(), b"v2".to_vec())]);
        let d1 = content_digest(&[("data", one.clone())]);
        let d2 = content_digest(&[("data", two)]);
        assert_ne!(d1, d2);
        assert_eq!(d1, content_digest(&[("data", one)]));
        let n1 = copy_name("web-env", Kind::ConfigMap, &d1);
        assert!(n1.starts_with("web-env-rc-") && n1.len() == "web-env-rc-".len() + 10);
        assert_ne!(n1, copy_name("web-env", Kind::ConfigMap, &d2));
        assert_ne!(n1, copy_name("web-env", Kind::Secret, &d1));
        assert!(copy_name(&"x".repeat(300), Kind::Secret, &d1).len() <= 253);
    }
}
