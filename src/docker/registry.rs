//! Images from a registry: pulling a reference through the engine, asking the registry
//! whether it still has a digest (the engine's `GET /distribution/{name}/json`), and the
//! credentials both send.
//!
//! Credentials come from the Docker config first (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`: the `auths` entry `docker login` writes, base64 `user:pass`),
//! so a host where `docker pull` works needs nothing more; else from the service's
//! `registry_username` and the environment variable `registry_password_env` names. A
//! credential helper (`credsStore`, `credHelpers`) is not run: ripcord does not execute
//! programs named by a file it did not write.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;

use super::{DockerError, Engine};

/// The registry Docker uses for references without a host (`nginx`, `library/nginx`),
/// as `docker login` names it in `auths`.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// A login for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The registry they are for, as in `auths` (`127.0.0.1:5000`).
    pub server: String,
}

impl std::fmt::Debug for Credentials {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub(super) fn to_bollard(&self) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.clone()),
            serveraddress: Some(self.server.clone()),
            ..Default::default()
        }
    }
}

/// The registry host of an image reference (`127.0.0.1:5000/demo:v1` →
/// `127.0.0.1:5000`), or Docker Hub's name when the first component is not a host
/// (Docker's rule: it has a `.` or a `:`, or is `localhost`).
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => DOCKER_HUB.to_string(),
    }
}

/// The repository of a reference, without its tag or digest
/// (`127.0.0.1:5000/demo:v1` → `127.0.0.1:5000/demo`).
pub fn repository_of(reference: &str) -> &str {
    let name = reference.split_once('@').map_or(reference, |(n, _)| n);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(colon) => &name[..last_slash + colon],
        None => name,
    }
}

/// The repo digest of `reference` among an image's `RepoDigests` (an image pulled or
/// pushed under two names has one per repository): the one of the reference's own
/// repository, else none (a digest of another repository is not where we deployed from).
pub fn digest_for(reference: &str, repo_digests: &[String]) -> Option<String> {
    let repo = repository_of(reference);
    let bare = repo.strip_prefix("docker.io/").unwrap_or(repo);
    repo_digests
        .iter()
        .find(|d| {
            let r = d.split_once('@').map_or(d.as_str(), |(n, _)| n);
            r == repo || r == bare || r.strip_prefix("docker.io/library/") == Some(bare)
        })
        .cloned()
}

/// The Docker config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn docker_config_path() -> Option<PathBuf> {
    match std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir).join("config.json")),
        None => std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".docker").join("config.json")),
    }
}

/// The login `docker login REGISTRY` stored for `registry` in the Docker config, if
/// any. A missing or unreadable file is no login (the pull then says it needs one).
pub fn docker_config_credentials(registry: &str) -> Option<Credentials> {
    let text = std::fs::read_to_string(docker_config_path()?).ok()?;
    credentials_in(&text, registry)
}

/// The `auths` entry for `registry` in a Docker config's text. Keys may carry a scheme
/// and a path (`https://127.0.0.1:5000/v2/`), as older `docker login`s wrote them.
fn credentials_in(config_json: &str, registry: &str) -> Option<Credentials> {
    let v: serde_json::Value = serde_json::from_str(config_json).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let host = |k: &str| -> String {
        let k = k
            .strip_prefix("https://")
            .or_else(|| k.strip_prefix("http://"))
            .unwrap_or(k);
        k.split('/').next().unwrap_or(k).to_string()
    };
    let want = host(registry);
    let entry = auths
        .get(registry)
        .or_else(|| auths.iter().find(|(k, _)| host(k) == want).map(|(_, e)| e))?;
    let decoded = decode_base64(entry.get("auth")?.as_str()?)?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (username, password) = decoded.split_once(':')?;
    Some(Credentials {
        username: username.to_string(),
        password: password.to_string(),
        server: registry.to_string(),
    })
}

/// Standard base64 (padding optional), for the `auth` field of a Docker config.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.trim().bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

