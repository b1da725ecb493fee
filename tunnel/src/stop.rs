//! Waiting for a stop signal beside work that wakes often.
//!
//! `select!` over some work and `token.cancelled()` polls both on every wake-up, and a waiting
//! cancellation future takes two locks each time it is polled (its token's and its `Notify`'s).
//! The tasks that serve a connection or drive a session wake several times per request, so the
//! stop signals they watch were a lock-heavy part of every request, and a contended one where
//! many tasks watch one token. [`until_stopped`] polls the signal only after it has woken the
//! task itself.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;

/// Runs `work` until it completes (`Ok`) or `stop` completes first (`Err`). Like `select!` on
/// the two, except that `stop` is polled only at the start and after it woke the task.
pub fn until_stopped<S: Future, W: Future>(stop: S, work: W) -> UntilStopped<S, W> {
    let (signal, stop_waker) = Signal::new();
    UntilStopped {
        stop,
        work,
        stop_waker,
        signal,
    }
}

pin_project_lite::pin_project! {
    /// The future [`until_stopped`] returns.
    pub struct UntilStopped<S, W> {
        #[pin]
        stop: S,
        #[pin]
        work: W,
        signal: Arc<Signal>,
        stop_waker: Waker,
    }
}

impl<S: Future, W: Future> Future for UntilStopped<S, W> {
    type Output = Result<W::Output, S::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        poll_until(this.signal, this.stop_waker, this.stop, this.work, cx)
    }
}

/// Polls `work`, and `stop` first if it woke the task (or has not been polled yet).
fn poll_until<S: Future, W: Future>(
    signal: &Signal,
    stop_waker: &Waker,
    stop: Pin<&mut S>,
    work: Pin<&mut W>,
    cx: &mut Context<'_>,
) -> Poll<Result<W::Output, S::Output>> {
    // Registered before the check: a wake-up in between polls us again.
    signal.task.register(cx.waker());
    if signal.fired.swap(false, Ordering::AcqRel) {
        let mut stop_cx = Context::from_waker(stop_waker);
        if let Poll::Ready(out) = stop.poll(&mut stop_cx) {
            return Poll::Ready(Err(out));
        }
    }
    work.poll(cx).map(Ok)
}

/// [`until_stopped`] for work that comes in turns, such as the requests of one connection: the
/// stop signal is set up and registered once for all of them, not once per turn.
pub struct StopWatch<S> {
    stop: Pin<Box<S>>,
    signal: Arc<Signal>,
    stop_waker: Waker,
    stopped: bool,
}

impl<S: Future<Output = ()>> StopWatch<S> {
    /// Watches `stop` (say, a token's `cancelled()`).
    pub fn new(stop: S) -> Self {
        let (signal, stop_waker) = Signal::new();
        Self {
            stop: Box::pin(stop),
            stop_waker,
            signal,
            stopped: false,
        }
    }

    /// Runs `work` until it completes (`Ok`) or the stop comes first (`Err`, then at once for
    /// every later turn).
    pub async fn until<W: Future>(&mut self, work: W) -> Result<W::Output, ()> {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if self.stopped {
                return Poll::Ready(Err(()));
            }
            let polled = poll_until(
                &self.signal,
                &self.stop_waker,
                self.stop.as_mut(),
                work.as_mut(),
                cx,
            );
            self.stopped = matches!(polled, Poll::Ready(Err(())));
            polled
        })
        .await
    }
}

/// The waker `stop` is polled with: it notes that `stop` has something to say, then wakes the
/// task.
struct Signal {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Signal {
    /// A signal that has fired (so that `stop` is polled first), and the waker `stop` gets.
    fn new() -> (Arc<Self>, Waker) {
        let signal = Arc::new(Signal {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(signal.clone());
        (signal, waker)
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;

    #[tokio::test]
    async fn work_that_finishes_first_wins() {
        let token = CancellationToken::new();
        let out = until_stopped(token.cancelled(), async { 7 }).await;
        assert_eq!(out, Ok(7));
    }

    #[tokio::test]
    async fn a_stop_already_given_wins_at_once() {
        let token = CancellationToken::new();
        token.cancel();
        let out = until_stopped(token.cancelled(), std::future::pending::<()>()).await;
        assert_eq!(out, Err(()));
    }

    #[tokio::test]
    async fn a_watch_serves_turns_until_the_stop_then_refuses_every_later_one() {
        let token = CancellationToken::new();
        let mut watch = StopWatch::new(token.clone().cancelled_owned());
        for turn in 0..3 {
            assert_eq!(watch.until(async { turn }).await, Ok(turn));
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stopper = tokio::spawn(async move {
            rx.await.unwrap();
            token.cancel();
        });
        // A turn that waits: the stop given meanwhile ends it.
        let waiting = watch.until(async {
            tx.send(()).unwrap();
            std::future::pending::<()>().await
        });
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), waiting).await,
            Ok(Err(()))
        );
        stopper.await.unwrap();
        assert_eq!(watch.until(async { 9 }).await, Err(()));
    }

    #[tokio::test]
    async fn a_stop_given_while_busy_work_waits_ends_it() {
        let token = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        let stopper = token.clone();
        // Work that wakes often and never ends, as a connection's does.
        let work = async move {
            let mut seen = 0;
            while let Some(n) = rx.recv().await {
                seen += n;
            }
            seen
        };
        let feeder = tokio::spawn(async move {
            for i in 0.. {
                if tx.send(1).await.is_err() {
                    break;
                }
                if i == 100 {
                    stopper.cancel();
                }
                tokio::task::yield_now().await;
            }
        });
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            until_stopped(token.cancelled(), work),
        )
        .await
        .expect("the stop is seen");
        assert_eq!(out, Err(()));
        feeder.await.unwrap();
    }
}
