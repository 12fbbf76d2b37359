//! Hot reload of the policy directory: a file watcher (notify: inotify on Linux, which also
//! sees a Kubernetes ConfigMap's atomic `..data` swap) and SIGHUP both ask for a reload. Bursts
//! of events are collapsed, and the directory must then read the same twice, [`STABLE`]
//! apart, before it is loaded: a file moved away, truncated or half-written for less than
//! that is never installed (an intermediate set could lack a `forbid`). An empty file is
//! refused outright ([`store::read_dir`]). The set is loaded and validated in full off the
//! async threads, and only a valid set whose content changed replaces the one in force: one
//! atomic swap, so checks in flight finish on the snapshot they started with. An invalid or
//! unstable change keeps the last good set, logs every problem with file and line, and counts
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

pub mod poll;

/// Quiet time after the last file event before a reload starts (editors write in bursts).
const SETTLE: Duration = Duration::from_millis(100);
/// How long the directory must read the same before a change is installed.
pub const STABLE: Duration = Duration::from_secs(1);
/// Reads of a directory that keeps changing before this reload gives up (the next file
/// event asks again).
const STABLE_READS: usize = 5;

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch the policy directory {}: {source}", dir.display())]
pub struct ReloadError {
    dir: PathBuf,
    #[source]
    source: notify::Error,
}

/// Which policy set a directory holds: the one in force, or the candidate evaluated beside
/// it (`policies.candidate`), never enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Live,
    Candidate,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Live => "policy set",
            Self::Candidate => "candidate policy set",
        }
    }
}

/// What a reloader keeps in force: a directory (the live set or the candidate), or a bundle
/// file (the live set), watched through its directory.
#[derive(Debug, Clone)]
pub enum Watched {
    Dir(PathBuf, Target),
    Bundle(crate::config::BundleSource, Target),
}

impl Watched {
    /// The directory whose changes ask for a reload.
    fn dir(&self) -> PathBuf {
        match self {
            Self::Dir(dir, _) => dir.clone(),
            Self::Bundle(bundle, _) => match bundle.path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                _ => PathBuf::from("."),
            },
        }
    }
}

/// The running watcher; reloads stop when it is dropped or stopped.
#[derive(Debug)]
pub struct Reloader {
    task: JoinHandle<()>,
    /// Keeps the request channel open when no watcher holds a sender.
    _ask: mpsc::Sender<()>,
}

impl Reloader {
    /// Watches `watched` and reloads into `shared`. `issuer_types` are the entity types the
    /// issuers' tokens become, which a new schema must still declare.
    pub fn start(
        watched: Watched,
        shared: Arc<Shared>,
        issuer_types: IssuerTypes,
        watch: bool,
    ) -> Result<Self, ReloadError> {
        let (ask, asked) = mpsc::channel::<()>(1);
        let watch = if watch {
            Some(Watch::arm(&watched.dir(), ask.clone())?)
        } else {
            None
        };
        let task = tokio::spawn(run(watched, shared, issuer_types, asked, watch));
        Ok(Self { task, _ask: ask })
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

/// What a directory path names right now: its resolved path and (on Unix) its inode, so that
/// a symlink swapped to another directory, or a directory renamed over it, is noticed.
fn identity(dir: &std::path::Path) -> Option<(PathBuf, u64)> {
    let resolved = std::fs::canonicalize(dir).ok()?;
    #[cfg(unix)]
    let inode = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&resolved).ok()?.ino()
    };
    #[cfg(not(unix))]
    let inode = 0;
    Some((resolved, inode))
}

/// A watch on the policy directory and on its parent (for the directory's own name: a symlink
/// swapped to a new directory, or a directory renamed over the old one), re-armed on the
/// directory the path names whenever that changes. inotify follows an inode, not a name:
/// without this, a swapped directory would never be reloaded again.
struct Watch {
    _watcher: notify::RecommendedWatcher,
    dir: PathBuf,
    ask: mpsc::Sender<()>,
    watching: Option<(PathBuf, u64)>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("dir", &self.dir)
            .field("watching", &self.watching)
            .finish_non_exhaustive()
    }
}

