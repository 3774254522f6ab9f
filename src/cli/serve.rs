//! `serve`: its arguments, the configuration it runs with (a file, or `--dev`'s), and the banner
//! `--dev` prints once it listens. The binary binds the listeners and runs [`crate::server`].

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::authn::dev::{DEV_ISSUER, KEY_FILE};
use crate::config::{
    AuthzConfig, BackendAuthConfig, BackendTokenSource, Config, DevIssuerConfig, IamConfig,
    ServerConfig, TokenConfig,
};

/// `serve --dev`'s data directory unless `--data-dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = ".verifyiam-dev";

/// `word` as one shell word: as it is when plain, else single-quoted.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
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
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
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

/// The configuration `serve` runs with: the file (with `--store` applied) or `--dev`'s, then the
/// listener address overrides. `Err` is the message to print (exit code 2).
pub fn serve_config(args: &ServeArgs) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)
            .and_then(|mut c| {
                super::override_store(&mut c, args.store.clone())?;
                Ok(c)
            })
            .map_err(|e| format!("{}: {e}", path.display()))?,
        None => dev_config(&args.data_dir),
    };
    if let Some(a) = args.extauthz_addr {
        config.server.extauthz_addr = a;
    }
    if let Some(a) = args.admin_addr {
        config.server.admin_addr = a;
    }
    Ok(config)
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
            tombstone_horizon: Duration::from_secs(7 * 24 * 3600),
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
        authz: AuthzConfig::default(),
        routes: Vec::new(),
        // Backend ID tokens signed by the development key, so `check` shows them offline.
        backend_auth: Some(BackendAuthConfig::new(BackendTokenSource::Dev)),
    }
}

/// How the banner names the command: `cargo run -q --` under `cargo run`, else the program as
/// it was invoked (`verifyiam` from the PATH, `./target/release/verifyiam`, …).
pub fn invoked_as() -> String {
    if std::env::var_os("CARGO").is_some() && std::env::var_os("CARGO_MANIFEST_DIR").is_some() {
        return "cargo run -q --".to_owned();
    }
    std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| !a.is_empty() && !a.contains(char::is_whitespace))
        .unwrap_or_else(|| "verifyiam".to_owned())
}

/// What `serve --dev` prints once it listens; `command` is how to run verifyiam again
/// ([`invoked_as`]), and a `data_dir` other than the default is passed on to `token mint`.
pub fn dev_banner(
    extauthz: SocketAddr,
    admin: SocketAddr,
    data_dir: &Path,
    command: &str,
) -> String {
    let d = data_dir.display();
    let data = if data_dir == Path::new(DEFAULT_DATA_DIR) {
        String::new()
    } else {
        format!(" --data-dir {}", shell_word(&data_dir.to_string_lossy()))
    };
    let run = command;
    format!(
        "verifyiam is serving in development mode (data in {d})
  ext_authz gRPC  {extauthz}   (Envoy: envoy.service.auth.v3.Authorization/Check)
  admin HTTP      http://{admin}   (/v1 REST and google.iam.v1 gRPC, /metrics, /healthz, /readyz)
  project         dev-project; admin@example.com holds roles/owner

Try it (another shell, same directory):
  ADMIN=$({run} token mint --email admin@example.com{data})
  ALICE=$({run} token mint --email alice@example.com{data})
  {run} check --addr http://{extauthz} --deployment prod/orders --token \"$ALICE\"   # 403
  curl -s 'http://{admin}/v1/organizations/dev-project/environments/prod/deployments/orders:setIamPolicy' \\
    --header \"Authorization: Bearer $ADMIN\" --header 'Content-Type: application/json' \\
    --data '{{\"policy\":{{\"bindings\":[{{\"members\":[\"user:alice@example.com\"],\"role\":\"roles/apigee.deploymentInvoker\"}}]}}}}'
  {run} check --addr http://{extauthz} --deployment prod/orders --token \"$ALICE\"   # allowed
  {run} check --addr http://{extauthz} --deployment prod/orders --token \"$ALICE\" \\
    --backend-audience https://orders-7x2kq-uc.a.run.app   # allowed, with the backend's ID token
"
    )
}

/// With `--dev`, prints [`dev_banner`] for the addresses the listeners got.
pub fn print_dev_banner(args: &ServeArgs, extauthz: SocketAddr, admin: SocketAddr) {
    if args.dev {
        // A closed stdout (the reader went away) must not take the service down.
        let banner = dev_banner(extauthz, admin, &args.data_dir, &invoked_as());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{banner}").and_then(|()| out.flush());
    }
}
