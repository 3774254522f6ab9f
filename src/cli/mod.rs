//! Command-line interface: the argument types and, beside each, its command. One file per command
//! group: [`serve`](ServeArgs) (and `--dev`), `config`, `store`, `token`, `check`,
//! `backend-token`, and the gcloud-shaped management commands `projects`, `environments`,
//! `deployments`, `roles`, `groups` over [`crate::client`], and `policy troubleshoot`. Serving itself lives in
//! [`crate::server`]; binding the listeners is the binary's.
//!
//! Exit codes: 0 success (for `check` and `policy troubleshoot`: allowed), 1 denied, 2 usage or configuration
//! error, 3 runtime failure (for `backend-token`: no token); the management commands add 4 to 7
//! (see [`crate::client::exit`]).

mod backend_token;
mod check;
mod config;
mod manage;
mod policy;
mod serve;
mod store;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use backend_token::{BackendTokenArgs, BackendTokenOutput, backend_token};
pub use check::{CheckArgs, CheckOutcome, check};
pub use config::ConfigCommand;
pub use manage::{
    BindingArgs, Connection, DeploymentsArgs, DeploymentsCommand, EnvironmentsArgs, GroupsArgs,
    GroupsCommand, PolicyCommand, Printed, ProjectsArgs, RoleFieldArgs, RolesArgs, RolesCommand,
    manage,
};
pub use policy::{
    AnalyzeArgs, PolicyArgs, PolicyTool, TroubleshootArgs, Troubleshooting, analyze, troubleshoot,
};
pub use serve::{
    DEFAULT_DATA_DIR, ServeArgs, dev_banner, dev_config, invoked_as, print_dev_banner, serve_config,
};
pub use store::{StoreCommand, migrate, override_store};
pub use token::{TokenCommand, mint};

/// verifyiam: Envoy external authorization by IAM (`apigee.deployments.invoke`).
#[derive(Debug, Parser)]
#[command(name = "verifyiam", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Policy store tools.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Development tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Send an Envoy-shaped Check and print the decision.
    Check(CheckArgs),
    /// The project-level IAM policy.
    Projects(ProjectsArgs),
    /// Environment-level IAM policies.
    Environments(EnvironmentsArgs),
    /// Deployments and their IAM policies.
    Deployments(DeploymentsArgs),
    /// Custom roles.
    Roles(RolesArgs),
    /// Group memberships.
    Groups(GroupsArgs),
    /// Explain access: why a principal may, or may not, use a permission on a resource.
    Policy(PolicyArgs),
    /// Fetch the gateway's ID token for a backend exactly as `serve` would, and show its claims.
    BackendToken(BackendTokenArgs),
}

/// Runs every command but `serve` (whose listeners the binary binds) and prints its output;
/// returns the exit code.
pub async fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve(_) => {
            eprintln!("serve: run by the verifyiam binary, which binds its listeners");
            ExitCode::from(2)
        }
        Command::Config(c) => config::run(c).await,
        Command::Store(c) => store::run(c).await,
        Command::Token(c) => token::run(c),
        Command::Check(args) => check::run(&args).await,
        Command::BackendToken(args) => backend_token::run(&args).await,
        Command::Policy(args) => policy::run(args).await,
        management => manage::run(management).await,
    }
}
