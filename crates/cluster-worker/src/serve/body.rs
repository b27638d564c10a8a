//! Response bodies as the serve loops send them: as the application made them, except that
//! an event stream (`text/event-stream`, server-sent events) ends at its turn of the drain,
//! between two events, with the chunked encoding's clean terminator; its client reconnects
//! to a worker of the next generation (`EventSource` does so by itself).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};
use hyper::{Response, header};

use crate::drain::{DrainNotice, drained};

type Turn = Pin<Box<dyn Future<Output = DrainNotice> + Send>>;

pin_project_lite::pin_project! {
    /// A response body the serve loops send.
    #[project = ServeBodyProjection]
    pub(crate) enum ServeBody<B> {
        /// Sent as it is.
        Plain { #[pin] body: B },
        /// An event stream, ended at the drain.
        Events { #[pin] body: B, turn: Turn },
    }
}

/// The response with its body wrapped: an event stream gets its turn of the drain now.
pub(crate) fn wrap<B>(response: Response<B>) -> Response<ServeBody<B>> {
    let events = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    response.map(|body| match events {
        true => ServeBody::Events {
            body,
            turn: Box::pin(drained()),
        },
        false => ServeBody::Plain { body },
    })
}

impl<B: Body> Body for ServeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project() {
            ServeBodyProjection::Plain { body } => body.poll_frame(cx),
            ServeBodyProjection::Events { body, turn } => {
                if turn.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                body.poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Plain { body } | Self::Events { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Plain { body } => body.size_hint(),
            // Ended early at the drain: no exact length can be promised.
            Self::Events { .. } => SizeHint::default(),
        }
    }
}
