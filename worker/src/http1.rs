//! The worker's HTTP/1.1 client to functions. Each call drives its own pooled connection from its
//! own task: no connection task, no channel between the two, no buffer the exchange does not
//! need (why, against hyper's pooled client: `docs/dependencies.md`, httparse).
//!
//! What it speaks: `http://` and `https://` URLs (TLS through tokio-rustls on the function TLS
//! set-up, the URL's host as the server name), one request at a time per connection (no
//! pipelining), bodies sent with `Content-Length`, responses framed by `Content-Length`, chunked
//! transfer coding (trailers skipped) or the connection's end; interim 1xx responses are skipped.
//! Connections are pooled by scheme, host and port. A connection goes back to the pool only when
//! its response was read to the end, on HTTP/1.1 without `Connection: close`.
//!
//! Invariant: a request is sent at most once per call of [`Client::send`]. A pooled connection
//! found closed is replaced by a new one only when none of the request went into it; once a byte
//! did, the function may have read the call, and a failure is returned (the attempt's outcome).

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use flotilla_queue::envelope::HOP_BY_HOP;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Largest response head read; a longer one is malformed.
const MAX_HEAD: usize = 64 * 1024;
/// Most response header fields parsed.
const MAX_HEADERS: usize = 128;
/// Largest chunk-size line or trailer section of a chunked response.
const MAX_CHUNK_LINE: usize = 4096;
/// What a response buffer starts with: a function's answer head and a small body fit.
const FIRST_READ: usize = 1024;
/// Why an exchange failed when the function closed the connection before its answer began.
const CLOSED_AFTER_SEND: &str = "the function closed the connection after the request was sent";

/// How the pool keeps connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Idle connections kept per scheme, host and port.
    pub max_idle_per_host: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// Bounds the TCP connect and, for `https://`, the TLS handshake after it (each).
    pub connect_timeout: Duration,
    /// TCP keep-alive probes start after this much silence, so a long call notices a peer gone.
    pub tcp_keepalive: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_idle_per_host: 1024,
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(5),
            tcp_keepalive: Duration::from_secs(60),
        }
    }
}

