//! Every duration key: units or whole numbers under either name, its bounds, and the
//! messages for what is not a duration.

use std::path::Path;
use std::time::Duration;

use super::{GOOD, errors};
use crate::config::{Config, HealthRule, ServiceConfig};

/// A duration key, where it goes, and its lower bound: the value just below it and the
/// bound itself.
struct DurationKey {
    /// What goes between [`GOOD`] and the key: the key's table and what it needs.
    table: &'static str,
    path: &'static str,
    key: &'static str,
    old: &'static str,
    below_min: &'static str,
    min: &'static str,
    /// How the minimum is shown in the message.
    shown_min: &'static str,
    /// What a bare 90 is.
    whole: Duration,
    get: fn(&ServiceConfig) -> Duration,
}

const DURATION_KEYS: &[DurationKey] = {
    const S: Duration = Duration::from_secs(90);
    const MS: Duration = Duration::from_millis(90);
    fn health(s: &ServiceConfig) -> &HealthRule {
        s.triggers.health.as_ref().unwrap()
    }
    &[
        DurationKey {
            table: "",
            path: "service.web",
            key: "start_timeout",
            old: "start_timeout_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.start_timeout,
        },
        DurationKey {
            table: "",
            path: "service.web",
            key: "bake",
            old: "bake_secs",
            below_min: "-1",
            min: "\"0s\"",
            shown_min: "0s",
            whole: S,
            get: |s| s.bake,
        },
        DurationKey {
            table: "",
            path: "service.web",
            key: "stop_timeout",
            old: "stop_timeout_secs",
            below_min: "0",
            min: "1",
            shown_min: "1s",
            whole: S,
            get: |s| s.stop_timeout,
        },
        DurationKey {
            table: "",
            path: "service.web",
            key: "verify_deadline",
            old: "verify_deadline_secs",
            below_min: "\"999ms\"",
            min: "\"1000ms\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.verify_deadline,
        },
        DurationKey {
            table: "",
            path: "service.web",
            key: "investigate",
            old: "investigate_secs",
            below_min: "-1",
            min: "0",
            shown_min: "0s",
            whole: S,
            get: |s| s.investigate,
        },
        DurationKey {
            table: "[[service.web.verify]]\ncommand = [\"true\"]\n",
            path: "service.web.verify[0]",
            key: "timeout",
            old: "timeout_secs",
            below_min: "\"99ms\"",
            min: "\"100ms\"",
            shown_min: "100ms",
            whole: S,
            get: |s| s.verify[0].timeout,
        },
        DurationKey {
            table: "[service.web.integrity]\ncommand = [\"true\"]\n",
            path: "service.web.integrity",
            key: "interval",
            old: "interval_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.integrity.as_ref().unwrap().interval,
        },
        DurationKey {
            table: "[service.web.prometheus]\nurl = \"http://127.0.0.1:9090\"\n\
                    [[service.web.prometheus.rules]]\nquery = \"up\"\nbelow = 1\n",
            path: "service.web.prometheus.rules[0]",
            key: "interval",
            old: "interval_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.prometheus.as_ref().unwrap().rules[0].interval,
        },
        DurationKey {
            table: "[service.web.triggers.error_rate]\n",
            path: "service.web.triggers.error_rate",
            key: "window",
            old: "window_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.triggers.error_rate.as_ref().unwrap().window,
        },
        DurationKey {
            table: "[service.web.triggers.latency_p95]\n",
            path: "service.web.triggers.latency_p95",
            key: "window",
            old: "window_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.triggers.latency_p95.as_ref().unwrap().window,
        },
        DurationKey {
            table: "[service.web.triggers.latency_p95]\n",
            path: "service.web.triggers.latency_p95",
            key: "floor",
            old: "floor_ms",
            below_min: "-1",
            min: "\"0ms\"",
            shown_min: "0s",
            whole: MS,
            get: |s| s.triggers.latency_p95.as_ref().unwrap().floor,
        },
        DurationKey {
            table: "[service.web.triggers.cpu]\n",
            path: "service.web.triggers.cpu",
            key: "for",
            old: "for_secs",
            below_min: "\"999ms\"",
            min: "\"1s\"",
            shown_min: "1s",
            whole: S,
            get: |s| s.triggers.cpu.as_ref().unwrap().for_,
        },
        DurationKey {
            table: "[service.web.triggers.health]\n",
            path: "service.web.triggers.health",
            key: "interval",
            old: "interval_secs",
            below_min: "\"99ms\"",
            min: "\"100ms\"",
            shown_min: "100ms",
            whole: S,
            get: |s| health(s).interval,
        },
        DurationKey {
            table: "[service.web.triggers.health]\n",
            path: "service.web.triggers.health",
            key: "timeout",
            old: "timeout_secs",
            below_min: "\"99ms\"",
            min: "\"100ms\"",
            shown_min: "100ms",
            whole: S,
            get: |s| health(s).timeout,
        },
    ]
};

