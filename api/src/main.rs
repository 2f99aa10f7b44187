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
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    assay_core::telemetry::init_logging();
    let cli = Cli::parse();
    let config = ApiConfig::from_env();
    match cli.command {
        Command::Serve { migrate } => {
            if migrate {
                migrate_database(&config.settings.database_url).await?;
            }
            let application = Application::build(config.clone()).await?;
            tracing::info!(bind = %config.bind, port = application.port(), "assay-api listening");
            application.run_until_stopped().await?;
        }
        Command::Migrate => migrate_database(&config.settings.database_url).await?,
        Command::Keys {
            command:
                KeysCommand::Create {
                    tenant,
                    scope,
                    admin,
                },
        } => {
            use assay_core::db::models::api_keys::{self, KeyScope};
            assay_core::domain::validate_name("--tenant", &tenant)?;
            let scope = if admin { KeyScope::Admin } else { scope };
            let pool = assay_core::db::pool(&config.settings.database_url, 1)?;
            let mut conn = pool.get().await?;
            let (tenant, key) = api_keys::create_key_with_scope(&mut conn, &tenant, scope).await?;
            eprintln!(
                "Created a{} key for tenant {:?} ({}). It is shown once:",
                if scope == KeyScope::Admin {
                    "n admin"
                } else {
                    ""
                },
                tenant.name,
                tenant.id
            );
            println!("{key}");
        }
    }
    assay_core::telemetry::shutdown_tracing();
    Ok(())
}

async fn migrate_database(database_url: &str) -> anyhow::Result<()> {
    let applied = assay_core::db::run_migrations(database_url).await?;
    tracing::info!(applied = ?applied, "migrations applied");
    Ok(())
}
