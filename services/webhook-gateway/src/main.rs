use clap::Parser;
use webhook_gateway::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wa_service::config::load_dotenv();
    let config = Config::parse();
    wa_service::config::init_tracing(&config.log);
    let app = Application::build(config).await?;
    wa_service::http::run_until_signalled(|stop| app.run_until_stopped(stop)).await
}
