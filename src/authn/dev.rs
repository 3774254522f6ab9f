//! The development issuer: a P-256 key made once and kept in the data directory, whose tokens
//! `verifyiam serve --dev` trusts and whose JWK set it serves. For trying verifyiam locally only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::keys::{Key, KeySet};

/// The development issuer's `iss`.
pub const DEV_ISSUER: &str = "verifyiam-dev";
/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "dev-issuer-key.pem";

/// Why the development key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DevKeyError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a P-256 PKCS#8 PEM key.
    #[error("{0}: not a P-256 PKCS#8 PEM private key")]
    BadKey(PathBuf),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The development issuer's key.
pub struct DevIssuer {
    issuer: String,
    pkcs8: Vec<u8>,
    kid: String,
    x: String,
    y: String,
}

impl DevIssuer {
    /// Loads the key at `path`, or makes and keeps one (mode 0600) when there is none.
    pub fn load_or_create(issuer: &str, path: &Path) -> Result<DevIssuer, DevKeyError> {
        let io = |source| DevKeyError::Io {
            path: path.to_owned(),
            source,
        };
        let pkcs8 = match std::fs::read_to_string(path) {
            Ok(pem) => from_pem(&pem).ok_or_else(|| DevKeyError::BadKey(path.to_owned()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &aws_lc_rs::rand::SystemRandom::new(),
                )
                .map_err(|_| DevKeyError::Sign("key generation failed".into()))?;
                let der = doc.as_ref().to_vec();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                write_private(path, &to_pem(&der)).map_err(io)?;
                der
            }
            Err(e) => return Err(io(e)),
        };
        Self::from_pkcs8(issuer, pkcs8).ok_or_else(|| DevKeyError::BadKey(path.to_owned()))
    }

    fn from_pkcs8(issuer: &str, pkcs8: Vec<u8>) -> Option<DevIssuer> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).ok()?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return None;
        }
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(point)[..12]);
        Some(DevIssuer {
            issuer: issuer.to_owned(),
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..]),
            pkcs8,
            kid,
        })
    }

    /// The issuer name (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public JWK set, as served on the admin port.
    pub fn jwk_set(&self) -> serde_json::Value {
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig"
        }]})
    }

    /// The key set the verifier trusts for this issuer.
    pub fn key_set(&self) -> Arc<KeySet> {
        let decoding = DecodingKey::from_ec_components(&self.x, &self.y)
            .expect("components were derived from a valid P-256 key");
        Arc::new(KeySet::fixed(vec![(
            self.kid.clone(),
            Key::new(decoding, Some(Algorithm::ES256)),
        )]))
    }

    /// Mints an access token for `email` with `scope`, valid for `lifetime_secs`.
    pub fn mint(
        &self,
        email: &str,
        scope: &str,
        lifetime_secs: u64,
    ) -> Result<String, DevKeyError> {
        let now = super::unix_now();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = json!({
            "iss": self.issuer, "sub": email, "email": email, "email_verified": true,
            "scope": scope, "iat": now, "exp": now + lifetime_secs,
        });
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .map_err(|e| DevKeyError::Sign(e.to_string()))
    }

    /// Signs arbitrary claims under this key (the development backend ID tokens).
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, DevKeyError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .map_err(|e| DevKeyError::Sign(e.to_string()))
    }
}

fn to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

fn from_pem(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(body.trim()).ok()
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let a = DevIssuer::load_or_create(DEV_ISSUER, &path).unwrap();
        let b = DevIssuer::load_or_create(DEV_ISSUER, &path).unwrap();
        assert_eq!(a.kid, b.kid);
        assert_eq!(a.jwk_set(), b.jwk_set());
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, "hello").unwrap();
        assert!(matches!(
            DevIssuer::load_or_create(DEV_ISSUER, &path),
            Err(DevKeyError::BadKey(_))
        ));
    }
}
