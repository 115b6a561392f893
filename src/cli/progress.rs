//! A spinner for steps that take more than a second (a deploy waiting on the watcher,
//! a backup, a restore, waiting for the guard's verdict). It draws only when stderr is
//! a terminal and never under `--json`: pipes, scripts and tests see plain lines.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner on stderr, or nothing; progress lines go above it (or to stderr as they
/// are when it does not draw, and nowhere under `--json`).
pub(crate) struct Spinner {
    bar: Option<ProgressBar>,
    json: bool,
}

impl Spinner {
    pub(crate) fn start(message: impl Into<String>, json: bool) -> Spinner {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.set_message(message.into());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Spinner { bar, json }
    }

    pub(crate) fn set_message(&self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
    }

    /// A line for people: kept above the spinner.
    pub(crate) fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if !self.json => eprintln!("{text}"),
            None => {}
        }
    }

    pub(crate) fn finish(self) {}
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
