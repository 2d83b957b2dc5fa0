//! Highly available gRPC clients and servers by annotation.
//!
//! `steadfast` turns a trait that describes a downstream gRPC service into a client in which
//! every call has a deadline, gRFC A6 retries (backoff with jitter, server pushback, retry
//! throttling), a circuit breaker shared per downstream service, and deadline propagation
//! across hops, with no hand-written middleware. Users
//! depend on `steadfast` alone: the macros are re-exported here.
//!
//! # The client macro
//!
//! ```
//! # mod pb { pub mod user_client {
//! #     #[derive(Clone)] pub struct UserClient<T>(T);
//! #     impl<T> UserClient<T> {
//! #         pub fn new(t: T) -> Self { UserClient(t) }
//! #         pub fn send_compressed(self, _: tonic::codec::CompressionEncoding) -> Self { self }
//! #         pub fn accept_compressed(self, _: tonic::codec::CompressionEncoding) -> Self { self }
//! #         pub fn max_decoding_message_size(self, _: usize) -> Self { self }
//! #         pub fn max_encoding_message_size(self, _: usize) -> Self { self }
//! #         pub async fn get_user(&mut self, r: tonic::Request<u64>)
//! #             -> Result<tonic::Response<String>, tonic::Status> { Ok(tonic::Response::new(r.into_inner().to_string())) }
//! #         pub async fn create_user(&mut self, r: tonic::Request<String>)
//! #             -> Result<tonic::Response<u64>, tonic::Status> { Ok(tonic::Response::new(1)) }
//! #     }
//! # } }
//! #[steadfast::resilient_client(
//!     service = "user-svc",
//!     client = pb::user_client::UserClient,   // the tonic-generated client
//!     timeout = "1s",                          // overall deadline per call, attempts included
//!     retry(max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0,
//!           per_attempt_timeout = "300ms", on = [Unavailable, ResourceExhausted]),
//! )]
//! pub trait Users {
//!     async fn get_user(&self, id: u64) -> Result<String, tonic::Status>;
//!     #[no_retry] // not idempotent
//!     async fn create_user(&self, name: String) -> Result<u64, tonic::Status>;
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use steadfast::client::ClientConfig;
//! // The macro generates `UsersClient`, which implements `Users`.
//! let users = UsersClient::connect(ClientConfig::endpoints(["http://127.0.0.1:50051"])?).await?;
//! let name = users.get_user(7).await?;
//! # Ok(()) }
//! ```
//!
//! Mistakes are compile errors that point at the offending token and say what to write
//! instead. Here `max_attempts` is outside gRFC A6's 2..=5:
//!
//! ```compile_fail
//! #[steadfast::resilient_client(service = "user-svc", client = Fake, retry(max_attempts = 9))]
//! trait Users {
//!     async fn get_user(&self, id: u64) -> Result<String, tonic::Status>;
//! }
//! ```
//!
//! The per-method attributes `#[no_retry]`, `#[retry(...)]` and `#[timeout = "..."]` only
//! mean something inside such a trait; elsewhere they are errors:
//!
//! ```compile_fail
//! #[steadfast::no_retry]
//! async fn create_user() {}
//! ```
//!
//! Supported trait forms: native `async fn` methods (the trait is rewritten so each returns
//! `impl Future + Send`), and `#[async_trait]` traits when `#[resilient_client]` is written
//! above `#[async_trait]`. Each method takes `&self` and the request message (`req: M`), or a
//! `tonic::Request<M>` when the call needs metadata (an auth token, a tenant id) or
//! extensions, and returns `Result<Reply, tonic::Status>`. The request's metadata is sent on
//! every attempt. [`client::ClientConfig::interceptor`] adds metadata to every call of a
//! client instead; [`client::ClientConfig::transport`] takes any tower service (your own
//! tonic `Channel`) as the transport; compression and message size limits are set there too.
//!
//! Attribute keys: `service` (required), `client` (required), `timeout` (default `"10s"`),
//! `grpc_service` (the proto service name, for service config matching), `retry(...)`
//! (`max_attempts` 2..=5, default 3; `initial_backoff` `"100ms"`; `max_backoff` `"1s"`;
//! `multiplier` 2.0; `per_attempt_timeout`, default none; `on`, default `[Unavailable]`) and
//! `throttle(max_tokens = 10, token_ratio = 0.1)`, and `breaker(...)` (`min_failures` 4,
//! `failure_ratio` 0.6, `window` `"10s"`, `open_timeout` `"30s"` within 1 s..=10 min,
//! `max_open_timeout` for exponential growth, `half_open_max_calls` 10,
//! `half_open_successes` 3, `failures = [..]` to change which codes count as failures). Retries are on by default: mark methods
//! that are not idempotent `#[no_retry]`.
//!
//! Hedging (gRFC A6 `hedgingPolicy`, [`retry::HedgingPolicy`]) sends several copies of an
//! idempotent call, the next one after `delay` or at once when a copy fails with a
//! non-fatal code; the first good answer wins and the other copies are cancelled:
//! `hedge(max_attempts = 3, delay = "20ms", non_fatal = [Unavailable])` on the client, or
//! `#[hedge(...)]` on one method (the defaults are those values). A method has retries or
//! hedging, not both; `#[no_retry]` methods are never hedged. Service config's
//! `hedgingPolicy` does the same.
//!
//! ```
//! # #[path = "../tests/ui/pass/fake.rs"] mod pb;
//! #[steadfast::resilient_client(service = "user-svc", client = pb::UserClient)]
//! trait Users {
//!     // Reads: a slow replica costs 20 ms, not its latency.
//!     #[steadfast::hedge(max_attempts = 3, delay = "20ms", non_fatal = [Unavailable])]
//!     async fn get_user(&self, id: u64) -> Result<String, tonic::Status>;
//! }
//! ```
//!
//! The generated struct is named after the trait with a `Client` suffix. The trait stays an
//! ordinary trait: write fakes for tests by implementing it by hand.
//!
//! # Streaming
//!
//! All four gRPC method kinds are written the way tonic users write them:
//!
//! | kind | argument | result |
//! | --- | --- | --- |
//! | unary | `M` or `tonic::Request<M>` | `Result<R, Status>` |
//! | server streaming | `M` or `tonic::Request<M>` | `Result<tonic::Streaming<R>, Status>` |
//! | client streaming | `impl Stream<Item = M> + Send + 'static` (or in `tonic::Request<..>`) | `Result<R, Status>` |
//! | bidirectional | `impl Stream<Item = M> + Send + 'static` (or in `tonic::Request<..>`) | `Result<tonic::Streaming<R>, Status>` |
//!
//! Any other form of request stream is a compile error on it that says what to write.
//!
//! - **Retries (gRFC A6).** A call is retried until it is committed: its response headers
//!   arrived (a failure after the first message reaches the caller), or its request stream
//!   outgrew the replay buffer. The caller's request stream is read once; what it sent is
//!   kept and replayed, in order, on each retry, up to
//!   [`client::ClientConfig::replay_buffer`] bytes per call (256 KiB by default, as
//!   grpc-go). Past the bound the call goes on but is never sent again. A call with a
//!   request stream is not hedged (that would upload it several times over): under a
//!   hedging policy it runs one attempt at a time under the method's retry policy.
//! - **Deadlines.** The method's timeout bounds the whole call, stream included: a stream
//!   still running at the deadline ends with DEADLINE_EXCEEDED and the server sees the
//!   cancellation; `grpc-timeout` is sent and [`deadline::DeadlineLayer`] enforces it on
//!   servers for the whole streaming response.
//!   [`client::ClientConfig::stream_idle_timeout`] ends a response stream that goes quiet
//!   with UNAVAILABLE (for watch-style streams without an overall deadline).
//! - **Breaker.** A response stream's outcome is recorded when it ends (its final status);
//!   a stream that never starts is recorded at once; a half-open probe is released when the
//!   stream starts, so a long healthy stream holds no probe slot.
//! - **Metrics.** Each streaming call counts in `steadfast_client_streams_started_total`, and
//!   at its end in `steadfast_client_stream_duration_seconds` (by final code, CANCELLED when
//!   the caller dropped it) and the messages sent and received counters (see [`metrics`]).
//! - **`#[traced]`** on a handler answering with a stream keeps its span and context open
//!   until the stream ends: each message is produced inside them, and the call is logged
//!   and measured with the stream's final code.
//!
//! A client stream, replayed after a failure (runnable: the stand-in client answers without
//! a network):
//!
//! ```
//! # mod pb {
//! #     use std::sync::{Arc, Mutex};
//! #     #[derive(Clone, PartialEq, prost::Message)]
//! #     pub struct Id { #[prost(uint64, tag = "1")] pub id: u64 }
//! #     /// Fails its first call with UNAVAILABLE after reading the stream; records what each read.
//! #     #[derive(Clone)] pub struct IdsClient<T>(T, pub Arc<Mutex<Vec<Vec<u64>>>>);
//! #     impl<T> IdsClient<T> {
//! #         pub fn new(t: T) -> Self { IdsClient(t, SEEN.with(|s| s.clone())) }
//! #         pub fn send_compressed(self, _: tonic::codec::CompressionEncoding) -> Self { self }
//! #         pub fn accept_compressed(self, _: tonic::codec::CompressionEncoding) -> Self { self }
//! #         pub fn max_decoding_message_size(self, _: usize) -> Self { self }
//! #         pub fn max_encoding_message_size(self, _: usize) -> Self { self }
//! #         pub async fn count(&mut self, req: impl tonic::IntoStreamingRequest<Message = Id>)
//! #             -> Result<tonic::Response<u64>, tonic::Status> {
//! #             use futures_util::StreamExt;
//! #             let ids: Vec<u64> = req.into_streaming_request().into_inner().map(|m| m.id).collect().await;
//! #             let first = { let mut s = self.1.lock().unwrap(); s.push(ids.clone()); s.len() == 1 };
//! #             if first { return Err(tonic::Status::unavailable("restarting")); }
//! #             Ok(tonic::Response::new(ids.len() as u64))
//! #         }
//! #     }
//! #     thread_local!(pub static SEEN: Arc<Mutex<Vec<Vec<u64>>>> = Arc::default());
//! # }
//! use futures_util::Stream;
//! use steadfast::client::ClientConfig;
//!
//! #[steadfast::resilient_client(service = "ids", client = pb::IdsClient, timeout = "1s",
//!     retry(max_attempts = 3, initial_backoff = "1ms"))]
//! trait Ids {
//!     async fn count(&self, ids: impl Stream<Item = pb::Id> + Send + 'static)
//!         -> Result<u64, tonic::Status>;
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ids = IdsClient::connect(ClientConfig::endpoints(["http://127.0.0.1:50051"])?).await?;
//! let stream = futures_util::stream::iter([1, 2, 3].map(|id| pb::Id { id }));
//! assert_eq!(ids.count(stream).await?, 3);
//! // The first attempt failed; the retry sent the same messages again, in order.
//! let seen = pb::SEEN.with(|s| s.lock().unwrap().clone());
//! assert_eq!(seen, [[1, 2, 3], [1, 2, 3]]);
//! # Ok(()) }
//! ```
//!
//! A watch-style server stream, resumed after a break:
//!
//! ```no_run
//! # mod pb { pub mod watch_client {
//! #     #[derive(Clone)] pub struct WatchClient<T>(T);
//! #     impl<T> WatchClient<T> {
//! #         pub fn new(t: T) -> Self { WatchClient(t) }
//! #         pub fn send_compressed(self, _: tonic::codec::CompressionEncoding) -> Self { self }
//! #         pub fn accept_compressed(self, _: tonic::codec::CompressionEncoding) -> Self { self }
//! #         pub fn max_decoding_message_size(self, _: usize) -> Self { self }
//! #         pub fn max_encoding_message_size(self, _: usize) -> Self { self }
//! #         pub async fn list_users(&mut self, _: tonic::Request<u64>)
//! #             -> Result<tonic::Response<tonic::Streaming<String>>, tonic::Status> { unimplemented!() }
//! #     }
//! # } }
//! use std::time::Duration;
//! use steadfast::client::ClientConfig;
//!
//! #[steadfast::resilient_client(service = "user-svc", client = pb::watch_client::WatchClient,
//!     timeout = "1h")]
//! trait Users {
//!     /// Users from `from_id` on. Resume rule: after a break, call again from the last
//!     /// id received + 1.
//!     async fn list_users(&self, from_id: u64) -> Result<tonic::Streaming<String>, tonic::Status>;
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = steadfast::registry::from_url("memory://").await?;
//! let users = UsersClient::connect(
//!     ClientConfig::discover(registry).stream_idle_timeout(Duration::from_secs(30))?,
//! )
//! .await?;
//! let mut next = 1;
//! loop {
//!     let Ok(mut stream) = users.list_users(next).await else {
//!         tokio::time::sleep(Duration::from_millis(200)).await;
//!         continue;
//!     };
//!     loop {
//!         match stream.message().await {
//!             Ok(Some(user)) => {
//!                 println!("{user}");
//!                 next += 1;
//!             }
//!             Ok(None) => return Ok(()),
//!             Err(_) => break, // broken, cut or quiet: resume where it stopped
//!         }
//!     }
//! }
//! # }
//! ```
//!
//! # Tracing: `#[traced]`
//!
//! `#[traced]` instruments a handler with the request's trace context:
//! - on a tonic method (`Request<T>` in, `Result<Response<U>, Status>` out) it takes the
//!   context from the server layers (or the request's own metadata), opens the span `rpc`
//!   with the OpenTelemetry RPC attributes (`rpc.system`, `rpc.service` = the full gRPC
//!   service name, `rpc.method`, `rpc.grpc.status_code`, `client.address`), the request's
//!   message type, `trace_id`, `span_id` and `parent_span_id`; applies the incoming
//!   deadline, logs the end at info with latency and status code, and records
//!   `rpc_server_duration_seconds` with the trace id as exemplar. A handler answering with
//!   a boxed stream (`Pin<Box<dyn Stream<Item = Result<R, Status>> + Send>>`, tonic's
//!   `BoxStream`, the usual `type XStream`) ends with its stream instead: its span and
//!   context stay open and are entered whenever the stream is polled, and the end is logged
//!   and measured with the stream's final code (CANCELLED when the caller went away). A
//!   handler whose stream type is another named type ends when it returns;
//! - on an HTTP handler with a `HeaderMap` argument it does the same from the headers (or the
//!   [`trace::TraceLayer`]'s context);
//! - on any other async fn it opens a child span of the current context.
//!
//! **Secrets stay out.** An argument that carries request metadata, headers or credentials
//! (a `Request<T>`, a `HeaderMap`, a `MetadataMap`, request `Parts` or `Extensions`, a
//! `TypedHeader`, `Authorization`, a cookie jar, also inside `Option`, `Box` or a reference)
//! is never recorded, so an `authorization` header or a token cannot reach a span, a log line
//! or an exporter. Arguments named like the fields `#[traced]` records itself (`trace_id`,
//! `service`, `method`, ...) are not recorded either. The other arguments are recorded with
//! `Debug`, as `tracing::instrument` does.
//!
//! Options, as in `tracing::instrument`: `skip(arg, ..)` leaves arguments out, `skip_all`
//! leaves them all out, `fields(name = value, a.b = %display, c = ?debug, later)` records
//! more (a field without a value is declared, to be recorded later with `Span::record`);
//! `name = "..."` (the span name), `level = "debug"`, and `service = "..."` (for a tonic
//! handler served without [`trace::TraceLayer`], the full gRPC service name to label its
//! span and metrics with; with the layer, the request path names the call). To record
//! headers on purpose, record them [`telemetry::redacted`]: sensitive values are hidden.
//!
//! ```
//! #[steadfast::traced(skip(password), fields(user.name = %user))]
//! async fn login(user: String, password: String) -> Result<(), String> {
//!     tracing::info!("checking"); // carries trace_id and span_id
//!     Ok(())
//! }
//! ```
//!
//! Misuse is a compile error:
//!
//! ```compile_fail
//! #[steadfast::traced(skip(secret))] // no argument named `secret`
//! async fn login(user: String) {}
//! ```
//!
//! # Servers
//!
//! [`deadline::DeadlineLayer`] reads the caller's `grpc-timeout`, enforces it, and exposes the
//! deadline as [`Context`]. Resilient clients called inside the handler bound their calls by
//! what is left, so a deadline shrinks from hop to hop.
//!
//! # Failure origin: who gets blamed
//! Every attempt's outcome is classified once ([`outcome::classify`]) as *local* (no
//! connection, a broken connection, our own timeout), *remote* (a status the downstream
//! produced) or *passed-through* (a status the downstream relayed from a deeper hop, marked
//! with [`outcome::PASSED_THROUGH_KEY`], which every resilient client puts on the errors it
//! returns). Retry, breaker, outlier detection and metrics all read that one classification;
//! the table of what each outcome does is in [`outcome`]. A passed-through failure is never
//! retried and never counts against the service that relayed it, so an outage deep in the
//! call graph opens the breakers next to it and nowhere else, and every hop recovers as soon
//! as the failing service does.
//!
//! # Modules
//! - [`retry`](mod@retry): gRFC A6 retries, also usable as a plain tower [`retry::RetryLayer`].
//! - [`outcome`]: the classification of attempts and the passed-through marker.
//! - [`discovery`]: outlier detection (gRFC A50, Envoy) and panic mode for discovered
//!   endpoints.
//! - [`breaker`]: one circuit breaker per downstream service, also a plain tower
//!   [`breaker::BreakerLayer`].
//! - [`metrics`]: Prometheus metrics named after the OpenTelemetry RPC conventions, in the
//!   classic text format or OpenMetrics with exemplars.
//! - [`deadline`]: deadlines across hops: the server layer, the call deadline and the attempt
//!   timeout of clients.
//! - [`client`]: connection set-up ([`client::ClientConfig`]), the layered stack of every
//!   generated client ([`client::stack`]), and the channel that balances discovered endpoints.
//! - [`server`]: graceful shutdown and the runtime of `#[traced]`.
//! - [`tls`]: rustls TLS from PEM files, for clients and servers.
//! - [`trace`]: W3C trace context and `X-Trace-ID` across gRPC, HTTP and tasks.
//! - [`telemetry`]: JSON logs with `trace_id` and `span_id` on every line, span export over
//!   OTLP (feature `otlp`), and the redaction of secrets.
//!
//! # Errors
//! Configuration and start-up problems are [`Error`]s that name the offending field. Call
//! failures are [`tonic::Status`] values, so they cross gRPC boundaries unchanged.

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod client;
pub mod code;
mod connection;
pub mod deadline;
pub mod discovery;
pub mod duration;
mod error;
pub mod health;
pub mod metrics;
pub mod outcome;
pub mod registry;
pub mod retry;
pub mod server;
mod spec;
pub mod telemetry;
mod time;
pub mod tls;
pub mod trace;
mod wire;

pub use error::Error;
pub use steadfast_macros::{hedge, no_retry, resilient_client, retry, timeout, traced};
pub use trace::Context;
pub use trace::spawn;

/// Re-exports for generated code. Not public API: no stability guarantees.
#[doc(hidden)]
pub mod __private {
    pub use crate::Error;
    pub use crate::breaker::BreakerConfig;
    pub use crate::client::{
        Channel, ClientConfig, ClientCore, ClientSpec, MethodSpec, streaming, unary,
    };
    pub use crate::retry::{HedgingPolicy, RetryPolicy};
    pub use ::core::time::Duration;
    pub use ::futures_util::stream::empty as empty_stream;
    pub use ::tonic;
    pub use ::tonic::async_trait;
    pub use ::tracing;

    /// What `#[traced]` calls.
    pub mod trace {
        pub use crate::server::call::{Call, Site, ok_code, result_code};
        pub use crate::server::stream::{BoxStream, Hold, Probe, StreamReply, UnaryReply};
    }
}
