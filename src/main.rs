//! The `verifyiam` binary: parses arguments, sets up logging, binds, and hands over to the
//! library. Exit codes: 0 success (for `check`: allowed), 1 `check` denied, 2 usage or
//! configuration error, 3 runtime failure (for `backend-token`: no token); the management
//! commands add 4 to 7 (see [`verifyiam::client::exit`]).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use std::io::Write as _;

use clap::Parser;
use tokio::net::TcpListener;

use verifyiam::cli::{Cli, Command, ConfigCommand, ServeArgs, StoreCommand, TokenCommand};
use verifyiam::config::Config;
use verifyiam::server::{self, Listeners};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCommand::Check { file }) => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        Command::Store(StoreCommand::Migrate { config, store }) => {
            verifyiam::telemetry::init_logging(false);
            let loaded = match Config::load(&config).and_then(|mut c| {
                verifyiam::cli::override_store(&mut c, store)?;
                Ok(c)
            }) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            runtime().block_on(async {
                match verifyiam::cli::migrate(&loaded).await {
                    Ok(report) => {
                        print!("{report}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("store migrate: {e}");
                        ExitCode::from(3)
                    }
                }
            })
        }
        Command::Token(TokenCommand::Mint {
            email,
            scope,
            lifetime,
            data_dir,
        }) => match verifyiam::cli::mint(&email, &scope, lifetime, &data_dir) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("token mint: {e}");
                ExitCode::from(2)
            }
        },
        Command::Check(args) => runtime().block_on(async {
            match verifyiam::cli::check(&args).await {
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
        }),
        Command::Serve(args) => serve(args),
        Command::BackendToken(args) => runtime().block_on(async {
            match verifyiam::cli::backend_token(&args).await {
                Ok(out) => {
                    print!("{}", out.stdout);
                    eprint!("{}", out.stderr);
                    ExitCode::SUCCESS
                }
                Err((code, reason)) => {
                    eprintln!("backend-token: {reason}");
                    ExitCode::from(code)
                }
            }
        }),
        management => runtime().block_on(async {
            match verifyiam::cli::manage(management).await {
                Ok(printed) => {
                    print!("{}", printed.stdout);
                    if let Some(note) = printed.note {
                        eprintln!("{note}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ERROR: {}", e.message);
                    ExitCode::from(e.code)
                }
            }
        }),
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
    let mut config = match (&args.config, args.dev) {
        (Some(path), _) => match Config::load(path).and_then(|mut c| {
            verifyiam::cli::override_store(&mut c, args.store.clone())?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        (None, _) => verifyiam::cli::dev_config(&args.data_dir),
    };
    if let Some(a) = args.extauthz_addr {
        config.server.extauthz_addr = a;
    }
    if let Some(a) = args.admin_addr {
        config.server.admin_addr = a;
    }
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
        if args.dev {
            if let (Some(e), Some(a)) = (ext, adm) {
                // A closed stdout (the reader went away) must not take the service down.
                let banner = verifyiam::cli::dev_banner(e, a, &args.data_dir);
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{banner}").and_then(|()| out.flush());
            }
        }
        tracing::info!(extauthz = ?ext, admin = ?adm, "serving");
        match server::serve(listeners, app, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(3)
            }
        }
    })
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
