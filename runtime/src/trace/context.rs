//! The per-request [`Context`]: the deadline inherited from the caller (and, later, the trace).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    pub(crate) static CURRENT: Context;
}

/// What a request carries across hops: its deadline and its trace context.
///
/// A server wrapped in [`DeadlineLayer`](crate::deadline::DeadlineLayer) reads the caller's
/// `grpc-timeout`, makes a `Context` with the matching deadline, and runs the handler inside
/// it. Every resilient client called from that handler bounds its own calls by
/// `min(own timeout, remaining)`, so a deadline shrinks hop by hop and is never reset.
///
/// The context is found two ways: [`Context::current`] (a tokio task-local set for the
/// duration of the handler's future), and the request's extensions
/// (`request.extensions().get::<Context>()`).
///
/// ```
/// use std::time::Duration;
/// use steadfast::Context;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// assert!(Context::current().deadline().is_none());
/// let ctx = Context::new().with_timeout(Duration::from_secs(2));
/// ctx.scope(async {
///     let left = Context::current().remaining().unwrap();
///     assert!(left <= Duration::from_secs(2));
/// })
/// .await;
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Context {
    deadline: Option<Instant>,
    trace: Option<super::TraceContext>,
    /// When the call that carries this context started, read by the first layer of its
    /// client stack that needs the time, for the others (one clock read per call). Not
    /// inherited: [`Context::current`], [`scope`](Context::scope) and
    /// [`CallPolicy::call_in`](crate::retry::CallPolicy::call_in) drop it.
    started: Option<Instant>,
}

impl Context {
    /// An empty context: no deadline.
    pub fn new() -> Self {
        Context::default()
    }

    /// The context of the running task, or an empty one outside any request.
    pub fn current() -> Context {
        CURRENT
            .try_with(|c| c.clone().for_task())
            .unwrap_or_default()
    }

    /// When the call that carries this context started: read from the clock by the first
    /// layer that asks, the same instant for every layer after it.
    pub(crate) fn call_start(&mut self) -> Instant {
        *self.started.get_or_insert_with(Instant::now)
    }

    /// Starts the call that carries this context now (the outermost layer that needs the
    /// time calls it).
    pub(crate) fn start_call(&mut self) -> Instant {
        let now = Instant::now();
        self.started = Some(now);
        now
    }

    /// The deadline of the running task's request, if any. Cheaper than `current()`.
    pub fn current_deadline() -> Option<Instant> {
        CURRENT.try_with(|c| c.deadline).ok().flatten()
    }

    /// Returns this context with its deadline set to `deadline`, or left as it is when that
    /// is earlier: a deadline is only ever shortened.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(match self.deadline {
            Some(d) => d.min(deadline),
            None => deadline,
        });
        self
    }

    /// Same as [`with_deadline`](Self::with_deadline) with `now + timeout`.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(far_future);
        self.with_deadline(deadline)
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left until the deadline (zero once passed), if there is a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Runs `fut` with this context as [`Context::current`].
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self.for_task(), fut).await
    }

    /// This context as a task's or a new call's: without the start of the call it came from.
    pub(crate) fn for_task(self) -> Context {
        Context {
            started: None,
            ..self
        }
    }

    /// Like [`scope`](Self::scope), returning the nameable future.
    pub fn scope_future<F: Future>(
        self,
        fut: F,
    ) -> tokio::task::futures::TaskLocalFuture<Context, F> {
        CURRENT.scope(self.for_task(), fut)
    }

    /// Returns this context with `trace` as its trace context.
    pub fn with_trace(mut self, trace: super::TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Sets the trace context in place.
    pub(crate) fn set_trace(&mut self, trace: super::TraceContext) {
        self.trace = Some(trace);
    }

    /// The trace context, if the request has one.
    pub fn trace(&self) -> Option<&super::TraceContext> {
        self.trace.as_ref()
    }

    /// The context of one outgoing call, kept in its request's extensions: the one already
    /// there (put by an outer layer, or by the caller when the call was made), else the
    /// running task's. A call made outside any trace starts a new one. Every layer of the
    /// client stack reads it from here, so all attempts share one deadline and one trace.
    pub fn of_call(extensions: &mut http::Extensions) -> &mut Context {
        if extensions
            .get::<Context>()
            .is_none_or(|c| c.trace.is_none())
        {
            let mut ctx = extensions
                .remove::<Context>()
                .unwrap_or_else(Context::current);
            if ctx.trace.is_none() {
                ctx.trace = Some(super::TraceContext::new_root());
            }
            extensions.insert(ctx);
        }
        extensions.get_mut::<Context>().expect("inserted above")
    }

    /// Bounds the deadline in place by `timeout` from the call's start
    /// ([`call_start`](Self::call_start)).
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        let deadline = self
            .call_start()
            .checked_add(timeout)
            .unwrap_or_else(far_future);
        *self = std::mem::take(self).with_deadline(deadline);
    }
}

/// About 30 years from now: "no deadline" for arithmetic that needs an instant.
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}
