//! `check`: one Envoy-shaped CheckRequest sent to a running service (plaintext, TLS or mTLS),
//! its answer printed with the reason, principal and deployment of its dynamic metadata, and
//! with `--explain` the troubleshooter's reasons for a denial (asked of the admin API, printed
//! as `policy troubleshoot` prints them).

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Args;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::value::Kind;

use crate::authz::Reason;
use crate::client::{AdminClient, ClientError, TlsArgs, exit};

/// `check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The ext_authz gRPC endpoint: `http://HOST:PORT`, or `https://HOST:PORT` for a TLS listener.
    #[arg(long, default_value = "http://127.0.0.1:9001")]
    pub addr: String,
    /// `ENV/API`: sent as the route's context_extensions. Omit to test the route table.
    #[arg(long)]
    pub deployment: Option<String>,
    /// Organization (context_extensions); the server's default when omitted.
    #[arg(long)]
    pub organization: Option<String>,
    /// The bearer token.
    #[arg(long, env = "VERIFYIAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The request's host.
    #[arg(long, default_value = "api.example.com")]
    pub host: String,
    /// The request's path.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// The request's method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The backend's ID-token audience (context_extensions `backend_audience`).
    #[arg(long)]
    pub backend_audience: Option<String>,
    /// TLS toward an `https://` endpoint (the ext_authz listener, and the admin one for `--explain`).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// On a denial, ask the admin API's troubleshooter why and print its reasons.
    #[arg(long)]
    pub explain: bool,
    /// The admin endpoint, for `--explain`.
    #[arg(
        long,
        env = "VERIFYIAM_ADMIN_URL",
        default_value = "http://127.0.0.1:9002"
    )]
    pub admin_url: String,
    /// The token `--explain` asks the troubleshooter with (someone who may read the policies,
    /// `*.getIamPolicy`); the checked token when omitted.
    #[arg(long, env = "VERIFYIAM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// The outcome of `check`, for printing and the exit code.
pub struct CheckOutcome {
    /// Whether Envoy would let the request through.
    pub allowed: bool,
    /// Printable report.
    pub report: String,
}

/// `check`: sends one CheckRequest shaped like Envoy's. Errors carry their exit code: 2 for
/// usage, 3 when no answer came.
pub async fn check(args: &CheckArgs) -> Result<CheckOutcome, ClientError> {
    let mut headers = HashMap::from([
        (":authority".to_owned(), args.host.clone()),
        (":path".to_owned(), args.path.clone()),
        (":method".to_owned(), args.method.clone()),
    ]);
    if let Some(t) = &args.token {
        headers.insert("authorization".to_owned(), format!("Bearer {t}"));
    }
    let mut extensions = HashMap::new();
    if let Some(dep) = &args.deployment {
        let (env, api) = dep
            .split_once('/')
            .filter(|(e, a)| crate::config::is_segment(e) && crate::config::is_segment(a))
            .ok_or_else(|| {
                ClientError::usage(format!(
                    "--deployment {dep:?}: expected ENV/API, e.g. --deployment prod/orders"
                ))
            })?;
        extensions.insert("environment".to_owned(), env.to_owned());
        extensions.insert("deployment".to_owned(), api.to_owned());
    }
    if let Some(org) = &args.organization {
        extensions.insert("organization".to_owned(), org.clone());
    }
    if let Some(audience) = &args.backend_audience {
        extensions.insert("backend_audience".to_owned(), audience.clone());
    }
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: args.method.clone(),
                    host: args.host.clone(),
                    path: args.path.clone(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions,
            ..Default::default()
        }),
    };
    if args.explain {
        // Refuse a bad admin address before sending anything.
        crate::client::endpoint_url("--admin-url", &args.admin_url, &args.tls)?;
    }
    let channel = crate::client::grpc_channel(&args.addr, &args.tls).await?;
    let response = AuthorizationClient::new(channel)
        .check(request)
        .await
        .map_err(|s| ClientError {
            code: exit::UNAVAILABLE,
            message: format!(
                "Check failed: {:?} {} (a TLS listener needs an https:// --addr)",
                s.code(),
                s.message()
            ),
        })?
        .into_inner();
    let code = response.status.as_ref().map(|s| s.code).unwrap_or(0);
    let allowed = code == 0;
    let field = |name: &str| -> Option<String> {
        let value = response.dynamic_metadata.as_ref()?.fields.get(name)?;
        match &value.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        }
    };
    let (reason, principal, deployment) =
        (field("reason"), field("principal"), field("deployment"));
    let mut report = format!(
        "decision: {}\ngrpc status: {code}\n",
        if allowed { "ALLOW" } else { "DENY" }
    );
    if let Some(r) = &reason {
        match Reason::explain_label(r) {
            Some(why) if r != "ok" => report.push_str(&format!("reason: {r} ({why})\n")),
            _ => report.push_str(&format!("reason: {r}\n")),
        }
    }
    if let Some(p) = &principal {
        report.push_str(&format!("principal: {p}\n"));
    }
    if let Some(d) = &deployment {
        report.push_str(&format!("deployment: {d}\n"));
    }
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            for h in ok.headers.iter().filter_map(|h| h.header.as_ref()) {
                report.push_str(&format!(
                    "upstream header: {}: {}\n",
                    h.key,
                    shown_header(&h.key, &h.value)
                ));
            }
        }
        Some(HttpResponse::DeniedResponse(d)) | Some(HttpResponse::ErrorResponse(d)) => {
            let http = d.status.map(|s| s.code).unwrap_or(403);
            report.push_str(&format!("http status: {http}\n"));
            for h in d.headers.iter().filter_map(|h| h.header.as_ref()) {
                report.push_str(&format!("header: {}: {}\n", h.key, h.value));
            }
            report.push_str(&format!("body: {}\n", d.body));
        }
        None => {}
    }
    if args.explain && !allowed {
        report.push_str(
            &explain(
                args,
                reason.as_deref(),
                principal.as_deref(),
                deployment.as_deref(),
            )
            .await,
        );
    }
    Ok(CheckOutcome { allowed, report })
}

