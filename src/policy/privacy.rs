//! Privacy policies: what of a record's personal data is kept, truncated, removed or replaced
//! by a keyed hash, per source, before the record is queued — so nothing a policy removes is
//! ever written to disk.
//!
//! A policy works on the record as it will land in the lake, by field path
//! (`properties.email`, `context.traits.phone`; `*` is any key at one level; a path through an
//! array applies to each element). The address and user-agent rules know each protocol's
//! own fields ([`Shape`]). A record a policy touched says which policy did, in
//! `privacy_policy` (`<name>:<version>`, the version a digest of the policy's settings), so the
//! lake can prove what was applied. A source without a policy, and a policy that keeps
//! everything, cost nothing: their records are not read again.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::Shape;
use crate::config::ConfigError;

/// The field a touched record carries: which policy applied.
pub const POLICY_FIELD: &str = "privacy_policy";

/// What to do with the client's address.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IpRule {
    /// As it is.
    #[default]
    Keep,
    /// IPv4 to its /24, IPv6 to its /48 (not an address at all: removed).
    Truncate,
    /// Removed.
    Drop,
}

/// What to do with the user agent.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UserAgentRule {
    /// As it is.
    #[default]
    Keep,
    /// Removed.
    Drop,
}

/// One policy's settings (`[privacy]`, or `[privacy.sources.NAME]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// The client's address.
    pub ip: IpRule,
    /// Field paths to remove.
    pub drop: Vec<String>,
    /// Field paths whose values become keyed hashes.
    pub hash: Vec<String>,
    /// The hash key (the file's bytes, surrounding whitespace trimmed); required with `hash`
    /// (or `hash_key_env`). Empty: none.
    pub hash_key_file: PathBuf,
    /// Or the name of an environment variable holding the key. Empty: none.
    pub hash_key_env: String,
    /// The user agent.
    pub user_agent: UserAgentRule,
}

/// `[privacy]`: the default policy, and each source's own. The default's keys are repeated
/// here rather than flattened from [`PolicyConfig`]: serde cannot refuse unknown keys of a
/// flattened struct, and a typo in a privacy setting must stop the start.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// The client's address (default policy).
    pub ip: IpRule,
    /// Field paths to remove (default policy).
    pub drop: Vec<String>,
    /// Field paths whose values become keyed hashes (default policy).
    pub hash: Vec<String>,
    /// The hash key file (default policy). Empty: none.
    pub hash_key_file: PathBuf,
    /// The hash key's environment variable (default policy). Empty: none.
    pub hash_key_env: String,
    /// The user agent (default policy).
    pub user_agent: UserAgentRule,
    /// A source's own policy, replacing the default (the same keys).
    pub sources: BTreeMap<String, PolicyConfig>,
}

impl PrivacyConfig {
    fn default_policy(&self) -> PolicyConfig {
        PolicyConfig {
            ip: self.ip,
            drop: self.drop.clone(),
            hash: self.hash.clone(),
            hash_key_file: self.hash_key_file.clone(),
            hash_key_env: self.hash_key_env.clone(),
            user_agent: self.user_agent,
        }
    }
}

/// A field path, split at its dots.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldPath(Vec<String>);

impl FieldPath {
    fn parse(key: &str, text: &str) -> Result<FieldPath, ConfigError> {
        let parts: Vec<String> = text.split('.').map(str::to_owned).collect();
        if parts.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                key,
                format!("{text:?} is not a field path (dot-separated names, `*` for any)"),
            ));
        }
        Ok(FieldPath(parts))
    }
}

/// A policy, ready to apply.
pub struct Policy {
    /// `<name>:<version>`, written into every record it touches.
    label: String,
    ip: IpRule,
    drop: Vec<FieldPath>,
    hash: Vec<FieldPath>,
    key: Option<HashKey>,
    user_agent: UserAgentRule,
}

