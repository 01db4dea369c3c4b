//! Stored rate: how many messages a second the microservice stack actually
//! STORES under webhook load (what the gateway accepts is only queued), for
//! the working tree's build, a baseline revision's build
//! (`--baseline-bin-dir`, built by `scripts/bench.sh --baseline-rev`) and
//! the all-in-one binary; into an empty database and into one that already
//! holds messages in the same conversations. Then crash recovery: the
//! processor SIGKILLed twice while it works, and every message must still
//! be stored exactly once.
//!
//! Load: `wrk -t1 -c16` posting unique single-message webhooks in the
//! sample-file wrapper form over 200 conversations (`bench/wrk/stored.lua`).
//! Stored counts come from the processor's `messages_stored_total` at
//! `/metrics`, accepted ones from the gateway's `webhooks_accepted_total`:
//! counting documents would load the very server being measured. The
//! documents are counted once at the end, with the processes stopped, to
//! check the counter.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::ingest::{Load, has_wrk, run_wrk};
use crate::load::closed_loop;
use crate::services::{
    Service, has_mongo, mongo_database, mongo_label, mongo_uri, no_mongo, own_dir, stack_env,
};
use crate::{Options, Row};

const CONNECTIONS: usize = 16;
const CUSTOMERS: u64 = 200;
/// Customer c is `FIRST_CUSTOMER + c`, as in `bench/wrk/stored.lua`.
const FIRST_CUSTOMER: u64 = 919_800_000_000;
/// Messages per webhook when preloading and in the crash scenario.
const PER_WEBHOOK: usize = 25;
const CRASH_MESSAGES: usize = 10_000;

const FIRST_NAMES: [&str; 20] = [
    "Ravi", "Neha", "Aarav", "Priya", "Vikram", "Ananya", "Rohan", "Isha", "Karan", "Meera",
    "Arjun", "Diya", "Sanjay", "Pooja", "Rahul", "Kavya", "Amit", "Sneha", "Nikhil", "Riya",
];
const LAST_NAMES: [&str; 10] = [
    "Kumar", "Joshi", "Sharma", "Patel", "Singh", "Reddy", "Nair", "Gupta", "Mehta", "Iyer",
];

/// Customer c's profile name (the same as the Lua script gives it).
fn profile_name(c: u64) -> String {
    let (first, last) = (FIRST_NAMES.len() as u64, LAST_NAMES.len() as u64);
    format!(
        "{} {}",
        FIRST_NAMES[(c % first) as usize],
        LAST_NAMES[(c / first % last) as usize]
    )
}

/// Webhook `n` of a run, in the sample-file wrapper form
/// (`webhook_files/conversation_1_message_1.json`): `messages` text
/// messages from customer `n % 200`, ids unique per (`run`, `n`).
fn wrapper_webhook(run: &str, n: u64, messages: usize, timestamp: i64) -> Vec<u8> {
    let c = n % CUSTOMERS;
    let customer = (FIRST_CUSTOMER + c).to_string();
    let items: Vec<_> = (0..messages)
        .map(|i| {
            json!({"from": customer, "id": format!("wamid.stored.{run}.{n}.{i}"),
                   "timestamp": timestamp.to_string(), "type": "text",
                   "text": {"body": format!("Hi, I would like to know more about order {n}-{i}.")}})
        })
        .collect();
    json!({
        "payload_type": "whatsapp_webhook",
        "_id": format!("bench-{run}-{n}"),
        "metaData": {
            "entry": [{"changes": [{"field": "messages", "value": {
                "contacts": [{"profile": {"name": profile_name(c)}, "wa_id": customer}],
                "messages": items,
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "918329446654", "phone_number_id": "629305560276479"}
            }}], "id": "30164062719905277"}],
            "gs_app_id": "bench-app",
            "object": "whatsapp_business_account"
        },
        "createdAt": "2025-08-06 12:00:00",
        "startedAt": "2025-08-06 12:00:00",
        "completedAt": "2025-08-06 12:00:01",
        "executed": true
    })
    .to_string()
    .into_bytes()
}

