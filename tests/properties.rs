//! Property tests of the parsers on the Check and admin paths, through the public API: the
//! bearer parser, JWT header and claims handling (signed with a key the verifier trusts, so the
//! claims rules are what decides), JWK sets, members and policy JSON, and the CheckRequest
//! reader; and, for route choice, that no spelling of a path (reserved sub-delimiters encoded in
//! any case, in the request or the table) reaches a less specific route than its normal form.
//! Path normalisation has more beside the code (`src/route.rs`, `src/route/path.rs`).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap as RawHeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use proptest::prelude::*;
use serde_json::{Value, json};

use verifyiam::authn::bearer::{self, BearerError, MAX_TOKEN_LEN};
use verifyiam::authn::jwt::JwtVerifier;
use verifyiam::authn::keys::{Key, KeySet, KeySets, parse_key_set};
use verifyiam::authn::{AuthnError, Verified};
use verifyiam::config::{CLOUD_PLATFORM_SCOPE, RouteConfig, TokenConfig};
use verifyiam::extauthz::AuthzRequest;
use verifyiam::iam::member::{Member, pool_members, principal_members};
use verifyiam::iam::policy::{Etag, MAX_GROUPS, MAX_PRINCIPALS, Policy, normalize};
use verifyiam::iam::roles::PredefinedRoles;
use verifyiam::iam::{CompiledPolicy, PermissionSet};
use verifyiam::route::{RouteError, Router, path::PathError};

const ISSUER: &str = "https://issuer.test";
const KID: &str = "k1";
/// The default `token.leeway`.
const LEEWAY: i64 = 30;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ---- the bearer parser ------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the value, a token that comes out is a non-empty b64token, within the length
    /// limit, and a piece of the value.
    #[test]
    fn bearer_tokens_are_b64tokens_taken_from_the_value(value in "\\PC{0,80}|[Bb][Ee][Aa][Rr][Ee][Rr][ \t]{0,2}[ -~]{0,40}") {
        if let Ok(token) = bearer::parse(&value) {
            prop_assert!(!token.is_empty());
            prop_assert!(token.len() <= MAX_TOKEN_LEN);
            prop_assert!(value.contains(token));
            let body = token.trim_end_matches('=');
            prop_assert!(!body.is_empty());
            prop_assert!(body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)), "{token:?}");
        }
    }

    /// Every spelling of the scheme and of the whitespace around it yields the token itself.
    #[test]
    fn bearer_round_trips_any_scheme_case_and_whitespace(
        token in "[A-Za-z0-9._~+/-]{1,200}={0,2}",
        upper in proptest::collection::vec(any::<bool>(), 6),
        lead in "[ \t]{0,3}", gap in "[ \t]{1,3}", trail in "[ \t]{0,3}",
    ) {
        let scheme: String = "bearer".chars().zip(upper)
            .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
            .collect();
        let value = format!("{lead}{scheme}{gap}{token}{trail}");
        prop_assert_eq!(bearer::parse(&value), Ok(token.as_str()));
    }

    /// Two credentials joined as Envoy joins repeated headers are never one token.
    #[test]
    fn bearer_joined_values_are_refused(
        a in "[A-Za-z0-9._~+/-]{1,50}", b in "[A-Za-z0-9._~+/-]{1,50}", sep in ",[ \t]{0,2}",
    ) {
        let joined = format!("Bearer {a}{sep}Bearer {b}");
        prop_assert_eq!(bearer::parse(&joined), Err(BearerError::Multiple));
    }

    /// A character outside the alphabet anywhere in the token refuses it.
    #[test]
    fn bearer_foreign_characters_are_refused(
        token in "[A-Za-z0-9._~+/-]{2,60}", at in any::<proptest::sample::Index>(),
        bad in "[^A-Za-z0-9._~+/=, \t-]",
    ) {
        let i = at.index(token.len() + 1);
        let spoiled = format!("{}{bad}{}", &token[..i], &token[i..]);
        prop_assert!(bearer::parse(&format!("Bearer {spoiled}")).is_err(), "{spoiled:?}");
    }
}

// ---- JWT header and claims --------------------------------------------------------------------

struct Keys {
    signing: EncodingKey,
    jwk: Jwk,
    verifier: JwtVerifier,
    runtime: tokio::runtime::Runtime,
}

/// A key set holding the one trusted key.
fn key_set(jwk: &Jwk) -> Arc<KeySet> {
    Arc::new(KeySet::fixed(vec![(
        KID.to_owned(),
        Key::new(DecodingKey::from_jwk(jwk).unwrap(), Some(Algorithm::ES256)),
    )]))
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let signing = EncodingKey::from_ec_der(pkcs8.as_ref());
        let jwk = Jwk::from_encoding_key(&signing, Algorithm::ES256).unwrap();
        let set = key_set(&jwk);
        let config = TokenConfig::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let verifier = runtime.block_on(async {
            JwtVerifier::new(
                &config,
                KeySets::new(reqwest::Client::new(), &config),
                vec![(ISSUER.to_owned(), set)],
            )
        });
        Keys {
            signing,
            jwk,
            verifier,
            runtime,
        }
    })
}

fn sign(header: &str, claims: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &keys().signing, Algorithm::ES256).unwrap();
    format!("{message}.{signature}")
}

