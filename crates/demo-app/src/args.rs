//! The demo app's command line: its flags, their defaults and their checks.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use hyper::header::HeaderValue;

use super::APP_NAME;

/// The address the app listens on when no `--listen` is given.
const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8000));

/// Command-line arguments of the demo app.
///
/// This derives `clap::Parser`, which also implements `clap::Args`, so the struct can be parsed
/// on its own, flattened into another command with `#[command(flatten)]`, or used as the
/// arguments of a subcommand variant.
#[derive(clap::Parser, Debug, Clone, PartialEq)]
#[command(
    name = APP_NAME,
    about = "Demo HTTP app for ripcord's demo, tests and benchmarks (not a production server)",
    // Without this, `--help` would show the Rust doc comment above instead of the about text.
    long_about = None,
    disable_version_flag = true
)]
pub struct DemoAppArgs {
    /// Address to listen on
    #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_LISTEN, env = "DEMO_LISTEN")]
    pub listen: SocketAddr,

    /// Port to listen on, overriding the port of --listen
    #[arg(long, value_name = "N", env = "PORT")]
    pub port: Option<u16>,

    /// Version the app reports on /health, /api and in x-demo-version
    #[arg(
        long = "version",
        value_name = "TEXT",
        default_value = "v0",
        env = "DEMO_VERSION"
    )]
    pub app_version: String,

    /// Ratio of /api requests that fail with 500, between 0 and 1 (each request with this
    /// probability, or spread evenly with --fault-mode even)
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_ratio, env = "DEMO_ERROR_RATIO")]
    pub error_ratio: f64,

    /// Ratio of /api requests that fail with 500 from the start, chosen as --error-ratio's
    /// (background noise, as a healthy service has: not a misbehaviour)
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_ratio)]
    pub background_error_ratio: f64,

    /// Milliseconds added before a slow /api response (every one unless --slow-ratio says
    /// otherwise)
    #[arg(long, value_name = "N", default_value_t = 0, env = "DEMO_LATENCY_MS")]
    pub latency_ms: u64,

    /// Share of /api requests, between 0 and 1, that get the --latency-ms delay (each request
    /// with this probability, or spread evenly with --fault-mode even)
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = parse_ratio, env = "DEMO_SLOW_RATIO")]
    pub slow_ratio: f64,

    /// Up to N more milliseconds on every /api response, uniform per request (background
    /// noise, from the start: not a misbehaviour)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub jitter_ms: u64,

    /// How --error-ratio, --background-error-ratio, --slow-ratio and --jitter-ms choose
    /// their requests
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value_t = FaultMode::Random,
        env = "DEMO_FAULT_MODE"
    )]
    pub fault_mode: FaultMode,

    /// Seed of the random faults: the same seed gives every request index the same outcome
    /// on every run [default: from the clock and the pid, so runs differ]
    #[arg(long, value_name = "N", env = "DEMO_SEED")]
    pub seed: Option<u64>,

    /// Grow resident memory by N MiB per second until killed
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        env = "DEMO_LEAK_MB_PER_SEC"
    )]
    pub leak_mb_per_sec: u64,

    /// Number of threads that busy-loop to burn CPU
    #[arg(long, value_name = "N", default_value_t = 0, env = "DEMO_CPU_BURN")]
    pub cpu_burn: usize,

    /// Answer /health with 503
    #[arg(long, env = "DEMO_FAIL_HEALTH")]
    pub fail_health: bool,

    /// Crash: exit with code 70 when the misbehaviours begin (a real process exit, so
    /// only for a separate process, never in-process)
    #[arg(long, env = "DEMO_CRASH")]
    pub crash: bool,

    /// Print a message to stderr and exit with CODE before binding
    #[arg(long, value_name = "CODE", allow_negative_numbers = true)]
    pub exit_at_start: Option<i32>,

    /// Milliseconds to sleep before binding, to simulate a slow start
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub start_delay_ms: u64,

    /// Seconds after start before the error, latency, leak, cpu-burn and fail-health
    /// misbehaviours begin (0 means from the start)
    #[arg(long, value_name = "N", default_value_t = 0, env = "DEMO_AFTER_SECS")]
    pub after_secs: u64,

    /// Probe mode, for a container health check in an image without a shell: GET TARGET
    /// (`http://HOST:PORT/PATH`, or `/PATH` on this app's own --listen/--port address),
    /// exit 0 on a 200 and 1 otherwise; serves nothing
    #[arg(long, value_name = "TARGET")]
    pub probe: Option<String>,
}

