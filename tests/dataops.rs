//! Data operations through the `verifyiam store` commands against real stores: an export and
//! its import keep every kind of record and its etag (a client's read-modify-write goes on
//! working), importing twice changes nothing, `--dry-run` and `--replace`, and a truncated or
//! malformed file is refused with its line number and nothing written. Compiled again as
//! `dataops_postgres` for the PostgreSQL store.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_verifyiam");
const ALICE: &str = "alice@example.com";

fn dep(api: &str, verb: &str) -> String {
    format!("/v1/organizations/{PROJECT}/environments/prod/deployments/{api}{verb}")
}

fn revision(api: &str, rev: &str) -> String {
    format!("/v1/organizations/{PROJECT}/environments/prod/apis/{api}/revisions/{rev}/deployments")
}

/// A configuration file naming `store`, in `dir`.
fn config_file(dir: &Path, store: &str) -> PathBuf {
    let path = dir.join(format!(
        "verifyiam-{}.toml",
        dir.read_dir().unwrap().count()
    ));
    std::fs::write(
        &path,
        format!(
            "[iam]\nproject = \"{PROJECT}\"\nstore = \"{store}\"\nbootstrap_admins = [\"user:{ADMIN}\"]\n"
        ),
    )
    .unwrap();
    path
}

/// Runs `verifyiam store …`: exit code, standard output, standard error.
async fn store_cli(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(BIN)
        .arg("store")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes one record of every kind through the admin API: a project policy, a deployed API
/// with its policy, an undeployed one, a custom role bound in a policy, a group.
async fn fill(s: &Server) {
    let admin = token(ADMIN);
    let ok = |(st, v): (u16, Value)| assert_eq!(st, 200, "{v}");
    ok(
        s.call(Method::POST, &revision("orders", "1"), Some(&admin), None)
            .await,
    );
    ok(
        s.call(Method::POST, &revision("old", "1"), Some(&admin), None)
            .await,
    );
    ok(
        s.call(Method::DELETE, &revision("old", "1"), Some(&admin), None)
            .await,
    );
    ok(s.post(
        &format!("/v1/projects/{PROJECT}/roles"),
        Some(&admin),
        &json!({"roleId": "apiCaller", "role": {"title": "API caller",
                "includedPermissions": ["apigee.deployments.invoke"], "stage": "GA"}})
        .to_string(),
    )
    .await);
    ok(s.post(
        "/v1/groups/ops-team@example.com:addMember",
        Some(&admin),
        &json!({"member": "user:carol@example.com"}).to_string(),
    )
    .await);
    let role = format!("projects/{PROJECT}/roles/apiCaller");
    ok(s.post(
        &dep("orders", ":setIamPolicy"),
        Some(&admin),
        &json!({"policy": {"bindings": [
            {"role": INVOKER, "members": [format!("user:{ALICE}")]},
            {"role": role, "members": ["group:ops-team@example.com"]}]}})
        .to_string(),
    )
    .await);
    ok(s.post(
        &format!("/v1/projects/{PROJECT}:setIamPolicy"),
        Some(&admin),
        &json!({"policy": {"bindings": [{"role": "roles/viewer", "members": ["user:bob@example.com"]}]}})
            .to_string(),
    )
    .await);
}

async fn get_policy(s: &Server, api: &str) -> Value {
    let (st, v) = s
        .post(&dep(api, ":getIamPolicy"), Some(&token(ADMIN)), "{}")
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

/// Runs `store import` of `file` into the store of `config`, with `flags` before the file.
async fn store_import(config: &Path, flags: &[&str], file: &Path) -> (i32, String, String) {
    let mut args = vec!["import", "--config", config.to_str().unwrap()];
    args.extend_from_slice(flags);
    args.push(file.to_str().unwrap());
    store_cli(&args).await
}

/// Exports the store of `config` to a file in `dir`; its text.
async fn export(dir: &Path, config: &Path, name: &str) -> String {
    let file = dir.join(name);
    let (code, out, err) = store_cli(&[
        "export",
        "--config",
        config.to_str().unwrap(),
        "--output",
        file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    std::fs::read_to_string(file).unwrap()
}

/// The record lines of an export (everything but the header).
fn records(export: &str) -> Vec<&str> {
    export.lines().skip(1).collect()
}

/// A store holding one record of every kind (its server stopped), and its configuration.
async fn filled(dir: &Path) -> (Arc<TestStore>, PathBuf, Value) {
    let s = Server::start().await;
    fill(&s).await;
    let policy = get_policy(&s, "orders").await;
    let store = s.stop().await;
    let config = config_file(dir, &store.location());
    (store, config, policy)
}

#[tokio::test]
async fn an_export_imported_keeps_every_record_and_etag_and_twice_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_source, source_config, policy) = filled(dir.path()).await;
    let text = export(dir.path(), &source_config, "a.jsonl").await;
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["format"], "verifyiam-export", "{header}");
    assert_eq!(header["version"], 1);
    assert!(header["revision"].as_u64().unwrap() >= 7, "{header}");
    let lines = records(&text);
    assert_eq!(header["records"], lines.len());
    for kind in ["policy", "deployment", "role", "group"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{{\"kind\":\"{kind}\""))),
            "no {kind} in {text}"
        );
    }
    assert!(
        text.contains(r#""deployed":false"#),
        "the undeployed API: {text}"
    );
    // A second export of the same state is the same bytes.
    assert_eq!(
        export(dir.path(), &source_config, "again.jsonl").await,
        text
    );

    let target = Arc::new(TestStore::for_suite().await);
    let target_config = config_file(dir.path(), &target.location());
    let file = dir.path().join("a.jsonl");
    let import = [
        "import",
        "--config",
        target_config.to_str().unwrap(),
        file.to_str().unwrap(),
    ];
    let (code, out, err) = store_cli(&import).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("imported: {} changes", lines.len())),
        "{out}"
    );
    assert!(err.contains("store import"), "the import is audited: {err}");
    let (code, out, err) = store_cli(&import).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to change"), "{out}");
    let copied = export(dir.path(), &target_config, "b.jsonl").await;
    assert_eq!(
        records(&copied),
        lines,
        "the import holds every record as exported"
    );

    // The etag a client read before the move is still good after it, exactly once.
    let s = Server::start_with(Options {
        store: Some(target),
        ..Default::default()
    })
    .await;
    assert_eq!(get_policy(&s, "orders").await, policy);
    let as_alice = format!("Bearer {}", token(ALICE));
    assert!(s.check(Some(&as_alice), "prod", "orders").await.allowed());
    assert!(!s.check(Some(&as_alice), "prod", "old").await.allowed());
    let set = |etag: &Value| {
        json!({"policy": {"bindings": [{"role": INVOKER, "members": ["user:dave@example.com"]}],
                "etag": etag}})
        .to_string()
    };
    let (st, v) = s
        .post(
            &dep("orders", ":setIamPolicy"),
            Some(&token(ADMIN)),
            &set(&policy["etag"]),
        )
        .await;
    assert_eq!(
        st, 200,
        "read-modify-write with the etag read before the move: {v}"
    );
    let (st, v) = s
        .post(
            &dep("orders", ":setIamPolicy"),
            Some(&token(ADMIN)),
            &set(&policy["etag"]),
        )
        .await;
    assert_eq!(st, 409, "the same etag spent twice: {v}");
    s.stop().await;
}