/// The hash key and its id (written beside each hash, so keys can be rotated).
struct HashKey {
    id: String,
    bytes: Vec<u8>,
}

impl Policy {
    fn new(name: &str, key: &str, config: &PolicyConfig) -> Result<Option<Policy>, ConfigError> {
        let paths = |list: &[String], field: &str| {
            list.iter()
                .map(|p| FieldPath::parse(&format!("{key}.{field}"), p))
                .collect::<Result<Vec<_>, _>>()
        };
        let (drop, hash) = (paths(&config.drop, "drop")?, paths(&config.hash, "hash")?);
        let secret = crate::config::secret(
            &format!("{key}.hash_key"),
            &config.hash_key_file,
            &config.hash_key_env,
        )?;
        if !hash.is_empty() && secret.is_none() {
            return Err(ConfigError::invalid(
                &format!("{key}.hash"),
                "needs a key: hash_key_file or hash_key_env",
            ));
        }
        let key = secret.map(|bytes| HashKey {
            // A digest of the key, never the key: it changes when the key does.
            id: hex(&Sha256::digest(&bytes)[..4]),
            bytes,
        });
        let keeps_everything = config.ip == IpRule::Keep
            && config.user_agent == UserAgentRule::Keep
            && drop.is_empty()
            && hash.is_empty();
        if keeps_everything {
            return Ok(None);
        }
        // The version: a digest of what the policy does (the key by its id).
        let settings = serde_json::json!({
            "ip": config.ip, "drop": config.drop, "hash": config.hash,
            "user_agent": config.user_agent, "key": key.as_ref().map(|k| &k.id),
        });
        let version = hex(&Sha256::digest(settings.to_string().as_bytes())[..4]);
        Ok(Some(Policy {
            label: format!("{name}:{version}"),
            ip: config.ip,
            drop,
            hash,
            key,
            user_agent: config.user_agent,
        }))
    }

    /// Applies the policy to `record` (one record, as it will land).
    pub fn apply_to(&self, record: &mut Value, personal: &Shape) {
        let Some(object) = record.as_object_mut() else {
            return;
        };
        for path in personal.ip {
            let path: Vec<&str> = path.split('.').collect();
            match self.ip {
                IpRule::Keep => {}
                IpRule::Drop => remove(object, &path),
                IpRule::Truncate => each(object, &path, &mut |v| *v = truncated(v)),
            }
        }
        if self.user_agent == UserAgentRule::Drop {
            for path in personal.user_agent {
                remove(object, &path.split('.').collect::<Vec<_>>());
            }
        }
        for path in &self.drop {
            remove(
                object,
                &path.0.iter().map(String::as_str).collect::<Vec<_>>(),
            );
        }
        if let Some(key) = &self.key {
            for path in &self.hash {
                let path: Vec<&str> = path.0.iter().map(String::as_str).collect();
                each(object, &path, &mut |v| hash_leaves(v, key));
            }
        }
        object.insert(POLICY_FIELD.to_owned(), Value::String(self.label.clone()));
    }
}

/// Every source's policy.
pub struct Privacy {
    default: Option<Policy>,
    sources: HashMap<String, Option<Policy>>,
}

impl Privacy {
    /// The policies of `config`, with their keys read (a missing or short key is refused).
    pub fn new(config: &PrivacyConfig) -> Result<Privacy, ConfigError> {
        let default = Policy::new("default", "privacy", &config.default_policy())?;
        let mut sources = HashMap::new();
        for (name, policy) in &config.sources {
            let key = format!("privacy.sources.{name}");
            sources.insert(name.clone(), Policy::new(name, &key, policy)?);
        }
        Ok(Privacy { default, sources })
    }

    /// The policy of `source`, or `None` when its records are kept as they are.
    pub fn of(&self, source: &str) -> Option<&Policy> {
        match self.sources.get(source) {
            Some(own) => own.as_ref(),
            None => self.default.as_ref(),
        }
    }

