//! The gateway's accepted rate with its streams on one nats-server (R1)
//! and on a three-node JetStream cluster at three replicas (R3), side by
//! side; then, at R3 under a steady load, the pause a leader change causes
//! (the stream's leader killed with SIGKILL).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use test_support::cluster::NatsCluster;

use crate::ingest::{Load, has_wrk, run_wrk, webhook};
use crate::load::closed_loop;
use crate::services::Service;
use crate::{Options, Row};

async fn accepted_rate(nats_url: &str, replicas: &str, options: &Options) -> anyhow::Result<Load> {
    let namespace = test_support::unique_name("bench_replicas");
    let gateway = Service::start(
        "webhook-gateway",
        &[
            ("NATS_URL", nats_url.to_owned()),
            ("NATS_NAMESPACE", namespace.clone()),
            ("STREAM_REPLICAS", replicas.to_owned()),
        ],
    )
    .await?;
    let url = format!("{}/webhook", gateway.url());
    if has_wrk() {
        return run_wrk(
            &url,
            "webhook.lua",
            &format!(
                "-t2 -c{} -d{}s",
                options.connections,
                options.duration().as_secs()
            ),
            &[("MESSAGES", "1"), ("RUN", namespace.as_str())],
        );
    }
    let client = reqwest::Client::new();
    let measured = closed_loop(options.connections, options.duration(), move |worker, n| {
        let request = client.post(&url).body(webhook(worker, n, 1));
        async move { request.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    Ok(Load::reqwest(&measured))
}

fn load_row(scenario: &str, load: &Load, options: &Options) -> Row {
    Row {
        scenario: scenario.to_owned(),
        result: format!("{:.0} webhooks/s", load.rate),
        detail: format!(
            "p50 {:.2} ms, p99 {:.2} ms; {} connections ({}); {} failed of {}",
            load.p50_ms, load.p99_ms, options.connections, load.tool, load.failed, load.requests
        ),
    }
}

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let single = test_support::NatsServer::start().await;
    let r1 = accepted_rate(&single.url(), "1", options).await?;
    drop(single);
    let mut cluster = NatsCluster::start(3).await;
    let r3 = accepted_rate(&cluster.urls(), "3", options).await?;
    let mut rows = vec![
        load_row(
            "gateway ingest, streams at R1 (one nats-server)",
            &r1,
            options,
        ),
        load_row(
            "gateway ingest, streams at R3 (three-node cluster, same machine)",
            &r3,
            options,
        ),
        Row {
            scenario: "R3 / R1".to_owned(),
            result: format!("{:.0}%", 100.0 * r3.rate / r1.rate.max(1.0)),
            detail: "every publish acknowledged once two of three nodes have it".to_owned(),
        },
    ];
    rows.push(leader_change(&mut cluster).await?);
    Ok(rows)
}

/// Webhooks from 8 clients for a while; the stream leader is killed in the
/// middle. The pause is the longest time no webhook was answered 200.
async fn leader_change(cluster: &mut NatsCluster) -> anyhow::Result<Row> {
    let namespace = test_support::unique_name("bench_leader");
    let gateway = Service::start(
        "webhook-gateway",
        &[
            ("NATS_URL", cluster.urls()),
            ("NATS_NAMESPACE", namespace.clone()),
            ("STREAM_REPLICAS", "3".to_owned()),
        ],
    )
    .await?;
    let stream = wa_broker_nats::Names::new(&namespace).webhook_stream();
    let url = format!("{}/webhook", gateway.url());
    let client = reqwest::Client::new();
    // Warm: the streams exist and have a leader.
    let warm = client.post(&url).body(webhook(99, 0, 1)).send().await?;
    anyhow::ensure!(warm.status() == 200, "the gateway does not accept webhooks");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let ok = client
                        .post(&url)
                        .body(webhook(worker, n, 1))
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                    answers.push((started.elapsed(), ok));
                    n += 1;
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster
        .leader_of(&stream)
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader for {stream}"))?;
    let killed_at = started.elapsed();
    cluster.kill(leader);
    cluster
        .wait_for_new_leader(&stream, leader, Duration::from_secs(60))
        .await;
    let elected_after = started.elapsed() - killed_at;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await?);
    }
    cluster.restart(leader).await;
    answers.sort_by_key(|(at, _)| *at);
    let failed = answers.iter().filter(|(_, ok)| !ok).count();
    let accepted: Vec<Duration> = answers
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(at, _)| *at)
        .collect();
    let pause = accepted
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    Ok(Row {
        scenario: "leader change at R3 under load (stream leader SIGKILLed)".to_owned(),
        result: format!("{:.1} s without an accepted webhook", pause.as_secs_f64()),
        detail: format!(
            "new leader seen after {:.1} s; {} webhooks from 8 clients, {failed} not accepted (503 or no answer)",
            elected_after.as_secs_f64(),
            answers.len()
        ),
    })
}
