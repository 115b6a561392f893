//! What earlier migrations left behind, learned in run order: column types, named
//! indexes, NOT NULL checks and which of them were validated.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::migrate::types::Ty;

/// What earlier migrations left behind, learned in run order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Schema {
    pub(super) columns: HashMap<(String, String), Ty>,
    /// Named indexes, looked up both ways so that a long history stays linear: by name
    /// (DROP INDEX) and by the table and column they cover (DROP COLUMN).
    pub(super) indexes: Indexes,
    /// NOT VALID `CHECK (col IS NOT NULL)` constraints: name -> (table, column).
    pub(super) not_null_checks: HashMap<String, (String, String)>,
    pub(super) validated_not_null: HashSet<(String, String)>,
    /// Columns an earlier migration created or made NOT NULL.
    pub(super) not_null: HashSet<(String, String)>,
}

/// The named indexes earlier migrations created, all names normalised by [`norm`](super::norm).
#[derive(Debug, Default, Clone)]
pub(super) struct Indexes {
    /// index name -> (table, columns)
    by_name: HashMap<String, (String, Vec<String>)>,
    /// (table, column) -> the indexes that cover the column.
    by_column: HashMap<(String, String), BTreeSet<String>>,
}

impl Indexes {
    /// Records an index (replacing one of the same name).
    pub(super) fn insert(&mut self, name: String, table: String, columns: Vec<String>) {
        self.remove(&name);
        for c in &columns {
            self.by_column
                .entry((table.clone(), c.clone()))
                .or_default()
                .insert(name.clone());
        }
        self.by_name.insert(name, (table, columns));
    }

    pub(super) fn remove(&mut self, name: &str) {
        let Some((table, columns)) = self.by_name.remove(name) else {
            return;
        };
        for c in columns {
            let key = (table.clone(), c);
            if let Some(set) = self.by_column.get_mut(&key) {
                set.remove(name);
                if set.is_empty() {
                    self.by_column.remove(&key);
                }
            }
        }
    }

    /// The indexes on `table.column`, sorted by name.
    pub(super) fn on_column(&self, table: &str, column: &str) -> Vec<String> {
        self.by_column
            .get(&(table.to_string(), column.to_string()))
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }
}
