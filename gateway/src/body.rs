//! The gateway's body types. `Body`, the one response body: a buffer the gateway wrote, or a
//! function's response streamed through unbuffered (an enum instead of a boxed body keeps the hot
//! path free of an allocation). `ClientBody`, a synchronous call's request body on its way to the
//! function, which keeps the client's read error (`Broken`) when the client's bytes were at fault.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};

#[derive(Debug)]
pub enum Body {
    /// A complete body; `None` once sent (or when empty).
    Full(Option<Bytes>),
    /// A function's response body, passed through as it arrives.
    Upstream(Incoming),
    /// Chunks written by a task as they are ready (a batch's results, a line each).
    Stream(tokio::sync::mpsc::UnboundedReceiver<Bytes>),
}

impl Body {
    pub fn empty() -> Self {
        Self::Full(None)
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Self::Full(None)
        } else {
            Self::Full(Some(bytes))
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream(incoming) => Pin::new(incoming).poll_frame(cx),
            Self::Stream(chunks) => chunks.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Upstream(incoming) => incoming.is_end_stream(),
            Self::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upstream(incoming) => incoming.size_hint(),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}

/// The client's request body on its way to the function, remembering why reading it failed: a
/// malformed or cut-off body is the client's fault (400), not the function's (502).
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    broken: Broken,
}

/// Where a [`ClientBody`] leaves its first read error, for the request's owner to take.
#[derive(Debug, Clone, Default)]
pub struct Broken(Arc<Mutex<Option<hyper::Error>>>);

impl Broken {
    /// The client body's read error, when it broke.
    pub fn take(&self) -> Option<hyper::Error> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn set(&self, error: hyper::Error) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(error);
        }
    }
}

impl ClientBody {
    /// `inner`, whose first read error lands in `broken`.
    pub fn new(inner: Incoming, broken: Broken) -> Self {
        Self { inner, broken }
    }
}

/// What the function's client hears when the client's body broke; the error itself waits in
/// [`Broken`].
#[derive(Debug, thiserror::Error)]
#[error("the client's request body broke")]
pub struct BodyBroke;

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = BodyBroke;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyBroke>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(error))) => {
                this.broken.set(error);
                Poll::Ready(Some(Err(BodyBroke)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
