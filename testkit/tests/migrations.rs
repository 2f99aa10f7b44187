//! Every migration is reversible: up, down to nothing, and up again.

use assay_testkit::TestDatabase;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::MigrationHarness;

#[derive(QueryableByName)]
struct Table {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

async fn tables(url: &str) -> Vec<String> {
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query(
        "SELECT table_name AS name FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations' ORDER BY 1",
    )
    .load::<Table>(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .map(|table| table.name)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_go_down_and_up_again() {
    let database = TestDatabase::create().await.unwrap();
    let migrated = tables(&database.url).await;
    assert!(
        migrated.contains(&"evaluation_results".to_owned()),
        "{migrated:?}"
    );

    let conn = AsyncPgConnection::establish(&database.url).await.unwrap();
    let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
    let reverted = harness
        .revert_all_migrations(assay_core::db::MIGRATIONS)
        .unwrap();
    assert!(!reverted.is_empty());
    assert_eq!(
        tables(&database.url).await,
        Vec::<String>::new(),
        "down.sql removes everything up.sql made"
    );

    harness
        .run_pending_migrations(assay_core::db::MIGRATIONS)
        .unwrap();
    assert_eq!(tables(&database.url).await, migrated);
}

#[tokio::test(flavor = "multi_thread")]
async fn events_cannot_be_rewritten() {
    let database = TestDatabase::create().await.unwrap();
    let mut conn = AsyncPgConnection::establish(&database.url).await.unwrap();
    for statement in [
        "INSERT INTO tenants (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 't')",
        "INSERT INTO events (tenant_id, actor, action, resource_type, resource_id)
         VALUES ('00000000-0000-0000-0000-000000000001', 'system', 'x', 'tenant', '00000000-0000-0000-0000-000000000001')",
    ] {
        diesel::sql_query(statement).execute(&mut conn).await.unwrap();
    }
    let inserted = diesel::sql_query("SELECT action AS name FROM events")
        .load::<Table>(&mut conn)
        .await
        .unwrap();
    assert_eq!(inserted.len(), 1);
    let update = diesel::sql_query("UPDATE events SET action = 'y'")
        .execute(&mut conn)
        .await;
    assert!(update.unwrap_err().to_string().contains("immutable"));
    let delete = diesel::sql_query("DELETE FROM events")
        .execute(&mut conn)
        .await;
    assert!(delete.is_err(), "events are append-only");
}

/// Drops a database by name when dropped, also when the test fails midway.
struct DropDatabase {
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let name = self.name.replace('"', "\"\"");
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let mut conn = AsyncPgConnection::establish(ADMIN).await?;
                    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut conn)
                        .await?;
                    anyhow::Ok(())
                })
        })
        .join();
    }
}

const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::Int8)]
    count: i64,
}

async fn database_exists(name: &str) -> bool {
    let mut conn = AsyncPgConnection::establish(ADMIN).await.unwrap();
    diesel::sql_query("SELECT count(*) AS count FROM pg_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .count
        == 1
}

/// Runs `assay-api migrate` against `database_url`; its exit status and stderr.
fn migrate(database_url: &str, backtrace: Option<&str>) -> (bool, String) {
    let mut command = std::process::Command::new(assay_testkit::binary("assay-api"));
    command
        .arg("migrate")
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE");
    if let Some(value) = backtrace {
        command.env("RUST_BACKTRACE", value);
    }
    let output = command.output().expect("assay-api runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_creates_a_missing_database() {
    // Mixed case and a hyphen: the name must be quoted as an identifier.
    let name = format!("assay_Migrate-{}", uuid::Uuid::new_v4().simple());
    let _cleanup = DropDatabase { name: name.clone() };
    assert!(!database_exists(&name).await);
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");

    let (ok, stderr) = migrate(&url, None);
    assert!(ok, "migrate failed: {stderr}");
    assert!(database_exists(&name).await, "{name} was not created");
    let created = tables(&url).await;
    assert!(
        created.contains(&"evaluation_results".to_owned()),
        "{created:?}"
    );

    // Again: the database exists, nothing to do, still a success.
    let (ok, stderr) = migrate(&url, None);
    assert!(ok, "a second migrate failed: {stderr}");
    assert_eq!(tables(&url).await, created);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_binary_prints_one_line_unless_a_backtrace_is_asked_for() {
    // Nothing listens on port 1.
    let url = "postgres://postgres:secret@127.0.0.1:1/assay";
    let (ok, stderr) = migrate(url, None);
    assert!(!ok);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains("127.0.0.1:1"),
        "names the server: {stderr}"
    );
    assert!(!lines[0].contains("secret"), "no password: {stderr}");
    assert!(
        !stderr.contains("Caused by") && !stderr.contains("Backtrace"),
        "{stderr}"
    );

    let (ok, stderr) = migrate(url, Some("1"));
    assert!(!ok);
    assert!(stderr.lines().count() > 1, "more when asked for:\n{stderr}");
}

/// A malformed setting stops either binary at start with one line naming the
/// variable and its value (before, `ASSAY_CHUNK_RUNS=lots` ran silently on
/// the default), and no URL password reaches the output.
#[test]
fn a_malformed_setting_stops_the_process_naming_it() {
    let cases = [
        ("assay-api", vec!["migrate"], "ASSAY_CHUNK_RUNS", "lots"),
        (
            "assay-api",
            vec!["migrate"],
            "ASSAY_RATE_READS_PER_MINUTE",
            "-5",
        ),
        ("assay-api", vec!["migrate"], "ASSAY_BODY_TIMEOUT", "soon"),
        ("assay-worker", vec![], "ASSAY_DATABASE_POOL_SIZE", "0"),
    ];
    for (binary, args, name, value) in cases {
        let output = std::process::Command::new(assay_testkit::binary(binary))
            .args(&args)
            .env(name, value)
            // Unreachable, so that a process that ignored the setting fails
            // anyway; its password must not be printed either way.
            .env(
                "DATABASE_URL",
                "postgres://postgres:hunter2@127.0.0.1:1/assay",
            )
            .env("REDIS_URL", "redis://:hunter2@127.0.0.1:1")
            .env("RUST_LOG", "warn")
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{binary} {name}={value}: {stderr}"
        );
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "{binary}: one line, got:\n{stderr}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(&format!("{name}=\"{value}\"")),
            "{binary} names {name}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}
