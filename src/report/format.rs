//! How the report writes values: rules and rollbacks in words, durations, offsets,
//! counts and table cells.

/// A rule's name as a person would say it.
pub(super) fn rule_words(rule: &str) -> String {
    match rule {
        "error_rate" => "user-facing errors".to_string(),
        "latency_p95" => "slow responses".to_string(),
        "health" => "failed health checks".to_string(),
        "crash" => "a crash".to_string(),
        "oom_kills" => "OOM kills".to_string(),
        "cpu" => "high CPU".to_string(),
        "data_corruption" => "data corruption".to_string(),
        "decision" => "a guard decision".to_string(),
        other => other.replace('_', " "),
    }
}

/// What users went through under a rule, for "users saw ...": errors unless the rule
/// is about slowness or load.
pub(super) fn symptom(rule: &str) -> &'static str {
    match rule {
        "latency_p95" => "slow responses",
        "cpu" => "a degraded service",
        _ => "errors",
    }
}

pub(super) fn rollback_words(kind: Option<&str>) -> &'static str {
    match kind {
        Some("automatic") => "an automatic rollback (health checks failed)",
        Some("immediate") => "an immediate rollback (users saw errors)",
        Some("cannot_wait") => "a rollback that could not wait",
        Some("standard") => "a standard rollback",
        _ => "a rollback",
    }
}

/// A table cell: pipes would end the cell and newlines the row.
pub(super) fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "<br>")
}

/// `+0.213 s`, `-12.000 s`: milliseconds as signed seconds, exact to the millisecond.
pub(super) fn signed_secs(ms: i64) -> String {
    let sign = if ms < 0 { '-' } else { '+' };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03} s", abs / 1000, abs % 1000)
}

/// `1.266 s`, `2 min 5.300 s`.
pub(super) fn duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    let (min, rest) = (abs / 60_000, abs % 60_000);
    if min == 0 {
        format!("{sign}{}.{:03} s", rest / 1000, rest % 1000)
    } else {
        format!("{sign}{min} min {}.{:03} s", rest / 1000, rest % 1000)
    }
}

/// `9,412`: thousands separated, so big counts read at a glance.
pub(super) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
