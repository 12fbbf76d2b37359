//! Hot reload of the policy directory: a file watcher (notify: inotify on Linux, which also
//! sees a Kubernetes ConfigMap's atomic `..data` swap) and SIGHUP both ask for a reload. Bursts
//! of events are collapsed, the directory is loaded and validated in full off the async
//! threads, and only a valid set whose content changed replaces the one in force: one atomic
//! swap, so checks in flight finish on the snapshot they started with. An invalid change keeps
//! the last good set, logs every problem with file and line, and counts
//! `cedargate_policy_reloads_total{result="error"}`; readiness is unaffected.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::policy::{Snapshot, store};
use crate::server::Shared;
use crate::telemetry;

/// Quiet time after the last file event before a reload starts (editors write in bursts).
const SETTLE: Duration = Duration::from_millis(100);

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch the policy directory {}: {source}", dir.display())]
pub struct ReloadError {
    dir: PathBuf,
    #[source]
    source: notify::Error,
}

/// The running watcher; reloads stop when it is dropped or stopped.
#[derive(Debug)]
pub struct Reloader {
    task: JoinHandle<()>,
    /// `None` with `policies.watch: false`: SIGHUP only.
    _watcher: Option<notify::RecommendedWatcher>,
    /// Keeps the request channel open when no watcher holds a sender.
    _ask: mpsc::Sender<()>,
}

impl Reloader {
    /// Watches `dir` and reloads into `shared`. `principal_types` are the issuers' principal
    /// types, which a new schema must still declare.
    pub fn start(
        dir: PathBuf,
        shared: Arc<Shared>,
        principal_types: Vec<String>,
        watch: bool,
    ) -> Result<Self, ReloadError> {
        let (ask, asked) = mpsc::channel::<()>(1);
        let watcher = if watch {
            Some(watch_dir(&dir, ask.clone())?)
        } else {
            None
        };
        let task = tokio::spawn(run(dir, shared, principal_types, asked));
        Ok(Self {
            task,
            _watcher: watcher,
            _ask: ask,
        })
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

/// A watcher that asks for a reload on every change in `dir`.
fn watch_dir(
    dir: &std::path::Path,
    ask: mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher, ReloadError> {
    let on_event = ask;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // Full means a reload is already pending: nothing is lost.
            let _ = on_event.try_send(());
        }
    })
    .map_err(|source| ReloadError {
        dir: dir.to_owned(),
        source,
    })?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|source| ReloadError {
            dir: dir.to_owned(),
            source,
        })?;
    Ok(watcher)
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    dir: PathBuf,
    shared: Arc<Shared>,
    principal_types: Vec<String>,
    mut asked: mpsc::Receiver<()>,
) {
    let mut hangup = hangup_signal();
    loop {
        tokio::select! {
            event = asked.recv() => if event.is_none() { return },
            () = next(&mut hangup) => tracing::info!("SIGHUP: reloading the policy set"),
        }
        while tokio::time::timeout(SETTLE, asked.recv())
            .await
            .is_ok_and(|e| e.is_some())
        {}
        reload(&dir, &shared, &principal_types).await;
    }
}

/// Loads `dir` and, when valid and changed, makes it the policy set in force.
pub async fn reload(dir: &std::path::Path, shared: &Shared, principal_types: &[String]) {
    let owned = dir.to_owned();
    let loaded = tokio::task::spawn_blocking(move || store::load_dir(&owned)).await;
    let snapshot = match loaded {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(err)) => {
            telemetry::policy_reload("error");
            tracing::error!(error = %err, "policy reload refused; the previous policy set stays in force");
            return;
        }
        Err(err) => {
            telemetry::policy_reload("error");
            tracing::error!(error = %err, "policy reload failed");
            return;
        }
    };
    if let Some(missing) = missing_principal_type(&snapshot, principal_types) {
        telemetry::policy_reload("error");
        tracing::error!(
            principal_type = %missing,
            "policy reload refused: the new schema does not declare an issuer's principal_type; the previous policy set stays in force"
        );
        return;
    }
    let previous = shared.snapshot.load().version.clone();
    if previous == snapshot.version {
        telemetry::policy_reload("unchanged");
        return;
    }
    let version = snapshot.version.clone();
    telemetry::policy_warnings(&snapshot);
    shared.snapshot.store(Arc::new(snapshot));
    telemetry::policy_loaded(Some(&previous), &version);
    telemetry::policy_reload("success");
    tracing::info!(%version, %previous, "policy set reloaded");
}

/// The first of `principal_types` the snapshot's schema does not declare.
pub fn missing_principal_type<'t>(
    snapshot: &Snapshot,
    principal_types: &'t [String],
) -> Option<&'t str> {
    principal_types
        .iter()
        .find(|t| !snapshot.schema.entity_types().any(|e| e.to_string() == **t))
        .map(String::as_str)
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
}

async fn next(hangup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hangup
        && signal.recv().await.is_some()
    {
        return;
    }
    std::future::pending::<()>().await;
}