/// How the demo app chooses the requests that get a fault.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultMode {
    /// Each request independently, with the given probability, as a real service fails
    #[default]
    Random,
    /// Spread evenly and deterministically, for tests that must assert exact counts
    ///
    /// Request `n` (from 0) gets the fault when `floor((n+1)r) > floor(nr)`, so the first `k`
    /// requests hold exactly `floor(kr)` faults and failures never bunch up. It exists only
    /// for tests that compare an exact number, and such a test must say why it cannot use a
    /// fixed `--seed` instead: an even spread is kinder than any real service, so a guard
    /// tested only against it can pass with statistical bugs.
    Even,
}

impl Default for DemoAppArgs {
    /// The same values as parsing an empty command line with `PORT` unset.
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            port: None,
            app_version: "v0".to_owned(),
            error_ratio: 0.0,
            background_error_ratio: 0.0,
            latency_ms: 0,
            slow_ratio: 1.0,
            jitter_ms: 0,
            fault_mode: FaultMode::Random,
            seed: None,
            leak_mb_per_sec: 0,
            cpu_burn: 0,
            fail_health: false,
            crash: false,
            exit_at_start: None,
            start_delay_ms: 0,
            after_secs: 0,
            probe: None,
        }
    }
}

impl DemoAppArgs {
    /// The address to bind: `--listen` with its port replaced by `--port` when one is given.
    pub(super) fn bind_addr(&self) -> SocketAddr {
        let mut addr = self.listen;
        if let Some(port) = self.port {
            addr.set_port(port);
        }
        addr
    }

    /// Checks what clap cannot check for a struct built in code rather than parsed.
    pub(super) fn validate(&self) -> Result<(), String> {
        check_ratio("--error-ratio", self.error_ratio)?;
        check_ratio("--background-error-ratio", self.background_error_ratio)?;
        check_ratio("--slow-ratio", self.slow_ratio)?;
        HeaderValue::from_str(&self.app_version).map_err(|_| {
            format!(
                "version {:?} cannot be sent in an http header",
                self.app_version
            )
        })?;
        Ok(())
    }
}

/// Parses a ratio flag (`--error-ratio`, `--slow-ratio`, ...), so that a bad value is a usage
/// error (exit code 2) from clap itself.
fn parse_ratio(text: &str) -> Result<f64, String> {
    // Clap already names the flag and the value, so the message only says what is wrong.
    let ratio: f64 = text.trim().parse().map_err(|_| "not a number".to_owned())?;
    if ratio_in_range(ratio) {
        Ok(ratio)
    } else {
        Err("must be between 0 and 1".to_owned())
    }
}

/// Rejects ratios outside `0..=1`, NaN included, because they have no meaning as a failure rate.
fn check_ratio(flag: &str, ratio: f64) -> Result<(), String> {
    if ratio_in_range(ratio) {
        Ok(())
    } else {
        Err(format!("{flag} must be between 0 and 1, got {ratio}"))
    }
}

