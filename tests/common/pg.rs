//! Postgres for tests: a database of the test's own on the local server
//! (`scripts/ensure-postgres.sh` starts one where none runs; `IMKS_TEST_PG_URL` points
//! elsewhere), and the Postgres store run on a sidecar thread of the test's own. A test fails,
//! never skips, when Postgres cannot be reached.

use std::thread::JoinHandle;
use std::time::Duration;

use imks::sidecar::{self, SidecarLink};
use imks::store::migrate::{self, MigrateError, MIGRATIONS};
use imks::store::postgres::{self, PgHandle, PgStore};
use imks::store::{StoreBackend, StoreConfig};

/// The server's maintenance database, where test databases are created.
pub fn admin_url() -> String {
    std::env::var("IMKS_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// Runs `sql` on the maintenance database.
pub fn admin(sql: &str) -> Result<(), MigrateError> {
    let sql = sql.to_string();
    migrate::blocking(&admin_url(), Duration::from_secs(5), async move |c| Ok(c.batch_execute(&sql).await?))
}

/// A database of the test's own; dropped when it goes out of scope.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn new() -> Self {
        let name = format!("imks_test_{}_{:x}", std::process::id(), rand::random::<u32>());
        admin(&format!("CREATE DATABASE {name}")).unwrap_or_else(|e| {
            panic!("Postgres is not reachable at {} ({e}); scripts/ensure-postgres.sh starts one", admin_url())
        });
        Self { name }
    }

    /// A new database with every migration applied.
    pub fn migrated() -> Self {
        let db = Self::new();
        migrate::blocking(&db.url(), Duration::from_secs(5), async |c| migrate::run(c, MIGRATIONS).await)
            .expect("migrations apply");
        db
    }

    pub fn url(&self) -> String {
        let admin = admin_url();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_string();
        format!("{base}/{}", self.name)
    }

    /// Rows of a one-column query, as text.
    pub fn strings(&self, sql: &str) -> Vec<String> {
        let sql = sql.to_string();
        migrate::blocking(&self.url(), Duration::from_secs(5), async move |c| {
            Ok(c.query(&sql, &[]).await?.iter().map(|r| r.get::<_, String>(0)).collect())
        })
        .expect("the query runs")
    }

    /// A count query's answer.
    pub fn count(&self, sql: &str) -> i64 {
        let sql = sql.to_string();
        migrate::blocking(&self.url(), Duration::from_secs(5), async move |c| {
            Ok(c.query_one(&sql, &[]).await?.get::<_, i64>(0))
        })
        .expect("the query runs")
    }

    /// A `[store]` on this database with the Postgres backend.
    pub fn store_config(&self) -> StoreConfig {
        let mut cfg = StoreConfig { backend: StoreBackend::Postgres, ..Default::default() };
        cfg.postgres.url = self.url();
        cfg
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = admin(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// The Postgres store running on a sidecar thread of its own, as a node runs it.
pub struct PgRun {
    handle: Option<PgHandle>,
    links: Vec<SidecarLink>,
    thread: Option<JoinHandle<()>>,
}

impl PgRun {
    pub fn start(cfg: &StoreConfig) -> Self {
        let (service, handle) = postgres::build(cfg);
        let (thread, links) =
            sidecar::spawn(1, 64, vec![Box::new(service)], Duration::from_secs(10)).expect("the sidecar starts");
        Self { handle: Some(handle), links, thread: Some(thread) }
    }

    /// A shard's store (one per thread that uses it).
    pub fn store(&self) -> PgStore {
        self.handle.as_ref().expect("running").store()
    }

    pub fn handle(&self) -> &PgHandle {
        self.handle.as_ref().expect("running")
    }

    /// Lets go of the store and waits for the sidecar to commit what is queued and stop.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.handle = None;
        self.links.clear();
        if let Some(t) = self.thread.take() {
            t.join().expect("the sidecar thread ends cleanly");
        }
    }
}

impl Drop for PgRun {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs a store future (memory or Postgres) to completion on this thread.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime").block_on(f)
}
