//! The admin API client behind the management commands (`verifyiam projects|environments|
//! deployments|roles|groups …`): REST calls with the caller's token, read-modify-write of policy
//! bindings with the etag (retried on `ABORTED` with jittered exponential backoff), output as
//! JSON or YAML, and the exit codes scripts rely on. Also the TLS options every command that
//! talks to a listener shares ([`TlsArgs`]: `--cacert`, `--cert`/`--key`, `--insecure`), for the
//! admin API here and for `check`'s gRPC channel ([`grpc_channel`]).

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

/// How many times a read-modify-write is tried before giving up on concurrent changes.
pub const MAX_ATTEMPTS: u32 = 8;
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_CAP: Duration = Duration::from_secs(1);

/// Exit codes of the management commands.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Bad arguments or a local input that cannot be used (unreadable or malformed file).
    pub const USAGE: u8 = 2;
    /// The server could not be reached, failed (5xx) or answered something unexpected.
    pub const UNAVAILABLE: u8 = 3;
    /// `UNAUTHENTICATED` (401) or `PERMISSION_DENIED` (403).
    pub const DENIED: u8 = 4;
    /// `NOT_FOUND` (404), including removing a binding or member that is not there.
    pub const NOT_FOUND: u8 = 5;
    /// `ABORTED` or `ALREADY_EXISTS` (409), after the retries for read-modify-write.
    pub const CONFLICT: u8 = 6;
    /// `INVALID_ARGUMENT` or `FAILED_PRECONDITION` (400).
    pub const INVALID: u8 = 7;
}

/// A failed command: what to print and how to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// The process exit code (see [`exit`]).
    pub code: u8,
    /// One line for stderr.
    pub message: String,
}

