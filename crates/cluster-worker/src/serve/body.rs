//! Response bodies as the serve loops send them: as the application made them, except that
//! an event stream (`text/event-stream`, server-sent events) ends at its turn of the drain,
//! between two events, with the chunked encoding's clean terminator; its client reconnects
//! to a worker of the next generation (`EventSource` does so by itself).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};
use hyper::{Response, header};

use super::activity::InFlight;
use crate::drain::{self, Turn};

pin_project_lite::pin_project! {
    /// A response body the serve loops send; its request is in flight until it is dropped.
    /// `turn`: an event stream's turn of the drain, at which it ends.
    pub(crate) struct ServeBody<B> {
        #[pin]
        body: B,
        turn: Option<Turn>,
        in_flight: InFlight,
    }
}

/// The response with its body wrapped: an event stream gets its turn of the drain now.
pub(crate) fn wrap<B>(response: Response<B>, in_flight: InFlight) -> Response<ServeBody<B>> {
    let events = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/event-stream"));
    response.map(|body| ServeBody {
        body,
        turn: events.then(drain::turn),
        in_flight,
    })
}

impl<B: Body> Body for ServeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(turn) = this.turn
            && Pin::new(turn).poll(cx).is_ready()
        {
            return Poll::Ready(None);
        }
        this.body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.turn {
            None => self.body.size_hint(),
            // Ended early at the drain: no exact length can be promised.
            Some(_) => SizeHint::default(),
        }
    }
}
