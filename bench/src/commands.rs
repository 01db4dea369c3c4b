//! What a MongoDB client writes, counted from the driver's command
//! monitoring events: documents inserted, updated, upserted and deleted
//! per collection (from the server's replies), and commands sent.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mongodb::bson::{Bson, Document};
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use mongodb::options::ClientOptions;

/// Counts kept since the last [`Tally::reset`].
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Documents written (inserted + modified + upserted + deleted), per
    /// collection and command.
    pub written: BTreeMap<(String, String), u64>,
    /// Commands that succeeded, per command name.
    pub commands: BTreeMap<String, u64>,
}

impl Counts {
    pub fn documents(&self) -> u64 {
        self.written.values().sum()
    }

    /// Per collection: "name: insert 1.00 + update 0.50", each count
    /// divided by `per`.
    pub fn by_collection(&self, per: f64) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        let mut last = "";
        for ((collection, command), n) in &self.written {
            let part = format!("{command} {:.2}", *n as f64 / per);
            if collection == last {
                if let Some(line) = lines.last_mut() {
                    line.push_str(" + ");
                    line.push_str(&part);
                }
            } else {
                lines.push(format!("{collection}: {part}"));
                last = collection;
            }
        }
        lines
    }

    /// Round trips that write: insert, update, delete, findAndModify,
    /// bulkWrite and the transactions' commits.
    pub fn write_commands(&self) -> u64 {
        self.commands
            .iter()
            .filter(|(name, _)| {
                matches!(
                    name.as_str(),
                    "insert"
                        | "update"
                        | "delete"
                        | "findAndModify"
                        | "bulkWrite"
                        | "commitTransaction"
                )
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Round trips that read: find, aggregate, count, getMore, distinct.
    pub fn read_commands(&self) -> u64 {
        self.commands
            .iter()
            .filter(|(name, _)| {
                matches!(
                    name.as_str(),
                    "find" | "aggregate" | "count" | "getMore" | "distinct"
                )
            })
            .map(|(_, n)| n)
            .sum()
    }
}

#[derive(Default)]
struct Inner {
    /// Request id → (command, collection), until its reply.
    started: HashMap<i32, (String, String)>,
    counts: Counts,
}

/// A command-event handler that counts; see [`Tally::client`].
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<Inner>>);

impl Tally {
    /// A client of `uri` configured as `MongoStore::connect` configures its
    /// own, with this tally watching its commands; and the database named
    /// in the URI.
    pub async fn client(uri: &str) -> anyhow::Result<(mongodb::Client, String, Tally)> {
        let tally = Tally::default();
        let mut options = ClientOptions::parse(uri).await?;
        options.app_name = Some("bench".to_owned());
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.connect_timeout = Some(Duration::from_secs(5));
        if options.write_concern.is_none() {
            options.write_concern = Some(wa_store_mongo::durable());
        }
        let database = options
            .default_database
            .clone()
            .unwrap_or_else(|| "whatsapp_clone".to_owned());
        let watching = tally.clone();
        options.command_event_handler = Some(EventHandler::callback(move |event| {
            watching.note(event);
        }));
        Ok((mongodb::Client::with_options(options)?, database, tally))
    }

    pub fn reset(&self) {
        self.lock().counts = Counts::default();
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note(&self, event: CommandEvent) {
        let mut inner = self.lock();
        match event {
            CommandEvent::Started(started) => {
                let collection = started
                    .command
                    .get_str(&started.command_name)
                    .unwrap_or_default()
                    .to_owned();
                inner
                    .started
                    .insert(started.request_id, (started.command_name, collection));
            }
            CommandEvent::Succeeded(done) => {
                let (name, collection) = inner
                    .started
                    .remove(&done.request_id)
                    .unwrap_or((done.command_name, String::new()));
                let written = written(&name, &done.reply);
                if written > 0 {
                    *inner
                        .counts
                        .written
                        .entry((collection, name.clone()))
                        .or_default() += written;
                }
                *inner.counts.commands.entry(name).or_default() += 1;
            }
            CommandEvent::Failed(failed) => {
                inner.started.remove(&failed.request_id);
            }
            _ => {}
        }
    }
}

/// Documents a write command's reply says it wrote.
fn written(command: &str, reply: &Document) -> u64 {
    let int = |d: &Document, key: &str| -> u64 {
        match d.get(key) {
            Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
            Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
            Some(Bson::Double(n)) if *n > 0.0 => *n as u64,
            _ => 0,
        }
    };
    match command {
        "insert" | "delete" => int(reply, "n"),
        // `n` counts matched documents, upserted included; a matched
        // document left as it was is not written.
        "update" => {
            int(reply, "nModified")
                + reply
                    .get_array("upserted")
                    .map_or(0, |upserted| upserted.len() as u64)
        }
        "findAndModify" => reply
            .get_document("lastErrorObject")
            .map_or(0, |last| int(last, "n")),
        "bulkWrite" => ["nInserted", "nModified", "nUpserted", "nDeleted"]
            .iter()
            .map(|key| int(reply, key))
            .sum(),
        _ => 0,
    }
}
