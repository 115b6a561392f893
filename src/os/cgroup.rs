//! A kernel memory limit for one process release: a cgroup of its own, under the
//! watcher's, with `memory_limit_mb` as its limit. cgroup v2 where the memory controller
//! can be enabled for the watcher's children (`memory.max`, OOM kills counted in
//! `memory.events`), else cgroup v1's memory hierarchy (`memory.limit_in_bytes`, OOM kills
//! in `memory.oom_control`). Where neither is writable, there is no cgroup and
//! ripcord's RSS watchdog is the limit (the caller says so).
//!
//! The process is moved into its cgroup right after it starts (a child cannot be
//! started inside one without `unsafe` code here), so its first moments run under the
//! watcher's own limits.

use std::io;
use std::path::{Path, PathBuf};

/// Which cgroup hierarchy holds a release's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A release's own memory cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub dir: PathBuf,
    pub version: Version,
}

const V1_MEMORY: &str = "/sys/fs/cgroup/memory";

impl Cgroup {
    /// Creates (or reuses) the cgroup `name` under the watcher's own with a limit of
    /// `limit_mb`. The error says why no kernel limit is possible here.
    pub fn create(name: &str, limit_mb: u64) -> Result<Cgroup, String> {
        let bytes = limit_mb.saturating_mul(1024 * 1024);
        let v2 = match v2_parent() {
            Ok(parent) => {
                let dir = parent.join(name);
                match make(&dir).and_then(|_| write(&dir.join("memory.max"), &bytes.to_string())) {
                    Ok(()) => {
                        // No swap to hide in: the limit is the limit.
                        let _ = write(&dir.join("memory.swap.max"), "0");
                        return Ok(Cgroup {
                            dir,
                            version: Version::V2,
                        });
                    }
                    Err(e) => {
                        let _ = std::fs::remove_dir(&dir);
                        format!("cgroup v2 at {}: {e}", parent.display())
                    }
                }
            }
            Err(why) => why,
        };
        let v1 = match v1_parent() {
            Ok(parent) => {
                let dir = parent.join("ripcord").join(name);
                let limit = dir.join("memory.limit_in_bytes");
                match make(&dir).and_then(|_| write(&limit, &bytes.to_string())) {
                    Ok(()) => {
                        let _ = write(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string());
                        return Ok(Cgroup {
                            dir,
                            version: Version::V1,
                        });
                    }
                    Err(e) => {
                        let _ = std::fs::remove_dir(&dir);
                        format!("cgroup v1 memory at {}: {e}", parent.display())
                    }
                }
            }
            Err(why) => why,
        };
        Err(format!("{v2}; {v1}"))
    }

    /// The cgroup `pid` is in now, if it is one of ours (adopting after a restart).
    pub fn of(pid: u32) -> Option<Cgroup> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let (root, version) = match controllers {
                "" => (v2_mount()?, Version::V2),
                c if c.split(',').any(|c| c == "memory") => (PathBuf::from(V1_MEMORY), Version::V1),
                _ => continue,
            };
            let dir = root.join(path.trim_start_matches('/'));
            let limit = match version {
                Version::V2 => "memory.max",
                Version::V1 => "memory.limit_in_bytes",
            };
            let ours = dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ripcord-"));
            if ours && dir.join(limit).exists() {
                return Some(Cgroup { dir, version });
            }
        }
        None
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    /// How many processes the kernel killed in it for running out of memory.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// Removes the cgroup once nothing runs in it (quietly: a cgroup still in use stays).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.dir);
        // v1's `ripcord` parent too, once empty: a leftover child would keep the
        // watcher's own cgroup from being removed.
        if self.version == Version::V1
            && let Some(parent) = self.dir.parent()
        {
            let _ = std::fs::remove_dir(parent);
        }
    }

    pub fn describe(&self) -> String {
        let v = match self.version {
            Version::V2 => "v2",
            Version::V1 => "v1",
        };
        format!("the kernel (cgroup {v} {})", self.dir.display())
    }
}

fn make(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Where cgroup2 is mounted: `/sys/fs/cgroup` (unified) or `/sys/fs/cgroup/unified`
/// (hybrid).
fn v2_mount() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// The watcher's own v2 cgroup, with the memory controller enabled for its children.
fn v2_parent() -> Result<PathBuf, String> {
    let mount = v2_mount().ok_or("no cgroup2 mount")?;
    let available = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    if !available.split_whitespace().any(|c| c == "memory") {
        return Err(format!(
            "cgroup v2 at {} has no memory controller (it belongs to the v1 hierarchy here)",
            mount.display()
        ));
    }
    let own = own_path("").ok_or("no cgroup v2 line in /proc/self/cgroup")?;
    let parent = mount.join(own.trim_start_matches('/'));
    let control = parent.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "memory") {
        write(&control, "+memory").map_err(|e| {
            format!(
                "cannot enable the memory controller for the watcher's children ({e}); under systemd, Delegate=yes"
            )
        })?;
    }
    Ok(parent)
}

/// The watcher's own v1 memory cgroup.
fn v1_parent() -> Result<PathBuf, String> {
    let mount = PathBuf::from(V1_MEMORY);
    if !mount.join("memory.limit_in_bytes").exists() {
        return Err(format!("no cgroup v1 memory hierarchy at {V1_MEMORY}"));
    }
    let own = own_path("memory").ok_or("no memory line in /proc/self/cgroup")?;
    Ok(mount.join(own.trim_start_matches('/')))
}

/// This process's cgroup path for `controller` ("" for v2) from /proc/self/cgroup.
fn own_path(controller: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_limits_and_counts_oom_kills_where_the_host_allows_one() {
        // Where no cgroup is writable the reason must say why, and nothing else is
        // asserted (the integration test in tests/memory_limit.rs requires one in CI).
        let name = format!("ripcord-unit-{}", std::process::id());
        match Cgroup::create(&name, 32) {
            Ok(cg) => {
                assert!(cg.dir.ends_with(&name), "{cg:?}");
                assert_eq!(cg.oom_kills(), 0);
                let limit = match cg.version {
                    Version::V2 => std::fs::read_to_string(cg.dir.join("memory.max")).unwrap(),
                    Version::V1 => {
                        std::fs::read_to_string(cg.dir.join("memory.limit_in_bytes")).unwrap()
                    }
                };
                assert_eq!(limit.trim(), (32u64 << 20).to_string());
                cg.remove();
                assert!(!cg.dir.exists());
            }
            Err(why) => assert!(why.contains("cgroup"), "{why}"),
        }
    }
}
