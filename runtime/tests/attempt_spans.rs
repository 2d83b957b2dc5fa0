//! The span of each attempt carries its number. Alone in its test binary: a test that sets
//! a scoped subscriber shares `tracing`'s per-callsite interest cache with every other test
//! thread of the binary, and one running without a subscriber can disable the callsite.

use std::sync::{Arc, Mutex};

use steadfast::retry::{CallPolicy, RetryPolicy};
use tonic::Status;

/// Records the `rpc.grpc.attempt` field of every `grpc.attempt` span.
struct AttemptNumbers(Arc<Mutex<Vec<u64>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AttemptNumbers {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Number(Option<u64>);
        impl tracing::field::Visit for Number {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "rpc.grpc.attempt" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        if attrs.metadata().name() == "grpc.attempt" {
            let mut number = Number(None);
            attrs.record(&mut number);
            self.0.lock().unwrap().push(number.0.unwrap_or(0));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn each_attempt_span_carries_its_number() {
    use tower::{ServiceBuilder, ServiceExt};
    use tracing_subscriber::layer::SubscriberExt;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(AttemptNumbers(seen.clone())),
    );
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let policy = CallPolicy::new("svc", "Method").retry(Some(RetryPolicy::default()));
    let svc = ServiceBuilder::new()
        .layer(steadfast::retry::RetryLayer::new(Arc::new(policy)))
        .layer(steadfast::trace::PropagateMetadataLayer::new())
        .service_fn(move |_: tonic::Request<u32>| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                match n {
                    0 | 1 => Err(Status::unavailable("down")),
                    _ => Ok(tonic::Response::new(0u32)),
                }
            }
        });
    svc.oneshot(tonic::Request::new(7)).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);
}
