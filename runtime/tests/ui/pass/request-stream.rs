// Client and bidirectional streaming: a stream of requests is written as
// `impl Stream<Item = M> + Send + 'static`, alone or in `tonic::Request<..>`, in plain and
// `#[async_trait]` traits.
use futures_util::Stream;
use tonic::Status;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Item {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

// A stand-in for a tonic-generated client with a client-streaming and a bidi method.
#[derive(Clone)]
pub struct FakeItems<T>(T);

impl<T> FakeItems<T> {
    pub fn new(inner: T) -> Self {
        FakeItems(inner)
    }
    pub fn send_compressed(self, _: tonic::codec::CompressionEncoding) -> Self {
        self
    }
    pub fn accept_compressed(self, _: tonic::codec::CompressionEncoding) -> Self {
        self
    }
    pub fn max_decoding_message_size(self, _: usize) -> Self {
        self
    }
    pub fn max_encoding_message_size(self, _: usize) -> Self {
        self
    }
    pub async fn upload(
        &mut self,
        request: impl tonic::IntoStreamingRequest<Message = Item>,
    ) -> Result<tonic::Response<u64>, Status> {
        let _ = request.into_streaming_request();
        Ok(tonic::Response::new(0))
    }
    pub async fn chat(
        &mut self,
        request: impl tonic::IntoStreamingRequest<Message = Item>,
    ) -> Result<tonic::Response<tonic::Streaming<Item>>, Status> {
        let _ = request.into_streaming_request();
        Err(Status::unimplemented("fake"))
    }
}

#[steadfast::resilient_client(service = "items", client = FakeItems)]
trait Items {
    async fn upload(&self, items: impl Stream<Item = Item> + Send + 'static) -> Result<u64, Status>;
    async fn chat(
        &self,
        items: tonic::Request<impl Stream<Item = Item> + Send + 'static>,
    ) -> Result<tonic::Streaming<Item>, Status>;
}

#[steadfast::resilient_client(service = "items", client = FakeItems)]
#[async_trait::async_trait]
trait AsyncItems: Send + Sync {
    async fn upload(&self, items: impl Stream<Item = Item> + Send + 'static) -> Result<u64, Status>;
}

// The futures of the concrete client are Send + 'static: they can be spawned.
fn spawn_both(items: &ItemsClient) {
    let _ = tokio::spawn(items.upload(futures_util::stream::iter(vec![Item { id: 1 }])));
    let _ = tokio::spawn(items.chat(tonic::Request::new(futures_util::stream::empty())));
}

// The async_trait form works through generics (a method taking `impl Stream` is generic).
async fn upload_with<I: AsyncItems>(items: &I) -> Result<u64, Status> {
    items.upload(futures_util::stream::iter(vec![Item { id: 1 }])).await
}

fn main() {
    let _ = spawn_both;
    let _ = upload_with::<AsyncItemsClient>;
}
