//! Router `nginx` against a real nginx: switches, failed tests and reloads, hand edits,
//! and zero failed requests during a switch under load. Needs the nginx binary
//! (`apt-get install -y nginx`); fails, never skips, without it.

mod nginx_fixture;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nginx_fixture::{Backend, Nginx, free_port, one_server_site, primary_backup_site};
use ripcord::execute::nginx::{
    CommandStatus, Layout, Restore, SiteConfig, SiteError, Stage, Switch, SwitchOptions,
    backup_path, current, switch, switch_with,
};

const WAIT: Duration = Duration::from_secs(5);

/// Blue and green backends, a site file in the given layout pointing at blue, and nginx
/// serving it. Field order is drop order: nginx stops before its temp dir goes.
struct World {
    nginx: Nginx,
    blue: Backend,
    green: Backend,
    site: PathBuf,
    cfg: SiteConfig,
    original: String,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(layout: Layout) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let (blue, green) = (Backend::start("blue"), Backend::start("green"));
        let port = free_port();
        let text = match layout {
            Layout::PrimaryBackup => primary_backup_site(port, &blue.addr, &green.addr),
            Layout::OneServer => one_server_site(port, &blue.addr),
        };
        let site = dir.path().join("app");
        fs::write(&site, &text).expect("write site");
        let nginx = Nginx::start(dir.path(), &site.display().to_string(), port);
        nginx.wait_for_body("blue", WAIT);
        let cfg = World::config(&nginx, &site, dir.path().join("state/nginx/app.json"));
        World {
            nginx,
            blue,
            green,
            site,
            cfg,
            original: text,
            _dir: dir,
        }
    }

    fn config(nginx: &Nginx, site: &std::path::Path, state: PathBuf) -> SiteConfig {
        SiteConfig {
            test_command: nginx.test_command(),
            reload_command: nginx.reload_command(),
            command_timeout: Duration::from_secs(10),
            ..SiteConfig::new(site, "app", state)
        }
    }

    fn to(&self, active: &Backend) -> Switch {
        Switch {
            active: active.addr.clone(),
            standby: None,
        }
    }

    fn site_text(&self) -> String {
        fs::read_to_string(&self.site).expect("read site")
    }
}

fn command_failure(e: SiteError) -> ripcord::execute::nginx::CommandFailure {
    match e {
        SiteError::Command(f) => *f,
        other => panic!("expected a command failure, got: {other}"),
    }
}

#[test]
fn primary_backup_switches_blue_to_green_and_back() {
    let w = World::new(Layout::PrimaryBackup);
    assert!(!w.cfg.state_file.exists());

    let report = switch(&w.cfg, &w.to(&w.green)).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.changed && !report.forced && report.warning.is_none());
    assert_eq!(report.layout, Layout::PrimaryBackup);
    assert_eq!(
        report.old_servers,
        vec![
            format!("server {} max_fails=3 fail_timeout=10s;", w.blue.addr),
            format!("server {} backup;", w.green.addr)
        ]
    );
    assert_eq!(
        report.new_servers,
        vec![
            format!("server {} max_fails=3 fail_timeout=10s;", w.green.addr),
            format!("server {} backup;", w.blue.addr)
        ]
    );
    w.nginx.wait_for_body("green", WAIT);
    assert_eq!(
        current(&w.cfg).unwrap(),
        Switch {
            active: w.green.addr.clone(),
            standby: Some(w.blue.addr.clone())
        }
    );
    // The previous file is kept, and the fingerprint recorded after success.
    assert_eq!(
        fs::read_to_string(backup_path(&report.site)).unwrap(),
        w.original
    );
    assert!(
        fs::read_to_string(&w.cfg.state_file)
            .unwrap()
            .contains("fnv1a64:")
    );
    // Only the two addresses changed.
    let now = w.site_text();
    assert_eq!(
        now,
        w.original
            .replace(&w.blue.addr, "@B@")
            .replace(&w.green.addr, &w.blue.addr)
            .replace("@B@", &w.green.addr)
    );

    let back = switch(&w.cfg, &w.to(&w.blue)).unwrap_or_else(|e| panic!("{e}"));
    assert!(back.changed);
    w.nginx.wait_for_body("blue", WAIT);
    assert_eq!(
        w.site_text(),
        w.original,
        "a round trip restores the file byte for byte"
    );

    // Switching to where the block already points rewrites nothing but still reloads.
    let same = switch(&w.cfg, &w.to(&w.blue)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!same.changed && same.backup.is_none());
    assert_eq!(w.site_text(), w.original);
}

