//! The command-line contract shared by the example services, and how they report a bad
//! flag: one sentence naming the flag and its value, never Rust's `Debug`.

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

/// The error type of the example binaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Flags every example service takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Address for gRPC.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub grpc_addr: String,
    /// Address for /health and /metrics (and the gateway's API).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub http_addr: String,
    /// Registry: memory, static://host:port,.., etcd://host:port,.. or nacos://host:8848,..
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
    /// How long an HTTP client may take to send a request's head before it is cut off.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub http_header_timeout: Duration,
}

/// `{flag} `{value}`: {error}`, the one sentence a bad flag is reported as.
///
/// ```
/// let e = steadfast_examples::cli::flag_error("--grpc-addr", "999.1.1.1:1", "invalid address");
/// assert_eq!(e.to_string(), "--grpc-addr `999.1.1.1:1`: invalid address");
/// ```
pub fn flag_error(flag: &str, value: impl Display, error: impl Display) -> BoxError {
    format!("{flag} `{value}`: {error}").into()
}

/// A registry URL fit for a message: no `user:password@`, no `password=` value.
///
/// ```
/// let url = "etcd://h:2379?user=app&password=s3cret&ttl=5s";
/// assert_eq!(steadfast_examples::cli::redact_url(url), "etcd://h:2379?user=app&password=***&ttl=5s");
/// ```
pub fn redact_url(url: &str) -> String {
    let url = steadfast::health::redact(url);
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Ends a binary: prints `{name}: {error}` on stderr and exits with status 1 on an error.
pub fn exit(name: &str, result: Result<(), BoxError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
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

    /// The registry named by `--registry` (and `--lease-ttl`).
    pub async fn registry(
        &self,
    ) -> Result<std::sync::Arc<dyn steadfast::registry::Registry>, BoxError> {
        let url = self.registry_url();
        steadfast::registry::from_url(&url)
            .await
            .map_err(|e| match e {
                // The TTL came from --lease-ttl, not from the URL.
                steadfast::Error::Config {
                    field: "registry.etcd.ttl",
                    reason,
                } if !self.registry.contains("ttl=") => {
                    flag_error("--lease-ttl", format!("{:?}", self.lease_ttl), reason)
                }
                e => flag_error("--registry", redact_url(&self.registry), e),
            })
    }

    /// Run options for `service`.
    pub fn options(&self, service: &str, grpc_service: &'static str) -> crate::run::Options {
        crate::run::Options {
            service: service.into(),
            id: self.id(service),
            grpc_addr: self.grpc_addr.clone(),
            http_addr: self.http_addr.clone(),
            drain: self.drain,
            header_timeout: self.http_header_timeout,
            grpc_service,
        }
    }
}
