//! The one accept loop of every HTTP server in the fleet (gateway, worker admin, loadgen, test
//! servers): it hands each accepted connection on and backs off when `accept` fails.
//! Invariant: an accept error never ends the loop; only `stop` does.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, TcpStream};

/// How long the loop waits after a failed accept (out of file descriptors and the like), so it
/// does not spin while the process is short of them.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `stop` completes, giving each to `on_connection`
/// (which spawns whatever serves it), and returns what `stop` returned. Connections already
/// handed on are not touched: their owner decides when they end.
pub async fn accept_until<S: Future>(
    listener: &TcpListener,
    stop: S,
    mut on_connection: impl FnMut(TcpStream, SocketAddr),
) -> S::Output {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            out = &mut stop => return out,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => on_connection(stream, peer),
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// An HTTP/1.1 connection builder with the timer hyper needs and a deadline for the request
/// head, so a client that connects and sends nothing does not hold a connection for ever.
pub fn http1_server(header_read_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_on_each_connection_and_returns_what_stop_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<u8>();
        let server = tokio::spawn(async move {
            accept_until(
                &listener,
                async { stop_rx.await.unwrap() },
                |stream, peer| {
                    tx.send((stream, peer)).unwrap();
                },
            )
            .await
        });
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        for client in &clients {
            let (_, peer) = rx.recv().await.unwrap();
            assert_eq!(peer, client.local_addr().unwrap(), "handed on in order");
        }
        stop_tx.send(7).unwrap();
        assert_eq!(server.await.unwrap(), 7);
    }
}
