//! Today's schema head as the runner records it: Alembic's `alembic_version` table, or
//! Django's `django_migrations` (the latest per app, as `APP.NAME`), or Rails'
//! `schema_migrations` (the newest version), read over a
//! PostgreSQL connection (the rollback guard's alternative to a `head_command`).

use tokio_postgres::error::SqlState;

use super::conn::{Target, quote_ident};
use super::error::pg_detail;
use super::{DbConfig, DbError};

/// The revision in `table` (`alembic_version` by default; `schema.table` works). With
/// several heads (branches) they are joined with `+` in sorted order. `None` when the
/// table does not exist or is empty: no migration was applied yet.
pub async fn schema_head(cfg: &DbConfig, table: &str) -> Result<Option<String>, DbError> {
    let target = Target::from_config(cfg, "ripcord migration head")?;
    let client = target.connect(&target.url.database).await?;
    let qualified = table
        .split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".");
    // Django's table lists every applied migration: the head is the latest per app, as
    // `APP.NAME` (the checker's identity for a Django migration).
    let django = table.rsplit('.').next() == Some("django_migrations");
    // Rails' table lists every applied version: the head is the newest.
    let rails = table.rsplit('.').next() == Some("schema_migrations");
    let sql = if rails {
        format!("SELECT max(version)::text FROM {qualified} HAVING count(*) > 0")
    } else if django {
        format!(
            "SELECT DISTINCT ON (app) (app || '.' || name)::text FROM {qualified} ORDER BY app, applied DESC, id DESC"
        )
    } else {
        format!("SELECT version_num::text FROM {qualified}")
    };
    match client.query(&sql, &[]).await {
        Ok(rows) => {
            let mut heads: Vec<String> = rows
                .iter()
                .filter_map(|r| r.try_get::<_, String>(0).ok())
                .collect();
            heads.sort();
            Ok((!heads.is_empty()).then(|| heads.join("+")))
        }
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(DbError::Query {
            what: format!("reading the schema head from {table}"),
            detail: pg_detail(&e),
            unchanged: "nothing was changed".to_string(),
        }),
    }
}