/// `--explain`: the troubleshooter's reasons for a denial of `principal` on `deployment`, or why
/// there are none to give.
async fn explain(
    args: &CheckArgs,
    reason: Option<&str>,
    principal: Option<&str>,
    deployment: Option<&str>,
) -> String {
    let mut out = String::from("\nexplanation:\n");
    let (Some(principal), Some(deployment)) = (principal, deployment) else {
        out.push_str(&format!(
            "  the troubleshooter explains policy decisions, and this Check stopped before one \
             ({}): there is no authenticated principal and deployment to ask about\n",
            reason.unwrap_or("no reason given")
        ));
        return out;
    };
    let shown = deployment
        .split_once("/environments/")
        .map_or(deployment.to_owned(), |(_, rest)| {
            rest.replacen("/deployments/", "/", 1)
        });
    let token = args.admin_token.clone().or_else(|| args.token.clone());
    let answer = match AdminClient::with_tls(&args.admin_url, token, &args.tls) {
        Ok(client) => {
            super::policy::ask(&client, deployment, principal, crate::iam::roles::INVOKE).await
        }
        Err(e) => Err(e),
    };
    match answer {
        Ok(answer) => {
            for line in super::policy::report(&answer, &shown, principal).lines() {
                if line.is_empty() {
                    out.push('\n');
                } else {
                    out.push_str(&format!("  {line}\n"));
                }
            }
        }
        Err(e) => out.push_str(&format!(
            "  the troubleshooter at {} could not answer: {}\n",
            args.admin_url, e.message
        )),
    }
    out
}

/// A header value as `check` prints it: bearer tokens shortened, an ID token's claims shown.
fn shown_header(key: &str, value: &str) -> String {
    let Some(token) = value.strip_prefix("Bearer ") else {
        return value.to_owned();
    };
    if !matches!(key, "authorization" | "x-forwarded-authorization") {
        return value.to_owned();
    }
    let short: String = token.chars().take(16).collect();
    match crate::backend::IdToken::parse(token) {
        Ok(t) if key == "authorization" => {
            format!("Bearer {short}… (ID token: {})", t.claims.summary())
        }
        _ => format!("Bearer {short}…"),
    }
}

/// Runs `check`: exit 0 when allowed, 1 when denied, 2 on a usage error, 3 when no answer came.
pub(super) async fn run(args: &CheckArgs) -> ExitCode {
    match check(args).await {
        Ok(outcome) => {
            print!("{}", outcome.report);
            if outcome.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("check: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