impl Watch {
    fn arm(dir: &std::path::Path, ask: mpsc::Sender<()>) -> Result<Self, ReloadError> {
        let err = |source| ReloadError {
            dir: dir.to_owned(),
            source,
        };
        let name = dir.file_name().map(ToOwned::to_owned);
        let on_event = ask.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                // Events in the parent count only when they name the directory itself.
                let relevant = event.paths.iter().any(|p| {
                    p.file_name().map(ToOwned::to_owned) == name
                        || p.parent()
                            .and_then(|d| d.file_name())
                            .map(ToOwned::to_owned)
                            == name
                });
                if relevant {
                    // Full means a reload is already pending: nothing is lost.
                    let _ = on_event.try_send(());
                }
            })
            .map_err(err)?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(err)?;
        if let Some(parent) = dir.parent() {
            let parent = if parent.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                parent
            };
            // Best effort: without it only the directory's content is followed.
            let _ = watcher.watch(parent, RecursiveMode::NonRecursive);
        }
        Ok(Self {
            _watcher: watcher,
            dir: dir.to_owned(),
            ask,
            watching: identity(dir),
        })
    }

    /// Re-arms the watch when the path now names another directory.
    fn follow(&mut self) {
        let now = identity(&self.dir);
        if now.is_none() || now == self.watching {
            return;
        }
        match Self::arm(&self.dir, self.ask.clone()) {
            Ok(fresh) => {
                tracing::info!(dir = %self.dir.display(), "the policy directory was replaced; watching the new one");
                *self = fresh;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the replaced policy directory; SIGHUP still reloads")
            }
        }
    }
}

async fn run(
    watched: Watched,
    shared: Arc<Shared>,
    issuer_types: IssuerTypes,
    mut asked: mpsc::Receiver<()>,
    mut watch: Option<Watch>,
) {
    let mut hangup = hangup_signal();
    loop {
        tokio::select! {
            event = asked.recv() => if event.is_none() { return },
            () = next(&mut hangup) => tracing::info!(source = %watched.dir().display(), "SIGHUP: reloading"),
        }
        while tokio::time::timeout(SETTLE, asked.recv())
            .await
            .is_ok_and(|e| e.is_some())
        {}
        if let Some(watch) = &mut watch {
            watch.follow();
        }
        match &watched {
            Watched::Dir(dir, target) => reload(dir, &shared, &issuer_types, *target).await,
            Watched::Bundle(bundle, target) => {
                reload_bundle(bundle, &shared, &issuer_types, *target).await;
            }
        }
    }
}

/// Opens the bundle file and, when it verifies, validates, is not a rollback (unless
/// allowed) and changes the set, makes it the policy set in force ([`activate`]). Anything
/// else keeps the last good set, counted by reason (`cedargate_bundle_failures_total`) and
/// logged.
pub async fn reload_bundle(
    source: &crate::config::BundleSource,
    shared: &Shared,
    issuer_types: &IssuerTypes,
    target: Target,
) {
    let owned = source.clone();
    let opened =
        match tokio::task::spawn_blocking(move || crate::policy::bundle::load(&owned)).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(err)) => return refused(source, err.code(), &err),
            Err(err) => return refused(source, "internal", &err),
        };
    if let Err((reason, error)) = activate(opened, source, shared, issuer_types, target) {
        refused(source, reason, &error);
    }
}

/// Logs and counts a bundle that was not put in force.
pub(crate) fn refused(
    source: &crate::config::BundleSource,
    reason: &'static str,
    error: &dyn std::fmt::Display,
) {
    telemetry::policy_reload("error");
    telemetry::bundle_failed(reason);
    let from = source
        .remote
        .as_ref()
        .map_or_else(|| source.path.display().to_string(), |r| r.url.clone());
    tracing::error!(bundle = %from, reason, error = %error, "policy bundle refused; the previous set stays in use");
}

/// What [`activate`] did with a verified bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Installed,
    /// The same revision and set are in force already.
    Unchanged,
}

