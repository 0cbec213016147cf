//! Postgres for tests: a database of the test's own on the local server
//! (`scripts/ensure-postgres.sh` starts one where none runs; `IMKS_TEST_PG_URL` points
//! elsewhere), a server of the test's own that it may kill ([`PrivatePg`]), and the Postgres
//! store run on a sidecar thread of the test's own. A test fails, never skips, when Postgres
//! cannot be reached.

use std::path::{Path, PathBuf};
use std::process::Command;
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
        strings(&self.url(), sql)
    }

    /// A count query's answer.
    pub fn count(&self, sql: &str) -> i64 {
        count(&self.url(), sql)
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

/// Rows of a one-column query on the database at `url`, as text.
pub fn strings(url: &str, sql: &str) -> Vec<String> {
    let sql = sql.to_string();
    migrate::blocking(url, Duration::from_secs(5), async move |c| {
        Ok(c.query(&sql, &[]).await?.iter().map(|r| r.get::<_, String>(0)).collect())
    })
    .expect("the query runs")
}

/// A count query's answer on the database at `url`.
pub fn count(url: &str, sql: &str) -> i64 {
    let sql = sql.to_string();
    migrate::blocking(url, Duration::from_secs(5), async move |c| Ok(c.query_one(&sql, &[]).await?.get::<_, i64>(0)))
        .expect("the query runs")
}

/// A Postgres server of the test's own, in a temporary data directory, on a free port of
/// 127.0.0.1 with trust authentication: a test may kill it and start it again without touching
/// the shared server. Stopped and deleted when dropped.
///
/// Run as root, its programs run as the `postgres` OS user (`runuser`), since Postgres refuses
/// to run as root; otherwise they run as the current user. The programs are found through
/// `pg_config --bindir`, else in `/usr/lib/postgresql/*/bin`.
pub struct PrivatePg {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

impl PrivatePg {
    /// Creates the cluster (`initdb`) and starts the server; returns once it accepts
    /// connections.
    pub fn start() -> Self {
        let bin = pg_bin_dir();
        let dir = std::env::temp_dir().join(format!("imks-pg-{}-{:x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir(&dir).expect("a temporary data directory");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            let chown = Command::new("chown").arg("postgres:postgres").arg(&dir).status().expect("chown runs");
            assert!(chown.success(), "cannot give {} to the postgres user", dir.display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let pg = PrivatePg { dir, port, bin, as_postgres };
        let data = pg.dir.to_string_lossy().into_owned();
        pg.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]);
        pg.restart();
        pg
    }

    /// The `postgres` database of this server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`: every server process quits at
    /// once, without a checkpoint, as in a crash); returns once it is gone.
    pub fn kill(&self) {
        let data = self.dir.to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &data, "stop", "-m", "immediate", "-w"]);
    }

    /// Starts the server (again, after [`PrivatePg::kill`]: with crash recovery) on the same
    /// port; returns once it accepts connections.
    pub fn restart(&self) {
        let data = self.dir.to_string_lossy().into_owned();
        let options = format!("-p {} -k {data} -c listen_addresses=127.0.0.1", self.port);
        let log = self.dir.join("log").to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &data, "-o", &options, "-l", &log, "start", "-w", "-t", "60"]);
    }

    /// Runs one of the server's programs and fails the test, with its output and the server's
    /// log, when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd.args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            panic!(
                "{program} {args:?} failed ({}):\n{}{}\nserver log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.to_string_lossy().into_owned();
        let path = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        // Stopped already after a kill: pg_ctl then fails, which is fine here.
        let _ = cmd.args(["-D", &data, "stop", "-m", "immediate", "-w"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `initdb` and `pg_ctl` are: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin` that has them.
fn pg_bin_dir() -> PathBuf {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| has_tools(d))
        .collect();
    found.sort_by_key(|d| d.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()?.parse::<u32>().ok()));
    found.pop().unwrap_or_else(|| {
        panic!("no Postgres server programs (initdb, pg_ctl): neither `pg_config --bindir` nor /usr/lib/postgresql/*/bin has them")
    })
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

/// A transaction held open on a connection of its own until dropped: for a test that makes the
/// node wait on a lock.
pub struct HeldLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HeldLock {
    /// Runs `sql` (a `LOCK TABLE …` or `SELECT … FOR UPDATE`) in a transaction and returns once
    /// it holds.
    pub fn take(url: &str, sql: &str) -> Self {
        let (url, sql) = (url.to_string(), sql.to_string());
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            migrate::blocking(&url, Duration::from_secs(5), async move |c| {
                c.batch_execute("BEGIN").await?;
                c.batch_execute(&sql).await?;
                let _ = held_tx.send(());
                // Released when the test drops the lock (or ends).
                let _ = tokio::task::spawn_blocking(move || release_rx.recv()).await;
                c.batch_execute("COMMIT").await?;
                Ok(())
            })
            .expect("the lock is taken and released");
        });
        held_rx.recv_timeout(Duration::from_secs(10)).expect("the lock is held");
        Self { release: Some(release), thread: Some(thread) }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        self.release.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP proxy in front of the local Postgres server that can lose one answer: after
/// [`CuttingProxy::cut_next_answer`], the next bytes the server sends on any connection are
/// dropped and that connection is closed, as when a network fails after the server has
/// committed but before the client hears of it.
pub struct CuttingProxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CuttingProxy {
    pub fn start() -> Self {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the proxy");
        let port = listener.local_addr().expect("its address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (c, n) = (cut.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect("127.0.0.1:5432") else { continue };
                let (mut c_in, mut s_out) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(k) = c_in.read(&mut buf) {
                        if k == 0 || s_out.write_all(&buf[..k]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Both);
                });
                let (mut s_in, mut c_out, cut, cuts) = (server, client, c.clone(), n.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(k) = s_in.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        if cut.swap(false, Ordering::SeqCst) {
                            cuts.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if c_out.write_all(&buf[..k]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = s_in.shutdown(Shutdown::Both);
                });
            }
        });
        Self { port, cut, cuts }
    }

    /// The URL of `db` through the proxy.
    pub fn url(&self, db: &TestDb) -> String {
        db.url().replace("127.0.0.1:5432", &format!("127.0.0.1:{}", self.port))
    }

    pub fn cut_next_answer(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answers lost so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}
