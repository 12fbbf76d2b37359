//! Policy bundles: built, signed and inspected with the real `cedargate bundle` command;
//! every way a bundle can be wrong is refused whole (hash, unlisted file, bad or missing
//! signature, truncation, unsafe entries, a gzip bomb, an invalid set); and a server serving
//! a bundle installs a newer revision, refuses a rollback and a tampered file (keeping the
//! last good set, counted by reason), and picks up a bundle swapped in on disk.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use cedargate::config::{BundleSource, Config, PolicySource};
use cedargate::policy::bundle::{self, keys};
use cedargate::reload::{IssuerTypes, Target, reload_bundle};
use cedargate::testutil::{TestServer, check, metric_value, test_config};

fn cedargate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cedargate"))
        .args(args)
        .output()
        .unwrap()
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// A signing key and its public key, made by `cedargate bundle keygen`.
fn keygen(dir: &Path, algorithm: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{algorithm}.pem"));
    let out = cedargate(&[
        "bundle",
        "keygen",
        "-o",
        &text(&key),
        "--algorithm",
        algorithm,
    ]);
    assert!(out.status.success(), "{out:?}");
    (key.clone(), PathBuf::from(format!("{}.pub", key.display())))
}

/// The files of a bundle, as (name, bytes), in archive order.
fn unpack(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            (name, content)
        })
        .collect()
}

