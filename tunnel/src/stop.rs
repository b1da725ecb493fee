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
    let signal = Arc::new(Signal {
        fired: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    UntilStopped {
        stop,
        work,
        stop_waker: Waker::from(signal.clone()),
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
        // Registered before the check: a wake-up in between polls us again.
        this.signal.task.register(cx.waker());
        if this.signal.fired.swap(false, Ordering::AcqRel) {
            let mut stop_cx = Context::from_waker(this.stop_waker);
            if let Poll::Ready(out) = this.stop.poll(&mut stop_cx) {
                return Poll::Ready(Err(out));
            }
        }
        this.work.poll(cx).map(Ok)
    }
}

/// The waker `stop` is polled with: it notes that `stop` has something to say, then wakes the
/// task.
struct Signal {
    fired: AtomicBool,
    task: AtomicWaker,
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
