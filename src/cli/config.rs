//! `config check` (validate a file without serving; with `--connect`, also try the database and
//! the key set URLs it names) and `config example` (every key, commented, at its default:
//! [`crate::config::EXAMPLE`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

/// `config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file without serving.
    Check {
        /// The file.
        file: PathBuf,
        /// Also connect: the PostgreSQL store (login, database, permissions) and every
        /// `[[token.jwt]]` key set URL, each reported on its own line.
        #[arg(long)]
        connect: bool,
        /// Overrides `iam.store`, as for `serve` (e.g. the PostgreSQL URL with its password).
        #[arg(long, env = "VERIFYIAM_STORE", hide_env_values = true)]
        store: Option<String>,
    },
    /// Print a complete configuration: every key, at its default, with what it does.
    Example,
}

/// Runs a `config` command: exit 2 when the file is not a valid configuration, or when
/// `--connect` finds a configuration error (a refused login, a missing database or permission);
/// 3 when something it names cannot be reached or answers wrongly.
pub(super) async fn run(command: ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Check {
            file,
            connect,
            store,
        } => match Config::load(&file).and_then(|mut c| {
            super::override_store(&mut c, store)?;
            Ok(c)
        }) {
            Ok(config) => {
                println!("{}: ok", file.display());
                if !connect {
                    return ExitCode::SUCCESS;
                }
                let mut code = 0u8;
                for (what, outcome) in probe(&config).await {
                    match outcome {
                        Ok(found) => println!("{what}: ok ({found})"),
                        Err((c, why)) => {
                            println!("{what}: FAILED: {why}");
                            code = if c == 2 || code == 2 { 2 } else { c };
                        }
                    }
                }
                ExitCode::from(code)
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        ConfigCommand::Example => {
            print!("{}", crate::config::EXAMPLE);
            ExitCode::SUCCESS
        }
    }
}

/// What `config check --connect` tries, each with what it found or its exit code and reason.
pub async fn probe(config: &Config) -> Vec<(String, Result<String, (u8, String)>)> {
    let mut found = Vec::new();
    let location = config.iam.store.to_string_lossy();
    if crate::store::PgUrl::is_postgres(&location) {
        let outcome = match crate::store::PgUrl::parse(&location) {
            Ok(url) => url.probe().await.map_err(|e| {
                let code = if e.is_configuration() { 2 } else { 3 };
                (code, e.to_string())
            }),
            Err(e) => Err((2, e)),
        };
        found.push(("iam.store".to_owned(), outcome));
    } else {
        found.push((
            "iam.store".to_owned(),
            Ok(format!("embedded store at {location}")),
        ));
    }
    let http = reqwest::Client::builder()
        .timeout(
            config
                .token
                .fetch_timeout
                .max(std::time::Duration::from_secs(5)),
        )
        .build();
    for (i, issuer) in config.token.jwt.iter().enumerate() {
        let what = format!("token.jwt[{i}].jwks_uri");
        let outcome = match &http {
            Ok(http) => key_set(http, &issuer.jwks_uri).await,
            Err(e) => Err((3, e.to_string())),
        };
        found.push((what, outcome));
    }
    found
}

/// Fetches a JWK set: how many keys it holds, or why it cannot be used (exit 3).
async fn key_set(http: &reqwest::Client, url: &str) -> Result<String, (u8, String)> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| (3, format!("{url}: {}", crate::client::error_chain(&e))))?;
    let status = response.status();
    if !status.is_success() {
        return Err((3, format!("{url} answered HTTP {}", status.as_u16())));
    }
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| (3, format!("{url} answered something that is not JSON: {e}")))?;
    match body["keys"].as_array() {
        Some(keys) if !keys.is_empty() => Ok(format!("{url}: {} keys", keys.len())),
        _ => Err((
            3,
            format!("{url} answered JSON with no \"keys\" (not a JWK set)"),
        )),
    }
}
