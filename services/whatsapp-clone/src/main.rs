use clap::Parser;
use whatsapp_clone::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::config::load_dotenv();
    let cli = Cli::parse();
    shared::config::init_tracing(&cli.log);
    match cli.command.unwrap_or_default() {
        Command::Serve(config) => {
            let grace = config.graph.shutdown_grace();
            let app = whatsapp_clone::Application::build(*config).await?;
            shared::http::run_until_signalled_within(grace, |stop| app.run_until_stopped(stop))
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
