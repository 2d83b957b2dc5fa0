use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake)]
trait Uploads {
    // Not `Send + 'static`: the stream outlives the call and moves to another task.
    async fn upload(
        &self,
        users: impl futures_util::Stream<Item = String>,
    ) -> Result<u64, Status>;
    // A received stream, not one to send.
    async fn chat(
        &self,
        lines: tonic::Request<tonic::Streaming<String>>,
    ) -> Result<tonic::Streaming<String>, Status>;
    // A boxed stream type instead of `impl Stream`.
    async fn sync(
        &self,
        lines: std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>,
    ) -> Result<u64, Status>;
    // Results instead of messages.
    async fn import(
        &self,
        lines: impl futures_util::Stream<Item = Result<String, Status>> + Send + 'static,
    ) -> Result<u64, Status>;
    // Only `Send`.
    async fn count(
        &self,
        lines: impl futures_util::Stream<Item = String> + Send,
    ) -> Result<u64, Status>;
}

fn main() {}
