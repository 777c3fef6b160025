//! Topic matching: a trie over the dot-separated words of binding keys, where `*` matches one
//! word and `#` zero or more. A routing key walks the trie once; `#` nodes branch.

use std::collections::HashMap;

#[derive(Debug)]
struct Node<T> {
    words: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    /// Destinations of bindings whose key ends here.
    here: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            words: HashMap::new(),
            star: None,
            hash: None,
            here: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct TopicTrie<T> {
    root: Node<T>,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
        }
    }
}

impl<T: PartialEq + Clone> TopicTrie<T> {
    pub fn insert(&mut self, key: &str, value: T) {
        let mut node = &mut self.root;
        for word in key.split('.') {
            node = match word {
                "*" => node.star.get_or_insert_with(Default::default),
                "#" => node.hash.get_or_insert_with(Default::default),
                w => node.words.entry(w.into()).or_default(),
            };
        }
        if !node.here.contains(&value) {
            node.here.push(value);
        }
    }

    pub fn remove(&mut self, key: &str, value: &T) {
        fn walk<T: PartialEq>(node: &mut Node<T>, words: &[&str], value: &T) -> bool {
            match words.split_first() {
                None => node.here.retain(|v| v != value),
                Some((word, rest)) => {
                    let child = match *word {
                        "*" => node.star.as_deref_mut(),
                        "#" => node.hash.as_deref_mut(),
                        w => node.words.get_mut(w),
                    };
                    if let Some(child) = child {
                        if walk(child, rest, value) {
                            match *word {
                                "*" => node.star = None,
                                "#" => node.hash = None,
                                w => {
                                    node.words.remove(w);
                                }
                            }
                        }
                    }
                }
            }
            node.here.is_empty()
                && node.words.is_empty()
                && node.star.is_none()
                && node.hash.is_none()
        }
        let words: Vec<&str> = key.split('.').collect();
        walk(&mut self.root, &words, value);
    }

    /// Calls `found` for every value whose binding key matches `routing_key` (a value bound by
    /// two matching keys is reported twice; the caller deduplicates).
    pub fn matches(&self, routing_key: &str, found: &mut impl FnMut(&T)) {
        let words: Vec<&str> = routing_key.split('.').collect();
        Self::walk(&self.root, &words, found);
    }

    fn walk(node: &Node<T>, words: &[&str], found: &mut impl FnMut(&T)) {
        if let Some(hash) = &node.hash {
            // `#` swallows zero or more words.
            for skip in 0..=words.len() {
                Self::walk(hash, &words[skip..], found);
            }
        }
        match words.split_first() {
            None => node.here.iter().for_each(&mut *found),
            Some((word, rest)) => {
                if let Some(child) = node.words.get(*word) {
                    Self::walk(child, rest, found);
                }
                if let Some(star) = &node.star {
                    Self::walk(star, rest, found);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matched(trie: &TopicTrie<u32>, key: &str) -> Vec<u32> {
        let mut out = Vec::new();
        trie.matches(key, &mut |v| {
            if !out.contains(v) {
                out.push(*v)
            }
        });
        out.sort();
        out
    }

    /// The definition, as a slow reference: RabbitMQ's semantics by recursion on words.
    fn reference(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.split_first(), key.split_first()) {
            (None, None) => true,
            (Some((&"#", rest)), _) => (0..=key.len()).any(|skip| reference(rest, &key[skip..])),
            (Some((&"*", rest)), Some((_, krest))) => reference(rest, krest),
            (Some((p, rest)), Some((k, krest))) => p == k && reference(rest, krest),
            _ => false,
        }
    }

    #[test]
    fn rabbitmq_examples() {
        let mut trie = TopicTrie::default();
        trie.insert("*.orange.*", 1);
        trie.insert("*.*.rabbit", 2);
        trie.insert("lazy.#", 3);
        trie.insert("#", 4);
        assert_eq!(matched(&trie, "quick.orange.rabbit"), vec![1, 2, 4]);
        assert_eq!(matched(&trie, "lazy.orange.elephant"), vec![1, 3, 4]);
        assert_eq!(matched(&trie, "lazy"), vec![3, 4]);
        assert_eq!(matched(&trie, "quick.brown.fox"), vec![4]);
        assert_eq!(matched(&trie, ""), vec![4]);
        trie.remove("#", &4);
        assert_eq!(matched(&trie, "quick.brown.fox"), Vec::<u32>::new());
        trie.remove("lazy.#", &3);
        assert_eq!(matched(&trie, "lazy"), Vec::<u32>::new());
    }

    proptest! {
        #[test]
        fn agrees_with_reference(
            patterns in proptest::collection::vec(
                proptest::collection::vec(prop_oneof!["a", "b", Just("*".to_string()), Just("#".to_string())], 0..4), 1..6),
            key in proptest::collection::vec(prop_oneof!["a", "b", "c"], 0..5),
        ) {
            let mut trie = TopicTrie::default();
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(&p.join("."), i as u32);
            }
            let key_text = key.join(".");
            let key_words: Vec<&str> = key_text.split('.').collect();
            let mut expected: Vec<u32> = patterns.iter().enumerate()
                .filter(|(_, p)| {
                    let joined = p.join(".");
                    let words: Vec<&str> = joined.split('.').collect();
                    reference(&words, &key_words)
                })
                .map(|(i, _)| i as u32).collect();
            expected.sort();
            prop_assert_eq!(matched(&trie, &key_text), expected);
        }
    }
}
