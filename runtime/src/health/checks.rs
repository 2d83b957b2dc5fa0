//! Ready-made checks for what steadfast services really depend on.

use std::time::Duration;

use super::Check;
use crate::registry::EtcdRegistry;

/// Connects to `addr` (`host:port`) over TCP.
///
/// ```
/// let check = steadfast::health::tcp("127.0.0.1:5432");
/// # let _ = check;
/// ```
pub fn tcp(addr: impl Into<String>) -> Check {
    let addr = addr.into();
    Check::new(move || {
        let addr = addr.clone();
        async move {
            tokio::net::TcpStream::connect(&addr)
                .await
                .map(drop)
                .map_err(|e| format!("connect to {addr}: {e}"))
        }
    })
}

/// Asks a downstream's grpc.health.v1 service (`service`, or `""` for the whole server) and
/// requires SERVING. `url` is `http://host:port`.
pub fn grpc(url: impl Into<String>, service: impl Into<String>) -> Check {
    let (url, service) = (url.into(), service.into());
    Check::new(move || {
        let (url, service) = (url.clone(), service.clone());
        async move {
            let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| format!("{url}: {e}"))?
                .connect_timeout(Duration::from_secs(1));
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
            let status = client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.clone(),
                })
                .await
                .map_err(|s| format!("{url}: {}", s.message()))?
                .into_inner()
                .status;
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
                Ok(())
            } else {
                Err(format!("{url} reports `{service}` not serving"))
            }
        }
    })
}

/// Reads from the registry's etcd.
pub fn etcd(registry: &EtcdRegistry) -> Check {
    let registry = registry.clone();
    Check::new(move || {
        let registry = registry.clone();
        async move { registry.ping().await.map_err(|e| e.to_string()) }
    })
}
