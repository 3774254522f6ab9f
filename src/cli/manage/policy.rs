//! The IAM policy commands every resource kind has (`add-iam-policy-binding`,
//! `remove-iam-policy-binding`, `get-iam-policy`, `set-iam-policy`, `test-iam-permissions`),
//! shaped like gcloud's.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::Printed;
use crate::client::{AdminClient, ClientError, Format};

/// The IAM policy commands every resource kind has.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Grant ROLE to MEMBER (read-modify-write with the etag, retried on concurrent changes).
    AddIamPolicyBinding(BindingArgs),
    /// Revoke ROLE from MEMBER (read-modify-write with the etag, retried on concurrent changes).
    RemoveIamPolicyBinding(BindingArgs),
    /// Print the policy.
    GetIamPolicy {
        /// The resource (project id, environment or API name).
        name: String,
    },
    /// Replace the policy with the JSON policy in FILE (its etag, if any, must be current).
    SetIamPolicy {
        /// The resource (project id, environment or API name).
        name: String,
        /// A JSON file holding a policy (`{"bindings":[…],"etag":"…"}`).
        file: PathBuf,
    },
    /// Print which of the given permissions the caller holds.
    TestIamPermissions {
        /// The resource (project id, environment or API name).
        name: String,
        /// Comma-separated permissions.
        #[arg(long, value_delimiter = ',', required = true)]
        permissions: Vec<String>,
    },
}

/// `add-iam-policy-binding` / `remove-iam-policy-binding`
#[derive(Debug, Args)]
pub struct BindingArgs {
    /// The resource (project id, environment or API name).
    pub name: String,
    /// The member, e.g. `user:alice@example.com`.
    #[arg(long)]
    pub member: String,
    /// The role, e.g. `roles/apigee.deploymentInvoker`.
    #[arg(long)]
    pub role: String,
}

/// Runs a policy command on the resource at `path(name)`; `kind` names it in the notes.
pub(super) async fn policy_command(
    client: &AdminClient,
    format: Format,
    kind: &str,
    path: impl Fn(&str) -> Result<String, ClientError>,
    command: PolicyCommand,
) -> Result<Printed, ClientError> {
    let printed = |v: &Value, note: Option<String>| Printed {
        stdout: format.render(v),
        note,
    };
    match command {
        PolicyCommand::AddIamPolicyBinding(b) | PolicyCommand::RemoveIamPolicyBinding(b)
            if b.member.is_empty() || b.role.is_empty() =>
        {
            let _ = b;
            Err(ClientError::usage("--member and --role must not be empty"))
        }
        PolicyCommand::AddIamPolicyBinding(b) => {
            let policy = client
                .change_binding(&path(&b.name)?, &b.role, &b.member, true)
                .await?;
            Ok(printed(
                &policy,
                Some(format!("Updated IAM policy for {kind} [{}].", b.name)),
            ))
        }
        PolicyCommand::RemoveIamPolicyBinding(b) => {
            let policy = client
                .change_binding(&path(&b.name)?, &b.role, &b.member, false)
                .await?;
            Ok(printed(
                &policy,
                Some(format!("Updated IAM policy for {kind} [{}].", b.name)),
            ))
        }
        PolicyCommand::GetIamPolicy { name } => {
            Ok(printed(&client.get_policy(&path(&name)?).await?, None))
        }
        PolicyCommand::SetIamPolicy { name, file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ClientError::usage(format!("cannot read {}: {e}", file.display())))?;
            let policy: Value = serde_json::from_str(&text).map_err(|e| {
                ClientError::usage(format!("{} is not a JSON policy: {e}", file.display()))
            })?;
            if !policy.is_object() {
                return Err(ClientError::usage(format!(
                    "{} must hold a JSON object (a policy)",
                    file.display()
                )));
            }
            let stored = client.set_policy(&path(&name)?, &policy).await?;
            Ok(printed(
                &stored,
                Some(format!("Updated IAM policy for {kind} [{name}].")),
            ))
        }
        PolicyCommand::TestIamPermissions { name, permissions } => {
            let body = json!({ "permissions": permissions });
            let v = client
                .call(
                    Method::POST,
                    &format!("{}:testIamPermissions", path(&name)?),
                    Some(&body),
                )
                .await?;
            Ok(printed(&v, None))
        }
    }
}
