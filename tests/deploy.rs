//! The deployment files parse and carry what they promise: a hardened, probed, disruption-
//! budgeted Kubernetes Deployment whose ConfigMaps hold a configuration cedargate accepts and
//! exactly the policy set of `policies/`; an Istio provider and CUSTOM policy that point at the
//! Service; a multi-stage, non-root Dockerfile.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use cedargate::config::{Config, PolicySource};
use serde::Deserialize;
use yaml_serde::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every YAML document of a file.
fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

/// The one document of `kind` in a file.
fn kind(path: &str, kind: &str) -> Value {
    let mut found = documents(path)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect::<Vec<_>>();
    assert_eq!(found.len(), 1, "{path}: one {kind}");
    found.remove(0)
}

fn str_of<'v>(v: &'v Value, what: &str) -> &'v str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is a string: {v:?}"))
}

#[test]
fn every_deploy_yaml_parses() {
    let mut files = 0;
    for dir in ["deploy/kubernetes", "deploy/istio", "deploy/envoy"] {
        for entry in std::fs::read_dir(repo(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let rel = path
                    .strip_prefix(repo(""))
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                assert!(!documents(&rel).is_empty(), "{rel}");
                files += 1;
            }
        }
    }
    assert!(files >= 10, "{files} files");
}

#[test]
fn deployment_is_replicated_hardened_and_probed() {
    let d = kind("deploy/kubernetes/deployment.yaml", "Deployment");
    assert!(d["spec"]["replicas"].as_u64().unwrap() >= 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    assert_eq!(pod["automountServiceAccountToken"], false);
    // The Check port is reached over the mesh's mTLS: a sidecar, and STRICT for the pod.
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"],
        "true"
    );
    let strict = kind("deploy/istio/cedargate-mtls.yaml", "PeerAuthentication");
    assert_eq!(strict["spec"]["mtls"]["mode"], "STRICT");
    assert_eq!(strict["metadata"]["namespace"], d["metadata"]["namespace"]);
    assert_eq!(
        strict["spec"]["selector"]["matchLabels"],
        d["spec"]["template"]["metadata"]["labels"]
    );
    // Longer than the default drain timeout (10 s), so draining finishes before the kill.
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 10);
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    for side in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !c["resources"][side][resource].is_null(),
                "{side}.{resource}"
            );
        }
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let port_named = |name: &str| {
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(port_named("admin"), 9192);
    assert_eq!(port_named("grpc"), 9191);

    // The --config file is mounted from the config ConfigMap, the policies from theirs.
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mounted = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))["name"]
            .clone()
    };
    let volumes = pod["volumes"].as_sequence().unwrap();
    let config_map_of = |volume: &Value| {
        volumes.iter().find(|v| v["name"] == *volume).unwrap()["configMap"]["name"].clone()
    };
    assert_eq!(config_map_of(&mounted(config_path)), "cedargate-config");
    assert_eq!(
        config_map_of(&mounted("/etc/cedargate/policies")),
        "cedargate-policies"
    );
    assert!(
        mounts
            .iter()
            .all(|m| m["readOnly"] == true || m["mountPath"] == "/tmp")
    );
}