fn verify(token: &str) -> Result<Verified, AuthnError> {
    let k = keys();
    k.runtime
        .block_on(k.verifier.verify(token, CLOUD_PLATFORM_SCOPE))
}

fn good_header() -> String {
    json!({"alg": "ES256", "kid": KID}).to_string()
}

/// A claim's value: absent, or one of several shapes, right and wrong.
fn claim(options: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    proptest::option::of(proptest::sample::select(options))
}

fn time_values(n: i64) -> Vec<Value> {
    vec![
        json!(n),
        json!(n + 600),
        json!(n - 600),
        json!(n + 10),
        json!(n - 10),
        json!(n as f64 + 600.5),
        json!(0),
        json!(-1),
        json!(1e300),
        json!(-1e300),
        json!(i64::MAX),
        json!(u64::MAX),
        json!((n + 600).to_string()),
        json!(null),
        json!([n + 600]),
    ]
}

/// A claims object drawn from the claims verifyiam reads.
fn claims() -> impl Strategy<Value = BTreeMap<&'static str, Value>> {
    let n = now();
    (
        // Mostly the trusted issuer and some expiry, so that many cases get as far as the rules.
        proptest::option::weighted(
            0.9,
            proptest::sample::select(vec![
                json!(ISSUER),
                json!(ISSUER),
                json!(ISSUER),
                json!("https://other.test"),
                json!(7),
                json!(null),
            ]),
        ),
        proptest::option::weighted(0.9, proptest::sample::select(time_values(n))),
        claim(time_values(n)),
        claim(time_values(n)),
        claim(vec![
            json!(CLOUD_PLATFORM_SCOPE),
            json!(format!("openid {CLOUD_PLATFORM_SCOPE}")),
            json!("openid"),
            json!([CLOUD_PLATFORM_SCOPE]),
            json!(5),
        ]),
        claim(vec![
            json!([CLOUD_PLATFORM_SCOPE]),
            json!(CLOUD_PLATFORM_SCOPE),
            json!(["openid"]),
            json!([1]),
        ]),
        claim(vec![
            json!("a@example.com"),
            json!("A@Example.com"),
            json!("a@example.com\r\nx: y"),
            json!(["a@example.com"]),
        ]),
        claim(vec![
            json!(true),
            json!("true"),
            json!(false),
            json!("yes"),
            json!(1),
        ]),
        claim(vec![json!("s-1"), json!("s\u{7}"), json!(17), json!("")]),
        claim(vec![json!("x"), json!(["x", 1]), json!({}), json!(5)]),
    )
        .prop_map(
            |(iss, exp, nbf, iat, scope, scp, email, verified, sub, aud)| {
                let mut m = BTreeMap::new();
                for (k, v) in [
                    ("iss", iss),
                    ("exp", exp),
                    ("nbf", nbf),
                    ("iat", iat),
                    ("scope", scope),
                    ("scp", scp),
                    ("email", email),
                    ("email_verified", verified),
                    ("sub", sub),
                    ("aud", aud),
                ] {
                    if let Some(v) = v {
                        m.insert(k, v);
                    }
                }
                m
            },
        )
}

