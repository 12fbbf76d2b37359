//! Decision records, replay and the candidate (shadow) policy set, over real gRPC checks to a
//! real server with a real JWKS server: every decided check is recorded without credentials,
//! `cedargate replay` (the library and the real binary) decides the records again to exactly
//! the answers the server gave, and shows what a changed set would change; a candidate set is
//! decided beside the live one, counted, recorded, reloaded, and never enforced.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;

use cedargate::cli::replay::{ReplayArgs, replay};
use cedargate::config::{CandidateSettings, Config, PolicySource, RecordSettings};
use cedargate::record::replay::Change;
use cedargate::record::{Record, RecordedToken};
use cedargate::testutil::jwt::{JwksServer, TestKey, claims};
use cedargate::testutil::{CHECKOUT, TestServer, check, metric_value, test_config, test_issuer};
use jsonwebtoken::Algorithm;

const ISS: &str = "https://idp.test";

fn records_at(dir: &Path) -> RecordSettings {
    RecordSettings {
        path: dir.join("records.jsonl"),
        max_file_bytes: 1 << 20,
        max_files: 2,
        sample: 1.0,
    }
}

fn read_records(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| Record::parse(line).unwrap())
        .collect()
}

fn args(records: &Path, policies: &Path, baseline: Option<&Path>) -> ReplayArgs {
    ReplayArgs {
        records: vec![records.to_owned()],
        policies: policies.to_owned(),
        baseline: baseline.map(Path::to_path_buf),
        public_key: None,
        format: "text".into(),
    }
}

/// A config on `policies` with one issuer and records in `records`, redacting a header and a
/// claim the example policies do not read (so that their records replay exactly).
fn config(policies: &Path, jwks: &JwksServer, records: &Path) -> Config {
    let mut config: Config = test_config(PolicySource::Dir(policies.to_owned()));
    config.issuers = vec![test_issuer(ISS, &jwks.uri())];
    config.records = Some(records_at(records));
    config.decision_log.redact = vec!["x-tenant".into(), "department".into()];
    config
}

