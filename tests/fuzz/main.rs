//! Fuzzing every parser of outside input (issue 16, item 6), with proptest on stable: each
//! `#[test]` is one target, fed mutated real inputs (`inputs.rs`), token soups and random
//! bytes. Every target checks, per input: no panic, an answer within the deadline (each
//! input runs on its own thread, `harness.rs`), and that an error names where (a line
//! inside the input, a key, a field). Hand-picked bad inputs check that those names are
//! really there, so the properties are not vacuous.
//!
//! `RIPCORD_FUZZ_CASES` inputs per target (1000 by default, what CI runs); `scripts/fuzz`
//! runs the same targets with many more in an optimised build and prints a table.
//! `net.rs` holds the two targets that need sockets: the built-in proxy and the watcher's
//! control socket.

mod harness;
mod inputs;
mod net;

use std::path::Path;

use proptest::prelude::*;

use harness::{deadline, line_count, run, within};
use inputs::{fenced, text};
use ripcord::config::{Config, LoadError};

const README: &str = include_str!("../../README.md");

// ---------------------------------------------------------------------------------------
// config: ripcord.toml
// ---------------------------------------------------------------------------------------

const CONFIG_WORDS: &[&str] = &[
    "[service.web]",
    "[service.web.nginx]",
    "[service.web.triggers]",
    "[[service.web.verify]]",
    "[service.web.database]",
    "[service.web.migrations]",
    "[service.web.docker]",
    "[watch]",
    "listen = ",
    "slots = ",
    "runtime = ",
    "router = ",
    "\"process\"",
    "\"docker\"",
    "\"nginx\"",
    "\"proxy\"",
    "\"none\"",
    "\"127.0.0.1:8080\"",
    "\"[::1]:0\"",
    "\"500ms\"",
    "\"90s\"",
    "\"2m\"",
    "\"1h\"",
    "\"30d\"",
    "\"99999999999999999999h\"",
    "bake",
    "command = [\"x\"]",
    "blue",
    "green",
    "true",
    "false",
    "inf",
    "nan",
    "1979-05-27T07:32:00Z",
    "'''",
    "\"\"\"",
    "{ blue = 8081, green = 8082 }",
    "{ blue = 70000, green = -1 }",
    "error_rate",
    "p95",
];

fn config_seeds() -> Vec<String> {
    let mut seeds = vec![
        include_str!("../../examples/ripcord.toml").to_string(),
        include_str!("../../examples/docker.toml").to_string(),
    ];
    seeds.extend(fenced(README, "toml"));
    seeds
}

#[test]
fn config_toml() {
    let path = Path::new("fuzz/ripcord.toml");
    run("config_toml", text(config_seeds(), CONFIG_WORDS), |src| {
        let (n, input) = (line_count(&src), src.clone());
        let loaded = within(deadline(), move || {
            Config::parse(&input, Path::new("fuzz/ripcord.toml")).map(|c| {
                // What `config show --json` prints; it must not panic either.
                serde_json::to_string(&c).map(|_| ())
            })
        })?;
        match loaded {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("a loaded config does not serialize: {e}")),
            Err(LoadError::Read { .. }) => Err("parse reported a read error".into()),
            Err(LoadError::Invalid { path: p, errors }) => {
                if p != path || errors.is_empty() {
                    return Err(format!("an invalid config with no problems listed: {p:?}"));
                }
                for e in &errors {
                    let shown = e.to_string();
                    if !shown.starts_with("fuzz/ripcord.toml") {
                        return Err(format!("the error does not name the file: {shown}"));
                    }
                    match e.line {
                        Some(l) if l == 0 || l > n => {
                            return Err(format!("line {l} of a {n}-line file: {shown}"));
                        }
                        None if e.key.is_empty() => {
                            return Err(format!("names neither a line nor a key: {shown}"));
                        }
                        _ => {}
                    }
                    if e.message.trim().is_empty() {
                        return Err(format!("an empty message: {shown}"));
                    }
                }
                Ok(())
            }
        }
    });
}

