//! The connection URL, the password, connections and the PostgreSQL client programs.
//!
//! The password never goes into a URL, an argument vector or an error: it is read from
//! `password_file` (first line) or PGPASSWORD, given to `tokio_postgres` directly and to
//! child programs through their PGPASSWORD environment variable only.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::DbConfig;
use super::error::{DbError, pg_detail};

/// The database PostgreSQL always has, used to create, rename and drop others.
pub const MAINTENANCE_DB: &str = "postgres";

/// A password that does not print itself.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A parsed `postgresql://user@host:port/dbname?params` URL without a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUrl {
    scheme: String,
    authority: String,
    query: Option<String>,
    /// The database name, percent-decoded.
    pub database: String,
}

impl PgUrl {
    pub fn parse(url: &str) -> Result<PgUrl, DbError> {
        let bad = |reason: &str| DbError::BadUrl {
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("it does not start with postgresql://"))?;
        if scheme != "postgresql" && scheme != "postgres" {
            return Err(bad("its scheme is not postgresql://"));
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
        if let Some(at) = authority.rfind('@')
            && authority[..at].contains(':')
        {
            return Err(DbError::PasswordInUrl);
        }
        if let Some(q) = query {
            for pair in q.split('&') {
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                match key {
                    "password" => return Err(DbError::PasswordInUrl),
                    "dbname" => {
                        return Err(bad(
                            "it sets dbname in the parameters; put the database name in the path",
                        ));
                    }
                    _ => {}
                }
            }
        }
        if path.is_empty() {
            return Err(bad("it names no database (add /dbname after host:port)"));
        }
        let database = percent_decode(path)
            .ok_or_else(|| bad("its database name is not valid percent-encoded UTF-8"))?;
        Ok(PgUrl {
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            query: query.map(str::to_string),
            database,
        })
    }

    /// The same server, user and parameters, another database.
    pub fn with_database(&self, database: &str) -> PgUrl {
        PgUrl {
            database: database.to_string(),
            ..self.clone()
        }
    }

    /// The URL as a string (it never contains a password).
    pub fn as_string(&self) -> String {
        let mut s = format!(
            "{}://{}/{}",
            self.scheme,
            self.authority,
            percent_encode(&self.database)
        );
        if let Some(q) = &self.query {
            s.push('?');
            s.push_str(q);
        }
        s
    }
}

/// Decodes `%XX` escapes; `None` when an escape is cut short or not hex, or the result
/// is not UTF-8 (a URL with such a name is refused, not guessed at).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let well_formed = b.iter().enumerate().all(|(i, &c)| {
        c != b'%' || (b.get(i + 1..i + 3)).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Everything but RFC 3986's unreserved characters is escaped.
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, ESCAPED).to_string()
}

/// The password from `password_file` (first line, trimmed), else PGPASSWORD, else none
/// (trust, peer or ~/.pgpass).
pub fn password(cfg: &DbConfig) -> Result<Option<Secret>, DbError> {
    if let Some(path) = &cfg.password_file {
        let text = std::fs::read_to_string(path).map_err(|source| DbError::PasswordFile {
            path: path.clone(),
            source,
        })?;
        let first = text.lines().next().unwrap_or("").trim();
        if first.is_empty() {
            return Err(DbError::PasswordFile {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "its first line is empty",
                ),
            });
        }
        return Ok(Some(Secret(first.to_string())));
    }
    Ok(std::env::var("PGPASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
        .map(Secret))
}

/// The parsed URL and the password: everything needed to reach the server.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: PgUrl,
    pub password: Option<Secret>,
    pub app_name: String,
}

impl Target {
    pub fn from_config(cfg: &DbConfig, app_name: &str) -> Result<Target, DbError> {
        Ok(Target {
            url: PgUrl::parse(&cfg.url)?,
            password: password(cfg)?,
            app_name: app_name.to_string(),
        })
    }

