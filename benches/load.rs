//! Load benchmark: the real `cedargate` binary against a no-op Check server, both driven over
//! real gRPC by the same client in the same run.
//!
//! - **baseline**: this bench binary re-executed as a tonic `Authorization` server that answers
//!   OK without looking at the request (same tonic, same runtime shape, `TCP_NODELAY` as
//!   cedargate), i.e. what the gRPC framework itself costs on this machine;
//! - **cedargate**: `cedargate serve` on a generated 100-policy set (`testutil::policygen`),
//!   one ES256 issuer whose keys are read from a JWKS file, default configuration otherwise
//!   (decision log on, every allow logged as a JSON line to stderr, which this process drains).
//!
//! Every check is `GET /svc0/items/item0` with a valid bearer token (cached after the first
//! check), `x-tenant`, and the headers a curl request through Envoy carries: an allow that
//! runs token lookup, mapping and Cedar evaluation. Every answer is checked to be an allow.
//!
//! For each transport (TCP on 127.0.0.1, Unix socket) and each concurrency (1, 16, 64 streams
//! spread over 4 HTTP/2 connections; 1 stream on 1 connection), rounds alternate between the
//! two servers (baseline first in even rounds, cedargate first in odd ones). Each round runs
//! a warm-up, then measures throughput, latency percentiles and the server's CPU time per
//! check (utime + stime from `/proc/<pid>/stat`). Reported: the median over rounds of each
//! figure, and cedargate / baseline ratios. A CSV of every round goes to
//! `target/bench/load.csv` (read by `scripts/bench-chart.py`).
//!
//! Run: `cargo bench --bench load`
//! (`CEDARGATE_LOAD_SECONDS`, default 4; `CEDARGATE_LOAD_ROUNDS`, default 3;
//! `CEDARGATE_LOAD_CONCURRENCY`, default `1,16,64`; `CEDARGATE_LOAD_TRANSPORTS`, default `tcp,unix`;
//! `CEDARGATE_BENCH_DECISION_CACHE=0` turns cedargate's decision cache off, so that every
//! check is evaluated: what a stream of distinct requests costs.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use cedargate::testutil::Reply;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use support::{Fixture, Server, connect};

const CONNECTIONS: usize = 4;

fn main() {
    if support::run_role() {
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let settings = Settings::from_env();
    let runtime = support::runtime();
    let work = tempfile::tempdir().unwrap();
    let fixture = Fixture::write(work.path());
    let mut rows = Vec::new();
    for transport in &settings.transports {
        let baseline = Server::noop(work.path(), transport);
        let cedargate = Server::cedargate(work.path(), transport);
        for &concurrency in &settings.concurrency {
            for round in 0..settings.rounds {
                let order = if round % 2 == 0 {
                    [&baseline, &cedargate]
                } else {
                    [&cedargate, &baseline]
                };
                for server in order {
                    let result = runtime.block_on(drive(
                        server,
                        &fixture.request,
                        concurrency,
                        settings.seconds,
                    ));
                    eprintln!(
                        "{transport:>4} c={concurrency:<3} round {round} {:<9} {:>8.0} checks/s  p50 {:>7.1} µs  p99 {:>7.1} µs  p99.9 {:>7.1} µs  cpu {:>5.1} µs/check",
                        server.name,
                        result.throughput,
                        result.p50,
                        result.p99,
                        result.p999,
                        result.cpu_per_check,
                    );
                    rows.push(Row {
                        transport: transport.clone(),
                        concurrency,
                        round,
                        server: server.name,
                        result,
                    });
                }
            }
        }
    }
    report(&rows, &settings);
    write_csv(&rows);
}

struct Settings {
    seconds: f64,
    rounds: usize,
    concurrency: Vec<usize>,
    transports: Vec<String>,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            seconds: support::setting("CEDARGATE_LOAD_SECONDS", "4"),
            rounds: support::setting("CEDARGATE_LOAD_ROUNDS", "3"),
            concurrency: support::list_setting("CEDARGATE_LOAD_CONCURRENCY", "1,16,64"),
            transports: support::list_setting("CEDARGATE_LOAD_TRANSPORTS", "tcp,unix"),
        }
    }
}

