//! The replay buffer of a request stream (client and bidirectional streaming): every
//! attempt of one call reads the same messages, in order, and the caller's stream is read
//! once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::Stream;

/// Marks a call whose request stream outgrew its replay buffer: from then on the call is
/// committed (gRFC A6) and never sent again. The [`ReplayStream`] of a call sets it; the
/// [`RetryLayer`](super::RetryLayer) reads it from the request's extensions.
///
/// ```
/// use steadfast::retry::ReplayCommit;
/// let commit = ReplayCommit::default();
/// assert!(!commit.is_committed());
/// ```
#[derive(Clone, Debug, Default)]
pub struct ReplayCommit(Arc<AtomicBool>);

impl ReplayCommit {
    /// Whether the request stream went past the buffer: the call cannot be replayed.
    pub fn is_committed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    /// Commits the call: its request stream will not be sent again (set when the stream
    /// outgrows its buffer, and by the retry layer once the response started).
    pub(crate) fn commit(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A request stream that every attempt of a call can read from its first message: the
/// messages read from the caller's stream are kept (up to a byte bound, as grpc-go's
/// per-RPC retry buffer), and each clone of the `ReplayStream` starts from the first one.
/// The caller's stream is polled once per message, whatever the number of attempts.
///
/// Only the newest clone (the attempt in flight) reads the caller's stream; an older one (an
/// attempt given up, whose connection may still be asking for its body) only gets what is
/// buffered, so it can neither take messages from the attempt in flight nor commit the call.
/// Once the messages read exceed the bound, or the call's response started, the buffer is
/// released and the call is committed ([`ReplayCommit`]): the attempt in flight carries on
/// alone, and a failure is returned to the caller instead of being retried. A clone that is
/// behind the released buffer never yields again.
///
/// Generated clients wrap every request stream in one; with [`RetryLayer`](super::RetryLayer)
/// on its own, put the stream's [`commit`](Self::commit) marker in the request's
/// extensions so that the layer knows when the call can no longer be replayed.
///
/// ```
/// use futures_util::StreamExt;
/// use steadfast::retry::ReplayStream;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let source = futures_util::stream::iter(vec![1u32, 2, 3]);
/// let replay = ReplayStream::new(source, 1024, |_: &u32| 4);
/// let first: Vec<u32> = replay.clone().collect().await;
/// let again: Vec<u32> = replay.clone().collect().await;
/// assert_eq!((first, again), (vec![1, 2, 3], vec![1, 2, 3]));
/// assert!(!replay.commit().is_committed());
/// # }
/// ```
pub struct ReplayStream<M> {
    shared: Arc<Shared<M>>,
    /// The index (in the whole stream) of the next message this reader yields.
    pos: u64,
    /// Which clone this is: only the newest reads the caller's stream.
    generation: u64,
}

struct Shared<M> {
    state: Mutex<State<M>>,
    /// Wakes every reader waiting for the caller's stream, whichever of them polled it.
    waiters: Arc<WakeAll>,
    commit: ReplayCommit,
    read: Arc<AtomicU64>,
    /// The generation of the newest clone.
    newest: AtomicU64,
}

struct State<M> {
    source: Option<Pin<Box<dyn Stream<Item = M> + Send>>>,
    /// The messages from index `base` on (all of them until the bound is passed).
    buffer: VecDeque<M>,
    base: u64,
    bytes: usize,
    limit: usize,
    size: fn(&M) -> usize,
}

#[derive(Default)]
struct WakeAll(Mutex<Vec<Waker>>);

impl Wake for WakeAll {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let waiters = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for w in waiters {
            w.wake();
        }
    }
}

impl WakeAll {
    fn register(&self, waker: &Waker) {
        let mut waiters = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }
}

impl<M> std::fmt::Debug for ReplayStream<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayStream")
            .field("pos", &self.pos)
            .field("read", &self.messages_read())
            .field("committed", &self.shared.commit.is_committed())
            .finish_non_exhaustive()
    }
}