fn ratio_in_range(ratio: f64) -> bool {
    (0.0..=1.0).contains(&ratio)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run;
    use clap::Parser;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        DemoAppArgs::command().debug_assert();
    }

    #[test]
    fn defaults_match_an_empty_command_line() {
        let mut parsed = DemoAppArgs::try_parse_from([APP_NAME]).expect("parse");
        // The PORT environment variable of whoever runs the tests must not matter here.
        parsed.port = None;
        assert_eq!(parsed, DemoAppArgs::default());
    }

    #[test]
    fn flags_parse() {
        let args = DemoAppArgs::try_parse_from([
            APP_NAME,
            "--listen",
            "127.0.0.2:9000",
            "--port",
            "9100",
            "--version",
            "v7",
            "--error-ratio",
            "0.5",
            "--exit-at-start",
            "-3",
            "--fault-mode",
            "even",
            "--seed",
            "18446744073709551615",
            "--slow-ratio",
            "0.07",
        ])
        .expect("parse");
        assert_eq!(args.bind_addr(), "127.0.0.2:9100".parse().unwrap());
        assert_eq!(args.app_version, "v7");
        assert_eq!(args.error_ratio, 0.5);
        assert_eq!(args.exit_at_start, Some(-3));
        assert_eq!(args.fault_mode, FaultMode::Even);
        assert_eq!(args.seed, Some(u64::MAX));
        assert_eq!(args.slow_ratio, 0.07);
    }

    #[test]
    fn faults_are_random_by_default() {
        let defaults = DemoAppArgs::default();
        assert_eq!(defaults.fault_mode, FaultMode::Random);
        assert_eq!(
            defaults.slow_ratio, 1.0,
            "every request slow unless told otherwise"
        );
        assert_eq!(defaults.seed, None);
    }

    #[test]
    fn bad_error_ratio_is_a_usage_error() {
        for bad in ["1.5", "-0.1", "NaN", "lots"] {
            let err = DemoAppArgs::try_parse_from([APP_NAME, "--error-ratio", bad])
                .expect_err("rejected");
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
        let args = DemoAppArgs {
            error_ratio: 2.0,
            ..DemoAppArgs::default()
        };
        assert_eq!(run(args), 2);
    }

    #[test]
    fn bad_slow_ratio_mode_or_seed_is_a_usage_error() {
        for (flag, bad) in [
            ("--slow-ratio", "1.01"),
            ("--slow-ratio", "-0.5"),
            ("--slow-ratio", "NaN"),
            ("--fault-mode", "uniform"),
            ("--seed", "-1"),
            ("--seed", "0x10"),
        ] {
            let err = DemoAppArgs::try_parse_from([APP_NAME, flag, bad]).expect_err("rejected");
            assert_eq!(err.exit_code(), 2, "{flag} {bad}");
        }
        let args = DemoAppArgs {
            slow_ratio: f64::NAN,
            ..DemoAppArgs::default()
        };
        assert_eq!(
            args.validate(),
            Err("--slow-ratio must be between 0 and 1, got NaN".to_owned())
        );
        assert_eq!(run(args), 2);
    }

    #[test]
    fn embeds_as_flatten_and_as_subcommand() {
        #[derive(clap::Parser, Debug)]
        #[command(name = "outer", version = "1.2.3", propagate_version = true)]
        struct Outer {
            #[command(subcommand)]
            command: OuterCommand,
        }
        #[derive(clap::Subcommand, Debug)]
        enum OuterCommand {
            DemoApp(DemoAppArgs),
        }
        #[derive(clap::Parser, Debug)]
        #[command(name = "flat")]
        struct Flat {
            #[command(flatten)]
            demo: DemoAppArgs,
        }
        use clap::CommandFactory;
        Outer::command().debug_assert();
        Flat::command().debug_assert();

        let outer = Outer::try_parse_from(["outer", "demo-app", "--version", "v3"]).expect("parse");
        let OuterCommand::DemoApp(args) = outer.command;
        assert_eq!(args.app_version, "v3");
        let flat =
            Flat::try_parse_from(["flat", "--version", "v4", "--fail-health"]).expect("parse");
        assert_eq!(flat.demo.app_version, "v4");
        assert!(flat.demo.fail_health);
    }
}