impl ClientError {
    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> ClientError {
        ClientError {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    fn from_http(http: u16, body: &str) -> ClientError {
        let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let status = parsed["error"]["status"].as_str().unwrap_or("").to_owned();
        let message = parsed["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body.trim().chars().take(300).collect());
        let code = match (http, status.as_str()) {
            (401 | 403, _) => exit::DENIED,
            (404, _) => exit::NOT_FOUND,
            (409, _) => exit::CONFLICT,
            (400, _) => exit::INVALID,
            _ => exit::UNAVAILABLE,
        };
        let status = if status.is_empty() {
            format!("HTTP {http}")
        } else {
            status
        };
        ClientError {
            code,
            message: format!("{status}: {message}"),
        }
    }

    fn is_aborted(&self) -> bool {
        self.code == exit::CONFLICT && self.message.starts_with("ABORTED")
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Pretty-printed JSON.
    #[default]
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// Renders a value.
    pub fn render(self, v: &Value) -> String {
        match self {
            Format::Json => {
                let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
                s.push('\n');
                s
            }
            Format::Yaml => yaml(v),
        }
    }
}

/// How a command reaches a listener over TLS (`https://` addresses). Without `--cacert` the
/// system's roots are trusted (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file of the CA certificate(s) that signed the server's certificate (trusted instead of
    /// the system's roots).
    #[arg(long, global = true, env = "VERIFYIAM_CACERT")]
    pub cacert: Option<PathBuf>,
    /// PEM file of the client certificate (chain) presented to an mTLS listener; needs `--key`.
    #[arg(long, global = true, env = "VERIFYIAM_CERT")]
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key; needs `--cert`.
    #[arg(long, global = true, env = "VERIFYIAM_KEY")]
    pub key: Option<PathBuf>,
    /// Do not verify the server's certificate (prints a warning; for a first try only).
    #[arg(long, global = true)]
    pub insecure: bool,
}

impl TlsArgs {
    /// Whether any TLS option was given.
    pub fn any(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some() || self.key.is_some() || self.insecure
    }

    /// The rustls client configuration these options describe, offering `alpn`. Usage errors
    /// (exit 2) name the flag: a file that cannot be read or holds no certificate or key, `--cert`
    /// without `--key`, `--insecure` with `--cacert`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::usage(format!("TLS: {e}")))?;
        let certs =
            |flag: &str, path: &PathBuf| -> Result<Vec<CertificateDer<'static>>, ClientError> {
                let certs: Vec<_> = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        ClientError::usage(format!(
                            "{flag} {}: not a PEM certificate file: {e}",
                            path.display()
                        ))
                    })?;
                if certs.is_empty() {
                    return Err(ClientError::usage(format!(
                        "{flag} {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                        path.display()
                    )));
                }
                Ok(certs)
            };
        let builder = if self.insecure {
            if self.cacert.is_some() {
                return Err(ClientError::usage(
                    "--insecure and --cacert exclude each other: --cacert verifies, --insecure does not",
                ));
            }
            eprintln!(
                "WARNING: --insecure: the server's certificate is not verified; anyone on the path \
                 can answer in its place (use --cacert FILE instead)"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let mut roots = rustls::RootCertStore::empty();
            match &self.cacert {
                Some(path) => {
                    for cert in certs("--cacert", path)? {
                        roots.add(cert).map_err(|e| {
                            ClientError::usage(format!("--cacert {}: {e}", path.display()))
                        })?;
                    }
                }
                None => {
                    let native = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(native.certs);
                }
            }
            builder.with_root_certificates(roots)
        };
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = certs("--cert", cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    ClientError::usage(format!(
                        "--key {}: not a PEM private key: {e}",
                        key.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    ClientError::usage(format!(
                        "--cert/--key: the key does not go with the certificate: {e}"
                    ))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(ClientError::usage("--cert needs --key")),
            (None, Some(_)) => return Err(ClientError::usage("--key needs --cert")),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// `--insecure`: accepts any server certificate, still checking that the handshake is signed
/// by the key of the certificate presented.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks that `addr` is an `http://` or `https://` URL with a host, and that TLS options come
/// only with `https://`; `flag` names it in the usage error.
pub fn endpoint_url(flag: &str, addr: &str, tls: &TlsArgs) -> Result<url::Url, ClientError> {
    let parsed = url::Url::parse(addr)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            ClientError::usage(format!(
                "{flag} {addr:?} is not an http(s) URL (e.g. http://127.0.0.1:9001, or \
                 https://verifyiam.example.com:9001 for a TLS listener)"
            ))
        })?;
    if parsed.scheme() == "http" && tls.any() {
        return Err(ClientError::usage(format!(
            "{flag} {addr:?}: --cacert, --cert, --key and --insecure are for https:// addresses"
        )));
    }
    Ok(parsed)
}

/// A gRPC channel to `addr` (`--addr` of `check`): plaintext HTTP/2 for `http://`, TLS (with
/// `tls`'s options, ALPN `h2`) for `https://`. Not being able to connect is exit 3.
pub async fn grpc_channel(
    addr: &str,
    tls: &TlsArgs,
) -> Result<tonic::transport::Channel, ClientError> {
    let url = endpoint_url("--addr", addr, tls)?;
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .map_err(|e| ClientError::usage(format!("--addr {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(10));
    let unreachable = |e: &(dyn std::error::Error + 'static)| ClientError {
        code: exit::UNAVAILABLE,
        message: format!("cannot connect to {addr}: {}", error_chain(e)),
    };
    if url.scheme() == "http" {
        return endpoint.connect().await.map_err(|e| unreachable(&e));
    }
    let config = tls.client_config(&[b"h2"])?;
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let server_name = rustls_pki_types::ServerName::try_from(host)
        .map_err(|e| ClientError::usage(format!("--addr {addr:?}: {e}")))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let connector = tokio_rustls::TlsConnector::from(config);
    let target = format!("{}:{port}", url.host_str().unwrap_or_default());
    endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let (connector, name, target) =
                (connector.clone(), server_name.clone(), target.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(target).await?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| unreachable(&e))
}

/// An error with its sources, `: `-joined (a TLS failure sits a few levels down).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A client of one admin endpoint as one caller.
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl AdminClient {
    /// A client of `base` (e.g. `http://127.0.0.1:9002`) sending `token` as a bearer token.
    pub fn new(base: &str, token: Option<String>) -> Result<AdminClient, ClientError> {
        AdminClient::with_tls(base, token, &TlsArgs::default())
    }

    /// A client of `base` over TLS with `tls`'s options when `base` is `https://`.
    pub fn with_tls(
        base: &str,
        token: Option<String>,
        tls: &TlsArgs,
    ) -> Result<AdminClient, ClientError> {
        let parsed = endpoint_url("--admin-url", base, tls)?;
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("verifyiam-cli/", env!("CARGO_PKG_VERSION")));
        if parsed.scheme() == "https" {
            // The CLI's client speaks HTTP/1.1 to the admin listener.
            builder = builder.tls_backend_preconfigured(Arc::unwrap_or_clone(
                tls.client_config(&[b"http/1.1"])?,
            ));
        }
        let http = builder.build().map_err(|e| ClientError {
            code: exit::UNAVAILABLE,
            message: e.to_string(),
        })?;
        Ok(AdminClient {
            http,
            base: parsed.as_str().trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// One call; the JSON answer, or the server's error as a [`ClientError`].
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let response = request.send().await.map_err(|e| ClientError {
            code: exit::UNAVAILABLE,
            message: format!("cannot reach {}: {}", self.base, error_chain(&e)),
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| ClientError {
            code: exit::UNAVAILABLE,
            message: format!("reading the answer of {url}: {e}"),
        })?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_http(status, &text));
        }
        serde_json::from_str(&text).map_err(|e| ClientError {
            code: exit::UNAVAILABLE,
            message: format!("{url} answered something that is not JSON: {e}"),
        })
    }

    /// `:getIamPolicy` on a resource path (`/v1/projects/p`, …).
    pub async fn get_policy(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, &format!("{path}:getIamPolicy"), None)
            .await
    }

    /// `:setIamPolicy` on a resource path.
    pub async fn set_policy(&self, path: &str, policy: &Value) -> Result<Value, ClientError> {
        let body = json!({ "policy": policy });
        self.call(
            reqwest::Method::POST,
            &format!("{path}:setIamPolicy"),
            Some(&body),
        )
        .await
    }

    /// Adds (`add`) or removes a `(role, member)` binding by read-modify-write with the etag,
    /// retrying on `ABORTED` (someone else wrote in between) with jittered exponential backoff,
    /// at most [`MAX_ATTEMPTS`] times. Returns the policy as stored.
    pub async fn change_binding(
        &self,
        path: &str,
        role: &str,
        member: &str,
        add: bool,
    ) -> Result<Value, ClientError> {
        let mut attempt = 0;
        loop {
            let mut policy = self.get_policy(path).await?;
            let changed = if add {
                add_binding(&mut policy, role, member)
            } else {
                remove_binding(&mut policy, role, member)
            };
            if !changed {
                if add {
                    return Ok(policy);
                }
                return Err(ClientError {
                    code: exit::NOT_FOUND,
                    message: format!("NOT_FOUND: the policy has no binding of {member} to {role}"),
                });
            }
            match self.set_policy(path, &policy).await {
                Err(e) if e.is_aborted() && attempt + 1 < MAX_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// The pause before retry `attempt` (from 0): exponential from 25ms, capped at 1s, with jitter
/// over its upper half so concurrent writers spread out.
pub fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    let half = ceiling / 2;
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let jitter = half.as_nanos() as u64;
    half + Duration::from_nanos(if jitter == 0 { 0 } else { random % jitter })
}

/// Adds `member` to the unconditional binding of `role` (creating it); whether anything changed.
pub fn add_binding(policy: &mut Value, role: &str, member: &str) -> bool {
    if !policy["bindings"].is_array() {
        policy["bindings"] = json!([]);
    }
    let Some(bindings) = policy["bindings"].as_array_mut() else {
        return false;
    };
    let slot = bindings
        .iter_mut()
        .find(|b| b["role"] == role && b.get("condition").is_none());
    match slot {
        Some(binding) => {
            if !binding["members"].is_array() {
                binding["members"] = json!([]);
            }
            let Some(members) = binding["members"].as_array_mut() else {
                return false;
            };
            if members.iter().any(|m| m == member) {
                return false;
            }
            members.push(json!(member));
        }
        None => bindings.push(json!({"role": role, "members": [member]})),
    }
    true
}

/// Removes `member` from the unconditional binding of `role` (dropping it when empty);
/// whether anything changed.
pub fn remove_binding(policy: &mut Value, role: &str, member: &str) -> bool {
    let Some(bindings) = policy["bindings"].as_array_mut() else {
        return false;
    };
    let mut changed = false;
    for binding in bindings.iter_mut() {
        if binding["role"] == role && binding.get("condition").is_none() {
            if let Some(members) = binding["members"].as_array_mut() {
                let before = members.len();
                members.retain(|m| m != member);
                changed |= members.len() != before;
            }
        }
    }
    bindings.retain(|b| b["members"].as_array().is_some_and(|m| !m.is_empty()));
    changed
}

/// A small YAML emitter for JSON values: block style, strings double-quoted (JSON escapes are
/// valid YAML), keys plain when they are simple words.
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(_) | Value::Array(_) if !is_empty(v) => block(v, 0, &mut out),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        other => other.to_string(),
    }
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        k.to_owned()
    } else {
        Value::String(k.to_owned()).to_string()
    }
}

fn block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            for (k, value) in map {
                out.push_str(&format!("{pad}{}:", key(k)));
                match value {
                    Value::Object(_) if !is_empty(value) => {
                        out.push('\n');
                        block(value, indent + 2, out);
                    }
                    Value::Array(_) if !is_empty(value) => {
                        out.push('\n');
                        block(value, indent, out);
                    }
                    other => out.push_str(&format!(" {}\n", scalar(other))),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(_) | Value::Array(_) if !is_empty(item) => {
                        let mut inner = String::new();
                        block(item, indent + 2, &mut inner);
                        // The item's first line moves up behind its dash.
                        out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                    }
                    other => out.push_str(&format!("{pad}- {}\n", scalar(other))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_remove_binding_edit_only_what_they_name() {
        let mut p = json!({"version": 1, "etag": "AAA="});
        assert!(add_binding(&mut p, "roles/r", "user:a@example.com"));
        assert!(!add_binding(&mut p, "roles/r", "user:a@example.com"));
        assert!(add_binding(&mut p, "roles/r", "user:b@example.com"));
        assert_eq!(
            p["bindings"],
            json!([{"role": "roles/r", "members": ["user:a@example.com", "user:b@example.com"]}])
        );
        assert!(remove_binding(&mut p, "roles/r", "user:a@example.com"));
        assert!(!remove_binding(&mut p, "roles/r", "user:a@example.com"));
        assert!(remove_binding(&mut p, "roles/r", "user:b@example.com"));
        assert_eq!(p["bindings"], json!([]));
        assert_eq!(p["etag"], "AAA=");
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let ceiling = (BACKOFF_BASE * 2u32.pow(attempt.min(16))).min(BACKOFF_CAP);
            assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn yaml_renders_a_policy_like_gcloud() {
        let p = json!({"bindings": [{"members": ["user:a@example.com"], "role": "roles/r"}],
                       "etag": "BwYT8i40Vwo=", "version": 1});
        assert_eq!(
            yaml(&p),
            "bindings:\n- members:\n  - \"user:a@example.com\"\n  role: \"roles/r\"\n\
             etag: \"BwYT8i40Vwo=\"\nversion: 1\n"
        );
        assert_eq!(yaml(&json!({})), "{}\n");
        assert_eq!(yaml(&json!({"a": [], "b": {}})), "a: []\nb: {}\n");
    }

    #[test]
    fn http_errors_map_to_documented_exit_codes() {
        let body = |s: &str| format!(r#"{{"error":{{"code":0,"message":"m","status":"{s}"}}}}"#);
        assert_eq!(
            ClientError::from_http(403, &body("PERMISSION_DENIED")).code,
            exit::DENIED
        );
        assert_eq!(
            ClientError::from_http(401, &body("UNAUTHENTICATED")).code,
            exit::DENIED
        );
        assert_eq!(
            ClientError::from_http(404, &body("NOT_FOUND")).code,
            exit::NOT_FOUND
        );
        let aborted = ClientError::from_http(409, &body("ABORTED"));
        assert_eq!(aborted.code, exit::CONFLICT);
        assert!(aborted.is_aborted());
        assert_eq!(
            ClientError::from_http(400, &body("INVALID_ARGUMENT")).code,
            exit::INVALID
        );
        assert_eq!(ClientError::from_http(500, "oops").code, exit::UNAVAILABLE);
        assert_eq!(
            ClientError::from_http(500, "oops").message,
            "HTTP 500: oops"
        );
    }
}
