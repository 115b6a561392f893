//! The incident chart as data, then as SVG. The data comes first so a test can hold it
//! against the incident's own records: the buckets start at the first bad request (and
//! restart at the traffic switch), so the first bad request opens a bucket instead of
//! falling somewhere inside a second of the wall clock; each bucket is drawn across the
//! span it covers, never as a point in its middle; the peak and the counts are those of
//! the impact table, from the same buckets; markers sit at their exact milliseconds.
//!
//! Pure: no IO, no clock.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use super::format::signed_secs;
use super::{Facts, impact_i64};
use crate::guard::requests::{self, Sample};

/// Bucket widths to choose from, in ms: round numbers a reader can take in.
const WIDTHS_MS: [i64; 14] = [
    10, 20, 50, 100, 200, 250, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000,
];
/// The fewest requests a bucket of the exposure should hold on average, so that its
/// ratio is not the noise of a handful of requests.
const MIN_PER_BUCKET: u64 = 30;
/// How far before the first bad request (or after the switch) a marker may sit and
/// still widen the chart to show it.
const MARKER_REACH_MS: i64 = 60_000;
/// A chart never holds more buckets than this before a marker stops widening it.
const REACH_BUCKETS: i64 = 400;
const CHART_SIZE: (u32, u32) = (900, 500);
const RATIO_COLOR: RGBColor = RGBColor(220, 30, 30);
const P95_COLOR: RGBColor = RGBColor(30, 80, 220);

/// What the chart is drawn from.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartData {
    /// The instant x = 0: the first bad request when recorded, else the opening.
    pub reference_ms: i64,
    pub reference_is_first_bad: bool,
    /// The x axis, in ms.
    pub from_ms: i64,
    pub to_ms: i64,
    /// The width of a bucket (the one that ends at the switch may be up to half a width
    /// shorter or longer).
    pub bucket_ms: i64,
    /// Oldest first, each `[start_ms, end_ms)`, consecutive.
    pub buckets: Vec<Bucket>,
    /// The window the impact table counts; `None` for an incident stored before the
    /// guard kept per-request records (its chart is per second of the wall clock).
    pub exposure: Option<Exposure>,
    /// Only those within the x axis.
    pub markers: Vec<Marker>,
}

impl ChartData {
    /// The highest 5xx ratio drawn inside the exposure window.
    pub fn peak_ratio(&self) -> Option<f64> {
        let e = self.exposure.as_ref()?;
        self.buckets
            .iter()
            .filter(|b| b.start_ms >= e.from_ms && b.end_ms <= e.to_ms)
            .filter_map(Bucket::ratio)
            .reduce(f64::max)
    }
}

/// One bucket of requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub start_ms: i64,
    pub end_ms: i64,
    pub requests: u64,
    pub errors: u64,
    pub p95_ms: Option<f64>,
}