impl<M> Clone for ReplayStream<M> {
    /// Another reader, from the first message; it becomes the one that reads the caller's
    /// stream.
    fn clone(&self) -> Self {
        let generation = self.shared.newest.fetch_add(1, Ordering::AcqRel) + 1;
        ReplayStream {
            shared: self.shared.clone(),
            pos: 0,
            generation,
        }
    }
}

impl<M: Clone + Send + 'static> ReplayStream<M> {
    /// Replays `source`, keeping up to `limit` bytes of messages, each `size(message)`
    /// bytes long.
    pub fn new(
        source: impl Stream<Item = M> + Send + 'static,
        limit: usize,
        size: fn(&M) -> usize,
    ) -> Self {
        ReplayStream {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    source: Some(Box::pin(source)),
                    buffer: VecDeque::new(),
                    base: 0,
                    bytes: 0,
                    limit,
                    size,
                }),
                waiters: Arc::default(),
                commit: ReplayCommit::default(),
                read: Arc::default(),
                newest: AtomicU64::new(0),
            }),
            pos: 0,
            generation: 0,
        }
    }
}

impl<M: prost::Message + Clone + Send + 'static> ReplayStream<M> {
    /// Replays a stream of protobuf messages, counting each as its encoded length plus the
    /// 5-byte gRPC frame header.
    pub fn prost(source: impl Stream<Item = M> + Send + 'static, limit: usize) -> Self {
        ReplayStream::new(source, limit, |m| m.encoded_len() + 5)
    }
}

impl<M> ReplayStream<M> {
    /// The call's commit marker: set once the stream outgrew the buffer.
    pub fn commit(&self) -> ReplayCommit {
        self.shared.commit.clone()
    }
    /// How many messages were read from the caller's stream so far.
    pub fn messages_read(&self) -> u64 {
        self.shared.read.load(Ordering::Relaxed)
    }
    /// The count behind [`messages_read`](Self::messages_read), shared.
    pub(crate) fn read_counter(&self) -> Arc<AtomicU64> {
        self.shared.read.clone()
    }
}

