//! Documentation and shipped configuration agree with the code: every TOML under `deploy/` and in
//! the READMEs parses with verifyiam's own parser, and the README's role table is the catalogue.
//! Unknown keys and bad values included, so neither can drift from the code.

use std::path::Path;

use verifyiam::config::Config;

/// The TOML under a YAML block scalar `key: |`, dedented.
fn yaml_block(text: &str, key: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let header = lines.next()?;
    let outer = header.len() - header.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > outer)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()?;
    Some(
        body.iter()
            .map(|l| l.get(indent..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Every ```toml fence in a Markdown file.
fn toml_fences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(Vec::new()),
            (Some(_), l) if l.starts_with("```") => out.push(current.take().unwrap().join("\n")),
            (Some(body), _) => body.push(line),
            _ => {}
        }
    }
    out
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn configmap(path: &str) -> Config {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    let toml = yaml_block(&text, "verifyiam.toml").expect("configmap has verifyiam.toml");
    Config::parse(&toml).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn kubernetes_configmap_config_is_valid() {
    let config = configmap("deploy/kubernetes/configmap.yaml");
    assert_eq!(config.server.extauthz_addr.port(), 9001);
    assert_eq!(config.server.admin_addr.port(), 9002);
    assert_eq!(config.authz.mode, verifyiam::config::AuthzMode::Local);
}

#[test]
fn replicated_overlay_config_is_valid_and_uses_the_postgres_store() {
    let config = configmap("deploy/kubernetes-overlays/replicated/configmap.yaml");
    assert_eq!(config.authz.mode, verifyiam::config::AuthzMode::Local);
    assert!(verifyiam::store::PgUrl::is_postgres(
        &config.iam.store.to_string_lossy()
    ));
    assert_eq!(config.server.extauthz_addr.port(), 9001);
}

#[test]
fn every_complete_toml_example_in_the_docs_is_valid() {
    let mut checked = 0;
    for doc in [
        "README.md",
        "deploy/README.md",
        "deploy/istio/README.md",
        "deploy/kubernetes/README.md",
    ] {
        let Ok(text) = std::fs::read_to_string(root().join(doc)) else {
            continue;
        };
        for (i, block) in toml_fences(&text).into_iter().enumerate() {
            // Fragments (no [iam] table) are excerpts, checked once merged with a minimal file.
            let whole = if block.contains("[iam]") {
                block.clone()
            } else {
                format!("[iam]\nproject = \"p\"\n{block}")
            };
            Config::parse(&whole).unwrap_or_else(|e| panic!("{doc}, toml block {i}: {e}\n{block}"));
            checked += 1;
        }
    }
    assert!(checked > 0, "no toml examples found");
}

/// The permissions named (in backticks) on a README table row.
fn backticked(line: &str) -> std::collections::BTreeSet<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_role_catalogue_matches_the_code() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for (role, _, permissions) in verifyiam::iam::roles::PREDEFINED {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{role}` |")))
            .unwrap_or_else(|| panic!("README has no row for {role}"));
        if *role == "roles/owner" {
            continue; // described, not listed: it holds everything
        }
        let mut named = backticked(row);
        named.remove(*role);
        let expected: std::collections::BTreeSet<String> =
            permissions.iter().map(|p| p.to_string()).collect();
        assert_eq!(named, expected, "README row for {role}");
    }
}
