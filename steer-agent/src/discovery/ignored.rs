//! Which objects are currently ignored as malformed, so each is logged and
//! counted once when it turns bad, not on every update or relist.

use std::collections::HashSet;

use super::objects::Key;

/// Keys of the ignored objects of one watched resource.
#[derive(Debug, Default)]
pub(crate) struct IgnoredSet {
    current: HashSet<Key>,
    /// Collected during a relist; replaces `current` when the list is done.
    listing: Option<HashSet<Key>>,
}

impl IgnoredSet {
    pub fn begin_list(&mut self) {
        self.listing = Some(HashSet::new());
    }

    pub fn end_list(&mut self) {
        if let Some(listed) = self.listing.take() {
            self.current = listed;
        }
    }

    /// Records a bad object; true when it is news (log and count it).
    pub fn ignore(&mut self, key: Option<&Key>) -> bool {
        let Some(key) = key else { return true };
        let fresh = !self.current.contains(key);
        match &mut self.listing {
            Some(listed) => listed.insert(key.clone()),
            None => self.current.insert(key.clone()),
        };
        fresh
    }

    pub fn accept(&mut self, key: &Key) {
        self.current.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn ignored_objects_are_news_once_per_turning_bad() {
        let mut set = IgnoredSet::default();
        assert!(set.ignore(Some(&key("a"))));
        assert!(
            !set.ignore(Some(&key("a"))),
            "a second bad update is not news"
        );
        assert!(set.ignore(None), "nameless objects cannot be tracked");
        set.begin_list();
        assert!(!set.ignore(Some(&key("a"))), "still bad after a relist");
        set.end_list();
        set.accept(&key("a"));
        assert!(set.ignore(Some(&key("a"))), "bad again after being fixed");
        set.begin_list();
        set.end_list();
        assert!(
            set.ignore(Some(&key("a"))),
            "gone from the relist, forgotten"
        );
    }
}
