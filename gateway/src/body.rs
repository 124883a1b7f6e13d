//! The gateway's body types. `Body`, the one response body: a buffer the gateway wrote, or a
//! function's response streamed through unbuffered (an enum instead of a boxed body keeps the hot
//! path free of an allocation). `ClientBody`, a synchronous call's request body on its way to the
//! function, which remembers whether the client's bytes were at fault.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
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
    broken: Arc<OnceLock<String>>,
}

impl ClientBody {
    /// `inner`, whose first read error lands in `broken`.
    pub fn new(inner: Incoming, broken: Arc<OnceLock<String>>) -> Self {
        Self { inner, broken }
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(error))) = &polled {
            let _ = this.broken.set(error.to_string());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
