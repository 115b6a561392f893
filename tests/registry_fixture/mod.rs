//! A Distribution server (Debian's `docker-registry`) per test, on a loopback port with
//! its storage in a temporary directory, optionally behind basic auth (htpasswd,
//! bcrypt). Killed on drop. Fails, never skips, without `docker-registry` or
//! `htpasswd`.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{assert_ok, free_port, get};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A Distribution server on `127.0.0.1:port`, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// `login`: serve only to this user (htpasswd, bcrypt as Distribution wants).
    pub fn start(login: Option<(&str, &str)>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "these tests need a Distribution server at {REGISTRY_BIN}: apt-get install docker-registry \
             (scripts/test installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let auth = match login {
            Some((user, pass)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()
                    .unwrap_or_else(|e| {
                        panic!("these tests need htpasswd: apt-get install apache2-utils ({e})")
                    });
                assert_ok(&out, "htpasswd");
                std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: ripcord-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut r = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _) = get(&format!("http://127.0.0.1:{port}/v2/"));
            if status == 200 || status == 401 {
                return r;
            }
            if let Ok(Some(s)) = r.child.try_wait() {
                panic!("the registry exited ({s}): {}", r.log());
            }
            assert!(
                Instant::now() < deadline,
                "the registry never answered on 127.0.0.1:{port}: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