    /// `text` as every policy's hash key writes it (each distinct key once): what a hashed
    /// field holds in the queue when `text` was sent (deletion requests look for it).
    pub fn hashed_forms(&self, text: &str) -> Vec<String> {
        let mut forms: Vec<String> = Vec::new();
        let policies = self.default.iter().chain(self.sources.values().flatten());
        for key in policies.filter_map(|p| p.key.as_ref()) {
            let form = keyed_hash(key, text);
            if !forms.contains(&form) {
                forms.push(form);
            }
        }
        forms
    }
}

/// Calls `f` on every value at `path` (`*` any key; arrays on the way: each element).
fn each(value: &mut Map<String, Value>, path: &[&str], f: &mut dyn FnMut(&mut Value)) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let keys: Vec<String> = match *first {
        "*" => value.keys().cloned().collect(),
        name => vec![name.to_owned()],
    };
    for key in keys {
        let Some(child) = value.get_mut(&key) else {
            continue;
        };
        if rest.is_empty() {
            f(child);
        } else {
            descend(child, rest, f);
        }
    }
}

fn descend(value: &mut Value, path: &[&str], f: &mut dyn FnMut(&mut Value)) {
    match value {
        Value::Object(map) => each(map, path, f),
        Value::Array(items) => items.iter_mut().for_each(|item| descend(item, path, f)),
        _ => {}
    }
}

/// Removes every value at `path`.
fn remove(value: &mut Map<String, Value>, path: &[&str]) {
    match path {
        [] => {}
        ["*"] => value.clear(),
        [name] => {
            value.remove(*name);
        }
        [first, rest @ ..] => {
            let mut visit = |child: &mut Value| remove_in(child, rest);
            each(value, &[first], &mut visit);
        }
    }
}

fn remove_in(value: &mut Value, path: &[&str]) {
    match value {
        Value::Object(map) => remove(map, path),
        Value::Array(items) => items.iter_mut().for_each(|item| remove_in(item, path)),
        _ => {}
    }
}

/// An address truncated to its /24 (IPv4) or /48 (IPv6); `null` if it is none.
fn truncated(value: &Value) -> Value {
    let Some(ip) = value.as_str().and_then(|s| s.trim().parse::<IpAddr>().ok()) else {
        return Value::Null;
    };
    let cut = match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    };
    Value::String(cut.to_string())
}

/// Replaces every string or number at or under `value` with its keyed hash.
fn hash_leaves(value: &mut Value, key: &HashKey) {
    match value {
        Value::String(s) => *value = Value::String(keyed_hash(key, s)),
        Value::Number(n) => *value = Value::String(keyed_hash(key, &n.to_string())),
        Value::Array(items) => items.iter_mut().for_each(|v| hash_leaves(v, key)),
        Value::Object(map) => map.values_mut().for_each(|v| hash_leaves(v, key)),
        Value::Bool(_) | Value::Null => {}
    }
}