/// The sum of the Prometheus counter `name` at `url` (a counter appears
/// only after its first increment: absent is 0).
async fn counter(client: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<u64> {
    let text = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()?
        .text()
        .await?;
    let total: f64 = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            if !rest.starts_with([' ', '{']) {
                return None; // another metric whose name starts the same
            }
            rest.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum();
    Ok(total as u64)
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Where a build's binaries are, and what to call it in the table.
struct Build {
    label: String,
    dir: PathBuf,
}

struct Queue {
    js: jetstream::Context,
    names: wa_broker_nats::Names,
    namespace: String,
}

/// One backend running: a stack (NATS of its own, its own database) or the
/// all-in-one binary (its own data directory).
struct Running {
    /// Dropped first: the processes stop before their servers go.
    services: Vec<Service>,
    webhook_url: String,
    /// Serves `messages_stored_total`.
    stored_url: String,
    /// Serves `webhooks_accepted_total`.
    accepted_url: String,
    /// The stack's queue: a client of its NATS server and the names there.
    queue: Option<Queue>,
    /// Last: stopped after the processes.
    _nats: Option<test_support::NatsServer>,
    database: Option<String>,
    dir: Option<PathBuf>,
    client: reqwest::Client,
}

impl Running {
    async fn stack(build: &Build) -> anyhow::Result<Self> {
        let nats = test_support::NatsServer::start().await;
        let namespace = test_support::unique_name("bench_stored");
        let env = stack_env(&nats, &namespace, mongo_uri(&namespace));
        let processor = Service::start_from(&build.dir, "processor", &env).await?;
        let gateway = Service::start_from(&build.dir, "webhook-gateway", &env).await?;
        Ok(Self {
            webhook_url: format!("{}/webhook", gateway.url()),
            stored_url: format!("{}/metrics", processor.url()),
            accepted_url: format!("{}/metrics", gateway.url()),
            services: vec![gateway, processor],
            queue: Some(Queue {
                js: jetstream::new(async_nats::connect(nats.url()).await?),
                names: wa_broker_nats::Names::new(&namespace),
                namespace: namespace.clone(),
            }),
            _nats: Some(nats),
            database: Some(namespace),
            dir: None,
            client: http_client()?,
        })
    }

    async fn all_in_one(build: &Build) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(test_support::unique_name("bench-stored"));
        let env = [("DATA_DIR", dir.display().to_string())];
        let app = Service::start_from(&build.dir, "whatsapp-clone", &env).await?;
        let metrics = format!("{}/metrics", app.url());
        Ok(Self {
            webhook_url: format!("{}/webhook", app.url()),
            stored_url: metrics.clone(),
            accepted_url: metrics,
            services: vec![app],
            queue: None,
            _nats: None,
            database: None,
            dir: Some(dir),
            client: http_client()?,
        })
    }

    async fn stored(&self) -> anyhow::Result<u64> {
        counter(&self.client, &self.stored_url, "messages_stored_total").await
    }

    /// [`Running::stored`], or `target` once the stack's processor has
    /// nothing left, pending or unacknowledged (so that a wrong counter
    /// cannot hold a wait up; the documents are checked at the end).
    async fn stored_or_idle(&self, target: u64) -> anyhow::Result<u64> {
        match (self.stored().await?, &self.queue) {
            (n, Some(q)) if n < target && processor_idle(&q.js, &q.names).await? == 1 => Ok(target),
            (n, _) => Ok(n),
        }
    }

    async fn accepted(&self) -> anyhow::Result<u64> {
        counter(&self.client, &self.accepted_url, "webhooks_accepted_total").await
    }

    fn cpu(&self) -> Vec<f64> {
        self.services
            .iter()
            .map(|s| s.cpu_seconds().unwrap_or(0.0))
            .collect()
    }

    /// Documents in the stack's `processed_messages` (counting them loads
    /// the server: only outside the measured windows).
    async fn documents(&self) -> anyhow::Result<u64> {
        let Some(database) = &self.database else {
            bail!("the all-in-one's store is not MongoDB");
        };
        let db = mongo_database(database).await?;
        let messages = db.collection::<serde_json::Value>("processed_messages");
        Ok(messages.count_documents(Default::default()).await?)
    }

    /// Stops the processes, then removes the data (best effort).
    async fn finish(mut self) {
        self.services.clear();
        if let Some(database) = self.database.take()
            && let Ok(db) = mongo_database(&database).await
        {
            test_support::drop_database(&db).await;
        }
        if let Some(dir) = self.dir.take() {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}

/// Polls `count` every `every` until it reaches `target` or `cap` passes;
/// returns the last count. With `give_up_early`, stops once a third of
/// `cap` has passed if the rate so far would not reach the target within
/// `cap` (not sooner: a batch is counted when it is done, and a batch of
/// 256 25-message payloads takes a while).
async fn wait_for<F, Fut>(
    target: u64,
    cap: Duration,
    every: Duration,
    give_up_early: bool,
    mut count: F,
) -> anyhow::Result<(u64, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    let (started, first) = (Instant::now(), count().await?);
    loop {
        let now = count().await?;
        let elapsed = started.elapsed();
        if now >= target || elapsed >= cap {
            return Ok((now, elapsed));
        }
        if give_up_early && elapsed >= cap / 3 {
            let rate = (now - first.min(now)) as f64 / elapsed.as_secs_f64();
            if rate <= 0.0 || (target - now) as f64 / rate > (cap - elapsed).as_secs_f64() {
                return Ok((now, elapsed));
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// How often the metrics are read.
const POLL: Duration = Duration::from_millis(100);

/// How the preload went: `Err` says why the data set is incomplete.
struct Preloaded {
    /// In `processed_messages` (checked).
    messages: u64,
    /// What `messages_stored_total` said.
    counted: u64,
    published_in: Duration,
    /// Until the last message was inserted.
    inserted_in: Duration,
    /// Until the processor had nothing left (summaries written, acked).
    done_in: Duration,
}

/// Puts `messages` messages in the 200 conversations through the pipeline
/// as fast as it goes: 25-message webhooks published straight to the
/// gateway's JetStream subject (as the gateway does, with its `Nats-Msg-Id`),
/// then waits until the processor has stored them all.
async fn preload(
    running: &Running,
    messages: usize,
    cap: Duration,
) -> anyhow::Result<Result<Preloaded, String>> {
    let Some(Queue {
        js,
        names,
        namespace,
    }) = &running.queue
    else {
        bail!("preloading goes through NATS: stack only");
    };
    // The gateway creates the stream at startup, in the background.
    let deadline = Instant::now() + Duration::from_secs(30);
    while js.get_stream(names.webhook_stream()).await.is_err() {
        if Instant::now() > deadline {
            bail!("the gateway did not create the stream within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let subject = names.webhooks();
    // Older than the load's messages, a second apart per webhook.
    let base = chrono::Utc::now().timestamp() - 86_400;
    let webhooks = messages.div_ceil(PER_WEBHOOK) as u64;
    let started = Instant::now();
    futures::stream::iter(0..webhooks)
        .map(|n| {
            let (js, subject) = (js.clone(), subject.clone());
            let body = wrapper_webhook(
                &format!("preload-{namespace}"),
                n,
                PER_WEBHOOK,
                base + n as i64,
            );
            async move {
                let message = PublishMessage::build()
                    .message_id(wa_broker::payload_id(&body))
                    .payload(body.into());
                js.send_publish(subject, message).await?.await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .try_for_each(|()| async { Ok(()) })
        .await
        .context("publishing the preload")?;
    let published_in = started.elapsed();
    let total = webhooks * PER_WEBHOOK as u64;
    // Done when counted, or when the processor has nothing left (the
    // documents are checked below: a counter can be wrong).
    let left = cap.saturating_sub(published_in);
    let (stored, _) = wait_for(total, left, POLL, true, || running.stored_or_idle(total)).await?;
    // Messages are counted when inserted; the conversation summaries come
    // after. The load starts once the processor has nothing left.
    let stored_in = started.elapsed();
    let mut counted = running.stored().await?;
    if stored >= total {
        let left = cap.saturating_sub(started.elapsed());
        let (idle, _) = wait_for(1, left, POLL, false, || processor_idle(js, names)).await?;
        if idle == 0 {
            return Ok(Err(format!(
                "preload too slow: {total} messages inserted in {:.0} s, but the processor was still busy {:.0} s later",
                stored_in.as_secs_f64(),
                left.as_secs_f64()
            )));
        }
        let documents = running.documents().await?;
        counted = running.stored().await?;
        if documents != total {
            return Ok(Err(format!(
                "preload incomplete: the processor had nothing left, but {documents} of {total} messages are in processed_messages (messages_stored_total: {counted})"
            )));
        }
    }
    let elapsed = started.elapsed();
    if stored < total {
        let rate = stored as f64 / elapsed.as_secs_f64();
        return Ok(Err(format!(
            "preload too slow: {stored} of {total} stored after {:.0} s ({rate:.0} messages/s: {} for all; cap {})",
            elapsed.as_secs_f64(),
            human(total as f64 / rate.max(0.01)),
            human(cap.as_secs_f64())
        )));
    }
    Ok(Ok(Preloaded {
        messages: total,
        counted,
        published_in,
        inserted_in: stored_in,
        done_in: elapsed,
    }))
}

/// 1 when the processor's consumer has nothing pending or unacknowledged
/// (every payload stored and acknowledged), else 0.
async fn processor_idle(
    js: &jetstream::Context,
    names: &wa_broker_nats::Names,
) -> anyhow::Result<u64> {
    use wa_broker_nats::PROCESSOR_CONSUMER;
    let stream = js.get_stream(names.webhook_stream()).await?;
    // Not there yet: the processor has not started consuming.
    let Ok(mut consumer) = stream
        .get_consumer::<jetstream::consumer::pull::Config>(PROCESSOR_CONSUMER)
        .await
    else {
        return Ok(0);
    };
    let info = consumer.info().await?;
    Ok(u64::from(
        info.num_pending == 0 && info.num_ack_pending == 0,
    ))
}

/// `~40 s`, `~12 min`, `~3.5 h`.
fn human(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("~{seconds:.0} s")
    } else if seconds < 7_200.0 {
        format!("~{:.0} min", seconds / 60.0)
    } else {
        format!("~{:.1} h", seconds / 3_600.0)
    }
}

/// The load: `wrk -t1 -c16` with `bench/wrk/stored.lua`, or the Rust
/// client with the same bodies when wrk is missing.
async fn offer(running: &Running, options: &Options, run: &str) -> anyhow::Result<Load> {
    let seconds = if options.quick { 5 } else { 10 };
    if has_wrk() {
        let customers = CUSTOMERS.to_string();
        return run_wrk(
            &running.webhook_url,
            "stored.lua",
            &format!("-t1 -c{CONNECTIONS} -d{seconds}s"),
            &[("RUN", run), ("CUSTOMERS", &customers)],
        );
    }
    let (client, url, run) = (
        running.client.clone(),
        running.webhook_url.clone(),
        run.to_owned(),
    );
    let measured = closed_loop(
        CONNECTIONS,
        Duration::from_secs(seconds),
        move |worker, n| {
            // Unique per (worker, n); customers round-robin.
            let n = n * CONNECTIONS as u64 + worker as u64;
            let body = wrapper_webhook(&run, n, 1, chrono::Utc::now().timestamp());
            let request = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body);
            async move { request.send().await.is_ok_and(|r| r.status() == 200) }
        },
    )
    .await;
    Ok(Load::reqwest(&measured))
}

/// What one load run showed.
struct Measured {
    result: String,
    detail: String,
    /// Messages stored a second, load and drain together.
    rate: f64,
    /// `messages_stored_total` at the end.
    counted: u64,
}

/// One measurement: the load, then the wait until every accepted message
/// is stored.
async fn measure(running: &Running, options: &Options, run: &str) -> anyhow::Result<Measured> {
    let drain_cap = Duration::from_secs(if options.quick { 60 } else { 120 });
    let (stored_before, accepted_before) = (running.stored().await?, running.accepted().await?);
    let cpu_before = running.cpu();
    let started = Instant::now();
    let load = offer(running, options, run).await?;
    let window = started.elapsed().as_secs_f64();
    let cpu: Vec<String> = running
        .services
        .iter()
        .zip(running.cpu().iter().zip(cpu_before))
        .map(|(s, (after, before))| format!("{} {:.0}%", s.name, 100.0 * (after - before) / window))
        .collect();
    let during = running.stored().await? - stored_before;
    // The gateway's count includes requests wrk left in flight at the end.
    let accepted = match running.accepted().await? - accepted_before {
        0 => load.requests.saturating_sub(load.failed),
        n => n,
    };
    let target = stored_before + accepted;
    let (stored, drain) = wait_for(target, drain_cap, POLL, false, || {
        running.stored_or_idle(target)
    })
    .await?;
    let stored = stored - stored_before;
    let drained = if stored >= accepted {
        format!("all stored {:.1} s after the load", drain.as_secs_f64())
    } else {
        format!(
            "fell behind: {stored} of {accepted} stored {:.0} s after the load",
            drain.as_secs_f64()
        )
    };
    let result = format!(
        "{:.0} messages/s stored during the load; {:.0} webhooks/s accepted; {drained}",
        during as f64 / window,
        load.rate
    );
    let detail = format!(
        "{during} stored during the {window:.1} s load, {} after it ({:.0}/s); {accepted} accepted, {} failed, p50 {:.2} ms, p99 {:.2} ms ({} -c{CONNECTIONS}); CPU during the load: {}",
        stored - during,
        (stored - during) as f64 / drain.as_secs_f64().max(0.001),
        load.failed,
        load.p50_ms,
        load.p99_ms,
        load.tool,
        cpu.join(", ")
    );
    Ok(Measured {
        result,
        detail,
        rate: stored as f64 / (window + drain.as_secs_f64()),
        counted: running.stored().await?,
    })
}

/// A row's name.
fn scenario(backend: &str, build: &str, size: usize) -> String {
    let data = match size {
        0 => "empty database".to_owned(),
        n => format!("{n} messages already stored"),
    };
    format!("stored rate, {backend} ({build}), {data}")
}

fn not_run(scenario: String, why: String) -> Row {
    Row {
        scenario,
        result: "not run".to_owned(),
        detail: why,
    }
}

/// The stack of `build` with `size` messages preloaded (0: empty); also
/// returns the messages stored a second (load and drain together).
async fn stack_row(build: &Build, size: usize, options: &Options) -> anyhow::Result<(Row, f64)> {
    let name = scenario("stack", &build.label, size);
    let mut running = Running::stack(build).await?;
    let mut notes = vec![mongo_label()];
    if size > 0 {
        let cap = Duration::from_secs(if options.quick { 300 } else { 1_200 });
        match preload(&running, size, cap).await? {
            Ok(p) => {
                notes.push(format!(
                    "preload: {} messages in {:.1} s ({:.0}/s; published to JetStream in {:.1} s, all inserted at {:.1} s)",
                    p.messages,
                    p.done_in.as_secs_f64(),
                    p.messages as f64 / p.done_in.as_secs_f64(),
                    p.published_in.as_secs_f64(),
                    p.inserted_in.as_secs_f64()
                ));
                if p.counted != p.messages {
                    notes.push(format!(
                        "messages_stored_total counted {} of the preload's {} messages",
                        p.counted, p.messages
                    ));
                }
            }
            Err(why) => {
                running.finish().await;
                return Ok((not_run(name, why), 0.0));
            }
        }
    }
    let run = test_support::unique_name("load");
    let measured = measure(&running, options, &run).await;
    // The counter against the documents, with the processes stopped so
    // that nothing changes under the count.
    running.services.clear();
    let documents = running.documents().await;
    running.finish().await;
    let measured = measured?;
    // (A processor stopped mid-batch may leave a few more documents than
    // it counted.)
    let documents = documents?;
    notes.push(if documents == measured.counted {
        format!("{documents} documents after stopping, as counted")
    } else {
        format!(
            "{documents} documents after stopping (messages_stored_total: {})",
            measured.counted
        )
    });
    let row = Row {
        scenario: name,
        result: measured.result,
        detail: format!("{}; {}", measured.detail, notes.join("; ")),
    };
    Ok((row, measured.rate))
}

async fn all_in_one_row(build: &Build, options: &Options) -> anyhow::Result<Row> {
    let running = Running::all_in_one(build).await?;
    let run = test_support::unique_name("load");
    let measured = measure(&running, options, &run).await;
    running.finish().await;
    let measured = measured?;
    Ok(Row {
        scenario: scenario("all-in-one", &build.label, 0),
        result: measured.result,
        detail: format!("{}; SQLite, own data directory", measured.detail),
    })
}

/// [`stack_row`], or why it did not run.
async fn stack_case(build: &Build, size: usize, options: &Options) -> (Row, f64) {
    let name = scenario("stack", &build.label, size);
    if !has_mongo() {
        return (not_run(name, no_mongo()), 0.0);
    }
    match stack_row(build, size, options).await {
        Ok(measured) => measured,
        Err(e) => (row_or_failure(name, Err(e)), 0.0),
    }
}

/// A failing case is a row, not the end of the scenario.
fn row_or_failure(scenario: String, row: anyhow::Result<Row>) -> Row {
    row.unwrap_or_else(|e| Row {
        scenario,
        result: "failed".to_owned(),
        detail: format!("{e:#}"),
    })
}

pub async fn run(options: &Options) -> anyhow::Result<Vec<Row>> {
    let current = Build {
        label: "working tree".to_owned(),
        dir: own_dir(),
    };
    let baseline = options.baseline_bin_dir.as_ref().map(|dir| Build {
        label: format!(
            "baseline {}",
            options.baseline_rev.as_deref().unwrap_or("build")
        ),
        dir: dir.clone(),
    });
    let size = options
        .stored_preload
        .unwrap_or(if options.quick { 20_000 } else { 100_000 });
    let mut rows = Vec::new();

    for size in [0, size] {
        rows.push(stack_case(&current, size, options).await.0);
    }
    match &baseline {
        Some(build) => {
            let (empty, rate) = stack_case(build, 0, options).await;
            rows.push(empty);
            // Preloading with the working tree's processor instead would
            // write its own data format, which the baseline does not read.
            let estimate = if rate > 0.0 {
                format!(
                    "preloading {size} messages through it would take {} at the {rate:.0} messages/s it stored above",
                    human(size as f64 / rate)
                )
            } else {
                "it could not be measured empty".to_owned()
            };
            rows.push(not_run(
                scenario("stack", &build.label, size),
                format!("baseline measured on the empty database only: {estimate}; the working tree's processor cannot preload for it (its data format differs)"),
            ));
        }
        None => rows.push(not_run(
            "stored rate, stack (baseline)".to_owned(),
            match &options.baseline_rev {
                Some(rev) => format!("no --baseline-bin-dir for {rev}: scripts/bench.sh --baseline-rev {rev} builds one"),
                None => "no baseline: scripts/bench.sh --baseline-rev REV builds one".to_owned(),
            },
        )),
    }
    for build in std::iter::once(&current).chain(&baseline) {
        let name = scenario("all-in-one", &build.label, 0);
        rows.push(row_or_failure(name, all_in_one_row(build, options).await));
    }
    Ok(rows)
}

/// Crash recovery: 10,000 messages in 200 conversations (400 webhooks of
/// 25 messages, posted to the gateway) while the processor is SIGKILLed
/// twice; then every message must be stored exactly once and the
/// conversations' counts must add up.
pub async fn crash(options: &Options) -> anyhow::Result<Vec<Row>> {
    let name = "crash recovery: 10000 messages, processor SIGKILLed twice".to_owned();
    if !has_mongo() {
        return Ok(vec![not_run(name, no_mongo())]);
    }
    let cap = Duration::from_secs(if options.quick { 600 } else { 1_200 });
    let nats = test_support::NatsServer::start().await;
    let namespace = test_support::unique_name("bench_crash");
    let env = stack_env(&nats, &namespace, mongo_uri(&namespace));
    let db = mongo_database(&namespace).await?;
    let client = http_client()?;
    let stored = |service: &Service| {
        let (client, url) = (client.clone(), format!("{}/metrics", service.url()));
        async move { counter(&client, &url, "messages_stored_total").await }
    };
    let outcome = async {
        let mut processor = Service::start("processor", &env).await?;
        let gateway = Service::start("webhook-gateway", &env).await?;
        let url = format!("{}/webhook", gateway.url());
        let webhooks = (CRASH_MESSAGES / PER_WEBHOOK) as u64;
        let base = chrono::Utc::now().timestamp() - 86_400;
        let started = Instant::now();
        let posting = {
            let (client, run) = (client.clone(), format!("crash-{namespace}"));
            tokio::spawn(async move {
                futures::stream::iter(0..webhooks)
                    .map(|n| {
                        let request = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(wrapper_webhook(&run, n, PER_WEBHOOK, base + n as i64));
                        async move { request.send().await.is_ok_and(|r| r.status() == 200) }
                    })
                    .buffer_unordered(CONNECTIONS)
                    .filter(|ok| std::future::ready(*ok))
                    .count()
                    .await
            })
        };
        // Killed as soon as it has stored something: it is then in the
        // middle of its next batch. Twice.
        let mut kills = Vec::new();
        for _ in 0..2 {
            let (by_it, _) =
                wait_for(1, Duration::from_secs(120), POLL, false, || stored(&processor)).await?;
            processor.kill();
            kills.push(format!(
                "at {:.1} s ({by_it} stored by that process)",
                started.elapsed().as_secs_f64()
            ));
            processor = Service::start("processor", &env).await?;
        }
        let accepted = posting.await.context("posting the webhooks")?;
        // Done when every message is in `processed_messages` (`_id` is the
        // message id: documents are distinct messages).
        let messages = db.collection::<serde_json::Value>("processed_messages");
        // Counting documents loads the server the processor waits on: once
        // a second. Given up early if the pace cannot make it within the cap.
        let (count, _) = wait_for(
            CRASH_MESSAGES as u64,
            cap.saturating_sub(started.elapsed()),
            Duration::from_secs(1),
            true,
            || async { Ok(messages.count_documents(Default::default()).await?) },
        )
        .await?;
        let elapsed = started.elapsed().as_secs_f64();
        // Summaries follow the inserts: wait until the processor has
        // nothing left, pending or unacknowledged, before reading them.
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        let names = wa_broker_nats::Names::new(&namespace);
        let (idle, _) = wait_for(1, Duration::from_secs(60), Duration::from_secs(1), false, || {
            processor_idle(&js, &names)
        })
        .await?;
        drop((processor, gateway));
        // Distinct message ids counted here: the stand-in has no `distinct`.
        let mut ids = std::collections::HashSet::new();
        let mut documents = 0_u64;
        let mut cursor = messages
            .find(Default::default())
            .await
            .context("reading processed_messages")?;
        while let Some(message) = cursor.try_next().await? {
            documents += 1;
            ids.insert(match message.get("messageId") {
                Some(id) => id.to_string(),
                None => message["_id"].to_string(),
            });
        }
        let distinct = ids.len();
        let mut conversations = db
            .collection::<serde_json::Value>("conversations")
            .find(Default::default())
            .await
            .context("reading conversations")?;
        let (mut summaries, mut counted) = (0_u64, 0_i64);
        while let Some(summary) = conversations.try_next().await? {
            summaries += 1;
            counted += summary["messageCount"].as_i64().unwrap_or(0);
        }
        let result = if count >= CRASH_MESSAGES as u64 {
            format!("all {CRASH_MESSAGES} stored {elapsed:.1} s after the first POST")
        } else {
            format!("fell behind: {count} of {CRASH_MESSAGES} stored {elapsed:.0} s after the first POST")
        };
        let yes = |ok: bool| if ok { "yes" } else { "NO" };
        let detail = format!(
            "{accepted} of {webhooks} webhooks accepted; SIGKILLed {} (what a killed processor held comes back after ACK_WAIT_SECS, 30 s); {documents} documents in processed_messages, {distinct} distinct ids (exactly {CRASH_MESSAGES}: {}); {summaries} conversations, messageCount sum {counted} (= {CRASH_MESSAGES}: {}){}; {}",
            kills.join(" and "),
            yes(documents == CRASH_MESSAGES as u64 && distinct == CRASH_MESSAGES),
            yes(counted == CRASH_MESSAGES as i64),
            if idle == 1 { "" } else { "; the processor still had work 60 s later" },
            mongo_label()
        );
        anyhow::Ok((result, detail))
    }
    .await;
    test_support::drop_database(&db).await;
    let (result, detail) = outcome?;
    Ok(vec![Row {
        scenario: name,
        result,
        detail,
    }])
}
