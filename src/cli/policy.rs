//! `policy troubleshoot`: "why may (or may not) this person invoke this deployment?", asked of the
//! admin API's troubleshooter (`POST /v3/iam:troubleshoot`) and printed for a person: the answer
//! first, then the bindings that decide it and why. `--format json|yaml` prints the answer as the
//! API gives it, for scripts. Exit 0 when granted, 1 when not (or when the caller may not read
//! every policy involved), as `check` does; the other failures exit as the management commands
//! do ([`crate::client::exit`]).

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{AdminClient, ClientError, Format, TlsArgs};
use crate::iam::roles::INVOKE;

/// `policy …`
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What.
    #[command(subcommand)]
    pub command: PolicyTool,
}

/// `policy …` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyTool {
    /// Why a principal may, or may not, use a permission on a resource.
    Troubleshoot(TroubleshootArgs),
}

/// `policy troubleshoot`
#[derive(Debug, Args)]
pub struct TroubleshootArgs {
    /// `ENV/API` (e.g. `prod/orders`, needs the organization), a relative resource name
    /// (`projects/P`, `organizations/O/environments/E[/deployments/D]`) or a full one.
    pub resource: String,
    /// The email of the user or service account asked about.
    #[arg(long)]
    pub principal_email: String,
    /// The permission asked about.
    #[arg(long, default_value = INVOKE)]
    pub permission: String,
    /// The Apigee organization, for the `ENV/API` form.
    #[arg(long, env = "VERIFYIAM_ORGANIZATION")]
    pub organization: Option<String>,
    /// The admin endpoint.
    #[arg(
        long,
        env = "VERIFYIAM_ADMIN_URL",
        default_value = "http://127.0.0.1:9002"
    )]
    pub admin_url: String,
    /// The caller's access token.
    #[arg(long, env = "VERIFYIAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The answer as the API gives it instead of the readable report.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// TLS toward an `https://` admin endpoint.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// What `policy troubleshoot` found: whether access is granted, and what to print.
#[derive(Debug)]
pub struct Troubleshooting {
    /// `CAN_ACCESS`: the exit code is 0.
    pub granted: bool,
    /// The report, or the answer rendered as asked.
    pub stdout: String,
}

/// The resource name to send for what the user wrote.
fn resource_name(resource: &str, organization: Option<&str>) -> Result<String, ClientError> {
    if resource.starts_with("//")
        || resource.starts_with("projects/")
        || resource.starts_with("organizations/")
    {
        return Ok(resource.to_owned());
    }
    let Some((env, api)) = resource
        .split_once('/')
        .filter(|(e, a)| crate::config::is_segment(e) && crate::config::is_segment(a))
    else {
        return Err(ClientError::usage(format!(
            "RESOURCE {resource:?}: expected ENV/API, projects/P, \
             organizations/O/environments/E[/deployments/D] or a full resource name"
        )));
    };
    let org = super::manage::segment("--organization (for ENV/API)", organization)?;
    Ok(format!(
        "organizations/{org}/environments/{env}/deployments/{api}"
    ))
}

/// `policy troubleshoot`: asks the admin API and renders its answer.
pub async fn troubleshoot(args: TroubleshootArgs) -> Result<Troubleshooting, ClientError> {
    let name = resource_name(&args.resource, args.organization.as_deref())?;
    let client = AdminClient::with_tls(&args.admin_url, args.token, &args.tls)?;
    let answer = ask(&client, &name, &args.principal_email, &args.permission).await?;
    let granted = answer["overallAccessState"] == "CAN_ACCESS";
    let stdout = match args.format {
        Some(format) => format.render(&answer),
        None => report(&answer, &args.resource, &args.principal_email),
    };
    Ok(Troubleshooting { granted, stdout })
}

/// The troubleshooter's answer (`POST /v3/iam:troubleshoot`) for `principal` (an email) using
/// `permission` on the resource `name`.
pub async fn ask(
    client: &AdminClient,
    name: &str,
    principal: &str,
    permission: &str,
) -> Result<Value, ClientError> {
    let body = json!({"accessTuple": {
        "principal": principal,
        "fullResourceName": name,
        "permission": permission,
    }});
    client
        .call(reqwest::Method::POST, "/v3/iam:troubleshoot", Some(&body))
        .await
}

/// `apigee.deployments.invoke` reads as "invoke"; any other permission by its name.
fn verb(permission: &str) -> String {
    if permission == INVOKE {
        "invoke".to_owned()
    } else {
        format!("use {permission} on")
    }
}

/// A full resource name without its service: `organizations/o/environments/prod`.
fn relative(full: &str) -> &str {
    full.strip_prefix("//")
        .and_then(|rest| rest.split_once('/'))
        .map_or(full, |(_, r)| r)
}

/// The level of a resource name, in words.
fn level(name: &str) -> &'static str {
    if name.contains("/deployments/") {
        "deployment"
    } else if name.contains("/environments/") {
        "environment"
    } else {
        "project"
    }
}