/// Why an exchange failed. The io errors stay sources, so a worker out of descriptors or ports
/// is recognised through them (`Exhausted::of`), and a refused certificate through
/// `flotilla_runtime::tls_cause`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("connecting to {authority}")]
    Connect {
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {0}: no answer within {1:?}")]
    ConnectTimeout(String, Duration),
    /// The TLS handshake failed: an untrusted, expired or misnamed certificate, or the function
    /// refused ours.
    #[error("TLS handshake with {authority}")]
    Tls {
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("sending the request")]
    Send(#[source] io::Error),
    #[error("reading the response")]
    Receive(#[source] io::Error),
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// A function's answer, read to its end.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request ready to send: the head written out once, the body beside it.
#[derive(Debug)]
pub(crate) struct Request {
    /// `http://host:port` or `https://host:port` as the URL gave it: the pool's key, so a plain
    /// and a TLS connection to one address never stand in for each other.
    origin: String,
    /// `https://`: the connection runs TLS, with `host` as the server name.
    tls: bool,
    host: String,
    port: u16,
    head: Vec<u8>,
    body: Bytes,
    /// HEAD: the response has no body whatever its headers say.
    head_only: bool,
}

/// Header fields the client writes itself or that belong to one hop, never copied from a call:
/// the envelope's hop-by-hop list, and `Expect` (the body is sent at once).
fn is_own_header(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || name == http::header::EXPECT
}

/// Why a call's method or URL cannot form a request; trying again cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("method {0:?}")]
    Method(String),
    /// `reason` is http's own text: its error is not `Clone`, and an outcome is cloned.
    #[error("url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("url {0:?}: only http:// and https:// are supported")]
    Scheme(String),
    #[error("url {0:?}: no host")]
    NoHost(String),
}

impl Request {
    /// The request line and header fields as they go on the wire.
    #[cfg(test)]
    pub(crate) fn head(&self) -> &[u8] {
        &self.head
    }

    /// A request to `url` (`http[s]://host[:port]/path?query`), or why it cannot be made. Header
    /// fields that are not valid HTTP are skipped: the gateway only stores valid ones.
    pub(crate) fn new<'a>(
        method: &str,
        url: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: Bytes,
    ) -> Result<Self, RequestError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| RequestError::Method(method.to_owned()))?;
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| RequestError::Url {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => return Err(RequestError::Scheme(url.to_owned())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| RequestError::NoHost(url.to_owned()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(default_port);
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        head.extend_from_slice(authority.as_str().as_bytes());
        head.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                continue;
            };
            if is_own_header(&name) {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || !matches!(method, Method::GET | Method::HEAD | Method::DELETE) {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(body.len().to_string().as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        head.shrink_to_fit();
        let scheme = if tls { "https://" } else { "http://" };
        let mut origin = String::with_capacity(scheme.len() + authority.as_str().len());
        origin.push_str(scheme);
        origin.push_str(authority.as_str());
        Ok(Self {
            origin,
            tls,
            host: host.to_owned(),
            port,
            head,
            body,
            head_only: method == Method::HEAD,
        })
    }

    /// `host:port` as the URL gave it, for messages.
    fn authority(&self) -> &str {
        let scheme = if self.tls { "https://" } else { "http://" };
        &self.origin[scheme.len()..]
    }
}

/// The pooled client. Cheap to clone; connections are capped by the callers' own limits.
#[derive(Clone)]
pub(crate) struct Client {
    pool: Arc<Pool>,
    /// The function TLS set-up, shared by every `https://` connection.
    tls: TlsConnector,
}

struct Pool {
    settings: Settings,
    idle: Mutex<HashMap<String, VecDeque<Idle>>>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// A socket that remembers whether any byte went into it since it was last told to forget: how
/// a failed write tells "none of the request left" from "the function may have some of it",
/// also under TLS, whose writes reach the socket in records of their own.
struct Sock {
    tcp: TcpStream,
    sent: bool,
}

impl Sock {
    fn note(&mut self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.sent = true;
        }
    }
}

impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.note(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.note(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// A connection to a function: plain TCP, or TLS over TCP. The TLS state is boxed, so a plain
/// connection costs what it did before TLS existed (plus the `sent` flag); a TLS one costs what
/// rustls keeps per connection.
enum Conn {
    Plain(Sock),
    Tls(Box<TlsStream<Sock>>),
}

impl Conn {
    fn sock(&self) -> &Sock {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => t.get_ref().0,
        }
    }

    fn sock_mut(&mut self) -> &mut Sock {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => t.get_mut().0,
        }
    }

    /// Whether an idle pooled connection may carry a request: the peer has not closed it and
    /// has sent nothing unasked. A closed or chattering socket reads something now (its end, an
    /// error, or bytes: a TLS close_notify among them), a live idle one would block; whatever
    /// is read, the connection is dropped. Under TLS, rustls must also hold no close_notify or
    /// unread data it took in with the last response.
    fn is_idle_and_open(&mut self) -> bool {
        if let Self::Tls(t) = self {
            match t.get_mut().1.process_new_packets() {
                Ok(state) if !state.peer_has_closed() && state.plaintext_bytes_to_read() == 0 => {}
                _ => return false,
            }
        }
        matches!(
            self.sock().tcp.try_read(&mut [0u8; 1]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(t) => Pin::new(&mut **t).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(t) => Pin::new(&mut **t).poll_shutdown(cx),
        }
    }
}

impl Client {
    /// A client whose idle connections are closed after `idle_timeout` by a sweeper that ends
    /// with the client, and whose `https://` connections use `tls` (built once at start from
    /// the function TLS flags). Needs a Tokio runtime.
    pub(crate) fn new(settings: Settings, tls: Arc<rustls::ClientConfig>) -> Self {
        let pool = Arc::new(Pool {
            settings,
            idle: Mutex::new(HashMap::new()),
        });
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        Self {
            pool,
            tls: TlsConnector::from(tls),
        }
    }

    /// Sends `req` and reads the whole response, sending the request at most once. A pooled
    /// connection found closed before any byte of the request went into it (the function's
    /// server closed it while idle; the write failed at once) is given up and another one
    /// tried: the function cannot have seen the request. Once a byte went in, any failure is
    /// returned: the function may have read the call, and only a counted attempt may send it
    /// again.
    pub(crate) async fn send(&self, req: &Request) -> Result<Response, Error> {
        loop {
            let (mut conn, reused) = match self.pool.checkout(&req.origin) {
                Some(c) => (c, true),
                None => (self.connect(req).await?, false),
            };
            match exchange(&mut conn, req).await {
                Ok((resp, reusable)) => {
                    if reusable {
                        self.pool.checkin(&req.origin, conn);
                    }
                    return Ok(resp);
                }
                Err(failure) if reused && failure.never_left() => continue,
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// A new connection, TLS set up for `https://`: the TCP connect and the handshake each
    /// within the connect timeout.
    async fn connect(&self, req: &Request) -> Result<Conn, Error> {
        let s = self.pool.settings;
        let connect = TcpStream::connect((req.host.as_str(), req.port));
        let tcp = tokio::time::timeout(s.connect_timeout, connect)
            .await
            .map_err(|_| Error::ConnectTimeout(req.authority().to_owned(), s.connect_timeout))?
            .map_err(|source| Error::Connect {
                authority: req.authority().to_owned(),
                source,
            })?;
        // Best effort: a socket without these still works.
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(s.tcp_keepalive);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let sock = Sock { tcp, sent: false };
        if !req.tls {
            return Ok(Conn::Plain(sock));
        }
        // Boxed: the handshake's state is large and comes once per connection; held in place it
        // would enlarge every call's task, plain ones included.
        Box::pin(self.handshake(req, sock)).await
    }

    /// TLS over a new socket. The server name (SNI, and the name the certificate must cover) is
    /// the URL's host; an IP address is checked against the certificate's IP addresses.
    async fn handshake(&self, req: &Request, sock: Sock) -> Result<Conn, Error> {
        let tls_error = |source: io::Error| Error::Tls {
            authority: req.authority().to_owned(),
            source,
        };
        let name = ServerName::try_from(req.host.clone())
            .map_err(|e| tls_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let timeout = self.pool.settings.connect_timeout;
        let stream = tokio::time::timeout(timeout, self.tls.connect(name, sock))
            .await
            .map_err(|_| Error::ConnectTimeout(req.authority().to_owned(), timeout))?
            .map_err(tls_error)?;
        Ok(Conn::Tls(Box::new(stream)))
    }
}

/// Whether an error means the peer had closed the connection.
fn is_closed(error: &Error) -> bool {
    let (Error::Send(e) | Error::Receive(e)) = error else {
        return false;
    };
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

impl Pool {
    /// The most recently used live connection to `origin`, if any; expired and closed ones are
    /// dropped.
    fn checkout(&self, origin: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(origin)?;
        let fresh_after = Instant::now().checked_sub(self.settings.idle_timeout);
        while let Some(mut entry) = conns.pop_back() {
            if fresh_after.is_some_and(|t| entry.since < t) {
                // The rest are older still.
                conns.clear();
                break;
            }
            if entry.conn.is_idle_and_open() {
                return Some(entry.conn);
            }
        }
        None
    }

    fn checkin(&self, origin: &str, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = match idle.get_mut(origin) {
            Some(c) => c,
            None => idle.entry(origin.to_owned()).or_default(),
        };
        if conns.len() < self.settings.max_idle_per_host {
            conns.push_back(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections idle for longer than the timeout.
    fn expire(&self) {
        let Some(fresh_after) = Instant::now().checked_sub(self.settings.idle_timeout) else {
            return;
        };
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, conns| {
            while conns.front().is_some_and(|c| c.since < fresh_after) {
                conns.pop_front();
            }
            if conns.capacity() > 4 * conns.len().max(4) {
                conns.shrink_to_fit();
            }
            !conns.is_empty()
        });
    }
}

async fn sweep(pool: Weak<Pool>) {
    let every = match pool.upgrade() {
        Some(p) => (p.settings.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(p) => p.expire(),
            None => return,
        }
    }
}

/// A failed exchange, and whether any byte of the request had gone into the connection.
struct Failure {
    error: Error,
    sent: bool,
}

impl Failure {
    /// A failure after the request went out, in part or whole.
    fn after_send(error: Error) -> Self {
        Self { error, sent: true }
    }

    /// Whether the connection turned out closed before any of the request went into it: the
    /// one failure another connection may make up for without the function seeing the call
    /// twice.
    fn never_left(&self) -> bool {
        !self.sent && is_closed(&self.error)
    }
}

/// One request and its whole response on `conn`; the flag says whether the connection may
/// carry another.
async fn exchange(conn: &mut Conn, req: &Request) -> Result<(Response, bool), Failure> {
    conn.sock_mut().sent = false;
    if let Err(e) = write_request(conn, &req.head, &req.body).await {
        let sent = conn.sock().sent;
        return Err(Failure {
            error: Error::Send(e),
            sent,
        });
    }
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    let head = loop {
        match parse_head(&buf).map_err(Failure::after_send)? {
            // Interim responses (100 Continue, 103 Early Hints) are read past.
            Some(head)
                if head.status.is_informational()
                    && head.status != StatusCode::SWITCHING_PROTOCOLS =>
            {
                buf.advance(head.len);
                continue;
            }
            Some(head) => break head,
            None if buf.len() > MAX_HEAD => {
                return Err(Failure::after_send(Error::Malformed(format!(
                    "response head over {MAX_HEAD} bytes"
                ))));
            }
            None => {}
        }
        match read_more(conn, &mut buf, FIRST_READ).await {
            Ok(n) if n > 0 => {}
            // The end, or a TLS connection's end without close_notify.
            Ok(_) => return Err(Failure::after_send(closed_early(&buf))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(Failure::after_send(closed_early(&buf)));
            }
            Err(e) => return Err(Failure::after_send(Error::Receive(e))),
        }
    };
    buf.advance(head.len);
    let framing = if req.head_only
        || head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else {
        head.framing
    };
    let (body, complete) = read_body(conn, buf, framing)
        .await
        .map_err(Failure::after_send)?;
    let reusable = complete && head.keep_alive && head.status != StatusCode::SWITCHING_PROTOCOLS;
    Ok((
        Response {
            status: head.status,
            headers: head.headers,
            body,
        },
        reusable,
    ))
}

/// The connection ended before a whole response head arrived: `buf` holds what did.
fn closed_early(buf: &[u8]) -> Error {
    let why = if buf.is_empty() {
        CLOSED_AFTER_SEND.to_owned()
    } else {
        format!("{CLOSED_AFTER_SEND}, inside the response head")
    };
    Error::Receive(io::Error::new(io::ErrorKind::UnexpectedEof, why))
}

/// Writes the head and the body with as few system calls as the socket takes, and flushes (TLS
/// may hold the last record until then).
async fn write_request(conn: &mut Conn, head: &[u8], body: &[u8]) -> io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() {
        let n = conn
            .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    conn.write_all(body).await?;
    conn.flush().await
}

/// Reads what the connection has into `buf`, making room for at least `room` more bytes first.
async fn read_more(conn: &mut Conn, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
    if buf.capacity() - buf.len() < room {
        buf.reserve(room);
    }
    conn.read_buf(buf).await
}

/// Reads more of a response that must go on; the connection's end here is an error.
async fn read_on(
    conn: &mut Conn,
    buf: &mut BytesMut,
    room: usize,
    place: &str,
) -> Result<(), Error> {
    match read_more(conn, buf, room).await {
        Ok(0) => Err(Error::Receive(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("closed {place}"),
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Receive(e)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
    /// Bytes of the head, blank line included.
    len: usize,
}

/// The response head at the start of `buf`, or `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Malformed(e.to_string())),
    };
    let code = parsed.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|_| Error::Malformed(format!("status code {code}")))?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = parsed.version != Some(1);
    for f in parsed.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| Error::Malformed(format!("header name {:?}", f.name)))?;
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| Error::Malformed(format!("value of header {name}")))?;
        if name == http::header::CONTENT_LENGTH {
            let n = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::Malformed("content-length is not a number".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Malformed("two different content-lengths".into()));
            }
            length = Some(n);
        } else if name == http::header::TRANSFER_ENCODING {
            // Chunked is the last coding when present at all.
            chunked = value
                .to_str()
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name == http::header::CONNECTION {
            close |= value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        }
        headers.append(name, value);
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Close,
    };
    Ok(Some(Head {
        status,
        headers,
        framing,
        keep_alive: !close && framing != Framing::Close,
        len,
    }))
}

/// Reads the body that follows the head (part of it already in `buf`). The flag says whether it
/// ended exactly where the response did, so the connection may carry another request.
async fn read_body(
    conn: &mut Conn,
    mut buf: BytesMut,
    framing: Framing,
) -> Result<(Bytes, bool), Error> {
    match framing {
        Framing::Length(n) => {
            let n = usize::try_from(n)
                .map_err(|_| Error::Malformed(format!("content-length {n} too large")))?;
            while buf.len() < n {
                let missing = n - buf.len();
                read_on(conn, &mut buf, missing, "before the body's end").await?;
            }
            let body = buf.split_to(n).freeze();
            Ok((body, buf.is_empty()))
        }
        Framing::Close => {
            loop {
                match read_more(conn, &mut buf, FIRST_READ).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    // A TLS server that ends the body by closing without close_notify: the body
                    // ends there, as the same close would end it over plain TCP.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(Error::Receive(e)),
                }
            }
            Ok((buf.freeze(), false))
        }
        Framing::Chunked => {
            let mut body = BytesMut::new();
            let mut state = Chunked::Size;
            loop {
                state = decode_chunks(state, &mut buf, &mut body)?;
                if state == Chunked::Done {
                    return Ok((body.freeze(), buf.is_empty()));
                }
                read_on(conn, &mut buf, FIRST_READ, "inside a chunked body").await?;
            }
        }
    }
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until a blank one.
    Trailers,
    Done,
}

/// Decodes what `buf` holds of a chunked body into `body`, consuming it, and says where the
/// decoding stands; anything but `Done` needs more input.
fn decode_chunks(
    mut state: Chunked,
    buf: &mut BytesMut,
    body: &mut BytesMut,
) -> Result<Chunked, Error> {
    loop {
        state = match state {
            Chunked::Size | Chunked::Trailers => {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(Error::Malformed("chunk line too long".into()));
                    }
                    return Ok(state);
                };
                let line = buf.split_to(end + 2);
                let line = &line[..end];
                if state == Chunked::Trailers {
                    if line.is_empty() {
                        Chunked::Done
                    } else {
                        Chunked::Trailers
                    }
                } else {
                    let size = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(size)
                        .ok()
                        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                        .ok_or_else(|| Error::Malformed("chunk size is not hexadecimal".into()))?;
                    if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    }
                }
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(state);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                body.extend_from_slice(&buf.split_to(take));
                let left = left - take as u64;
                if left == 0 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left)
                }
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(state);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Malformed("chunk not followed by CRLF".into()));
                }
                buf.advance(2);
                Chunked::Size
            }
            Chunked::Done => return Ok(Chunked::Done),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;

    use super::*;

    /// A function server on loopback that answers the n-th request (counted across
    /// connections) with `answer(n)`: the bytes to write, in pieces of `piece` bytes, and whether
    /// to close the connection afterwards.
    struct Server {
        url: String,
        accepted: Arc<AtomicUsize>,
        /// Connections the server has closed (its side dropped).
        closed: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    /// The bytes that answer the n-th request, and whether the connection closes after them.
    type Answer = fn(usize) -> (Vec<u8>, bool);

    async fn server(piece: usize, answer: Answer) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (acc, done, reqs) = (accepted.clone(), closed.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let (reqs, done) = (reqs.clone(), done.clone());
                tokio::spawn(async move {
                    answer_all(conn, &reqs, piece, answer).await;
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Server {
            url,
            accepted,
            closed,
            requests,
        }
    }

    /// Answers the requests of one connection until `answer` says close or the client leaves;
    /// the connection is closed when this returns.
    async fn answer_all(
        mut conn: TcpStream,
        reqs: &Mutex<Vec<String>>,
        piece: usize,
        answer: Answer,
    ) {
        let mut buf = BytesMut::new();
        while let Some(req) = read_request(&mut conn, &mut buf).await {
            let n = {
                let mut r = reqs.lock().unwrap();
                r.push(req);
                r.len() - 1
            };
            let (bytes, close) = answer(n);
            for part in bytes.chunks(piece) {
                if conn.write_all(part).await.is_err() {
                    return;
                }
            }
            if close {
                return;
            }
        }
    }

    /// One whole request (head and `content-length` body) as text, or `None` at the end.
    async fn read_request(conn: &mut TcpStream, buf: &mut BytesMut) -> Option<String> {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut fields);
            if let Ok(httparse::Status::Complete(len)) = req.parse(buf) {
                let body = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                    });
                if buf.len() >= len + body {
                    let whole = buf.split_to(len + body);
                    return Some(String::from_utf8(whole.to_vec()).unwrap());
                }
            }
            if conn.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// A TLS set-up that trusts nothing: these tests speak plain HTTP.
    fn no_roots() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Arc::new(config)
    }

    fn client() -> Client {
        Client::new(Settings::default(), no_roots())
    }

    fn post(url: &str, body: &'static str) -> Request {
        let headers = [
            ("X-Call-Id", "c1"),
            ("Connection", "close"),
            ("bad name", "x"),
        ];
        Request::new(
            "POST",
            &format!("{url}/function/echo?x=1"),
            headers,
            Bytes::from(body),
        )
        .unwrap()
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Out: 1\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn writes_the_request_and_reuses_the_connection() {
        let s = server(3, |n| (ok(&format!("answer {n}")), false)).await;
        let c = client();
        for n in 0..3 {
            let resp = c.send(&post(&s.url, "hello")).await.unwrap();
            assert_eq!(resp.status, StatusCode::OK);
            assert_eq!(resp.headers["x-out"], "1");
            assert_eq!(resp.body, format!("answer {n}"));
        }
        assert_eq!(
            s.accepted.load(Ordering::SeqCst),
            1,
            "one connection for three calls"
        );
        let authority = s.url.trim_start_matches("http://");
        let first = s.requests.lock().unwrap()[0].clone();
        assert_eq!(
            first,
            format!(
                "POST /function/echo?x=1 HTTP/1.1\r\nhost: {authority}\r\nx-call-id: c1\r\n\
                 content-length: 5\r\n\r\nhello"
            ),
            "the call's hop-by-hop and invalid fields are not sent"
        );
    }

    #[tokio::test]
    async fn reads_chunked_bodies_with_extensions_and_trailers() {
        let s = server(1, |_| {
            let r = "HTTP/1.1 201 Created\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                     5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n";
            (r.as_bytes().to_vec(), false)
        })
        .await;
        let c = client();
        for _ in 0..2 {
            let resp = c.send(&post(&s.url, "")).await.unwrap();
            assert_eq!(resp.status, StatusCode::CREATED);
            assert_eq!(resp.body, "hello world");
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_ended_by_close_is_read_whole_and_the_connection_not_kept() {
        let s = server(4, |_| {
            (b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec(), true)
        })
        .await;
        let c = client();
        for _ in 0..2 {
            let resp = c.send(&post(&s.url, "")).await.unwrap();
            assert_eq!(resp.body, "until the end");
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_head_has_no_body() {
        let s = server(64, |_| {
            let r = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n\
                     HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            (r.as_bytes().to_vec(), false)
        })
        .await;
        let resp = client().send(&post(&s.url, "x")).await.unwrap();
        assert_eq!((resp.status, &resp.body[..]), (StatusCode::OK, &b"ok"[..]));

        let s = server(64, |_| {
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n".to_vec(),
                false,
            )
        })
        .await;
        let c = client();
        let head = Request::new("HEAD", &s.url, [], Bytes::new()).unwrap();
        for _ in 0..2 {
            let resp = c.send(&head).await.unwrap();
            assert_eq!((resp.status, resp.body.len()), (StatusCode::OK, 0));
        }
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_keep_alive_connection_the_server_closed_while_idle_is_replaced_silently() {
        // Answers like a keep-alive server, then closes: the pool holds a closed connection.
        let s = server(64, |n| (ok(&n.to_string()), true)).await;
        let c = client();
        assert_eq!(c.send(&post(&s.url, "a")).await.unwrap().body, "0");
        flotilla_testsupport::wait_until(Duration::from_secs(5), "the server closed", || {
            s.closed.load(Ordering::SeqCst) == 1
        })
        .await;
        let resp = c.send(&post(&s.url, "b")).await.unwrap();
        assert_eq!(resp.body, "1", "the call succeeds on a new connection");
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(
            s.requests.lock().unwrap().len(),
            2,
            "each call reached the server once"
        );
    }

    #[tokio::test]
    async fn a_connection_dropped_after_the_request_was_read_is_an_error_not_a_second_send() {
        // The first request is answered on a keep-alive connection; the second is read, then
        // the connection dropped without an answer (a function that crashed on the call).
        let s = server(64, |n| match n {
            1 => (Vec::new(), true),
            _ => (ok(&n.to_string()), false),
        })
        .await;
        let c = client();
        assert_eq!(c.send(&post(&s.url, "a")).await.unwrap().body, "0");
        let err = c.send(&post(&s.url, "b")).await.unwrap_err();
        let Error::Receive(cause) = &err else {
            panic!("{err:?}")
        };
        assert!(
            cause.to_string().contains("after the request was sent"),
            "{cause}"
        );
        assert_eq!(
            s.requests.lock().unwrap().len(),
            2,
            "the call that reached the function was not sent again"
        );
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
        // The next call goes out on a new connection.
        assert_eq!(c.send(&post(&s.url, "c")).await.unwrap().body, "2");
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_write_refused_before_any_byte_left_is_the_one_replaceable_failure() {
        // The peer resets the connection before the request: the kernel refuses the first
        // write, so nothing of it went out.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (peer, _) = listener.accept().await.unwrap();
            // Linger zero: close with a reset, not a FIN.
            socket2::SockRef::from(&peer)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(peer);
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        accept.await.unwrap();
        tcp.readable().await.unwrap();
        let mut conn = Conn::Plain(Sock { tcp, sent: false });
        let req = post(&format!("http://{addr}"), "x");
        let Err(failure) = exchange(&mut conn, &req).await else {
            panic!("the exchange on a reset connection succeeded")
        };
        assert!(!failure.sent, "{:?}", failure.error);
        assert!(failure.never_left(), "{:?}", failure.error);

        let closed = || Error::Receive(io::ErrorKind::UnexpectedEof.into());
        assert!(!Failure::after_send(closed()).never_left());
        let malformed = Failure {
            error: Error::Malformed("x".into()),
            sent: false,
        };
        assert!(!malformed.never_left());
    }

    #[tokio::test]
    async fn connection_errors_keep_their_io_cause() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = client().send(&post(&url, "")).await.unwrap_err();
        let Error::Connect { source, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
        assert!(std::error::Error::source(&err).is_some());
    }

    #[tokio::test]
    async fn a_server_that_does_not_speak_tls_fails_the_handshake_and_says_so() {
        // A plain HTTP server where TLS is expected: it answers the ClientHello with HTTP.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            let _ = peer.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        });
        let err = client().send(&post(&url, "")).await.unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err:?}");
        assert!(flotilla_runtime::tls_cause(&err).is_some(), "{err:?}");
    }

    #[tokio::test]
    async fn malformed_and_truncated_responses_are_errors() {
        let cases: [Answer; 4] = [
            |_| (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), true),
            |_| {
                (
                    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec(),
                    true,
                )
            },
            |_| {
                (
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                    true,
                )
            },
            |_| {
                let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
                r.extend(std::iter::repeat_n(b"X-Long: 0123456789\r\n", 5000).flatten());
                (r, true)
            },
        ];
        for answer in cases {
            let s = server(4096, answer).await;
            let err = client().send(&post(&s.url, "")).await.unwrap_err();
            assert!(
                matches!(err, Error::Malformed(_) | Error::Receive(_)),
                "{err:?}"
            );
        }
        let s = server(64, |_| (Vec::new(), true)).await;
        let err = client().send(&post(&s.url, "")).await.unwrap_err();
        assert!(is_closed(&err), "{err:?}");
        assert_eq!(s.requests.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn idle_connections_expire_and_the_pool_keeps_at_most_its_share() {
        let s = server(64, |_| (ok("x"), false)).await;
        let c = Client::new(
            Settings {
                max_idle_per_host: 1,
                ..Settings::default()
            },
            no_roots(),
        );
        let (ra, rb) = (post(&s.url, ""), post(&s.url, ""));
        let (a, b) = tokio::join!(c.send(&ra), c.send(&rb));
        a.unwrap();
        b.unwrap();
        let idle = |c: &Client| {
            c.pool
                .idle
                .lock()
                .unwrap()
                .get(&s.url)
                .map_or(0, VecDeque::len)
        };
        assert_eq!(idle(&c), 1, "two connections were used, one is kept");
        for conn in c.pool.idle.lock().unwrap().values_mut().flatten() {
            conn.since = Instant::now().checked_sub(Duration::from_secs(91)).unwrap();
        }
        c.pool.expire();
        assert_eq!(idle(&c), 0);
    }

    #[test]
    fn requests_refuse_what_cannot_be_sent() {
        let r = |m, u| {
            Request::new(m, u, [], Bytes::new())
                .unwrap_err()
                .to_string()
        };
        assert!(r("POST", "ftp://f/").contains("only http:// and https://"));
        assert!(r("BAD METHOD", "http://f/").contains("method"));
        assert!(r("POST", "/relative").contains("only http:// and https://"));
        let get = Request::new("GET", "http://[::1]:81", [], Bytes::new()).unwrap();
        assert_eq!((get.host.as_str(), get.port, get.tls), ("::1", 81, false));
        assert_eq!(get.head, b"GET / HTTP/1.1\r\nhost: [::1]:81\r\n\r\n");
        assert_eq!(get.origin, "http://[::1]:81");
        let tls = Request::new("GET", "https://fn.example/x", [], Bytes::new()).unwrap();
        assert_eq!(
            (tls.host.as_str(), tls.port, tls.tls),
            ("fn.example", 443, true)
        );
        assert_eq!(
            (tls.origin.as_str(), tls.authority()),
            ("https://fn.example", "fn.example")
        );
        assert_eq!(tls.head, b"GET /x HTTP/1.1\r\nhost: fn.example\r\n\r\n");
    }
}
