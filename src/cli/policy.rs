//! `policy analyze`: "who can invoke this deployment?" (groups expanded) and "which deployments
//! can this principal invoke, through which level?", asked of the admin API's Policy Analyzer
//! (`GET /v1/{scope}:analyzeIamPolicy`) and printed for a person, or as the API answers with
//! `--format`.
//!
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
    /// Who can invoke a deployment, or which deployments a principal can invoke.
    Analyze(AnalyzeArgs),
}

/// `policy analyze`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("question").required(true).args(["deployment", "principal"])))]
pub struct AnalyzeArgs {
    /// Who can invoke this deployment: `ENV/API` (e.g. `prod/orders`).
    #[arg(long)]
    pub deployment: Option<String>,
    /// Which deployments this member can invoke: `user:EMAIL`, `serviceAccount:EMAIL`,
    /// `group:EMAIL` or `domain:DOMAIN` (a bare email is a user or a service account).
    #[arg(long)]
    pub principal: Option<String>,
    /// The Apigee organization (the project id).
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

/// The member asked about: a bare email is a user's, or a service account's.
fn member(principal: &str) -> String {
    if principal.contains(':') || principal == "allUsers" || principal == "allAuthenticatedUsers" {
        principal.to_owned()
    } else if principal.ends_with(".gserviceaccount.com") {
        format!("serviceAccount:{principal}")
    } else {
        format!("user:{principal}")
    }
}

/// `policy analyze`: asks the admin API's analyzer and renders its answer.
pub async fn analyze(args: AnalyzeArgs) -> Result<String, ClientError> {
    let org = super::manage::segment("--organization", args.organization.as_deref())?;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("analysisQuery.accessSelector.permissions", INVOKE);
    let shown = match (&args.deployment, &args.principal) {
        (Some(deployment), _) => {
            let name = resource_name(deployment, Some(org))?;
            if !name.contains("/deployments/") {
                return Err(ClientError::usage(format!(
                    "--deployment {deployment:?}: expected ENV/API"
                )));
            }
            query
                .append_pair("analysisQuery.resourceSelector.fullResourceName", &name)
                .append_pair("analysisQuery.options.expandGroups", "true")
                .append_pair("analysisQuery.options.outputGroupEdges", "true");
            deployment.clone()
        }
        (None, Some(principal)) => {
            let member = member(principal);
            query
                .append_pair("analysisQuery.identitySelector.identity", &member)
                .append_pair("analysisQuery.options.expandResources", "true");
            member
        }
        (None, None) => {
            return Err(ClientError::usage(
                "one of --deployment or --principal is required",
            ));
        }
    };
    let client = AdminClient::new(&args.admin_url, args.token)?;
    let path = format!(
        "/v1/organizations/{org}:analyzeIamPolicy?{}",
        query.finish()
    );
    let answer = client.call(reqwest::Method::GET, &path, None).await?;
    Ok(match args.format {
        Some(format) => format.render(&answer),
        None if args.deployment.is_some() => who_can_invoke(&answer, &shown),
        None => what_can_invoke(&answer, &shown),
    })
}

/// The analyzer's results with the level and role of each.
fn analysis_results(answer: &Value) -> Vec<(&'static str, String, &Value)> {
    answer["mainAnalysis"]["analysisResults"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|r| {
                    let attached = relative(r["attachedResourceFullName"].as_str().unwrap_or(""));
                    let role = r["iamBinding"]["role"].as_str().unwrap_or("?").to_owned();
                    (level(attached), role, r)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn partial_note(answer: &Value, out: &mut String) {
    if answer["fullyExplored"] != true {
        out.push_str("\n(Partial: the answer was capped; narrow the question to see the rest.)\n");
    }
}

/// "Who can invoke D": one line per identity, with the level, role and group that grant it.
pub fn who_can_invoke(answer: &Value, deployment: &str) -> String {
    let mut lines = std::collections::BTreeSet::new();
    for (level, role, r) in analysis_results(answer) {
        let edges = r["identityList"]["groupEdges"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for identity in r["identityList"]["identities"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(name) = identity["name"].as_str() else {
                continue;
            };
            let via = edges
                .iter()
                .filter(|e| e["targetNode"] == name)
                .filter_map(|e| e["sourceNode"].as_str())
                .collect::<Vec<_>>();
            let via = if via.is_empty() {
                String::new()
            } else {
                format!(", as a member of {}", via.join(", "))
            };
            lines.insert(format!("  {name}  ({level} policy: {role}{via})"));
        }
    }
    let mut out = String::new();
    if lines.is_empty() {
        writeln!(out, "Nobody can invoke {deployment}.").ok();
    } else {
        writeln!(out, "Who can invoke {deployment}:").ok();
        for line in lines {
            writeln!(out, "{line}").ok();
        }
    }
    partial_note(answer, &mut out);
    out
}

/// "What can X invoke": each deployment with the levels and roles that grant it; an
/// environment's grant is said not to pass down.
pub fn what_can_invoke(answer: &Value, member: &str) -> String {
    let mut deployments: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut environments = Vec::new();
    for (level, role, r) in analysis_results(answer) {
        for acl in r["accessControlLists"].as_array().into_iter().flatten() {
            for resource in acl["resources"].as_array().into_iter().flatten() {
                let name = relative(resource["fullResourceName"].as_str().unwrap_or(""));
                match name.split('/').collect::<Vec<_>>().as_slice() {
                    ["organizations", _, "environments", env, "deployments", api] => {
                        deployments
                            .entry(format!("{env}/{api}"))
                            .or_default()
                            .push(format!("{level} policy: {role}"));
                    }
                    ["organizations", _, "environments", env] if level == "environment" => {
                        environments.push(format!("{env} ({role})"));
                    }
                    _ => {}
                }
            }
        }
    }
    let mut out = String::new();
    if deployments.is_empty() {
        writeln!(out, "{member} can invoke no deployment.").ok();
    } else {
        writeln!(out, "{member} can invoke:").ok();
        for (deployment, grants) in &deployments {
            writeln!(out, "  {deployment}  ({})", grants.join("; ")).ok();
        }
    }
    for env in environments {
        writeln!(
            out,
            "\nInvoke granted on the environment {env} does not pass down to its deployments: \
             grant it on a deployment or the project instead."
        )
        .ok();
    }
    partial_note(answer, &mut out);
    out
}

/// Runs `policy …`: the report on stdout; for `troubleshoot`, exit 0 when granted, 1 when not;
/// or `ERROR: …` and the error's exit code.
pub(super) async fn run(args: PolicyArgs) -> ExitCode {
    let t = match args.command {
        PolicyTool::Troubleshoot(t) => t,
        PolicyTool::Analyze(a) => {
            return match analyze(a).await {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ERROR: {}", e.message);
                    ExitCode::from(e.code)
                }
            };
        }
    };
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
