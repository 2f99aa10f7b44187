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

/// Everything the migrations make in the public schema, one line per
/// object, in a stable order: columns (type, nullability, default),
/// constraints (primary keys, unique, foreign keys, checks, exclusions),
/// indexes, triggers, functions, views, sequences and types. Diesel's own
/// bookkeeping table is left out.
async fn schema(url: &str) -> Vec<String> {
    const OURS: &str = "n.nspname = 'public' AND c.relname <> '__diesel_schema_migrations'";
    let queries = [
        format!(
            "SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                    || CASE WHEN a.attnotnull THEN ' not null' ELSE ' null' END
                    || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
                    || coalesce(' generated ' || nullif(a.attgenerated::text, ''), '')
                    || coalesce(' identity ' || nullif(a.attidentity::text, ''), '') AS name
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE {OURS} AND c.relkind IN ('r', 'p', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        format!(
            "SELECT 'constraint ' || c.relname || '.' || k.conname || ' ' || pg_get_constraintdef(k.oid) AS name
             FROM pg_constraint k
             JOIN pg_class c ON c.oid = k.conrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE {OURS}"
        ),
        "SELECT 'index ' || indexdef AS name FROM pg_indexes
         WHERE schemaname = 'public' AND tablename <> '__diesel_schema_migrations'"
            .to_owned(),
        format!(
            "SELECT 'trigger ' || pg_get_triggerdef(t.oid) AS name
             FROM pg_trigger t
             JOIN pg_class c ON c.oid = t.tgrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE {OURS} AND NOT t.tgisinternal"
        ),
        "SELECT 'function ' || pg_get_functiondef(p.oid) AS name
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' AND p.prokind IN ('f', 'p')"
            .to_owned(),
        "SELECT 'view ' || viewname || ' ' || definition AS name FROM pg_views
         WHERE schemaname = 'public'"
            .to_owned(),
        "SELECT 'sequence ' || sequencename || ' ' || data_type::text || ' ' || increment_by AS name
         FROM pg_sequences WHERE schemaname = 'public'"
            .to_owned(),
        "SELECT 'type ' || t.typname || ' ' || t.typtype::text
                || coalesce(' ' || (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                                    FROM pg_enum e WHERE e.enumtypid = t.oid), '') AS name
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd')"
            .to_owned(),
    ];
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    let mut lines = Vec::new();
    for query in queries {
        lines.extend(
            diesel::sql_query(query)
                .load::<Table>(&mut conn)
                .await
                .unwrap()
                .into_iter()
                .map(|line| line.name),
        );
    }
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_go_down_and_up_again() {
    let database = TestDatabase::create().await.unwrap();
    let migrated = schema(&database.url).await;
    // The lines name what a down.sql could forget to restore.
    for expected in [
        "column evaluation_results.status text not null",
        "constraint evaluation_results.evaluation_results_pkey PRIMARY KEY ",
        "index CREATE UNIQUE INDEX evaluation_results_pkey ON public.evaluation_results",
        "constraint evaluation_results.evaluation_results_tenant_evaluation_fkey FOREIGN KEY (tenant_id, evaluation_id)",
    ] {
        assert!(
            migrated.iter().any(|line| line.starts_with(expected)),
            "no {expected:?} in\n{}",
            migrated.join("\n")
        );
    }

    let conn = AsyncPgConnection::establish(&database.url).await.unwrap();
    let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
    let reverted: Vec<String> = harness
        .revert_all_migrations(assay_core::db::MIGRATIONS)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(!reverted.is_empty());
    assert_eq!(
        schema(&database.url).await,
        Vec::<String>::new(),
        "down.sql removes everything up.sql made"
    );

    // Up one migration at a time, noting the schema after each; the last
    // must be the schema the migrations made at once.
    let mut after_each = vec![Vec::new()];
    let mut applied = Vec::new();
    while harness
        .has_pending_migration(assay_core::db::MIGRATIONS)
        .unwrap()
    {
        applied.push(
            harness
                .run_next_migration(assay_core::db::MIGRATIONS)
                .unwrap()
                .to_string(),
        );
        after_each.push(schema(&database.url).await);
    }
    assert_eq!(applied.len(), reverted.len());
    assert_same_schema(
        after_each.last().unwrap(),
        &migrated,
        "all migrations, one at a time",
    );

    // Down one at a time: each down.sql restores exactly the schema before
    // its up.sql (going down to nothing at once would hide a down.sql that
    // forgets a primary key an earlier up.sql made, as the earlier down.sql
    // drops the whole table anyway).
    for (index, version) in applied.iter().enumerate().rev() {
        let undone = harness
            .revert_last_migration(assay_core::db::MIGRATIONS)
            .unwrap()
            .to_string();
        assert_eq!(&undone, version);
        assert_same_schema(
            &schema(&database.url).await,
            &after_each[index],
            &format!("after the down.sql of {version}"),
        );
    }

    harness
        .run_pending_migrations(assay_core::db::MIGRATIONS)
        .unwrap();
    assert_same_schema(&schema(&database.url).await, &migrated, "down and up again");
}

/// Fails naming the lines of `expected` missing from `actual`, and extra ones.
fn assert_same_schema(actual: &[String], expected: &[String], when: &str) {
    let missing: Vec<&String> = expected
        .iter()
        .filter(|line| !actual.contains(line))
        .collect();
    let extra: Vec<&String> = actual
        .iter()
        .filter(|line| !expected.contains(line))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{when}: the schema differs\nmissing: {missing:#?}\nextra: {extra:#?}"
    );
    assert_eq!(actual, expected, "{when}");
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

/// The values a CHECK constraint on `table.status` allows.
async fn allowed_statuses(conn: &mut AsyncPgConnection, table: &str) -> Vec<String> {
    let definitions = diesel::sql_query(
        "SELECT pg_get_constraintdef(k.oid) AS name FROM pg_constraint k
         JOIN pg_class c ON c.oid = k.conrelid
         WHERE c.relname = $1 AND k.contype = 'c'
           AND pg_get_constraintdef(k.oid) LIKE '%(status = ANY%'",
    )
    .bind::<diesel::sql_types::Text, _>(table)
    .load::<Table>(conn)
    .await
    .unwrap();
    assert_eq!(definitions.len(), 1, "one status CHECK on {table}");
    // `CHECK ((status = ANY (ARRAY['queued'::text, ...])))`: every quoted word.
    let mut allowed: Vec<String> = definitions[0]
        .name
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    allowed.sort();
    allowed
}

/// The state enums and the database agree: a state added to one and not
/// the other fails here, not at the first row that holds it.
#[tokio::test(flavor = "multi_thread")]
async fn the_state_enums_are_exactly_what_the_database_allows() {
    use assay_core::db::models::states::{ChunkStatus, EvaluationStatus};
    let database = TestDatabase::create().await.unwrap();
    let mut conn = AsyncPgConnection::establish(&database.url).await.unwrap();
    let spelled = |states: &mut dyn Iterator<Item = &'static str>| {
        let mut states: Vec<String> = states.map(str::to_owned).collect();
        states.sort();
        states
    };
    assert_eq!(
        allowed_statuses(&mut conn, "evaluations").await,
        spelled(&mut EvaluationStatus::ALL.iter().map(|state| state.as_str()))
    );
    assert_eq!(
        allowed_statuses(&mut conn, "evaluation_chunks").await,
        spelled(&mut ChunkStatus::ALL.iter().map(|state| state.as_str()))
    );
}
