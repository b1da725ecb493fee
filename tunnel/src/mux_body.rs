//! HTTP bodies over a [`MuxStream`]: a body read from a stream, and a body written into one.

use std::{
    future::poll_fn,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as _, Frame};

use crate::{
    head,
    http_util::{Body, BoxError},
    mux::{Item, MuxError, MuxStream},
    protocol::RESET_BODY,
};

/// The peer's half of a stream as an HTTP body: DATA frames, then trailers or the end.
/// Dropping it before the end resets the stream (unless another handle keeps it). Its data
/// gives its credit back only once dropped ([`MuxStream::poll_recv_held`]): what the consumer
/// keeps in its write buffer for a slow socket counts against the session's credit.
pub struct RecvBody {
    stream: Option<MuxStream>,
}

impl RecvBody {
    /// The body that follows the head already taken from `stream`.
    pub fn new(stream: MuxStream) -> Self {
        Self {
            stream: Some(stream),
        }
    }

    /// A body that has already ended (the head carried FIN).
    pub fn ended() -> Self {
        Self { stream: None }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(stream) = self.stream.as_ref() else {
            return Poll::Ready(None);
        };
        let item = ready!(stream.poll_recv_held(cx));
        let frame = match item {
            None => None,
            Some(Ok(Item::Data(d))) => Some(Ok(Frame::data(d))),
            Some(Ok(Item::Trailers(t))) => Some(
                head::decode_trailers(t)
                    .map(Frame::trailers)
                    .map_err(Into::into),
            ),
            Some(Ok(Item::Head(_))) => Some(Err("a second head inside a body".into())),
            Some(Err(e)) => Some(Err(e.into())),
        };
        if !matches!(frame, Some(Ok(ref f)) if f.is_data()) {
            // Ended, failed or trailers (which end it): let the stream go.
            self.stream = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none()
    }
}

/// Why sending a body into a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The body itself failed (the visitor or the local service broke it off).
    #[error("the body failed: {0}")]
    Body(BoxError),
    /// The stream or session failed.
    #[error(transparent)]
    Stream(#[from] MuxError),
}

/// Sends `body` as the rest of our half of `stream`: data, then trailers or the end. A body that
/// fails resets the stream, so the peer does not take a cut-off body for a whole one.
pub async fn send_body(stream: &MuxStream, mut body: Body) -> Result<u64, SendError> {
    let mut sent = 0u64;
    let mut next = None;
    loop {
        let frame = match next.take() {
            Some(frame) => frame,
            None => poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await,
        };
        match frame {
            None => {
                stream.finish()?;
                return Ok(sent);
            }
            Some(Err(e)) => {
                stream.reset(RESET_BODY, &e.to_string());
                return Err(SendError::Body(e));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    sent += data.len() as u64;
                    if body.is_end_stream() {
                        // A body that knows it has ended (read to its length): its end is taken
                        // now (ready at once; a recorded body publishes there) and the data
                        // carries FIN, rather than an empty frame after it.
                        let end = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
                        if end.is_none() {
                            stream.send_last(&data).await?;
                            return Ok(sent);
                        }
                        next = Some(end);
                    }
                    stream.send(&data).await?;
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        stream
                            .send_head(head::encode_trailers(&trailers), true, true)
                            .await?;
                        return Ok(sent);
                    }
                }
            },
        }
    }
}
