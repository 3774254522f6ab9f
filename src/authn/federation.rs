//! Workload and workforce identity federation: an issuer that belongs to a pool has its verified
//! claims mapped to Google attributes (`google.subject`, `google.groups`, `attribute.NAME`) by
//! CEL expressions, and an attribute condition in CEL decides which of its tokens the pool
//! accepts. Expressions are compiled once, when the configuration loads; they run once per
//! verified token (a cached token is not mapped again).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

use crate::config::FederationConfig;
use crate::iam::member::{
    MAX_ATTRIBUTE_NAME_LEN, MAX_FEDERATED_VALUE_LEN, MAX_SUBJECT_LEN, is_attribute_name, is_pool,
};

/// Google's bound on the number of custom attributes a provider maps.
pub const MAX_ATTRIBUTES: usize = 50;
/// Google's bound on the attribute condition, in characters.
pub const MAX_CONDITION_LEN: usize = 4096;
/// Groups one token may map to (verifyiam's own bound: each is a member to match).
pub const MAX_GROUPS: usize = 250;
/// Values one custom attribute may map to when its expression yields a list (verifyiam's own).
pub const MAX_ATTRIBUTE_VALUES: usize = 50;
/// The longest reason a refused mapping gives (it reaches the caller).
const MAX_REASON_LEN: usize = 240;

/// Why a `[token.jwt.federation]` table is refused at load; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FederationError {
    /// The field path, e.g. `token.jwt[1].federation.attribute_mapping."attribute.ns"`.
    pub field: String,
    /// What is wrong, with the CEL error where there is one.
    pub message: String,
}

/// A pool's mapping and condition, compiled.
pub struct Federation {
    pool: Arc<str>,
    env: Arc<Env>,
    subject: Program,
    groups: Option<Program>,
    /// `(NAME, expression)` of each `attribute.NAME`, in name order.
    attributes: Vec<(String, Program)>,
    condition: Option<Program>,
}

impl fmt::Debug for Federation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Federation")
            .field("pool", &self.pool)
            .field(
                "attributes",
                &self.attributes.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("condition", &self.condition.is_some())
            .finish()
    }
}

/// What a pool made of one token: the identity its policies see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The pool's resource name.
    pub pool: Arc<str>,
    /// `google.subject`.
    pub subject: String,
    /// `google.groups`.
    pub groups: Vec<String>,
    /// `(NAME, VALUE)` for each custom attribute value (a list-valued attribute gives several).
    pub attributes: Vec<(String, String)>,
}

impl Federation {
    /// Compiles `config`; `field` is the table's path (`token.jwt[1].federation`).
    pub fn compile(config: &FederationConfig, field: &str) -> Result<Federation, FederationError> {
        let error = |path: String, message: String| FederationError {
            field: path,
            message,
        };
        if !is_pool(&config.pool) {
            return Err(error(
                format!("{field}.pool"),
                format!(
                    "{:?} is not a pool: expected projects/NUMBER/locations/global/\
                     workloadIdentityPools/POOL_ID or locations/global/workforcePools/POOL_ID",
                    config.pool
                ),
            ));
        }
        let env = Env::stdlib();
        let compile = |key: &str, source: &str| {
            env.compile(source).map_err(|e| {
                error(
                    format!("{field}.attribute_mapping.{key:?}"),
                    format!("the CEL expression {source:?} does not compile: {e}"),
                )
            })
        };
        let mut subject = None;
        let mut groups = None;
        let mut attributes = Vec::new();
        for (key, source) in &config.attribute_mapping {
            let program = compile(key, source)?;
            match key.as_str() {
                "google.subject" => subject = Some(program),
                "google.groups" => groups = Some(program),
                _ => match key.strip_prefix("attribute.") {
                    Some(name) if is_attribute_name(name) => {
                        attributes.push((name.to_owned(), program))
                    }
                    _ => {
                        return Err(error(
                            format!("{field}.attribute_mapping.{key:?}"),
                            format!(
                                "unknown attribute: expected google.subject, google.groups or \
                                 attribute.NAME with NAME of 1 to {MAX_ATTRIBUTE_NAME_LEN} of \
                                 [a-z0-9_]"
                            ),
                        ));
                    }
                },
            }
        }
        let Some(subject) = subject else {
            return Err(error(
                format!("{field}.attribute_mapping"),
                "must map google.subject (e.g. \"google.subject\" = \"assertion.sub\")".into(),
            ));
        };
        if attributes.len() > MAX_ATTRIBUTES {
            return Err(error(
                format!("{field}.attribute_mapping"),
                format!(
                    "maps {} custom attributes; at most {MAX_ATTRIBUTES}",
                    attributes.len()
                ),
            ));
        }
        let condition = match &config.attribute_condition {
            None => None,
            Some(source) => {
                let path = format!("{field}.attribute_condition");
                if source.chars().count() > MAX_CONDITION_LEN {
                    return Err(error(
                        path,
                        format!("is longer than {MAX_CONDITION_LEN} characters"),
                    ));
                }
                Some(env.compile(source).map_err(|e| {
                    error(
                        path,
                        format!("the CEL expression {source:?} does not compile: {e}"),
                    )
                })?)
            }
        };
        Ok(Federation {
            pool: config.pool.as_str().into(),
            env: Arc::new(env),
            subject,
            groups,
            attributes,
            condition,
        })
    }