#[test]
fn service_budget_autoscaler_and_network_policy_fit_the_deployment() {
    let d = kind("deploy/kubernetes/deployment.yaml", "Deployment");
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    let s = kind("deploy/kubernetes/service.yaml", "Service");
    assert_eq!(&s["spec"]["selector"], labels);
    let grpc = s["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap();
    assert_eq!(grpc["port"], 9191);
    assert_eq!(grpc["appProtocol"], "grpc");

    let pdb = kind("deploy/kubernetes/pdb.yaml", "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() >= 1);

    let hpa = kind("deploy/kubernetes/hpa.yaml", "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], d["metadata"]["name"]);
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    assert!(hpa["spec"]["maxReplicas"].as_u64() > hpa["spec"]["minReplicas"].as_u64());

    let np = kind("deploy/kubernetes/networkpolicy.yaml", "NetworkPolicy");
    assert_eq!(&np["spec"]["podSelector"]["matchLabels"], labels);
    let types: Vec<&str> = np["spec"]["policyTypes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| str_of(t, "policy type"))
        .collect();
    assert_eq!(types, ["Ingress", "Egress"]);

    let kustomization = &documents("deploy/kubernetes/kustomization.yaml")[0];
    let listed: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| str_of(r, "resource"))
        .collect();
    for file in [
        "deployment.yaml",
        "service.yaml",
        "configmap.yaml",
        "pdb.yaml",
        "hpa.yaml",
        "networkpolicy.yaml",
    ] {
        assert!(listed.contains(&file), "{file} in kustomization.yaml");
    }
    // Prometheus reaches the metrics under Istio's metrics merging (port 15020) and directly.
    let policy = kind("deploy/kubernetes/networkpolicy.yaml", "NetworkPolicy");
    let from_monitoring = policy["spec"]["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|rule| {
            rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                == "monitoring"
        })
        .expect("an ingress rule for the monitoring namespace");
    let ports: Vec<u64> = from_monitoring["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [9192, 15020]);
    // The image is a kustomize setting: the Deployment's image is the name `images:` sets.
    let deployment = kind("deploy/kubernetes/deployment.yaml", "Deployment");
    let image = str_of(
        &deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "image",
    );
    let images = kustomization["images"].as_sequence().expect("images:");
    assert!(
        images
            .iter()
            .any(|i| i["name"] == image && i["newTag"].is_string()),
        "kustomization.yaml sets no tag for image {image}"
    );
}

#[test]
fn config_maps_hold_an_accepted_config_and_exactly_the_policy_set() {
    let maps = documents("deploy/kubernetes/configmap.yaml");
    let data = |name: &str| {
        maps.iter()
            .find(|m| m["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("ConfigMap {name}"))["data"]
            .clone()
    };
    let text = str_of(
        &data("cedargate-config")["cedargate.yaml"],
        "cedargate.yaml",
    )
    .to_owned();
    // The shipped issuer is a placeholder that cannot start: a first `kubectl apply -k` shows
    // what to change instead of a pod that stays unready.
    let path = Path::new("/etc/cedargate/cedargate.yaml");
    let refused = Config::from_yaml(path, &text).expect_err("the placeholder issuer is refused");
    let message = refused.to_string();
    for expected in [
        "/etc/cedargate/cedargate.yaml",
        "https://your-identity-provider.invalid",
        "shipped placeholder",
    ] {
        assert!(message.contains(expected), "{expected} not in: {message}");
    }
    let text = text.replace(
        "https://your-identity-provider.invalid",
        "https://auth.example.org",
    );
    let config = Config::from_yaml(path, &text).unwrap_or_else(|e| panic!("{e}"));
    let cedargate::config::GrpcListen::Tcp(grpc) = config.listen.grpc else {
        panic!("the Kubernetes Service reaches cedargate over TCP");
    };
    assert_eq!(grpc.port(), 9191);
    assert_eq!(config.listen.admin.port(), 9192);
    assert!(grpc.ip().is_unspecified(), "reachable from other pods");
    // Endpoints drop the pod before it stops serving, and the drain fits the grace period.
    let d = kind("deploy/kubernetes/deployment.yaml", "Deployment");
    let grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(config.limits.shutdown_delay >= std::time::Duration::from_secs(1));
    assert!(
        (config.limits.shutdown_delay + config.limits.drain_timeout).as_secs() < grace,
        "shutdown delay + drain fit in terminationGracePeriodSeconds"
    );
    assert_eq!(
        config.policies,
        PolicySource::Dir(PathBuf::from("/etc/cedargate/policies"))
    );

    let policies = data("cedargate-policies");
    let dir = tempfile::tempdir().unwrap();
    let mut files = 0;
    for entry in std::fs::read_dir(repo("policies")).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let shipped = str_of(&policies[name.as_str()], &name);
        assert_eq!(
            shipped,
            std::fs::read_to_string(&path).unwrap(),
            "{name} differs from policies/: run python3 scripts/render-policy-configmap.py"
        );
        std::fs::write(dir.path().join(&name), shipped).unwrap();
        files += 1;
    }
    assert_eq!(
        policies.as_mapping().unwrap().len(),
        files,
        "no stale files"
    );
    cedargate::app::load_policies(&PolicySource::Dir(dir.path().to_owned()))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn istio_provider_points_at_the_service_and_fails_closed() {
    let operator = kind("deploy/istio/meshconfig.yaml", "IstioOperator");
    let providers = operator["spec"]["meshConfig"]["extensionProviders"]
        .as_sequence()
        .unwrap();
    let provider = &providers[0];
    let grpc = &provider["envoyExtAuthzGrpc"];
    let service = kind("deploy/kubernetes/service.yaml", "Service");
    assert_eq!(
        grpc["service"],
        format!(
            "{}.{}.svc.cluster.local",
            str_of(&service["metadata"]["name"], "name"),
            str_of(&service["metadata"]["namespace"], "namespace")
        )
        .as_str()
    );
    assert_eq!(grpc["port"], 9191);
    assert_eq!(grpc["failOpen"], false);
    assert!(grpc["timeout"].as_str().is_some());

    let policy = kind(
        "deploy/istio/authorizationpolicy.yaml",
        "AuthorizationPolicy",
    );
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    assert_eq!(policy["spec"]["provider"]["name"], provider["name"]);
    let mtls = kind(
        "deploy/istio/authorizationpolicy.yaml",
        "PeerAuthentication",
    );
    assert_eq!(mtls["spec"]["mtls"]["mode"], "STRICT");
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = std::fs::read_to_string(repo("deploy/Dockerfile")).unwrap();
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let last_from = instructions
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .unwrap();
    let runtime = &instructions[last_from..];
    assert!(runtime[0].contains("distroless"), "{}", runtime[0]);
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(!["0", "root", "0:0"].contains(&user.trim()), "{user}");
    assert!(runtime.iter().any(|l| l.starts_with("COPY --from=")));
    assert!(
        instructions.iter().any(|l| l.contains("--locked")),
        "builds from Cargo.lock"
    );
}

/// The newest file in `dir` whose name starts with `prefix` and ends with `suffix` and whose
/// text satisfies `wanted`.
fn newest(dir: &Path, prefix: &str, suffix: &str, wanted: impl Fn(&str) -> bool) -> String {
    let mut found: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix) && name.ends_with(suffix)
        })
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let modified = e.metadata().ok()?.modified().ok()?;
            wanted(&text).then_some((modified, text))
        })
        .collect();
    found.sort_by_key(|(modified, _)| *modified);
    found
        .pop()
        .unwrap_or_else(|| panic!("no {prefix}*{suffix} in {}", dir.display()))
        .1
}

