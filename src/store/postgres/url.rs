//! `postgres://` URLs (libpq style) and the connections made from them: `sslmode` over rustls,
//! errors that name the database as `user@host:port/db` and never carry the password.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::CONNECT_TIMEOUT;
use crate::store::StoreError;

/// How the connection is protected (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, else plain; the certificate is not verified (libpq's
    /// `allow` and `prefer`, the default).
    Prefer,
    /// TLS, certificate not verified (libpq's `require`).
    Require,
    /// TLS, certificate chain verified, host name not (libpq's `verify-ca`).
    VerifyCa,
    /// TLS, certificate chain and host name verified (libpq's `verify-full`).
    VerifyFull,
}

/// A parsed `postgres://` / `postgresql://` URL (libpq style). Shows itself without password.
#[derive(Clone)]
pub struct PgUrl {
    config: tokio_postgres::Config,
    ssl: SslMode,
    root_cert: Option<PathBuf>,
    shown: String,
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.shown)
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

fn decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl PgUrl {
    /// Whether `store` names a PostgreSQL database rather than a directory.
    pub fn is_postgres(store: &str) -> bool {
        store.starts_with("postgres://") || store.starts_with("postgresql://")
    }

    /// Parses a URL; the password comes from the URL or else `PGPASSWORD`, the user from the
    /// URL or else `PGUSER`. The error never repeats the URL (it may hold a password).
    pub fn parse(text: &str) -> Result<PgUrl, String> {
        Self::parse_with(text, |k| std::env::var(k).ok())
    }

    fn parse_with(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<PgUrl, String> {
        if !Self::is_postgres(text) {
            return Err("must start with postgres:// or postgresql://".to_owned());
        }
        let url = url::Url::parse(text).map_err(|e| format!("not a valid URL: {e}"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("needs a host (postgres://user@host:5432/dbname)")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().unwrap_or(5432);
        let user = match decoded(url.username()) {
            u if !u.is_empty() => u,
            _ => env("PGUSER")
                .filter(|u| !u.is_empty())
                .ok_or("needs a user name (postgres://user@host/dbname, or PGUSER)")?,
        };
        let password = url
            .password()
            .map(decoded)
            .or_else(|| env("PGPASSWORD"))
            .filter(|p| !p.is_empty());
        let dbname = match decoded(url.path().trim_start_matches('/')) {
            d if d.is_empty() => user.clone(),
            d if d.contains('/') => return Err("the database name must not contain '/'".into()),
            d => d,
        };
        let mut config = tokio_postgres::Config::new();
        config
            .host(&host)
            .port(port)
            .user(&user)
            .dbname(&dbname)
            .application_name("verifyiam")
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if let Some(p) = &password {
            config.password(p.as_bytes());
        }
        let mut ssl = SslMode::Prefer;
        let mut root_cert = None;
        for (key, value) in url.query_pairs() {
            match &*key {
                "sslmode" => {
                    ssl = match &*value {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => return Err(format!("unknown sslmode {other:?}")),
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(&*value)),
                "application_name" => {
                    config.application_name(&*value);
                }
                "connect_timeout" => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| "connect_timeout must be a number of seconds".to_owned())?;
                    config.connect_timeout(Duration::from_secs(secs.max(1)));
                }
                other => return Err(format!("unsupported URL parameter {other:?}")),
            }
        }
        config.ssl_mode(match ssl {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let shown = if host.contains(':') {
            format!("{user}@[{host}]:{port}/{dbname}")
        } else {
            format!("{user}@{host}:{port}/{dbname}")
        };
        Ok(PgUrl {
            config,
            ssl,
            root_cert,
            shown,
        })
    }

    /// The `sslmode` in force.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl
    }

    /// The database name.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    fn tls(&self) -> Result<MakeRustlsConnect, StoreError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Io(format!("tls: {e}")))?;
        let config = match self.ssl {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let mut roots = rustls::RootCertStore::empty();
                match &self.root_cert {
                    Some(path) => {
                        let pem = std::fs::read(path).map_err(|e| {
                            StoreError::Io(format!("sslrootcert {}: {e}", path.display()))
                        })?;
                        for cert in rustls_pemfile_certs(&pem) {
                            roots.add(cert).map_err(|e| {
                                StoreError::Io(format!("sslrootcert {}: {e}", path.display()))
                            })?;
                        }
                    }
                    None => {
                        for cert in rustls_native_certs::load_native_certs().certs {
                            let _ = roots.add(cert);
                        }
                    }
                }
                let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| StoreError::Io(format!("tls: {e}")))?;
                let builder = builder.dangerous();
                if self.ssl == SslMode::VerifyCa {
                    builder.with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
                } else {
                    builder.with_custom_certificate_verifier(verifier)
                }
                .with_no_client_auth()
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    /// Opens one connection; returns the client and its (not yet driven) connection.
    pub(super) async fn connect(
        &self,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        ),
        StoreError,
    > {
        let tls = self.tls()?;
        match tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(tls)).await {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(self.connect_error(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "connecting to {} timed out",
                self.shown
            ))),
        }
    }

    /// `config check --connect`: connects, and checks that the store's tables exist or that the
    /// role may create them. What was found, or why the database cannot be used.
    pub async fn probe(&self) -> Result<String, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT to_regclass('verifyiam_schema') IS NOT NULL, \
                 has_schema_privilege(current_schema(), 'CREATE'), current_user::text",
                &[],
            )
            .await
            .map_err(super::pg_error)?;
        let (migrated, may_create, user): (bool, bool, String) =
            (row.get(0), row.get(1), row.get(2));
        if !migrated && !may_create {
            return Err(StoreError::Privilege(format!(
                "role {user:?} may not create the store's tables in the schema, and they are not there yet"
            )));
        }
        Ok(if migrated {
            format!("connected to {} as {user}; the schema is there", self.shown)
        } else {
            format!(
                "connected to {} as {user}; the schema will be created at the first start",
                self.shown
            )
        })
    }

    /// A connection driven in the background, for writes and one-off commands.
    pub(super) async fn client(&self) -> Result<Client, StoreError> {
        let (client, connection) = self.connect().await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    fn connect_error(&self, e: tokio_postgres::Error) -> StoreError {
        let login = e.as_db_error().is_some_and(|db| {
            db.code() == &tokio_postgres::error::SqlState::INVALID_PASSWORD
                || db.code()
                    == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        });
        let text = match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => {
                // The cause (refused, TLS certificate not trusted, ...) is in the source chain.
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    text = format!("{text}: {cause}");
                    source = cause.source();
                }
                text
            }
        };
        if e.as_db_error()
            .is_some_and(|db| db.code() == &tokio_postgres::error::SqlState::INVALID_CATALOG_NAME)
        {
            return StoreError::MissingDatabase {
                target: self.shown.clone(),
                database: self.config.get_dbname().unwrap_or_default().to_owned(),
            };
        }
        if login || text.contains("password missing") {
            StoreError::Login {
                target: self.shown.clone(),
                reason: text,
            }
        } else {
            StoreError::Unavailable(format!("cannot connect to {}: {text}", self.shown))
        }
    }
}

