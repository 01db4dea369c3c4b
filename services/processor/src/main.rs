use clap::Parser;
use processor::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wa_service::config::load_dotenv();
    let config = Config::parse();
    wa_service::config::init_tracing(&config.log);
    let grace = config
        .graph
        .shutdown_grace(wa_service::http::SHUTDOWN_GRACE);
    let app = Application::build(config).await?;
    wa_service::http::run_until_signalled_within(grace, |stop| app.run_until_stopped(stop)).await
}
