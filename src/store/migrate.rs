//! Schema migrations of the Postgres store: the plain SQL files of `migrate/`, compiled into
//! the binary, applied in order at start-up (and by `imks migrate`).
//!
//! - **One runner at a time.** The runner holds a Postgres advisory lock while it works, so two
//!   nodes starting together apply each migration once; the second waits, then finds nothing
//!   to do.
//! - **Each migration in its own transaction**, recorded in `imks_migration` in the same
//!   transaction: a migration is applied whole or not at all.
//! - **Checksummed.** The SHA-256 of each applied file is recorded; a file whose contents
//!   changed after it was applied is refused, and so is a database that has a migration this
//!   binary does not know (a newer imks migrated it). Fix forward with a new file instead.
//!
//! Why a runner of our own rather than refinery: ADR 009.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, NoTls};

/// One migration: `migrate/NNNN_name.sql`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. A new file in `migrate/` is added here too; a test checks that
/// the list and the folder agree.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "messages", sql: include_str!("../../migrate/0001_messages.sql") },
    Migration { version: 2, name: "store_writer", sql: include_str!("../../migrate/0002_store_writer.sql") },
];

/// The advisory lock the runner holds: one 64-bit key for imks's migrations in a database.
const LOCK_KEY: i64 = 0x696d_6b73_6d69_6772; // "imksmigr"

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to Postgres at {url}: {source}")]
    Connect { url: String, source: tokio_postgres::Error },
    #[error("no connection to Postgres at {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("migration {version} ({name}) failed: {source}")]
    Apply { version: i32, name: &'static str, source: tokio_postgres::Error },
    #[error("reading the applied migrations failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error(
        "migration {version} ({name}) was applied with other contents (checksum {applied}, this \
         file {file}): a migration must not change once applied; add a new one instead"
    )]
    Changed { version: i32, name: String, applied: String, file: String },
    #[error("the database has migration {version} ({name}), which this imks does not know: a newer imks migrated it")]
    Unknown { version: i32, name: String },
    #[error("cannot start a runtime for migrating: {0}")]
    Runtime(std::io::Error),
}

/// Where a migration stands in a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Applied, with the same contents as this binary's file.
    Applied { at: String },
    /// Not applied yet.
    Pending,
    /// Applied, but the file changed since; `applied` is the checksum then.
    Changed { at: String, applied: String },
    /// Applied by a newer imks: this binary has no such file.
    Unknown { at: String },
}

/// One line of `imks migrate --status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub version: i32,
    pub name: String,
    pub state: State,
}

/// The SHA-256 of a migration's text, as hex.
pub fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A Postgres URL with its password, if any, replaced by `***`, for messages and logs.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_string() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Connects to `url`, giving up after `timeout`. The connection's task runs on the current
/// tokio runtime.
pub async fn connect(url: &str, timeout: Duration) -> Result<Client, MigrateError> {
    let connecting = tokio_postgres::connect(url, NoTls);
    let (client, connection) = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(source)) => return Err(MigrateError::Connect { url: redacted(url), source }),
        Err(_) => return Err(MigrateError::Timeout { url: redacted(url), timeout }),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "Postgres connection ended");
        }
    });
    Ok(client)
}

/// Applies `migrations` that are not applied yet, in order, under the advisory lock. Returns
/// the versions it applied (none when the database was up to date).
pub async fn run(client: &mut Client, migrations: &[Migration]) -> Result<Vec<i32>, MigrateError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]).await?;
    let result = apply_pending(client, migrations).await;
    // Released on every path; a lost connection releases it too.
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]).await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn apply_pending(client: &mut Client, migrations: &[Migration]) -> Result<Vec<i32>, MigrateError> {
    // Quiet about what already exists (`CREATE ... IF NOT EXISTS` notices on every start).
    client
        .batch_execute(
            "SET client_min_messages TO warning;
             CREATE TABLE IF NOT EXISTS imks_migration (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 checksum   text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let statuses = status_of(client, migrations).await?;
    if let Some(s) = statuses.iter().find(|s| !matches!(s.state, State::Applied { .. } | State::Pending)) {
        return Err(match &s.state {
            State::Changed { applied, .. } => MigrateError::Changed {
                version: s.version,
                name: s.name.clone(),
                applied: applied.clone(),
                file: migrations.iter().find(|m| m.version == s.version).map(|m| checksum(m.sql)).unwrap_or_default(),
            },
            _ => MigrateError::Unknown { version: s.version, name: s.name.clone() },
        });
    }
    let mut applied = Vec::new();
    for m in migrations {
        if !statuses.iter().any(|s| s.version == m.version && s.state == State::Pending) {
            continue;
        }
        let apply = |source| MigrateError::Apply { version: m.version, name: m.name, source };
        let tx = client.transaction().await.map_err(apply)?;
        tx.batch_execute(m.sql).await.map_err(apply)?;
        tx.execute(
            "INSERT INTO imks_migration (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await
        .map_err(apply)?;
        tx.commit().await.map_err(apply)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        applied.push(m.version);
    }
    Ok(applied)
}

/// Where each migration stands: this binary's, then any the database has that it does not know.
pub async fn status(client: &Client, migrations: &[Migration]) -> Result<Vec<Status>, MigrateError> {
    let exists: bool = client.query_one("SELECT to_regclass('imks_migration') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(migrations
            .iter()
            .map(|m| Status { version: m.version, name: m.name.to_string(), state: State::Pending })
            .collect());
    }
    status_of(client, migrations).await
}

async fn status_of(client: &Client, migrations: &[Migration]) -> Result<Vec<Status>, MigrateError> {
    let rows = client
        .query(
            "SELECT version, name, checksum, to_char(applied_at, 'YYYY-MM-DD HH24:MI:SS TZ') \
             FROM imks_migration ORDER BY version",
            &[],
        )
        .await?;
    let applied: Vec<(i32, String, String, String)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let mut out: Vec<Status> = migrations
        .iter()
        .map(|m| {
            let state = match applied.iter().find(|a| a.0 == m.version) {
                None => State::Pending,
                Some((_, _, sum, at)) if *sum == checksum(m.sql) => State::Applied { at: at.clone() },
                Some((_, _, sum, at)) => State::Changed { at: at.clone(), applied: sum.clone() },
            };
            Status { version: m.version, name: m.name.to_string(), state }
        })
        .collect();
    for (version, name, _, at) in &applied {
        if !migrations.iter().any(|m| m.version == *version) {
            out.push(Status { version: *version, name: name.clone(), state: State::Unknown { at: at.clone() } });
        }
    }
    Ok(out)
}

/// Runs `f` with a connection to `url` on a runtime of its own, for callers outside any
/// runtime (start-up, `imks migrate`).
pub fn blocking<T>(
    url: &str,
    timeout: Duration,
    f: impl AsyncFnOnce(&mut Client) -> Result<T, MigrateError>,
) -> Result<T, MigrateError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(MigrateError::Runtime)?;
    rt.block_on(async {
        let mut client = connect(url, timeout).await?;
        f(&mut client).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_migrate_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrate");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|m| format!("{:04}_{}.sql", m.version, m.name)).collect();
        assert_eq!(files, listed);
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version), "versions ascend");
    }

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(redacted("postgres://imks:s3cret@db:5432/imks"), "postgres://imks:***@db:5432/imks");
        assert_eq!(redacted("postgres://imks@db/imks"), "postgres://imks@db/imks");
        assert_eq!(redacted("host=db user=imks"), "host=db user=imks");
    }

    #[test]
    fn checksums_are_sha256_hex() {
        assert_eq!(checksum(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_ne!(checksum("a"), checksum("a "));
    }
}