/// `a/b/../../c` → `c`; `None` for a path outside the repository (the build's own `OUT_DIR`).
fn in_repo(path: &str) -> Option<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let relative = match path.strip_prefix(root) {
        Some(rest) => rest.trim_start_matches('/'),
        None if Path::new(path).is_absolute() => return None,
        None => path,
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in relative.split('/') {
        match part {
            ".." => {
                parts.pop()?;
            }
            "." | "" => {}
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    (!joined.starts_with("target/")).then_some(joined)
}

/// The files `cargo build --release --bin cedargate` reads from the repository, as cargo itself
/// recorded them for this test run's build: rustc's dep-info of the library and the binary
/// (every source file and every `include_str!`/`include_bytes!`), the build script and what it
/// declares with `rerun-if-changed`, the manifest and lock file, and the files of targets the
/// manifest declares (cargo refuses a manifest whose `[[bench]]` file is missing).
fn files_the_build_reads() -> std::collections::BTreeSet<String> {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let profile = deps.parent().unwrap();
    let mut files = std::collections::BTreeSet::new();
    let first_line = |text: &str| text.lines().next().unwrap_or_default().to_owned();
    let lib = newest(deps, "cedargate-", ".d", |t| {
        first_line(t).contains("libcedargate-") || first_line(t).contains("src/lib.rs")
    });
    let bin = newest(deps, "cedargate-", ".d", |t| {
        first_line(t).ends_with(" src/main.rs") || first_line(t).contains(" src/main.rs ")
    });
    for dep_info in [&lib, &bin] {
        let line = first_line(dep_info);
        let (_, inputs) = line.split_once(": ").unwrap();
        files.extend(inputs.split(' ').filter_map(in_repo));
    }
    // Only clippy reads it; cargo build does not.
    files.remove("clippy.toml");
    // Cargo runs `build.rs` as the build script whenever it exists.
    if repo("build.rs").exists() {
        files.insert("build.rs".to_owned());
    }
    for entry in std::fs::read_dir(profile.join("build")).unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("cedargate-")
        {
            continue;
        }
        if let Ok(output) = std::fs::read_to_string(entry.path().join("output")) {
            files.extend(
                output
                    .lines()
                    .filter_map(|l| l.strip_prefix("cargo:rerun-if-changed="))
                    .filter_map(in_repo),
            );
        }
    }
    files.insert("Cargo.toml".to_owned());
    files.insert("Cargo.lock".to_owned());
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    let mut section = "";
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if let Some(name) = line.strip_prefix("name = ") {
            let name = name.trim_matches('"');
            let dir = match section {
                "[[bench]]" => "benches",
                "[[test]]" => "tests",
                "[[example]]" => "examples",
                _ => continue,
            };
            files.insert(format!("{dir}/{name}.rs"));
        }
    }
    files
}

