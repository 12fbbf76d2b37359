//! The Unix-domain-socket Check listener (`listen.grpc: unix:/path`), for a sidecar next to
//! Envoy. Hardening: the socket's directory is created with mode 0700 (0750 with
//! `listen.unix_group_access`, for an Envoy of another UID in a shared group); an existing one
//! must belong to cedargate's user and not be open to others (nor to the group, without group
//! access). The socket is 0600 (0660). A stale socket is replaced, but a live one (another
//! instance answers) or any other file at the path is refused; at shutdown only the socket
//! this process created is removed. When `listen.unix_allowed_uids` is set, a connecting
//! process whose UID (SO_PEERCRED) is not listed is disconnected before it can send anything.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
    #[error(
        "socket directory {path} belongs to UID {owner}, not to cedargate's UID {me}; use a directory of cedargate's own"
    )]
    DirOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("{0} exists and is not a socket; remove it or choose another listen.grpc path")]
    NotASocket(PathBuf),
    #[error(
        "{0} is in use by a running process (another cedargate?); stop it or choose another path"
    )]
    InUse(PathBuf),
    #[error("cannot listen on unix:{path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The socket file this process created: removed at shutdown only if it is still this one.
#[derive(Debug, Clone)]
pub struct BoundSocket {
    pub path: PathBuf,
    /// Device, inode and change time: an inode number alone may be reused at once.
    identity: (u64, u64, i64, i64),
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

impl BoundSocket {
    /// Removes the socket unless another process has replaced it since.
    pub fn remove(&self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| identity(&m) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates the directory and the socket at `path` with the modes above.
pub fn bind(path: &Path, group_access: bool) -> Result<(UnixListener, BoundSocket), UnixError> {
    let (dir_mode, socket_mode, forbidden) = if group_access {
        (0o750, 0o660, 0o007)
    } else {
        (0o700, 0o600, 0o077)
    };
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
        if mode & forbidden != 0 {
            return Err(UnixError::DirPermissions {
                path: dir.to_owned(),
                mode,
            });
        }
    } else {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(dir)
            .map_err(dir_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(UnixError::InUse(path.to_owned()));
            }
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))
        .map_err(bind_err)?;
    let socket = std::fs::symlink_metadata(path).map_err(bind_err)?;
    let bound = BoundSocket {
        path: path.to_owned(),
        identity: identity(&socket),
    };
    // The socket belongs to this process's UID: the directory must too, or its owner could
    // swap the socket for one of their own.
    let owner = std::fs::metadata(dir).map_err(dir_err)?.uid();
    if owner != socket.uid() {
        bound.remove();
        return Err(UnixError::DirOwner {
            path: dir.to_owned(),
            owner,
            me: socket.uid(),
        });
    }
    Ok((listener, bound))
}

/// Accepted connections whose peer UID is allowed (any, when `allowed_uids` is empty).
pub fn incoming(
    listener: UnixListener,
    allowed_uids: Vec<u32>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<UnixStream>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some((stream, _)) = super::next_connection(&sender, || listener.accept()).await {
            if !allowed_uids.is_empty() {
                let uid = stream.peer_cred().map(|c| c.uid()).ok();
                if !uid.is_some_and(|uid| allowed_uids.contains(&uid)) {
                    telemetry::rejected("peer_uid");
                    match uid {
                        Some(uid) => tracing::warn!(
                            uid,
                            "unix socket peer refused: UID not in listen.unix_allowed_uids"
                        ),
                        None => tracing::warn!("unix socket peer refused: its UID cannot be read"),
                    }
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
