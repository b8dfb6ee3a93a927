//! The control socket: a Unix socket (`<state dir>/control.sock`, mode 0600, root peers only)
//! through which `gateway sandbox add|rm|ls`, `status`, `reload`, `down` and `gateway exec`
//! talk to the running daemon. One JSON request per connection, one JSON answer.

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::warn;

/// The socket's name in the state directory.
pub const SOCKET_NAME: &str = "control.sock";
/// The default state directory (socket and sandbox records).
pub const DEFAULT_STATE_DIR: &str = "/run/gateway";
/// The largest request accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a peer may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping daemon waits for answers in flight to be written.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Add a sandbox (a spec as `gateway run --sandbox` takes it).
    SandboxAdd {
        /// The spec.
        spec: String,
    },
    /// Remove a sandbox by name.
    SandboxRm {
        /// Its name.
        name: String,
    },
    /// List the sandboxes.
    SandboxLs,
    /// The daemon's state.
    Status,
    /// Read the config file again.
    Reload,
    /// Detach every sandbox, remove every pin, and stop.
    Down,
}

/// One sandbox, as `sandbox ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStatus {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: u32,
    /// Its cgroup.
    pub cgroup: PathBuf,
    /// Its network namespace, when it has its own.
    pub netns: Option<PathBuf>,
    /// Its listener's port.
    pub listener_port: u16,
    /// Its DNS service's port (0 from a daemon without one).
    #[serde(default)]
    pub dns_port: u16,
    /// DNS queries it asked that were answered.
    #[serde(default)]
    pub dns_answered: u64,
    /// DNS queries it asked for names its policy denies.
    #[serde(default)]
    pub dns_refused: u64,
    /// DNS queries it asked that failed (SERVFAIL and the like).
    #[serde(default)]
    pub dns_failed: u64,
    /// Intercepted TLS ports.
    pub tls_ports: Vec<u16>,
    /// Plain HTTP ports.
    pub http_ports: Vec<u16>,
    /// The secrets it was given.
    pub secrets: Vec<String>,
    /// Its spec, as it would be given again.
    pub spec: String,
    /// Connections of it open now.
    pub connections: usize,
}

/// The daemon's state, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The gateway's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The sandboxes.
    pub sandboxes: usize,
    /// Connections open now, by mode.
    pub connections: Vec<(String, u64)>,
    /// Forged certificates cached now, and generated since the start.
    pub certs_cached: usize,
    /// Certificates generated since the start.
    pub certs_generated: u64,
    /// eBPF and daemon counters.
    pub counters: Vec<(String, u64)>,
    /// DNS queries of the sandboxes served now that were answered.
    #[serde(default)]
    pub dns_answered: u64,
    /// DNS queries of the sandboxes served now for names their policy denies.
    #[serde(default)]
    pub dns_refused: u64,
    /// DNS queries of the sandboxes served now that failed.
    #[serde(default)]
    pub dns_failed: u64,
    /// The pin directory.
    pub pin_dir: PathBuf,
}

/// What a sandbox added through the socket needs to know (`gateway exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    /// The sandbox.
    pub sandbox: SandboxStatus,
    /// The daemon's CA certificate, for the command's trust bundle.
    pub ca_pem: String,
    /// Each given secret's variable and placeholder.
    pub environment: Vec<(String, String)>,
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// A sandbox was added.
    Added(Box<Added>),
    /// A sandbox was removed.
    Removed {
        /// Its name.
        name: String,
    },
    /// The sandboxes.
    Sandboxes(Vec<SandboxStatus>),
    /// The daemon's state.
    Status(Box<Status>),
    /// The config was read again.
    Reloaded,
    /// Everything was detached; the daemon stops.
    Down {
        /// Pins removed.
        removed: usize,
    },
    /// The request failed.
    Error {
        /// Why.
        error: String,
    },
}

/// Errors of the control socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be made, reached or used.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No daemon answers on the socket.
    #[error("no gateway daemon is running (nothing listens on {})", .path.display())]
    NoDaemon {
        /// The socket.
        path: PathBuf,
    },
    /// The answer was not one.
    #[error("the daemon's answer on {} is not valid: {source}", .path.display())]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
}

/// A request on its way to the daemon's main loop, with the way back.
#[derive(Debug)]
pub struct Incoming {
    /// What was asked.
    pub request: Request,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Response>,
}

