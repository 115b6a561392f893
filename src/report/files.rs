//! The report on disk: the only code in `report/` that does IO.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ReportInput, chart_svg, markdown};

/// Writes `incident-<id>.md` and `incident-<id>.svg` into `dir` (created if missing),
/// each atomically (a temporary file, then a rename), and returns the Markdown path.
/// The SVG is only written when the incident has a series to chart.
pub fn write(dir: &Path, input: &ReportInput<'_>) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let id = input.incident.id;
    let svg_name = format!("incident-{id}.svg");
    let svg = chart_svg(input);
    // The chart goes first so the Markdown never links to a file that is not there yet.
    if let Some(svg) = &svg {
        write_atomic(dir, &svg_name, svg.as_bytes())?;
    }
    let md = markdown(input, svg.as_ref().map(|_| svg_name.as_str()));
    write_atomic(dir, &format!("incident-{id}.md"), md.as_bytes())
}

/// Writes `name` in `dir` through a temporary file in the same directory, so a reader
/// sees either the old file or the whole new one, never a torn one. Every file ripcord
/// generates for people (reports, the runbook, CI workflows) is written through here.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    // Two reports written at once in one process must not share a temporary file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let path = dir.join(name);
    // The report quotes events and errors, scrubbed when written; a value learned since
    // (a snapshot read after they were) is taken out here too.
    let scrubbed = std::str::from_utf8(bytes).map(crate::config::redact::scrub);
    let bytes = match &scrubbed {
        Ok(text) => text.as_bytes(),
        Err(_) => bytes,
    };
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // The rename is only durable once the directory itself is synced.
    fs::File::open(dir)?.sync_all()?;
    Ok(path)
}
