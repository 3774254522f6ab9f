//! Documentation and shipped configuration agree with the code: every TOML under `deploy/`, in
//! the READMEs and in `docs/` parses with verifyiam's own parser, and the role table in
//! `docs/admin-api.md` is the catalogue. Unknown keys and bad values included, so neither can
//! drift from the code. Every relative link between the pages names a file that exists and, with
//! an `#anchor`, a heading in it.

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
    let mut docs: Vec<String> = [
        "README.md",
        "deploy/README.md",
        "deploy/istio/README.md",
        "deploy/kubernetes/README.md",
    ]
    .map(String::from)
    .to_vec();
    docs.extend(docs_pages());
    for doc in &docs {
        let Ok(text) = std::fs::read_to_string(root().join(doc)) else {
            continue;
        };
        for (i, block) in toml_fences(&text).into_iter().enumerate() {
            // Fragments (no [iam] table) are excerpts, checked once merged with a minimal file.
            // Blocks naming TLS files are the production walkthrough's: tests/production.rs
            // parses them with real files in place.
            if block
                .lines()
                .any(|l| l.trim_start().starts_with("cert_file"))
            {
                assert_eq!(doc, "docs/production.md", "toml block {i} names TLS files");
                continue;
            }
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

/// Every Markdown page under `docs/`, relative to the crate root, in a stable order.
fn docs_pages() -> Vec<String> {
    let mut pages: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    pages
}

/// The permissions named (in backticks) on a role table row.
fn backticked(line: &str) -> std::collections::BTreeSet<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn role_catalogue_in_the_docs_matches_the_code() {
    let page = std::fs::read_to_string(root().join("docs/admin-api.md")).unwrap();
    for (role, _, permissions) in verifyiam::iam::roles::PREDEFINED {
        let row = page
            .lines()
            .find(|l| l.starts_with(&format!("| `{role}` |")))
            .unwrap_or_else(|| panic!("docs/admin-api.md has no row for {role}"));
        if *role == "roles/owner" {
            continue; // described, not listed: it holds everything
        }
        let mut named = backticked(row);
        named.remove(*role);
        let expected: std::collections::BTreeSet<String> =
            permissions.iter().map(|p| p.to_string()).collect();
        assert_eq!(named, expected, "docs/admin-api.md row for {role}");
    }
}

/// The lines of a Markdown text outside its code fences.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// A heading's anchor as GitHub writes it: lowercase, spaces to `-`, every other character that
/// is not alphanumeric, `-` or `_` dropped (link targets too: only a link's text counts).
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading.trim();
    while let Some(start) = rest.find("](") {
        text.push_str(&rest[..start]);
        rest = rest[start..].split_once(')').map_or("", |(_, after)| after);
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a Markdown text's headings define; a repeated heading gets `-1`, `-2`, … .
fn anchors(text: &str) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut out = std::collections::BTreeSet::new();
    for line in prose(text) {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links `[text](target)` in a Markdown text, outside code.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        // Inline code is not a link: drop the spans between backticks.
        let plain: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = plain.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.push(rest[..end].trim().to_owned());
            rest = &rest[end..];
        }
    }
    out
}

/// The READMEs under `deploy/`, relative to the crate root.
fn deploy_readmes(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(root().join(dir)).unwrap() {
        let entry = entry.unwrap();
        let path = dir.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            deploy_readmes(&path, out);
        } else if entry.file_name() == "README.md" {
            out.push(path.to_string_lossy().into_owned());
        }
    }
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let mut pages: Vec<String> = ["README.md", "ARCHITECTURE.md", "BENCHMARKS.md"]
        .map(String::from)
        .to_vec();
    pages.extend(docs_pages());
    deploy_readmes(Path::new("deploy"), &mut pages);
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text =
            std::fs::read_to_string(root().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() {
                root().join(page)
            } else {
                root().join(dir).join(file)
            };
            if !path.exists() {
                broken.push(format!("{page}: {target}: no such file"));
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(target_text) if file.is_empty() || file.ends_with(".md") => {
                    if !anchors(&target_text).contains(anchor) {
                        broken.push(format!("{page}: {target}: no heading with that anchor"));
                    }
                }
                _ => broken.push(format!(
                    "{page}: {target}: an anchor into a non-Markdown file"
                )),
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 50, "only {checked} relative links found");
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("TLS and mTLS"), "tls-and-mtls");
    assert_eq!(slug("What deploy/ holds"), "what-deploy-holds");
    assert_eq!(slug("google.iam.v1 over gRPC"), "googleiamv1-over-grpc");
    assert_eq!(slug("Management commands (CLI)"), "management-commands-cli");
    assert_eq!(slug("`server_tls` [x](y.md)"), "server_tls-x");
    let twice = anchors("# A\n## A\n```\n# not a heading\n```\n### A\n");
    assert_eq!(
        twice.into_iter().collect::<Vec<_>>(),
        ["a", "a-1", "a-2"].map(String::from)
    );
}

#[test]
fn configuration_page_quotes_the_complete_example_verbatim() {
    let page = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let example = verifyiam::config::EXAMPLE.trim_end();
    assert!(
        toml_fences(&page).iter().any(|f| f.trim_end() == example),
        "docs/configuration.md must quote `verifyiam config example` verbatim in a toml fence \
         under \"Complete example\"; paste src/config/example.toml there"
    );
}

/// Every page and shipped Envoy file a user copies from.
fn copied_from() -> Vec<String> {
    let mut pages = vec!["README.md".to_owned()];
    deploy_readmes(Path::new("deploy"), &mut pages);
    pages.extend(docs_pages());
    for entry in std::fs::read_dir(root().join("deploy/envoy")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") {
            pages.push(format!("deploy/envoy/{name}"));
        }
    }
    pages
}

/// `match: { prefix: /orders }` also matches `/orders-admin` and `/ordersX`, which would then
/// carry the orders deployment: every route example matches whole segments instead.
#[test]
fn no_envoy_route_example_matches_a_bare_prefix() {
    let mut seen = 0;
    for page in copied_from() {
        let text = std::fs::read_to_string(root().join(&page)).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap_or(line);
            if code.contains("match:") && code.contains("prefix") {
                seen += 1;
                assert!(
                    // `prefix: /` (everything) has no segment to run past.
                    code.contains("path_separated_prefix") || code.contains("prefix: / }"),
                    "{page}:{}: a route matched by a bare prefix: {line}",
                    n + 1
                );
            }
        }
    }
    assert!(seen > 0, "no route examples found");
}

/// The development issuer is documented as the code has it: its `iss` and where its key set is.
#[test]
fn the_dev_issuer_is_documented_as_served() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("`{}`", verifyiam::authn::dev::DEV_ISSUER)),
        "README names the dev issuer's iss"
    );
    assert!(readme.contains("http://127.0.0.1:9002/dev/jwks.json"));
    let config = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    assert!(config.contains("[token.dev]") && config.contains("/dev/jwks.json"));
    let backends = std::fs::read_to_string(root().join("docs/backends.md")).unwrap();
    assert!(
        backends.contains("needs a\n  `[token.dev]` table"),
        "source = \"dev\" says it needs [token.dev]"
    );
}
