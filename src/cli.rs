//! Command-line interface: argument parsing and the small client commands (`token mint`,
//! `check`, `config check`). Serving itself lives in [`crate::server`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

use crate::authn::dev::{DEV_ISSUER, DevIssuer, KEY_FILE};
use crate::config::{
    CLOUD_PLATFORM_SCOPE, Config, DevIssuerConfig, IamConfig, ServerConfig, TokenConfig,
};

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
    /// Development tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Send an Envoy-shaped Check and print the decision.
    Check(CheckArgs),
}

/// `serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The TOML configuration file.
    #[arg(long, conflicts_with = "dev", required_unless_present = "dev")]
    pub config: Option<PathBuf>,
    /// Run with no config: local store, development issuer, loopback only.
    #[arg(long)]
    pub dev: bool,
    /// Data directory for `--dev`.
    #[arg(long, default_value = ".verifyiam-dev")]
    pub data_dir: PathBuf,
    /// Overrides `server.extauthz_addr` (port 0 picks a free port; the banner shows it).
    #[arg(long)]
    pub extauthz_addr: Option<SocketAddr>,
    /// Overrides `server.admin_addr`.
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

/// `config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file without serving.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// `token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint an access token from the development issuer (the key `serve --dev` trusts).
    Mint {
        /// The caller's email.
        #[arg(long)]
        email: String,
        /// The scopes, space-separated.
        #[arg(long, default_value = CLOUD_PLATFORM_SCOPE)]
        scope: String,
        /// How long the token lives.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        lifetime: Duration,
        /// Data directory of `serve --dev`.
        #[arg(long, default_value = ".verifyiam-dev")]
        data_dir: PathBuf,
    },
}

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
}

/// The configuration `serve --dev` runs with.
pub fn dev_config(data_dir: &Path) -> Config {
    Config {
        server: ServerConfig::default(),
        iam: IamConfig {
            project: "dev-project".to_owned(),
            organization: None,
            store: data_dir.join("store"),
            bootstrap_admins: vec!["user:admin@example.com".to_owned()],
        },
        token: TokenConfig {
            dev: Some(DevIssuerConfig {
                issuer: DEV_ISSUER.to_owned(),
                key_file: data_dir.join(KEY_FILE),
            }),
            ..TokenConfig::default()
        },
        authz: crate::config::AuthzConfig::default(),
        routes: Vec::new(),
    }
}

/// What `serve --dev` prints once it listens.
pub fn dev_banner(extauthz: SocketAddr, admin: SocketAddr, data_dir: &Path) -> String {
    let d = data_dir.display();
    format!(
        "verifyiam is serving in development mode (data in {d})
  ext_authz gRPC  {extauthz}   (Envoy: envoy.service.auth.v3.Authorization/Check)
  admin HTTP      http://{admin}   (/v1 IAM policy API, /metrics, /healthz, /readyz)
  project         dev-project; admin@example.com holds roles/owner

Try it (another shell, same directory):
  ADMIN=$(cargo run -q -- token mint --email admin@example.com)
  ALICE=$(cargo run -q -- token mint --email alice@example.com)
  cargo run -q -- check --addr http://{extauthz} --deployment prod/orders --token \"$ALICE\"   # 403
  curl -s 'http://{admin}/v1/organizations/dev-project/environments/prod/deployments/orders:setIamPolicy' \\
    --header \"Authorization: Bearer $ADMIN\" --header 'Content-Type: application/json' \\
    --data '{{\"policy\":{{\"bindings\":[{{\"members\":[\"user:alice@example.com\"],\"role\":\"roles/apigee.deploymentInvoker\"}}]}}}}'
  cargo run -q -- check --addr http://{extauthz} --deployment prod/orders --token \"$ALICE\"   # allowed
"
    )
}

/// `token mint`: prints a development token.
pub fn mint(
    email: &str,
    scope: &str,
    lifetime: Duration,
    data_dir: &Path,
) -> Result<String, String> {
    let path = data_dir.join(KEY_FILE);
    if !path.exists() {
        return Err(format!(
            "no development key at {} (run `verifyiam serve --dev` first, or pass --data-dir)",
            path.display()
        ));
    }
    crate::iam::member::Member::parse(&format!("user:{email}")).map_err(|e| e.to_string())?;
    let issuer = DevIssuer::load_or_create(DEV_ISSUER, &path).map_err(|e| e.to_string())?;
    issuer
        .mint(email, scope, lifetime.as_secs())
        .map_err(|e| e.to_string())
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
                report.push_str(&format!("upstream header: {}: {}\n", h.key, h.value));
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
