//! `config check` (validate a file without serving) and `config example` (every key, commented,
//! at its default: [`crate::config::EXAMPLE`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;

/// `config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file without serving.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print a complete configuration: every key, at its default, with what it does.
    Example,
}

/// Runs a `config` command: exit 2 when the file is not a valid configuration.
pub(super) fn run(command: ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Check { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(2)
            }
        },
        ConfigCommand::Example => {
            print!("{}", crate::config::EXAMPLE);
            ExitCode::SUCCESS
        }
    }
}