#[test]
fn one_server_layout_switches() {
    let w = World::new(Layout::OneServer);
    let report = switch(&w.cfg, &w.to(&w.green)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.layout, Layout::OneServer);
    assert_eq!(
        report.new_servers,
        vec![format!("server {};", w.green.addr)]
    );
    w.nginx.wait_for_body("green", WAIT);
    assert_eq!(
        w.site_text(),
        w.original.replace(&w.blue.addr, &w.green.addr)
    );
    assert!(w.green.hits.load(Ordering::SeqCst) > 0);
}

#[test]
fn site_broken_elsewhere_is_restored_and_nothing_reloads() {
    let w = World::new(Layout::PrimaryBackup);
    let broken = format!(
        "{}\nserver {{\n    listen 127.0.0.1:{};\n    bogus_directive on;\n}}\n",
        w.original,
        free_port()
    );
    fs::write(&w.site, &broken).unwrap();

    let f = command_failure(switch(&w.cfg, &w.to(&w.green)).unwrap_err());
    assert_eq!(f.stage, Stage::Test);
    assert_eq!(f.status, CommandStatus::Exit(1));
    assert_eq!(f.restore, Restore::Restored);
    assert_eq!(f.previous_passes, Some(false));
    assert!(
        f.output.contains("unknown directive \"bogus_directive\""),
        "{}",
        f.output
    );
    let msg = f.to_string();
    assert!(
        msg.contains("-t` failed (exit status 1) after switching upstream `app`"),
        "{msg}"
    );
    assert!(msg.contains("the previous file was put back"), "{msg}");
    assert!(msg.contains("broken before the switch"), "{msg}");
    assert!(msg.contains("bogus_directive"), "{msg}");

    assert_eq!(
        w.site_text(),
        broken,
        "the user's file is back byte for byte"
    );
    w.nginx.assert_serves("blue", Duration::from_millis(300));
}

#[test]
fn switch_that_fails_the_test_is_put_back() {
    let w = World::new(Layout::PrimaryBackup);
    let bad = Switch {
        active: "127.0.0.1:99999".into(),
        standby: None,
    };
    let f = command_failure(switch(&w.cfg, &bad).unwrap_err());
    assert_eq!(f.stage, Stage::Test);
    assert_eq!(f.restore, Restore::Restored);
    assert_eq!(f.previous_passes, Some(true));
    assert!(f.output.contains("invalid port"), "{}", f.output);
    assert_eq!(w.site_text(), w.original);
    w.nginx.assert_serves("blue", Duration::from_millis(300));

    // The failed attempt left no stale fingerprint behind: the next switch is not
    // mistaken for one over a hand edit.
    let ok = switch(&w.cfg, &w.to(&w.green)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!ok.forced);
    w.nginx.wait_for_body("green", WAIT);
}

#[test]
fn failed_reload_restores_the_previous_file() {
    let w = World::new(Layout::PrimaryBackup);
    let cfg = SiteConfig {
        reload_command: vec!["false".into()],
        ..w.cfg.clone()
    };
    let f = command_failure(switch(&cfg, &w.to(&w.green)).unwrap_err());
    assert_eq!(f.stage, Stage::Reload);
    assert_eq!(f.command, "false");
    assert_eq!(f.status, CommandStatus::Exit(1));
    assert_eq!(f.restore, Restore::Restored);
    assert_eq!(f.retry, Some(CommandStatus::Exit(1)));
    assert!(
        f.to_string()
            .starts_with("`false` failed (exit status 1) after switching"),
        "{f}"
    );
    assert_eq!(w.site_text(), w.original);
    w.nginx.assert_serves("blue", Duration::from_millis(300));

    // A reload command that cannot even start is a failure too, and is put back.
    let cfg = SiteConfig {
        reload_command: vec!["/nonexistent/nginx".into(), "-s".into(), "reload".into()],
        ..w.cfg.clone()
    };
    let f = command_failure(switch(&cfg, &w.to(&w.green)).unwrap_err());
    assert!(matches!(f.status, CommandStatus::NotStarted(_)), "{f}");
    assert_eq!(w.site_text(), w.original);

    let ok = switch(&w.cfg, &w.to(&w.green)).unwrap_or_else(|e| panic!("{e}"));
    assert!(!ok.forced);
    w.nginx.wait_for_body("green", WAIT);
}

