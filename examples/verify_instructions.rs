//! Verifies one JWT (RS256 or ES256) N times with the server's own verifier, for instruction
//! counts that repeat whatever the machine is doing:
//!
//! ```sh
//! cargo build --release --example verify_instructions
//! valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='*instructions_counted_here*' \
//!     target/release/examples/verify_instructions rs256 1000
//! ```
//!
//! With `--toggle-collect`, only the verifications are counted (key generation, whose count
//! varies with the primes it happens to find, is not): the total divided by N is one cold
//! verification.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer as _;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::json;

use verifyiam::authn::dev::{DEV_ISSUER, DevIssuer};
use verifyiam::authn::jwt::JwtVerifier;
use verifyiam::authn::keys::{Key, KeySet, KeySets};
use verifyiam::config::{CLOUD_PLATFORM_SCOPE, TokenConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let alg = args.next().unwrap_or_else(|| "rs256".to_owned());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);

    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(pair.as_der().unwrap().as_ref())
    );
    let enc = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
    let rs_set = Arc::new(KeySet::fixed(vec![(
        "rs".to_owned(),
        Key::new(DecodingKey::from_jwk(&jwk).unwrap(), Some(Algorithm::RS256)),
    )]));
    let dir = tempfile::tempdir().unwrap();
    let dev = DevIssuer::load_or_create(DEV_ISSUER, &dir.path().join("k.pem")).unwrap();
    let token_config = TokenConfig::default();
    let verifier = JwtVerifier::new(
        &token_config,
        KeySets::new(reqwest::Client::new(), &token_config),
        vec![
            ("rs-issuer".to_owned(), rs_set),
            (DEV_ISSUER.to_owned(), dev.key_set()),
        ],
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = match alg.as_str() {
        "rs256" => {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some("rs".into());
            let claims = json!({"iss": "rs-issuer", "sub": "s1", "email": "user1@example.com",
                "email_verified": true, "scope": CLOUD_PLATFORM_SCOPE, "iat": now, "exp": now + 3600});
            jsonwebtoken::encode(&header, &claims, &enc).unwrap()
        }
        "es256" => dev
            .mint("user1@example.com", CLOUD_PLATFORM_SCOPE, 3600)
            .unwrap(),
        other => panic!("unknown algorithm {other}: rs256 or es256"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    instructions_counted_here(&mut || {
        rt.block_on(async {
            for _ in 0..n {
                let v = verifier
                    .verify(std::hint::black_box(&token), CLOUD_PLATFORM_SCOPE)
                    .await
                    .unwrap();
                std::hint::black_box(v);
            }
        })
    });
    println!("{n} {alg} verifications");
}

/// What callgrind counts with `--toggle-collect='*instructions_counted_here*'`.
#[inline(never)]
fn instructions_counted_here(f: &mut dyn FnMut()) {
    f()
}
