//! `store …`: the PostgreSQL schema brought up to date without serving (`migrate`); a
//! consistent export of everything a store holds (`export`), its import (`import`), and a
//! verified copy from one store to another (`copy`). See [`crate::store::dump`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use std::sync::Arc;

use crate::config::{Config, ConfigError, IamConfig};
use crate::store::dump::{self, ImportMode, Imported};
use crate::store::{PolicyStore, StoreError};

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
    /// Write one consistent snapshot of the store (policies with their etags, deployments,
    /// custom roles, groups) as JSON Lines, while replicas serve and write.
    Export {
        /// The configuration file whose `iam.store` names the store.
        #[arg(long)]
        config: PathBuf,
        /// Overrides `iam.store`, as for `serve`.
        #[arg(long, env = "VERIFYIAM_STORE", hide_env_values = true)]
        store: Option<String>,
        /// Where to write the export (standard output by default).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Load an export into the store, in one transaction: into an empty store (or one that
    /// holds the same records: importing twice changes nothing) unless `--replace`.
    Import {
        /// The configuration file whose `iam.store` names the store.
        #[arg(long)]
        config: PathBuf,
        /// Overrides `iam.store`, as for `serve`.
        #[arg(long, env = "VERIFYIAM_STORE", hide_env_values = true)]
        store: Option<String>,
        /// Replace everything the store holds with the file's records.
        #[arg(long)]
        replace: bool,
        /// Print what would change and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// The export to load.
        file: PathBuf,
    },
    /// Copy everything from one store to another (empty, or holding the same records) and
    /// verify the copy: the same records with the same etags.
    Copy {
        /// The source: a configuration file, or a store (a directory or a PostgreSQL URL).
        #[arg(long)]
        from: String,
        /// The target store: a directory or a PostgreSQL URL.
        #[arg(long)]
        to: String,
        /// The configuration whose `[iam]` (project, bootstrap administrators) applies when
        /// `--from` is a store rather than a configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
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

/// Why a data command failed: exit 2 for the input (configuration, file), 3 for the store.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The configuration, or an argument.
    #[error("{0}")]
    Usage(String),
    /// The export file.
    #[error("{file}: {source}")]
    File {
        /// The file.
        file: String,
        /// What is wrong with it.
        source: crate::store::dump::DumpError,
    },
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The copy does not hold what was copied.
    #[error("the copy does not verify: {0}")]
    Verify(String),
}

impl DataError {
    fn code(&self) -> u8 {
        match self {
            DataError::Usage(_) | DataError::File { .. } => 2,
            // A refused login, a missing database or permission: the configuration's to fix.
            DataError::Store(e) if e.is_configuration() => 2,
            DataError::Store(_) | DataError::Verify(_) => 3,
        }
    }
}

/// The store `iam` names, loaded (a writing command migrates a PostgreSQL schema first).
pub async fn open_loaded(iam: &IamConfig, write: bool) -> Result<Arc<PolicyStore>, StoreError> {
    let store = Arc::new(PolicyStore::from_config(iam)?);
    store.load_now(write).await?;
    Ok(store)
}

/// `store export`: writes the export to `out`; the number of records.
pub async fn export(config: &Config, out: &mut dyn std::io::Write) -> Result<usize, DataError> {
    let store = open_loaded(&config.iam, false).await?;
    let snapshot = store.snapshot();
    dump::write(&snapshot, &config.iam.project, out)
        .map_err(|e| DataError::Store(StoreError::Io(format!("writing the export: {e}"))))
}

/// `store import`: loads `text` (the file's contents) into the store `config` names. Every
/// import that writes is audited.
pub async fn import(
    config: &Config,
    file: &str,
    text: &str,
    mode: ImportMode,
    dry_run: bool,
) -> Result<Imported, DataError> {
    let parsed = dump::parse(text).map_err(|source| DataError::File {
        file: file.to_owned(),
        source,
    })?;
    let (records, from_revision) = (parsed.records.len(), parsed.header.revision);
    let store = open_loaded(&config.iam, !dry_run).await?;
    let location = store.location();
    let imported = store.import(parsed, mode, dry_run).await?;
    if !dry_run && !imported.steps.is_empty() {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(text.as_bytes());
        tracing::info!(
            target: crate::admin::audit::AUDIT_TARGET,
            caller = %format!("cli:{}", std::env::var("USER").unwrap_or_default()).escape_debug(),
            action = "importStore",
            resource = %location,
            file = %file.escape_debug(),
            sha256 = %digest.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            replace = mode == ImportMode::Replace,
            records,
            exported_at_revision = from_revision,
            changes = imported.steps.len(),
            revision = imported.revision,
            "store import"
        );
    }
    Ok(imported)
}

/// `store copy`: everything from `from` into `to` (which must be empty or hold the same
/// records), then both read back and compared record by record (etags included). What was
/// done, for printing.
pub async fn copy(from: &IamConfig, to: &IamConfig) -> Result<String, DataError> {
    let source = open_loaded(from, false).await?;
    let mut text = Vec::new();
    dump::write(&source.snapshot(), &from.project, &mut text)
        .map_err(|e| StoreError::Io(e.to_string()))?;
    let text = String::from_utf8(text).map_err(|e| StoreError::Io(e.to_string()))?;
    let parsed = dump::parse(&text).map_err(|source| DataError::File {
        file: "(the source's export)".into(),
        source,
    })?;
    let target = open_loaded(to, true).await?;
    let imported = target
        .import(parsed.clone(), ImportMode::Empty, false)
        .await?;
    // The embedded store is one process's at a time: let go of it before reading it back.
    drop(target);
    // Read the target back from the database, not from the snapshot the write swapped in.
    let check = open_loaded(to, false).await?;
    let copied = dump::records(&check.snapshot());
    if copied != parsed.records {
        let first = parsed
            .records
            .iter()
            .zip(&copied)
            .position(|(a, b)| a != b)
            .unwrap_or(copied.len().min(parsed.records.len()));
        return Err(DataError::Verify(format!(
            "{} records copied, {} read back; they differ from record {}",
            parsed.records.len(),
            copied.len(),
            first + 1
        )));
    }
    tracing::info!(
        target: crate::admin::audit::AUDIT_TARGET,
        caller = %format!("cli:{}", std::env::var("USER").unwrap_or_default()).escape_debug(),
        action = "copyStore",
        resource = %check.location(),
        from = %source.location(),
        records = copied.len(),
        changes = imported.steps.len(),
        "store copy"
    );
    Ok(format!(
        "copied {} records from {} (revision {}) to {} (revision {}); verified: {} records, \
         etags equal\n",
        parsed.records.len(),
        source.location(),
        parsed.header.revision,
        check.location(),
        check.snapshot().epoch,
        copied.len()
    ))
}

fn load_config(path: &std::path::Path, store: Option<String>) -> Result<Config, DataError> {
    Config::load(path)
        .and_then(|mut c| {
            override_store(&mut c, store)?;
            Ok(c)
        })
        .map_err(|e| DataError::Usage(format!("{}: {e}", path.display())))
}

/// `base`'s `[iam]` with its store replaced by `location` (a directory or a URL).
fn iam_of(location: &str, base: &Config) -> Result<IamConfig, DataError> {
    let mut config = base.clone();
    override_store(&mut config, Some(location.to_owned()))
        .map_err(|e| DataError::Usage(format!("{location}: {e}")))?;
    Ok(config.iam)
}

async fn data(command: StoreCommand) -> Result<String, DataError> {
    match command {
        StoreCommand::Migrate { config, store } => {
            let loaded = load_config(&config, store)?;
            Ok(migrate(&loaded).await?)
        }
        StoreCommand::Export {
            config,
            store,
            output,
        } => {
            let loaded = load_config(&config, store)?;
            let Some(output) = output else {
                let mut out = std::io::stdout().lock();
                export(&loaded, &mut out).await?;
                return Ok(String::new());
            };
            // Written beside the target and renamed once complete: never half a file there.
            let partial = output.with_extension("partial");
            let mut file = std::fs::File::create(&partial)
                .map_err(|e| DataError::Usage(format!("{}: {e}", partial.display())))?;
            let n = export(&loaded, &mut file).await?;
            file.sync_all()
                .and_then(|()| std::fs::rename(&partial, &output))
                .map_err(|e| DataError::Usage(format!("{}: {e}", output.display())))?;
            Ok(format!("exported {n} records to {}\n", output.display()))
        }
        StoreCommand::Import {
            config,
            store,
            replace,
            dry_run,
            file,
        } => {
            let loaded = load_config(&config, store)?;
            let text = std::fs::read_to_string(&file)
                .map_err(|e| DataError::Usage(format!("{}: {e}", file.display())))?;
            let mode = if replace {
                ImportMode::Replace
            } else {
                ImportMode::Empty
            };
            let imported =
                import(&loaded, &file.display().to_string(), &text, mode, dry_run).await?;
            let mut report: String = imported.steps.iter().map(|s| format!("{s}\n")).collect();
            report.push_str(&match (dry_run, imported.steps.len()) {
                (_, 0) => format!(
                    "nothing to change: the store holds the file's records (revision {})\n",
                    imported.revision
                ),
                (true, n) => format!("dry run: {n} changes, nothing written\n"),
                (false, n) => format!(
                    "imported: {n} changes, store at revision {}\n",
                    imported.revision
                ),
            });
            Ok(report)
        }
        StoreCommand::Copy { from, to, config } => {
            let from_file = std::path::Path::new(&from);
            let from_config = (!crate::store::PgUrl::is_postgres(&from) && from_file.is_file())
                .then(|| load_config(from_file, None))
                .transpose()?;
            let base = config.map(|c| load_config(&c, None)).transpose()?;
            let Some(base) = base.or_else(|| from_config.clone()) else {
                return Err(DataError::Usage(format!(
                    "{from} is a store, not a configuration file: pass --config for the project"
                )));
            };
            let source = match from_config {
                Some(c) => c.iam,
                None => iam_of(&from, &base)?,
            };
            let target = iam_of(&to, &base)?;
            copy(&source, &target).await
        }
    }
}

/// Runs a `store` command: exit 2 for the configuration (including a refused login, a missing
/// database or permission) or the input file, 3 when the store (or the verification of a copy)
/// fails.
pub(super) async fn run(command: StoreCommand) -> ExitCode {
    let name = match &command {
        StoreCommand::Migrate { .. } => "store migrate",
        StoreCommand::Export { .. } => "store export",
        StoreCommand::Import { .. } => "store import",
        StoreCommand::Copy { .. } => "store copy",
    };
    match data(command).await {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(e.code())
        }
    }
}