/// PEM certificates from a file's bytes (`sslrootcert`).
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// libpq's `prefer`/`require`: encrypted, the server's certificate not checked.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, env: &[(&str, &str)]) -> Result<PgUrl, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        PgUrl::parse_with(url, |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn url_shows_no_password() {
        let u = parse(
            "postgres://app:s3cret@db.internal:6432/iam?sslmode=require",
            &[],
        )
        .unwrap();
        assert_eq!(u.to_string(), "app@db.internal:6432/iam");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(u.ssl_mode(), SslMode::Require);
        assert_eq!(u.config.get_password(), Some(&b"s3cret"[..]));
    }

    #[test]
    fn password_from_pgpassword_when_the_url_has_none() {
        let u = parse("postgresql://app@db/iam", &[("PGPASSWORD", "fromenv")]).unwrap();
        assert_eq!(u.config.get_password(), Some(&b"fromenv"[..]));
        assert_eq!(u.ssl_mode(), SslMode::Prefer);
        assert_eq!(u.to_string(), "app@db:5432/iam");
    }

    #[test]
    fn malformed_urls_are_refused_without_echoing_them() {
        for bad in [
            "postgres://",
            "postgres://app:pw@/db",
            "postgres://app:pw@db/iam?sslmode=sometimes",
            "postgres://app:pw@db/iam?bogus=1",
            "postgres://app:pw@db:notaport/iam",
        ] {
            let e = parse(bad, &[]).unwrap_err();
            assert!(!e.contains("pw"), "{bad}: {e}");
        }
        assert!(parse("mysql://a@b/c", &[]).is_err());
    }
}
