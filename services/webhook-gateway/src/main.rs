use clap::Parser;
use webhook_gateway::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::config::load_dotenv();
    let config = Config::parse();
    shared::config::init_tracing(&config.log);
    let app = Application::build(config).await?;
    shared::http::run_until_signalled(|stop| app.run_until_stopped(stop)).await
}