impl Engine {
    /// Pulls `reference` (a tag or `name@sha256:…`) through the engine, and waits for
    /// the pull to finish, at most `timeout`; `on_progress` hears how far it got every
    /// few seconds. A registry's refusal (unknown tag, no login) is an error that names
    /// the registry.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<&Credentials>,
        timeout: Duration,
        on_progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), DockerError> {
        let options = CreateImageOptions {
            from_image: Some(reference.to_string()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(
            Some(options),
            None,
            credentials.map(Credentials::to_bollard),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let mut layers = PullLayers::default();
        let mut told = std::time::Instant::now();
        loop {
            let item = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    return Err(DockerError::PullTimeout {
                        reference: reference.to_string(),
                        after: format!("{timeout:?}"),
                        progress: layers.summary(),
                    });
                }
            };
            match item {
                Ok(info) => {
                    if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                        return Err(pull_refused(reference, credentials, msg));
                    }
                    layers.note(
                        info.id.as_deref(),
                        info.status.as_deref(),
                        info.progress_detail
                            .as_ref()
                            .map(|p| (p.current.unwrap_or(0), p.total.unwrap_or(0))),
                    );
                    if told.elapsed() >= PULL_PROGRESS_EVERY {
                        told = std::time::Instant::now();
                        on_progress(format!("pulling {reference}: {}", layers.summary()));
                    }
                }
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(pull_refused(reference, credentials, error));
                }
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                    return Err(pull_refused(reference, credentials, message));
                }
                Err(e) => return Err((self.err("image pull", "image", reference))(e)),
            }
        }
        Ok(())
    }

    /// The digest the registry holds for `reference` (`sha256:…`), asked through the
    /// engine without pulling; an error says why the registry would not say.
    pub async fn registry_digest(
        &self,
        reference: &str,
        credentials: Option<&Credentials>,
    ) -> Result<String, DockerError> {
        let info = self
            .docker
            .inspect_registry_image(reference, credentials.map(Credentials::to_bollard))
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError { message, .. } => {
                    pull_refused(reference, credentials, message)
                }
                e => (self.err("registry inspect", "image", reference))(e),
            })?;
        info.descriptor
            .digest
            .ok_or_else(|| DockerError::Unexpected {
                op: "registry inspect",
                detail: format!("no digest for {reference}"),
            })
    }
}

