//! Byte relay between a sandbox connection and its upstream, half-close aware.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of each direction's copy buffer.
const BUF_SIZE: usize = 16 * 1024;

/// Bytes moved by a relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// From the sandbox client to the upstream.
    pub bytes_up: u64,
    /// From the upstream to the sandbox client.
    pub bytes_down: u64,
}

/// A relay direction failed; the other direction is abandoned and both sockets are closed.
#[derive(Debug, thiserror::Error)]
#[error("relaying {direction} failed after {stats:?}: {source}")]
pub struct RelayError {
    /// `client->upstream` or `upstream->client`.
    pub direction: &'static str,
    /// What had been moved before the failure.
    pub stats: RelayStats,
    /// The socket error.
    #[source]
    pub source: io::Error,
}

/// Copies both ways until both sides have closed their sending half. An EOF from one side is
/// passed on as a shutdown of the other side's write half, so half-closed protocols work.
/// Works on plain TCP and on TLS streams alike.
pub async fn relay<C, U>(client: C, upstream: U) -> Result<RelayStats, RelayError>
where
    C: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut upstream_rx, mut upstream_tx) = tokio::io::split(upstream);
    let mut stats = RelayStats::default();
    let (up_done, down_done) = (AtomicBool::new(false), AtomicBool::new(false));
    let up = Direction {
        name: "client->upstream",
        done: &up_done,
        other_done: &down_done,
    };
    let down = Direction {
        name: "upstream->client",
        done: &down_done,
        other_done: &up_done,
    };
    let result = tokio::try_join!(
        pump(&mut client_rx, &mut upstream_tx, &mut stats.bytes_up, up),
        pump(
            &mut upstream_rx,
            &mut client_tx,
            &mut stats.bytes_down,
            down
        ),
    );
    match result {
        Ok(_) => Ok(stats),
        Err((direction, source)) => Err(RelayError {
            direction,
            stats,
            source,
        }),
    }
}

/// One direction of a relay, and what it knows of the other.
#[derive(Clone, Copy)]
struct Direction<'a> {
    name: &'static str,
    done: &'a AtomicBool,
    other_done: &'a AtomicBool,
}

async fn pump<R, W>(
    rx: &mut R,
    tx: &mut W,
    count: &mut u64,
    dir: Direction<'_>,
) -> Result<(), (&'static str, io::Error)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if is_normal_close(&e, dir) => 0,
            Err(e) => return Err((dir.name, e)),
        };
        if n == 0 {
            dir.done.store(true, Ordering::Release);
            // The peer may be gone already; everything it should get has been written.
            let _ = tx.shutdown().await;
            return Ok(());
        }
        tx.write_all(&buf[..n]).await.map_err(|e| (dir.name, e))?;
        *count += n as u64;
    }
}

/// Read errors that end a direction without losing anything: a TLS peer closing without
/// close_notify (many servers do), or a reset once the other direction has finished (clients
/// that close with unread data, such as our close_notify, reset instead of closing).
fn is_normal_close(err: &io::Error, dir: Direction<'_>) -> bool {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => true,
        io::ErrorKind::ConnectionReset => dir.other_done.load(Ordering::Acquire),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        // client <-> (client_side | relay | upstream_side) <-> upstream
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let relay = tokio::spawn(relay(client_side, upstream_side));

        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");

        // The upstream answers after the client's half-close.
        let body = vec![7u8; 100_000];
        upstream.write_all(&body).await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, body);

        let stats = relay.await.unwrap().unwrap();
        assert_eq!(
            stats,
            RelayStats {
                bytes_up: 7,
                bytes_down: 100_000
            }
        );
    }
}