impl DurationKey {
    /// The config with `lines` in the key's table, and the line the first of them is on.
    fn source(&self, lines: &str) -> (String, usize) {
        let before = format!("{GOOD}{}", self.table);
        let line = before.matches('\n').count() + 1;
        (format!("{before}{lines}\n"), line)
    }

    /// The value the key has with `lines` in its table.
    fn value(&self, lines: &str) -> Duration {
        let (src, _) = self.source(lines);
        let cfg = Config::parse(&src, Path::new("x.toml"))
            .unwrap_or_else(|e| panic!("{lines}: {e}: {:?}", errors(&src)));
        (self.get)(cfg.service("web").unwrap())
    }

    /// The problems with `lines` in the key's table, and the line they start on.
    fn problems(&self, lines: &str) -> (Vec<String>, usize) {
        let (src, line) = self.source(lines);
        (errors(&src), line)
    }
}

#[test]
fn every_duration_takes_units_or_whole_numbers_under_either_name() {
    for k in DURATION_KEYS {
        let (key, old) = (k.key, k.old);
        assert_eq!(
            k.value(&format!("{key} = \"2m\"")),
            Duration::from_secs(120),
            "{key}"
        );
        assert_eq!(
            k.value(&format!("{key} = \"1m 30s\"")),
            Duration::from_secs(90)
        );
        // A whole number: seconds, or milliseconds for what was `_ms`.
        assert_eq!(k.value(&format!("{key} = 90")), k.whole, "{key}");
        assert_eq!(k.value(&format!("{old} = 90")), k.whole, "{old}");
        assert_eq!(k.value(&format!("{key} = \"90\"")), k.whole, "{key}");
        assert_eq!(
            k.value(&format!("{old} = \"2m\"")),
            Duration::from_secs(120),
            "{old}"
        );
    }
}

