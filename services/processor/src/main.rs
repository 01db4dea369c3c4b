use clap::Parser;
use processor::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::config::load_dotenv();
    let config = Config::parse();
    shared::config::init_tracing(&config.log);
    let grace = config.graph.shutdown_grace();
    let app = Application::build(config).await?;
    shared::http::run_until_signalled_within(grace, |stop| app.run_until_stopped(stop)).await
}
