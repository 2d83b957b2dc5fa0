// A stand-in for a tonic-generated client: same constructor and method shapes.
#[derive(Clone)]
pub struct UserClient<T>(T);

impl<T> UserClient<T> {
    pub fn new(inner: T) -> Self {
        UserClient(inner)
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
    pub async fn get_user(
        &mut self,
        request: tonic::Request<u64>,
    ) -> Result<tonic::Response<String>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner().to_string()))
    }
    pub async fn create_user(
        &mut self,
        _request: tonic::Request<String>,
    ) -> Result<tonic::Response<u64>, tonic::Status> {
        Ok(tonic::Response::new(1))
    }
}
