//! A queue that holds nothing until it is used: a connection's replays and
//! the requests deferred behind them. Most connections never have either,
//! and each empty `VecDeque` would cost every idle connection's task 32
//! bytes.

use std::collections::VecDeque;

/// A `VecDeque` allocated on first push and freed once emptied.
#[derive(Debug)]
#[allow(
    clippy::box_collection,
    reason = "one pointer while empty (most connections), not a VecDeque's 32 bytes"
)]
pub(super) struct LazyQueue<T>(Option<Box<VecDeque<T>>>);

impl<T> Default for LazyQueue<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> LazyQueue<T> {
    pub(super) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.is_empty())
    }

    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    pub(super) fn push_back(&mut self, item: T) {
        self.0.get_or_insert_with(Box::default).push_back(item);
    }

    pub(super) fn front_mut(&mut self) -> Option<&mut T> {
        self.0.as_mut()?.front_mut()
    }

    pub(super) fn pop_front(&mut self) -> Option<T> {
        let q = self.0.as_mut()?;
        let item = q.pop_front();
        if q.is_empty() {
            self.0 = None;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_nothing_until_used_and_once_emptied() {
        let mut q = LazyQueue::default();
        assert!(q.is_empty() && q.0.is_none());
        q.push_back(1);
        q.push_back(2);
        assert_eq!(q.len(), 2);
        *q.front_mut().unwrap() = 10;
        assert_eq!(q.pop_front(), Some(10));
        assert!(!q.is_empty());
        assert_eq!(q.pop_front(), Some(2));
        assert!(q.is_empty() && q.0.is_none(), "freed once emptied");
        assert_eq!(q.pop_front(), None);
    }
}
