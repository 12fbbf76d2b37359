//! The policy author's commands, run as the real binary: `cedargate validate`, `test` and
//! `check` — exit codes, output shape, file:line of problems, JUnit XML (parsed), and the
//! example tests in `policies/tests/` (this is how `cedargate test policies/` runs in CI).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cedargate::testutil::pki::TestCa;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cedargate");

fn cedargate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// A copy of the example policy set (without its tests) in a fresh directory.
fn example_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "orders.cedar",
        "schema.cedarschema",
        "entities.json",
        "routes.yaml",
    ] {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policies")
            .join(name);
        std::fs::copy(from, dir.path().join(name)).unwrap();
    }
    dir
}

fn path(dir: &tempfile::TempDir) -> &str {
    dir.path().to_str().unwrap()
}

fn append(file: PathBuf, text: &str) -> usize {
    let mut content = std::fs::read_to_string(&file).unwrap();
    let line = content.lines().count() + 1;
    content.push_str(text);
    std::fs::write(file, content).unwrap();
    line
}

#[test]
fn the_example_policy_tests_pass() {
    let output = cedargate(&["test", "policies/"]);
    let out = stdout(&output);
    assert!(output.status.success(), "{out}{}", stderr(&output));
    let last = out.lines().last().unwrap();
    let (passed, failed) = last.split_once(" passed, ").unwrap();
    assert!(passed.parse::<usize>().unwrap() >= 30, "{last}");
    assert_eq!(failed, "0 failed");
    // Every example policy is determining in at least one allow or deny case.
    let policies = std::fs::read_to_string("policies/orders.cedar").unwrap();
    let tests: String = ["orders", "profiles", "workloads"]
        .iter()
        .map(|f| std::fs::read_to_string(format!("policies/tests/{f}.yaml")).unwrap())
        .collect();
    for id in policies
        .lines()
        .filter_map(|l| l.strip_prefix("@id(\"")?.strip_suffix("\")"))
    {
        assert!(
            tests.contains(&format!("policies: [{id}]")),
            "{id} untested"
        );
    }
}

#[test]
fn validate_accepts_the_example_set() {
    let output = cedargate(&["validate", "--policies", "policies"]);
    assert!(output.status.success(), "{}", stdout(&output));
    assert!(stdout(&output).contains("policies: valid (10 policies, 7 routes"));
    assert_eq!(stderr(&output), "");

    let output = cedargate(&["validate", "--policies", "policies", "--format", "json"]);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["policies"], 10);
    assert_eq!(report["errors"], serde_json::json!([]));
    assert_eq!(report["version"].as_str().unwrap().len(), 12);
}

/// The example set with `policy` appended to orders.cedar, validated: it must fail, and the
/// output must name orders.cedar at `offset` lines into the appended text.
fn validate_broken(policy: &str, offset: usize) -> (tempfile::TempDir, String, usize) {
    let dir = example_copy();
    let line = append(dir.path().join("orders.cedar"), policy) + offset;
    let output = cedargate(&["validate", "--policies", path(&dir)]);
    assert_eq!(output.status.code(), Some(1));
    // Problems and the verdict of an invalid set go to stderr; nothing to stdout.
    assert_eq!(stdout(&output), "");
    let out = stderr(&output);
    let expected = format!("{}:{line}:", dir.path().join("orders.cedar").display());
    assert!(out.contains(&expected), "{expected} in\n{out}");
    (dir, out, line)
}