impl Bucket {
    /// A bucket without requests has no ratio: it is a gap, not a zero.
    pub fn ratio(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// The requests users sent between the first bad request and the traffic switch (or
/// the last recorded request when there was no switch): the one set of counts the
/// summary, the impact table and the chart all show.
#[derive(Debug, Clone, PartialEq)]
pub struct Exposure {
    pub from_ms: i64,
    pub to_ms: i64,
    /// Whether `to_ms` is the traffic switch (otherwise the end of the records).
    pub to_switch: bool,
    pub requests: u64,
    pub errors: u64,
    pub bucket_ms: i64,
    pub peak_ratio: Option<f64>,
    pub peak_p95_ms: Option<f64>,
}

/// A moment drawn as a vertical line.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub label: &'static str,
    pub at_ms: i64,
}

/// Counts the records in `[from_ms, to_ms)`, picks the bucket width and finds the
/// peaks over buckets that start at `from_ms`. The guard stores the same figures in the
/// incident's impact, so `incident show` agrees with the report.
pub fn exposure(samples: &[Sample], from_ms: i64, to_ms: i64, to_switch: bool) -> Exposure {
    let to_ms = to_ms.max(from_ms);
    let (requests, errors) = count(samples, from_ms, to_ms);
    let bucket_ms = bucket_width(requests, to_ms - from_ms);
    let buckets = grid(samples, from_ms, to_ms, from_ms, to_ms, bucket_ms);
    Exposure {
        from_ms,
        to_ms,
        to_switch,
        requests,
        errors,
        bucket_ms,
        peak_ratio: buckets.iter().filter_map(Bucket::ratio).reduce(f64::max),
        peak_p95_ms: buckets.iter().filter_map(|b| b.p95_ms).reduce(f64::max),
    }
}

fn count(samples: &[Sample], from_ms: i64, to_ms: i64) -> (u64, u64) {
    let window = &samples[range(samples, from_ms, to_ms)];
    (
        window.len() as u64,
        window.iter().filter(|s| s.error).count() as u64,
    )
}

/// The indices of the samples (sorted by time) in `[from_ms, to_ms)`.
fn range(samples: &[Sample], from_ms: i64, to_ms: i64) -> std::ops::Range<usize> {
    let lo = samples.partition_point(|s| s.at_ms < from_ms);
    let hi = samples.partition_point(|s| s.at_ms < to_ms).max(lo);
    lo..hi
}

/// The narrowest round width that gives the exposure's buckets enough requests on
/// average (and no more than a hundred of them); a second when there is nothing to go by.
fn bucket_width(requests: u64, span_ms: i64) -> i64 {
    if requests == 0 || span_ms <= 0 {
        return 1_000;
    }
    WIDTHS_MS
        .into_iter()
        .find(|&w| requests * w as u64 >= MIN_PER_BUCKET * span_ms as u64 && w * 100 >= span_ms)
        .unwrap_or(WIDTHS_MS[WIDTHS_MS.len() - 1])
}

/// Buckets of `width` covering `[lo, hi]`, with edges at `first + k·width` up to `end`
/// and at `end + k·width` after it: the first bad request and the switch are both edges.
/// The bucket that ends at the switch is between half and one and a half widths long.
fn grid(samples: &[Sample], lo: i64, hi: i64, first: i64, end: i64, width: i64) -> Vec<Bucket> {
    let mut edges = Vec::new();
    let mut t = first;
    while t > lo {
        t -= width;
    }
    while t < first {
        edges.push(t);
        t += width;
    }
    t = first;
    while t < end {
        edges.push(t);
        t += width;
    }
    // A sliver before the switch joins the bucket before it: a ratio over a few
    // requests would be noise passed off as a peak.
    if edges.len() >= 2
        && edges
            .last()
            .is_some_and(|&l| l > first && end - l < width / 2)
    {
        edges.pop();
    }
    t = end;
    loop {
        edges.push(t);
        if t >= hi {
            break;
        }
        t += width;
    }
    edges
        .windows(2)
        .map(|e| {
            let within = &samples[range(samples, e[0], e[1])];
            let errors = within.iter().filter(|s| s.error).count() as u64;
            let mut latencies: Vec<u64> = within.iter().filter_map(|s| s.latency_us).collect();
            latencies.sort_unstable();
            Bucket {
                start_ms: e[0],
                end_ms: e[1],
                requests: within.len() as u64,
                errors,
                p95_ms: p95(&latencies).map(|us| us as f64 / 1000.0),
            }
        })
        .collect()
}

/// The nearest-rank 95th percentile of sorted values.
fn p95(sorted: &[u64]) -> Option<u64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (n * 95).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

/// The chart's data, or `None` when the incident has nothing to chart.
pub(super) fn build(f: &Facts<'_>) -> Option<ChartData> {
    let inc = f.inc;
    let mut markers: Vec<Marker> = [
        ("deploy", f.deploy_switched.map(|e| e.ts_ms)),
        ("trigger", impact_i64(inc, "detected_at_ms")),
        ("switch", inc.switched_at_ms),
        ("verified", inc.verified_at_ms),
    ]
    .into_iter()
    .filter_map(|(label, at)| Some(Marker { label, at_ms: at? }))
    .collect();
    let series = inc.series.as_ref()?;
    let (from_ms, to_ms, bucket_ms, buckets, exposure) = match requests::from_json(series) {
        Some(samples) => {
            let last = samples.last()?.at_ms;
            let e = exposure_of(f, &samples, last);
            let reach = (REACH_BUCKETS * e.bucket_ms).min(MARKER_REACH_MS);
            let (mut lo, mut hi) = (e.from_ms, e.to_ms);
            for m in &markers {
                if m.at_ms < lo && e.from_ms - m.at_ms <= reach {
                    lo = m.at_ms;
                }
                if m.at_ms > hi && m.at_ms - e.to_ms <= reach {
                    hi = m.at_ms;
                }
            }
            // Room either side for what came before and the recovery after.
            let pad = (5 * e.bucket_ms).max((hi - lo) / 10);
            let (lo, hi) = (lo - pad, hi + pad);
            let buckets = grid(&samples, lo, hi, e.from_ms, e.to_ms, e.bucket_ms);
            let (from, to) = (buckets.first()?.start_ms, buckets.last()?.end_ms);
            (from, to, e.bucket_ms, buckets, Some(e))
        }
        None => {
            let buckets = legacy_buckets(series)?;
            let (mut lo, mut hi) = (buckets.first()?.start_ms, buckets.last()?.end_ms);
            for m in &markers {
                if m.at_ms < lo && lo - m.at_ms <= MARKER_REACH_MS {
                    lo = m.at_ms - 500;
                } else if m.at_ms > hi && m.at_ms - hi <= MARKER_REACH_MS {
                    hi = m.at_ms + 500;
                }
            }
            (lo, hi, 1_000, buckets, None)
        }
    };
    // A marker outside the axis has no data beside it to explain.
    markers.retain(|m| (from_ms..=to_ms).contains(&m.at_ms));
    Some(ChartData {
        reference_ms: f.reference_ms,
        reference_is_first_bad: f.reference_is_first_bad,
        from_ms,
        to_ms,
        bucket_ms,
        buckets,
        exposure,
        markers,
    })
}

/// The exposure of an incident with records: from the first bad request (else the
/// trigger, else the opening) to the switch, or to just past the last record.
fn exposure_of(f: &Facts<'_>, samples: &[Sample], last_ms: i64) -> Exposure {
    let inc = f.inc;
    let from = f
        .first_bad_ms
        .or_else(|| impact_i64(inc, "detected_at_ms"))
        .unwrap_or(inc.opened_at_ms);
    match inc.switched_at_ms.filter(|&s| s >= from) {
        Some(switch) => exposure(samples, from, switch, true),
        None => exposure(samples, from, last_ms + 1, false),
    }
}

/// The per-second points of an incident recorded before the guard kept per-request
/// records: seconds of the wall clock, over every release.
fn legacy_buckets(series: &Value) -> Option<Vec<Bucket>> {
    let buckets: Vec<Bucket> = series
        .as_array()?
        .iter()
        .filter_map(|p| {
            let t_ms = p.get("t_ms")?.as_i64()?;
            Some(Bucket {
                start_ms: t_ms,
                end_ms: t_ms + 1_000,
                requests: p.get("requests").and_then(Value::as_u64).unwrap_or(0),
                errors: p.get("errors").and_then(Value::as_u64).unwrap_or(0),
                p95_ms: p.get("p95_ms").and_then(Value::as_f64),
            })
        })
        .collect();
    (!buckets.is_empty()).then_some(buckets)
}

/// Runs of consecutive buckets with a value, each bucket drawn flat across its span (in
/// seconds from the reference), so a missing bucket breaks the line instead of being
/// bridged by a segment that looks like data.
pub(super) fn steps(
    data: &ChartData,
    value: impl Fn(&Bucket) -> Option<f64>,
) -> Vec<Vec<(f64, f64)>> {
    let x = |ms: i64| (ms - data.reference_ms) as f64 / 1000.0;
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    let mut last_end = None;
    for b in &data.buckets {
        match value(b) {
            Some(v) => {
                if last_end != Some(b.start_ms) && !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                current.push((x(b.start_ms), v));
                current.push((x(b.end_ms), v));
                last_end = Some(b.end_ms);
            }
            None if !current.is_empty() => out.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn marker_color(label: &str) -> RGBColor {
    match label {
        "deploy" => RGBColor(90, 90, 90),
        "trigger" => RGBColor(230, 120, 0),
        "switch" => RGBColor(0, 140, 60),
        _ => RGBColor(130, 40, 170),
    }
}

/// Decimals for the tick labels of an axis spanning `span`: enough that neighbouring
/// ticks (about a tenth of the span apart) never print alike, and no more.
pub(super) fn decimals(span: f64) -> usize {
    match span {
        s if s >= 8.0 => 0,
        s if s >= 0.8 => 1,
        s if s >= 0.08 => 2,
        _ => 3,
    }
}

/// A bucket width as people say it: `200 ms`, `1 s`.
pub(super) fn width_words(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

pub(super) fn draw(
    svg: &mut String,
    f: &Facts<'_>,
    data: &ChartData,
) -> Result<(), Box<dyn std::error::Error>> {
    let inc = f.inc;
    let x = |ms: i64| (ms - data.reference_ms) as f64 / 1000.0;
    let (mut x0, mut x1) = (x(data.from_ms), x(data.to_ms));
    if x1 - x0 < 2.0 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    let max_ratio = data
        .buckets
        .iter()
        .filter_map(Bucket::ratio)
        .fold(0.0, f64::max)
        * 100.0;
    let max_p95 = data
        .buckets
        .iter()
        .filter_map(|b| b.p95_ms)
        .fold(0.0, f64::max);
    // The top half stays above the peaks so the legend and the marker labels do not
    // sit on the data; the floors keep a quiet series from being blown up to look
    // alarming.
    let y1 = (max_ratio * 2.2).max(5.0);
    let y2 = (max_p95 * 2.2).max(10.0);

    let width = width_words(data.bucket_ms);
    let since = match (data.reference_is_first_bad, &data.exposure) {
        (true, Some(_)) => {
            format!("seconds since the first bad request ({width} buckets, starting at it)")
        }
        (true, None) => "seconds since the first bad request".to_string(),
        (false, _) => "seconds since the incident opened".to_string(),
    };
    let (xd, y1d, y2d) = (decimals(x1 - x0), decimals(y1), decimals(y2));
    let x_fmt = move |v: &f64| format!("{v:.xd$}");
    let y1_fmt = move |v: &f64| format!("{v:.y1d$}");
    let y2_fmt = move |v: &f64| format!("{v:.y2d$}");
    {
        let root = SVGBackend::with_string(svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Incident #{}: {} — 5xx ratio and p95", inc.id, inc.service),
                ("sans-serif", 24),
            )
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .right_y_label_area_size(64)
            .build_cartesian_2d(x0..x1, 0.0..y1)?
            .set_secondary_coord(x0..x1, 0.0..y2);
        chart
            .configure_mesh()
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(BLACK.mix(0.03))
            .x_desc(since)
            .y_desc("5xx ratio (%)")
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y1_fmt)
            .draw()?;
        chart
            .configure_secondary_axes()
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .y_desc("p95 (ms)")
            .y_label_formatter(&y2_fmt)
            .draw()?;

        // The window the impact table counts, shaded, with its counts in the legend.
        if let Some(e) = &data.exposure {
            let to = if e.to_switch { "switch" } else { "last record" };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x(e.from_ms), 0.0), (x(e.to_ms), y1)],
                    RATIO_COLOR.mix(0.08).filled(),
                )))?
                .label(format!(
                    "first bad request → {to}: {} of {} failed",
                    e.errors, e.requests
                ))
                .legend(|(x, y)| {
                    Rectangle::new(
                        [(x, y - 5), (x + 20, y + 5)],
                        RATIO_COLOR.mix(0.15).filled(),
                    )
                });
        }
        for (i, seg) in steps(data, |b| b.ratio().map(|r| r * 100.0))
            .into_iter()
            .enumerate()
        {
            let anno = chart.draw_series(LineSeries::new(seg, RATIO_COLOR.stroke_width(2)))?;
            // One legend entry per series, however many gaps split it.
            if i == 0 {
                anno.label("5xx ratio (%)").legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], RATIO_COLOR.stroke_width(2))
                });
            }
        }
        for (i, seg) in steps(data, |b| b.p95_ms).into_iter().enumerate() {
            let anno =
                chart.draw_secondary_series(LineSeries::new(seg, P95_COLOR.stroke_width(2)))?;
            if i == 0 {
                anno.label("p95 (ms)").legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], P95_COLOR.stroke_width(2))
                });
            }
        }
        // The peak the impact table states, written where it is drawn.
        if let (Some(e), Some(peak)) = (&data.exposure, data.peak_ratio())
            && let Some(b) = data
                .buckets
                .iter()
                .find(|b| b.start_ms >= e.from_ms && b.end_ms <= e.to_ms && b.ratio() == Some(peak))
        {
            let at = (x(b.start_ms) + x(b.end_ms)) / 2.0;
            let style = ("sans-serif", 14)
                .into_font()
                .color(&RATIO_COLOR)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series(std::iter::once(
                EmptyElement::at((at, peak * 100.0))
                    + Text::new(format!("peak {:.1}%", peak * 100.0), (0, -4), style),
            ))?;
        }

        for (k, m) in data.markers.iter().enumerate() {
            let mx = x(m.at_ms);
            let color = marker_color(m.label);
            chart.draw_series(DashedLineSeries::new(
                [(mx, 0.0), (mx, y1)],
                6,
                4,
                color.stroke_width(1),
            ))?;
            // Markers often sit a moment apart, so their labels go at staggered heights,
            // and those near the right edge are written leftwards to stay inside the plot.
            let right_half = mx > x0 + (x1 - x0) * 0.6;
            let (anchor, dx) = if right_half {
                (HPos::Right, -4)
            } else {
                (HPos::Left, 4)
            };
            let style = ("sans-serif", 15)
                .into_font()
                .color(&color)
                .pos(Pos::new(anchor, VPos::Center));
            // Below the legend, above the peaks.
            let y = y1 * (0.76 - 0.06 * k as f64);
            chart.draw_series(std::iter::once(
                EmptyElement::at((mx, y))
                    + Text::new(
                        format!("{} {}", m.label, signed_secs(m.at_ms - data.reference_ms)),
                        (dx, 0),
                        style,
                    ),
            ))?;
        }

        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        root.present()?;
    }
    Ok(())
}
