//! Named failpoints: where a test makes ripcord die as `kill -9` would, to prove that
//! every persisted step can be the last one and the next watcher still finds a
//! consistent world (`tests/failpoints.rs`, the table in `docs/failpoints.md`).
//!
//! Debug builds only (the tests'): `RIPCORD_FAILPOINT=NAME` or `NAME@N` (the Nth time
//! it is reached) arms one; `RIPCORD_FAILPOINT_LOG=FILE` appends every name reached, in
//! order, so a test can list a scenario's points before killing at each. A release
//! build reads neither variable and every failpoint is an empty function.

/// Dies here with SIGKILL when this failpoint is armed (debug builds).
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    armed::hit(name);
    #[cfg(not(debug_assertions))]
    let _ = name;
}

#[cfg(debug_assertions)]
mod armed {
    use std::io::Write;
    use std::sync::Mutex;
    use std::sync::OnceLock;

    struct Armed {
        name: Option<(String, u32)>,
        log: Option<std::path::PathBuf>,
        seen: Mutex<std::collections::HashMap<String, u32>>,
    }

    fn armed() -> &'static Armed {
        static ARMED: OnceLock<Armed> = OnceLock::new();
        ARMED.get_or_init(|| Armed {
            name: std::env::var("RIPCORD_FAILPOINT")
                .ok()
                .map(|v| match v.split_once('@') {
                    Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
                    None => (v, 1),
                }),
            log: std::env::var_os("RIPCORD_FAILPOINT_LOG").map(Into::into),
            seen: Mutex::new(Default::default()),
        })
    }

    pub(super) fn hit(name: &str) {
        let a = armed();
        if let Some(log) = &a.log
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
        {
            let _ = writeln!(f, "{name}");
        }
        let Some((armed_name, nth)) = &a.name else {
            return;
        };
        if armed_name != name {
            return;
        }
        let count = {
            let mut seen = a.seen.lock().unwrap_or_else(|p| p.into_inner());
            let c = seen.entry(name.to_string()).or_default();
            *c += 1;
            *c
        };
        if count == *nth {
            eprintln!("ripcord: failpoint {name}@{nth} reached: dying as kill -9 would");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}
