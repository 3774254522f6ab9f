//! `groups …`: group memberships.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::{Connection, Printed, enc};
use crate::client::ClientError;

/// `groups …`
#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// Where and as whom.
    #[command(flatten)]
    pub connection: Connection,
    /// What.
    #[command(subcommand)]
    pub command: GroupsCommand,
}

/// `groups …` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Add a member (`user:` or `serviceAccount:`) to a group.
    AddMember {
        /// The group's email.
        group: String,
        /// The member.
        #[arg(long)]
        member: String,
    },
    /// Remove a member from a group.
    RemoveMember {
        /// The group's email.
        group: String,
        /// The member.
        #[arg(long)]
        member: String,
    },
    /// List the groups.
    List,
    /// Describe one group.
    Describe {
        /// The group's email.
        group: String,
    },
}

/// Runs a `groups` command.
pub(super) async fn run(a: GroupsArgs) -> Result<Printed, ClientError> {
    let client = a.connection.client()?;
    let format = a.connection.format;
    let show = |v: Value, note: Option<String>| Printed {
        stdout: format.render(&v),
        note,
    };
    match a.command {
        GroupsCommand::AddMember { group, member }
        | GroupsCommand::RemoveMember { group, member }
            if group.is_empty() || member.is_empty() =>
        {
            Err(ClientError::usage("GROUP and --member must not be empty"))
        }
        GroupsCommand::AddMember { group, member } => {
            let body = json!({ "member": member });
            let v = client
                .call(
                    Method::POST,
                    &format!("/v1/groups/{}:addMember", enc(&group)),
                    Some(&body),
                )
                .await?;
            Ok(show(v, Some(format!("Added {member} to group [{group}]."))))
        }
        GroupsCommand::RemoveMember { group, member } => {
            let body = json!({ "member": member });
            let v = client
                .call(
                    Method::POST,
                    &format!("/v1/groups/{}:removeMember", enc(&group)),
                    Some(&body),
                )
                .await?;
            Ok(show(
                v,
                Some(format!("Removed {member} from group [{group}].")),
            ))
        }
        GroupsCommand::List => Ok(show(
            client.call(Method::GET, "/v1/groups", None).await?,
            None,
        )),
        GroupsCommand::Describe { group } => Ok(show(
            client
                .call(Method::GET, &format!("/v1/groups/{}", enc(&group)), None)
                .await?,
            None,
        )),
    }
}
