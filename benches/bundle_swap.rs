//! A 10,000-policy bundle: how long it takes to verify and activate (open: unpack within
//! bounds, check every hash, load and validate the set; then the one swap), and what that
//! does to checks decided meanwhile on another thread.
//!
//! Checks: `decide::evaluate` on the set in force (`Shared::snapshot`, loaded per check as
//! the handler does), 20 users with tokens cycling over 10 items each (200 distinct checks, so
//! the tokens' decision caches answer most of them between swaps), on one thread; the
//! activation runs on the main thread (the machine has two cores). Baseline: the same checks
//! in the 3 s before the swap starts; then the checks while the bundle is opened and
//! installed, and the 200 ms after (the tokens' parts and verdicts are rebuilt for the new
//! set then).
//!
//! The set: `testutil::policygen` with 10,000 policies over 50 services (200 actions, 50
//! policies an action). (policygen's default shape gives every 20 policies a service of its
//! own: 2,000 actions at 10,000 policies, which Cedar's strict validator takes minutes to
//! load, BENCHMARKS.md "100,000 policies".)
//!
//! Run: `cargo bench --bench bundle_swap` (`CEDARGATE_SWAP_POLICIES`, default 10000;
//! `CEDARGATE_SWAP_SERVICES`, default 50).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use cedargate::config::Limits;
use cedargate::identity::Presented;
use cedargate::identity::authn::Authenticator;
use cedargate::policy::bundle;
use cedargate::server::check::prepare;
use cedargate::server::{Shared, envoy};
use cedargate::testutil::{check, policygen};

const NOW: i64 = 1_700_000_000;
const BEFORE: u8 = 0;
const DURING: u8 = 1;
const AFTER: u8 = 2;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let policies: usize = std::env::var("CEDARGATE_SWAP_POLICIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let services: usize = std::env::var("CEDARGATE_SWAP_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    policygen::write_with_services(dir.path(), policies, services).unwrap();
    let first = bundle::build(dir.path(), 1, None).unwrap();
    std::fs::write(
        dir.path().join("extra.cedar"),
        r#"@id("swap-extra") forbid (principal, action, resource == Path::"/nowhere");"#,
    )
    .unwrap();
    let second = bundle::build(dir.path(), 2, None).unwrap();
    println!(
        "bundle of {policies} policies: {} KiB packed",
        second.len() / 1024
    );

    // Verify and load, three times: the median.
    let origin = std::path::Path::new("bench.tar.gz");
    let mut opens: Vec<Duration> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let opened = bundle::open(&second, origin, None).unwrap();
            let took = started.elapsed();
            drop(opened);
            took
        })
        .collect();
    opens.sort();
    println!(
        "open (unpack, hashes, load, validate): median {:?} of {opens:?}",
        opens[1]
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let authn = runtime
        .block_on(async { Authenticator::start(Vec::new(), Default::default()) })
        .unwrap();
    let live = bundle::open(&first, origin, None).unwrap();
    let shared = Arc::new(Shared::new(
        live.snapshot,
        authn,
        Limits::default(),
        Default::default(),
        Default::default(),
    ));
    shared.bundle_in_force(1);

    let phase = Arc::new(AtomicU8::new(BEFORE));
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (shared, phase, stop) = (shared.clone(), phase.clone(), stop.clone());
        std::thread::spawn(move || {
            let limits = Limits::default();
            let tokens: Vec<_> = (0..20).map(policygen::token).collect();
            let requests: Vec<_> = (0..200)
                .map(|n| {
                    let request = check("GET", &format!("/svc0/items/item{}", n % 10))
                        .header("x-tenant", "t0")
                        .build();
                    let prepared =
                        prepare(&limits, &Default::default(), envoy::input(request), NOW).unwrap();
                    (prepared.request, Arc::new(prepared.peer), n / 10)
                })
                .collect();
            let mut times: [Vec<Duration>; 3] = Default::default();
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let (request, peer, user) = &requests[n % requests.len()];
                let presented = Presented {
                    peer: peer.clone(),
                    peer_refused: None,
                    token: Ok(Some(tokens[*user].clone())),
                    token_required_by_default: true,
                };
                let at = phase.load(Ordering::Acquire);
                let started = Instant::now();
                let snapshot = shared.snapshot.load();
                let evaluation = cedargate::decide::evaluate(&snapshot, request, &presented, NOW);
                std::hint::black_box(evaluation);
                times[usize::from(at)].push(started.elapsed());
                n += 1;
            }
            times
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    phase.store(DURING, Ordering::Release);
    let started = Instant::now();
    let opened = bundle::open(&second, origin, None).unwrap();
    shared.install_bundle(opened.snapshot, opened.manifest.revision);
    let activation = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    phase.store(AFTER, Ordering::Release);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let mut times = checker.join().unwrap();
    for t in &mut times {
        t.sort();
    }
    let [before, during, _after] = &times;
    println!(
        "verified and activated in {activation:?} (revision {:?})",
        shared.bundle_revision()
    );
    for (name, t) in [("before the swap", before), ("during it (+200 ms)", during)] {
        println!(
            "checks {name}: {} checks, p50 {:?}, p99 {:?}, p99.9 {:?}",
            t.len(),
            percentile(t, 0.5),
            percentile(t, 0.99),
            percentile(t, 0.999)
        );
    }
    let ratio = percentile(during, 0.99).as_secs_f64() / percentile(before, 0.99).as_secs_f64();
    println!("p99 during / before: {ratio:.2}x");
}