/// Puts an opened (verified, validated) bundle in force with one swap, unless its schema
/// lacks an issuer's types, it is a rollback (and rollbacks are not allowed), or it is the
/// set in force already. A candidate bundle becomes the candidate (any revision: it is a
/// trial, never enforced). Refusals are `(reason, error)` for [`refused`].
pub fn activate(
    opened: crate::policy::bundle::Opened,
    source: &crate::config::BundleSource,
    shared: &Shared,
    issuer_types: &IssuerTypes,
    target: Target,
) -> Result<Activation, (&'static str, String)> {
    if let Some((issuer, missing)) = issuer_types.missing(&opened.snapshot) {
        return Err((
            "invalid",
            format!(
                "the schema does not declare `{missing}`, issuer `{issuer}`'s principal_type or group_type"
            ),
        ));
    }
    if target == Target::Candidate {
        if shared.candidate_version().as_deref() == Some(&*opened.snapshot.version) {
            telemetry::policy_reload("unchanged");
            return Ok(Activation::Unchanged);
        }
        let version = opened.snapshot.version.clone();
        shared.install_candidate(opened.snapshot);
        telemetry::policy_reload("success");
        tracing::info!(%version, revision = opened.manifest.revision, "candidate policy bundle installed");
        return Ok(Activation::Installed);
    }
    let revision = opened.manifest.revision;
    let previous = shared.snapshot.load().version.clone();
    let in_force = shared.bundle_revision();
    if shared.has_policy_set() && in_force == Some(revision) && previous == opened.snapshot.version
    {
        telemetry::policy_reload("unchanged");
        return Ok(Activation::Unchanged);
    }
    if let Some(in_force) = in_force.filter(|r| revision < *r && !source.allow_rollback) {
        return Err((
            "rollback",
            format!(
                "revision {revision} is older than revision {in_force} in force; set policies.bundle.allow_rollback to install it"
            ),
        ));
    }
    let version = opened.snapshot.version.clone();
    telemetry::policy_warnings(&opened.snapshot);
    shared.install_bundle(opened.snapshot, revision);
    telemetry::policy_loaded(Some(&previous), &version);
    telemetry::policy_reload("success");
    tracing::info!(%version, %previous, revision, signed = opened.signed, "policy bundle installed");
    Ok(Activation::Installed)
}

/// Loads `dir` and, when valid and changed, makes it the policy set in force (or the
/// candidate).
pub async fn reload(
    dir: &std::path::Path,
    shared: &Shared,
    issuer_types: &IssuerTypes,
    target: Target,
) {
    let set = target.name();
    let files = match read_stable(dir, || tokio::time::sleep(STABLE)).await {
        Ok(files) => files,
        Err(err) => {
            telemetry::policy_reload("error");
            tracing::error!(error = %err, set, "policy reload refused; the previous set stays in use");
            return;
        }
    };
    let loaded = tokio::task::spawn_blocking(move || store::load_files(files)).await;
    let snapshot = match loaded {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(err)) => {
            telemetry::policy_reload("error");
            tracing::error!(error = %err, set, "policy reload refused; the previous set stays in use");
            return;
        }
        Err(err) => {
            telemetry::policy_reload("error");
            tracing::error!(error = %err, set, "policy reload failed");
            return;
        }
    };
    if let Some((issuer, missing)) = issuer_types.missing(&snapshot) {
        telemetry::policy_reload("error");
        tracing::error!(
            %issuer,
            entity_type = %missing,
            set,
            "policy reload refused: the new schema does not declare an issuer's principal_type or group_type; the previous set stays in use"
        );
        return;
    }
    if target == Target::Candidate {
        let previous = shared.candidate_version();
        if previous.as_deref() == Some(&*snapshot.version) {
            telemetry::policy_reload("unchanged");
            return;
        }
        let version = snapshot.version.clone();
        shared.install_candidate(snapshot);
        telemetry::policy_reload("success");
        tracing::info!(%version, previous = previous.as_deref().unwrap_or(""), "candidate policy set reloaded");
        return;
    }
    let previous = shared.snapshot.load().version.clone();
    if previous == snapshot.version {
        telemetry::policy_reload("unchanged");
        return;
    }
    let version = snapshot.version.clone();
    telemetry::policy_warnings(&snapshot);
    shared.install(snapshot);
    telemetry::policy_loaded(Some(&previous), &version);
    telemetry::policy_reload("success");
    tracing::info!(%version, %previous, "policy set reloaded");
}

