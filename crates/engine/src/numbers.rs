//! The business numbers a deployment serves, as the services see them:
//! the home number (read once recorded; it never changes) and the numbers
//! webhooks came for (recorded once each per process). The rules are in
//! `wa_core::numbers`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use wa_core::domain::{Message, StatusChange};
use wa_store::{Store, StoreResult};

#[derive(Clone)]
pub struct Numbers {
    store: Arc<dyn Store>,
    home: Arc<OnceLock<String>>,
    /// Numbers recorded by this process, with their display numbers.
    noted: Arc<Mutex<HashMap<String, Option<String>>>>,
}

impl Numbers {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            home: Arc::default(),
            noted: Arc::default(),
        }
    }

    /// The home number (`None`: nothing was stored for any number yet).
    pub async fn home(&self) -> StoreResult<Option<String>> {
        self.home_or(None).await
    }

    /// The home number, recording `candidate` as home if there is none.
    pub async fn home_or(&self, candidate: Option<&str>) -> StoreResult<Option<String>> {
        if let Some(home) = self.home.get() {
            return Ok(Some(home.clone()));
        }
        let home = self.store.home_number(candidate).await?;
        if let Some(home) = &home {
            let _ = self.home.set(home.clone());
        }
        Ok(home)
    }

    /// Records the numbers (and display numbers) of webhook items that
    /// this process has not recorded yet: one write per new number.
    pub async fn note(&self, messages: &[Message], statuses: &[StatusChange]) -> StoreResult<()> {
        let seen = messages
            .iter()
            .filter_map(|m| Some((m.phone_number_id.clone()?, m.business_number.clone())))
            .chain(
                statuses
                    .iter()
                    .filter_map(|s| Some((s.phone_number_id.clone()?, None))),
            );
        let new: Vec<(String, Option<String>)> = {
            let noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
            let mut new: HashMap<String, Option<String>> = HashMap::new();
            for (number, display) in seen {
                // New, or with a display number not recorded yet.
                let newer = match noted.get(&number).or_else(|| new.get(&number)) {
                    None => true,
                    Some(known) => display.is_some() && *known != display,
                };
                if newer {
                    new.insert(number, display);
                }
            }
            new.into_iter().collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        self.store.note_numbers(&new).await?;
        let mut noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
        for (number, display) in new {
            let entry = noted.entry(number).or_default();
            if display.is_some() {
                *entry = display;
            }
        }
        Ok(())
    }
}
