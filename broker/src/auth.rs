//! Users, password hashes and per-vhost permissions.
//!
//! Password hashes use RabbitMQ's `rabbit_password_hashing_sha256` format — base64 of a 4-octet
//! random salt followed by SHA-256(salt ‖ password) — so definitions move between the two brokers.

use base64::Engine;
use rand::RngCore;
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// RabbitMQ-format salted SHA-256 (base64).
    pub password_hash: String,
    /// e.g. `administrator`, `management`.
    pub tags: Vec<String>,
}

impl User {
    pub fn with_password(name: &str, password: &str, tags: Vec<String>) -> User {
        User {
            name: name.to_string(),
            password_hash: hash_password(password),
            tags,
        }
    }

    pub fn check_password(&self, password: &str) -> bool {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&self.password_hash)
        else {
            return false;
        };
        if decoded.len() != 4 + 32 {
            return false;
        }
        let (salt, expected) = decoded.split_at(4);
        let actual = salted_sha256(salt, password);
        // Constant-time comparison: no early exit on the first differing octet.
        actual
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn salted_sha256(salt: &[u8], password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    let mut out = salt.to_vec();
    out.extend_from_slice(&salted_sha256(&salt, password));
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// A user's rights in one vhost: three regular expressions over resource names.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Permission {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A permission with its expressions compiled.
#[derive(Clone, Debug)]
pub struct CompiledPermission {
    configure: Regex,
    write: Regex,
    read: Regex,
    source: Permission,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Configure = 0,
    Write = 1,
    Read = 2,
}

impl Access {
    pub fn name(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

impl CompiledPermission {
    pub fn compile(permission: &Permission) -> Result<CompiledPermission, regex::Error> {
        // RabbitMQ matches the whole expression as a search (`re:run`), and an empty
        // expression grants nothing.
        let build = |pattern: &str| {
            if pattern.is_empty() {
                Regex::new("^$.")
            } else {
                Regex::new(pattern)
            }
        };
        Ok(CompiledPermission {
            configure: build(&permission.configure)?,
            write: build(&permission.write)?,
            read: build(&permission.read)?,
            source: permission.clone(),
        })
    }

    /// The expressions as given.
    pub fn source(&self) -> &Permission {
        &self.source
    }

    pub fn allows(&self, access: Access, resource: &str) -> bool {
        match access {
            Access::Configure => self.configure.is_match(resource),
            Access::Write => self.write.is_match(resource),
            Access::Read => self.read.is_match(resource),
        }
    }
}

/// Parses a SASL response for PLAIN (`\0user\0password`) or AMQPLAIN (a field table body
/// with `LOGIN` and `PASSWORD`).
pub fn parse_credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = std::str::from_utf8(parts.next()?).ok()?;
            let password = std::str::from_utf8(parts.next()?).ok()?;
            Some((user.to_string(), password.to_string()))
        }
        "AMQPLAIN" => {
            let mut framed = (response.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(response);
            let table = crate::amqp::FieldTable::decode(framed.into()).ok()?;
            let user = table.get("LOGIN")?.as_str()?.to_string();
            let password = table.get("PASSWORD")?.as_str()?.to_string();
            Some((user, password))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_check_and_salts_differ() {
        let a = User::with_password("u", "secret", vec![]);
        let b = User::with_password("u", "secret", vec![]);
        assert!(a.check_password("secret"));
        assert!(!a.check_password("Secret"));
        assert_ne!(a.password_hash, b.password_hash);
    }

    #[test]
    fn permissions_are_regex_searches() {
        let p = CompiledPermission::compile(&Permission {
            user: "u".into(),
            vhost: "/".into(),
            configure: "^app\\.".into(),
            write: ".*".into(),
            read: "".into(),
        })
        .unwrap();
        assert!(p.allows(Access::Configure, "app.q"));
        assert!(!p.allows(Access::Configure, "other"));
        assert!(p.allows(Access::Write, "anything"));
        assert!(!p.allows(Access::Read, "anything"));
        assert!(!p.allows(Access::Read, ""));
    }

    #[test]
    fn sasl_responses_parse() {
        assert_eq!(
            parse_credentials("PLAIN", b"\0guest\0pw"),
            Some(("guest".into(), "pw".into()))
        );
        let mut table = crate::amqp::FieldTable::new();
        table.insert("LOGIN", crate::amqp::FieldValue::string("bob"));
        table.insert("PASSWORD", crate::amqp::FieldValue::string("x"));
        let encoded = table.encode();
        assert_eq!(
            parse_credentials("AMQPLAIN", &encoded[4..]),
            Some(("bob".into(), "x".into()))
        );
        assert_eq!(parse_credentials("PLAIN", b"nozero"), None);
    }
}