fn pull_refused(reference: &str, credentials: Option<&Credentials>, msg: String) -> DockerError {
    let registry = registry_of(reference);
    let login = match credentials {
        Some(c) => format!("logged in as {}", c.username),
        None => "without a login".to_string(),
    };
    DockerError::Pull {
        reference: reference.to_string(),
        detail: format!("registry {registry} ({login}): {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_and_repository_of_a_reference() {
        assert_eq!(registry_of("127.0.0.1:5000/demo:v1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/demo"), "localhost");
        assert_eq!(registry_of("registry.local/shop"), "registry.local");
        assert_eq!(registry_of("library/nginx:1"), DOCKER_HUB);
        assert_eq!(registry_of("nginx"), DOCKER_HUB);
        assert_eq!(
            repository_of("127.0.0.1:5000/demo:v1"),
            "127.0.0.1:5000/demo"
        );
        assert_eq!(repository_of("127.0.0.1:5000/demo"), "127.0.0.1:5000/demo");
        assert_eq!(
            repository_of("127.0.0.1:5000/demo@sha256:abc"),
            "127.0.0.1:5000/demo"
        );
        assert_eq!(repository_of("nginx:1.25"), "nginx");
    }

    #[test]
    fn the_digest_of_the_references_own_repository() {
        let digests = vec![
            "other.example/demo@sha256:111".to_string(),
            "127.0.0.1:5000/demo@sha256:222".to_string(),
        ];
        assert_eq!(
            digest_for("127.0.0.1:5000/demo:v1", &digests).as_deref(),
            Some("127.0.0.1:5000/demo@sha256:222")
        );
        assert_eq!(digest_for("127.0.0.1:5000/other:v1", &digests), None);
        assert_eq!(
            digest_for("nginx:1", &["nginx@sha256:333".to_string()]).as_deref(),
            Some("nginx@sha256:333")
        );
    }

    #[test]
    fn docker_config_auths_are_decoded_and_matched_by_host() {
        // "user:pa:ss" — a password may hold a colon; the user may not.
        let cfg = r#"{"auths": {"https://127.0.0.1:5000/v2/": {"auth": "dXNlcjpwYTpzcw=="}}}"#;
        let c = credentials_in(cfg, "127.0.0.1:5000").unwrap();
        assert_eq!(c.username, "user");
        assert_eq!(c.password, "pa:ss");
        assert_eq!(c.server, "127.0.0.1:5000");
        assert!(credentials_in(cfg, "127.0.0.1:5001").is_none());
        assert!(credentials_in(r#"{"credsStore": "desktop"}"#, "127.0.0.1:5000").is_none());
        assert!(!format!("{c:?}").contains("pa:ss"));
    }

    #[test]
    fn base64_with_and_without_padding() {
        assert_eq!(decode_base64("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert_eq!(decode_base64("YQ").unwrap(), b"a");
        assert!(decode_base64("Y*Q").is_none());
    }
}

/// How often a pull says how far it got.
const PULL_PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The layers of a pull as the engine reports them: bytes downloaded of each, and
/// which are done.
#[derive(Default)]
struct PullLayers {
    /// Layer id → (downloaded, size, done).
    layers: BTreeMap<String, (i64, i64, bool)>,
}

impl PullLayers {
    fn note(&mut self, id: Option<&str>, status: Option<&str>, progress: Option<(i64, i64)>) {
        let (Some(id), Some(status)) = (id, status) else {
            return;
        };
        // The first line names the tag, not a layer.
        if status.starts_with("Pulling from") {
            return;
        }
        let layer = self.layers.entry(id.to_string()).or_default();
        match status {
            "Pull complete" | "Already exists" => layer.2 = true,
            "Downloading" => {
                if let Some((current, total)) = progress {
                    layer.0 = current;
                    layer.1 = total.max(layer.1);
                }
            }
            "Download complete" => layer.0 = layer.1,
            _ => {}
        }
    }

    fn summary(&self) -> String {
        let done = self.layers.values().filter(|l| l.2).count();
        let got: i64 = self.layers.values().map(|l| l.0).sum();
        let size: i64 = self.layers.values().map(|l| l.1).sum();
        let mb = |b: i64| b as f64 / 1_000_000.0;
        format!(
            "{done} of {} layers done, {:.1} of {:.1} MB downloaded",
            self.layers.len(),
            mb(got),
            mb(size)
        )
    }
}

#[cfg(test)]
mod pull_tests {
    use super::PullLayers;

    /// The engine's own sequence of pull messages for a two-layer image, one of them
    /// already present.
    #[test]
    fn pull_progress_counts_layers_and_bytes() {
        let mut p = PullLayers::default();
        p.note(Some("v1"), Some("Pulling from app"), None);
        p.note(Some("aaa"), Some("Already exists"), None);
        p.note(Some("bbb"), Some("Pulling fs layer"), None);
        p.note(
            Some("bbb"),
            Some("Downloading"),
            Some((1_500_000, 4_000_000)),
        );
        assert_eq!(p.summary(), "1 of 2 layers done, 1.5 of 4.0 MB downloaded");
        p.note(Some("bbb"), Some("Download complete"), None);
        p.note(Some("bbb"), Some("Extracting"), Some((10, 4_000_000)));
        p.note(Some("bbb"), Some("Pull complete"), None);
        assert_eq!(p.summary(), "2 of 2 layers done, 4.0 of 4.0 MB downloaded");
    }
}
