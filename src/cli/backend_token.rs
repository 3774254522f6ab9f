//! `backend-token`: the gateway's ID token for one backend, fetched exactly as `serve` would.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use crate::authn::dev::DevIssuer;
use crate::config::{BackendTokenSource, Config};

/// `backend-token`
#[derive(Debug, Args)]
pub struct BackendTokenArgs {
    /// The TOML configuration file (its `[backend_auth]` table).
    #[arg(long)]
    pub config: PathBuf,
    /// The backend's audience, e.g. its Cloud Run URL.
    #[arg(long)]
    pub audience: String,
    /// Print the token itself on stdout, alone (the claims then go to stderr).
    #[arg(long)]
    pub print_token: bool,
}

/// What `backend-token` prints: stdout and stderr.
pub struct BackendTokenOutput {
    /// The claims, or the token alone with `--print-token`.
    pub stdout: String,
    /// The claims with `--print-token`.
    pub stderr: String,
}

/// `backend-token`: the token as `serve` would fetch it. `Err` carries the exit code (2: the
/// configuration or the audience; 3: the fetch) and the reason.
pub async fn backend_token(args: &BackendTokenArgs) -> Result<BackendTokenOutput, (u8, String)> {
    let config =
        Config::load(&args.config).map_err(|e| (2, format!("{}: {e}", args.config.display())))?;
    let Some(backend) = &config.backend_auth else {
        return Err((
            2,
            format!("{}: no [backend_auth] table", args.config.display()),
        ));
    };
    crate::backend::check_audience(&args.audience).map_err(|e| (2, format!("--audience: {e}")))?;
    let dev = match (&config.token.dev, backend.source) {
        (Some(d), BackendTokenSource::Dev) => Some(Arc::new(
            DevIssuer::load_or_create(&d.issuer, &d.key_file).map_err(|e| (3, e.to_string()))?,
        )),
        _ => None,
    };
    let token = crate::backend::fetch_once(backend, dev, &config.iam.project, &args.audience)
        .await
        .map_err(|e| (3, e))?;
    let claims = token.claims.lines();
    Ok(if args.print_token {
        BackendTokenOutput {
            stdout: format!("{}\n", token.token()),
            stderr: claims,
        }
    } else {
        BackendTokenOutput {
            stdout: claims,
            stderr: String::new(),
        }
    })
}

/// Runs `backend-token`: the claims (or the token) printed, the exit code of [`backend_token`].
pub(super) async fn run(args: &BackendTokenArgs) -> ExitCode {
    match backend_token(args).await {
        Ok(out) => {
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            ExitCode::SUCCESS
        }
        Err((code, reason)) => {
            eprintln!("backend-token: {reason}");
            ExitCode::from(code)
        }
    }
}
