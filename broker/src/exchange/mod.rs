//! Exchanges and their bindings.
//!
//! - [`topic`]: the `*`/`#` trie.
//! - [`headers`]: `x-match` evaluation.
//!
//! An exchange keeps its bindings twice: as the list they were made in (for listing, unbinding
//! and persistence) and as a router index for its type (a map for direct, a list for fanout, a
//! trie for topic, compiled matchers for headers). Routing never allocates per binding.

pub mod headers;
pub mod topic;

use crate::amqp::FieldTable;
use headers::HeadersMatch;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use topic::TopicTrie;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Destination {
    Queue(String),
    Exchange(String),
}

impl Destination {
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(n) | Destination::Exchange(n) => n,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Binding {
    pub source: String,
    pub destination: Destination,
    pub routing_key: String,
    /// The arguments in their wire encoding.
    pub arguments: Vec<u8>,
}

impl Binding {
    pub fn arguments(&self) -> FieldTable {
        FieldTable::decode(self.arguments.clone().into()).unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(name: &str) -> Option<ExchangeKind> {
        Some(match name {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// An exchange's declaration, persisted for durable exchanges.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDecl {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Vec<u8>,
}

impl ExchangeDecl {
    pub fn arguments(&self) -> FieldTable {
        FieldTable::decode(self.arguments.clone().into()).unwrap_or_default()
    }
}

#[derive(Debug)]
enum Router {
    Direct(HashMap<String, Vec<Destination>>),
    Fanout(Vec<Destination>),
    Topic(TopicTrie<Destination>),
    Headers(Vec<(HeadersMatch, Destination)>),
}

#[derive(Debug)]
pub struct Exchange {
    pub decl: ExchangeDecl,
    pub kind: ExchangeKind,
    /// `alternate-exchange` argument: where unroutable messages go.
    pub alternate: Option<String>,
    bindings: Vec<Binding>,
    router: Router,
}

impl Exchange {
    pub fn new(decl: ExchangeDecl, kind: ExchangeKind) -> Exchange {
        let alternate = decl
            .arguments()
            .get("alternate-exchange")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let router = match kind {
            ExchangeKind::Direct => Router::Direct(HashMap::new()),
            ExchangeKind::Fanout => Router::Fanout(Vec::new()),
            ExchangeKind::Topic => Router::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Router::Headers(Vec::new()),
        };
        Exchange {
            decl,
            kind,
            alternate,
            bindings: Vec::new(),
            router,
        }
    }

    pub fn name(&self) -> &str {
        &self.decl.name
    }

    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// Adds a binding; `Ok(false)` if the same binding exists. `Err` for invalid headers
    /// arguments.
    pub fn bind(&mut self, binding: Binding) -> Result<bool, String> {
        if self.bindings.contains(&binding) {
            return Ok(false);
        }
        let destination = binding.destination.clone();
        match &mut self.router {
            Router::Direct(map) => {
                let list = map.entry(binding.routing_key.clone()).or_default();
                if !list.contains(&destination) {
                    list.push(destination);
                }
            }
            Router::Fanout(list) => {
                if !list.contains(&destination) {
                    list.push(destination);
                }
            }
            Router::Topic(trie) => trie.insert(&binding.routing_key, destination),
            Router::Headers(list) => {
                list.push((HeadersMatch::compile(&binding.arguments())?, destination))
            }
        }
        self.bindings.push(binding);
        Ok(true)
    }

    /// Removes a binding; `false` if there was none.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let Some(at) = self.bindings.iter().position(|b| b == binding) else {
            return false;
        };
        self.bindings.remove(at);
        let destination = &binding.destination;
        let still_same_key = self
            .bindings
            .iter()
            .any(|b| b.destination == *destination && b.routing_key == binding.routing_key);
        let still_any = self.bindings.iter().any(|b| b.destination == *destination);
        match &mut self.router {
            Router::Direct(map) => {
                if !still_same_key {
                    if let Some(list) = map.get_mut(&binding.routing_key) {
                        list.retain(|d| d != destination);
                        if list.is_empty() {
                            map.remove(&binding.routing_key);
                        }
                    }
                }
            }
            Router::Fanout(list) => {
                if !still_any {
                    list.retain(|d| d != destination);
                }
            }
            Router::Topic(trie) => {
                if !still_same_key {
                    trie.remove(&binding.routing_key, destination)
                }
            }
            Router::Headers(list) => {
                let arguments = binding.arguments();
                if let Ok(compiled) = HeadersMatch::compile(&arguments) {
                    if let Some(i) = list
                        .iter()
                        .position(|(m, d)| d == destination && *m == compiled)
                    {
                        list.remove(i);
                    }
                }
            }
        }
        true
    }

    /// Removes every binding to `destination`; returns them.
    pub fn unbind_destination(&mut self, destination: &Destination) -> Vec<Binding> {
        let gone: Vec<Binding> = self
            .bindings
            .iter()
            .filter(|b| b.destination == *destination)
            .cloned()
            .collect();
        for binding in &gone {
            self.unbind(binding);
        }
        gone
    }

    /// Calls `found` for each destination the message matches (possibly more than once).
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        found: &mut impl FnMut(&Destination),
    ) {
        match &self.router {
            Router::Direct(map) => {
                if let Some(list) = map.get(routing_key) {
                    list.iter().for_each(found);
                }
            }
            Router::Fanout(list) => list.iter().for_each(found),
            Router::Topic(trie) => trie.matches(routing_key, found),
            Router::Headers(list) => {
                for (matcher, destination) in list {
                    if matcher.matches(headers) {
                        found(destination);
                    }
                }
            }
        }
    }

    pub fn needs_headers(&self) -> bool {
        matches!(self.router, Router::Headers(_))
    }
}