#[derive(Clone, Copy)]
struct Figures {
    throughput: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu_per_check: f64,
}

/// `concurrency` streams, each sending one check after the other, for a warm-up second and
/// then `seconds`.
async fn drive(
    server: &Server,
    request: &CheckRequest,
    concurrency: usize,
    seconds: f64,
) -> Figures {
    let connections = concurrency.min(CONNECTIONS);
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(connect(&server.target).await);
    }
    let run = |phase: Duration| {
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let mut client = AuthorizationClient::new(channels[i % connections].clone());
                let request = request.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(65_536);
                    let end = Instant::now() + phase;
                    loop {
                        let start = Instant::now();
                        if start >= end {
                            break;
                        }
                        let reply = client.check(request.clone()).await.unwrap().into_inner();
                        latencies.push(start.elapsed().as_nanos() as u64);
                        let code = Reply(reply).code();
                        assert_eq!(
                            code,
                            tonic::Code::Ok,
                            "the benchmark request must be allowed"
                        );
                    }
                    latencies
                })
            })
            .collect();
        async move {
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        }
    };
    run(Duration::from_secs(1)).await;
    let cpu_before = server.cpu();
    let started = Instant::now();
    let mut latencies = run(Duration::from_secs_f64(seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = server.cpu().saturating_sub(cpu_before).as_secs_f64();
    let count = latencies.len();
    assert!(
        count > 0,
        "no check completed against {} in {seconds} s",
        server.name
    );
    let [p50, p99, p999] = support::percentiles(&mut latencies);
    Figures {
        throughput: count as f64 / elapsed,
        p50,
        p99,
        p999,
        cpu_per_check: cpu * 1e6 / count as f64,
    }
}

struct Row {
    transport: String,
    concurrency: usize,
    round: usize,
    server: &'static str,
    result: Figures,
}

fn report(rows: &[Row], settings: &Settings) {
    println!(
        "\nload: {} s per round, {} rounds, medians over rounds; ratio = cedargate / baseline; \
         cedargate's allow log: {}",
        settings.seconds,
        settings.rounds,
        support::allow_log()
    );
    println!(
        "| transport | streams | server | checks/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/check |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for transport in &settings.transports {
        for &concurrency in &settings.concurrency {
            let pick = |server: &str, f: fn(&Figures) -> f64| {
                support::median(
                    rows.iter()
                        .filter(|r| {
                            &r.transport == transport
                                && r.concurrency == concurrency
                                && r.server == server
                        })
                        .map(|r| f(&r.result))
                        .collect(),
                )
            };
            let figures = |server: &str| {
                [
                    pick(server, |r| r.throughput),
                    pick(server, |r| r.p50),
                    pick(server, |r| r.p99),
                    pick(server, |r| r.p999),
                    pick(server, |r| r.cpu_per_check),
                ]
            };
            let base = figures("baseline");
            let ours = figures("cedargate");
            for (name, f) in [("baseline", base), ("cedargate", ours)] {
                println!(
                    "| {transport} | {concurrency} | {name} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    f[0], f[1], f[2], f[3], f[4]
                );
            }
            println!(
                "| {transport} | {concurrency} | ratio | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                ours[0] / base[0],
                ours[1] / base[1],
                ours[2] / base[2],
                ours[3] / base[3],
                ours[4] / base[4]
            );
        }
    }
}

fn write_csv(rows: &[Row]) {
    let path = support::results_dir().join("load.csv");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(
        file,
        "transport,concurrency,round,server,throughput,p50_us,p99_us,p999_us,cpu_us_per_check"
    )
    .unwrap();
    for r in rows {
        writeln!(
            file,
            "{},{},{},{},{:.1},{:.2},{:.2},{:.2},{:.2}",
            r.transport,
            r.concurrency,
            r.round,
            r.server,
            r.result.throughput,
            r.result.p50,
            r.result.p99,
            r.result.p999,
            r.result.cpu_per_check
        )
        .unwrap();
    }
    eprintln!("rounds written to {}", path.display());
}
