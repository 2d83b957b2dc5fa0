//! The registration that follows readiness, and the `registration` check that reports it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Inner, REGISTRATION_CHECK, redact};
use crate::registry::{Instance, RegistrationStatus, Registry};

impl Inner {
    /// Records whether the registration is in place.
    fn set_registration(&self, error: Option<String>) {
        crate::metrics::health_check(REGISTRATION_CHECK, Duration::ZERO, error.is_none());
        {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            let s = states.entry(REGISTRATION_CHECK.to_owned()).or_default();
            s.critical = true;
            s.checked_at = Some((SystemTime::now(), Instant::now()));
            s.healthy = error.is_none();
            s.ever_healthy |= s.healthy;
            s.error = error;
        }
        self.publish();
    }
}

/// Keeps the instance registered while the checks pass (and deregistered while they do
/// not), retrying with backoff until the registry agrees, and reports in the
/// `registration` check whether it is registered. One task applies every change in order,
/// so the registry ends in the state of the latest health, never of an older one.
pub(super) async fn follow(
    inner: std::sync::Weak<Inner>,
    mut ready: watch::Receiver<bool>,
    registry: Arc<dyn Registry>,
    instance: Instance,
) {
    let mut status = registry.status();
    let mut status_open = true;
    let mut backoff = Duration::from_millis(100);
    loop {
        let want = *ready.borrow_and_update();
        let apply = async {
            if want {
                registry.register(&instance).await
            } else {
                registry.deregister(&instance.service, &instance.id).await
            }
        };
        // A newer health state supersedes an update still waiting for the registry.
        let result = tokio::select! {
            r = apply => r,
            r = ready.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
        };
        let Some(this) = inner.upgrade() else { return };
        let error = match (&result, want) {
            (Err(e), true) => Some(redact(&e.to_string())),
            (Ok(()), true) => match &*status.borrow_and_update() {
                RegistrationStatus::Unregistered(why) => Some(redact(why)),
                RegistrationStatus::Registered => None,
            },
            // Not wanted: the failing check that made it so is the reason, not this one.
            (_, false) => None,
        };
        this.set_registration(error);
        drop(this);
        if let Err(e) = &result {
            tracing::warn!(service = %instance.service, id = %instance.id, registered = want,
                "updating the registration failed, retrying in {backoff:?}: {e}");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                r = ready.changed() => if r.is_err() { return },
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        }
        backoff = Duration::from_millis(100);
        tokio::select! {
            r = ready.changed() => if r.is_err() { return },
            r = status.changed(), if status_open => status_open = r.is_ok(),
        }
    }
}