#[test]
fn the_docker_build_context_holds_every_file_the_build_reads() {
    // No Docker engine here: instead of building the image, compare what the Dockerfile's build
    // stage copies with what cargo recorded reading for this very build. Sound because rustc's
    // dep-info lists every file a crate reads (modules and `include_*!`), and cargo reads
    // nothing else from the tree but the manifest, the lock file, the build script with its
    // declared inputs, and declared target files.
    let text = std::fs::read_to_string(repo("deploy/Dockerfile")).unwrap();
    let build_stage: Vec<&str> = text
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("FROM "))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .collect();
    let copied: Vec<String> = build_stage
        .iter()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let mut words: Vec<&str> = l.split_whitespace().collect();
            words.pop(); // the destination
            words
                .into_iter()
                .map(|w| w.trim_end_matches('/').to_owned())
        })
        .collect();
    let needed = files_the_build_reads();
    for must in [
        "build.rs",
        "src/main.rs",
        "src/lib.rs",
        "policies/schema.cedarschema",
        "proto/cedargate/v1/authorizer.proto",
    ] {
        assert!(needed.contains(must), "{must} not found in {needed:?}");
    }
    let missing: Vec<&String> = needed
        .iter()
        .filter(|file| {
            !copied
                .iter()
                .any(|c| *file == c || file.starts_with(&format!("{c}/")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/Dockerfile's build stage does not copy {missing:?}, which the build reads: add a COPY line for each"
    );
    // A stripped binary: no debug line tables or symbols in the image.
    assert!(
        build_stage
            .iter()
            .any(|l| l.contains("CARGO_PROFILE_RELEASE_STRIP=symbols")),
        "the image's binary must be stripped"
    );
}

/// `rust-version` in Cargo.toml is the floor README states: no dependency in the lock file
/// declares a newer one (cargo metadata, offline, for the host's platform: the packages of
/// other platforms are not downloaded by a build here). CI builds with one newer toolchain
/// only, so this is what holds the stated floor against a dependency update that raises it.
#[test]
fn no_dependency_declares_a_newer_rust_than_rust_version() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let about = std::process::Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let about = String::from_utf8_lossy(&about.stdout);
    let host = about
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .trim()
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = |text: &str| -> (u64, u64) {
        let mut parts = text.split('.').map(|p| p.parse::<u64>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap_or(0))
    };
    let used: std::collections::BTreeSet<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    let packages = metadata["packages"].as_array().unwrap();
    let ours = packages
        .iter()
        .find(|p| p["name"] == "cedargate")
        .and_then(|p| p["rust_version"].as_str())
        .map(version)
        .expect("Cargo.toml states rust-version");
    let newer: Vec<String> = packages
        .iter()
        .filter(|p| used.contains(p["id"].as_str().unwrap()))
        .filter_map(|p| {
            let declared = p["rust_version"].as_str()?;
            (version(declared) > ours).then(|| format!("{} {}", p["name"], declared))
        })
        .collect();
    assert!(newer.len() < packages.len(), "metadata lists packages");
    assert!(
        newer.is_empty(),
        "dependencies that need a newer Rust than rust-version {ours:?}: {newer:?}; raise rust-version and README's statement"
    );
}
