//! The etcd client, connected on first use. With auth, connecting means authenticating,
//! which needs etcd up: a process that starts before etcd connects once etcd answers.

use std::sync::Arc;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::OnceCell;

/// A handle on the etcd client, shared by the registry, its keeper and its watchers.
#[derive(Clone)]
pub(super) struct Conn {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    options: ConnectOptions,
    client: OnceCell<Client>,
}

impl Conn {
    pub(super) fn new(endpoints: Vec<String>, options: ConnectOptions) -> Conn {
        Conn {
            inner: Arc::new(Inner {
                endpoints,
                options,
                client: OnceCell::new(),
            }),
        }
    }

    /// The client; connects (and authenticates) first if that has not succeeded yet.
    pub(super) async fn get(&self) -> Result<Client, etcd_client::Error> {
        let inner = &self.inner;
        inner
            .client
            .get_or_try_init(|| Client::connect(&inner.endpoints, Some(inner.options.clone())))
            .await
            .cloned()
    }
}

/// Whether an error is etcd (or the way to it) being unavailable, rather than a refusal.
pub(super) fn is_unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}
