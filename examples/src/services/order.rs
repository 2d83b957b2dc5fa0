//! order-svc: orders persisted in SQLite, each checked against user-svc through a resilient
//! client.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use tonic::{Code, Request, Response, Status};

use crate::pb::order::order_service_server::OrderService;
use crate::pb::order::{CreateOrderRequest, GetOrderRequest, Order};
use crate::pb::user::user_service_client::UserServiceClient;
use crate::pb::user::{GetUserReply, GetUserRequest};

/// user-svc as order-svc sees it.
#[steadfast::resilient_client(
    service = "user-svc",
    client = UserServiceClient,
    grpc_service = "user.UserService",
    timeout = "2s",
    retry(max_attempts = 3, initial_backoff = "20ms", max_backoff = "200ms",
          per_attempt_timeout = "250ms", on = [Unavailable]),
    breaker(min_failures = 5, failure_ratio = 0.5, window = "2s", open_timeout = "1s",
            half_open_max_calls = 4, half_open_successes = 2),
)]
pub trait Users {
    /// Looks a user up.
    async fn get_user(&self, req: GetUserRequest) -> Result<GetUserReply, Status>;
}

/// The order store: one SQLite file.
#[derive(Clone, Debug)]
pub struct Store {
    db: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (or creates) `orders.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Store, Box<dyn std::error::Error + Send + Sync>> {
        std::fs::create_dir_all(dir)?;
        let db = Connection::open(dir.join("orders.db"))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS orders (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 user_id INTEGER NOT NULL,
                 user_name TEXT NOT NULL,
                 item TEXT NOT NULL,
                 quantity INTEGER NOT NULL
             );",
        )?;
        Ok(Store {
            db: Arc::new(Mutex::new(db)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let conn = db.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| Status::internal(format!("database task failed: {e}")))?
        .map_err(|e| Status::internal(format!("database: {e}")))
    }

    /// A real query, for the health check.
    pub async fn ping(&self) -> Result<(), Status> {
        self.with(|c| c.query_row("SELECT count(*) FROM orders", [], |r| r.get::<_, i64>(0)))
            .await
            .map(drop)
    }
}

/// The order service.
#[derive(Clone, Debug)]
pub struct OrderSvc {
    store: Store,
    users: UsersClient,
}

impl OrderSvc {
    /// Orders in `store`, users from `users`.
    pub fn new(store: Store, users: UsersClient) -> Self {
        OrderSvc { store, users }
    }
}

#[tonic::async_trait]
impl OrderService for OrderSvc {
    #[steadfast::traced]
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let req = request.into_inner();
        if req.item.trim().is_empty() {
            return Err(Status::invalid_argument("item is empty"));
        }
        if req.quantity == 0 || req.quantity > 1000 {
            return Err(Status::invalid_argument("quantity must be in 1..=1000"));
        }
        let user = match self
            .users
            .get_user(GetUserRequest { id: req.user_id })
            .await
        {
            Ok(u) => u,
            Err(s) if s.code() == Code::NotFound => {
                return Err(Status::failed_precondition(format!(
                    "unknown user {}",
                    req.user_id
                )));
            }
            Err(s) => return Err(s),
        };
        let (uid, name, item, qty) = (
            req.user_id,
            user.name.clone(),
            req.item.clone(),
            req.quantity,
        );
        let id = self
            .store
            .with(move |c| {
                c.execute(
                    "INSERT INTO orders (user_id, user_name, item, quantity) VALUES (?1, ?2, ?3, ?4)",
                    params![uid as i64, name, item, qty],
                )?;
                Ok(c.last_insert_rowid())
            })
            .await?;
        tracing::info!(order_id = id, user = %user.name, "order created");
        Ok(Response::new(Order {
            id: id as u64,
            user_id: req.user_id,
            user_name: user.name,
            item: req.item,
            quantity: req.quantity,
        }))
    }

    #[steadfast::traced]
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let id = request.into_inner().id;
        let order = self
            .store
            .with(move |c| {
                c.query_row(
                    "SELECT id, user_id, user_name, item, quantity FROM orders WHERE id = ?1",
                    params![id as i64],
                    |r| {
                        Ok(Order {
                            id: r.get::<_, i64>(0)? as u64,
                            user_id: r.get::<_, i64>(1)? as u64,
                            user_name: r.get(2)?,
                            item: r.get(3)?,
                            quantity: r.get(4)?,
                        })
                    },
                )
                .optional()
            })
            .await?;
        order
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no order {id}")))
    }
}
