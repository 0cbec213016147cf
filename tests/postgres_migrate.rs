//! The Postgres store's migrations against the real server (`scripts/ensure-postgres.sh` starts
//! one where none runs; `IMKS_TEST_PG_URL` points elsewhere). Each test gets a database of its
//! own, dropped at the end. A test fails, never skips, when Postgres cannot be reached.

use std::process::Command;
use std::time::Duration;

use imks::store::migrate::{self, MigrateError, Migration, State, MIGRATIONS};

/// The server's maintenance database, where test databases are created.
fn admin_url() -> String {
    std::env::var("IMKS_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// A database of the test's own; dropped when it goes out of scope.
struct TestDb {
    name: String,
}

impl TestDb {
    fn new() -> Self {
        let name = format!("imks_test_{}_{:x}", std::process::id(), rand::random::<u32>());
        let sql = format!("CREATE DATABASE {name}");
        admin(&sql).unwrap_or_else(|e| {
            panic!("Postgres is not reachable at {} ({e}); scripts/ensure-postgres.sh starts one", admin_url())
        });
        Self { name }
    }

    fn url(&self) -> String {
        let admin = admin_url();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_string();
        format!("{base}/{}", self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = admin(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn admin(sql: &str) -> Result<(), MigrateError> {
    let sql = sql.to_string();
    migrate::blocking(&admin_url(), Duration::from_secs(5), async move |c| Ok(c.batch_execute(&sql).await?))
}

fn run(url: &str, migrations: &'static [Migration]) -> Result<Vec<i32>, MigrateError> {
    migrate::blocking(url, Duration::from_secs(5), async |c| migrate::run(c, migrations).await)
}

fn query_strings(url: &str, sql: &'static str) -> Vec<String> {
    migrate::blocking(url, Duration::from_secs(5), async |c| {
        Ok(c.query(sql, &[]).await?.iter().map(|r| r.get::<_, String>(0)).collect())
    })
    .expect("the query runs")
}

#[test]
fn applies_every_migration_once_and_then_finds_nothing_to_do() {
    let db = TestDb::new();
    let status = migrate::blocking(&db.url(), Duration::from_secs(5), async |c| migrate::status(c, MIGRATIONS).await)
        .expect("status of an empty database");
    assert!(status.iter().all(|s| s.state == State::Pending), "{status:?}");

    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(run(&db.url(), MIGRATIONS).expect("migrates"), all);
    assert_eq!(run(&db.url(), MIGRATIONS).expect("migrates again"), Vec::<i32>::new(), "nothing twice");

    let tables = query_strings(
        &db.url(),
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    );
    for t in ["imks_migration", "message", "message_edit", "message_offline", "message_reaction", "message_read_state"]
    {
        assert!(tables.iter().any(|x| x == t), "{t} in {tables:?}");
    }
    let status = migrate::blocking(&db.url(), Duration::from_secs(5), async |c| migrate::status(c, MIGRATIONS).await)
        .expect("status");
    assert!(status.iter().all(|s| matches!(s.state, State::Applied { .. })), "{status:?}");
}

#[test]
fn the_schema_deduplicates_retries_and_keeps_one_read_pointer_per_reader() {
    let db = TestDb::new();
    run(&db.url(), MIGRATIONS).expect("migrates");
    let outcome = migrate::blocking(&db.url(), Duration::from_secs(5), async |c| {
        let insert = "INSERT INTO message (id, conversation, tenant, author, target_kind, target, client_msg_id, \
                      body, content_type, seq, created_at) \
                      VALUES (gen_random_uuid(), 'room:t:r', 't', 'alice', 'room', 'r', 'm-1', 'hi', 'text/plain', \
                      $1, now()) ON CONFLICT (tenant, author, client_msg_id) WHERE client_msg_id IS NOT NULL \
                      DO NOTHING";
        let first = c.execute(insert, &[&1i64]).await?;
        let retry = c.execute(insert, &[&2i64]).await?;
        let read = "INSERT INTO message_read_state (conversation, tenant, user_id, last_read_seq, updated_at) \
                    VALUES ('room:t:r', 't', 'bob', $1, now()) ON CONFLICT (conversation, user_id) \
                    DO UPDATE SET last_read_seq = GREATEST(message_read_state.last_read_seq, EXCLUDED.last_read_seq)";
        c.execute(read, &[&3i64]).await?;
        c.execute(read, &[&1i64]).await?;
        let pointer: i64 = c.query_one("SELECT last_read_seq FROM message_read_state", &[]).await?.get(0);
        let rows: i64 = c.query_one("SELECT count(*) FROM message_read_state", &[]).await?.get(0);
        Ok((first, retry, pointer, rows))
    })
    .expect("the statements run");
    assert_eq!(outcome, (1, 0, 3, 1), "a retry stores nothing; the pointer only moves forward, in one row");
}

/// A first version of migration 1, and the same version with other contents.
static ORIGINAL: &[Migration] = &[Migration { version: 1, name: "first", sql: "CREATE TABLE a (x int);" }];
static EDITED: &[Migration] = &[Migration { version: 1, name: "first", sql: "CREATE TABLE a (x bigint);" }];
static NEWER: &[Migration] = &[
    Migration { version: 1, name: "first", sql: "CREATE TABLE a (x int);" },
    Migration { version: 2, name: "second", sql: "CREATE TABLE b (y int);" },
];
static BROKEN: &[Migration] = &[
    Migration { version: 1, name: "first", sql: "CREATE TABLE a (x int);" },
    Migration { version: 2, name: "broken", sql: "CREATE TABLE half (y int); SELECT no_such_column FROM a;" },
];

#[test]
fn a_migration_changed_after_it_was_applied_is_refused() {
    let db = TestDb::new();
    run(&db.url(), ORIGINAL).expect("migrates");
    let err = run(&db.url(), EDITED).expect_err("a changed file is refused");
    assert!(matches!(err, MigrateError::Changed { version: 1, .. }), "{err}");
    assert!(err.to_string().contains("add a new one instead"), "{err}");
}

#[test]
fn a_database_migrated_by_a_newer_imks_is_refused() {
    let db = TestDb::new();
    run(&db.url(), NEWER).expect("the newer binary migrates");
    let err = run(&db.url(), ORIGINAL).expect_err("the older binary refuses");
    assert!(matches!(err, MigrateError::Unknown { version: 2, .. }), "{err}");
}

#[test]
fn a_failing_migration_leaves_nothing_behind() {
    let db = TestDb::new();
    let err = run(&db.url(), BROKEN).expect_err("migration 2 fails");
    assert!(matches!(err, MigrateError::Apply { version: 2, .. }), "{err}");
    let tables = query_strings(
        &db.url(),
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    );
    assert!(tables.iter().any(|t| t == "a"), "migration 1 stays applied: {tables:?}");
    assert!(!tables.iter().any(|t| t == "half"), "nothing of migration 2: {tables:?}");
    let versions = query_strings(&db.url(), "SELECT version::text FROM imks_migration ORDER BY version");
    assert_eq!(versions, ["1"]);
}

#[test]
fn nodes_migrating_at_once_apply_each_migration_once() {
    let db = TestDb::new();
    let url = db.url();
    let runners: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || run(&url, MIGRATIONS))
        })
        .collect();
    let mut applied: Vec<i32> = Vec::new();
    for r in runners {
        applied.extend(r.join().expect("the runner thread").expect("every runner succeeds"));
    }
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(applied, all, "each migration applied by exactly one runner");
}

#[test]
fn imks_migrate_applies_and_lists() {
    let db = TestDb::new();
    let imks = env!("CARGO_BIN_EXE_imks");
    let cmd = |args: &[&str]| {
        let out = Command::new(imks)
            .args(args)
            .env("IMKS_STORE__POSTGRES__URL", db.url())
            .env("IMKS_LOG__LEVEL", "warn")
            .output()
            .expect("imks runs");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, out) = cmd(&["migrate", "--status"]);
    assert!(ok && out.contains("0001 messages") && out.contains("pending"), "{out}");
    let (ok, out) = cmd(&["migrate"]);
    assert!(ok && out.contains("applied [1, 2]"), "{out}");
    let (ok, out) = cmd(&["migrate"]);
    assert!(ok && out.contains("up to date"), "{out}");
    let (ok, out) = cmd(&["migrate", "--status"]);
    assert!(
        ok && out.contains("0001 messages") && out.contains("0002 store_writer") && out.contains("applied 20"),
        "{out}"
    );

    let out = Command::new(imks)
        .args(["migrate"])
        .env("IMKS_STORE__POSTGRES__URL", "postgres://postgres:s3cret@127.0.0.1:1/nowhere")
        .output()
        .expect("imks runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no server, no success");
    assert!(err.contains("postgres://postgres:***@127.0.0.1:1/nowhere") && !err.contains("s3cret"), "{err}");
}

#[test]
fn a_server_that_never_answers_fails_at_the_connect_timeout() {
    // Accepts connections (the kernel completes the handshake) but never speaks Postgres.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let url = format!("postgres://postgres@{}/imks", silent.local_addr().expect("its address"));
    let started = std::time::Instant::now();
    let err = migrate::blocking(&url, Duration::from_millis(300), async |c| migrate::run(c, MIGRATIONS).await)
        .expect_err("nothing answers");
    assert!(matches!(err, MigrateError::Timeout { .. }), "{err}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(290) && waited < Duration::from_secs(5), "{waited:?}");
    drop(silent);
}