/// The policy files of `dir` once two reads, `pause` apart, agree (at most [`STABLE_READS`]
/// reads): what a reload may install.
pub async fn read_stable<F, P>(
    dir: &std::path::Path,
    mut pause: P,
) -> Result<Vec<store::SourceFile>, store::PolicyLoadError>
where
    P: FnMut() -> F,
    F: std::future::Future<Output = ()>,
{
    let read = |dir: PathBuf| async move {
        tokio::task::spawn_blocking(move || store::read_dir(&dir))
            .await
            .unwrap_or_else(|err| {
                Err(store::PolicyLoadError::Read {
                    path: PathBuf::new(),
                    source: std::io::Error::other(err.to_string()),
                })
            })
    };
    let mut before = read(dir.to_owned()).await?;
    for _ in 1..STABLE_READS {
        pause().await;
        let after = read(dir.to_owned()).await?;
        if after == before {
            return Ok(after);
        }
        before = after;
    }
    Err(store::PolicyLoadError::Invalid {
        problems: vec![
            crate::policy::problem::Problem::in_file(dir, "the files kept changing while they were read")
                .hint("write the files in one step (write a new directory and swap a symlink, as Kubernetes ConfigMaps do); the next change is read again"),
        ],
    })
}

/// The entity types the configured issuers' tokens become (principal types, and group types
/// of issuers that assert groups), with the issuer of each: a schema must declare them all.
#[derive(Debug, Clone, Default)]
pub struct IssuerTypes(Vec<(String, String)>);

impl IssuerTypes {
    pub fn of(issuers: &[crate::config::IssuerConfig]) -> Self {
        Self(
            issuers
                .iter()
                .flat_map(|i| i.entity_types().map(|t| (i.issuer.clone(), t.to_owned())))
                .collect(),
        )
    }

    /// The first `(issuer, type)` whose type `snapshot`'s schema does not declare.
    pub fn missing(&self, snapshot: &Snapshot) -> Option<(&str, &str)> {
        self.0
            .iter()
            .find(|(_, t)| !snapshot.schema.entity_types().any(|e| e.to_string() == *t))
            .map(|(issuer, t)| (issuer.as_str(), t.as_str()))
    }
}

#[cfg(unix)]
pub(crate) type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub(crate) type Hangup = ();

pub(crate) fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
}

pub(crate) async fn next(hangup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hangup
        && signal.recv().await.is_some()
    {
        return;
    }
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    use super::read_stable;

    fn names(files: &[crate::policy::store::SourceFile]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[tokio::test]
    async fn a_file_away_for_a_moment_is_never_read_as_the_set() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "main.cedar",
            "permit (principal, action, resource);",
        );
        let forbid = "forbid (principal, action, resource);";
        // The file is away when the first read happens, back before the second: the reads
        // disagree, and the set returned is the one that then stays.
        let mut pauses = 0;
        let files = read_stable(dir.path(), || {
            pauses += 1;
            if pauses == 1 {
                write(dir.path(), "forbid.cedar", forbid);
            }
            std::future::ready(())
        })
        .await
        .unwrap();
        assert_eq!(names(&files), ["forbid.cedar", "main.cedar"]);
        assert_eq!(
            pauses, 2,
            "read three times: before, after the change, once more"
        );

        // A directory that changes at every pause is never installed.
        let mut n = 0;
        let err = read_stable(dir.path(), || {
            n += 1;
            write(
                dir.path(),
                "main.cedar",
                &format!("// {n}\npermit (principal, action, resource);"),
            );
            std::future::ready(())
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("kept changing"), "{err}");
    }

    #[tokio::test]
    async fn an_empty_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "main.cedar",
            "permit (principal, action, resource);",
        );
        write(dir.path(), "forbid.cedar", "\n");
        let err = read_stable(dir.path(), || std::future::ready(()))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("forbid.cedar"), "{err}");
        assert!(err.contains("the file is empty"), "{err}");
    }
}