/// Arbitrary JSON, for parsers that must refuse what they do not understand.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,20}".prop_map(Value::from),
        proptest::sample::select(vec![
            "roles/apigee.deploymentInvoker",
            "roles/owner",
            "user:a@example.com",
            "group:g@example.com",
            "allUsers",
            "BwYT8i40Vwo=",
            "ES256",
            "EC",
            "P-256",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                proptest::sample::select(vec![
                    "version",
                    "etag",
                    "bindings",
                    "auditConfigs",
                    "role",
                    "members",
                    "condition",
                    "expression",
                    "title",
                    "keys",
                    "kty",
                    "crv",
                    "x",
                    "y",
                    "n",
                    "e",
                    "kid",
                    "alg",
                    "use",
                    "other",
                ])
                .prop_map(str::to_owned),
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// Signed by the trusted key, a token verifies exactly when its claims are well-formed and
    /// current; what comes out is what the claims say.
    #[test]
    fn jwt_claims_decide_validity(claims in claims()) {
        let n = now() as f64;
        let number = |k: &str| claims.get(k).map(|v| v.as_f64());
        let text = |k: &str| claims.get(k).map(|v| v.as_str());
        let result = verify(&sign(&good_header(), &serde_json::to_string(&claims).unwrap()));
        // Shapes the claims decoder refuses outright (`null` reads as absent).
        let typed = |k: &str, ok: fn(&Value) -> bool| claims.get(k).is_none_or(|v| v.is_null() || ok(v));
        let well_typed = ["exp", "nbf", "iat"].iter().all(|k| typed(k, Value::is_number))
            && ["iss", "scope", "email", "sub"].iter().all(|k| typed(k, Value::is_string))
            && typed("scp", |v| {
                v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
            });
        let exp = number("exp").flatten();
        let current = exp.is_some_and(|e| e + LEEWAY as f64 >= n)
            && number("nbf").flatten().is_none_or(|v| v <= n + LEEWAY as f64)
            && number("iat").flatten().is_none_or(|v| v <= n + LEEWAY as f64);
        let identity_clean = [text("email"), text("sub")]
            .into_iter()
            .flatten()
            .flatten()
            .all(|s| !s.chars().any(char::is_control));
        let trusted = text("iss") == Some(Some(ISSUER));
        // Clear of the clock's edge (a second's drift between here and the verifier).
        let near_edge = [number("exp"), number("nbf"), number("iat")]
            .into_iter()
            .flatten()
            .flatten()
            .any(|v| (v - n).abs() <= LEEWAY as f64 + 2.0 && (v - n).abs() >= LEEWAY as f64 - 2.0);
        match &result {
            Ok(v) => {
                // Control characters in identity claims are refused one stage later, when the
                // verified claims become a principal, in the Authenticator.
                prop_assert!(well_typed && trusted && current, "accepted {claims:?}");
                prop_assert_eq!(&v.issuer, ISSUER);
                let vouched = matches!(claims.get("email_verified"), Some(Value::Bool(true)))
                    || claims.get("email_verified") == Some(&json!("true"));
                prop_assert_eq!(v.email.is_some(), vouched && text("email").is_some(), "{:?}", v);
                let scoped = text("scope").flatten().is_some_and(|s| s.split(' ').any(|x| x == CLOUD_PLATFORM_SCOPE))
                    || match claims.get("scp") {
                        Some(Value::String(s)) => s.split(' ').any(|x| x == CLOUD_PLATFORM_SCOPE),
                        Some(Value::Array(a)) => a.iter().any(|x| x == CLOUD_PLATFORM_SCOPE),
                        _ => false,
                    };
                prop_assert_eq!(v.has_scope, scoped);
            }
            Err(e) => {
                prop_assert!(matches!(e, AuthnError::InvalidToken(_)), "{e:?}");
                prop_assert!(
                    near_edge || !(well_typed && trusted && current && identity_clean),
                    "refused well-formed current claims {claims:?}: {e}"
                );
            }
        }
    }

    /// Only the trusted key's algorithm under its kid (or no kid, with one key) verifies.
    #[test]
    fn jwt_header_decides_the_key_and_algorithm(header in any_json(), alg in proptest::sample::select(vec![
        "ES256", "ES384", "RS256", "PS256", "HS256", "none", "EdDSA", "es256", "",
    ]), kid in proptest::option::of(proptest::sample::select(vec![KID, "other", ""])), with_alg in any::<bool>()) {
        let mut h = match header {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        h.remove("kid");
        h.remove("alg");
        if with_alg { h.insert("alg".into(), json!(alg)); }
        if let Some(k) = kid { h.insert("kid".into(), json!(k)); }
        let n = now();
        let claims = json!({"iss": ISSUER, "sub": "s", "scope": CLOUD_PLATFORM_SCOPE, "exp": n + 600, "iat": n});
        let result = verify(&sign(&Value::Object(h.clone()).to_string(), &claims.to_string()));
        if result.is_ok() {
            prop_assert!(with_alg && alg == "ES256", "accepted header {h:?}");
            prop_assert!(kid.is_none() || kid == Some(KID), "accepted header {h:?}");
        }
    }

    /// A validly signed token with any one byte changed, or cut anywhere, never verifies.
    #[test]
    fn jwt_any_edit_breaks_the_signature(at in any::<proptest::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let n = now();
        let claims = json!({"iss": ISSUER, "sub": "s", "scope": CLOUD_PLATFORM_SCOPE, "exp": n + 600, "iat": n});
        let token = sign(&good_header(), &claims.to_string());
        prop_assert!(verify(&token).is_ok());
        let i = at.index(token.len());
        let edited = if cut {
            token[..i].to_owned()
        } else {
            let mut b = token.clone().into_bytes();
            if b[i] == byte { return Ok(()); }
            b[i] = byte;
            String::from_utf8_lossy(&b).into_owned()
        };
        let result = verify(&edited);
        // Flipping the unused low bits of a segment's last character changes no decoded byte;
        // the base64 decoder refuses it as non-canonical, so any success is a finding.
        prop_assert!(result.is_err(), "{edited:?} verified");
    }

    /// Arbitrary text, and arbitrary JSON in each part, is refused without a panic.
    #[test]
    fn jwt_garbage_is_refused(text in "\\PC{0,200}", header in any_json(), claims in any_json(), sig in "[A-Za-z0-9_-]{0,100}") {
        prop_assert!(verify(&text).is_err());
        let token = format!("{}.{}.{sig}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        prop_assert!(verify(&token).is_err());
    }

    /// A JWK set parser fed any JSON answers without a panic, and a set it accepts has keys
    /// only from entries that name a key type.
    #[test]
    fn jwk_sets_never_panic(body in any_json(), bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_key_set(&bytes);
        if let Ok(set) = parse_key_set(body.to_string().as_bytes()) {
            let named = body.get("keys").and_then(Value::as_array).map_or(0, |k| k.iter().filter(|k| k.get("kty").is_some()).count());
            prop_assert!(set.len() <= named.max(body.as_object().map_or(0, |o| o.len())));
        }
    }
}

// ---- members and policies ---------------------------------------------------------------------

fn member_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        (
            proptest::sample::select(vec![
                "user:",
                "serviceAccount:",
                "group:",
                "domain:",
                "principal://",
                "principalSet://",
                "principal://iam.googleapis.com/locations/global/workforcePools/staff/subject/",
                "principalSet://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/k8s/attribute.ns/",
                "principalSet://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/k8s/group/",
                "deleted:user:",
                "deleted:group:",
                "User:",
                "",
            ]),
            "[A-Za-z0-9.@_+-]{0,30}",
        )
            .prop_map(|(p, r)| format!("{p}{r}")),
        proptest::sample::select(vec![
            "allUsers",
            "allAuthenticatedUsers",
            "allusers",
            "user:A@Example.COM",
            "domain:example.com",
            "user:a@b",
            "user:@example.com",
            "user:a@-x.com",
        ])
        .prop_map(str::to_owned),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// A member that parses has one canonical form, and that form parses to the same member.
    #[test]
    fn members_have_a_stable_canonical_form(text in member_text()) {
        if let Ok(m) = Member::parse(&text) {
            let canonical = m.to_string();
            prop_assert_eq!(Member::parse(&canonical), Ok(m.clone()));
            prop_assert_eq!(Member::parse(&canonical).map(|m| m.to_string()), Ok(canonical.clone()));
            prop_assert!(!canonical.chars().any(|c| c.is_whitespace() || c.is_control()));
            if matches!(m, Member::User(_) | Member::ServiceAccount(_) | Member::Group(_) | Member::Domain(_)) {
                prop_assert_eq!(canonical.split_once(':').map(|(_, v)| v.to_ascii_lowercase()), canonical.split_once(':').map(|(_, v)| v.to_owned()));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Any JSON as a policy: refused with a message, or normalised to the stored form, which
    /// keeps every rule and is a fixed point of normalisation and of a JSON round trip.
    #[test]
    fn policy_json_normalises_to_a_fixed_point(body in any_json()) {
        let Ok(policy) = serde_json::from_value::<Policy>(body) else { return Ok(()); };
        check_policy(policy)?;
    }

    /// Policies made of plausible parts: the same rules.
    #[test]
    fn policy_bindings_normalise_to_a_fixed_point(
        bindings in proptest::collection::vec((
            proptest::sample::select(vec![
                "roles/apigee.deploymentInvoker", "roles/owner", "roles/viewer", "roles/nope", "",
            ]),
            proptest::collection::vec(member_text(), 0..6),
            proptest::option::of(Just(json!({"expression": "true"}))),
        ), 0..5),
        version in proptest::sample::select(vec![0, 1, 3, 2, -1]),
        etag in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
    ) {
        let bindings: Vec<Value> = bindings.into_iter().map(|(role, members, condition)| {
            let mut b = json!({"role": role, "members": members});
            if let Some(c) = condition { b["condition"] = c; }
            b
        }).collect();
        let mut body = json!({"version": version, "bindings": bindings});
        if let Some(e) = etag { body["etag"] = json!(Etag(e).to_string()); }
        let policy: Policy = serde_json::from_value(body).unwrap();
        check_policy(policy)?;
    }

    /// Etags round-trip through their base64 JSON form; other text is refused, not mangled.
    #[test]
    fn etags_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..40), text in "\\PC{0,20}") {
        let e = Etag(bytes);
        prop_assert_eq!(serde_json::from_value::<Etag>(json!(e.to_string())).unwrap(), e);
        if let Ok(parsed) = serde_json::from_value::<Etag>(json!(text)) {
            let printed = parsed.to_string();
            prop_assert_eq!(printed.trim_end_matches('='), text.trim_end_matches('='));
        }
    }
}

fn check_policy(policy: Policy) -> Result<(), TestCaseError> {
    let input = policy.clone();
    let Ok(stored) = normalize(policy, &PredefinedRoles) else {
        return Ok(());
    };
    prop_assert_eq!(stored.version, 1);
    prop_assert!(stored.audit_configs.is_empty());
    prop_assert!(input.bindings.iter().all(|b| b.condition.is_none()));
    let mut roles = std::collections::HashSet::new();
    let mut principals = 0;
    let mut groups = 0;
    for b in &stored.bindings {
        prop_assert!(roles.insert(b.role.clone()), "role {} twice", b.role);
        prop_assert!(b.condition.is_none());
        prop_assert!(!b.members.is_empty());
        for m in &b.members {
            let canonical = Member::parse(m).map(|p| p.to_string());
            prop_assert_eq!(canonical.as_deref(), Ok(m.as_str()));
            principals += 1;
            groups += usize::from(m.starts_with("group:"));
        }
    }
    prop_assert!(principals <= MAX_PRINCIPALS && groups <= MAX_GROUPS);
    // Every member granted before is granted after, and nothing else.
    let pairs = |p: &Policy| -> std::collections::HashSet<(String, String)> {
        p.bindings
            .iter()
            .flat_map(|b| {
                b.members.iter().map(|m| {
                    let canonical = Member::parse(m).map(|p| p.to_string()).unwrap_or_default();
                    (b.role.clone(), canonical)
                })
            })
            .collect()
    };
    prop_assert_eq!(pairs(&input), pairs(&stored));
    let again = normalize(stored.clone(), &PredefinedRoles);
    prop_assert_eq!(again.as_ref(), Ok(&stored));
    let json = serde_json::to_string(&stored).unwrap();
    prop_assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), stored);
    Ok(())
}

// ---- the CheckRequest reader ------------------------------------------------------------------

fn header_name() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "authorization",
        "Authorization",
        "AUTHORIZATION",
        ":path",
        ":PATH",
        ":authority",
        "host",
        "Host",
        "x-request-id",
        "authorization ",
        "x-other",
    ])
    .prop_map(str::to_owned)
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,30}",
        "[Bb]earer [A-Za-z0-9._~+/-]{1,30}".prop_map(|s| s),
        Just("/orders/1".to_owned()),
    ]
}

