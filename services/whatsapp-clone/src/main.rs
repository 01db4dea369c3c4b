use clap::Parser;
use whatsapp_clone::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wa_service::config::load_dotenv();
    let cli = Cli::parse();
    wa_service::config::init_tracing(&cli.log);
    match cli.command.unwrap_or_default() {
        Command::Serve(config) => {
            let grace = config
                .graph
                .shutdown_grace(wa_service::http::SHUTDOWN_GRACE);
            let app = whatsapp_clone::Application::build(*config).await?;
            wa_service::http::run_until_signalled_within(grace, |stop| app.run_until_stopped(stop))
                .await
        }
        Command::Import(import) => {
            let report = whatsapp_clone::import::run_signed(
                &import.paths,
                &import.url,
                import.app_secret.as_deref(),
                true,
            )
            .await?;
            println!("{report}");
            if report.failed.is_empty() {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
    }
}