#[tokio::test]
async fn recorded_checks_replay_to_the_answers_given_and_a_change_is_shown() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let policies = support::policies::example_with(&[]);
    let records = tempfile::tempdir().unwrap();
    let mut server = TestServer::with_config(config(policies.path(), &jwks, records.path())).await;
    let mut alice_claims = claims(ISS, "orders", "alice");
    alice_claims["department"] = "SALES-DEPT".into();
    alice_claims["roles"] = serde_json::json!(["support"]);
    let alice = key.sign(&alice_claims);
    let mut string_roles = claims(ISS, "orders", "carol");
    string_roles["roles"] = "support".into();
    let carol = key.sign(&string_roles);

    let checks = vec![
        check("GET", "/profiles/alice").bearer(&alice),
        check("GET", "/profiles/bob").bearer(&alice),
        check("GET", "/orders/1001").bearer(&alice),
        check("GET", "/orders"),
        check("GET", "/orders").bearer("not.a.jwt"),
        check("GET", "/orders/1001").bearer(&carol),
        check("GET", "/healthz").header("x-tenant", "acme"),
        check("POST", "/orders").peer(CHECKOUT),
        check("POST", "/orders")
            .peer(CHECKOUT)
            .header("content-type", "application/json")
            .body(r#"{"total": 250000}"#),
        check("GET", "/profiles/alice?access_token=secret").bearer(&alice),
    ];
    let mut answers = Vec::new();
    for (n, request) in checks.into_iter().enumerate() {
        let id = format!("rid-{n}");
        let reply = server
            .check(
                request
                    .without_header("x-request-id")
                    .header("x-request-id", &id)
                    .build(),
            )
            .await;
        answers.push((id, reply.code(), reply.http_status()));
    }
    server.app.shutdown().await.unwrap();
    let path = records.path().join("records.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let recorded = read_records(&path);
    assert_eq!(recorded.len(), answers.len(), "every decided check");

    // The answers the server gave are the recorded ones (a 401 for the refused tokens too).
    for ((id, code, status), record) in answers.iter().zip(&recorded) {
        assert_eq!(&record.request_id, id);
        assert_eq!(record.outcome.is_allow(), *code == tonic::Code::Ok, "{id}");
        assert_eq!(record.outcome.status.map(i32::from), *status, "{id}");
    }
    assert!(matches!(recorded[4].token, RecordedToken::Refused(_)));
    assert_eq!(recorded[5].outcome.reason, "invalid_claim");
    assert_eq!(recorded[8].outcome.policies, ["orders-large-need-role"]);
    assert_eq!(recorded[9].outcome.reason, "token_in_query");
    assert!(
        recorded[8].request.body.is_some(),
        "the set reads bodies: kept"
    );
    // No credential is written: not the token, not its header, not the query token.
    assert!(!text.contains(&alice) && !text.contains("not.a.jwt"));
    for record in &recorded {
        assert!(!record.request.headers.contains_key("authorization"));
        assert!(!record.request.query.contains_key("access_token"));
    }
    assert!(
        recorded[9]
            .left_out
            .contains(&"query:access_token".to_owned()),
        "named, not written"
    );
    assert!(!text.contains("secret"));
    // Redacted names keep their place, not their value.
    assert!(
        !text.contains("acme") && !text.contains("SALES-DEPT"),
        "{text}"
    );
    assert_eq!(recorded[6].request.headers["x-tenant"], "[redacted]");
    let RecordedToken::Verified(facts) = &recorded[0].token else {
        panic!("a verified token")
    };
    assert_eq!(facts.claims["department"], "[redacted]");
    assert_eq!(facts.subject, "alice");

    // Against the set that produced them: every decision, exactly.
    let same = replay(&args(&path, policies.path(), None)).unwrap();
    assert_eq!(same.records, recorded.len() as u64);
    assert_eq!(same.unchanged, same.records, "{same:?}");
    assert!(!same.any_change());

    // A set that forbids alice profiles: her own is now denied (allow → deny), and bob's,
    // denied before for want of a permit, is now denied by the forbid (other policies).
    let changed = support::policies::example_with(&[(
        "extra.cedar",
        r#"@id("no-alice") forbid (principal == User::"alice", action == Action::"profile:read", resource);"#,
    )]);
    let report = replay(&args(&path, changed.path(), None)).unwrap();
    assert_eq!(report.changed.allow_to_deny, 1, "{report:?}");
    assert_eq!(report.changed.policies, 1);
    assert_eq!(report.changed.total(), 2);
    assert_eq!(report.changed.examples[&Change::AllowToDeny], ["rid-0"]);
    assert_eq!(report.changed.examples[&Change::Policies], ["rid-1"]);
    assert_eq!(report.by_policy["no-alice"].allow_to_deny, 1);
    assert_eq!(report.by_policy["no-alice"].policies, 1);
    assert_eq!(
        report.by_action[r#"Action::"profile:read""#].allow_to_deny,
        1
    );
    // The same against a baseline set rather than the recorded outcomes.
    let against = replay(&args(&path, changed.path(), Some(policies.path()))).unwrap();
    assert_eq!(against.changed, report.changed);
    assert!(against.baseline_version.is_some());

    // The real command: exit 0 unchanged, 1 changed (a CI gate), 2 on a broken record.
    let cli = |policies: &Path, records: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cedargate"))
            .args(["replay", "--format", "json", "--records"])
            .arg(records)
            .arg("--policies")
            .arg(policies)
            .output()
            .unwrap()
    };
    let unchanged = cli(policies.path(), &path);
    assert_eq!(unchanged.status.code(), Some(0));
    let changed_run = cli(changed.path(), &path);
    assert_eq!(changed_run.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&changed_run.stdout).unwrap();
    assert_eq!(json["changed"]["allow_to_deny"], 1);
    let broken = records.path().join("broken.jsonl");
    std::fs::write(
        &broken,
        format!("{}\n{{not json\n", text.lines().next().unwrap()),
    )
    .unwrap();
    let failed = cli(policies.path(), &broken);
    assert_eq!(failed.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("broken.jsonl:2"), "{stderr}");
    jwks.stop().await;
}

#[tokio::test]
async fn a_candidate_set_is_decided_beside_the_live_one_and_never_enforced() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let live = support::policies::example_with(&[]);
    let candidate = support::policies::example_with(&[(
        "extra.cedar",
        r#"@id("health-closed") forbid (principal, action, resource == Path::"/healthz");"#,
    )]);
    let records = tempfile::tempdir().unwrap();
    let mut config = config(live.path(), &jwks, records.path());
    config.candidate = Some(CandidateSettings {
        source: PolicySource::Dir(candidate.path().to_owned()),
        sample: 1.0,
    });
    let mut server = TestServer::with_config(config).await;
    let shadow = |metrics: &str, live: &str, candidate: &str| {
        metric_value(
            metrics,
            "cedargate_shadow_decisions_total",
            &[("live", live), ("candidate", candidate)],
        )
    };
    let before = server.metrics().await;
    let alice = key.sign(&claims(ISS, "orders", "alice"));

    // The candidate forbids the health page: the answer is still the live set's allow.
    let health = server
        .check(
            check("GET", "/healthz")
                .without_header("x-request-id")
                .header("x-request-id", "h1")
                .build(),
        )
        .await;
    assert_eq!(health.code(), tonic::Code::Ok);
    let denied = server
        .check(
            check("GET", "/profiles/bob")
                .bearer(&alice)
                .without_header("x-request-id")
                .header("x-request-id", "p1")
                .build(),
        )
        .await;
    assert_eq!(denied.http_status(), Some(403));
    // The candidate decides off the check's path: wait (bounded) for its counts.
    let after = until(&server, |m| {
        shadow(m, "allow", "deny") - shadow(&before, "allow", "deny") >= 1.0
            && shadow(m, "deny", "deny") - shadow(&before, "deny", "deny") >= 1.0
    })
    .await;
    assert_eq!(
        shadow(&after, "allow", "deny") - shadow(&before, "allow", "deny"),
        1.0
    );
    assert_eq!(
        shadow(&after, "deny", "deny") - shadow(&before, "deny", "deny"),
        1.0
    );
    let version = server.app.shared.candidate_version().unwrap();
    assert!(after.contains(&format!(
        "cedargate_candidate_policy_info{{version=\"{version}\"}} 1"
    )));

    // A change to the candidate is reloaded into the candidate, not into the live set; an
    // invalid one keeps the last good candidate.
    let live_version = server.app.shared.snapshot.load().version.clone();
    std::fs::write(candidate.path().join("extra.cedar"), "forbid (").unwrap();
    reload_candidate(&server, candidate.path()).await;
    assert_eq!(server.app.shared.candidate_version().unwrap(), version);
    std::fs::write(candidate.path().join("extra.cedar"), "// opened again\n").unwrap();
    reload_candidate(&server, candidate.path()).await;
    assert_ne!(server.app.shared.candidate_version().unwrap(), version);
    assert_eq!(server.app.shared.snapshot.load().version, live_version);
    let health = server
        .check(
            check("GET", "/healthz")
                .without_header("x-request-id")
                .header("x-request-id", "h2")
                .build(),
        )
        .await;
    assert_eq!(health.code(), tonic::Code::Ok);
    let last = until(&server, |m| {
        shadow(m, "allow", "allow") - shadow(&after, "allow", "allow") >= 1.0
    })
    .await;
    assert_eq!(
        shadow(&last, "allow", "allow") - shadow(&after, "allow", "allow"),
        1.0
    );
    server.app.shutdown().await.unwrap();

    // Each record carries the candidate's outcome beside the live one.
    let recorded = read_records(&records.path().join("records.jsonl"));
    let mut outcomes: Vec<(&str, bool, Option<bool>)> = recorded
        .iter()
        .map(|r| {
            (
                r.request_id.as_str(),
                r.outcome.is_allow(),
                r.candidate.as_ref().map(|c| c.is_allow()),
            )
        })
        .collect();
    // Written as each candidate evaluation ends: in any order.
    outcomes.sort_unstable();
    assert_eq!(
        outcomes,
        [
            ("h1", true, Some(false)),
            ("h2", true, Some(true)),
            ("p1", false, Some(false))
        ]
    );
    let h1 = recorded.iter().find(|r| r.request_id == "h1").unwrap();
    assert_eq!(h1.candidate.as_ref().unwrap().policies, ["health-closed"]);
    jwks.stop().await;
}

