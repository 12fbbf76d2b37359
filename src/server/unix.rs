//! The Unix-domain-socket Check listener (`listen.grpc: unix:/path`), for a sidecar next to
//! Envoy. Hardening: the socket's directory is created with mode 0700 (an existing one must
//! not be open to group or others), the socket is 0600, a stale socket is replaced but any
//! other file at the path is refused, and when `listen.unix_allowed_uids` is set, a connecting
//! process whose UID (SO_PEERCRED) is not listed is disconnected before it can send anything.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::telemetry;

/// Why the Unix socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    #[error("cannot create the socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "socket directory {path} has mode {mode:o}, open to group or others; use a directory of cedargate's own with mode 0700"
    )]
    DirPermissions { path: PathBuf, mode: u32 },
    #[error("{0} exists and is not a socket; remove it or choose another listen.grpc path")]
    NotASocket(PathBuf),
    #[error("cannot listen on unix:{path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates the directory (0700) and the socket (0600) at `path`.
pub fn bind(path: &Path) -> Result<UnixListener, UnixError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir_err = |source| UnixError::Dir {
        path: dir.to_owned(),
        source,
    };
    if dir.exists() {
        let mode = std::fs::metadata(dir)
            .map_err(dir_err)?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(UnixError::DirPermissions {
                path: dir.to_owned(),
                mode,
            });
        }
    } else {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A socket left behind by a process that did not shut down cleanly.
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => return Err(UnixError::NotASocket(path.to_owned())),
        Err(_) => {}
    }
    let bind_err = |source| UnixError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Accepted connections whose peer UID is allowed (any, when `allowed_uids` is empty).
pub fn incoming(
    listener: UnixListener,
    allowed_uids: Vec<u32>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<UnixStream>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = sender.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if !allowed_uids.is_empty() {
                let uid = stream.peer_cred().map(|c| c.uid()).ok();
                if !uid.is_some_and(|uid| allowed_uids.contains(&uid)) {
                    telemetry::rejected("peer_uid");
                    tracing::warn!(uid = ?uid, "unix socket peer refused: UID not in listen.unix_allowed_uids");
                    continue;
                }
            }
            if sender.send(Ok(stream)).await.is_err() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}
