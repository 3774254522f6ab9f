//! Command-line interface: argument parsing and the small client commands (`token mint`,
//! `check`, `config check`, and the gcloud-shaped management commands `projects`,
//! `environments`, `deployments`, `roles`, `groups` over [`crate::client`]). Serving itself lives
//! in [`crate::server`].

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

use reqwest::Method;
use serde_json::{Value, json};

use crate::authn::dev::{DEV_ISSUER, DevIssuer, KEY_FILE};
use crate::client::{AdminClient, ClientError, Format};
use crate::config::{
    CLOUD_PLATFORM_SCOPE, Config, ConfigError, DevIssuerConfig, IamConfig, ServerConfig,
    TokenConfig,
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
    /// Fetch the gateway's ID token for a backend exactly as `serve` would, and show its claims.
    BackendToken(BackendTokenArgs),
}

/// `backend-token`
#[derive(Debug, Args)]
pub struct BackendTokenArgs {
    /// The TOML configuration file (its `[backend_auth]` table).
    #[arg(long)]
    pub config: PathBuf,
    /// The backend's audience, e.g. its Cloud Run URL.
    #[arg(long)]
    pub audience: String,
    /// Print the token itself on stdout, alone (the claims then go to stderr).
    #[arg(long)]
    pub print_token: bool,
}

/// How the management commands reach the admin API.
#[derive(Debug, Args)]
pub struct Connection {
    /// The admin endpoint.
    #[arg(
        long,
        global = true,
        env = "VERIFYIAM_ADMIN_URL",
        default_value = "http://127.0.0.1:9002"
    )]
    pub admin_url: String,
    /// The caller's access token.
    #[arg(long, global = true, env = "VERIFYIAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "json")]
    pub format: crate::client::Format,
}

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