#[tokio::test]
async fn a_truncated_or_malformed_export_is_refused_with_its_line_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (_source, source_config, _) = filled(dir.path()).await;
    let text = export(dir.path(), &source_config, "a.jsonl").await;
    let lines: Vec<&str> = text.lines().collect();

    // The target holds a record of its own, to show nothing of the file was written.
    let s = Server::start().await;
    s.grant_project("user:erin@example.com", "roles/viewer")
        .await;
    let target = s.stop().await;
    let target_config = config_file(dir.path(), &target.location());
    let before = export(dir.path(), &target_config, "before.jsonl").await;

    let cut_mid_line = &text[..text.len() - 10];
    let last_line_missing: String = lines[..lines.len() - 1]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let mut bad_middle: Vec<String> = lines.iter().map(|l| format!("{l}\n")).collect();
    bad_middle[2] = "{\"kind\":\"policy\",\"name\":\n".into();
    let mut bad_member: Vec<String> = lines.iter().map(|l| format!("{l}\n")).collect();
    let policy_line = lines
        .iter()
        .position(|l| l.contains("user:bob@example.com"))
        .unwrap();
    bad_member[policy_line] = lines[policy_line].replace("user:bob@example.com", "bob") + "\n";
    let cases: Vec<(&str, String, String)> = vec![
        (
            "cut mid-line",
            cut_mid_line.to_owned(),
            format!("line {}", lines.len()),
        ),
        ("last line missing", last_line_missing, "truncated".into()),
        ("a broken line", bad_middle.concat(), "line 3:".into()),
        (
            "an invalid member",
            bad_member.concat(),
            format!("line {}:", policy_line + 1),
        ),
        ("no header", lines[1..].join("\n") + "\n", "line 1:".into()),
        ("empty", String::new(), "line 1:".into()),
    ];
    for (what, content, says) in cases {
        let file = dir.path().join("bad.jsonl");
        std::fs::write(&file, &content).unwrap();
        for mode in [&[][..], &["--replace"][..]] {
            let (code, out, err) = store_import(&target_config, mode, &file).await;
            assert_eq!(code, 2, "{what} {mode:?}: {out}{err}");
            assert!(err.contains(&says), "{what}: should say {says:?}: {err}");
        }
        assert_eq!(
            export(dir.path(), &target_config, "after.jsonl").await,
            before,
            "{what}: the store changed"
        );
    }

    // A good file into a store that holds something else: refused without --replace.
    let good = dir.path().join("a.jsonl");
    let (code, out, err) = store_import(&target_config, &[], &good).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.contains("not empty") && err.contains("--replace"),
        "{err}"
    );
    // --dry-run says what --replace would do and writes nothing.
    let (code, out, err) = store_import(&target_config, &["--replace", "--dry-run"], &good).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("change policy projects/{PROJECT}")),
        "{out}"
    );
    assert!(out.contains("add role") && out.contains("dry run"), "{out}");
    assert_eq!(
        export(dir.path(), &target_config, "after.jsonl").await,
        before
    );
    // --replace makes the store hold the file's records and nothing else.
    let (code, out, err) = store_import(&target_config, &["--replace"], &good).await;
    assert_eq!(code, 0, "{out}{err}");
    let replaced = export(dir.path(), &target_config, "after.jsonl").await;
    assert_eq!(records(&replaced), records(&text));
    assert!(!replaced.contains("erin@example.com"), "{replaced}");
}

