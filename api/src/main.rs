//! `assay-api`: the HTTP API, its migrations and its key management.

use assay_api::startup::{ApiConfig, Application};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "assay-api", version, about = "Assay's HTTP API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API on ASSAY_BIND (default 127.0.0.1:8080).
    Serve {
        /// Apply pending migrations before serving.
        #[arg(long, env = "ASSAY_MIGRATE_ON_START")]
        migrate: bool,
    },
    /// Apply pending migrations to DATABASE_URL.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// A tenant's overrides of the request rates and quotas.
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
    },
}

#[derive(Subcommand)]
enum LimitsCommand {
    /// Print a tenant's overrides (empty: the deployment's defaults apply).
    Show {
        #[arg(long)]
        tenant: String,
    },
    /// Set some of a tenant's overrides; `0` clears one back to the default.
    Set {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        reads_per_minute: Option<i32>,
        #[arg(long)]
        read_burst: Option<i32>,
        #[arg(long)]
        writes_per_minute: Option<i32>,
        #[arg(long)]
        write_burst: Option<i32>,
        #[arg(long)]
        max_runs_per_evaluation: Option<i32>,
        #[arg(long)]
        max_active_evaluations: Option<i32>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key for a tenant (created if new) and print it once.
    Create {
        #[arg(long)]
        tenant: String,
        /// `member` (default) or `admin` (may also force protected labels).
        #[arg(long, default_value = "member", conflicts_with = "admin")]
        scope: assay_core::db::models::api_keys::KeyScope,
        /// Shorthand for `--scope admin`.
        #[arg(long)]
        admin: bool,
        /// A label for people.
        #[arg(long)]
        name: Option<String>,
        /// The key stops working after this long (e.g. `90d`); default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// List keys (never their secrets), of one tenant or of all.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key by id: every API replica refuses it from then on.
    Revoke { id: uuid::Uuid },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    assay_core::telemetry::init_logging();
    let cli = Cli::parse();
    let outcome = run(cli).await;
    assay_core::telemetry::shutdown_tracing();
    assay_core::telemetry::exit_code(outcome)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = ApiConfig::from_env()?;
    match cli.command {
        Command::Serve { migrate } => {
            if migrate {
                migrate_database(config.settings.database_url.expose()).await?;
            }
            let application = Application::build(config.clone()).await?;
            tracing::info!(bind = %config.bind, port = application.port(), "assay-api listening");
            application.run_until_stopped().await?;
        }
        Command::Migrate => migrate_database(config.settings.database_url.expose()).await?,
        Command::Keys { command } => keys(config.settings.database_url.expose(), command).await?,
        Command::Limits { command } => {
            limits(config.settings.database_url.expose(), command).await?
        }
    }
    Ok(())
}

/// Creates the database when it is missing (as `make migrate` does), then
/// applies pending migrations.
async fn migrate_database(database_url: &str) -> anyhow::Result<()> {
    if assay_core::db::create_database_if_missing(database_url).await? {
        tracing::info!("database created");
    }
    let applied = assay_core::db::run_migrations(database_url).await?;
    tracing::info!(applied = ?applied, "migrations applied");
    Ok(())
}

async fn keys(database_url: &str, command: KeysCommand) -> anyhow::Result<()> {
    use assay_core::db::models::api_keys::{self, KeyScope, NewKey};
    let pool = assay_core::db::pool(database_url, 1)?;
    let mut conn = pool.get().await?;
    match command {
        KeysCommand::Create {
            tenant,
            scope,
            admin,
            name,
            expires_in,
        } => {
            assay_core::domain::validate_name("--tenant", &tenant)?;
            if let Some(name) = &name {
                assay_core::domain::validate_name("--name", name)?;
            }
            let scope = if admin { KeyScope::Admin } else { scope };
            let expires_at = expires_in
                .map(|lifetime| {
                    anyhow::Ok(chrono::Utc::now() + chrono::Duration::from_std(lifetime)?)
                })
                .transpose()?;
            let tenant = api_keys::ensure_tenant(&mut conn, &tenant).await?;
            let (key, secret) = api_keys::create_for_tenant(
                &mut conn,
                tenant.id,
                &NewKey {
                    scope,
                    name,
                    expires_at,
                },
            )
            .await?;
            eprintln!(
                "Created {} key {} for tenant {:?} ({}){}. It is shown once:",
                scope.as_str(),
                key.id,
                tenant.name,
                tenant.id,
                expires_at
                    .map(|at| format!(", expiring {}", at.to_rfc3339()))
                    .unwrap_or_default()
            );
            println!("{secret}");
        }
        KeysCommand::List { tenant } => {
            let now = chrono::Utc::now();
            println!(
                "{:<36}  {:<20}  {:<12}  {:<6}  {:<7}  {:<25}  {:<25}  name",
                "id", "tenant", "prefix", "scope", "status", "created", "expires"
            );
            for (tenant, key) in api_keys::list_all(&mut conn, tenant.as_deref()).await? {
                println!(
                    "{:<36}  {:<20}  {:<12}  {:<6}  {:<7}  {:<25}  {:<25}  {}",
                    key.id,
                    tenant,
                    key.key_prefix,
                    key.scope,
                    key.status(now),
                    key.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    key.expires_at
                        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|| "-".to_owned()),
                    key.name.as_deref().unwrap_or("-"),
                );
            }
        }
        KeysCommand::Revoke { id } => match api_keys::revoke_any(&mut conn, id).await? {
            Some(key) => eprintln!(
                "Key {} ({}…) revoked at {}",
                key.id,
                key.key_prefix,
                key.revoked_at.map(|at| at.to_rfc3339()).unwrap_or_default()
            ),
            None => anyhow::bail!("no key with id {id}"),
        },
    }
    Ok(())
}

async fn limits(database_url: &str, command: LimitsCommand) -> anyhow::Result<()> {
    use assay_core::db::models::tenant_limits::{self, LimitsChange};
    let pool = assay_core::db::pool(database_url, 1)?;
    let mut conn = pool.get().await?;
    let (tenant, change) = match command {
        LimitsCommand::Show { tenant } => (tenant, None),
        LimitsCommand::Set {
            tenant,
            reads_per_minute,
            read_burst,
            writes_per_minute,
            write_burst,
            max_runs_per_evaluation,
            max_active_evaluations,
        } => {
            // 0 clears an override; a negative number is a mistake.
            let value = |flag: &str, value: Option<i32>| -> anyhow::Result<Option<Option<i32>>> {
                match value {
                    None => Ok(None),
                    Some(0) => Ok(Some(None)),
                    Some(value) if value > 0 => Ok(Some(Some(value))),
                    Some(_) => anyhow::bail!("--{flag} must be a positive number (0 clears it)"),
                }
            };
            let change = LimitsChange {
                reads_per_minute: value("reads-per-minute", reads_per_minute)?,
                read_burst: value("read-burst", read_burst)?,
                writes_per_minute: value("writes-per-minute", writes_per_minute)?,
                write_burst: value("write-burst", write_burst)?,
                max_runs_per_evaluation: value("max-runs-per-evaluation", max_runs_per_evaluation)?,
                max_active_evaluations: value("max-active-evaluations", max_active_evaluations)?,
            };
            (tenant, Some(change))
        }
    };
    let tenant_id = assay_core::db::models::api_keys::tenant_id_by_name(&mut conn, &tenant)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant named {tenant:?}"))?;
    let limits = match change {
        Some(change) => tenant_limits::set(&mut conn, tenant_id, &change).await?,
        None => tenant_limits::get(&mut conn, tenant_id).await?,
    };
    println!("{}", serde_json::to_string_pretty(&limits)?);
    Ok(())
}
