//! Wiring: builds the stages from a [`Config`] and serves the ext_authz and admin listeners it is
//! handed until the shutdown future resolves. It binds nothing itself, so tests pass listeners on
//! `127.0.0.1:0`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::authn::Authenticator;
use crate::authn::dev::{DevIssuer, DevKeyError};
use crate::authz::Authorizer;
use crate::authz::google::GoogleSource;
use crate::config::{AuthzMode, Config, ServerConfig, TlsConfig};
use crate::extauthz::grpc::AuthorizationServer;
use crate::extauthz::{CheckService, Checker};
use crate::listener::{self, Kind, Limits};
use crate::route::Router;
use crate::store::{PolicyStore, StoreError};
use crate::tls::{Alpn, Reloading, TlsError};

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The development key could not be had.
    #[error("development issuer: {0}")]
    DevKey(#[from] DevKeyError),
    /// The backend identity (`[backend_auth]`) could not be built.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    /// The HTTP client for upstreams could not be built.
    #[error("http client: {0}")]
    Http(String),
    /// A listener's TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The two listeners, already bound.
pub struct Listeners {
    /// Envoy ext_authz gRPC + `grpc.health.v1`.
    pub extauthz: TcpListener,
    /// Admin REST, metrics, health.
    pub admin: TcpListener,
}

/// The built service.
pub struct App {
    /// The configuration it was built from.
    pub config: Config,
    /// The policy store.
    pub store: Arc<PolicyStore>,
    /// Token verification.
    pub authenticator: Arc<Authenticator>,
    /// Invoke decisions.
    pub authorizer: Arc<Authorizer>,
    /// The Check pipeline.
    pub checker: Arc<Checker>,
    /// The development issuer, when configured.
    pub dev: Option<Arc<DevIssuer>>,
    /// ID tokens for backends, when `[backend_auth]` is configured.
    pub backend: Option<crate::backend::BackendIdentity>,
}

impl App {
    /// Opens the store and builds every stage.
    pub fn build(config: Config) -> Result<App, ServerError> {
        let store = Arc::new(PolicyStore::from_config(&config.iam)?);
        // Management data: `[[iam.groups]]` sets the groups it names at start (with PostgreSQL,
        // once the first load is in), audited; the API leaves those groups alone.
        admin::groups::seed_groups(&store, &config.iam.groups)?;
        let http = http_for(config.token.fetch_timeout)?;
        let dev = match &config.token.dev {
            Some(d) => Some(Arc::new(DevIssuer::load_or_create(&d.issuer, &d.key_file)?)),
            None => None,
        };
        let fixed = dev
            .iter()
            .map(|d| (d.issuer().to_owned(), d.key_set()))
            .collect();
        let authenticator = Arc::new(Authenticator::new(&config.token, http, fixed));
        let organization = config.iam.organization().to_owned();
        let router = Arc::new(Router::new(&organization, &config.routes));
        let authorizer = Arc::new(
            match config.authz.mode {
                AuthzMode::Local => Authorizer::local(
                    store.clone(),
                    &config.iam.project,
                    &organization,
                    &config.authz,
                ),
                AuthzMode::Google => Authorizer::remote(
                    store.clone(),
                    Arc::new(GoogleSource::new(
                        http_for(config.authz.timeout)?,
                        &config.authz.apigee_url,
                    )),
                    &config.authz,
                    config.server.check_deadline,
                ),
            }
            .with_strict_deployments(config.iam.strict_deployments),
        );
        let backend = match &config.backend_auth {
            Some(b) => Some(crate::backend::BackendIdentity::from_config(
                b,
                dev.clone(),
                &config.iam.project,
            )?),
            None => None,
        };
        let checker = Arc::new(
            Checker::new(
                router,
                authenticator.clone(),
                authorizer.clone(),
                config.server.check_deadline,
                &config.token.required_scope,
            )
            .with_backend_identity(backend.clone()),
        );
        Ok(App {
            config,
            store,
            authenticator,
            authorizer,
            checker,
            dev,
            backend,
        })
    }
}

/// An HTTP client for upstreams, every request bounded by `timeout`.
fn http_for(timeout: Duration) -> Result<reqwest::Client, ServerError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("verifyiam/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ServerError::Http(e.to_string()))
}

/// The full names of the deployments `[[routes]]` name.
fn route_deployments(config: &Config) -> Vec<String> {
    let organization = config.iam.organization();
    config
        .routes
        .iter()
        .map(|r| {
            crate::route::Target::new(
                r.organization.as_deref().unwrap_or(organization),
                &r.environment,
                &r.deployment,
            )
            .name
            .to_string()
        })
        .collect()
}

async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health
        .set_service_status(
            <AuthorizationServer as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health.set_service_status("", status).await;
}

/// Builds the service from `config` and serves until `shutdown` resolves.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let app = App::build(config)?;
    serve(listeners, app, shutdown).await
}

