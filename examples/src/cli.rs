//! The command-line contract shared by the example services.

use std::time::Duration;

/// Flags every example service takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Address for gRPC.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub grpc_addr: String,
    /// Address for /health and /metrics (and the gateway's API).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub http_addr: String,
    /// Registry: memory, static://host:port,.. or etcd://host:port,..
    #[arg(long, default_value = "memory://")]
    pub registry: String,
    /// etcd lease TTL.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub lease_ttl: Duration,
    /// Instance id, unique within the service.
    #[arg(long)]
    pub instance_id: Option<String>,
    /// How long to stay up after leaving discovery, so clients notice.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    pub drain: Duration,
}

/// Parses `250ms`, `3s` and the like.
pub fn duration(s: &str) -> Result<Duration, String> {
    steadfast::duration::parse(s)
}

impl Common {
    /// The registry URL, with the lease TTL applied to etcd.
    pub fn registry_url(&self) -> String {
        match self.registry.as_str() {
            "memory" => "memory://".to_owned(),
            r if r.starts_with("etcd://") && !r.contains("ttl=") => {
                let sep = if r.contains('?') { '&' } else { '?' };
                format!("{r}{sep}ttl={}s", self.lease_ttl.as_secs().max(1))
            }
            r => r.to_owned(),
        }
    }

    /// The instance id, or `{service}-{pid}`.
    pub fn id(&self, service: &str) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(|| format!("{service}-{}", std::process::id()))
    }

    /// Run options for `service`.
    pub fn options(&self, service: &str, grpc_service: &'static str) -> crate::run::Options {
        crate::run::Options {
            service: service.into(),
            id: self.id(service),
            grpc_addr: self.grpc_addr.clone(),
            http_addr: self.http_addr.clone(),
            drain: self.drain,
            grpc_service,
        }
    }
}