#[test]
fn validate_reports_a_broken_policy_with_file_line_and_policy_id() {
    // The attribute access is on the third line of the appended text.
    let (dir, out, line) = validate_broken(
        "\n@id(\"typo\")\npermit (principal is User, action == Action::\"orders:read\", resource is Order)\nwhen { resource.ownr == principal };\n",
        3,
    );
    let file = dir.path().join("orders.cedar");
    // The policy is named once, whether Cedar's message names it or cedargate adds it.
    assert_eq!(out.matches("`typo`").count(), 1, "{out}");
    assert!(out.contains("invalid (1 error,"), "{out}");

    let output = cedargate(&["validate", "--policies", path(&dir), "--format", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let error = &report["errors"][0];
    assert_eq!(error["file"], file.display().to_string());
    assert_eq!(error["line"], line);
    assert_eq!(error["policy_id"], "typo");
    assert!(error["message"].as_str().unwrap().contains("ownr"));
}

#[test]
fn validate_reports_a_syntax_error_where_it_is() {
    validate_broken(
        "\npermit (principal, action, resource) when { principal == };\n",
        1,
    );
}

#[test]
fn validate_warns_about_a_policy_no_request_reaches() {
    let dir = example_copy();
    append(
        dir.path().join("schema.cedarschema"),
        "\naction \"orders:archive\" appliesTo { principal: [User], resource: Order, context: CheckContext };\n",
    );
    let line = append(
        dir.path().join("orders.cedar"),
        "\n@id(\"archive\")\npermit (principal, action == Action::\"orders:archive\", resource);\n",
    );
    let output = cedargate(&["validate", "--policies", path(&dir)]);
    let out = stderr(&output);
    assert!(output.status.success(), "a warning is not an error: {out}");
    let expected = format!(
        "warning: {}:{}:1: no request can reach this policy's action (Action::\"orders:archive\")",
        dir.path().join("orders.cedar").display(),
        line + 1
    );
    assert!(out.contains(&expected), "{expected} in\n{out}");
    assert!(
        stdout(&output).contains("; 1 warning)"),
        "{}",
        stdout(&output)
    );
    // --strict makes warnings fail.
    let output = cedargate(&["validate", "--policies", path(&dir), "--strict"]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn validate_checks_the_configuration_against_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cedargate.yaml");
    std::fs::write(
        &config,
        "issuers:\n  - issuer: https://idp.example\n    audiences: [orders]\n    jwks: { file: jwks.json }\n    principal_type: Robot\n",
    )
    .unwrap();
    let output = cedargate(&[
        "validate",
        "--policies",
        "policies",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let out = stderr(&output);
    assert!(
        out.contains(&format!(
            "{}: issuer `https://idp.example`: `Robot` (its principal_type or group_type) is not an entity type of the schema",
            config.display()
        )),
        "{out}"
    );

    std::fs::write(&config, "listen:\n  grpc: 127.0.0.1:9191\n  nonsense: 1\n").unwrap();
    let output = cedargate(&["validate", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!("{}:3:", config.display())),
        "{}",
        stderr(&output)
    );

    // A second issuer's problem names that issuer, and the file is named once.
    std::fs::write(
        &config,
        "issuers:
  - issuer: https://a.example
    audiences: [orders]
    jwks: { file: jwks.json }
    principal_type: User
  - issuer: https://b.example
    audiences: []
    jwks: { file: jwks.json }
    principal_type: Service
",
    )
    .unwrap();
    let output = cedargate(&["validate", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("`issuers[1].audiences`"), "{err}");
    assert_eq!(
        err.matches(&config.display().to_string()).count(),
        1,
        "{err}"
    );
    // A configuration that does not load is the only thing reported: not the ./policies
    // directory serve would never read, nor "policies: invalid".
    assert!(err.ends_with("invalid (1 error, 0 warnings)\n"), "{err}");

    // The Kubernetes ConfigMap's placeholder issuer is refused with what to do.
    std::fs::write(
        &config,
        "issuers:\n  - { issuer: https://your-identity-provider.invalid, audiences: [orders], jwks: { discovery: true } }\n",
    )
    .unwrap();
    let output = cedargate(&["validate", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("`issuers[0].issuer` = `https://your-identity-provider.invalid`: a `.invalid` host never exists (RFC 2606): this is the shipped placeholder"),
        "{err}"
    );
}

const FAILING: &str = r#"
issuers:
  - { issuer: https://auth.example.org, audiences: [orders], principal_type: User }
cases:
  - name: owner reads
    request: { method: GET, path: /orders/1002 }
    token: { sub: alice }
    expect: allow
  - name: wrong expectation
    request: { method: GET, path: /orders/1002 }
    token: { sub: bob }
    expect: { decision: allow, policies: [orders-owner-read] }
"#;

#[test]
fn a_failing_case_shows_expected_and_actual_and_fails_the_run() {
    let dir = example_copy();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    let file = dir.path().join("tests/orders.yaml");
    std::fs::write(&file, FAILING).unwrap();
    let junit = dir.path().join("junit.xml");
    let output = cedargate(&["test", path(&dir), "--junit", junit.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let out = stdout(&output);
    assert!(out.contains("  ok    owner reads"), "{out}");
    assert!(
        out.contains(&format!("  FAIL  wrong expectation ({}:9)", file.display())),
        "{out}"
    );
    assert!(out.contains("- expected decision: allow"), "{out}");
    assert!(
        out.contains("+ actual   decision: deny (reason policy_denied"),
        "{out}"
    );
    assert!(
        out.contains("- expected policies: [\"orders-owner-read\"]"),
        "{out}"
    );
    assert!(out.contains("+ actual   policies: []"), "{out}");
    assert_eq!(out.lines().last(), Some("1 passed, 1 failed"));

    // The JUnit file is well-formed XML with the counts and the failure's message.
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("2"));
    assert_eq!(root.attribute("failures"), Some("1"));
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 2);
    let failure = cases[1]
        .children()
        .find(|n| n.has_tag_name("failure"))
        .expect("the failing case has a <failure>");
    assert_eq!(
        failure.attribute("message"),
        Some("- expected decision: allow")
    );
    assert!(cases[0].children().all(|n| !n.has_tag_name("failure")));

    // --filter runs only what matches; a filter that matches nothing fails the run.
    let output = cedargate(&["test", path(&dir), "--filter", "owner reads"]);
    assert!(output.status.success(), "{}", stdout(&output));
    assert_eq!(stdout(&output).lines().last(), Some("1 passed, 0 failed"));
    let output = cedargate(&["test", path(&dir), "--filter", "no such case"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no test case ran"));
    // No file is listed when none of its cases ran.
    assert_eq!(stdout(&output), "0 passed, 0 failed\n");
}

#[test]
fn a_broken_policy_set_or_test_file_fails_the_run_with_its_location() {
    let dir = example_copy();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(dir.path().join("tests/a.yaml"), FAILING).unwrap();
    let line = append(
        dir.path().join("orders.cedar"),
        "\npermit (principal, action == Action::\"nope\", resource);\n",
    );
    let output = cedargate(&["test", path(&dir)]);
    assert_eq!(output.status.code(), Some(1));
    let out = stdout(&output);
    let expected = format!(
        "{}:{}:",
        dir.path().join("orders.cedar").display(),
        line + 1
    );
    assert!(out.contains("ERROR policy set"), "{out}");
    assert!(out.contains(&expected), "{expected} in\n{out}");
    assert!(
        out.ends_with("0 passed, 0 failed, 1 files with errors\n"),
        "{out}"
    );

    let dir = example_copy();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("tests/bad.yaml"),
        "cases:\n  - name: x\n    request: { path: /healthz }\n    expect: maybe\n",
    )
    .unwrap();
    let output = cedargate(&["test", path(&dir)]);
    assert_eq!(output.status.code(), Some(1));
    let expected = format!(
        "ERROR {}:4:13: cases[0].expect: unknown variant `maybe`, expected one of `allow`, `deny`, `unauthenticated`",
        dir.path().join("tests/bad.yaml").display()
    );
    assert!(stdout(&output).contains(&expected), "{}", stdout(&output));

    // Two cases with one name would be one line in a report: refused, with the line.
    std::fs::write(
        dir.path().join("tests/bad.yaml"),
        "cases:\n  - { name: x, request: { path: /healthz }, expect: allow }\n  - { name: x, request: { path: /healthz }, expect: allow }\n",
    )
    .unwrap();
    let output = cedargate(&["test", path(&dir)]);
    assert_eq!(output.status.code(), Some(1));
    let expected = format!(
        "{}:3: the case name `x` is used twice",
        dir.path().join("tests/bad.yaml").display()
    );
    assert!(stdout(&output).contains(&expected), "{}", stdout(&output));
}

#[test]
fn test_issuers_mean_what_the_configuration_would_mean() {
    let dir = example_copy();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    // No groups_claim: the configuration's default (`groups`) applies, so carol is an admin;
    // a flow-style case's failure still points at its line.
    std::fs::write(
        dir.path().join("tests/a.yaml"),
        "issuers:\n  - { issuer: https://auth.example.org, audiences: [orders], groups_claim: groups }\ncases:\n  - { name: admin lists, request: { path: /orders }, token: { sub: carol, groups: [admins] }, expect: allow }\n  - { name: wrong, request: { path: /orders }, token: { sub: carol, groups: [admins] }, expect: deny }\n",
    )
    .unwrap();
    let output = cedargate(&["test", path(&dir)]);
    let out = stdout(&output);
    assert!(out.contains("  ok    admin lists"), "{out}");
    let at = format!(
        "  FAIL  wrong ({}:5)",
        dir.path().join("tests/a.yaml").display()
    );
    assert!(out.contains(&at), "{out}");

    // An issuer serve would refuse is refused here too.
    std::fs::write(
        dir.path().join("tests/a.yaml"),
        "issuers:\n  - { issuer: https://auth.example.org, audiences: [orders], principal_type: Usr }\ncases:\n  - { name: x, request: { path: /orders }, token: { sub: carol }, expect: deny }\n",
    )
    .unwrap();
    let output = cedargate(&["test", path(&dir)]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains(
            "`Usr` (its principal_type or group_type) is not an entity type of the schema"
        ),
        "{}",
        stdout(&output)
    );
}

#[test]
fn a_bare_deny_means_denied_by_the_policies() {
    let dir = example_copy();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("tests/a.yaml"),
        "issuers:\n  - { issuer: https://auth.example.org, audiences: [orders], groups_claim: groups }\ncases:\n  - name: typo in the path\n    request: { method: DELETE, path: /order/1002 }\n    token: { sub: bob }\n    expect: deny\n  - name: said so\n    request: { method: DELETE, path: /order/1002 }\n    token: { sub: bob }\n    expect: { decision: deny, reason: no_route }\n",
    )
    .unwrap();
    let output = cedargate(&["test", path(&dir), "--coverage"]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(out.contains("  FAIL  typo in the path"), "{out}");
    assert!(
        out.contains("- expected reason: policy_denied\n        + actual   reason: no_route"),
        "{out}"
    );
    assert!(out.contains("  ok    said so"), "{out}");
    let coverage = format!(
        "coverage of {}: 0 of 10 policies determined a decision; never: foreign-workloads,",
        dir.path().display()
    );
    assert!(out.contains(&coverage), "{out}");
}

#[test]
fn a_case_may_name_its_peer_by_certificate() {
    let dir = example_copy();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    let ca = TestCa::new("shop CA");
    let checkout = ca.issue(&["spiffe://shop.example/ns/shop/sa/checkout"], &[]);
    let frontend = ca.issue(&["spiffe://shop.example/ns/shop/sa/frontend"], &[]);
    std::fs::write(dir.path().join("tests/checkout.pem"), &checkout.pem).unwrap();
    let inline = frontend.pem.trim_end().replace('\n', "\n        ");
    std::fs::write(
        dir.path().join("tests/certs.yaml"),
        format!(
            "cases:\n  - name: by file\n    request: {{ method: POST, path: /orders }}\n    peer: {{ certificate: checkout.pem }}\n    expect: {{ decision: allow, policies: [orders-checkout-workload-create] }}\n  - name: inline\n    request: {{ method: POST, path: /orders }}\n    peer:\n      certificate: |\n        {inline}\n    expect: deny\n  - name: disagreeing\n    request: {{ method: POST, path: /orders }}\n    peer: {{ certificate: checkout.pem, spiffe_id: \"spiffe://shop.example/ns/shop/sa/frontend\" }}\n    expect: {{ decision: deny, reason: peer_mismatch }}\n"
        ),
    )
    .unwrap();
    let output = cedargate(&["test", path(&dir)]);
    assert!(output.status.success(), "{}", stdout(&output));
    assert_eq!(stdout(&output).lines().last(), Some("3 passed, 0 failed"));
}

#[test]
fn check_explains_a_decision_offline() {
    let output = cedargate(&[
        "check",
        "-X",
        "GET",
        "--path",
        "/orders/1002",
        "--claims",
        r#"{"sub":"alice"}"#,
        "--format",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["decision"], "allow");
    assert_eq!(
        answer["determining_policies"],
        serde_json::json!(["orders-owner-read"])
    );
    let call = &answer["cedar_request"];
    assert_eq!(call["principal"], r#"User::"alice""#);
    assert_eq!(call["action"], r#"Action::"orders:read""#);
    assert_eq!(call["resource"], r#"Order::"1002""#);
    assert_eq!(call["context"]["request"]["path"], "/orders/1002");
    assert_eq!(call["context"]["token"]["subject"], "alice");
    let entities = call["entities"].as_array().unwrap();
    let headers = entities
        .iter()
        .find(|e| e["uid"]["type"] == "HttpHeaders")
        .unwrap();
    // The token is shown to nobody, not even in an explanation.
    assert_eq!(headers["tags"]["authorization"], "[redacted]");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("Bearer"));
    assert!(entities.iter().any(|e| e["uid"]["id"] == "1002"));

    // A denial: exit 1, text output with the reason and the Cedar request.
    let output = cedargate(&[
        "check",
        "--path",
        "/orders/1002",
        "--claims",
        r#"{"sub":"bob"}"#,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let out = stdout(&output);
    assert!(
        out.starts_with("decision: deny (policy_denied, HTTP 403)"),
        "{out}"
    );
    assert!(out.contains("  principal: User::\"bob\""), "{out}");

    // Without a configuration, decided as `serve` without one decides (review round 2: the
    // stand-in issuer made it a 401 where serve says 403), and the difference is said.
    let output = cedargate(&["check", "--path", "/orders"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).starts_with("decision: deny (policy_denied, HTTP 403)"),
        "{}",
        stdout(&output)
    );
    assert!(
        stderr(&output).contains("note: no issuer is configured"),
        "{}",
        stderr(&output)
    );

    // With the configuration's issuer, as serve: refused before a Cedar request exists.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cedargate.yaml");
    std::fs::write(
        &config,
        "issuers:\n  - { issuer: https://idp.example, audiences: [orders], jwks: { file: jwks.json } }\n",
    )
    .unwrap();
    let output = cedargate(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        "--path",
        "/orders",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("decision: unauthenticated (missing_token, HTTP 401)"));
    assert!(stdout(&output).contains("cedar request: none"));
    assert!(!stderr(&output).contains("note:"), "{}", stderr(&output));

    // Bad input: exit 2 with a message.
    let output = cedargate(&["check", "--path", "/x", "--claims", "{not json"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--claims is not JSON"));
    let output = cedargate(&["check", "--json", "-", "--claims", "{}"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "--json takes the whole request"
    );
}

#[test]
fn check_against_a_server_refuses_claims_naming_the_flags() {
    // A running server trusts only its real issuers: claims to sign offline make no sense
    // there, and the message must name the flags the user typed, not a test-case field.
    let output = cedargate(&[
        "check",
        "--server",
        "127.0.0.1:1",
        "--path",
        "/orders",
        "--claims",
        r#"{"sub":"alice"}"#,
    ]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("--claims") && err.contains("--server"),
        "{err}"
    );
}

#[test]
fn test_reports_json_with_per_case_results_and_times() {
    let output = cedargate(&["test", "policies/", "--format", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let passed = report["passed"].as_u64().unwrap();
    assert!(passed >= 30, "{report}");
    assert_eq!(report["failed"], 0);
    let cases: Vec<&Value> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["cases"].as_array().unwrap())
        .collect();
    assert_eq!(cases.len() as u64, passed);
    for case in cases {
        assert_eq!(case["passed"], true, "{case}");
        assert!(
            case["name"].as_str().is_some_and(|n| !n.is_empty()),
            "{case}"
        );
        assert!(
            case["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{case}"
        );
        assert!(case["line"].as_u64().is_some(), "{case}");
    }
}

/// Policy tests can say where a request came from and went to, and which route extensions it
/// carried: a policy over the optional facts is testable offline, and a wrong expectation
/// fails the run.
#[test]
fn policy_tests_can_give_the_peer_address_destination_and_extensions() {
    let dir = example_copy();
    std::fs::write(
        dir.path().join("network.cedar"),
        r#"@id("health-inside") forbid (principal, action, resource == Path::"/healthz")
unless {
  context.peer has ip && context.peer.ip.isInRange(ip("10.0.0.0/8")) &&
  context has destination && context.destination has port && context.destination.port == 8443 &&
  !(context.request.extensions.hasTag("zone") && context.request.extensions.getTag("zone") == "closed")
};
"#,
    )
    .unwrap();
    let cases = |last: &str| {
        format!(
            r#"cases:
  - name: inside
    request: {{ path: /healthz }}
    peer: {{ address: "10.1.2.3:4000" }}
    expect: allow
  - name: outside
    request: {{ path: /healthz }}
    peer: {{ address: "192.168.1.1:4000" }}
    expect: {{ decision: deny, policies: [health-inside] }}
  - name: another listener
    request: {{ path: /healthz }}
    peer: {{ address: "10.1.2.3:4000" }}
    destination: {{ address: "10.9.9.9:9443" }}
    expect: deny
  - name: a closed route
    request: {{ path: /healthz, context_extensions: {{ zone: closed }} }}
    peer: {{ address: "10.1.2.3:4000" }}
    expect: {last}
"#
        )
    };
    let file = dir.path().join("network.yaml");
    std::fs::write(&file, cases("deny")).unwrap();
    let output = cedargate(&["test", file.to_str().unwrap(), "--policies", path(&dir)]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("4 passed, 0 failed"),
        "{}",
        stdout(&output)
    );
    std::fs::write(&file, cases("allow")).unwrap();
    let output = cedargate(&["test", file.to_str().unwrap(), "--policies", path(&dir)]);
    assert!(!output.status.success());
    assert!(
        stdout(&output).contains("3 passed, 1 failed"),
        "{}",
        stdout(&output)
    );
}