/// Serves a built service until `shutdown` resolves.
pub async fn serve(
    listeners: Listeners,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let stop = CancellationToken::new();
    let tls = ListenerTls::start(&app.config.server, &stop).inspect_err(|_| stop.cancel())?;
    listener::check_descriptor_budget(&app.config.server);
    let metrics = crate::telemetry::metrics_handle();
    let upkeep = {
        let metrics = metrics.clone();
        let stop = stop.clone();
        let (authenticator, authorizer) = (app.authenticator.clone(), app.authorizer.clone());
        let backend = app.backend.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let (tokens, rejected) = authenticator.cache_sizes();
                        metrics::gauge!("verifyiam_cache_entries", "cache" => "token").set(tokens as f64);
                        metrics::gauge!("verifyiam_cache_entries", "cache" => "token_rejected").set(rejected as f64);
                        metrics::gauge!("verifyiam_cache_entries", "cache" => "decision")
                            .set(authorizer.cache_size() as f64);
                        if let Some(b) = &backend {
                            metrics::gauge!("verifyiam_cache_entries", "cache" => "backend_token")
                                .set(b.cache_size() as f64);
                        }
                        metrics.run_upkeep();
                    }
                }
            }
        })
    };

    // The store: with PostgreSQL, connect, migrate, load, then follow the database's changes.
    let sync = {
        let (store, stop) = (app.store.clone(), stop.clone());
        tokio::spawn(async move {
            let outcome = store.run(stop.clone()).await;
            if outcome.is_err() {
                stop.cancel();
            }
            outcome
        })
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    // SERVING only while Checks can be answered from a loaded, fresh enough snapshot.
    let health_task = {
        let (store, stop, health) = (app.store.clone(), stop.clone(), health.clone());
        let mut serving = store.is_fresh();
        set_health(&health, serving).await;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let fresh = store.is_fresh();
                        if fresh != serving {
                            serving = fresh;
                            set_health(&health, fresh).await;
                        }
                        if let Some(s) = store.staleness().filter(|_| store.is_shared()) {
                            metrics::gauge!("verifyiam_store_staleness_seconds").set(s.as_secs_f64());
                        }
                    }
                }
            }
        })
    };
    let check = AuthorizationServer::new(CheckService::new(
        app.checker.clone(),
        app.config.server.on_dependency_failure,
    ));
    let grpc = listener::serve(
        Kind::ExtAuthz,
        listeners.extauthz,
        tls.extauthz.clone(),
        Limits::for_listener(&app.config.server, Kind::ExtAuthz),
        tonic::service::Routes::new(health_service)
            .add_service(check)
            .prepare(),
        stop.clone(),
    );

    let state = Arc::new(AdminState {
        store: app.store.clone(),
        authenticator: app.authenticator.clone(),
        project: app.config.iam.project.clone(),
        organization: app.config.iam.organization().to_owned(),
        dev_jwks: app.dev.as_ref().map(|d| d.jwk_set()),
        metrics,
        strict_deployments: app.config.iam.strict_deployments,
        route_deployments: route_deployments(&app.config),
    });
    // The listener bounds bodies (`server.max_body_bytes`); axum's own default must not
    // silently cap them lower.
    let admin = listener::serve(
        Kind::Admin,
        listeners.admin,
        tls.admin.clone(),
        Limits::for_listener(&app.config.server, Kind::Admin),
        admin::service(state).layer(axum::extract::DefaultBodyLimit::disable()),
        stop.clone(),
    );

    let trigger = {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        })
    };
    tokio::join!(
        async {
            grpc.await;
            stop.cancel();
        },
        async {
            admin.await;
            stop.cancel();
        }
    );
    trigger.abort();
    let _ = upkeep.await;
    let _ = health_task.await;
    for watcher in tls.watchers {
        let _ = watcher.await;
    }
    if let Ok(Err(e)) = sync.await {
        return Err(ServerError::Store(e));
    }
    Ok(())
}

/// The listeners' TLS, loaded at start, and the tasks that reload it.
struct ListenerTls {
    extauthz: Option<Arc<Reloading>>,
    admin: Option<Arc<Reloading>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl ListenerTls {
    fn start(config: &ServerConfig, stop: &CancellationToken) -> Result<ListenerTls, ServerError> {
        let mut watchers = Vec::new();
        let mut load = |tls: Option<&TlsConfig>, field, alpn| -> Result<_, ServerError> {
            let Some(tls) = tls else { return Ok(None) };
            let reloading = Arc::new(Reloading::load(tls, field, alpn)?);
            watchers.push(tokio::spawn(reloading.clone().watch(stop.clone())));
            Ok(Some(reloading))
        };
        let extauthz = load(config.tls.as_ref(), "server.tls", Alpn::Http2)?;
        let admin = load(
            config.admin_tls.as_ref(),
            "server.admin_tls",
            Alpn::Http2AndHttp1,
        )?;
        Ok(ListenerTls {
            extauthz,
            admin,
            watchers,
        })
    }
}