fn is_high(v: &Value) -> bool {
    v["relevance"] == "HEURISTIC_RELEVANCE_HIGH"
}

/// The members of a binding explanation that include the principal.
fn matched_members(binding: &Value) -> Vec<String> {
    binding["memberships"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v["membership"] == "MEMBERSHIP_MATCHED")
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn all_members(binding: &Value) -> Vec<String> {
    binding["memberships"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// The readable report: the answer, then each policy and the bindings that matter, and why.
pub fn report(answer: &Value, shown_resource: &str, principal: &str) -> String {
    let tuple = &answer["accessTuple"];
    let permission = tuple["permission"].as_str().unwrap_or(INVOKE);
    let asked = tuple["fullResourceName"].as_str().unwrap_or(shown_resource);
    let asked_level = level(relative(asked));
    let what = format!("{} {shown_resource}", verb(permission));
    let mut out = String::new();
    match answer["overallAccessState"].as_str() {
        Some("CAN_ACCESS") => writeln!(out, "{principal} CAN {what}"),
        Some("CANNOT_ACCESS") => writeln!(out, "{principal} CANNOT {what}"),
        _ => writeln!(
            out,
            "{principal} access UNKNOWN to {what} (you may not read every policy involved)"
        ),
    }
    .ok();
    let policies = answer["allowPolicyExplanation"]["explainedPolicies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut any_grant = false;
    for policy in &policies {
        let Some(full) = policy["fullResourceName"].as_str() else {
            out.push_str("\n- A policy you may not read: nothing of it is shown.\n");
            continue;
        };
        let name = relative(full);
        let granted = policy["allowAccessState"] == "ALLOW_ACCESS_STATE_GRANTED";
        any_grant |= granted;
        let verdict = if granted {
            "grants it"
        } else {
            "does not grant it"
        };
        let matters = if is_high(policy) {
            " (a change here would change the answer)"
        } else {
            ""
        };
        writeln!(
            out,
            "\n- The {} policy of {name} {verdict}{matters}.",
            level(name)
        )
        .ok();
        let bindings = policy["bindingExplanations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut said = false;
        for b in &bindings {
            let role = b["role"].as_str().unwrap_or("?");
            let carries = b["rolePermission"] == "ROLE_PERMISSION_INCLUDED";
            let matched = matched_members(b);
            let binding_grants = b["allowAccessState"] == "ALLOW_ACCESS_STATE_GRANTED";
            let line = if binding_grants {
                Some(format!(
                    "{role} carries {permission} and is granted to {}, which includes {principal}.",
                    matched.join(", ")
                ))
            } else if carries && !matched.is_empty() && level(name) != asked_level {
                Some(format!(
                    "{role} carries {permission} and is granted to {} on the {} {name}, but \
                     a grant on an {} does not pass down to its {}s: grant it on the {} \
                     or the project instead.",
                    matched.join(", "),
                    level(name),
                    level(name),
                    asked_level,
                    asked_level,
                ))
            } else if !is_high(b) {
                None
            } else if carries {
                Some(format!(
                    "{role} carries {permission}, but none of its members ({}) includes \
                     {principal}.",
                    all_members(b).join(", ")
                ))
            } else if !matched.is_empty() {
                Some(format!(
                    "{principal} holds {role} (as {}), but that role does not carry {permission}.",
                    matched.join(", ")
                ))
            } else {
                None
            };
            if let Some(line) = line {
                writeln!(out, "    {line}").ok();
                said = true;
            }
        }
        if !said && !granted && is_high(policy) {
            writeln!(
                out,
                "    No binding here grants {permission} to {principal}; one that did would."
            )
            .ok();
        }
    }
    if any_grant && answer["overallAccessState"] == "CANNOT_ACCESS" {
        writeln!(
            out,
            "\nThe deployment is not deployed: its requests are refused whatever its policies say."
        )
        .ok();
    }
    out
}

/// Runs `policy …`: the report on stdout; exit 0 when granted, 1 when not, or `ERROR: …` and
/// the error's exit code.
pub(super) async fn run(args: PolicyArgs) -> ExitCode {
    let PolicyTool::Troubleshoot(t) = args.command;
    match troubleshoot(t).await {
        Ok(found) => {
            print!("{}", found.stdout);
            if found.granted {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("ERROR: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_named_from_what_the_user_wrote() {
        assert_eq!(
            resource_name("prod/orders", Some("o")).unwrap(),
            "organizations/o/environments/prod/deployments/orders"
        );
        assert_eq!(
            resource_name("prod/orders", None).unwrap_err().code,
            crate::client::exit::USAGE
        );
        assert_eq!(resource_name("projects/p", None).unwrap(), "projects/p");
        let full = "//apigee.googleapis.com/organizations/o/environments/e";
        assert_eq!(resource_name(full, None).unwrap(), full);
        for bad in ["orders", "a/b/c", "prod/", "/orders"] {
            assert!(resource_name(bad, Some("o")).is_err(), "{bad}");
        }
    }
}
