//! Incident reports (placeholder until the real module lands).

use std::path::{Path, PathBuf};

use crate::ledger::{Event, Incident, Release};

pub struct ReportInput<'a> {
    pub incident: &'a Incident,
    pub events: &'a [Event],
    pub releases: &'a [Release],
}

pub fn write(dir: &Path, input: &ReportInput<'_>) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("incident-{}.md", input.incident.id));
    std::fs::write(
        &path,
        format!(
            "# Incident #{}\n\n{}\n",
            input.incident.id, input.incident.summary
        ),
    )?;
    let _ = (input.events, input.releases);
    Ok(path)
}
