//! `deployments …`: list, describe, deploy, undeploy, update, and each deployment's IAM policy.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::policy::{PolicyCommand, policy_command};
use super::{Connection, Printed, enc, segment};
use crate::client::ClientError;

/// `deployments …`
#[derive(Debug, Args)]
pub struct DeploymentsArgs {
    /// Where and as whom.
    #[command(flatten)]
    pub connection: Connection,
    /// The Apigee organization (the project id unless configured otherwise).
    #[arg(long, global = true, env = "VERIFYIAM_ORGANIZATION")]
    pub organization: Option<String>,
    /// The environment.
    #[arg(long, global = true)]
    pub environment: Option<String>,
    /// What.
    #[command(subcommand)]
    pub command: DeploymentsCommand,
}

/// `deployments …` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// The deployment's IAM policy.
    #[command(flatten)]
    Policy(PolicyCommand),
    /// List the environment's deployments.
    List,
    /// Describe one deployment.
    Describe {
        /// The API (deployment) name.
        api: String,
    },
    /// Deploy a revision of an API (a deployment that was undeployed starts with no policy).
    Deploy {
        /// The API (deployment) name.
        api: String,
        /// The revision.
        #[arg(long)]
        revision: String,
        /// Let denied requests go on to the backend, marked (keeps the current setting if omitted).
        #[arg(long)]
        continue_on_error: Option<bool>,
    },
    /// Undeploy a revision: the deployment's policy is deleted and its requests are denied.
    Undeploy {
        /// The API (deployment) name.
        api: String,
        /// The revision.
        #[arg(long)]
        revision: String,
    },
    /// Change a deployment's settings.
    Update {
        /// The API (deployment) name.
        api: String,
        /// Let denied requests go on to the backend, marked (`true` or `false`).
        #[arg(long, action = clap::ArgAction::Set)]
        continue_on_error: bool,
    },
}

/// Runs a `deployments` command.
pub(super) async fn run(a: DeploymentsArgs) -> Result<Printed, ClientError> {
    let client = a.connection.client()?;
    let format = a.connection.format;
    let env_path = || -> Result<String, ClientError> {
        Ok(format!(
            "/v1/organizations/{}/environments/{}",
            segment("--organization", a.organization.as_deref())?,
            segment("--environment", a.environment.as_deref())?
        ))
    };
    let path = |api: &str| {
        Ok(format!(
            "{}/deployments/{}",
            env_path()?,
            segment("API", Some(api))?
        ))
    };
    let revision_path = |api: &str, revision: &str| {
        Ok::<_, ClientError>(format!(
            "{}/apis/{}/revisions/{}/deployments",
            env_path()?,
            segment("API", Some(api))?,
            enc(revision)
        ))
    };
    let show = |v: Value, note: Option<String>| Printed {
        stdout: format.render(&v),
        note,
    };
    match a.command {
        DeploymentsCommand::Policy(p) => {
            policy_command(&client, format, "deployment", path, p).await
        }
        DeploymentsCommand::List => Ok(show(
            client
                .call(Method::GET, &format!("{}/deployments", env_path()?), None)
                .await?,
            None,
        )),
        DeploymentsCommand::Describe { api } => Ok(show(
            client.call(Method::GET, &path(&api)?, None).await?,
            None,
        )),
        DeploymentsCommand::Deploy {
            api,
            revision,
            continue_on_error,
        } => {
            let mut target = revision_path(&api, &revision)?;
            if let Some(c) = continue_on_error {
                target.push_str(&format!("?continueOnError={c}"));
            }
            let v = client.call(Method::POST, &target, None).await?;
            Ok(show(
                v,
                Some(format!("Deployed [{api}] revision {revision}.")),
            ))
        }
        DeploymentsCommand::Undeploy { api, revision } => {
            let v = client
                .call(Method::DELETE, &revision_path(&api, &revision)?, None)
                .await?;
            Ok(show(
                v,
                Some(format!(
                    "Undeployed [{api}] revision {revision}; its IAM policy was deleted."
                )),
            ))
        }
        DeploymentsCommand::Update {
            api,
            continue_on_error,
        } => {
            let body = json!({ "continueOnError": continue_on_error });
            let v = client
                .call(Method::PATCH, &path(&api)?, Some(&body))
                .await?;
            Ok(show(v, Some(format!("Updated deployment [{api}]."))))
        }
    }
}
