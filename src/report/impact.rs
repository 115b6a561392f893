//! The report's impact table: one set of request counts (the chart's counted window),
//! and the chart's image link.

use std::fmt::Write as _;

use super::format::{count, duration, symptom};
use super::{Facts, chart, impact_f64, impact_i64, impact_u64};
use crate::clock::format_utc;

pub(super) fn impact(out: &mut String, f: &Facts<'_>, chart_file: Option<&str>) {
    let inc = f.inc;
    let unknown = || "unknown".to_string();
    let ms = |v: Option<i64>| v.map_or_else(unknown, |v| format!("{v} ms"));
    let exposure = format!(
        "Time users saw {} (first bad request → traffic switched)",
        symptom(&inc.rule)
    );
    let mut rows = vec![(
        exposure.clone(),
        f.errors_seen_ms().map_or_else(unknown, duration),
    )];
    match f.exposure() {
        // One set of counts: the requests of the window the chart shades, in the
        // buckets it draws.
        Some(e) => {
            let to = if e.to_switch {
                "traffic switched"
            } else {
                f.exposure_end_words(e)
            };
            let window = format!(
                "{} → {to}",
                f.exposure_start_words().trim_start_matches("the ")
            );
            let width = chart::width_words(e.bucket_ms);
            let pct = |r: Option<f64>| r.map_or_else(unknown, |r| format!("{:.1}%", r * 100.0));
            rows.extend([
                (format!("Requests ({window})"), count(e.requests)),
                (format!("Failed requests ({window})"), count(e.errors)),
                (
                    format!("5xx ratio ({window})"),
                    pct((e.requests > 0).then(|| e.errors as f64 / e.requests as f64)),
                ),
                (
                    format!("Peak 5xx ratio ({width} buckets, {window})"),
                    pct(e.peak_ratio),
                ),
                (
                    format!("Peak p95 latency ({width} buckets, {window})"),
                    e.peak_p95_ms.map_or_else(unknown, |p| format!("{p:.1} ms")),
                ),
            ]);
        }
        None => rows.extend([
            (
                "Failed requests".to_string(),
                impact_u64(inc, "failed_requests").map_or_else(unknown, count),
            ),
            (
                "Total requests".to_string(),
                impact_u64(inc, "total_requests").map_or_else(unknown, count),
            ),
            (
                "Peak 5xx ratio".to_string(),
                impact_f64(inc, "peak_5xx_ratio")
                    .map_or_else(unknown, |r| format!("{:.1}%", r * 100.0)),
            ),
            (
                "Peak p95 latency".to_string(),
                impact_f64(inc, "peak_p95_ms").map_or_else(unknown, |p| format!("{p:.1} ms")),
            ),
        ]),
    }
    rows.extend([
        (
            "First bad request → trigger".to_string(),
            ms(impact_i64(inc, "first_bad_to_trigger_ms")),
        ),
        (
            "First bad request → traffic switched".to_string(),
            ms(f.first_bad_to_switch_ms()),
        ),
        (
            "First bad request → verified".to_string(),
            ms(f.first_bad_to_verified_ms()),
        ),
    ]);
    let _ = writeln!(out, "## Impact\n");
    let _ = writeln!(out, "| Measure | Value |");
    let _ = writeln!(out, "| --- | ---: |");
    for (what, value) in rows {
        let _ = writeln!(out, "| {what} | {value} |");
    }
    out.push('\n');
    // The guard measures from detection when it never saw a bad request; saying so keeps
    // a reader from taking those durations for the whole exposure.
    if inc.impact.is_some() && f.first_bad_ms.is_none() {
        let _ = writeln!(
            out,
            "The first bad request was not recorded, so these durations are measured from \
             detection (the trigger), and users may have seen errors for longer.\n"
        );
    }
    if let (Some(e), Some(data)) = (f.exposure(), f.chart.as_ref()) {
        let _ = writeln!(
            out,
            "Counted from the requests the guard recorded, every response from {} ({}) up to \
             the {} ({}). The chart draws the same records in {} buckets that start at {}, \
             and shades this window.\n",
            f.exposure_start_words(),
            format_utc(e.from_ms),
            f.exposure_end_words(e),
            format_utc(e.to_ms),
            chart::width_words(data.bucket_ms),
            f.exposure_start_words(),
        );
    } else if f.chart.is_some() {
        let _ = writeln!(
            out,
            "The counts are the bad release's since it began serving; the chart is per \
             second of the wall clock, over every release (recorded before the guard kept \
             each request).\n"
        );
    }
    if let Some(file) = chart_file {
        let _ = writeln!(out, "![5xx ratio and p95]({file})\n");
    }
}
