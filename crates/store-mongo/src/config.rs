//! The MongoDB connection, as a flag and environment variable.

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct MongoConfig {
    /// MongoDB connection string; its path names the database.
    #[arg(
        long,
        env = "MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017/whatsapp_clone",
        hide_env_values = true
    )]
    pub mongodb_uri: String,
}