    /// A connection to `database` on the same server.
    pub async fn connect(&self, database: &str) -> Result<Client, DbError> {
        let url = self.url.with_database(database).as_string();
        let err = |detail: String| DbError::Connect {
            database: database.to_string(),
            detail,
        };
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| err(pg_detail(&e)))?;
        if let Some(p) = &self.password {
            config.password(p.expose());
        }
        config.application_name(&self.app_name);
        config.connect_timeout(Duration::from_secs(10));
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| err(pg_detail(&e)))?;
        tokio::spawn(async move {
            // The connection ends when the client is dropped; its error, if any, shows up
            // on the client's next query.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// `program args...` with the password in PGPASSWORD only. Children are killed when
    /// their future is dropped, so callers can time them out.
    pub fn command(&self, program: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(program);
        c.env_remove("PGPASSWORD");
        if let Some(p) = &self.password {
            c.env("PGPASSWORD", p.expose());
        }
        c.env("PGAPPNAME", &self.app_name);
        c.env("PGCONNECT_TIMEOUT", "10");
        c.stdin(std::process::Stdio::null());
        c.kill_on_drop(true);
        c
    }
}

/// Where PostgreSQL's client programs are: `pg_bin_dir` when set, else the Debian
/// directory of the server's major version when it exists, else PATH.
pub fn tool(cfg_dir: Option<&Path>, server_version_num: Option<i32>, name: &str) -> PathBuf {
    if let Some(dir) = cfg_dir {
        return dir.join(name);
    }
    if let Some(num) = server_version_num {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{}/bin/{name}", num / 10_000));
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// The newest installed version of `name` (a newer pg_restore reads older archives),
/// else PATH.
pub fn newest_tool(name: &str) -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let major = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let p = e.path().join("bin").join(name);
                    p.exists().then_some((major, p))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map_or_else(|| PathBuf::from(name), |(_, p)| p)
}

/// `ident` quoted as a PostgreSQL identifier: always in double quotes, inner double
/// quotes doubled.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_escaped_and_unescaped_exactly() {
        for name in ["my db", "ü/ß%?#", "plain-name_1.~"] {
            assert_eq!(percent_decode(&percent_encode(name)).as_deref(), Some(name));
        }
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
        assert_eq!(percent_encode("plain-name_1.~"), "plain-name_1.~");
        // Cut short, not hex, or not UTF-8: refused rather than guessed at.
        for bad in ["a%2", "%zz", "%", "%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    fn cfg(url: &str) -> DbConfig {
        DbConfig {
            url: url.to_string(),
            password_file: None,
            backup_dir: PathBuf::from("/nonexistent"),
            keep: 3,
            checks: vec![],
            pg_bin_dir: None,
        }
    }

    #[test]
    fn parses_and_rebuilds_urls() {
        let u = PgUrl::parse("postgresql://app@db.internal:5433/shop").unwrap();
        assert_eq!(u.database, "shop");
        assert_eq!(u.as_string(), "postgresql://app@db.internal:5433/shop");
        assert_eq!(
            u.with_database("postgres").as_string(),
            "postgresql://app@db.internal:5433/postgres"
        );
        let s = PgUrl::parse("postgres://app@/my%20db?host=/run/pg&sslmode=disable").unwrap();
        assert_eq!(s.database, "my db");
        assert_eq!(
            s.with_database("my db_restore_1").as_string(),
            "postgres://app@/my%20db_restore_1?host=/run/pg&sslmode=disable"
        );
    }

    #[test]
    fn rejects_passwords_and_bad_urls() {
        for url in [
            "postgresql://app:hunter2@h:5432/shop",
            "postgresql://app:@h:5432/shop",
            "postgresql://app@h:5432/shop?password=hunter2",
            "postgresql://app@h/shop?sslmode=disable&password=x",
        ] {
            let e = PgUrl::parse(url).unwrap_err();
            assert!(matches!(e, DbError::PasswordInUrl), "{url}: {e}");
            assert!(!e.to_string().contains("hunter2"));
            assert!(e.to_string().contains("password_file"));
        }
        for url in [
            "mysql://a@h/x",
            "postgresql://a@h:5432",
            "postgresql://a@h:5432/",
            "postgresql://a@h/x?dbname=y",
            "shop",
        ] {
            assert!(
                matches!(PgUrl::parse(url), Err(DbError::BadUrl { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("My DB"), "\"My DB\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("x\"; DROP DATABASE y; --"),
            "\"x\"\"; DROP DATABASE y; --\""
        );
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn password_comes_from_the_file_and_stays_out_of_argv() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "  s3cret-Pa55  \nsecond line\n").unwrap();
        let mut c = cfg("postgresql://app@127.0.0.1:5432/shop");
        c.password_file = Some(pw);
        let t = Target::from_config(&c, "ripcord-test").unwrap();
        assert_eq!(t.password.as_ref().unwrap().expose(), "s3cret-Pa55");
        assert!(!format!("{t:?}").contains("s3cret"));

        let cmd =
            super::super::backup::pg_dump_command(&t, Path::new("pg_dump"), Path::new("/b/x.tmp"));
        let cmd = cmd.as_std();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.iter().all(|a| !a.contains("s3cret")), "{args:?}");
        assert!(args.contains(&"--dbname=postgresql://app@127.0.0.1:5432/shop".to_string()));
        let env: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert!(env.contains(&("PGPASSWORD".to_string(), Some("s3cret-Pa55".to_string()))));

        let mut empty = c.clone();
        let pw2 = dir.path().join("empty");
        std::fs::write(&pw2, "\n").unwrap();
        empty.password_file = Some(pw2);
        assert!(matches!(
            password(&empty),
            Err(DbError::PasswordFile { .. })
        ));
        empty.password_file = Some(dir.path().join("missing"));
        assert!(matches!(
            password(&empty),
            Err(DbError::PasswordFile { .. })
        ));
    }

    #[test]
    fn picks_tools() {
        assert_eq!(
            tool(Some(Path::new("/opt/pg/bin")), Some(150004), "pg_dump"),
            PathBuf::from("/opt/pg/bin/pg_dump")
        );
        assert_eq!(
            tool(None, Some(9_990_000), "pg_dump"),
            PathBuf::from("pg_dump")
        );
    }
}
