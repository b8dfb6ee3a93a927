//! The operator's commands to a running daemon: `gateway sandbox add|rm|ls`, `status`,
//! `reload`, `down`, each as text or (`--json`) JSON, through the control socket.

use std::{fmt::Write as _, path::Path};

use gateway_proto::sandbox_spec::SandboxSpec;

use crate::{
    cli::{DownArgs, SandboxAddArgs, SandboxCommand},
    control::{self, ControlError, Request, Response, SandboxStatus, Status},
    ebpf::{PinDir, pins::PinError},
    state::{StateError, StateFile},
};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The daemon could not be asked.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The daemon refused.
    #[error("{0}")]
    Refused(String),
    /// The daemon answered something else than asked.
    #[error("the daemon gave an unexpected answer: {0}")]
    Unexpected(String),
    /// `down` without a daemon: the pins could not be removed.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// `down` without a daemon: the state file could not be removed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// `gateway sandbox ...`; returns what to print.
pub fn sandbox(state_dir: &Path, command: SandboxCommand) -> Result<String, AdminError> {
    let socket = control::socket_path(state_dir);
    match command {
        SandboxCommand::Add(args) => {
            let json = args.json.json;
            let spec = spec_of(*args)?;
            match ask(
                &socket,
                &Request::SandboxAdd {
                    spec: spec.to_string(),
                },
            )? {
                Response::Added(added) if json => Ok(to_json(&added.sandbox)),
                Response::Added(added) => Ok(format!("added {}\n", line(&added.sandbox))),
                other => Err(unexpected(&other)),
            }
        }
        SandboxCommand::Rm { name, json } => match ask(&socket, &Request::SandboxRm { name })? {
            Response::Removed { name } if json.json => {
                Ok(to_json(&serde_json::json!({"removed": name})))
            }
            Response::Removed { name } => Ok(format!("removed {name}\n")),
            other => Err(unexpected(&other)),
        },
        SandboxCommand::Ls(json) => match ask(&socket, &Request::SandboxLs)? {
            Response::Sandboxes(list) if json.json => Ok(to_json(&list)),
            Response::Sandboxes(list) => {
                Ok(list.iter().map(|s| format!("{}\n", line(s))).collect())
            }
            other => Err(unexpected(&other)),
        },
    }
}

/// `gateway status`.
pub fn status(state_dir: &Path, json: bool) -> Result<String, AdminError> {
    match ask(&control::socket_path(state_dir), &Request::Status)? {
        Response::Status(status) if json => Ok(to_json(&status)),
        Response::Status(status) => Ok(status_text(&status)),
        other => Err(unexpected(&other)),
    }
}

/// `gateway reload`.
pub fn reload(state_dir: &Path) -> Result<String, AdminError> {
    match ask(&control::socket_path(state_dir), &Request::Reload)? {
        Response::Reloaded => Ok("config reloaded\n".to_owned()),
        other => Err(unexpected(&other)),
    }
}

/// `gateway down`: through the daemon when one runs, else on the pins directly.
pub fn down(state_dir: &Path, args: &DownArgs) -> Result<String, AdminError> {
    match ask(&control::socket_path(state_dir), &Request::Down) {
        Ok(Response::Down { removed }) => Ok(format!("daemon stopped; {removed} pins removed\n")),
        Ok(other) => Err(unexpected(&other)),
        Err(AdminError::Control(ControlError::NoDaemon { .. })) => down_offline(state_dir, args),
        Err(err) => Err(err),
    }
}

/// No daemon runs: remove the pins (detaching every sandbox) and the remembered sandboxes.
fn down_offline(state_dir: &Path, args: &DownArgs) -> Result<String, AdminError> {
    StateFile::in_dir(state_dir)?.remove()?;
    if !args.pin_dir.exists() {
        return Ok(format!("nothing pinned in {}\n", args.pin_dir.display()));
    }
    let removed = PinDir::create(&args.pin_dir)?.remove_all()?;
    Ok(format!(
        "{} pins removed from {}; every sandbox detached\n",
        removed.len(),
        args.pin_dir.display()
    ))
}

fn spec_of(args: SandboxAddArgs) -> Result<SandboxSpec, AdminError> {
    let mut spec = SandboxSpec::new(args.cgroup);
    spec.netns = args.netns;
    spec.name = args.name;
    spec.policy = args
        .policy
        .overrides()
        .map_err(|err| AdminError::Refused(format!("--port/--http-port: {err}")))?;
    spec.secrets = args.secrets;
    Ok(spec)
}

fn ask(socket: &Path, request: &Request) -> Result<Response, AdminError> {
    match control::request(socket, request)? {
        Response::Error { error } => Err(AdminError::Refused(error)),
        response => Ok(response),
    }
}

fn unexpected(response: &Response) -> AdminError {
    AdminError::Unexpected(serde_json::to_string(response).unwrap_or_default())
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("answers always serialize");
    text.push('\n');
    text
}

/// One sandbox on one line.
fn line(sandbox: &SandboxStatus) -> String {
    format!(
        "{name}  id={id} cgroup={cgroup} netns={netns} listener={port} dns={dns_port} tls_ports={tls:?} http_ports={http:?} secrets={secrets:?} connections={conns} dns_answered={answered} dns_refused={refused}",
        name = sandbox.name,
        id = sandbox.id,
        cgroup = sandbox.cgroup.display(),
        netns = sandbox
            .netns
            .as_deref()
            .map_or_else(|| "host".to_owned(), |p| p.display().to_string()),
        port = sandbox.listener_port,
        dns_port = sandbox.dns_port,
        answered = sandbox.dns_answered,
        refused = sandbox.dns_refused,
        tls = sandbox.tls_ports,
        http = sandbox.http_ports,
        secrets = sandbox.secrets,
        conns = sandbox.connections,
    )
}

fn status_text(status: &Status) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "gateway {} up {}s, pins in {}",
        status.version,
        status.uptime_secs,
        status.pin_dir.display()
    );
    let _ = writeln!(text, "sandboxes: {}", status.sandboxes);
    let open: Vec<String> = status
        .connections
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(mode, n)| format!("{mode}={n}"))
        .collect();
    let _ = writeln!(
        text,
        "open connections: {}",
        if open.is_empty() {
            "none".into()
        } else {
            open.join(" ")
        }
    );
    let _ = writeln!(
        text,
        "certificates: {} cached, {} generated",
        status.certs_cached, status.certs_generated
    );
    let counters: Vec<String> = status
        .counters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(text, "counters: {}", counters.join(" "));
    let _ = writeln!(
        text,
        "dns queries: answered={} refused={} failed={}",
        status.dns_answered, status.dns_refused, status.dns_failed
    );
    text
}