    /// The pool's resource name.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Maps a verified token's claims (`assertion`) and applies the attribute condition.
    /// Every refusal is a reason for a 401 `invalid_token`.
    pub fn map(&self, assertion: &serde_json::Value) -> Result<Mapped, String> {
        let assertion = cel::to_value(assertion)
            .map_err(|e| reason(format!("the token's claims cannot be mapped: {e}")))?;
        let mut context = Context::with_env(self.env.clone());
        context.add_variable_from_value("assertion", assertion);

        let subject = match self.run(&context, "google.subject", &self.subject)? {
            Value::String(s) => s.to_string(),
            other => return Err(not_a("google.subject", "string", &other)),
        };
        check_value("google.subject", &subject, MAX_SUBJECT_LEN)?;

        let groups = match &self.groups {
            None => Vec::new(),
            Some(program) => {
                let list = match self.run(&context, "google.groups", program)? {
                    Value::List(list) => list,
                    other => return Err(not_a("google.groups", "list of strings", &other)),
                };
                if list.len() > MAX_GROUPS {
                    return Err(reason(format!(
                        "the mapping of google.groups yields {} groups; at most {MAX_GROUPS}",
                        list.len()
                    )));
                }
                let mut groups = Vec::with_capacity(list.len());
                for v in list.iter() {
                    match v {
                        Value::String(s) => {
                            check_value("google.groups", s, MAX_FEDERATED_VALUE_LEN)?;
                            groups.push(s.to_string());
                        }
                        other => return Err(not_a("google.groups", "list of strings", other)),
                    }
                }
                groups
            }
        };

        let mut attributes = Vec::with_capacity(self.attributes.len());
        let mut by_name: HashMap<Key, Value> = HashMap::with_capacity(self.attributes.len());
        for (name, program) in &self.attributes {
            let what = format!("attribute.{name}");
            let value = self.run(&context, &what, program)?;
            match &value {
                Value::String(s) => {
                    check_value(&what, s, MAX_FEDERATED_VALUE_LEN)?;
                    attributes.push((name.clone(), s.to_string()));
                }
                Value::List(list) => {
                    if list.len() > MAX_ATTRIBUTE_VALUES {
                        return Err(reason(format!(
                            "the mapping of {what} yields {} values; at most \
                             {MAX_ATTRIBUTE_VALUES}",
                            list.len()
                        )));
                    }
                    for v in list.iter() {
                        match v {
                            Value::String(s) => {
                                check_value(&what, s, MAX_FEDERATED_VALUE_LEN)?;
                                attributes.push((name.clone(), s.to_string()));
                            }
                            other => return Err(not_a(&what, "string or list of strings", other)),
                        }
                    }
                }
                other => return Err(not_a(&what, "string or list of strings", other)),
            }
            by_name.insert(Key::String(Arc::new(name.clone())), value);
        }

        if let Some(condition) = &self.condition {
            let mut google: HashMap<Key, Value> = HashMap::with_capacity(2);
            google.insert(
                Key::String(Arc::new("subject".into())),
                Value::String(Arc::new(subject.clone())),
            );
            google.insert(
                Key::String(Arc::new("groups".into())),
                Value::List(Arc::new(
                    groups
                        .iter()
                        .map(|g| Value::String(Arc::new(g.clone())))
                        .collect(),
                )),
            );
            context.add_variable_from_value(
                "google",
                Value::Map(Map {
                    map: Arc::new(google),
                }),
            );
            context.add_variable_from_value(
                "attribute",
                Value::Map(Map {
                    map: Arc::new(by_name),
                }),
            );
            match condition.execute(&context) {
                Ok(Value::Bool(true)) => {}
                Ok(Value::Bool(false)) => {
                    return Err(reason(format!(
                        "the token does not meet the attribute condition of pool {}",
                        self.pool
                    )));
                }
                Ok(other) => return Err(not_a("attribute condition", "bool", &other)),
                Err(e) => {
                    return Err(reason(format!(
                        "the attribute condition of pool {} could not be evaluated: {e}",
                        self.pool
                    )));
                }
            }
        }
        Ok(Mapped {
            pool: self.pool.clone(),
            subject,
            groups,
            attributes,
        })
    }

