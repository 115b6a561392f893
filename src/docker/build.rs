//! `FROM scratch` image builds through the engine's build API, with the build
//! context made in memory as an uncompressed tar archive.

use std::path::Path;

use bollard::query_parameters::BuildImageOptions;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{DockerError, Engine};

const DOCKERFILE: &str = "FROM scratch\nCOPY app /app\nENTRYPOINT [\"/app\"]\n";

/// An image's `HEALTHCHECK`, in exec form (a `FROM scratch` image has no shell): the
/// whole command, not run through the `ENTRYPOINT` (so `["/app", "--probe", "/health"]`
/// for the demo app), and its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub command: Vec<String>,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    pub retries: u32,
}

/// The Dockerfile with a default `CMD` (arguments to `/app`), labels and an optional
/// health check: two builds of one binary with different ones are different images
/// (different ids).
fn dockerfile(
    cmd: &[String],
    labels: &std::collections::BTreeMap<String, String>,
    health: Option<&Healthcheck>,
) -> String {
    let mut d = DOCKERFILE.to_string();
    if !cmd.is_empty() {
        let json = serde_json::to_string(cmd).unwrap_or_else(|_| "[]".to_string());
        d.push_str(&format!("CMD {json}\n"));
    }
    if let Some(h) = health {
        let json = serde_json::to_string(&h.command).unwrap_or_else(|_| "[]".to_string());
        d.push_str(&format!(
            "HEALTHCHECK --interval={}ms --timeout={}ms --retries={} CMD {json}\n",
            h.interval.as_millis(),
            h.timeout.as_millis(),
            h.retries
        ));
    }
    for (k, v) in labels {
        let k = serde_json::to_string(k).unwrap_or_default();
        let v = serde_json::to_string(v).unwrap_or_default();
        d.push_str(&format!("LABEL {k}={v}\n"));
    }
    d
}

pub(super) async fn build_scratch_image(
    engine: &Engine,
    tag: &str,
    binary: &Path,
) -> Result<String, DockerError> {
    build_scratch_image_with(engine, tag, binary, &[], &Default::default(), None).await
}

pub(super) async fn build_scratch_image_with(
    engine: &Engine,
    tag: &str,
    binary: &Path,
    cmd: &[String],
    labels: &std::collections::BTreeMap<String, String>,
    health: Option<&Healthcheck>,
) -> Result<String, DockerError> {
    let app = tokio::fs::read(binary)
        .await
        .map_err(|source| DockerError::Io {
            path: binary.display().to_string(),
            source,
        })?;
    let mut tar = TarWriter::default();
    tar.file(
        "Dockerfile",
        dockerfile(cmd, labels, health).as_bytes(),
        0o644,
    )?;
    tar.file("app", &app, 0o755)?;
    let context = Bytes::from(tar.finish());

    let options = BuildImageOptions {
        dockerfile: "Dockerfile".to_string(),
        t: Some(tag.to_string()),
        rm: true,
        forcerm: true,
        // No layer shared with another build of the same binary: removing one image
        // (`docker image rm -f` prunes its untagged parents) must never pull a layer
        // from under a build running beside it.
        nocache: true,
        ..Default::default()
    };
    let mut stream = engine
        .docker
        .build_image(options, None, Some(bollard::body_full(context)));
    let mut image_id: Option<String> = None;
    let mut log = String::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| match e {
            bollard::errors::Error::DockerStreamError { error } => DockerError::Build(error),
            e => engine.err("image build", "build context", tag)(e),
        })?;
        if let Some(detail) = info.error_detail {
            let msg = detail.message.unwrap_or_default();
            return Err(DockerError::Build(format!("{msg}\n{log}")));
        }
        if let Some(line) = info.stream {
            log.push_str(&line);
        }
        if let Some(id) = info.aux.and_then(|a| a.id) {
            image_id = Some(id);
        }
    }
    match image_id {
        Some(id) => Ok(id),
        // Older engines do not send the aux ID message; ask for the tag instead.
        None => Ok(engine.resolve_image(tag).await?.id),
    }
}

/// Just enough of a ustar writer for a flat build context.
#[derive(Default)]
struct TarWriter {
    buf: Vec<u8>,
}

impl TarWriter {
    fn file(&mut self, name: &str, data: &[u8], mode: u32) -> Result<(), DockerError> {
        if name.len() > 100 || name.is_empty() {
            return Err(DockerError::InvalidSpec(format!("tar entry name {name:?}")));
        }
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0); // uid
        octal(&mut h[116..124], 0); // gid
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 0); // mtime: reproducible contexts
        h[156] = b'0'; // regular file
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        // Checksum is computed with its own field as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let cks = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(cks.as_bytes());
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

/// Writes `value` as zero-padded octal filling all but the last byte (NUL).
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    let bytes = s.as_bytes();
    let start = bytes.len().saturating_sub(width);
    field[..width].copy_from_slice(&bytes[start..]);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthcheck_is_exec_form() {
        let h = Healthcheck {
            command: vec!["/app".into(), "--probe".into(), "/health".into()],
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_millis(800),
            retries: 3,
        };
        let d = dockerfile(
            &["--version".into(), "v1".into()],
            &Default::default(),
            Some(&h),
        );
        assert!(
            d.ends_with(
                "CMD [\"--version\",\"v1\"]\nHEALTHCHECK --interval=1000ms --timeout=800ms --retries=3 CMD [\"/app\",\"--probe\",\"/health\"]\n"
            ),
            "{d}"
        );
        assert!(!dockerfile(&[], &Default::default(), None).contains("HEALTHCHECK"));
    }

    #[test]
    fn tar_layout() {
        let mut t = TarWriter::default();
        assert!(t.file("app", b"hello", 0o755).is_ok());
        let out = t.finish();
        assert_eq!(out.len(), 512 + 512 + 1024);
        assert_eq!(&out[..3], b"app");
        assert_eq!(&out[100..107], b"0000755");
        assert_eq!(&out[124..135], b"00000000005");
        assert_eq!(&out[512..517], b"hello");
    }
}
