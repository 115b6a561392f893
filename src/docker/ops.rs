//! Container operations the image-replace flow needs beyond run/stop-and-remove: stop
//! without removing (the old container is kept until the new one is proven), start
//! again, and the tail of a container's log for error messages.

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::{LogsOptions, StartContainerOptions, StopContainerOptions};
use futures_util::StreamExt;

use super::{DockerError, Engine};

impl Engine {
    /// Stops a container (SIGTERM, SIGKILL after `timeout`) and keeps it.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<(), DockerError> {
        let secs = timeout.as_millis().div_ceil(1000);
        let docker = self
            .docker
            .clone()
            .with_timeout(Duration::from_secs(secs as u64 + 60));
        match docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(i32::try_from(secs).unwrap_or(i32::MAX)),
                    signal: None,
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // 304: it was not running.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.err("container stop", "container", id)(e)),
        }
    }

    /// Starts an existing (stopped) container again.
    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        match self
            .docker
            .start_container(id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.err("container start", "container", id)(e)),
        }
    }

    /// The last `n` lines a container wrote (stdout and stderr).
    pub async fn logs_tail(&self, id: &str, n: usize) -> Result<Vec<String>, DockerError> {
        let mut stream = self.docker.logs(
            id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: n.to_string(),
                ..Default::default()
            }),
        );
        let mut text = String::new();
        while let Some(item) = stream.next().await {
            let chunk = item.map_err(self.err("container logs", "container", id))?;
            match chunk {
                LogOutput::StdOut { message }
                | LogOutput::StdErr { message }
                | LogOutput::Console { message } => {
                    text.push_str(&String::from_utf8_lossy(&message));
                }
                LogOutput::StdIn { .. } => {}
            }
        }
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let skip = lines.len().saturating_sub(n);
        Ok(lines.into_iter().skip(skip).collect())
    }
}