/// The socket path in `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// Binds the socket (replacing a stale one), mode 0600.
///
/// # Errors
/// [`ControlError::Io`] when it cannot be made.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io_err = |op| {
        let path = path.to_owned();
        move |source| ControlError::Io { op, path, source }
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err("remove the old")(err)),
    }
    let listener = UnixListener::bind(path).map_err(io_err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("restrict"))?;
    Ok(listener)
}

/// Accepts requests and hands each to `requests`, forever (until the receiver is dropped).
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<Incoming>,
    stop: CancellationToken,
) {
    let answering = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(error = %err, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let requests = requests.clone();
        answering.spawn(async move {
            if let Err(err) = answer(stream, &requests).await {
                warn!(error = %err, "control request failed");
            }
        });
    }
    // The answers already decided (`down`'s among them) still reach their clients.
    answering.close();
    drop(requests);
    if tokio::time::timeout(ANSWER_GRACE, answering.wait())
        .await
        .is_err()
    {
        warn!("control requests still unanswered at exit");
    }
}

async fn answer(stream: UnixStream, requests: &mpsc::Sender<Incoming>) -> io::Result<()> {
    let peer = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    if peer.uid() != 0 {
        warn!(uid = peer.uid(), pid = ?peer.pid(), "control socket: refused a peer that is not root");
        let refusal = Response::Error {
            error: format!(
                "the control socket takes requests from root only (you are uid {})",
                peer.uid()
            ),
        };
        return write_response(&mut write, &refusal).await;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))??;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            let (reply, answer) = oneshot::channel();
            if requests.send(Incoming { request, reply }).await.is_err() {
                Response::Error {
                    error: "the daemon is stopping".into(),
                }
            } else {
                answer.await.unwrap_or(Response::Error {
                    error: "the daemon dropped the request".into(),
                })
            }
        }
        Err(err) => Response::Error {
            error: format!("not a control request: {err}"),
        },
    };
    write_response(&mut write, &response).await
}

async fn write_response(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> io::Result<()> {
    let mut text = serde_json::to_string(response).expect("responses always serialize");
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// Sends `request` to the daemon listening on `path` and returns its answer (blocking).
///
/// # Errors
/// [`ControlError::NoDaemon`] when nothing listens; [`ControlError::Io`] and
/// [`ControlError::BadAnswer`] when the exchange fails.
pub fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    use std::io::{BufRead as _, Write as _};
    let io_err = |op| {
        let path = path.to_owned();
        move |source| ControlError::Io { op, path, source }
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NoDaemon { path: path.into() });
        }
        Err(err) => return Err(io_err("connect to")(err)),
    };
    let mut text = serde_json::to_string(request).expect("requests always serialize");
    text.push('\n');
    stream
        .write_all(text.as_bytes())
        .map_err(io_err("write to"))?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io_err("read from"))?;
    serde_json::from_str(&answer).map_err(|source| ControlError::BadAnswer {
        path: path.into(),
        source,
    })
}

/// Whether a daemon answers on `path`.
pub fn daemon_running(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_read_as_json() {
        let request = Request::SandboxAdd {
            spec: "/cg/a,name=a".into(),
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"command":"sandbox_add","spec":"/cg/a,name=a"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let text = serde_json::to_string(&Response::Removed { name: "a".into() }).unwrap();
        assert_eq!(text, r#"{"removed":{"name":"a"}}"#);
        assert!(serde_json::from_str::<Request>(r#"{"command":"rm -rf"}"#).is_err());
    }

    #[tokio::test]
    async fn a_request_travels_to_the_main_loop_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (sender, mut receiver) = mpsc::channel(4);
        tokio::spawn(serve(listener, sender, CancellationToken::new()));
        tokio::spawn(async move {
            while let Some(incoming) = receiver.recv().await {
                let reply = match incoming.request {
                    Request::SandboxRm { name } => Response::Removed { name },
                    _ => Response::Reloaded,
                };
                let _ = incoming.reply.send(reply);
            }
        });
        let client_path = path.clone();
        let answer = tokio::task::spawn_blocking(move || {
            request(&client_path, &Request::SandboxRm { name: "x".into() })
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(answer, Response::Removed { name: "x".into() });
        let missing = dir.path().join("none.sock");
        assert!(matches!(
            request(&missing, &Request::Status),
            Err(ControlError::NoDaemon { .. })
        ));
    }
}
