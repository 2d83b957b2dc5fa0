// `#[traced]` on a tonic handler (inside #[async_trait]), an axum-style handler with headers,
// and plain async fns, with every option; generated code only names ::steadfast.
use tonic::{Request, Response, Status};

struct Svc;

#[tonic::async_trait]
trait Greeter: Send + Sync + 'static {
    async fn greet(&self, request: Request<String>) -> Result<Response<String>, Status>;
}

#[tonic::async_trait]
impl Greeter for Svc {
    #[steadfast::traced(level = "debug")]
    async fn greet(&self, request: Request<String>) -> Result<Response<String>, Status> {
        if request.get_ref().is_empty() {
            return Err(Status::invalid_argument("empty name"));
        }
        Ok(Response::new(format!("hello {}", request.into_inner())))
    }
}

#[steadfast::traced(name = "create_order", service = "gateway", skip(body))]
async fn http_handler(headers: http::HeaderMap, body: Vec<u8>) -> Result<String, String> {
    let _ = (headers, body);
    Ok("created".into())
}

#[steadfast::traced(fields(user.id = id, kind = %"plain", debug = ?Some(1), later))]
async fn plain(id: u64) -> u64 {
    tracing::Span::current().record("later", 2);
    if id == 0 {
        return 1; // an early return keeps its type
    }
    id * 2
}

#[steadfast::traced(level = "trace")]
async fn unit() {}

#[steadfast::traced(skip_all, fields(headers = ?steadfast::telemetry::redacted(&headers)))]
async fn with_headers(headers: http::HeaderMap, password: String) -> usize {
    headers.len() + password.len()
}

fn main() {
    let _ = (http_handler, plain, unit, with_headers);
    let _ = <Svc as Greeter>::greet;
}
