//! `store migrate`: the PostgreSQL schema brought up to date without serving.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::{Config, ConfigError};

/// `store …`
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Apply the PostgreSQL schema migrations the database lacks (`serve` also does at start).
    Migrate {
        /// The configuration file whose `iam.store` names the database.
        #[arg(long)]
        config: PathBuf,
        /// Overrides `iam.store`, as for `serve`.
        #[arg(long, env = "VERIFYIAM_STORE", hide_env_values = true)]
        store: Option<String>,
    },
}

/// Applies a `--store` / `VERIFYIAM_STORE` override of `iam.store` and validates the result.
pub fn override_store(config: &mut Config, store: Option<String>) -> Result<(), ConfigError> {
    if let Some(store) = store {
        config.iam.store = PathBuf::from(store);
        config.validate()?;
    }
    Ok(())
}

/// `store migrate`: what was done, for printing.
pub async fn migrate(config: &Config) -> Result<String, crate::store::StoreError> {
    let location = config.iam.store.to_string_lossy();
    if !crate::store::PgUrl::is_postgres(&location) {
        crate::store::PolicyStore::open(
            &config.iam.store,
            &config.iam.project,
            &config.iam.bootstrap_admins,
        )?;
        return Ok(format!(
            "embedded store at {}: nothing to migrate\n",
            config.iam.store.display()
        ));
    }
    let url = crate::store::PgUrl::parse(&location)
        .map_err(|e| crate::store::StoreError::Io(format!("iam.store: {e}")))?;
    let (applied, version) = crate::store::postgres::migrate(&url).await?;
    Ok(if applied.is_empty() {
        format!("{url}: schema already at version {version}\n")
    } else {
        format!("{url}: applied {applied:?}; schema at version {version}\n")
    })
}

/// Runs a `store` command: exit 2 for the configuration (including a refused login, a missing
/// database or permission), 3 when the migration fails otherwise.
pub(super) async fn run(command: StoreCommand) -> ExitCode {
    let StoreCommand::Migrate { config, store } = command;
    let loaded = match Config::load(&config).and_then(|mut c| {
        override_store(&mut c, store)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return ExitCode::from(2);
        }
    };
    match migrate(&loaded).await {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("store migrate: {e}");
            ExitCode::from(if e.is_configuration() { 2 } else { 3 })
        }
    }
}