/// `hmac-sha256:<key id>:<hex>`: equal values give equal hashes under one key (joins still
/// work), and the key id says which key made it.
fn keyed_hash(key: &HashKey, text: &str) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key.bytes).expect("any key length");
    mac.update(text.as_bytes());
    format!(
        "hmac-sha256:{}:{}",
        key.id,
        hex(&mac.finalize().into_bytes())
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SEGMENT: Shape = Shape {
        ip: &["context.ip"],
        user_agent: &["context.userAgent"],
        planned: |_| None,
        ids: &[],
    };

    fn policy(config: PolicyConfig) -> Policy {
        Policy::new("t", "privacy", &config).unwrap().unwrap()
    }

    fn apply(p: &Policy, mut record: Value) -> Value {
        p.apply_to(&mut record, &SEGMENT);
        record
    }

    fn keyed(config: PolicyConfig, key: &str) -> PolicyConfig {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), key).unwrap();
        let (_, path) = file.keep().unwrap();
        PolicyConfig {
            hash_key_file: path,
            ..config
        }
    }

    #[test]
    fn drops_hashes_truncates_and_says_which_policy() {
        let p = policy(keyed(
            PolicyConfig {
                ip: IpRule::Truncate,
                drop: vec!["properties.email".into(), "traits.*".into()],
                hash: vec!["userId".into(), "context.traits.phone".into()],
                user_agent: UserAgentRule::Drop,
                ..PolicyConfig::default()
            },
            "a-key-of-at-least-16-bytes",
        ));
        let out = apply(
            &p,
            json!({"userId": "u1", "properties": {"email": "a@b.c", "plan": "pro"},
                   "traits": {"name": "Ann", "age": 3},
                   "context": {"ip": "203.0.113.77", "userAgent": "Mozilla", "traits": {"phone": 5551234}}}),
        );
        assert_eq!(out["properties"], json!({"plan": "pro"}));
        assert_eq!(out["traits"], json!({}));
        assert_eq!(out["context"]["ip"], "203.0.113.0");
        assert!(out["context"].get("userAgent").is_none());
        let user = out["userId"].as_str().unwrap();
        assert!(
            user.starts_with("hmac-sha256:") && user.len() == 12 + 9 + 64,
            "{user}"
        );
        assert!(
            out["context"]["traits"]["phone"]
                .as_str()
                .unwrap()
                .starts_with("hmac-sha256:")
        );
        assert!(out[POLICY_FIELD].as_str().unwrap().starts_with("t:"));
        // Stable under one key, different under another (and its id says so).
        assert_eq!(apply(&p, json!({"userId": "u1"}))["userId"], user);
        let other = policy(keyed(
            PolicyConfig {
                hash: vec!["userId".into()],
                ..PolicyConfig::default()
            },
            "another-key-0123456789",
        ));
        let theirs = apply(&other, json!({"userId": "u1"}))["userId"].clone();
        assert_ne!(theirs.as_str().unwrap()[12..20], user[12..20]);
    }

    #[test]
    fn ipv6_is_cut_to_its_48_and_junk_is_removed() {
        let p = policy(PolicyConfig {
            ip: IpRule::Truncate,
            ..PolicyConfig::default()
        });
        let out = apply(&p, json!({"context": {"ip": "2001:db8:1234:5678::1"}}));
        assert_eq!(out["context"]["ip"], "2001:db8:1234::");
        let out = apply(&p, json!({"context": {"ip": "not an address"}}));
        assert_eq!(out["context"]["ip"], Value::Null);
    }

    #[test]
    fn a_policy_that_keeps_everything_is_none_and_bad_settings_name_their_key() {
        assert!(
            Policy::new("t", "privacy", &PolicyConfig::default())
                .unwrap()
                .is_none()
        );
        let no_key = PolicyConfig {
            hash: vec!["userId".into()],
            ..PolicyConfig::default()
        };
        let e = Policy::new("t", "privacy", &no_key)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("privacy.hash"), "{e}");
        let bad = PolicyConfig {
            drop: vec!["a..b".into()],
            ..PolicyConfig::default()
        };
        let e = Policy::new("t", "privacy", &bad).err().unwrap().to_string();
        assert!(e.contains("privacy.drop"), "{e}");
        let short = keyed(no_key, "short");
        let e = Policy::new("t", "privacy", &short)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("16 bytes"), "{e}");
    }

    #[test]
    fn paths_through_arrays_apply_to_each_element() {
        let p = policy(PolicyConfig {
            drop: vec!["contexts.data.data.email".into()],
            ..PolicyConfig::default()
        });
        let out = apply(
            &p,
            json!({"contexts": {"data": [{"data": {"email": "x", "tier": 1}}, {"data": {"email": "y"}}]}}),
        );
        assert_eq!(
            out["contexts"]["data"],
            json!([{"data": {"tier": 1}}, {"data": {}}])
        );
    }
}
