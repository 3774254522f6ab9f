//! `check`: one Envoy-shaped CheckRequest sent to a running service, its answer printed.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::Args;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

/// `check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The ext_authz gRPC endpoint.
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
}

/// The outcome of `check`, for printing and the exit code.
pub struct CheckOutcome {
    /// Whether Envoy would let the request through.
    pub allowed: bool,
    /// Printable report.
    pub report: String,
}

/// `check`: sends one CheckRequest shaped like Envoy's.
pub async fn check(args: &CheckArgs) -> Result<CheckOutcome, String> {
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
            .ok_or_else(|| "--deployment must be ENV/API".to_owned())?;
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
    let mut client = AuthorizationClient::connect(args.addr.clone())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
    let response = client
        .check(request)
        .await
        .map_err(|s| format!("Check failed: {} {}", s.code(), s.message()))?
        .into_inner();
    let code = response.status.as_ref().map(|s| s.code).unwrap_or(0);
    let allowed = code == 0;
    let mut report = format!(
        "decision: {}\ngrpc status: {code}\n",
        if allowed { "ALLOW" } else { "DENY" }
    );
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
    Ok(CheckOutcome { allowed, report })
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

/// Runs `check`: exit 0 when allowed, 1 when denied, 3 when no answer came.
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
            eprintln!("check: {e}");
            ExitCode::from(3)
        }
    }
}
