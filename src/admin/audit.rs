//! The audit log: one structured event on [`AUDIT_TARGET`] per admin write that changed
//! something — who did what to which resource, the etags before and after, and the pairs granted
//! and taken away. The shared write step (`operation`) logs it once the write is durable; each
//! operation only says what it changed ([`Change`]).

use serde::Serialize;

use crate::authn::Principal;
use crate::iam::policy::Etag;

/// The audit log target.
pub const AUDIT_TARGET: &str = "verifyiam::audit";

/// One admin write, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// The caller's principal id.
    pub caller: String,
    /// What was done (`setIamPolicy`, `deploy`, `undeploy`, `createRole`, `addMember`, …).
    pub action: &'static str,
    /// The resource written.
    pub resource: String,
    /// The etag before the write (empty when there was nothing).
    pub old_etag: String,
    /// The etag after the write (empty when the record is gone).
    pub new_etag: String,
    /// Pairs granted by the write: `(role, member)` for policies, `(role, permission)` for
    /// roles, `(group, member)` for groups.
    pub added: Vec<(String, String)>,
    /// Pairs taken away by the write, in the same form.
    pub removed: Vec<(String, String)>,
}

impl AuditEvent {
    /// The event of `caller`'s `action` that made `change`.
    pub fn new(caller: &Principal, action: &'static str, change: Change) -> AuditEvent {
        AuditEvent {
            caller: caller.id.to_string(),
            action,
            resource: change.resource,
            old_etag: change.old_etag,
            new_etag: change.new_etag,
            added: change.added,
            removed: change.removed,
        }
    }

    /// Logs the event as one structured event on [`AUDIT_TARGET`].
    pub fn log(&self) {
        let pairs = |p: &[(String, String)]| serde_json::to_string(p).unwrap_or_default();
        tracing::info!(
            target: AUDIT_TARGET,
            // Escaped, so a caller id can never forge a line of a text log.
            caller = %self.caller.escape_debug(),
            action = self.action,
            resource = %self.resource,
            old_etag = %self.old_etag,
            new_etag = %self.new_etag,
            added = %pairs(&self.added),
            removed = %pairs(&self.removed),
            "admin write"
        );
    }
}

/// An etag as the audit log shows it (empty when there is none).
pub(super) fn etag_text(e: Option<&Etag>) -> String {
    e.map(ToString::to_string).unwrap_or_default()
}

/// What one write changed, as its [`AuditEvent`] records it; the operation that wrote it adds
/// the caller and the action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The resource written.
    pub resource: String,
    /// The etag before the write (empty when there was nothing).
    pub old_etag: String,
    /// The etag after the write (empty when the record is gone).
    pub new_etag: String,
    /// Pairs granted by the write (see [`AuditEvent::added`]).
    pub added: Vec<(String, String)>,
    /// Pairs taken away by the write.
    pub removed: Vec<(String, String)>,
}

/// Test support: the audit events a piece of code logs.
#[cfg(test)]
pub(crate) mod capture {
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::{Context, SubscriberExt as _};

    /// One event's fields, as text.
    pub(crate) type Fields = Vec<(String, String)>;

    /// Records every event's target and fields.
    struct Capture(Arc<Mutex<Vec<(String, Fields)>>>);

    struct Visitor(Fields);

    impl tracing::field::Visit for Visitor {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut fields = Visitor(Vec::new());
            event.record(&mut fields);
            if let Ok(mut events) = self.0.lock() {
                events.push((event.metadata().target().to_owned(), fields.0));
            }
        }
    }

    /// Runs `f` and returns its result with the fields of every event it logged on
    /// [`super::AUDIT_TARGET`], and how many events it logged in all.
    pub(crate) fn audit_events<T>(f: impl FnOnce() -> T) -> (T, Vec<Fields>, usize) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(events.clone()));
        let out = tracing::subscriber::with_default(subscriber, f);
        let events = std::mem::take(&mut *events.lock().unwrap());
        let all = events.len();
        let audit = events
            .into_iter()
            .filter(|(target, _)| target == super::AUDIT_TARGET)
            .map(|(_, fields)| fields)
            .collect();
        (out, audit, all)
    }

    /// The value of the field `name`; panics naming it when there is none.
    pub(crate) fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no field {name}: {fields:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::capture::{audit_events, field};
    use super::*;
    use crate::iam::policy::{Policy, binding_changes};

    #[test]
    fn audit_event_is_one_structured_event_on_the_audit_target() {
        let old = Policy {
            bindings: vec![crate::iam::policy::Binding {
                role: "roles/apigee.deploymentInvoker".into(),
                members: vec!["user:a@example.com".into()],
                condition: None,
            }],
            etag: Some(Etag::from_version(1)),
            ..Policy::default()
        };
        let new = Policy {
            bindings: vec![crate::iam::policy::Binding {
                role: "roles/apigee.deploymentInvoker".into(),
                members: vec!["user:b@example.com".into()],
                condition: None,
            }],
            etag: Some(Etag::from_version(2)),
            ..Policy::default()
        };
        let (added, removed) = binding_changes(&old, &new);
        let ((), events, all) = audit_events(|| {
            AuditEvent {
                caller: "ops@example.com".into(),
                action: "setIamPolicy",
                resource: "projects/p".into(),
                old_etag: etag_text(old.etag.as_ref()),
                new_etag: etag_text(new.etag.as_ref()),
                added,
                removed,
            }
            .log();
        });
        assert_eq!(all, 1, "one event in all");
        assert_eq!(events.len(), 1, "on the audit target");
        let field = |name: &str| field(&events[0], name);
        assert_eq!(field("caller"), "ops@example.com");
        assert_eq!(field("action"), "setIamPolicy");
        assert_eq!(field("resource"), "projects/p");
        assert_eq!(field("old_etag"), Etag::from_version(1).to_string());
        assert_eq!(field("new_etag"), Etag::from_version(2).to_string());
        assert_eq!(
            field("added"),
            r#"[["roles/apigee.deploymentInvoker","user:b@example.com"]]"#
        );
        assert_eq!(
            field("removed"),
            r#"[["roles/apigee.deploymentInvoker","user:a@example.com"]]"#
        );
    }
}
