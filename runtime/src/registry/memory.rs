use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::watch;

use super::{Instance, Instances, Registry};
use crate::Error;

/// The publishing side of one service's live set.
type LiveSet = watch::Sender<Arc<[Instance]>>;

/// The embedded registry: in-process, no server. Every registry made by
/// [`MemoryRegistry::global`] (and `memory://`) shares one table, so services started in one
/// process find each other.
///
/// ```
/// use steadfast::registry::{Instance, MemoryRegistry, Registry};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadfast::Error> {
/// let reg = MemoryRegistry::new();
/// let mut users = reg.watch("user-svc").await?;
/// reg.register(&Instance::new("user-svc", "u1", "http://127.0.0.1:50051")).await?;
/// users.changed().await.unwrap();
/// assert_eq!(users.borrow()[0].id, "u1");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryRegistry {
    services: Arc<Mutex<HashMap<String, LiveSet>>>,
}

impl MemoryRegistry {
    /// A new, empty table.
    pub fn new() -> Self {
        MemoryRegistry::default()
    }

    /// The process-wide table.
    pub fn global() -> Self {
        static GLOBAL: OnceLock<MemoryRegistry> = OnceLock::new();
        GLOBAL.get_or_init(MemoryRegistry::new).clone()
    }

    fn with<R>(&self, service: &str, f: impl FnOnce(&LiveSet) -> R) -> R {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        let tx = map
            .entry(service.to_owned())
            .or_insert_with(|| watch::channel(Arc::from(Vec::new())).0);
        f(tx)
    }
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, instance: &Instance) -> Result<(), Error> {
        instance.validate()?;
        self.with(&instance.service, |tx| {
            tx.send_modify(|set| {
                let mut v: Vec<Instance> = set
                    .iter()
                    .filter(|i| i.id != instance.id)
                    .cloned()
                    .collect();
                v.push(instance.clone());
                v.sort_by(|a, b| a.id.cmp(&b.id));
                *set = v.into();
            })
        });
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), Error> {
        self.with(service, |tx| {
            tx.send_if_modified(|set| {
                let before = set.len();
                let v: Vec<Instance> = set.iter().filter(|i| i.id != id).cloned().collect();
                let changed = v.len() != before;
                if changed {
                    *set = v.into();
                }
                changed
            })
        });
        Ok(())
    }

    async fn watch(&self, service: &str) -> Result<Instances, Error> {
        Ok(self.with(service, |tx| tx.subscribe()))
    }
}
