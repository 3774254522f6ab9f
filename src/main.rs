//! The `verifyiam` binary: parses arguments, sets up logging, binds, and hands over to the
//! library ([`verifyiam::cli`] runs the commands and names the exit codes).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tokio::net::TcpListener;

use verifyiam::cli::{Cli, Command, ServeArgs};
use verifyiam::server::{self, Listeners};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        command => {
            if let Command::Store(_) = command {
                verifyiam::telemetry::init_logging(false);
            }
            runtime().block_on(verifyiam::cli::run(command))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

fn serve(args: ServeArgs) -> ExitCode {
    verifyiam::telemetry::init_logging(args.log_json);
    let config = match verifyiam::cli::serve_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    runtime().block_on(async move {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))
        };
        let listeners = match (
            bind(config.server.extauthz_addr).await,
            bind(config.server.admin_addr).await,
        ) {
            (Ok(extauthz), Ok(admin)) => Listeners { extauthz, admin },
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("{e}");
                return ExitCode::from(3);
            }
        };
        let (ext, adm) = (
            listeners.extauthz.local_addr().ok(),
            listeners.admin.local_addr().ok(),
        );
        let app = match server::App::build(config) {
            Ok(app) => app,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(3);
            }
        };
        if let (Some(e), Some(a)) = (ext, adm) {
            verifyiam::cli::print_dev_banner(&args, e, a);
        }
        if let (Some(e), Some(a)) = (ext, adm) {
            tracing::info!(
                extauthz = %e,
                extauthz_tls = %tls_mode(app.config.server.tls.as_ref()),
                admin = %a,
                admin_tls = %tls_mode(app.config.server.admin_tls.as_ref()),
                "serving"
            );
        }
        match server::serve(listeners, app, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            // A refused login, a missing database or permission: only the operator can fix it.
            Err(server::ServerError::Store(e)) if e.is_configuration() => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(3)
            }
        }
    })
}

/// How a listener speaks: `off` (plaintext), `tls`, or `mtls` (a client certificate required).
fn tls_mode(tls: Option<&verifyiam::config::TlsConfig>) -> &'static str {
    match tls {
        None => "off",
        Some(t) if t.client_ca_file.is_some() => "mtls",
        Some(_) => "tls",
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