impl<M: Clone> Stream for ReplayStream<M> {
    type Item = M;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<M>> {
        let shared = self.shared.clone();
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.pos < state.base {
            // Behind a buffer released past its bound: this attempt was given up.
            return Poll::Pending;
        }
        let offset = (self.pos - state.base) as usize;
        if let Some(m) = state.buffer.get(offset) {
            let m = m.clone();
            self.pos += 1;
            return Poll::Ready(Some(m));
        }
        let Some(source) = state.source.as_mut() else {
            return Poll::Ready(None);
        };
        // At the front: the newest reader reads the caller's stream, with a waker that
        // wakes every reader waiting here; an older one waits for what the newest reads.
        shared.waiters.register(cx.waker());
        if self.generation != shared.newest.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        let waker = Waker::from(shared.waiters.clone());
        match source.as_mut().poll_next(&mut Context::from_waker(&waker)) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.source = None;
                drop(state);
                shared.waiters.wake_by_ref();
                Poll::Ready(None)
            }
            Poll::Ready(Some(m)) => {
                shared.read.fetch_add(1, Ordering::Relaxed);
                self.pos += 1;
                if shared.commit.is_committed() {
                    // Nothing is kept once the call is committed.
                    state.buffer.clear();
                    state.base = self.pos;
                } else {
                    state.bytes = state.bytes.saturating_add((state.size)(&m));
                    if state.bytes > state.limit {
                        shared.commit.commit();
                        state.buffer = VecDeque::new();
                        state.base = self.pos;
                        tracing::debug!(
                            limit = state.limit,
                            "the request stream outgrew its replay buffer; the call is \
                             committed and will not be retried"
                        );
                    } else {
                        state.buffer.push_back(m.clone());
                    }
                }
                drop(state);
                // Readers waiting for this message find it in the buffer.
                shared.waiters.wake_by_ref();
                Poll::Ready(Some(m))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{FutureExt, StreamExt};
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn every_reader_gets_every_message_and_the_source_is_read_once() {
        let polled = Arc::new(AtomicUsize::new(0));
        let p = polled.clone();
        let source = futures_util::stream::iter(0u32..10).inspect(move |_| {
            p.fetch_add(1, Ordering::Relaxed);
        });
        let replay = ReplayStream::new(source, 1 << 20, |_| 4);
        // A first attempt reads three messages and fails.
        let mut a = replay.clone();
        assert_eq!(a.next().await, Some(0));
        assert_eq!(a.next().await, Some(1));
        assert_eq!(a.next().await, Some(2));
        // The retry replays them, then reads on.
        let b = replay.clone();
        let all: Vec<u32> = b.collect().await;
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        // The first attempt, still asked for its body, gets only what is buffered.
        let rest_a: Vec<u32> = a.collect().await;
        assert_eq!(rest_a, (3..10).collect::<Vec<_>>());
        assert_eq!(polled.load(Ordering::Relaxed), 10, "one read per message");
        assert_eq!(replay.messages_read(), 10);
        assert!(!replay.commit().is_committed());
    }

    #[tokio::test]
    async fn an_attempt_given_up_cannot_read_the_source_nor_commit_the_call() {
        let replay = ReplayStream::new(futures_util::stream::iter(0u32..10), 10, |_| 4);
        let mut old = replay.clone();
        assert_eq!(old.next().await, Some(0));
        let mut new = replay.clone();
        // The old attempt's connection asks for more: it gets nothing new.
        assert!(old.next().now_or_never().is_none());
        assert!(!replay.commit().is_committed());
        assert_eq!(new.next().await, Some(0));
        assert_eq!(new.next().await, Some(1));
        assert_eq!(replay.messages_read(), 2);
    }

    #[tokio::test]
    async fn past_the_bound_the_call_is_committed_and_a_reader_behind_never_yields() {
        let replay = ReplayStream::new(futures_util::stream::iter(0u32..10), 10, |_| 4);
        let mut behind = replay.clone();
        assert_eq!(behind.next().await, Some(0));
        let mut front = replay.clone();
        // 4 + 4 bytes fit in 10; the third message does not.
        assert_eq!(front.next().await, Some(0));
        assert_eq!(front.next().await, Some(1));
        assert!(!replay.commit().is_committed());
        assert_eq!(front.next().await, Some(2));
        assert!(replay.commit().is_committed());
        let rest: Vec<u32> = front.collect().await;
        assert_eq!(rest, (3..10).collect::<Vec<_>>(), "the front goes on alone");
        assert!(
            behind.next().now_or_never().is_none(),
            "a reader behind cannot be replayed"
        );
        assert!(
            replay.clone().next().now_or_never().is_none(),
            "neither can a new attempt"
        );
    }

    #[tokio::test]
    async fn a_reader_waiting_for_the_next_message_is_woken_when_another_reads_it() {
        let (tx, rx) = tokio::sync::mpsc::channel::<u32>(4);
        let replay = ReplayStream::new(tokio_stream_from(rx), 1024, |_| 4);
        let mut a = replay.clone();
        let mut b = replay.clone();
        // Both wait at the front: b on the source, a (older) for what b reads.
        let wait_a = tokio::spawn(async move { a.next().await });
        tokio::task::yield_now().await;
        let wait_b = tokio::spawn(async move { b.next().await });
        tokio::task::yield_now().await;
        tx.send(7).await.unwrap();
        assert_eq!(wait_a.await.unwrap(), Some(7));
        assert_eq!(wait_b.await.unwrap(), Some(7));
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<u32>,
    ) -> impl Stream<Item = u32> + Send + 'static {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