#[test]
fn short_and_long_units_are_read() {
    let health = &DURATION_KEYS[DURATION_KEYS.len() - 2];
    let bake = &DURATION_KEYS[1];
    assert_eq!((health.key, bake.key), ("interval", "bake"));
    for (text, want) in [
        ("500ms", Duration::from_millis(500)),
        ("90s", Duration::from_secs(90)),
        ("2m", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
        ("1.5s", Duration::from_millis(1500)),
    ] {
        assert_eq!(health.value(&format!("interval = \"{text}\"")), want);
        assert_eq!(bake.value(&format!("bake = \"{text}\"")), want);
    }
}

#[test]
fn a_duration_at_its_minimum_is_taken_and_just_below_it_refused() {
    for k in DURATION_KEYS {
        let key = k.key;
        k.value(&format!("{key} = {}", k.min));
        let (got, line) = k.problems(&format!("{key} = {}", k.below_min));
        assert_eq!(got.len(), 1, "{got:?}");
        let want = format!(
            "ripcord.toml:{line}: {}.{key}: {} is out of range: expected {} to",
            k.path, k.below_min, k.shown_min
        );
        assert!(got[0].starts_with(&want), "{got:?}\nwant {want}");
    }
}

#[test]
fn a_duration_that_is_not_one_names_file_line_and_key() {
    for k in DURATION_KEYS {
        let (key, old) = (k.key, k.old);
        let unit = if k.whole == Duration::from_millis(90) {
            "expected e.g. 500us, 25ms, 1s, or whole milliseconds"
        } else {
            "expected e.g. 500ms, 90s, 2m, 1h, or whole seconds"
        };
        let (got, line) = k.problems(&format!("{key} = \"5 parsecs\""));
        assert_eq!(
            got,
            [format!(
                "ripcord.toml:{line}: {}.{key}: \"5 parsecs\" is not a duration ({unit})",
                k.path
            )]
        );
        let (got, line) = k.problems(&format!("{old} = \"soon\""));
        assert_eq!(
            got,
            [format!(
                "ripcord.toml:{line}: {}.{old}: \"soon\" is not a duration ({unit})",
                k.path
            )]
        );
        let (got, _) = k.problems(&format!("{key} = true"));
        assert!(
            got[0].ends_with(", found a boolean") && got[0].contains("expected a duration"),
            "{got:?}"
        );
    }
}

#[test]
fn a_duration_under_both_names_is_refused_naming_both() {
    for k in DURATION_KEYS {
        let (key, old) = (k.key, k.old);
        let (got, line) = k.problems(&format!("{key} = \"2m\"\n{old} = 120"));
        assert_eq!(
            got,
            [format!(
                "ripcord.toml:{}: {}.{old}: both `{key}` and `{old}` are given, and `{old}` is the old name of `{key}`: keep one",
                line + 1,
                k.path
            )]
        );
    }
}

#[test]
fn old_duration_names_are_never_suggested() {
    let got = errors(&format!("{GOOD}bake_time = 3\n"));
    assert!(
        got[0].contains("unknown key (did you mean `bake`?)") && !got[0].contains("bake_secs"),
        "{got:?}"
    );
    let got = errors(&format!(
        "{GOOD}[service.web.triggers]\ncpu = {{ fr = \"1m\" }}\n"
    ));
    assert!(
        got[0].contains("service.web.triggers.cpu.fr: unknown key (did you mean `for`?)"),
        "{got:?}"
    );
    // An old name is known only where its new name is.
    let got = errors(&format!("{GOOD}window_secs = 3\n"));
    assert!(
        got[0].contains("service.web.window_secs: unknown key"),
        "{got:?}"
    );
}

#[test]
fn the_snapshot_keeps_the_old_names_in_seconds() {
    let src = format!(
        "{GOOD}bake = \"5m\"\nstart_timeout = \"1500ms\"\n[service.web.triggers]\nlatency_p95 = {{ floor = \"25ms\" }}\n"
    );
    let cfg = Config::parse(&src, Path::new("x.toml")).unwrap();
    let json = serde_json::to_value(cfg.service("web").unwrap()).unwrap();
    assert_eq!(json["bake_secs"], 300);
    assert_eq!(json["start_timeout_secs"], 1.5);
    assert_eq!(json["triggers"]["latency_p95"]["floor_ms"], 25);
    assert_eq!(json["triggers"]["health"]["interval_secs"], 5);
}

#[test]
fn the_drill_keys_take_units_have_defaults_and_no_old_name() {
    let web = |lines: &str| {
        let src = format!("{GOOD}{lines}\n");
        let cfg = Config::parse(&src, Path::new("x.toml"))
            .unwrap_or_else(|e| panic!("{lines}: {e}: {:?}", errors(&src)));
        cfg.service("web").unwrap().clone()
    };
    let d = web("");
    assert_eq!(d.drill_budget, Duration::from_secs(60));
    assert_eq!(d.drill_max_age, Duration::from_secs(30 * 86_400));
    let d = web("drill_budget = \"90s\"\ndrill_max_age = \"7d\"");
    assert_eq!(d.drill_budget, Duration::from_secs(90));
    assert_eq!(d.drill_max_age, Duration::from_secs(7 * 86_400));
    assert_eq!(
        web("drill_budget = 45").drill_budget,
        Duration::from_secs(45)
    );
    let problems = errors(&format!("{GOOD}drill_budget = \"500ms\"\n"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("service.web.drill_budget"),
        "{problems:?}"
    );
    // Born with units: no `_secs` name is read for them.
    let problems = errors(&format!("{GOOD}drill_budget_secs = 60\n"));
    assert!(
        problems.iter().any(|p| p.contains("unknown key")),
        "{problems:?}"
    );
}