    fn run(&self, context: &Context, what: &str, program: &Program) -> Result<Value, String> {
        program
            .execute(context)
            .map_err(|e| reason(format!("the mapping of {what} failed: {e}")))
    }
}

/// A mapped value must be non-empty, within `max` bytes, and free of control characters (it
/// reaches members, headers and logs).
fn check_value(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("the mapping of {what} yields an empty string"));
    }
    if value.len() > max {
        return Err(format!(
            "the mapping of {what} yields {} bytes; at most {max}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("the mapping of {what} yields control characters"));
    }
    Ok(())
}

fn not_a(what: &str, expected: &str, got: &Value) -> String {
    format!(
        "the mapping of {what} yields a {}, not a {expected}",
        got.type_of()
    )
}

/// Bounds a reason (CEL errors can quote values from the token) and drops control characters.
fn reason(text: String) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON_LEN)
        .collect();
    if text.chars().count() > MAX_REASON_LEN {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    const POOL: &str = "projects/123456/locations/global/workloadIdentityPools/k8s";

    fn config(mapping: &[(&str, &str)], condition: Option<&str>) -> FederationConfig {
        FederationConfig {
            pool: POOL.into(),
            attribute_mapping: mapping
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            attribute_condition: condition.map(str::to_owned),
            ..Default::default()
        }
    }

    fn compile(mapping: &[(&str, &str)], condition: Option<&str>) -> Federation {
        Federation::compile(&config(mapping, condition), "f").unwrap()
    }

    fn k8s_claims(namespace: &str, name: &str) -> serde_json::Value {
        json!({
            "iss": "https://cluster.test", "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "u"}},
        })
    }

    #[test]
    fn kubernetes_claims_map_to_subject_and_namespace() {
        let f = compile(
            &[
                ("google.subject", "assertion.sub"),
                (
                    "attribute.namespace",
                    "assertion['kubernetes.io']['namespace']",
                ),
            ],
            None,
        );
        let mapped = f.map(&k8s_claims("default", "orders")).unwrap();
        assert_eq!(mapped.subject, "system:serviceaccount:default:orders");
        assert_eq!(
            mapped.attributes,
            [("namespace".to_string(), "default".to_string())]
        );
        assert!(mapped.groups.is_empty());
    }

    #[test]
    fn attribute_condition_sees_assertion_google_and_attributes() {
        let f = compile(
            &[
                ("google.subject", "assertion.sub"),
                ("google.groups", "assertion.groups"),
                ("attribute.owner", "assertion.repository_owner"),
            ],
            Some(
                "attribute.owner == 'acme' && 'ci' in google.groups && google.subject.startsWith('repo:')",
            ),
        );
        let ok = json!({"sub": "repo:acme/api:ref:refs/heads/main", "repository_owner": "acme", "groups": ["ci"]});
        let mapped = f.map(&ok).unwrap();
        assert_eq!(mapped.groups, ["ci"]);
        let other = json!({"sub": "repo:evil/api:ref:refs/heads/main", "repository_owner": "evil", "groups": ["ci"]});
        let e = f.map(&other).unwrap_err();
        assert!(e.contains("does not meet the attribute condition"), "{e}");
    }

    #[test]
    fn mapping_of_an_absent_claim_is_refused_with_its_name() {
        let f = compile(
            &[
                ("google.subject", "assertion.sub"),
                ("attribute.repository", "assertion.repository"),
            ],
            None,
        );
        let e = f.map(&json!({"sub": "x"})).unwrap_err();
        assert!(e.contains("attribute.repository"), "{e}");
        let e = f.map(&json!({"repository": "x"})).unwrap_err();
        assert!(e.contains("google.subject"), "{e}");
    }

    #[test]
    fn mapped_values_are_bounded() {
        let f = compile(
            &[
                ("google.subject", "assertion.sub"),
                ("google.groups", "assertion.groups"),
                ("attribute.a", "assertion.a"),
            ],
            None,
        );
        let base = |sub: serde_json::Value, groups: serde_json::Value, a: serde_json::Value| {
            f.map(&json!({"sub": sub, "groups": groups, "a": a}))
        };
        assert!(base(json!("s"), json!([]), json!(["x", "y"])).is_ok());
        let too_long = "s".repeat(128);
        let e = base(json!(too_long), json!([]), json!("x")).unwrap_err();
        assert!(e.contains("at most 127"), "{e}");
        assert!(base(json!("s".repeat(127)), json!([]), json!("x")).is_ok());
        let e = base(json!(""), json!([]), json!("x")).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = base(json!("a\nb"), json!([]), json!("x")).unwrap_err();
        assert!(e.contains("control"), "{e}");
        let e = base(json!(7), json!([]), json!("x")).unwrap_err();
        assert!(e.contains("not a string"), "{e}");
        let e = base(json!("s"), json!("ci"), json!("x")).unwrap_err();
        assert!(e.contains("google.groups"), "{e}");
        let e = base(json!("s"), json!([1]), json!("x")).unwrap_err();
        assert!(e.contains("google.groups"), "{e}");
        let many: Vec<String> = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect();
        let e = base(json!("s"), json!(many), json!("x")).unwrap_err();
        assert!(e.contains("at most 250"), "{e}");
        let e = base(json!("s"), json!([]), json!({"k": 1})).unwrap_err();
        assert!(e.contains("attribute.a"), "{e}");
    }

    #[test]
    fn configuration_errors_name_the_field_and_the_cel_error() {
        let e = Federation::compile(
            &config(
                &[
                    ("google.subject", "assertion.sub"),
                    ("attribute.ns", "assertion["),
                ],
                None,
            ),
            "token.jwt[1].federation",
        )
        .unwrap_err();
        assert_eq!(
            e.field,
            "token.jwt[1].federation.attribute_mapping.\"attribute.ns\""
        );
        assert!(e.message.contains("does not compile"), "{e}");
        let e = Federation::compile(&config(&[("attribute.ns", "assertion.ns")], None), "f")
            .unwrap_err();
        assert_eq!(e.field, "f.attribute_mapping");
        assert!(e.message.contains("google.subject"), "{e}");
        for key in ["attribute.NS", "attribute.", "google.display_name", "ns"] {
            let e = Federation::compile(
                &config(
                    &[("google.subject", "assertion.sub"), (key, "assertion.x")],
                    None,
                ),
                "f",
            )
            .unwrap_err();
            assert_eq!(e.field, format!("f.attribute_mapping.{key:?}"));
        }
        let e = Federation::compile(
            &config(
                &[("google.subject", "assertion.sub")],
                Some("assertion.sub =="),
            ),
            "f",
        )
        .unwrap_err();
        assert_eq!(e.field, "f.attribute_condition");
        let long = format!("'{}' == 'a'", "a".repeat(MAX_CONDITION_LEN));
        let e = Federation::compile(
            &config(&[("google.subject", "assertion.sub")], Some(&long)),
            "f",
        )
        .unwrap_err();
        assert!(e.message.contains("4096"), "{e}");
        let mut c = config(&[("google.subject", "assertion.sub")], None);
        c.pool = "projects/p/locations/global/workloadIdentityPools/k8s".into();
        let e = Federation::compile(&c, "f").unwrap_err();
        assert_eq!(e.field, "f.pool");
        let mut mapping: Vec<(String, String)> = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("attribute.a{i}"), "assertion.sub".to_string()))
            .collect();
        mapping.push(("google.subject".into(), "assertion.sub".into()));
        let refs: Vec<(&str, &str)> = mapping
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let e = Federation::compile(&config(&refs, None), "f").unwrap_err();
        assert!(e.message.contains("at most 50"), "{e}");
    }
}
