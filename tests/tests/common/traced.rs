//! A user service whose handlers are `#[traced]`, as a steadfast service writes them.

use steadfast_examples::pb::user::user_service_server::UserService;
use steadfast_examples::pb::user::{
    CreateUserReply, CreateUserRequest, GetUserReply, GetUserRequest,
};
use tonic::{Request, Response, Status};

/// Answers `user-{id}`, NOT_FOUND for id 0; logs "looking up user" inside its span.
pub struct TracedUsers;

#[tonic::async_trait]
impl UserService for TracedUsers {
    #[steadfast::traced]
    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserReply>, Status> {
        let id = request.get_ref().id;
        tracing::info!(id, "looking up user");
        if id == 0 {
            return Err(Status::not_found("no user 0"));
        }
        Ok(Response::new(GetUserReply {
            id,
            name: format!("user-{id}"),
            served_by: "u1".into(),
        }))
    }

    #[steadfast::traced(skip(request))]
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserReply>, Status> {
        let _ = request;
        Err(Status::unimplemented("not used"))
    }

    /// Produces each user when the stream is polled (no task of its own), logging
    /// "producing user" with the trace id the current context has then.
    #[steadfast::traced]
    async fn list_users(
        &self,
        req: tonic::Request<steadfast_examples::pb::user::ListUsersRequest>,
    ) -> Result<tonic::Response<steadfast_examples::services::user::UserStream>, tonic::Status>
    {
        let req = req.into_inner();
        let interval = std::time::Duration::from_millis(u64::from(req.interval_ms));
        let last = req.from_id + u64::from(req.count);
        tracing::info!(count = req.count, "listing users");
        let users = futures_util::stream::unfold(req.from_id, move |id| async move {
            if id >= last {
                return None;
            }
            tokio::time::sleep(interval).await;
            let context_trace = steadfast::Context::current()
                .trace()
                .map(|t| t.trace_id().to_string());
            tracing::info!(id, context_trace, "producing user");
            let reply = GetUserReply {
                id,
                name: format!("user-{id}"),
                served_by: "traced".into(),
            };
            Some((Ok(reply), id + 1))
        });
        Ok(Response::new(Box::pin(users)))
    }
}
