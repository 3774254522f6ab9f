//! The gcloud-shaped management commands (`projects`, `environments`, `deployments`, `roles`,
//! `groups`) over the admin API's REST client, [`crate::client`]. The policy commands every
//! resource kind has are written once, in `policy`.

mod deployments;
mod groups;
mod policy;
mod roles;

use std::process::ExitCode;

use clap::Args;

pub use deployments::{DeploymentsArgs, DeploymentsCommand};
pub use groups::{GroupsArgs, GroupsCommand};
pub use policy::{BindingArgs, PolicyCommand};
pub use roles::{RoleFieldArgs, RolesArgs, RolesCommand};

use super::Command;
use crate::client::{AdminClient, ClientError};
use policy::policy_command;

/// How the management commands reach the admin API.
#[derive(Debug, Args)]
pub struct Connection {
    /// The admin endpoint.
    #[arg(
        long,
        global = true,
        env = "VERIFYIAM_ADMIN_URL",
        default_value = "http://127.0.0.1:9002"
    )]
    pub admin_url: String,
    /// The caller's access token.
    #[arg(long, global = true, env = "VERIFYIAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "json")]
    pub format: crate::client::Format,
    /// TLS toward an `https://` admin endpoint.
    #[command(flatten)]
    pub tls: crate::client::TlsArgs,
}

impl Connection {
    /// The admin API client this connection describes.
    pub fn client(&self) -> Result<AdminClient, ClientError> {
        AdminClient::with_tls(&self.admin_url, self.token.clone(), &self.tls)
    }
}

/// `projects …`
#[derive(Debug, Args)]
pub struct ProjectsArgs {
    /// Where and as whom.
    #[command(flatten)]
    pub connection: Connection,
    /// What.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// `environments …`
#[derive(Debug, Args)]
pub struct EnvironmentsArgs {
    /// Where and as whom.
    #[command(flatten)]
    pub connection: Connection,
    /// The Apigee organization (the project id unless configured otherwise).
    #[arg(long, global = true, env = "VERIFYIAM_ORGANIZATION")]
    pub organization: Option<String>,
    /// What.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// What a management command prints: the result on stdout, an optional note on stderr.
#[derive(Debug)]
pub struct Printed {
    /// The result, rendered in the requested format.
    pub stdout: String,
    /// A human note (e.g. `Updated IAM policy for deployment [orders].`).
    pub note: Option<String>,
}

pub(super) fn segment<'a>(flag: &str, value: Option<&'a str>) -> Result<&'a str, ClientError> {
    match value {
        Some(v) if crate::config::is_segment(v) => Ok(v),
        Some(v) => Err(ClientError::usage(format!(
            "{flag} {v:?} is not a valid name (letters, digits, '-', '_', '.')"
        ))),
        None => Err(ClientError::usage(format!("{flag} is required"))),
    }
}

pub(super) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Runs a management command against the admin API.
pub async fn manage(command: Command) -> Result<Printed, ClientError> {
    match command {
        Command::Projects(a) => {
            let client = a.connection.client()?;
            let path = |p: &str| Ok(format!("/v1/projects/{}", segment("PROJECT", Some(p))?));
            policy_command(&client, a.connection.format, "project", path, a.command).await
        }
        Command::Environments(a) => {
            let client = a.connection.client()?;
            let org = a.organization.clone();
            let path = |e: &str| {
                Ok(format!(
                    "/v1/organizations/{}/environments/{}",
                    segment("--organization", org.as_deref())?,
                    segment("ENVIRONMENT", Some(e))?
                ))
            };
            policy_command(&client, a.connection.format, "environment", path, a.command).await
        }
        Command::Deployments(a) => deployments::run(a).await,
        Command::Roles(a) => roles::run(a).await,
        Command::Groups(a) => groups::run(a).await,
        _ => Err(ClientError::usage("not a management command")),
    }
}

/// Runs a management command: the result on stdout, the note on stderr, or `ERROR: …` and the
/// error's exit code.
pub(super) async fn run(command: Command) -> ExitCode {
    match manage(command).await {
        Ok(printed) => {
            print!("{}", printed.stdout);
            if let Some(note) = printed.note {
                eprintln!("{note}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ERROR: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
