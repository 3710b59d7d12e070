//! A list of weak references for registries that are read only on close: the first entry is
//! stored inline (a session usually has one locker, so no allocation), dead entries are pruned
//! when the list would grow, and dropping an item costs nothing.

use std::sync::{Arc, Weak};

#[derive(Debug)]
pub(crate) struct WeakList<T> {
    first: Weak<T>,
    rest: Vec<Weak<T>>,
}

impl<T> Default for WeakList<T> {
    fn default() -> Self {
        WeakList {
            first: Weak::new(),
            rest: Vec::new(),
        }
    }
}

impl<T> WeakList<T> {
    pub(crate) fn push(&mut self, item: Weak<T>) {
        if self.first.strong_count() == 0 {
            self.first = item;
            return;
        }
        if self.rest.len() == self.rest.capacity() {
            self.rest.retain(|w| w.strong_count() > 0);
        }
        self.rest.push(item);
    }

    /// The items still alive.
    pub(crate) fn into_live(self) -> impl Iterator<Item = Arc<T>> {
        std::iter::once(self.first)
            .chain(self.rest)
            .filter_map(|w| w.upgrade())
    }
}
