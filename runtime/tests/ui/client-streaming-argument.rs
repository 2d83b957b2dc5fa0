use tonic::Status;

#[steadfast::resilient_client(service = "user-svc", client = Fake)]
trait Uploads {
    async fn upload(
        &self,
        users: impl futures_util::Stream<Item = String> + Send + 'static,
    ) -> Result<u64, Status>;
    async fn chat(
        &self,
        lines: tonic::Request<tonic::Streaming<String>>,
    ) -> Result<tonic::Streaming<String>, Status>;
    async fn sync(
        &self,
        lines: std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>,
    ) -> Result<u64, Status>;
}

fn main() {}
