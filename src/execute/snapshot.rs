//! The service's config as the ledger keeps it with each release, secrets taken out.

/// The service's config as the ledger keeps it with a release, with what may be secret
/// taken out, since `releases --json` prints the snapshot: `env` values and webhook URLs
/// become a digest (a change still shows, the value never does), or `<redacted>` for a
/// variable whose name `redact` calls secret, and any other URL
/// loses its user, password and query.
pub(super) fn redacted_snapshot(cfg: &crate::config::ServiceConfig) -> serde_json::Value {
    let mut snapshot = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(env) = snapshot.get_mut("env").and_then(|e| e.as_object_mut()) {
        for (name, value) in env.iter_mut() {
            // A secret's digest could be brute-forced when the secret is short: none.
            *value = if crate::config::redact::is_secret(name) {
                serde_json::Value::String(crate::config::redact::REDACTED.to_string())
            } else {
                digest_of(value)
            };
        }
    }
    if let Some(hooks) = snapshot.get_mut("webhooks").and_then(|e| e.as_array_mut()) {
        for value in hooks.iter_mut() {
            *value = digest_of(value);
        }
    }
    strip_url_secrets(&mut snapshot);
    snapshot
}

fn digest_of(value: &serde_json::Value) -> serde_json::Value {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(value.as_str().unwrap_or_default().as_bytes());
    let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    serde_json::Value::String(format!("<redacted sha256:{short}>"))
}

/// Every `http(s)://user:password@host/path?query` in the value loses its user,
/// password and query.
fn strip_url_secrets(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.starts_with("http://") || s.starts_with("https://") => {
            let (scheme, rest) = s.split_once("://").unwrap_or_default();
            let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let user = if authority.contains('@') {
                "<redacted>@"
            } else {
                ""
            };
            let path = tail
                .split_once('?')
                .map_or(tail.to_string(), |(p, _)| format!("{p}?<redacted>"));
            *s = format!("{scheme}://{user}{host}{path}");
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_url_secrets),
        serde_json::Value::Object(map) => map.values_mut().for_each(strip_url_secrets),
        _ => {}
    }
}

/// Copies a process release's `config_files` into `<parent>/<prefix>-<digest>/`, one file
/// per name, owner-only, the directory named by the files' names and contents (so an
/// unchanged set is shared and a changed one never overwrites an older release's). The
/// directory appears whole or not at all: it is filled under a temporary name, then
/// renamed. Errors name the file that could not be read.
pub(super) fn snapshot_files(
    files: &[std::path::PathBuf],
    parent: &std::path::Path,
    prefix: &str,
) -> Result<std::path::PathBuf, String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mut contents = Vec::new();
    let mut hash = Sha256::new();
    for path in files {
        let name = path
            .file_name()
            .ok_or_else(|| format!("config file {} has no file name", path.display()))?;
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        hash.update(name.as_encoded_bytes());
        hash.update([0]);
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
        contents.push((name.to_os_string(), bytes));
    }
    let digest: String = hash
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let dest = parent.join(format!("{prefix}-{digest}"));
    if dest.is_dir() {
        return Ok(dest);
    }
    let io = |what: &str, p: &std::path::Path, e: std::io::Error| {
        format!("cannot {what} {}: {e}", p.display())
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|e| io("create", parent, e))?;
    let tmp = parent.join(format!(".{prefix}-{digest}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|e| io("create", &tmp, e))?;
    let filled = (|| {
        for (name, bytes) in &contents {
            let p = tmp.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| io("write", &p, e))?;
            std::io::Write::write_all(&mut f, bytes).map_err(|e| io("write", &p, e))?;
            f.sync_all().map_err(|e| io("write", &p, e))?;
        }
        std::fs::rename(&tmp, &dest).map_err(|e| io("rename into place", &dest, e))
    })();
    if filled.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    filled.map(|()| dest)
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_never_reach_the_ledger_snapshot() {
        let cfg = crate::config::Config::parse(
            "[service.web]\nlisten = \"127.0.0.1:18080\"\nslots = { blue = 18081, green = 18082 }\n\
             command = [\"app\", \"{port}\"]\n\
             [[service.web.verify]]\nname = \"api\"\nhttp = \"http://user:s3cret-pw@127.0.0.1:18080/api?token=s3cret-q\"\n\
             [service.web.notify]\nwebhooks = [\"http://127.0.0.1:9000/hooks/T0/s3cret-hook\"]\n\
             [service.web.env]\nAPI_TOKEN = \"s3cret-value\"\nRUST_LOG = \"info\"\n",
            std::path::Path::new("ripcord.toml"),
        )
        .unwrap();
        let snap = super::redacted_snapshot(&cfg.services["web"]);
        let text = snap.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("http://<redacted>@127.0.0.1:18080/api?<redacted>"),
            "{text}"
        );
        // A secret's name shows no digest at all; any other value a digest, so a change
        // still shows.
        assert_eq!(snap["env"]["API_TOKEN"], "<redacted>", "{text}");
        assert!(
            snap["env"]["RUST_LOG"]
                .as_str()
                .unwrap()
                .starts_with("<redacted sha256:"),
            "{text}"
        );
    }
}
