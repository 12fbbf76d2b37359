//! Hot reload of the policy directory: a changed file is in force for the next checks, an
//! invalid change keeps the last good set (and is counted), and checks running during many
//! reloads all get a valid answer. Waits poll the server's own state with a deadline.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedargate::config::PolicySource;
use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::{TestServer, check, metric_value, test_config, test_issuer};
use tonic::Code;

const BASE: &str = r#"
@id("public-health")
permit (principal, action == Action::"GET", resource == Path::"/healthz");
"#;

/// A copy of the example policy set in a directory of its own, with `main` as the policies.
fn policy_dir(main: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for file in ["schema.cedarschema", "routes.yaml", "entities.json"] {
        std::fs::copy(example.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(dir.path().join("main.cedar"), main).unwrap();
    dir
}

/// Writes a file the way editors and ConfigMaps do: a new file renamed over the old.
fn replace(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn version(server: &TestServer) -> Arc<str> {
    server.app.shared.snapshot.load().version.clone()
}

/// Waits, bounded, until the policy set in force is no longer `old`.
async fn version_changes_from(server: &TestServer, old: &str) -> Arc<str> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = version(server);
        if &*now != old {
            return now;
        }
        assert!(Instant::now() < deadline, "the policy set was not reloaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_changed_policy_is_in_force_and_a_broken_one_is_refused() {
    let dir = policy_dir(BASE);
    let mut server =
        TestServer::with_config(test_config(PolicySource::Dir(dir.path().to_owned()))).await;
    let list = || check("GET", "/orders").build();
    assert_eq!(server.check(list()).await.http_status(), Some(403));
    let v1 = version(&server);

    // A new policy on disk: in force without a restart.
    let opened = format!(
        "{BASE}\n@id(\"anyone-lists\")\npermit (principal, action == Action::\"orders:list\", resource);\n"
    );
    replace(dir.path(), "main.cedar", &opened);
    let v2 = version_changes_from(&server, &v1).await;
    let reply = server.check(list()).await;
    assert_eq!(reply.code(), Code::Ok);
    assert_eq!(reply.meta_list("policy_ids"), ["anyone-lists"]);
    assert_eq!(reply.meta("policy_version").as_deref(), Some(&*v2));
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(&metrics, "cedargate_policy_info", &[("version", &v2)]),
        1.0
    );
    assert_eq!(
        metric_value(&metrics, "cedargate_policy_info", &[("version", &v1)]),
        0.0
    );

    // A broken change: refused, counted, the last good set stays in force, still ready.
    let errors =
        |m: &str| metric_value(m, "cedargate_policy_reloads_total", &[("result", "error")]);
    let before = errors(&server.metrics().await);
    replace(
        dir.path(),
        "main.cedar",
        "permit (principal, action, resource) when { oops };",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while errors(&server.metrics().await) <= before {
        assert!(
            Instant::now() < deadline,
            "the broken change was not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(version(&server), v2);
    assert_eq!(server.check(list()).await.code(), Code::Ok);
    let ready = reqwest::get(server.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);

    // Fixed again: the reload goes through.
    replace(dir.path(), "main.cedar", BASE);
    version_changes_from(&server, &v2).await;
    assert_eq!(server.check(list()).await.http_status(), Some(403));
}

#[tokio::test]
async fn a_reload_drops_the_verdicts_remembered_for_the_previous_set() {
    let key = TestKey::generate(jsonwebtoken::Algorithm::ES256, "ec-1");
    let jwks = JwksServer::start(&[&key]).await;
    let lists = |id: &str| {
        format!(
            "{BASE}\n@id(\"{id}\")\npermit (principal, action == Action::\"orders:list\", resource);\n"
        )
    };
    let dir = policy_dir(&lists("first"));
    let mut config = test_config(PolicySource::Dir(dir.path().to_owned()));
    config.issuers = vec![test_issuer("https://idp.test", &jwks.uri())];
    let mut server = TestServer::with_config(config).await;
    server.ready().await;
    let token = key.sign(&claims("https://idp.test", "orders", "alice"));
    let list = || check("GET", "/orders").bearer(&token).build();
    let cache = |m: &str, result: &str| {
        metric_value(m, "cedargate_decision_cache_total", &[("result", result)])
    };
    let held = |m: &str| metric_value(m, "cedargate_decision_cache_bytes", &[]);

    assert_eq!(server.check(list()).await.code(), Code::Ok);
    let again = server.check(list()).await;
    assert_eq!(again.meta_list("policy_ids"), ["first"]);
    let metrics = server.metrics().await;
    assert_eq!(
        (cache(&metrics, "miss"), cache(&metrics, "hit")),
        (1.0, 1.0)
    );
    assert!(held(&metrics) > 0.0, "{metrics}");

    // The new set is installed, and the token's verdicts under the old one are gone at once,
    // not when the token is next seen.
    let v1 = version(&server);
    replace(dir.path(), "main.cedar", &lists("second"));
    version_changes_from(&server, &v1).await;
    assert_eq!(held(&server.metrics().await), 0.0);
    let reply = server.check(list()).await;
    assert_eq!(reply.meta_list("policy_ids"), ["second"]);
    let metrics = server.metrics().await;
    assert_eq!(
        (cache(&metrics, "miss"), cache(&metrics, "hit")),
        (2.0, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_checks_during_twenty_reloads_all_get_valid_answers() {
    // Two valid sets that allow the same request through different policies: any answer
    // must come whole from one of them.
    let set = |id: &str| {
        format!(
            "{BASE}\n@id(\"{id}\")\npermit (principal, action == Action::\"orders:list\", resource);\n"
        )
    };
    let dir = policy_dir(&set("lists-a"));
    let server =
        TestServer::with_config(test_config(PolicySource::Dir(dir.path().to_owned()))).await;
    let server = Arc::new(server);

    // 50 callers keep checking until the 20 reloads are done.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut checks = Vec::new();
    for _ in 0..50 {
        let mut client = server.client.clone();
        let done = done.clone();
        checks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Acquire) || answers.len() < 20 {
                let reply = client
                    .check(check("GET", "/orders").build())
                    .await
                    .expect("no failed check during reloads")
                    .into_inner();
                answers.push(cedargate::testutil::Reply(reply));
            }
            answers
        }));
    }
    let mut current = version(&server);
    for i in 0..20 {
        replace(
            dir.path(),
            "main.cedar",
            &set(if i % 2 == 0 { "lists-b" } else { "lists-a" }),
        );
        current = version_changes_from(&server, &current).await;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let (mut total, mut seen_a, mut seen_b) = (0, false, false);
    for task in checks {
        for reply in task.await.unwrap() {
            assert_eq!(reply.code(), Code::Ok, "{:?}", reply.body());
            let ids = reply.meta_list("policy_ids");
            assert!(ids == ["lists-a"] || ids == ["lists-b"], "{ids:?}");
            seen_a |= ids == ["lists-a"];
            seen_b |= ids == ["lists-b"];
            total += 1;
        }
    }
    assert!(total >= 1000, "{total} checks");
    assert!(seen_a && seen_b, "checks ran across the reloads");
    let reloads = metric_value(
        &server.metrics().await,
        "cedargate_policy_reloads_total",
        &[("result", "success")],
    );
    assert!(reloads >= 20.0, "{reloads}");
}

#[tokio::test]
async fn a_truncated_forbid_is_never_in_force() {
    // Review round 2, finding 8: a forbid file emptied (or moved away) for a moment was
    // installed, and a request it forbids was allowed meanwhile.
    let dir = policy_dir(&format!(
        "{BASE}\n@id(\"anyone-lists\")\npermit (principal, action == Action::\"orders:list\", resource);\n"
    ));
    std::fs::write(
        dir.path().join("forbid.cedar"),
        "@id(\"no-lists\")\nforbid (principal, action == Action::\"orders:list\", resource);\n",
    )
    .unwrap();
    let mut server =
        TestServer::with_config(test_config(PolicySource::Dir(dir.path().to_owned()))).await;
    let list = || check("GET", "/orders").build();
    let reply = server.check(list()).await;
    assert_eq!(reply.meta_list("policy_ids"), ["no-lists"]);
    let v1 = version(&server);

    let errors =
        |m: &str| metric_value(m, "cedargate_policy_reloads_total", &[("result", "error")]);
    let before = errors(&server.metrics().await);
    // Truncated in place, as an editor or `cp` does before it writes: refused.
    std::fs::write(dir.path().join("forbid.cedar"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while errors(&server.metrics().await) <= before {
        assert!(
            Instant::now() < deadline,
            "the truncated file was not refused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(version(&server), v1);
    assert_eq!(server.check(list()).await.http_status(), Some(403));

    // Deleting the file is how its policies are removed: in force once it stays deleted.
    std::fs::remove_file(dir.path().join("forbid.cedar")).unwrap();
    version_changes_from(&server, &v1).await;
    assert_eq!(server.check(list()).await.code(), Code::Ok);
}

#[cfg(unix)]
#[tokio::test]
async fn a_swapped_policy_directory_is_followed() {
    // Outside review: the watch followed the directory's inode, so a symlink swapped to a
    // new directory (the multi-file update the README recommends) was never reloaded, and
    // edits in the new directory were ignored too.
    let root = tempfile::tempdir().unwrap();
    let a = policy_dir(BASE);
    let lists = format!(
        "{BASE}\n@id(\"anyone-lists\")\npermit (principal, action == Action::\"orders:list\", resource);\n"
    );
    let b = policy_dir(&lists);
    let current = root.path().join("current");
    std::os::unix::fs::symlink(a.path(), &current).unwrap();
    let mut server = TestServer::with_config(test_config(PolicySource::Dir(current.clone()))).await;
    let list = || check("GET", "/orders").build();
    assert_eq!(server.check(list()).await.http_status(), Some(403));
    let v1 = version(&server);

    // Swap the symlink atomically to the new directory.
    let tmp = root.path().join("current.tmp");
    std::os::unix::fs::symlink(b.path(), &tmp).unwrap();
    std::fs::rename(&tmp, &current).unwrap();
    let v2 = version_changes_from(&server, &v1).await;
    assert_eq!(server.check(list()).await.code(), Code::Ok);

    // An edit in the new directory is seen too.
    replace(b.path(), "main.cedar", BASE);
    version_changes_from(&server, &v2).await;
    assert_eq!(server.check(list()).await.http_status(), Some(403));
}
