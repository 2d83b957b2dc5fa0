//! The server side's compositions: the runtime half of `#[traced]` (context, deadline,
//! span, metrics of each handled call), and the graceful shutdown that ties health and
//! registration together. It imports the feature modules; none of them imports it.

pub(crate) mod call;
pub(crate) mod stream;

use std::time::Duration;

use crate::health::Health;
use crate::registry::{Instance, Registry};

/// A graceful shutdown, in order: (1) health reports NOT_SERVING; (2) the registration
/// ends (for etcd the lease is revoked, so the keys vanish at once); (3) wait `drain` so
/// clients notice. Call it from the shutdown future of `serve_with_incoming_shutdown`, which
/// then (4) finishes the calls in flight, after which (5) the process exits.
pub async fn graceful_shutdown(
    health: Option<&Health>,
    registry: &dyn Registry,
    instance: &Instance,
    drain_for: Duration,
) {
    if let Some(health) = health {
        health.set_not_serving().await;
    }
    crate::registry::drain(registry, instance, drain_for).await;
}
