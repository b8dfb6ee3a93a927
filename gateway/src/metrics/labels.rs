//! Bounded sets of label values named from outside (sandboxes, secrets): each name keeps its own
//! label until the cap is reached, later names share [`OTHER`], and a forgotten name frees its
//! slot. This is what keeps the number of series bounded whatever the daemon is asked to count.

use std::{
    collections::HashSet,
    sync::{Arc, PoisonError, RwLock},
};

/// The label value shared by names past a cap (and by unknown modes and status classes).
pub const OTHER: &str = "other";

/// Label values for names, at most `cap` distinct ones besides [`OTHER`].
#[derive(Debug)]
pub(super) struct BoundedLabels {
    cap: usize,
    names: RwLock<HashSet<Arc<str>>>,
    other: Arc<str>,
}

impl BoundedLabels {
    pub(super) fn new(cap: usize) -> BoundedLabels {
        BoundedLabels {
            cap,
            names: RwLock::new(HashSet::new()),
            other: Arc::from(OTHER),
        }
    }

    /// The label for `name`: its own when it has one or a slot is free, else [`OTHER`]. A name
    /// spelled `other` is counted with the overflow rather than given a slot of the same name.
    pub(super) fn label(&self, name: &str) -> Arc<str> {
        if name == OTHER {
            return Arc::clone(&self.other);
        }
        // The common case (a known name, or the cap reached) only takes the read lock.
        {
            let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(label) = names.get(name) {
                return Arc::clone(label);
            }
            if names.len() >= self.cap {
                return Arc::clone(&self.other);
            }
        }
        self.insert(name)
    }

    /// Takes a slot for `name` under the write lock, unless another caller took the last one.
    fn insert(&self, name: &str) -> Arc<str> {
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(label) = names.get(name) {
            return Arc::clone(label);
        }
        if names.len() >= self.cap {
            return Arc::clone(&self.other);
        }
        let label: Arc<str> = Arc::from(name);
        names.insert(Arc::clone(&label));
        label
    }

    /// Frees `name`'s slot; its label, when it had one of its own.
    pub(super) fn forget(&self, name: &str) -> Option<Arc<str>> {
        self.names
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take(name)
    }

    /// Every label now given out, [`OTHER`] included.
    pub(super) fn in_use(&self) -> Vec<Arc<str>> {
        let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
        names
            .iter()
            .cloned()
            .chain([Arc::clone(&self.other)])
            .collect()
    }
}