/// Hand-picked bad configs: the error names the line and the key it is about.
#[test]
fn config_errors_name_the_line_and_key() {
    let good = "[service.web]\nlisten = \"127.0.0.1:8080\"\nslots = { blue = 8081, green = 8082 }\ncommand = [\"app\"]\n";
    assert!(
        Config::parse(good, Path::new("c.toml")).is_ok(),
        "the base config loads"
    );
    let cases: &[(&str, usize, &str)] = &[
        // (appended text, line, key)
        ("bake = \"5 parsecs\"\n", 5, "service.web.bake"),
        (
            "bake = \"99999999999999999999999h\"\n",
            5,
            "service.web.bake",
        ),
        ("stop_timeout = -3\n", 5, "service.web.stop_timeout"),
        ("colour = \"blue\"\n", 5, "service.web.colour"),
        ("health_path = 5\n\n", 5, "service.web.health_path"),
        (
            "[service.web.triggers]\nerror_rate = { above = \"x\" }\n",
            6,
            "service.web.triggers.error_rate",
        ),
        ("x = [1,\n", 5, ""),
    ];
    // Regression (found by config_toml): toml_edit's recursion limit has no place, and
    // the error named no line; it names the line that nests deepest.
    let deep = format!("x = {}{}\n", "[".repeat(300), "]".repeat(300));
    let dotted = format!("[service.web.{}]\n", vec!["eb"; 300].join("."));
    let cases: Vec<(&str, usize, &str)> = cases
        .iter()
        .copied()
        .chain([(deep.as_str(), 5, ""), (dotted.as_str(), 5, "")])
        .collect();
    for (extra, line, key) in &cases {
        let src = format!("{good}{extra}");
        let Err(LoadError::Invalid { errors, .. }) = Config::parse(&src, Path::new("c.toml"))
        else {
            panic!("loaded: {src}");
        };
        assert!(
            errors
                .iter()
                .any(|e| e.line == Some(*line) && e.key.starts_with(key)),
            "no error at line {line} for key {key:?} in {src:?}: {errors:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// nginx configs: the tokenizer and the upstream block the nginx router owns
// ---------------------------------------------------------------------------------------

const NGINX_WORDS: &[&str] = &[
    "upstream app {",
    "upstream app{}",
    "upstream",
    "app",
    "server",
    "127.0.0.1:8081",
    "\"127.0.0.1:8082\"",
    "unix:/run/app.sock",
    "backup",
    "weight=5",
    "http {",
    "server {",
    "location / {",
    "proxy_pass http://app;",
    "}",
    "{",
    ";",
    "'",
    "\"",
    "\\",
    "\\\n",
    "${",
    "# comment\n",
    "log_format",
    "escape=json",
    "escape=none",
    "escape=bogus",
    "$status",
    "$request",
    "$upstream_addr",
    "$time_local",
    "$msec",
    "${status}",
    "ripcord",
];

const SITE: &str = "upstream app {\n    server 127.0.0.1:8081;\n    server 127.0.0.1:8082 backup;\n    keepalive 16;\n}\n\nserver {\n    listen 80;\n    location / {\n        proxy_pass http://app;\n    }\n}\n";

fn nginx_seeds() -> Vec<String> {
    let mut seeds = vec![
        SITE.to_string(),
        "upstream app { server \"127.0.0.1:9000\" weight=3; }\n".to_string(),
        "http {\n  log_format main '$remote_addr [$time_local] \"$request\" $status';\n  \
         upstream other { server 10.0.0.1; }\n  server { location ~ \"^/a{2}$\" { return 200 \
         'a\\'b'; } }\n  # upstream app { server x; }\n  upstream app {\r\n server \
         [::1]:8081; server a\\;b backup; }\n}\n"
            .to_string(),
        format!(
            "http {{\n    log_format ripcord escape=json '{}';\n    log_format combined2 '{}';\n}}\n",
            ripcord::signals::nginx_log::RECOMMENDED,
            ripcord::signals::nginx_log::COMBINED
        ),
    ];
    seeds.extend(fenced(README, "nginx"));
    seeds
}

#[test]
fn nginx_tokens() {
    use ripcord::nginx_conf::tokens::{Kind, TokenError, tokenize};
    run("nginx_tokens", text(nginx_seeds(), NGINX_WORDS), |src| {
        let (n, input) = (line_count(&src), src.clone());
        match within(deadline(), move || tokenize(&input))? {
            Ok(tokens) => {
                // Lines counted as the tokens go (they come in order of their spans).
                let (mut at, mut line) = (0, 1);
                for t in &tokens {
                    let ok = t.span.start < t.span.end
                        && t.span.end <= src.len()
                        && src.is_char_boundary(t.span.start)
                        && src.is_char_boundary(t.span.end);
                    if !ok {
                        return Err(format!("span {:?} of {t:?} is not inside the text", t.span));
                    }
                    if t.span.start < at {
                        return Err(format!("{t:?} starts before the token before it"));
                    }
                    line += src.as_bytes()[at..t.span.start]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count();
                    at = t.span.start;
                    if t.line != line {
                        return Err(format!("{t:?} says line {}, it starts on {line}", t.line));
                    }
                    let one = match t.kind {
                        Kind::Semicolon => ";",
                        Kind::Open => "{",
                        Kind::Close => "}",
                        Kind::Word => continue,
                    };
                    if &src[t.span.clone()] != one {
                        return Err(format!("{t:?} is not `{one}` in the text"));
                    }
                }
                Ok(())
            }
            Err(e) => {
                let line = match e {
                    TokenError::UnterminatedQuote { line, .. }
                    | TokenError::Unexpected { line, .. } => line,
                };
                if line == 0 || line > n {
                    return Err(format!("line {line} of a {n}-line text: {e}"));
                }
                Ok(())
            }
        }
    });
}

#[test]
fn nginx_upstream_block() {
    use ripcord::execute::nginx::{Layout, SiteError, Switch, read_upstream, render};
    run(
        "nginx_upstream_block",
        text(nginx_seeds(), NGINX_WORDS),
        |src| {
            let (n, input) = (line_count(&src), src.clone());
            let read = within(deadline(), move || read_upstream(&input, "app"))?;
            let block = match read {
                Ok(block) => block,
                Err(SiteError::Parse { error, .. }) => {
                    return match error.line() {
                        Some(l) if l == 0 || l > n => Err(format!("line {l} of {n}: {error}")),
                        _ => Ok(()),
                    };
                }
                Err(e) => return Err(format!("reading text gave a non-parse error: {e}")),
            };
            // A switch rewrites only the addresses; the new text reads back as that switch,
            // and everything before the block is untouched.
            let sw = Switch {
                active: "127.0.0.1:19001".into(),
                standby: (block.layout == Layout::PrimaryBackup).then(|| "127.0.0.1:19002".into()),
            };
            let new = render(&src, &block, &sw);
            if new[..block.span.start] != src[..block.span.start] {
                return Err("the text before the block changed".into());
            }
            let again = read_upstream(&new, "app")
                .map_err(|e| format!("the rendered text does not read back: {e}\n{new}"))?;
            if again.to_switch() != sw || again.layout != block.layout {
                return Err(format!("read back {:?}, wrote {sw:?}", again.to_switch()));
            }
            Ok(())
        },
    );
}

#[test]
fn nginx_errors_name_the_line() {
    use ripcord::execute::nginx::{SiteError, read_upstream};
    let cases: &[(&str, usize)] = &[
        ("http {\n\n  upstream app {\n    server 'x;\n}\n", 4),
        ("upstream app {\n  server 127.0.0.1:1;\n  server\n", 3),
        (
            "upstream app {\n  server 127.0.0.1:1;\n  server 127.0.0.1:2;\n}\n",
            1,
        ),
        ("\n\nupstream app {\n  server;\n}\n", 4),
        (
            "upstream app { server a; }\n\nupstream app { server b; }\n",
            3,
        ),
        ("x {\n  y \"a\"b;\n}\n", 2),
    ];
    for (text, line) in cases {
        let e = read_upstream(text, "app").expect_err(text);
        let SiteError::Parse { error, .. } = &e else {
            panic!("{text:?}: {e}");
        };
        assert_eq!(error.line(), Some(*line), "{text:?}: {e}");
        assert!(
            e.to_string().contains(&line.to_string()),
            "{text:?}: {e} does not name line {line}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// nginx log_format declarations and access-log lines
// ---------------------------------------------------------------------------------------

fn format_error_line(e: &ripcord::signals::nginx_log::FormatError) -> Option<usize> {
    use ripcord::signals::nginx_log::FormatError as F;
    match e {
        F::UnterminatedQuote { line, .. }
        | F::Unexpected { line, .. }
        | F::MissingName { line }
        | F::MissingFormat { line, .. }
        | F::Unterminated { line, .. }
        | F::UnknownEscape { line, .. }
        | F::InDirective { line, .. } => Some(*line),
        _ => None,
    }
}

#[test]
fn nginx_log_format() {
    use ripcord::signals::nginx_log::LogFormat;
    run(
        "nginx_log_format",
        text(nginx_seeds(), NGINX_WORDS),
        |src| {
            let (n, input) = (line_count(&src), src.clone());
            let results = within(deadline(), move || {
                ["ripcord", "main", "combined", "combined2"]
                    .map(|name| LogFormat::from_nginx_conf(&input, name).map(|f| f.as_str().len()))
            })?;
            for r in results {
                if let Err(e) = r
                    && let Some(l) = format_error_line(&e)
                    && (l == 0 || l > n)
                {
                    return Err(format!("line {l} of a {n}-line config: {e}"));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn nginx_log_format_string() {
    use ripcord::signals::nginx_log::{Escape, FormatError, LogFormat};
    let seeds = vec![
        ripcord::signals::nginx_log::COMBINED.to_string(),
        ripcord::signals::nginx_log::RECOMMENDED.to_string(),
        "{\"status\":\"$status\",\"ua\":\"$upstream_addr\",\"t\":$request_time}".to_string(),
    ];
    run("nginx_log_format_string", text(seeds, NGINX_WORDS), |src| {
        let input = src.clone();
        let r = within(deadline(), move || {
            [Escape::Default, Escape::Json, Escape::None]
                .map(|esc| LogFormat::with_escape(&input, esc).map(|f| f.as_str().len()))
        })?;
        for e in r.into_iter().filter_map(Result::err) {
            if let FormatError::EmptyVariable { at } | FormatError::UnclosedBrace { at } = e
                && at >= src.len()
            {
                return Err(format!("byte {at} of a {}-byte format: {e}", src.len()));
            }
        }
        Ok(())
    });
}

#[test]
fn log_format_errors_name_the_line() {
    use ripcord::signals::nginx_log::LogFormat;
    let cases: &[(&str, usize)] = &[
        ("http {\n\n  log_format ripcord '$status\n;\n", 3),
        ("\nlog_format ripcord escape=yaml '$status';\n", 2),
        ("\n\n\nlog_format ripcord '$remote_addr';\n", 4),
        ("log_format;\n", 1),
        ("\nlog_format ripcord '${status';\n", 2),
    ];
    for (text, line) in cases {
        let e = LogFormat::from_nginx_conf(text, "ripcord").expect_err(text);
        assert_eq!(format_error_line(&e), Some(*line), "{text:?}: {e}");
        assert!(e.to_string().contains(&format!("line {line}")), "{e}");
    }
}

const LOG_WORDS: &[&str] = &[
    " - ",
    "\"GET / HTTP/1.1\"",
    "\"-\"",
    "[05/Dec/2026:07:41:58 +0000]",
    "[31/Feb/2026:25:61:61 +9999]",
    "200",
    "502",
    "999",
    "-",
    "0.001",
    "1e309",
    "rt=",
    "urt=\"",
    "ua=\"",
    "127.0.0.1:8081, 127.0.0.1:8082 : 127.0.0.1:8081",
    "ts=",
    "1733384518.123",
    "\\x22",
    "\\\"",
    "2026-12-05T07:41:58+00:00",
];

#[test]
fn nginx_access_log_lines() {
    use ripcord::signals::nginx_log::{Escape, LogFormat};
    let json = "{\"s\":\"$status\",\"ua\":\"$upstream_addr\",\"t\":\"$time_iso8601\",\"rt\":$request_time,\"r\":\"$request\"}";
    let formats = [
        LogFormat::combined().with_request(true),
        LogFormat::new(ripcord::signals::nginx_log::RECOMMENDED).unwrap(),
        LogFormat::with_escape(json, Escape::Json).unwrap(),
        LogFormat::with_escape(ripcord::signals::nginx_log::RECOMMENDED, Escape::None).unwrap(),
    ];
    let seeds = vec![
        "203.0.113.7 - - [05/Dec/2026:07:41:58 +0000] \"GET /api/items?id=3 HTTP/1.1\" 200 512 \"-\" \"curl/8.5\"".to_string(),
        "203.0.113.7 - [05/Dec/2026:07:41:58 +0000] \"POST /a HTTP/1.1\" 502 0 rt=0.012 urt=\"0.010, 0.002\" ua=\"127.0.0.1:8081, 127.0.0.1:8082\" ts=1733384518.123".to_string(),
        "{\"s\":\"200\",\"ua\":\"127.0.0.1:8081\",\"t\":\"2026-12-05T07:41:58+00:00\",\"rt\":0.004,\"r\":\"GET /x\\\"y HTTP/1.1\"}".to_string(),
        "::1 - [05/Dec/2026:07:41:58 +0000] \"GET / HTTP/1.1\" 404 9 rt=- urt=\"-\" ua=\"-\" ts=-".to_string(),
    ];
    // The valid lines parse (so the property below runs on lines that get deep).
    assert_eq!(
        formats[0].parse_line(seeds[0].as_bytes()).map(|r| r.status),
        Some(200)
    );
    assert_eq!(
        formats[1].parse_line(seeds[1].as_bytes()).map(|r| r.status),
        Some(502)
    );
    assert_eq!(
        formats[2].parse_line(seeds[2].as_bytes()).map(|r| r.status),
        Some(200)
    );
    let formats = std::sync::Arc::new(formats);
    let seed_bytes: Vec<Vec<u8>> = seeds.into_iter().map(String::into_bytes).collect();
    let strategy = (0..formats.len(), inputs::bytes(seed_bytes, LOG_WORDS));
    run("nginx_access_log_lines", strategy, move |(i, line)| {
        let formats = formats.clone();
        let l = line.clone();
        let (borrowed, owned) = within(deadline(), move || {
            let f = &formats[i];
            let borrowed = f.parse_ref(&l).map(|r| r.to_record(true));
            (borrowed, f.parse_line(&l))
        })?;
        // The two ways of reading a line agree.
        if borrowed.as_ref().map(|r| r.status) != owned.as_ref().map(|r| r.status)
            || borrowed.as_ref().map(|r| &r.upstream_addr)
                != owned.as_ref().map(|r| &r.upstream_addr)
        {
            return Err(format!("parse_ref {borrowed:?} but parse_line {owned:?}"));
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// migrations: SQL, Alembic, Django, Rails
// ---------------------------------------------------------------------------------------

const MIGRATION_WORDS: &[&str] = &[
    "CREATE TABLE t (id int);",
    "ALTER TABLE t ADD COLUMN c text NOT NULL DEFAULT 'x';",
    "ALTER TABLE t DROP COLUMN c;",
    "CREATE INDEX CONCURRENTLY i ON t (c);",
    "DO $$ BEGIN IF true THEN EXECUTE 'DROP TABLE t'; END IF; END $$;",
    "$$",
    "$tag$",
    "SET lock_timeout = '2s';",
    "BEGIN;",
    "COMMIT;",
    "-- ripcord:allow drop-column because\n",
    "/*",
    "*/",
    "E'\\''",
    "op.add_column('t', sa.Column('c', sa.Text(), nullable=False))\n",
    "op.drop_column('t', 'c')\n",
    "op.execute(f\"DROP TABLE {T}\")\n",
    "with op.batch_alter_table('t') as b:\n    b.drop_column('c')\n",
    "def upgrade():\n",
    "def downgrade():\n",
    "    pass\n",
    "revision = 'abc'\n",
    "down_revision = ('a', 'b')\n",
    "migrations.RemoveField(model_name='t', name='c'),\n",
    "migrations.RunSQL('DROP TABLE t'),\n",
    "operations = [\n",
    "]\n",
    "remove_column :t, :c\n",
    "def change\n",
    "end\n",
    "safety_assured { execute 'DROP TABLE t' }\n",
    "add_index :t, :c, algorithm: :concurrently\n",
    "((((((((((((((((",
    "'''",
    "\"\"\"",
    "%s",
    ".format(",
];

const DJANGO: &str = "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = [('shop', '0001_initial')]\n\n    operations = [\n        migrations.AddField(model_name='item', name='note', field=models.TextField(null=True)),\n        migrations.RemoveField(model_name='item', name='old'),\n        migrations.RunSQL('CREATE INDEX CONCURRENTLY i ON shop_item (note)', reverse_sql='DROP INDEX i'),\n    ]\n";

const RAILS: &str = "class AddNoteToItems < ActiveRecord::Migration[7.1]\n  disable_ddl_transaction!\n\n  def change\n    add_column :items, :note, :text\n    remove_column :items, :old, :string\n    add_index :items, :note, algorithm: :concurrently\n    execute \"ALTER TABLE items ALTER COLUMN note SET NOT NULL\"\n  end\nend\n";

/// (path a file of this kind is recognised by, seeds)
fn migration_kinds() -> Vec<(&'static str, Vec<String>)> {
    let m = |s: &str| s.to_string();
    vec![
        (
            "db/migrations/001_change.up.sql",
            vec![
                m(include_str!(
                    "../fixtures/migrations/safe/001_add_column.up.sql"
                )),
                m(include_str!("../fixtures/migrations/flyway/V1__idx.sql")),
                m(include_str!(
                    "../fixtures/migrations/diesel/2024-01-01-000000_users_email_idx/up.sql"
                )),
                m(
                    "SET lock_timeout = '2s';\nBEGIN;\nALTER TABLE users ADD COLUMN status text;\nUPDATE users SET status = 'a' WHERE id < 10;\nALTER TABLE users ALTER COLUMN status SET NOT NULL;\nDO $$\nBEGIN\n  IF EXISTS (SELECT 1) THEN\n    EXECUTE 'ALTER TABLE users DROP COLUMN old';\n  END IF;\nEND\n$$;\nCOMMIT;\n",
                ),
            ],
        ),
        (
            "alembic/versions/001_change.py",
            vec![
                m(include_str!(
                    "../fixtures/migrations/alembic/versions/001_add_user_status.py"
                )),
                m(include_str!(
                    "../fixtures/migrations/alembic/versions/002_backfill.py"
                )),
                m(include_str!(
                    "../fixtures/migrations/alembic/versions/003_switch.py"
                )),
            ],
        ),
        ("shop/migrations/0002_note.py", vec![m(DJANGO)]),
        (
            "db/migrate/20240101120000_add_note_to_items.rb",
            vec![m(RAILS)],
        ),
    ]
}

#[test]
fn migrations() {
    use ripcord::migrate::{Settings, SourceFile, check, plan, render_json, render_text};
    let kinds = migration_kinds();
    let paths: Vec<&'static str> = kinds.iter().map(|(p, _)| *p).collect();
    // One pool of seeds: a mutation may splice SQL into Python and back.
    let seeds: Vec<String> = kinds.into_iter().flat_map(|(_, s)| s).collect();
    let strategy = (0..paths.len(), text(seeds, MIGRATION_WORDS));
    run("migrations", strategy, move |(kind, src)| {
        let path = paths[kind].to_string();
        let (n, input, p) = (line_count(&src), src.clone(), path.clone());
        let report = within(deadline(), move || {
            let files = vec![SourceFile {
                path: p,
                text: input,
            }];
            let report = check(&plan(files), &Settings::default());
            let _ = (render_text(&report), render_json(&report));
            report
        })?;
        // A `.py` or `.rb` file that is not a migration (a helper beside them) is
        // skipped by design; a `.sql` file never is.
        if report.files.is_empty() && path.ends_with(".sql") {
            return Err(format!("{path}: the checker said nothing about the file"));
        }
        for f in &report.files {
            let all = f.upgrade.findings.iter().chain(&f.downgrade.findings);
            for finding in all {
                if finding.line == 0 || finding.line > n {
                    return Err(format!(
                        "{path}: finding at line {} of a {n}-line file: {finding:?}",
                        finding.line
                    ));
                }
            }
        }
        Ok(())
    });
}

#[test]
fn migration_errors_name_the_line() {
    use ripcord::migrate::{Settings, SourceFile, check, plan};
    let cases: &[(&str, &str, usize)] = &[
        (
            "m/001_x.up.sql",
            "SELECT 1;\n\nALTER TABLE t FROBNICATE c;\n",
            3,
        ),
        ("m/001_x.up.sql", "SELECT 1;\nCREATE TABLE (;\n", 2),
        (
            "alembic/versions/001_x.py",
            "revision = 'a'\ndown_revision = None\n\ndef upgrade():\n    op.execute(\n",
            5,
        ),
        (
            "alembic/versions/001_x.py",
            "revision = 'a'\ndown_revision = None\n\ndef upgrade():\n    op.execute('ALTER TABLE t FROB')\n",
            5,
        ),
    ];
    for (path, text, line) in cases {
        let files = vec![SourceFile {
            path: path.to_string(),
            text: text.to_string(),
        }];
        let report = check(&plan(files), &Settings::default());
        let lines: Vec<(usize, &str)> = report.files[0]
            .upgrade
            .findings
            .iter()
            .map(|f| (f.line, f.rule))
            .collect();
        assert!(
            lines.iter().any(|(l, _)| l == line),
            "{path} {text:?}: no finding at line {line}: {lines:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// backups: pg_restore's table of contents, database URLs
// ---------------------------------------------------------------------------------------

const LIST: &str = ";\n; Archive created at 2026-01-01 00:00:00 UTC\n;     dbname: app\n;     TOC Entries: 12\n;\n215; 1259 16386 TABLE public items postgres\n216; 1259 16390 TABLE public order lines app_owner\n214; 1259 16385 SEQUENCE public items_id_seq postgres\n3350; 0 16386 TABLE DATA public items postgres\n3351; 0 0 SEQUENCE SET public items_id_seq postgres\n3200; 2606 16392 CONSTRAINT public items items_pkey postgres\n217; 1259 16400 TABLE billing invoices \n";

#[test]
fn backup_table_of_contents() {
    use ripcord::db::parse_list;
    let words: &'static [&'static str] = &["; ", "TABLE", "DATA", "0", "public", "1259"];
    run(
        "backup_table_of_contents",
        text(vec![LIST.to_string()], words),
        |src| {
            let input = src.clone();
            let tables = within(deadline(), move || parse_list(&input))?;
            for t in &tables {
                if !src.contains(&t.schema) || !src.contains(t.name.split(' ').next().unwrap_or(""))
                {
                    return Err(format!("{t:?} is not in the list"));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn database_urls() {
    use ripcord::db::PgUrl;
    let seeds = vec![
        "postgresql://app@127.0.0.1:5432/app".to_string(),
        "postgres://app@[::1]:5433/my%20db?sslmode=require&application_name=x".to_string(),
        "postgresql:///app?host=/run/postgresql".to_string(),
    ];
    let words: &'static [&'static str] = &[
        "%",
        "%ff",
        "%C3%A9",
        "@",
        ":",
        "?",
        "&",
        "password=",
        "dbname=",
        "/",
    ];
    run("database_urls", text(seeds, words), |src| {
        let input = src.clone();
        match within(deadline(), move || PgUrl::parse(&input))? {
            Ok(url) => {
                let s = url.as_string();
                let again =
                    PgUrl::parse(&s).map_err(|e| format!("{s} does not parse again: {e}"))?;
                if again != url {
                    return Err(format!("{src} → {s} → {again:?}, not {url:?}"));
                }
                Ok(())
            }
            Err(e) if e.to_string().trim().is_empty() => Err("an empty error".into()),
            Err(_) => Ok(()),
        }
    });
}

// ---------------------------------------------------------------------------------------
// env files
// ---------------------------------------------------------------------------------------

#[test]
fn env_files() {
    use ripcord::execute::envfile::{EnvFileError, parse};
    let seeds = vec![
        "# app\nDATABASE_URL=postgresql://app@db/app\nAPI_KEY=abc=def\n\nEMPTY=\nFUZZ_UNSET_VAR\n"
            .to_string(),
        "-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----\n".to_string(),
    ];
    let words: &'static [&'static str] = &["=", "KEY", " KEY", "KEY =", "#", "export "];
    run("env_files", text(seeds, words), |src| {
        let (n, input) = (line_count(&src), src.clone());
        match within(deadline(), move || parse(&input, Path::new("fuzz/app.env")))? {
            Ok(vars) => {
                for (k, _) in &vars {
                    if k.is_empty() || k.contains('=') {
                        return Err(format!("a variable named {k:?}"));
                    }
                }
                Ok(())
            }
            Err(EnvFileError::Syntax { line, .. }) if line == 0 || line > n => {
                Err(format!("line {line} of a {n}-line file"))
            }
            Err(e @ EnvFileError::Syntax { line, .. }) => {
                // The message never echoes the line: it may be part of a secret.
                let bad = src.lines().nth(line - 1).unwrap_or("").trim();
                let shown = e.to_string();
                if bad.len() >= 12 && shown.contains(bad) {
                    return Err(format!("the error shows the line: {shown}"));
                }
                if !shown.starts_with(&format!("fuzz/app.env:{line}: ")) {
                    return Err(format!("the error does not name file and line: {shown}"));
                }
                Ok(())
            }
            Err(e) => Err(format!("parsing text gave {e}")),
        }
    });
}

// ---------------------------------------------------------------------------------------
// Prometheus answers
// ---------------------------------------------------------------------------------------

const PROM_WORDS: &[&str] = &[
    "\"status\":\"success\"",
    "\"status\":\"error\"",
    "\"error\":\"bad query\"",
    "\"resultType\":\"vector\"",
    "\"resultType\":\"scalar\"",
    "\"resultType\":\"matrix\"",
    "\"resultType\":\"string\"",
    "\"value\":[1733384518.1,\"NaN\"]",
    "\"value\":[1,\"+Inf\"]",
    "\"value\":[1,\"1e999\"]",
    "\"value\":[1]",
    "\"metric\":{}",
    "\"metric\":{\"job\":1}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{\"a\":",
    "null",
    "\"\\ud800\"",
];

#[test]
fn prometheus_answers() {
    use ripcord::prometheus::{QueryResult, read_answer};
    let seeds = vec![
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"web","instance":"a"},"value":[1733384518.123,"0.25"]},{"metric":{},"value":[1733384518.123,"NaN"]}]}}"#.to_string(),
        r#"{"status":"success","data":{"resultType":"scalar","result":[1733384518.123,"3"]}}"#.to_string(),
        r#"{"status":"error","errorType":"bad_data","error":"parse error at char 4: unexpected"}"#.to_string(),
        r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#.to_string(),
    ];
    run(
        "prometheus_answers",
        (
            prop_oneof![Just(200u16), Just(400), Just(503)],
            inputs::bytes(
                seeds.into_iter().map(String::into_bytes).collect(),
                PROM_WORDS,
            ),
        ),
        |(status, body)| match within(deadline(), move || read_answer(status, &body))? {
            QueryResult::Values { values } if values.is_empty() => {
                Err("no values and no why".into())
            }
            QueryResult::Values { values } => match values.iter().find(|(_, v)| v.is_nan()) {
                Some(nan) => Err(format!("a NaN value {nan:?} counted as data")),
                None => Ok(()),
            },
            QueryResult::NoData { why } if why.trim().is_empty() => Err("no data, no why".into()),
            QueryResult::NoData { .. } => Ok(()),
        },
    );
}

#[test]
fn prometheus_errors_say_why() {
    use ripcord::prometheus::{QueryResult, read_answer};
    let cases: &[(u16, &str, &str)] = &[
        (502, "<html>bad gateway</html>", "status 502"),
        (
            200,
            r#"{"status":"error","error":"parse error at char 4"}"#,
            "parse error at char 4",
        ),
        (
            200,
            r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
            "matrix",
        ),
        (
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"web"},"value":[1,"x"]}]}}"#,
            "job",
        ),
        (
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
            "empty result",
        ),
    ];
    for (status, body, want) in cases {
        match read_answer(*status, body.as_bytes()) {
            QueryResult::NoData { why } => assert!(why.contains(want), "{body}: {why}"),
            other => panic!("{body}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// CA files (`ca_file` of checks, probes and Prometheus)
// ---------------------------------------------------------------------------------------

#[test]
fn ca_files() {
    use ripcord::http::read_ca_file;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&key).unwrap().pem();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, &ca).unwrap();
    assert_eq!(
        read_ca_file(&path).unwrap().len(),
        1,
        "the seed is a usable CA"
    );
    let seeds = vec![
        ca.clone().into_bytes(),
        format!("# bundle\n{ca}\n{ca}").into_bytes(),
    ];
    let words: &'static [&'static str] = &[
        "-----BEGIN CERTIFICATE-----\n",
        "-----END CERTIFICATE-----\n",
        "-----BEGIN PRIVATE KEY-----\n",
        "MII",
        "=",
        "==",
    ];
    let counter = std::sync::atomic::AtomicU64::new(0);
    let base = dir.path().to_path_buf();
    run("ca_files", inputs::bytes(seeds, words), |pem| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = base.join(format!("{n}.pem"));
        std::fs::write(&file, &pem).map_err(|e| format!("writing {file:?}: {e}"))?;
        let shown = file.display().to_string();
        let result = within(deadline(), move || read_ca_file(&file).map(|c| c.len()));
        let _ = std::fs::remove_file(base.join(format!("{n}.pem")));
        match result? {
            Ok(0) => Err("no certificate, and no error".into()),
            Ok(_) => Ok(()),
            Err(e) if !e.to_string().contains(&shown) => {
                Err(format!("the error does not name the file: {e}"))
            }
            Err(_) => Ok(()),
        }
    });
}
