//! `token mint`: access tokens from the development issuer that `serve --dev` trusts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use crate::authn::dev::{DEV_ISSUER, DevIssuer, KEY_FILE};
use crate::config::CLOUD_PLATFORM_SCOPE;

/// `token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint an access token from the development issuer (the key `serve --dev` trusts).
    Mint {
        /// The caller's email.
        #[arg(long)]
        email: String,
        /// The scopes, space-separated.
        #[arg(long, default_value = CLOUD_PLATFORM_SCOPE)]
        scope: String,
        /// How long the token lives.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        lifetime: Duration,
        /// Data directory of `serve --dev`.
        #[arg(long, default_value = ".verifyiam-dev")]
        data_dir: PathBuf,
    },
}

/// `token mint`: prints a development token.
pub fn mint(
    email: &str,
    scope: &str,
    lifetime: Duration,
    data_dir: &Path,
) -> Result<String, String> {
    let path = data_dir.join(KEY_FILE);
    if !path.exists() {
        return Err(format!(
            "no development key at {} (run `verifyiam serve --dev` first, or pass --data-dir)",
            path.display()
        ));
    }
    crate::iam::member::Member::parse(&format!("user:{email}")).map_err(|e| e.to_string())?;
    let issuer = DevIssuer::load_or_create(DEV_ISSUER, &path).map_err(|e| e.to_string())?;
    issuer
        .mint(email, scope, lifetime.as_secs())
        .map_err(|e| e.to_string())
}

/// Runs a `token` command: the token on stdout, or exit 2 with the reason.
pub(super) fn run(command: TokenCommand) -> ExitCode {
    let TokenCommand::Mint {
        email,
        scope,
        lifetime,
        data_dir,
    } = command;
    match mint(&email, &scope, lifetime, &data_dir) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("token mint: {e}");
            ExitCode::from(2)
        }
    }
}
