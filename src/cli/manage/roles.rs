//! `roles …`: the project's custom roles.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::{Connection, Printed, enc, segment};
use crate::client::ClientError;

/// `roles …`
#[derive(Debug, Args)]
pub struct RolesArgs {
    /// Where and as whom.
    #[command(flatten)]
    pub connection: Connection,
    /// The project the custom roles belong to.
    #[arg(long, global = true, env = "VERIFYIAM_PROJECT")]
    pub project: Option<String>,
    /// What.
    #[command(subcommand)]
    pub command: RolesCommand,
}

/// The fields of a custom role.
#[derive(Debug, Args)]
pub struct RoleFieldArgs {
    /// A short title.
    #[arg(long)]
    pub title: Option<String>,
    /// A description.
    #[arg(long)]
    pub description: Option<String>,
    /// Comma-separated permissions.
    #[arg(long, value_delimiter = ',')]
    pub permissions: Option<Vec<String>>,
    /// ALPHA, BETA, GA, DEPRECATED, DISABLED or EAP.
    #[arg(long)]
    pub stage: Option<String>,
}

/// `roles …` subcommands.
#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// Create a custom role.
    Create {
        /// The role id (3–64 letters, digits, `_`, `.`).
        role_id: String,
        /// Its fields.
        #[command(flatten)]
        fields: RoleFieldArgs,
    },
    /// Describe a custom role.
    Describe {
        /// The role id.
        role_id: String,
    },
    /// List the project's custom roles.
    List,
    /// Change the fields given (only those).
    Update {
        /// The role id.
        role_id: String,
        /// The fields to change.
        #[command(flatten)]
        fields: RoleFieldArgs,
    },
    /// Delete a custom role (refused while a policy binds it).
    Delete {
        /// The role id.
        role_id: String,
    },
}

fn role_body(fields: &RoleFieldArgs) -> (Value, Vec<&'static str>) {
    let mut role = serde_json::Map::new();
    let mut mask = Vec::new();
    if let Some(t) = &fields.title {
        role.insert("title".into(), json!(t));
        mask.push("title");
    }
    if let Some(d) = &fields.description {
        role.insert("description".into(), json!(d));
        mask.push("description");
    }
    if let Some(p) = &fields.permissions {
        role.insert("includedPermissions".into(), json!(p));
        mask.push("includedPermissions");
    }
    if let Some(s) = &fields.stage {
        role.insert("stage".into(), json!(s.to_ascii_uppercase()));
        mask.push("stage");
    }
    (Value::Object(role), mask)
}

/// Runs a `roles` command.
pub(super) async fn run(a: RolesArgs) -> Result<Printed, ClientError> {
    let client = a.connection.client()?;
    let format = a.connection.format;
    let base = format!(
        "/v1/projects/{}/roles",
        segment("--project", a.project.as_deref())?
    );
    let show = |v: Value, note: Option<String>| Printed {
        stdout: format.render(&v),
        note,
    };
    match a.command {
        RolesCommand::Create { role_id, fields } => {
            let (role, _) = role_body(&fields);
            let body = json!({ "roleId": role_id, "role": role });
            let v = client.call(Method::POST, &base, Some(&body)).await?;
            Ok(show(v, Some(format!("Created role [{role_id}]."))))
        }
        RolesCommand::Describe { role_id } => Ok(show(
            client
                .call(Method::GET, &format!("{base}/{}", enc(&role_id)), None)
                .await?,
            None,
        )),
        RolesCommand::List => Ok(show(client.call(Method::GET, &base, None).await?, None)),
        RolesCommand::Update { role_id, fields } => {
            let (role, mask) = role_body(&fields);
            if mask.is_empty() {
                return Err(ClientError::usage(
                    "nothing to update: give --title, --description, --permissions or --stage",
                ));
            }
            let target = format!("{base}/{}?updateMask={}", enc(&role_id), mask.join(","));
            let v = client.call(Method::PATCH, &target, Some(&role)).await?;
            Ok(show(v, Some(format!("Updated role [{role_id}]."))))
        }
        RolesCommand::Delete { role_id } => {
            let v = client
                .call(Method::DELETE, &format!("{base}/{}", enc(&role_id)), None)
                .await?;
            Ok(show(v, Some(format!("Deleted role [{role_id}]."))))
        }
    }
}