/// `projects …`
#[derive(Debug, Args)]
pub struct ProjectsArgs {
    /// Where and as whom.
    #[command(flatten)]
    pub connection: Connection,
    /// What.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// `environments …`
#[derive(Debug, Args)]
pub struct EnvironmentsArgs {
    /// Where and as whom.
    #[command(flatten)]
    pub connection: Connection,
    /// The Apigee organization (the project id unless configured otherwise).
    #[arg(long, global = true, env = "VERIFYIAM_ORGANIZATION")]
    pub organization: Option<String>,
    /// What.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

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
    /// Overrides `iam.store` (with `--config` only), e.g. a PostgreSQL URL kept in a secret.
    #[arg(long, env = "VERIFYIAM_STORE", hide_env_values = true)]
    pub store: Option<String>,
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

/// `store …`
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Apply the PostgreSQL schema migrations the database lacks (`serve` also does at start).
    Migrate {
        /// The configuration file whose `iam.store` names the database.
        #[arg(long)]
        config: PathBuf,
        /// Overrides `iam.store`, as for `serve`.
        #[arg(long, env = "VERIFYIAM_STORE", hide_env_values = true)]
        store: Option<String>,
    },
}

/// Applies a `--store` / `VERIFYIAM_STORE` override of `iam.store` and validates the result.
pub fn override_store(config: &mut Config, store: Option<String>) -> Result<(), ConfigError> {
    if let Some(store) = store {
        config.iam.store = PathBuf::from(store);
        config.validate()?;
    }
    Ok(())
}

/// `store migrate`: what was done, for printing.
pub async fn migrate(config: &Config) -> Result<String, crate::store::StoreError> {
    let location = config.iam.store.to_string_lossy();
    if !crate::store::PgUrl::is_postgres(&location) {
        crate::store::PolicyStore::open(
            &config.iam.store,
            &config.iam.project,
            &config.iam.bootstrap_admins,
        )?;
        return Ok(format!(
            "embedded store at {}: nothing to migrate\n",
            config.iam.store.display()
        ));
    }
    let url = crate::store::PgUrl::parse(&location)
        .map_err(|e| crate::store::StoreError::Io(format!("iam.store: {e}")))?;
    let (applied, version) = crate::store::postgres::migrate(&url).await?;
    Ok(if applied.is_empty() {
        format!("{url}: schema already at version {version}\n")
    } else {
        format!("{url}: applied {applied:?}; schema at version {version}\n")
    })
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
    /// The backend's ID-token audience (context_extensions `backend_audience`).
    #[arg(long)]
    pub backend_audience: Option<String>,
}

/// The configuration `serve --dev` runs with.
pub fn dev_config(data_dir: &Path) -> Config {
    Config {
        server: ServerConfig::default(),
        iam: IamConfig {
            project: "dev-project".to_owned(),
            organization: None,
            store: data_dir.join("store"),
            max_staleness: Duration::from_secs(300),
            bootstrap_admins: vec!["user:admin@example.com".to_owned()],
            strict_deployments: false,
            groups: Vec::new(),
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
        // Backend ID tokens signed by the development key, so `check` shows them offline.
        backend_auth: Some(crate::config::BackendAuthConfig::new(
            crate::config::BackendTokenSource::Dev,
        )),
    }
}

/// What `serve --dev` prints once it listens.
pub fn dev_banner(extauthz: SocketAddr, admin: SocketAddr, data_dir: &Path) -> String {
    let d = data_dir.display();
    format!(
        "verifyiam is serving in development mode (data in {d})
  ext_authz gRPC  {extauthz}   (Envoy: envoy.service.auth.v3.Authorization/Check)
  admin HTTP      http://{admin}   (/v1 REST and google.iam.v1 gRPC, /metrics, /healthz, /readyz)
  project         dev-project; admin@example.com holds roles/owner

Try it (another shell, same directory):
  ADMIN=$(cargo run -q -- token mint --email admin@example.com)
  ALICE=$(cargo run -q -- token mint --email alice@example.com)
  cargo run -q -- check --addr http://{extauthz} --deployment prod/orders --token \"$ALICE\"   # 403
  curl -s 'http://{admin}/v1/organizations/dev-project/environments/prod/deployments/orders:setIamPolicy' \\
    --header \"Authorization: Bearer $ADMIN\" --header 'Content-Type: application/json' \\
    --data '{{\"policy\":{{\"bindings\":[{{\"members\":[\"user:alice@example.com\"],\"role\":\"roles/apigee.deploymentInvoker\"}}]}}}}'
  cargo run -q -- check --addr http://{extauthz} --deployment prod/orders --token \"$ALICE\"   # allowed
  cargo run -q -- check --addr http://{extauthz} --deployment prod/orders --token \"$ALICE\" \\
    --backend-audience https://orders-7x2kq-uc.a.run.app   # allowed, with the backend's ID token
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

/// What `backend-token` prints: stdout and stderr.
pub struct BackendTokenOutput {
    /// The claims, or the token alone with `--print-token`.
    pub stdout: String,
    /// The claims with `--print-token`.
    pub stderr: String,
}

/// `backend-token`: the token as `serve` would fetch it. `Err` carries the exit code (2: the
/// configuration or the audience; 3: the fetch) and the reason.
pub async fn backend_token(args: &BackendTokenArgs) -> Result<BackendTokenOutput, (u8, String)> {
    let config =
        Config::load(&args.config).map_err(|e| (2, format!("{}: {e}", args.config.display())))?;
    let Some(backend) = &config.backend_auth else {
        return Err((
            2,
            format!("{}: no [backend_auth] table", args.config.display()),
        ));
    };
    crate::backend::check_audience(&args.audience).map_err(|e| (2, format!("--audience: {e}")))?;
    let dev = match (&config.token.dev, backend.source) {
        (Some(d), crate::config::BackendTokenSource::Dev) => Some(std::sync::Arc::new(
            DevIssuer::load_or_create(&d.issuer, &d.key_file).map_err(|e| (3, e.to_string()))?,
        )),
        _ => None,
    };
    let token = crate::backend::fetch_once(backend, dev, &config.iam.project, &args.audience)
        .await
        .map_err(|e| (3, e))?;
    let claims = token.claims.lines();
    Ok(if args.print_token {
        BackendTokenOutput {
            stdout: format!("{}\n", token.token()),
            stderr: claims,
        }
    } else {
        BackendTokenOutput {
            stdout: claims,
            stderr: String::new(),
        }
    })
}

/// What a management command prints: the result on stdout, an optional note on stderr.
#[derive(Debug)]
pub struct Printed {
    /// The result, rendered in the requested format.
    pub stdout: String,
    /// A human note (e.g. `Updated IAM policy for deployment [orders].`).
    pub note: Option<String>,
}

fn segment<'a>(flag: &str, value: Option<&'a str>) -> Result<&'a str, ClientError> {
    match value {
        Some(v) if crate::config::is_segment(v) => Ok(v),
        Some(v) => Err(ClientError::usage(format!(
            "{flag} {v:?} is not a valid name (letters, digits, '-', '_', '.')"
        ))),
        None => Err(ClientError::usage(format!("{flag} is required"))),
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn policy_command(
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

/// Runs a management command against the admin API.
pub async fn manage(command: Command) -> Result<Printed, ClientError> {
    match command {
        Command::Projects(a) => {
            let client = AdminClient::new(&a.connection.admin_url, a.connection.token)?;
            let path = |p: &str| Ok(format!("/v1/projects/{}", segment("PROJECT", Some(p))?));
            policy_command(&client, a.connection.format, "project", path, a.command).await
        }
        Command::Environments(a) => {
            let client = AdminClient::new(&a.connection.admin_url, a.connection.token)?;
            let org = a.organization.clone();
            let path = |e: &str| {
                Ok(format!(
                    "/v1/organizations/{}/environments/{}",
                    segment("--organization", org.as_deref())?,
                    segment("ENVIRONMENT", Some(e))?
                ))
            };
            policy_command(&client, a.connection.format, "environment", path, a.command).await
        }
        Command::Deployments(a) => {
            let client = AdminClient::new(&a.connection.admin_url, a.connection.token)?;
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
        Command::Roles(a) => {
            let client = AdminClient::new(&a.connection.admin_url, a.connection.token)?;
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
        Command::Groups(a) => {
            let client = AdminClient::new(&a.connection.admin_url, a.connection.token)?;
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
        _ => Err(ClientError::usage("not a management command")),
    }
}
