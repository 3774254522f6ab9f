//! TLS for the two listeners: a rustls server configuration (aws-lc-rs) built from the PEM files
//! of `[server.tls]` / `[server.admin_tls]`, mutual TLS when a client CA is set, and the reload
//! of those files when they change (cert-manager rotates them in place), without a restart.
//!
//! Every handshake takes the configuration current at that moment, so a rotated certificate or
//! CA is used from the next connection after the reload; connections already up keep theirs.
//! A change that does not load (a half-written pair, a key that does not match) is refused and
//! the previous configuration stays in force until the files are whole again.
//!
//! The certificate in force is measured: [`CERTIFICATE_EXPIRY`] holds when it expires, so an
//! alert can fire before a rotation that never came.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// When the certificate a listener serves expires (its chain's earliest `notAfter`), in seconds
/// since the Unix epoch, by `listener` (`server.tls`, `server.admin_tls`).
pub const CERTIFICATE_EXPIRY: &str = "verifyiam_tls_certificate_expiry_timestamp_seconds";

/// Why a listener's TLS files cannot be used; each names the configuration field.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{field}: cannot read {}: {source}", path.display())]
    Read {
        /// Dotted path of the field, e.g. `server.tls.cert_file`.
        field: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("{field}: {}: {reason}", path.display())]
    Content {
        /// Dotted path of the field.
        field: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The protocols a listener offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// gRPC: HTTP/2 only.
    Http2,
    /// HTTP/2 and HTTP/1.1.
    Http2AndHttp1,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http2 => vec![b"h2".to_vec()],
            Alpn::Http2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// The contents of a listener's TLS files, as read at one moment.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(config: &TlsConfig, field: &str) -> Result<Files, TlsError> {
        let read = |name: &str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                field: format!("{field}.{name}"),
                path: path.to_owned(),
                source,
            })
        };
        Ok(Files {
            cert: read("cert_file", &config.cert_file)?,
            key: read("key_file", &config.key_file)?,
            client_ca: config
                .client_ca_file
                .as_deref()
                .map(|p| read("client_ca_file", p))
                .transpose()?,
        })
    }

    async fn read_async(config: &TlsConfig, field: &str) -> Result<Files, TlsError> {
        let read = |name: &'static str, path: PathBuf| async move {
            tokio::fs::read(&path)
                .await
                .map_err(|source| TlsError::Read {
                    field: format!("{field}.{name}"),
                    path,
                    source,
                })
        };
        Ok(Files {
            cert: read("cert_file", config.cert_file.clone()).await?,
            key: read("key_file", config.key_file.clone()).await?,
            client_ca: match &config.client_ca_file {
                Some(p) => Some(read("client_ca_file", p.clone()).await?),
                None => None,
            },
        })
    }

    /// When the certificate chain of `cert_file` stops being valid: the earliest `notAfter` of
    /// its certificates, in seconds since the Unix epoch (`None` when none can be read as X.509;
    /// rustls then refuses the file anyway).
    fn expires_at(&self) -> Option<u64> {
        use x509_cert::der::Decode as _;
        CertificateDer::pem_slice_iter(&self.cert)
            .filter_map(Result::ok)
            .filter_map(|der| x509_cert::Certificate::from_der(der.as_ref()).ok())
            .map(|c| {
                c.tbs_certificate
                    .validity
                    .not_after
                    .to_unix_duration()
                    .as_secs()
            })
            .min()
    }

    /// A digest of all three, to notice a change.
    fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            match part {
                Some(bytes) => {
                    h.update((bytes.len() as u64).to_be_bytes());
                    h.update(bytes);
                }
                None => h.update(u64::MAX.to_be_bytes()),
            }
        }
        h.finalize().into()
    }

    fn server_config(
        &self,
        config: &TlsConfig,
        field: &str,
        alpn: Alpn,
    ) -> Result<ServerConfig, TlsError> {
        let bad = |name: &str, path: &Path, reason: String| TlsError::Content {
            field: format!("{field}.{name}"),
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("cert_file", &config.cert_file, format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad(
                "cert_file",
                &config.cert_file,
                "holds no CERTIFICATE block".to_owned(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| {
            bad(
                "key_file",
                &config.key_file,
                format!("holds no usable PEM private key: {e}"),
            )
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("cert_file", &config.cert_file, e.to_string()))?;
        let builder = match (&self.client_ca, &config.client_ca_file) {
            (Some(pem), Some(path)) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert =
                        cert.map_err(|e| bad("client_ca_file", path, format!("not PEM: {e}")))?;
                    roots.add(cert).map_err(|e| {
                        bad(
                            "client_ca_file",
                            path,
                            format!("not a usable CA certificate: {e}"),
                        )
                    })?;
                }
                if roots.is_empty() {
                    return Err(bad(
                        "client_ca_file",
                        path,
                        "holds no CERTIFICATE block".to_owned(),
                    ));
                }
                // Mandatory: a client without a certificate from these CAs fails the handshake.
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| bad("client_ca_file", path, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut server = builder.with_single_cert(certs, key).map_err(|e| {
            bad(
                "key_file",
                &config.key_file,
                format!("does not go with {}: {e}", config.cert_file.display()),
            )
        })?;
        server.alpn_protocols = alpn.protocols();
        Ok(server)
    }
}

/// Loads a listener's TLS files once, as the configuration check at start does.
pub fn check(config: &TlsConfig, field: &str) -> Result<(), TlsError> {
    Files::read(config, field)?.server_config(config, field, Alpn::Http2AndHttp1)?;
    Ok(())
}

/// Sets [`CERTIFICATE_EXPIRY`] for `listener` from the files just put in force.
fn record_expiry(listener: &'static str, files: &Files) {
    if let Some(at) = files.expires_at() {
        metrics::gauge!(CERTIFICATE_EXPIRY, "listener" => listener).set(at as f64);
    }
}

/// A listener's TLS configuration, replaced when its files change.
pub struct Reloading {
    config: TlsConfig,
    field: &'static str,
    alpn: Alpn,
    current: ArcSwap<ServerConfig>,
    fingerprint: Mutex<[u8; 32]>,
}

impl Reloading {
    /// Loads the files named by `config` (`field` is its place in the configuration, for
    /// errors: `server.tls` or `server.admin_tls`).
    pub fn load(config: &TlsConfig, field: &'static str, alpn: Alpn) -> Result<Self, TlsError> {
        let files = Files::read(config, field)?;
        let server = files.server_config(config, field, alpn)?;
        record_expiry(field, &files);
        Ok(Reloading {
            config: config.clone(),
            field,
            alpn,
            current: ArcSwap::from_pointee(server),
            fingerprint: Mutex::new(files.fingerprint()),
        })
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Reads the files again and, when they changed and load, puts them in force. Returns
    /// whether the configuration was replaced.
    pub async fn reload(&self) -> Result<bool, TlsError> {
        let files = Files::read_async(&self.config, self.field).await?;
        let fingerprint = files.fingerprint();
        if *self.fingerprint.lock().unwrap_or_else(|p| p.into_inner()) == fingerprint {
            return Ok(false);
        }
        let server = files.server_config(&self.config, self.field, self.alpn)?;
        self.current.store(Arc::new(server));
        record_expiry(self.field, &files);
        *self.fingerprint.lock().unwrap_or_else(|p| p.into_inner()) = fingerprint;
        Ok(true)
    }

    /// Checks the files every `reload_interval` until `stop` is cancelled.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // The last failure logged, so a file left broken is reported once, not every tick.
        let mut failing: Option<String> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.reload().await {
                Ok(true) => {
                    failing = None;
                    metrics::counter!("verifyiam_tls_reloads_total", "listener" => self.field, "result" => "ok")
                        .increment(1);
                    tracing::info!(
                        listener = self.field,
                        "TLS files changed: new certificate in force"
                    );
                }
                Ok(false) => failing = None,
                Err(e) => {
                    let text = e.to_string();
                    if failing.as_deref() != Some(text.as_str()) {
                        metrics::counter!("verifyiam_tls_reloads_total", "listener" => self.field, "result" => "error")
                            .increment(1);
                        tracing::warn!(listener = self.field, error = %text, "TLS files changed but do not load; the previous certificate stays in force");
                        failing = Some(text);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM certificate valid until `year`-01-01, signed by `issuer` (self-signed without one).
    fn certificate(year: i32, issuer: Option<&rcgen::Issuer<'_, rcgen::KeyPair>>) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        match issuer {
            Some(issuer) => params.signed_by(&key, issuer).unwrap().pem(),
            None => params.self_signed(&key).unwrap().pem(),
        }
    }

    fn files(cert: String) -> Files {
        Files {
            cert: cert.into_bytes(),
            key: Vec::new(),
            client_ca: None,
        }
    }

    #[test]
    fn the_expiry_is_the_earliest_not_after_of_the_chain() {
        // 2100-01-01 and 2090-01-01 in Unix seconds.
        assert_eq!(
            files(certificate(2100, None)).expires_at(),
            Some(4_102_444_800)
        );
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.not_after = rcgen::date_time_ymd(2090, 1, 1);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let chain = certificate(2100, Some(&ca)) + &ca.pem();
        assert_eq!(files(chain).expires_at(), Some(3_786_912_000));
    }

    #[test]
    fn a_file_without_a_readable_certificate_has_no_expiry() {
        assert_eq!(files(String::new()).expires_at(), None);
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(files(garbage.to_owned()).expires_at(), None);
    }
}