#[derive(Debug, Clone)]
struct Raw {
    key: String,
    value: String,
    bytes: Option<Vec<u8>>,
}

fn raw_header() -> impl Strategy<Value = Raw> {
    (
        header_name(),
        header_value(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 1..20)),
    )
        .prop_map(|(key, value, bytes)| Raw { key, value, bytes })
}

fn raw_text(r: &Raw) -> String {
    match &r.bytes {
        None => r.value.clone(),
        Some(b) => String::from_utf8(b.clone()).unwrap_or_else(|_| "\u{fffd}".to_owned()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The reader finds a token only when the request carries exactly one Authorization value
    /// (in either header form, whatever the case of its name), and reads host, path and
    /// context extensions from where Envoy puts them.
    #[test]
    fn check_requests_are_read_as_envoy_sends_them(
        headers in proptest::collection::hash_map(header_name(), header_value(), 0..6),
        raw in proptest::option::of(proptest::collection::vec(raw_header(), 0..4)),
        host in proptest::option::of("[a-z.:0-9]{0,20}"),
        path in proptest::option::of("[ -~]{0,20}"),
        extensions in proptest::collection::hash_map("[a-z]{0,12}", "\\PC{0,10}", 0..4),
        shape in 0..4u8,
    ) {
        let http = HttpRequest {
            host: host.clone().unwrap_or_default(),
            path: path.clone().unwrap_or_default(),
            headers: headers.clone(),
            header_map: raw.as_ref().map(|r| RawHeaderMap {
                headers: r.iter().map(|h| HeaderValue {
                    key: h.key.clone(),
                    value: h.value.clone(),
                    raw_value: h.bytes.clone().unwrap_or_default(),
                }).collect(),
            }),
            ..Default::default()
        };
        let check = CheckRequest {
            attributes: (shape != 0).then(|| AttributeContext {
                request: (shape != 1).then(|| AttrRequest {
                    http: (shape != 2).then_some(http),
                    ..Default::default()
                }),
                context_extensions: extensions.clone(),
                ..Default::default()
            }),
        };
        let read = AuthzRequest::from_check(&check);
        // The gRPC path reads the same from the message's bytes.
        let bytes = prost::Message::encode_to_vec(&check);
        let wire = AuthzRequest::from_wire(&bytes).expect("an encoded CheckRequest reads");
        same_reading(&read, &wire, extensions.keys())?;
        if shape != 0 {
            for (k, v) in &extensions {
                prop_assert_eq!(read.extension(k), Some(v.as_str()));
            }
        }
        prop_assert_eq!(read.extension("\u{0}absent"), None);
        if shape != 3 {
            prop_assert_eq!(read.token, Err(BearerError::Missing));
            prop_assert_eq!((read.host, read.path), ("", ""));
            return Ok(());
        }
        // Every value of a name, in both forms.
        let values = |name: &str| -> Vec<String> {
            let mut v: Vec<String> = headers.iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .collect();
            v.extend(raw.iter().flatten().filter(|h| h.key.eq_ignore_ascii_case(name)).map(raw_text));
            v
        };
        let auth = values("authorization");
        match auth.as_slice() {
            [] => prop_assert_eq!(read.token, Err(BearerError::Missing)),
            [one] => prop_assert_eq!(read.token, bearer::parse(one)),
            _ => prop_assert_eq!(read.token, Err(BearerError::Multiple)),
        }
        if let Ok(t) = read.token {
            prop_assert!(auth[0].contains(t));
        }
        match path.filter(|p| !p.is_empty()) {
            Some(p) => prop_assert_eq!(read.path, p.as_str()),
            None => {
                let candidates = values(":path");
                prop_assert!(
                    (candidates.is_empty() && read.path.is_empty())
                        || candidates.iter().any(|c| c == read.path),
                    "path {:?} from {candidates:?}", read.path
                );
            }
        }
        match host.filter(|h| !h.is_empty()) {
            Some(h) => prop_assert_eq!(read.host, h.as_str()),
            None => {
                let mut candidates = values(":authority");
                if candidates.is_empty() {
                    candidates = values("host");
                }
                prop_assert!(
                    (candidates.is_empty() && read.host.is_empty())
                        || candidates.iter().any(|c| c == read.host),
                    "host {:?} from {candidates:?}", read.host
                );
            }
        }
    }
}

/// Two readings of one request agree on everything a decision uses.
fn same_reading<'k>(
    a: &AuthzRequest<'_>,
    b: &AuthzRequest<'_>,
    keys: impl IntoIterator<Item = &'k String>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(&a.token, &b.token);
    prop_assert_eq!(a.authorization, b.authorization);
    prop_assert_eq!(
        (a.host, a.path, a.request_id),
        (b.host, b.path, b.request_id)
    );
    for k in keys.into_iter().map(String::as_str).chain([
        "environment",
        "deployment",
        "organization",
        "backend_audience",
        "",
    ]) {
        prop_assert_eq!(a.extension(k), b.extension(k), "extension {:?}", k);
    }
    Ok(())
}

/// A `CheckRequest` as Envoy might send it, with headers in both forms.
fn any_check() -> impl Strategy<Value = CheckRequest> {
    (
        proptest::collection::hash_map(header_name(), header_value(), 0..5),
        proptest::option::of(proptest::collection::vec(raw_header(), 0..3)),
        "[a-z.:0-9]{0,12}",
        "[ -~]{0,16}",
        "[a-z0-9-]{0,8}",
        proptest::collection::hash_map(
            prop_oneof![
                Just("environment".to_owned()),
                Just("deployment".to_owned()),
                "[a-z]{0,6}"
            ],
            "[a-z0-9]{0,6}",
            0..4,
        ),
    )
        .prop_map(|(headers, raw, host, path, id, extensions)| CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(HttpRequest {
                        id,
                        host,
                        path,
                        method: "GET".into(),
                        headers,
                        header_map: raw.map(|r| RawHeaderMap {
                            headers: r
                                .into_iter()
                                .map(|h| HeaderValue {
                                    key: h.key,
                                    value: h.value,
                                    raw_value: h.bytes.unwrap_or_default(),
                                })
                                .collect(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: extensions,
                ..Default::default()
            }),
        })
}

/// Damage to an encoding: a byte changed, bytes cut or inserted, a stretch repeated.
#[derive(Debug, Clone)]
enum Damage {
    Set(usize, u8),
    Cut(usize, usize),
    Insert(usize, Vec<u8>),
    Repeat(usize, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
        (any::<usize>(), 1..8usize).prop_map(|(i, n)| Damage::Cut(i, n)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(i, b)| Damage::Insert(i, b)),
        (any::<usize>(), 1..40usize).prop_map(|(i, n)| Damage::Repeat(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, d: &Damage) {
    if bytes.is_empty() {
        return;
    }
    let at = |i: usize| i % bytes.len();
    match d {
        Damage::Set(i, b) => {
            let i = at(*i);
            bytes[i] = *b;
        }
        Damage::Cut(i, n) => {
            let i = at(*i);
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Damage::Insert(i, b) => {
            let i = at(*i);
            bytes.splice(i..i, b.iter().copied());
        }
        Damage::Repeat(i, n) => {
            let i = at(*i);
            let end = (i + n).min(bytes.len());
            let stretch = bytes[i..end].to_vec();
            bytes.splice(end..end, stretch);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Whatever bytes a full protobuf decoder accepts as a `CheckRequest`, the borrowing reader
    /// accepts too and reads the same; where the decoder refuses, the reader may refuse or read,
    /// but never panics.
    #[test]
    fn check_request_bytes_read_as_a_full_decoder_reads_them(
        check in any_check(),
        damages in proptest::collection::vec(damage(), 0..4),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
        shape in 0..3u8,
    ) {
        let mut bytes = prost::Message::encode_to_vec(&check);
        match shape {
            // Damaged encodings.
            0 => damages.iter().for_each(|d| apply(&mut bytes, d)),
            // Two messages concatenated: the decoder merges them.
            1 => {
                let mut second = prost::Message::encode_to_vec(&check);
                damages.iter().for_each(|d| apply(&mut second, d));
                bytes.extend(second);
            }
            // Noise.
            _ => bytes = noise,
        }
        let wire = AuthzRequest::from_wire(&bytes);
        if let Ok(decoded) = <CheckRequest as prost::Message>::decode(bytes.as_slice()) {
            let Ok(wire) = wire else {
                return Err(TestCaseError::fail(format!("the decoder read {bytes:?}, the reader refused: {wire:?}", wire = wire.err())));
            };
            let keys: Vec<String> = decoded
                .attributes
                .iter()
                .flat_map(|a| a.context_extensions.keys().cloned())
                .collect();
            same_reading(&AuthzRequest::from_check(&decoded), &wire, &keys)?;
        }
    }
}

// ---- findings of the fuzz driver ---------------------------------------------------------------

/// A validly signed token whose `exp` is beyond `u64` (`1e300`, `u64::MAX`) made
/// `expires_at + leeway` overflow in the Authenticator: a panic with overflow checks on, and
/// with them off a wrap-around that called a far-future token expired. Found by the fuzz driver
/// (`examples/fuzz.rs`) as a panic in Check.
#[test]
fn a_far_future_expiry_is_not_an_overflow() {
    let k = keys();
    let authenticator = verifyiam::authn::Authenticator::new(
        &TokenConfig::default(),
        reqwest::Client::new(),
        vec![(ISSUER.to_owned(), key_set(&k.jwk))],
    );
    for exp in [
        json!(1e300),
        json!(u64::MAX),
        json!(i64::MAX),
        json!(1.8446744073709552e19),
    ] {
        let claims = json!({"iss": ISSUER, "sub": "s", "email": "a@example.com",
                            "email_verified": true, "scope": CLOUD_PLATFORM_SCOPE, "exp": exp});
        let token = sign(&good_header(), &claims.to_string());
        let principal = k
            .runtime
            .block_on(authenticator.authenticate(&token))
            .unwrap_or_else(|e| panic!("exp {exp}: {e}"));
        assert_eq!(&*principal.id, "a@example.com");
    }
}

/// An upstream that answers every POST with `body`.
async fn answering(body: Value) -> String {
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move || async move { axum::Json(body) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

/// The same sum in tokeninfo and introspection, on numbers an upstream sends: an `exp` or
/// `expires_in` of `u64::MAX` overflowed.
#[tokio::test]
async fn upstream_expiries_beyond_u64_are_not_an_overflow() {
    let max = u64::MAX.to_string();
    for answer in [
        json!({"exp": max, "scope": CLOUD_PLATFORM_SCOPE, "sub": "1"}),
        json!({"expires_in": max, "scope": CLOUD_PLATFORM_SCOPE, "sub": "1"}),
    ] {
        let tokeninfo = verifyiam::authn::tokeninfo::Tokeninfo::new(
            reqwest::Client::new(),
            answering(answer.clone()).await,
        );
        let v = tokeninfo
            .verify("ya29.x", CLOUD_PLATFORM_SCOPE, 30)
            .await
            .unwrap_or_else(|e| panic!("{answer}: {e}"));
        assert!(v.expires_at > now() as u64, "{answer}");
    }
    let introspection = verifyiam::authn::introspection::Introspection::new(
        reqwest::Client::new(),
        verifyiam::config::IntrospectionConfig {
            url: answering(
                json!({"active": true, "exp": u64::MAX, "scope": CLOUD_PLATFORM_SCOPE, "sub": "1"}),
            )
            .await,
            client_id: None,
            client_secret: None,
            email_field: "email".into(),
        },
    );
    let v = introspection
        .verify("opaque", CLOUD_PLATFORM_SCOPE, 30)
        .await
        .unwrap();
    assert!(v.expires_at > now() as u64);
}

// ---- route choice -----------------------------------------------------------------------------

/// Segments holding every sub-delimiter a route prefix may hold raw, and plain ones.
const ROUTE_SEGMENTS: &[&str] = &[
    "api",
    "v1",
    "orders:cancel",
    "@admin",
    "a+b=c",
    "it's(1)",
    "x*!$&,y",
    "orders",
    "1",
];

/// Nested routes, some holding sub-delimiters, some of those written encoded in the table (the
/// table's spelling must not matter either).
fn sub_delimiter_router() -> (Router, Vec<(String, &'static str)>) {
    let routes = [
        ("/api", "api"),
        ("/api/v1", "v1"),
        ("/api/v1/orders:cancel", "cancel"),
        ("/api/v1/orders%3Acancel/@admin", "cancel-admin"),
        ("/api/%40admin", "admin"),
        ("/api/a+b%3dc", "abc"),
        ("/api/it%27s%281%29", "its"),
        ("/api/v1/x*!$&,y", "punct"),
    ];
    let config: Vec<RouteConfig> = routes
        .iter()
        .map(|(prefix, deployment)| RouteConfig {
            host: None,
            path_prefix: (*prefix).to_owned(),
            organization: None,
            environment: "prod".to_owned(),
            deployment: (*deployment).to_owned(),
            backend_audience: None,
        })
        .collect();
    let depths = routes
        .iter()
        .map(|(p, d)| (verifyiam::route::path::normalize(p).unwrap(), *d))
        .collect();
    (Router::new("demo", &config), depths)
}

/// A segment written so that a decoding backend reads `segment`: each character raw or
/// percent-encoded (upper or lower hex), letters in either case.
fn spelled_segment(segment: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec((any::<bool>(), 0..3u8), segment.len()).prop_map(move |chars| {
        let mut out = String::new();
        for (c, (upper, encoding)) in segment.chars().zip(chars) {
            let c = if upper { c.to_ascii_uppercase() } else { c };
            match encoding {
                0 => out.push_str(&format!("%{:02X}", c as u32)),
                1 => out.push_str(&format!("%{:02x}", c as u32)),
                _ => out.push(c),
            }
        }
        out
    })
}

/// A path's segments and a spelling of it.
fn route_path_and_spelling() -> impl Strategy<Value = (String, String)> {
    proptest::collection::vec(proptest::sample::select(ROUTE_SEGMENTS), 0..5)
        .prop_flat_map(|segments| {
            let spelled: Vec<_> = segments.iter().map(|s| spelled_segment(s)).collect();
            (Just(segments), spelled)
        })
        .prop_map(|(segments, spelled)| {
            (
                format!("/{}", segments.join("/")),
                format!("/{}", spelled.join("/")),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// No spelling of a path reaches a less specific route than its normal form: sub-delimiters
    /// compare the same raw or encoded, on both sides.
    #[test]
    fn no_spelling_of_a_sub_delimiter_reaches_a_less_specific_route(
        (normal, spelling) in route_path_and_spelling()
    ) {
        let (router, _) = sub_delimiter_router();
        let by_normal = router.lookup("h", &normal).unwrap().cloned();
        let by_spelling = router.lookup("h", &spelling).unwrap().cloned();
        prop_assert_eq!(by_spelling, by_normal, "{} vs {}", spelling, normal);
    }

    /// The route a path reaches is the longest table prefix its decoded form starts with, whole
    /// segments only: checked against an independent reading of the table.
    #[test]
    fn the_route_is_the_longest_decoded_prefix((normal, spelling) in route_path_and_spelling()) {
        let (router, prefixes) = sub_delimiter_router();
        let expected = prefixes
            .iter()
            .filter(|(p, _)| normal == *p || normal.starts_with(&format!("{p}/")))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, d)| *d);
        let got = router.lookup("h", &spelling).unwrap().map(|t| t.deployment.to_string());
        prop_assert_eq!(got.as_deref(), expected, "{}", spelling);
    }

    /// A `.` or `..` segment anywhere, raw or encoded in any case, is refused, never resolved.
    #[test]
    fn dot_segments_anywhere_are_refused(
        (_, spelling) in route_path_and_spelling(),
        at in any::<proptest::sample::Index>(),
        dots in proptest::sample::select(&[".", "..", "%2e", "%2E", "%2e%2e", "%2E%2e", ".%2e", "%2E."][..]),
        trailing in any::<bool>(),
    ) {
        let (router, _) = sub_delimiter_router();
        // Cut between segments, so the dots are a segment of their own.
        let cuts: Vec<usize> = spelling
            .match_indices('/')
            .map(|(i, _)| i)
            .chain([spelling.len()])
            .collect();
        let cut = cuts[at.index(cuts.len())];
        let tail = if trailing { "/" } else { "" };
        let path = format!("{}/{dots}{tail}{}", &spelling[..cut], &spelling[cut..]);
        prop_assert_eq!(
            router.lookup("h", &path).map(|t| t.cloned()),
            Err(RouteError::Malformed(PathError::DotSegment)),
            "{}", path
        );
    }
}

// ---- federated identities and email identities never match each other's members --------------

fn pool_name() -> impl Strategy<Value = String> {
    prop_oneof![
        ("[0-9]{1,12}", "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?")
            .prop_map(|(n, p)| format!("projects/{n}/locations/global/workloadIdentityPools/{p}")),
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
            .prop_map(|p| format!("locations/global/workforcePools/{p}")),
    ]
}

/// Values a hostile issuer might map: emails, member-looking text, anything printable.
fn federated_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.]{1,12}@[a-z0-9]{1,8}\\.(com|org)",
        (
            "(user|serviceAccount|group|domain):",
            "[a-z0-9.]{1,12}@[a-z0-9]{1,8}\\.com"
        )
            .prop_map(|(k, v)| format!("{k}{v}")),
        "[!-~]{1,40}",
        proptest::sample::select(vec![
            "allUsers",
            "allAuthenticatedUsers",
            "*",
            "alice@example.com",
            "example.com",
        ])
        .prop_map(str::to_owned),
    ]
}

fn email() -> impl Strategy<Value = String> {
    (
        "[a-z0-9.]{1,12}",
        "[a-z0-9]{1,8}\\.(com|org|iam\\.gserviceaccount\\.com)",
    )
        .prop_map(|(l, d)| format!("{l}@{d}"))
}

/// A member string of a pool (any of the four forms), possibly malformed by its value.
fn pool_member() -> impl Strategy<Value = String> {
    (pool_name(), 0..4usize, "[a-z0-9_]{1,12}", federated_value()).prop_map(
        |(pool, kind, name, value)| match kind {
            0 => format!("principal://iam.googleapis.com/{pool}/subject/{value}"),
            1 => format!("principalSet://iam.googleapis.com/{pool}/group/{value}"),
            2 => format!("principalSet://iam.googleapis.com/{pool}/attribute.{name}/{value}"),
            _ => format!("principalSet://iam.googleapis.com/{pool}/*"),
        },
    )
}

/// The permissions `members` hold from a policy granting invoke to `member` alone.
fn granted_through(member: &str, members: &[Box<str>]) -> PermissionSet {
    let mut policy = CompiledPolicy::default();
    policy.grant(member, PermissionSet::INVOKE);
    policy.granted(members)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A principal with an email (a user or a service account, in any groups) never holds what a
    /// pool member is granted.
    #[test]
    fn no_email_principal_matches_a_pool_member(
        email in email(),
        groups in proptest::collection::vec(email(), 0..3),
        member in pool_member(),
    ) {
        let members = principal_members(Some(&email), &groups, None);
        prop_assert_eq!(granted_through(&member, &members), PermissionSet::EMPTY, "{} {:?}", member, members);
    }

    /// A pool identity, whatever its subject, groups and attributes hold (emails, member-looking
    /// text), never holds what an email member (`user:`, `serviceAccount:`, `group:`, `domain:`)
    /// is granted.
    #[test]
    fn no_pool_principal_matches_an_email_member(
        pool in pool_name(),
        subject in federated_value(),
        groups in proptest::collection::vec(federated_value(), 0..3),
        attributes in proptest::collection::vec(("[a-z0-9_]{1,8}", federated_value()), 0..3),
        kind in proptest::sample::select(vec!["user:", "serviceAccount:", "group:"]),
        email in email(),
    ) {
        let members = pool_members(&pool, &subject, &groups, &attributes);
        let domain = email.split_once('@').map(|(_, d)| d.to_owned()).unwrap_or_default();
        for member in [format!("{kind}{email}"), format!("domain:{domain}")] {
            prop_assert!(Member::parse(&member).is_ok(), "{}", member);
            prop_assert_eq!(granted_through(&member, &members), PermissionSet::EMPTY, "{} {:?}", member, members);
        }
        // And the email-shaped values it carries are not turned into email members either.
        for value in std::iter::once(&subject).chain(&groups).chain(attributes.iter().map(|(_, v)| v)) {
            for kind in ["user:", "serviceAccount:", "group:", "domain:"] {
                prop_assert!(!members.iter().any(|m| m.starts_with(kind)), "{} {:?}", value, members);
            }
        }
    }
}