#[test]
fn hand_edit_of_the_block_is_refused_unless_forced() {
    let w = World::new(Layout::PrimaryBackup);
    switch(&w.cfg, &w.to(&w.green)).unwrap_or_else(|e| panic!("{e}"));
    w.nginx.wait_for_body("green", WAIT);

    // Formatting and comments are not hand edits nginx would see.
    let text = w
        .site_text()
        .replace("upstream app {\n", "upstream app {   # owned by ripcord\n");
    fs::write(&w.site, &text).unwrap();
    switch(&w.cfg, &w.to(&w.green)).unwrap_or_else(|e| panic!("a comment is not a hand edit: {e}"));

    // Someone tunes the block by hand.
    let edited = fs::read_to_string(&w.site)
        .unwrap()
        .replace("max_fails=3", "max_fails=5");
    fs::write(&w.site, &edited).unwrap();
    let e = switch(&w.cfg, &w.to(&w.blue)).unwrap_err();
    assert!(matches!(&e, SiteError::HandEdited { line: 2, .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("was edited by hand since ripcord last wrote it"),
        "{msg}"
    );
    assert!(msg.contains("max_fails=5"), "{msg}");
    assert!(
        msg.contains(&format!("delete {}", w.cfg.state_file.display())),
        "the message names the way out: {msg}"
    );
    assert_eq!(w.site_text(), edited, "a refused switch changes nothing");
    w.nginx.assert_serves("green", Duration::from_millis(200));

    let forced = switch_with(&w.cfg, &w.to(&w.blue), SwitchOptions { force: true })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(forced.forced);
    assert!(
        w.site_text().contains("max_fails=5"),
        "the hand edit outside the addresses is kept"
    );
    w.nginx.wait_for_body("blue", WAIT);
    // And the forced write is the new baseline.
    assert!(
        !switch(&w.cfg, &w.to(&w.green))
            .unwrap_or_else(|e| panic!("{e}"))
            .forced
    );
    w.nginx.wait_for_body("green", WAIT);

    // The way out the message gives a person: delete the state file, and the block is
    // adopted as it is now.
    let edited = w.site_text().replace("max_fails=5", "max_fails=7");
    fs::write(&w.site, &edited).unwrap();
    assert!(matches!(
        switch(&w.cfg, &w.to(&w.blue)).unwrap_err(),
        SiteError::HandEdited { .. }
    ));
    fs::remove_file(&w.cfg.state_file).unwrap();
    switch(&w.cfg, &w.to(&w.blue)).unwrap_or_else(|e| panic!("adopting after the delete: {e}"));
    assert!(
        w.site_text().contains("max_fails=7"),
        "the adopted edit is kept"
    );
    w.nginx.wait_for_body("blue", WAIT);
}

/// Regression: a backup named `app.ripcord-prev` beside a site that lives in a directory
/// nginx includes with a glob (`sites-enabled/*`) is read by nginx as a second site and
/// fails `nginx -t` with "duplicate upstream". The backup is a dot file, which nginx's
/// glob skips.
#[test]
fn backup_beside_a_glob_included_site_is_not_read_by_nginx() {
    let dir = tempfile::tempdir().unwrap();
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let port = free_port();
    let enabled = dir.path().join("sites-enabled");
    fs::create_dir(&enabled).unwrap();
    let site = enabled.join("app");
    fs::write(&site, primary_backup_site(port, &blue.addr, &green.addr)).unwrap();
    let nginx = Nginx::start(dir.path(), &format!("{}/*", enabled.display()), port);
    nginx.wait_for_body("blue", WAIT);
    let cfg = World::config(&nginx, &site, dir.path().join("state.json"));

    for (to, body) in [(&green, "green"), (&blue, "blue"), (&green, "green")] {
        let sw = Switch {
            active: to.addr.clone(),
            standby: None,
        };
        switch(&cfg, &sw).unwrap_or_else(|e| panic!("{e}"));
        nginx.wait_for_body(body, WAIT);
    }
    assert!(backup_path(&site).exists());
    let mut names: Vec<String> = fs::read_dir(&enabled)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec![".app.ripcord-lock", ".app.ripcord-prev", "app"]);
    drop(nginx);
}

#[test]
fn symlinked_site_stays_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let port = free_port();
    let (available, enabled) = (
        dir.path().join("sites-available"),
        dir.path().join("sites-enabled"),
    );
    fs::create_dir(&available).unwrap();
    fs::create_dir(&enabled).unwrap();
    fs::write(
        available.join("app"),
        primary_backup_site(port, &blue.addr, &green.addr),
    )
    .unwrap();
    std::os::unix::fs::symlink("../sites-available/app", enabled.join("app")).unwrap();
    let nginx = Nginx::start(dir.path(), &format!("{}/*", enabled.display()), port);
    nginx.wait_for_body("blue", WAIT);
    let cfg = World::config(&nginx, &enabled.join("app"), dir.path().join("state.json"));

    let report = switch(
        &cfg,
        &Switch {
            active: green.addr.clone(),
            standby: None,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    nginx.wait_for_body("green", WAIT);
    assert_eq!(
        report.site,
        fs::canonicalize(available.join("app")).unwrap()
    );
    assert!(
        fs::symlink_metadata(enabled.join("app"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(available.join(".app.ripcord-prev").exists());
    drop(nginx);
}

#[test]
fn zero_failed_requests_during_a_switch_under_load() {
    let w = World::new(Layout::PrimaryBackup);
    let stop = Arc::new(AtomicBool::new(false));
    let port = w.nginx.port;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                // Each answered request's start and end, to see which switches it overlapped.
                let (mut ok, mut failures, mut last) = (Vec::new(), Vec::new(), String::new());
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    match nginx_fixture::http_get(port, "/") {
                        Ok((200, body)) if body == "blue" || body == "green" => {
                            ok.push((sent, Instant::now()));
                            last = body;
                        }
                        other => failures.push(format!("{other:?}")),
                    }
                    // Paced so a 2 s run stays far from exhausting loopback ports.
                    thread::sleep(Duration::from_millis(1));
                }
                (ok, failures, last)
            })
        })
        .collect();

    // Three switches, so old and new workers overlap several times under load.
    let started = Instant::now();
    let (mut reports, mut windows) = (Vec::new(), Vec::new());
    for (at_ms, to) in [(400, &w.green), (900, &w.blue), (1400, &w.green)] {
        thread::sleep(Duration::from_millis(at_ms).saturating_sub(started.elapsed()));
        let from = Instant::now();
        reports.push(switch(&w.cfg, &w.to(to)).unwrap_or_else(|e| panic!("{e}")));
        windows.push((from, Instant::now()));
    }
    thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    stop.store(true, Ordering::SeqCst);

    let (mut answered, mut failures) = (Vec::new(), Vec::new());
    for t in workers {
        let (ok, f, last) = t.join().expect("load thread");
        answered.extend(ok);
        failures.extend(f);
        assert_eq!(last, "green", "every load thread ends on the new slot");
    }
    let total = answered.len();
    for r in &reports {
        eprintln!(
            "switch: write {} ms, test {} ms, reload {} ms",
            r.write_ms, r.test_ms, r.reload_ms
        );
    }
    eprintln!("load: {total} requests, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    // "Zero failed" means something only if requests were in flight while each switch
    // wrote, tested and reloaded. How many requests nginx answers per second is measured by
    // benches/nginx.rs, not here.
    for (i, (from, to)) in windows.iter().enumerate() {
        let during = answered
            .iter()
            .filter(|(sent, done)| sent <= to && done >= from)
            .count();
        assert!(
            during > 0,
            "no request was in flight during switch {i} ({} ms): the load did not cover it",
            to.duration_since(*from).as_millis()
        );
    }
    assert!(w.blue.hits.load(Ordering::SeqCst) > 0 && w.green.hits.load(Ordering::SeqCst) > 0);
}
