use tokio::sync::watch;

use super::{Instance, InstanceSet, Instances, Registry};
use crate::Error;

/// A fixed list of addresses, served for every service name (`static://host:port,...`).
/// Registration is accepted and ignored: nothing can change the list.
///
/// ```
/// use steadfast::registry::{Registry, StaticRegistry};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadfast::Error> {
/// let reg = StaticRegistry::parse("127.0.0.1:50051,127.0.0.1:50052")?;
/// let users = reg.watch("user-svc").await?;
/// assert_eq!(users.borrow().len(), 2);
/// assert!(StaticRegistry::parse("").is_err());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct StaticRegistry {
    addrs: Vec<String>,
}

impl StaticRegistry {
    /// Parses `host:port,host:port` (an `http://` or `https://` prefix is kept; plain
    /// `host:port` means `http://`).
    pub fn parse(list: &str) -> Result<Self, Error> {
        let addrs: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|a| {
                if a.contains("://") {
                    a.to_owned()
                } else {
                    format!("http://{a}")
                }
            })
            .collect();
        if addrs.is_empty() {
            return Err(Error::config(
                "registry",
                "static:// needs at least one host:port",
            ));
        }
        for (i, a) in addrs.iter().enumerate() {
            Instance::new("static", format!("static-{i}"), a.clone()).validate()?;
        }
        Ok(StaticRegistry { addrs })
    }
}

#[async_trait::async_trait]
impl Registry for StaticRegistry {
    async fn register(&self, instance: &Instance) -> Result<(), Error> {
        tracing::debug!(service = %instance.service, "static registry: registration ignored");
        Ok(())
    }

    async fn deregister(&self, _service: &str, _id: &str) -> Result<(), Error> {
        Ok(())
    }

    async fn watch(&self, service: &str) -> Result<Instances, Error> {
        let set: InstanceSet = self
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Instance::new(service, format!("static-{i}"), a.clone()))
            .collect();
        let (tx, rx) = watch::channel(set);
        // The list never changes: keep the sender alive as long as the receivers.
        tokio::spawn(async move { tx.closed().await });
        Ok(rx)
    }
}
