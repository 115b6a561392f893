//! Renders a [`Report`]: text for people, JSON for scripts (a compatibility promise:
//! fields may be added, never renamed or removed), GitHub workflow-command annotations
//! for pull requests; and the exit code.
//!
//! Rendering never changes what was found; suppressed findings appear only in JSON.

use super::{FileReport, Finding, Report, Severity};

/// `path:line: severity rule: message` then `  fix: ...`, per finding, then one summary
/// line per migration with its phase and downgrade state.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    for f in &r.files {
        for finding in all_findings(f) {
            let path = finding.path.as_deref().unwrap_or(&f.path);
            out.push_str(&format!(
                "{path}:{}: {} {}: {}\n  fix: {}\n",
                finding.line,
                finding.severity.as_str(),
                finding.rule,
                finding.message,
                finding.fix
            ));
        }
        let phase = serde_json::to_value(f.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let state = serde_json::to_value(f.downgrade.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let why = f
            .phase_reason
            .as_ref()
            .map(|p| format!(" (line {}: {})", p.line, p.why))
            .unwrap_or_default();
        let rev = f
            .revision
            .as_ref()
            .map(|r| format!(" [{r}]"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{}{rev}: {phase}{why}; downgrade: {state}\n",
            f.path
        ));
    }
    let (errors, warnings) = counts(r);
    out.push_str(&format!(
        "{} migration(s), {errors} error(s), {warnings} warning(s)\n",
        r.files.len()
    ));
    out
}

/// The JSON document: `{"files": [...]}`.
pub fn render_json(r: &Report) -> serde_json::Value {
    serde_json::to_value(r).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
}

/// `::error file=PATH,line=N,title=RULE::message` per finding.
pub fn render_github(r: &Report) -> String {
    let mut out = String::new();
    for f in &r.files {
        for finding in all_findings(f) {
            let level = match finding.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Info => "notice",
            };
            let path = finding.path.as_deref().unwrap_or(&f.path);
            out.push_str(&format!(
                "::{level} file={},line={},title={}::{}\n",
                escape_property(path),
                finding.line,
                escape_property(finding.rule),
                escape_data(&format!("{} (fix: {})", finding.message, finding.fix))
            ));
        }
    }
    out
}

/// 1 when any error-severity finding remains (after settings and suppressions), else 0.
pub fn exit_code(r: &Report) -> i32 {
    if counts(r).0 > 0 { 1 } else { 0 }
}

fn all_findings(f: &FileReport) -> impl Iterator<Item = &Finding> {
    f.upgrade.findings.iter().chain(f.downgrade.findings.iter())
}

fn counts(r: &Report) -> (usize, usize) {
    let mut errors = 0;
    let mut warnings = 0;
    for f in &r.files {
        for finding in all_findings(f) {
            match finding.severity {
                Severity::Error => errors += 1,
                Severity::Warning => warnings += 1,
                Severity::Info => {}
            }
        }
    }
    (errors, warnings)
}

// GitHub's workflow-command escaping: data escapes %, CR and LF; properties also , and :.
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}
