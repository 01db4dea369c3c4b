//! Footprint: resident memory of each binary, idle. (Memory under load is
//! in the detail of the load scenarios.)

use std::time::Duration;

use crate::services::Service;
use crate::{Options, Row};

pub async fn run(_options: &Options) -> anyhow::Result<Vec<Row>> {
    let nats = test_support::NatsServer::start().await;
    let dir = std::env::temp_dir().join(test_support::unique_name("bench-footprint"));
    let env = [
        ("NATS_URL", nats.url()),
        ("DATA_DIR", dir.display().to_string()),
    ];
    let services = [
        "webhook-gateway",
        "processor",
        "api-gateway",
        "whatsapp-clone",
    ]
    .into_iter()
    .map(|name| (name, Service::spawn(name, &env)))
    .collect::<Vec<_>>();
    // Settle: connections made, first allocations done.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = services
        .iter()
        .map(|(name, service)| Row {
            scenario: format!("idle RSS, {name}"),
            result: match service {
                Ok(service) => service
                    .rss_mb()
                    .map_or("unknown".to_owned(), |mb| format!("{mb:.1} MB")),
                Err(e) => format!("not run: {e}"),
            },
            detail: "3 s after start, connected to NATS (MongoDB not required to idle)".to_owned(),
        })
        .collect();
    drop(services);
    std::fs::remove_dir_all(&dir).ok();
    Ok(rows)
}
