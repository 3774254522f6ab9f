//! The example configuration `verifyiam config example` prints: every key the parser knows, at its
//! default, with what it does. The tests below hold it to the parser, so the two cannot drift.

/// A complete configuration, commented: each key at its default (`key = value`), or commented out
/// with an example value (`# key = value`) where it is optional or has no default.
pub const EXAMPLE: &str = include_str!("example.toml");

/// The example with its commented-out keys and tables switched on: a line `# key = …` or
/// `# [table]` loses its `# `. Continuation comments (indented) and prose stay comments.
pub(crate) fn uncommented() -> String {
    EXAMPLE
        .lines()
        .map(|line| {
            let Some(rest) = line.strip_prefix("# ") else {
                return line.to_owned();
            };
            let key = rest.split(['=', ' ']).next().unwrap_or("");
            let is_key = !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && rest[key.len()..].trim_start().starts_with('=');
            if rest.starts_with('[') || is_key {
                rest.to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The example's value at `path` (`routes[1].environment`: any index reads the first element).
fn example_value(path: &str) -> Option<toml::Value> {
    static TABLE: std::sync::OnceLock<Option<toml::Table>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| uncommented().parse().ok()).as_ref()?;
    let mut value: Option<&toml::Value> = None;
    for segment in path.split('.') {
        let (key, indexed) = match segment.split_once('[') {
            Some((key, _)) => (key, true),
            None => (segment, false),
        };
        let next = match value {
            None => table.get(key),
            Some(v) => v.as_table()?.get(key),
        }?;
        value = Some(match next {
            toml::Value::Array(items) if indexed => items.first()?,
            other => other,
        });
    }
    value.cloned()
}

/// `; e.g. path = value` from the example, for an error about the value at `path` (nothing when
/// the example has none there). A table is named as one, to be copied from `config example`.
pub(crate) fn hint(path: &str) -> String {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    let leaf = leaf.split('[').next().unwrap_or(leaf);
    // Lists the example leaves empty: one element that would do.
    let element = match leaf {
        "bootstrap_admins" | "members" => Some("\"user:ops@example.com\""),
        "audiences" => Some("\"https://orders.example.com\""),
        _ => None,
    };
    if let Some(element) = element {
        return if path.ends_with(']') {
            format!("; e.g. {element}")
        } else {
            format!("; e.g. {leaf} = [{element}]")
        };
    }
    match example_value(path) {
        Some(toml::Value::Table(_)) => {
            format!("; e.g. a [{leaf}] table as in `verifyiam config example`")
        }
        Some(toml::Value::String(s)) if is_duration(&s) => format!(
            "; e.g. {leaf} = \"{s}\" (a duration: a number and a unit, \"150ms\", \"30s\", \"5m\", \"1h\")"
        ),
        Some(toml::Value::Array(items)) if items.is_empty() => String::new(),
        Some(value) => format!("; e.g. {leaf} = {value}"),
        None => String::new(),
    }
}

fn is_duration(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    !digits.is_empty() && digits.len() < s.len() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::{EXAMPLE, uncommented};
    use crate::config::{BackendAuthConfig, BackendTokenSource, Config, ConfigError};

    /// Tables whose keys are data rather than configuration keys (any key is accepted).
    const FREE_FORM: &[&str] = &["attribute_mapping"];

    /// Every table of a document, by its path (the first element of an array of tables).
    fn tables(table: &toml::Table, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(path.clone());
        for (key, value) in table {
            if FREE_FORM.contains(&key.as_str()) {
                continue;
            }
            let inner = match value {
                toml::Value::Table(t) => Some(t),
                toml::Value::Array(a) => a.first().and_then(toml::Value::as_table),
                _ => None,
            };
            if let Some(t) = inner {
                path.push(key.clone());
                tables(t, path, out);
                path.pop();
            }
        }
    }

    fn table_at<'a>(root: &'a mut toml::Table, path: &[String]) -> &'a mut toml::Table {
        path.iter().fold(root, |t, key| match t.get_mut(key) {
            Some(toml::Value::Table(inner)) => inner,
            Some(toml::Value::Array(a)) => a[0].as_table_mut().expect("an array of tables"),
            _ => unreachable!("{key} is a table of the document"),
        })
    }

    /// The keys the real parser accepts in the table at `path`: an unknown key put there makes it
    /// answer "….zz_not_a_key: unknown key: expected one of `a`, `b`, …" (or "expected `a` or `b`").
    fn known_keys(document: &toml::Table, path: &[String]) -> BTreeSet<String> {
        const PROBE: &str = "zz_not_a_key";
        let mut probed = document.clone();
        table_at(&mut probed, path).insert(PROBE.to_owned(), toml::Value::Integer(1));
        let text = toml::to_string(&probed).unwrap();
        let message = match Config::parse(&text) {
            Err(ConfigError::Parse(m)) => m,
            other => panic!("[{}] takes any key: {other:?}", path.join(".")),
        };
        let expected = message
            .split_once(&format!("{PROBE}: unknown key: expected"))
            .unwrap_or_else(|| panic!("[{}]: {message}", path.join(".")))
            .1;
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn example_parses_and_validates_with_the_defaults_it_shows() {
        let example = Config::parse(EXAMPLE).unwrap();
        // Without the three Google token tables it switches on, it is the minimal file: every key
        // it shows holds its default.
        let mut bare = example.clone();
        assert_eq!(bare.token.jwt.len(), 1);
        assert!(bare.token.google_service_accounts.is_some() && bare.token.tokeninfo.is_some());
        bare.token.jwt.clear();
        bare.token.google_service_accounts = None;
        bare.token.tokeninfo = None;
        let minimal = Config::parse("[iam]\nproject = \"demo-project\"\n").unwrap();
        assert_eq!(format!("{bare:?}"), format!("{minimal:?}"));
        assert_eq!(
            format!("{:?}", example.token.google_service_accounts.unwrap()),
            format!("{:?}", crate::config::ServiceAccountsConfig::default())
        );
    }

    #[test]
    fn commented_keys_marked_default_hold_the_default() {
        let all: Config = toml::from_str(&uncommented()).unwrap();
        let mut backend = all.backend_auth.unwrap();
        backend.metadata_url = None;
        backend.key_file = None;
        assert_eq!(
            format!("{backend:?}"),
            format!("{:?}", BackendAuthConfig::new(BackendTokenSource::Metadata))
        );
        let tls: crate::config::TlsConfig =
            toml::from_str("cert_file = \"c\"\nkey_file = \"k\"\n").unwrap();
        assert_eq!(all.server.tls.unwrap().reload_interval, tls.reload_interval);
        assert_eq!(
            all.server.admin_tls.unwrap().reload_interval,
            tls.reload_interval
        );
        assert_eq!(tls.reload_interval, Duration::from_secs(10));
        let introspection: crate::config::IntrospectionConfig =
            toml::from_str("url = \"https://auth.example/introspect\"\n").unwrap();
        assert_eq!(
            all.token.introspection.unwrap().email_field,
            introspection.email_field
        );
        assert_eq!(all.routes.len(), 1);
        assert_eq!(all.iam.groups.len(), 1);
    }

    /// Every key the parser knows, in every table, is in the example, and nothing else is: a key
    /// added to the configuration without the example fails here.
    #[test]
    fn example_shows_every_key_the_parser_knows() {
        let document: toml::Table = toml::from_str(&uncommented()).unwrap();
        let mut paths = Vec::new();
        tables(&document, &mut Vec::new(), &mut paths);
        // The root, server, server.tls, server.admin_tls, iam, iam.groups, token and its five
        // tables, token.jwt.federation, authz, routes, backend_auth.
        assert_eq!(paths.len(), 16, "{paths:?}");
        let mut drift = Vec::new();
        for path in &paths {
            let mut probe = document.clone();
            let shown: BTreeSet<String> = table_at(&mut probe, path).keys().cloned().collect();
            let known = known_keys(&document, path);
            if shown != known {
                drift.push(format!(
                    "[{}]: missing from the example {:?}, unknown to the parser {:?}",
                    path.join("."),
                    known.difference(&shown).collect::<Vec<_>>(),
                    shown.difference(&known).collect::<Vec<_>>()
                ));
            }
        }
        assert!(drift.is_empty(), "{drift:#?}");
    }
}
