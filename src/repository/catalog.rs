//! The backups in a repository, read from their statefiles alone.

use super::error::CatalogError;
use super::layout::backups_prefix;
use super::statefile::{Phase, Statefile};
use crate::storage::Store;

/// One row of `list-backups`, or the reason a statefile could not be read.
#[derive(Debug)]
pub enum Listed {
    Backup(Box<Statefile>),
    Unreadable { id: String, error: CatalogError },
}

/// Every backup in the store, oldest first, from the statefiles alone.
pub async fn list(store: &Store) -> Result<Vec<Listed>, CatalogError> {
    let objects = store.list(&backups_prefix()).await?;
    let mut out = vec![];
    for o in objects
        .iter()
        .filter(|o| o.key.ends_with("/statefile.json"))
    {
        let id = o
            .key
            .trim_start_matches(&backups_prefix())
            .trim_end_matches("/statefile.json")
            .to_string();
        let read = crate::retry::retry(crate::retry::ATTEMPTS, &o.key, || store.get_bytes(&o.key));
        let parsed = match read.await {
            Ok(bytes) => Statefile::parse(&o.key, &bytes),
            Err(e) => Err(e.into()),
        };
        out.push(match parsed {
            Ok(s) => Listed::Backup(Box::new(s)),
            Err(error) => Listed::Unreadable { id, error },
        });
    }
    Ok(out)
}

/// How many backups there are, the newest, and the newest completed one.
#[derive(Debug, Default)]
pub struct Summary {
    pub count: usize,
    pub newest: Option<Statefile>,
    pub newest_completed: Option<Statefile>,
}

/// Reads statefiles newest first (ids sort by time) and stops at the first completed one:
/// cheap enough for a status check every few minutes, however many backups there are.
pub async fn summary(store: &Store) -> Result<Summary, CatalogError> {
    let mut keys: Vec<String> = store
        .list(&backups_prefix())
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with("/statefile.json"))
        .collect();
    keys.sort();
    let mut out = Summary {
        count: keys.len(),
        ..Summary::default()
    };
    for key in keys.iter().rev() {
        let bytes =
            crate::retry::retry(crate::retry::ATTEMPTS, key, || store.get_bytes(key)).await?;
        let Ok(sf) = Statefile::parse(key, &bytes) else {
            continue;
        };
        let completed = sf.phase == Phase::Completed;
        if out.newest.is_none() {
            out.newest = Some(sf.clone());
        }
        if completed {
            out.newest_completed = Some(sf);
            break;
        }
    }
    Ok(out)
}
