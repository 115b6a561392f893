//! /proc readers for one process, and the words for an exit.

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot.
/// `None` when there is no such process or it is a zombie (exited, not yet reaped).
pub fn start_ticks(pid: i64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); a zombie has exited already.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// The value of `name` in the environment a process was started with
/// (/proc/PID/environ; readable for a process of the same user).
pub fn environ_var(pid: i64, name: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|b| *b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// CPU time used so far (user + system), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory in MiB (VmRSS).
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Clock ticks per second for /proc CPU and start times.
pub fn ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64)
}

/// When this host booted (`btime` in /proc/stat), in Unix milliseconds.
pub fn boot_time_ms() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(secs * 1000)
}

/// Describes an exit for people: `exit code 137 (killed for memory: OOM)`.
pub fn describe_exit(code: Option<i64>, oom: bool) -> String {
    let code = code.map_or("an unknown exit code".to_string(), |c| {
        format!("exit code {c}")
    });
    if oom {
        format!("{code} (killed for memory: OOM)")
    } else {
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_facts() {
        let me = std::process::id();
        assert!(start_ticks(i64::from(me)).is_some());
        assert!(cpu_ticks(me).is_some());
        assert!(rss_mb(me).is_some_and(|mb| mb > 0.0));
        assert!(ticks_per_sec() > 0);
        assert!(boot_time_ms().is_some_and(|b| b > 0));
    }

    #[test]
    fn no_such_process_has_none() {
        assert_eq!(start_ticks(-1), None);
        assert_eq!(cpu_ticks(u32::MAX), None);
        assert_eq!(rss_mb(u32::MAX), None);
    }

    #[test]
    fn exits_in_words() {
        assert_eq!(describe_exit(Some(1), false), "exit code 1");
        assert_eq!(describe_exit(None, false), "an unknown exit code");
        assert_eq!(
            describe_exit(Some(137), true),
            "exit code 137 (killed for memory: OOM)"
        );
    }
}