#[tokio::test]
async fn store_copy_verifies_counts_and_etags() {
    let dir = tempfile::tempdir().unwrap();
    let (_source, source_config, policy) = filled(dir.path()).await;
    let text = export(dir.path(), &source_config, "a.jsonl").await;
    let target = Arc::new(TestStore::for_suite().await);
    let to = target.location();
    let copy = [
        "copy",
        "--from",
        source_config.to_str().unwrap(),
        "--to",
        &to,
    ];
    let (code, out, err) = store_cli(&copy).await;
    assert_eq!(code, 0, "{out}{err}");
    let n = records(&text).len();
    assert!(
        out.contains(&format!("verified: {n} records, etags equal")),
        "{out}"
    );
    let target_config = config_file(dir.path(), &target.location());
    assert_eq!(
        records(&export(dir.path(), &target_config, "b.jsonl").await),
        records(&text)
    );
    // Copying again finds the same records: nothing to do, still verified.
    let (code, out, err) = store_cli(&copy).await;
    assert_eq!(code, 0, "{out}{err}");
    let s = Server::start_with(Options {
        store: Some(target),
        ..Default::default()
    })
    .await;
    assert_eq!(get_policy(&s, "orders").await, policy);
    s.stop().await;
    // A store given as --from needs the configuration that names its project.
    let (code, _, err) = store_cli(&[
        "copy",
        "--from",
        &dir.path().join("nowhere").display().to_string(),
        "--to",
        "/tmp/x",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--config"), "{err}");
}