/// A bundle of `files`, packed as they are (no manifest is made).
fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..`: write the name into the header directly.
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        archive.append(&header, bytes.as_slice()).unwrap();
    }
    archive.into_inner().unwrap().finish().unwrap()
}

fn replace(files: &mut [(String, Vec<u8>)], name: &str, bytes: Vec<u8>) {
    files.iter_mut().find(|(n, _)| n == name).unwrap().1 = bytes;
}

#[test]
fn bundles_are_built_signed_inspected_and_refused_whole_when_anything_is_wrong() {
    let work = tempfile::tempdir().unwrap();
    let policies = support::policies::example_with(&[]);
    let (key, public) = keygen(work.path(), "ed25519");
    let (_p256, p256_public) = keygen(work.path(), "ecdsa-p256-sha256");
    let file = work.path().join("bundle.tar.gz");
    let out = cedargate(&[
        "bundle",
        "build",
        &text(policies.path()),
        "-o",
        &text(&file),
        "--revision",
        "7",
        "--sign",
        &text(&key),
    ]);
    assert!(out.status.success(), "{out:?}");
    let inspect = |file: &Path, public: Option<&Path>| {
        let mut args = vec!["bundle", "inspect", "--format", "json"];
        let file = text(file);
        args.push(&file);
        let public = public.map(text);
        if let Some(public) = &public {
            args.extend(["--public-key", public]);
        }
        cedargate(&args)
    };
    let shown = inspect(&file, Some(&public));
    assert!(shown.status.success(), "{shown:?}");
    let json: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(json["manifest"]["revision"], 7);
    assert_eq!(json["signature"], "verified");
    let version = cedargate::policy::store::load_dir(policies.path())
        .unwrap()
        .version
        .to_string();
    assert_eq!(json["manifest"]["version"], version.as_str());
    assert!(json["manifest"]["files"]["orders.cedar"].is_string());
    assert!(
        json["manifest"]["files"].get("orders.yaml").is_none(),
        "the tests/ folder is not part of the set"
    );
    // Another algorithm's key, or none where one is required, is refused.
    let wrong = inspect(&file, Some(&p256_public));
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("signature does not verify"));

    let bytes = std::fs::read(&file).unwrap();
    let key_of = |path: &Path| keys::PublicKey::from_pem(&std::fs::read(path).unwrap()).unwrap();
    let public_key = key_of(&public);
    let open = |bytes: &[u8], key: Option<&keys::PublicKey>| {
        bundle::open(bytes, Path::new("b.tar.gz"), key).map(|o| o.manifest.revision)
    };
    assert_eq!(open(&bytes, Some(&public_key)).unwrap(), 7);
    assert_eq!(
        open(&bytes, None).unwrap(),
        7,
        "no key: the signature is not needed"
    );
    let files = unpack(&bytes);
    let unsigned: Vec<_> = files
        .iter()
        .filter(|(n, _)| n != bundle::SIGNATURE)
        .cloned()
        .collect();
    assert!(open(&pack(&unsigned), None).is_ok());

    let refused = |bytes: Vec<u8>, key: Option<&keys::PublicKey>| {
        let err = open(&bytes, key).unwrap_err();
        (err.code(), err.to_string())
    };
    // Unsigned where a key is configured.
    assert_eq!(refused(pack(&unsigned), Some(&public_key)).0, "unsigned");
    // A policy changed after the manifest was made (a permit widened).
    let mut tampered = files.clone();
    let orders = String::from_utf8(
        files
            .iter()
            .find(|(n, _)| n == "orders.cedar")
            .unwrap()
            .1
            .clone(),
    )
    .unwrap()
    .replace("when { resource == principal }", "");
    replace(&mut tampered, "orders.cedar", orders.into_bytes());
    let (code, message) = refused(pack(&tampered), None);
    assert_eq!(code, "hash", "{message}");
    assert!(message.contains("orders.cedar"), "{message}");
    // The manifest rewritten to match, but then the signature no longer verifies.
    let mut manifest: bundle::Manifest =
        serde_json::from_slice(&files.iter().find(|(n, _)| n == bundle::MANIFEST).unwrap().1)
            .unwrap();
    let digest = |bytes: &[u8]| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    };
    let widened = tampered
        .iter()
        .find(|(n, _)| n == "orders.cedar")
        .unwrap()
        .1
        .clone();
    manifest
        .files
        .insert("orders.cedar".into(), digest(&widened));
    replace(
        &mut tampered,
        bundle::MANIFEST,
        serde_json::to_vec(&manifest).unwrap(),
    );
    assert_eq!(refused(pack(&tampered), Some(&public_key)).0, "signature");
    // A file the manifest does not list.
    let mut extra = files.clone();
    extra.push((
        "more.cedar".into(),
        b"permit (principal, action, resource);".to_vec(),
    ));
    assert_eq!(refused(pack(&extra), None).0, "hash");
    // Truncated in transit.
    assert_eq!(
        refused(bytes[..bytes.len() / 2].to_vec(), None).0,
        "archive"
    );
    // Anything after the archive: a second gzip member (which `tar -z` would read), garbage.
    let mut second_member = bytes.clone();
    second_member.extend(pack(&[(
        "evil.cedar".into(),
        b"permit (principal, action, resource);".to_vec(),
    )]));
    assert_eq!(refused(second_member, None).0, "archive");
    let mut trailing = bytes.clone();
    trailing.extend(b"trailing");
    assert_eq!(refused(trailing, None).0, "archive");
    // Unsafe entry names.
    for name in ["../orders.cedar", "sub/orders.cedar", ".hidden"] {
        let mut odd = files.clone();
        odd.push((name.into(), b"x".to_vec()));
        assert_eq!(refused(pack(&odd), None).0, "archive", "{name}");
    }
    // A gzip bomb: 65 MiB of zeros, a few hundred KiB packed, never inflated in full.
    let mut bomb = files.clone();
    bomb.push(("zeros.json".into(), vec![0u8; (65 << 20) as usize]));
    let (code, message) = refused(pack(&bomb), None);
    assert!(code == "archive", "{code}: {message}");
    // A set that does not validate, with a manifest that matches it.
    let broken = b"permit (principal, action == Action::\"nope\", resource);".to_vec();
    let mut invalid = unsigned.clone();
    let mut manifest_invalid = manifest.clone();
    manifest_invalid
        .files
        .insert("orders.cedar".into(), digest(&broken));
    replace(&mut invalid, "orders.cedar", broken);
    replace(
        &mut invalid,
        bundle::MANIFEST,
        serde_json::to_vec(&manifest_invalid).unwrap(),
    );
    assert_eq!(refused(pack(&invalid), None).0, "invalid");
    // An invalid directory is never bundled.
    let bad = support::policies::example_with(&[("bad.cedar", "permit (")]);
    let out = cedargate(&[
        "bundle",
        "build",
        &text(bad.path()),
        "-o",
        &text(&work.path().join("x.tar.gz")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!work.path().join("x.tar.gz").exists());
}

/// Builds the example set plus `extra` (when given) as a bundle of `revision` at `path`,
/// signed with `key`.
fn write_bundle(path: &Path, revision: u64, key: &keys::SigningKey, extra: Option<&str>) {
    let files: Vec<(&str, &str)> = extra.map(|e| ("extra.cedar", e)).into_iter().collect();
    let dir = support::policies::example_with(&files);
    let bytes = bundle::build(dir.path(), revision, Some(key)).unwrap();
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).unwrap();
    std::fs::rename(partial, path).unwrap();
}

#[tokio::test]
async fn a_server_on_a_bundle_installs_newer_revisions_only_and_keeps_the_last_good_set() {
    let work = tempfile::tempdir().unwrap();
    let key = keys::SigningKey::from_pem(
        keys::SigningKey::generate(keys::Algorithm::Ed25519)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let public = work.path().join("bundle.pub");
    std::fs::write(&public, key.public_pem().unwrap()).unwrap();
    let file = work.path().join("policies.tar.gz");
    write_bundle(&file, 10, &key, None);
    let source = BundleSource {
        path: file.clone(),
        public_key: Some(public.clone()),
        allow_rollback: false,
        remote: None,
    };
    let mut config: Config = test_config(PolicySource::Bundle(source.clone()));
    config.watch_policies = true;
    let mut server = TestServer::with_config(config).await;
    server.ready().await;
    let shared = std::sync::Arc::clone(&server.app.shared);
    assert_eq!(shared.bundle_revision(), Some(10));
    let health = || check("GET", "/healthz").build();
    assert_eq!(server.check(health()).await.code(), tonic::Code::Ok);
    let failures = |metrics: &str, reason: &str| {
        metric_value(
            metrics,
            "cedargate_bundle_failures_total",
            &[("reason", reason)],
        )
    };
    let before = server.metrics().await;

    // A newer revision that closes the health page is installed.
    let closed = r#"@id("closed") forbid (principal, action, resource == Path::"/healthz");"#;
    write_bundle(&file, 11, &key, Some(closed));
    reload_bundle(&source, &shared, &IssuerTypes::default(), Target::Live).await;
    assert_eq!(shared.bundle_revision(), Some(11));
    assert_eq!(server.check(health()).await.http_status(), Some(403));
    let closed_version = shared.snapshot.load().version.clone();

    // An older revision is a rollback: refused, counted, the last good set stays.
    write_bundle(&file, 9, &key, None);
    reload_bundle(&source, &shared, &IssuerTypes::default(), Target::Live).await;
    assert_eq!(shared.bundle_revision(), Some(11));
    assert_eq!(shared.snapshot.load().version, closed_version);
    // Signed by another key: refused.
    let stranger = keys::SigningKey::from_pem(
        keys::SigningKey::generate(keys::Algorithm::Ed25519)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    write_bundle(&file, 12, &stranger, None);
    reload_bundle(&source, &shared, &IssuerTypes::default(), Target::Live).await;
    assert_eq!(shared.bundle_revision(), Some(11));
    // Garbage where the bundle was: refused.
    std::fs::write(&file, b"not a bundle").unwrap();
    reload_bundle(&source, &shared, &IssuerTypes::default(), Target::Live).await;
    assert_eq!(shared.snapshot.load().version, closed_version);
    assert_eq!(server.check(health()).await.http_status(), Some(403));
    let after = server.metrics().await;
    // Counted once by the reload above, and once more if the watcher saw the write first.
    for reason in ["rollback", "signature", "archive"] {
        let counted = failures(&after, reason) - failures(&before, reason);
        assert!((1.0..=2.0).contains(&counted), "{reason}: {counted}");
    }
    assert!(after.contains("cedargate_bundle_revision 11"), "{after}");
    assert!(
        shared.is_ready(),
        "a refused bundle does not make the server unready"
    );

    // The watcher installs a bundle swapped in on disk.
    write_bundle(&file, 13, &key, None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while shared.bundle_revision() != Some(13) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new bundle was not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(server.check(health()).await.code(), tonic::Code::Ok);
}

#[tokio::test]
async fn a_bundle_that_does_not_verify_stops_start_up_naming_it() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("policies.tar.gz");
    std::fs::write(&file, b"garbage").unwrap();
    cedargate::app::install_crypto_provider();
    let config: Config = test_config(PolicySource::Bundle(BundleSource {
        path: file.clone(),
        public_key: None,
        allow_rollback: false,
        remote: None,
    }));
    let err = cedargate::app::build(config).await.unwrap_err().to_string();
    assert!(err.contains("policies.tar.gz"), "{err}");
    assert!(err.contains("not a bundle"), "{err}");
}