/// The server's metrics once `done` holds for them (bounded wait).
async fn until(server: &TestServer, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = server.metrics().await;
        if done(&metrics) {
            return metrics;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn reload_candidate(server: &TestServer, dir: &Path) {
    cedargate::reload::reload(
        dir,
        &server.app.shared,
        &cedargate::reload::IssuerTypes::default(),
        cedargate::reload::Target::Candidate,
    )
    .await;
}

#[test]
fn records_from_another_format_or_with_unknown_fields_are_refused() {
    let line = r#"{"format":2,"time":0,"request_id":"r","request":{},"peer":{},"token":"none","token_required_by_default":false,"outcome":{"decision":"allow","reason":"allow"}}"#;
    assert!(Record::parse(line).is_err());
    assert!(Record::parse("{}").is_err());
}

#[tokio::test]
async fn credentials_under_other_spellings_and_redacted_values_at_any_depth_are_not_written() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let policies = support::policies::example_with(&[]);
    let records = tempfile::tempdir().unwrap();
    let mut config = config(policies.path(), &jwks, records.path());
    config.decision_log.redact = vec!["x-secret".into(), "card".into(), "email".into()];
    let mut server = TestServer::with_config(config).await;
    let mut alice_claims = claims(ISS, "orders", "alice");
    alice_claims["profile"] =
        serde_json::json!({"email": "nested@example.test", "cards": [{"card": "4111-NESTED"}]});
    let alice = key.sign(&alice_claims);
    let json = |body: &str| {
        check("POST", "/orders")
            .peer(CHECKOUT)
            .header("content-type", "application/json")
            .body(body)
    };
    let checks = vec![
        check("GET", "/healthz")
            .header("x_api_key", "KEY-UNDERSCORE")
            .header("proxy_authorization", "Basic PROXYSECRET")
            .header("x_secret", "SECRET-UNDERSCORE"),
        check("GET", "/healthz?x.secret=QUERYSECRET&Access.Token=QTOKEN"),
        check("GET", "/profiles/alice").bearer(&alice),
        json(r#"{"total": 5, "card": "4111-BODY", "items": [{"Card": "4111-DEEP"}]}"#),
        check("POST", "/orders")
            .peer(CHECKOUT)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("password=FORMSECRET"),
    ];
    let mut statuses = Vec::new();
    for (n, request) in checks.into_iter().enumerate() {
        let request = request
            .without_header("x-request-id")
            .header("x-request-id", &format!("s-{n}"))
            .build();
        statuses.push(server.check(request).await.http_status());
    }
    assert_eq!(
        statuses,
        [None, Some(401), None, None, Some(400)],
        "the query token under another spelling is refused too"
    );
    server.app.shutdown().await.unwrap();
    let path = records.path().join("records.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [
        "KEY-UNDERSCORE",
        "PROXYSECRET",
        "SECRET-UNDERSCORE",
        "QUERYSECRET",
        "QTOKEN",
        "nested@example.test",
        "4111-NESTED",
        "4111-BODY",
        "4111-DEEP",
        "FORMSECRET",
    ] {
        assert!(!text.contains(secret), "{secret} written: {text}");
    }
    let recorded = read_records(&path);
    assert_eq!(recorded.len(), 5);
    assert!(
        recorded[0]
            .left_out
            .contains(&"header:x_api_key".to_owned())
    );
    assert_eq!(recorded[0].request.headers["x_secret"], "[redacted]");
    assert!(
        recorded[3]
            .request
            .body
            .as_deref()
            .unwrap()
            .contains("[redacted]")
    );
    assert_eq!(recorded[4].request.body, None, "a body that is not JSON");

    // Against the same set: the same answers, but the set reads bodies, and two records
    // left theirs out (redacted, not JSON): inexact, and the replay fails.
    let same = replay(&args(&path, policies.path(), None)).unwrap();
    assert_eq!(same.unchanged, 5, "{same:?}");
    assert_eq!(same.inexact, 2, "{same:?}");
    let inexact: Vec<&str> = same
        .inexact_examples
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(inexact, ["s-3", "s-4"]);
    assert!(same.any_change());
    // A set whose policies read the redacted header: that record is inexact too.
    let reads_secret = support::policies::example_with(&[(
        "extra.cedar",
        r#"@id("secret") forbid (principal, action, resource) when { context.request.headers.hasTag("x-secret") };"#,
    )]);
    let report = replay(&args(&path, reads_secret.path(), None)).unwrap();
    assert!(
        report
            .inexact_examples
            .iter()
            .any(|(id, what)| id == "s-0" && what == "header:x_secret"),
        "{report:?}"
    );
    jwks.stop().await;
}
