//! Strict configuration: every key iac is given must be one it reads, and no value may be a
//! placeholder.
//!
//! * **Unknown keys and tables.** [`unknown_keys`] walks the merged figment value through
//!   [`IacConfig`]'s own `Deserialize` impl with a deserializer that sees the field list serde
//!   passes for every struct. So the set of known keys is exactly the structs' fields, in every
//!   section, including ones added later: adding a key is one field in one struct, and a struct
//!   added anywhere under `IacConfig` is strict without further work. Each unknown key is reported
//!   with where it came from (the TOML file, or the `IAC_…` variable) and a suggestion: the new
//!   name of a renamed key ([`RENAMED`]), the table a misplaced key belongs to (`[provision.docker]`
//!   → `[docker]`, `docker_host` at the top → `[docker] docker_host`), else the closest known key.
//! * **Environment.** `IAC_<KEY>` (nested with `__`) is configuration when it names a top-level
//!   key, contains `__`, or looks like a config key: a retired name, a key of a table given at
//!   the top (`IAC_SECRETS_DIR`, meant as `IAC_PKI__SECRETS_DIR`), a table name followed by `_`
//!   (`IAC_DOCKER_HOST`, meant as `IAC_DOCKER__DOCKER_HOST`), or a near-miss of a top-level key.
//!   Those are checked like the file. Other `IAC_*` variables (`IAC_CONFIG`, the bootstrap recipe's
//!   `IAC_PYTHON_IMAGE`, test switches) are not configuration and are left alone.
//! * **Placeholders.** [`placeholder_values`] refuses values that are redaction markers printed by
//!   `iac config show` (`[redacted]`, `<redacted>`, `***redacted***`, `https://***@host`) or
//!   template text (`<your key>`, anything with `…`), so a pasted dump or an unedited example
//!   never becomes a real setting.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use figment::Figment;
use figment::value::{Dict, Tag, Value};
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess};

use super::IacConfig;

/// Keys that were renamed: (old dotted path, new dotted path, unit the old number was in).
/// The unit turns `health_deadline_secs = 45` into the suggestion `health_deadline = "45s"`.
pub const RENAMED: &[(&str, &str, &str)] = &[
    ("health_deadline_secs", "health_deadline", "s"),
    ("health_settle_secs", "health_settle", "s"),
    ("fetch.http_timeout_secs", "fetch.http_timeout", "s"),
    ("probe.initial_backoff_ms", "probe.initial_backoff", "ms"),
    ("probe.max_backoff_ms", "probe.max_backoff", "ms"),
    ("probe.connect_timeout_ms", "probe.connect_timeout", "ms"),
    ("probe.rpc_timeout_ms", "probe.rpc_timeout", "ms"),
    ("docker.health_deadline_secs", "docker.health_deadline", "s"),
    ("docker.stop_timeout_secs", "docker.stop_timeout", "s"),
    ("docker.request_timeout_secs", "docker.request_timeout", "s"),
    ("pki.ca_days", "pki.ca_validity", "d"),
    ("pki.leaf_days", "pki.leaf_validity", "d"),
    ("pki.renew_before_days", "pki.renew_before", "d"),
    ("supabase.confirm", "supabase.confirm_with_supabase", ""),
];

/// `IAC_*` variables that are not configuration although they look like it: `IAC_CONFIG` (the
/// `--config` flag) and the variables of the embedded image recipe (`iac bootstrap`).
const NOT_CONFIG_ENV: &[&str] = &[
    "config",
    "python_image",
    "python_official",
    "envoy_image",
    "envoy_official",
    "envoy_version",
    "debian_mirror",
    "debian_security",
    "wheelhouse",
    "pip",
    "bootstrap_pull",
    "mmdebstrap_hooks",
];

/// One key nobody reads.
#[derive(Debug, Clone)]
struct Unknown {
    /// Path of the table holding it (`[]` = top level).
    parent: Vec<String>,
    key: String,
    value: Value,
}

/// The top-level keys and tables of [`IacConfig`], from its defaults.
pub struct TopLevel {
    /// Top-level keys (tables included).
    pub keys: BTreeSet<String>,
    /// Top-level tables.
    pub tables: BTreeSet<String>,
    /// Keys of the tables (`secrets_dir`, `docker_host`, …).
    pub leaves: BTreeSet<String>,
}

impl TopLevel {
    /// The top-level keys and sections of the default configuration.
    pub fn of_defaults() -> TopLevel {
        let v = serde_json::to_value(IacConfig::default()).expect("defaults serialize");
        let map = v.as_object().expect("IacConfig is a struct").clone();
        TopLevel {
            leaves: map
                .values()
                .filter_map(|v| v.as_object())
                .flat_map(|t| t.keys().cloned())
                .collect(),
            tables: map
                .iter()
                .filter(|(_, v)| v.is_object())
                .map(|(k, _)| k.clone())
                .collect(),
            keys: map.into_iter().map(|(k, _)| k).collect(),
        }
    }

    /// Whether `IAC_<name>` (prefix stripped, any case, no `__`) is meant as configuration.
    pub fn env_is_config(&self, name: &str) -> bool {
        let k = name.to_ascii_lowercase();
        if NOT_CONFIG_ENV.contains(&k.as_str()) {
            return false;
        }
        if k.contains("__") || self.keys.contains(&k) || self.leaves.contains(&k) {
            return true;
        }
        if RENAMED.iter().any(|(old, _, _)| *old == k) {
            return true;
        }
        if self
            .tables
            .iter()
            .any(|t| k.starts_with(&format!("{t}_")) && k.len() > t.len() + 1)
        {
            return true;
        }
        self.keys
            .iter()
            .any(|key| key.len() >= 5 && strsim::levenshtein(key, &k) <= 2)
    }
}

/// Every unknown key in `fig`, as one message per key; empty when all are known.
pub fn unknown_keys(fig: &Figment) -> Vec<String> {
    let Ok(root) = fig.find_value("") else {
        return Vec::new();
    };
    let found = RefCell::new(Vec::new());
    let known = RefCell::new(BTreeMap::new());
    let checker = Checker {
        value: &root,
        path: Vec::new(),
        found: &found,
        known: &known,
    };
    // Type errors are the real extraction's to report; this pass only collects keys.
    let _ = <IacConfig as serde::Deserialize>::deserialize(checker);
    let known = known.into_inner();
    found
        .into_inner()
        .into_iter()
        .map(|u| describe(fig, &known, &u))
        .collect()
}

/// Walks a figment value like `&Value` does, recording unknown struct keys on the way.
struct Checker<'a> {
    value: &'a Value,
    path: Vec<String>,
    found: &'a RefCell<Vec<Unknown>>,
    /// Struct path (dotted) → its fields.
    known: &'a RefCell<BTreeMap<String, &'static [&'static str]>>,
}

impl<'a> Checker<'a> {
    fn child(&self, value: &'a Value, key: String) -> Checker<'a> {
        let mut path = self.path.clone();
        path.push(key);
        Checker {
            value,
            path,
            found: self.found,
            known: self.known,
        }
    }
}

struct Entries<'a> {
    parent: &'a Checker<'a>,
    iter: std::collections::btree_map::Iter<'a, String, Value>,
    next: Option<(&'a String, &'a Value)>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = figment::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.next = Some((k, v));
                seed.deserialize(k.as_str().into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let (k, v) = self.next.take().expect("value after key");
        seed.deserialize(self.parent.child(v, k.clone()))
    }
}

struct Items<'a> {
    parent: &'a Checker<'a>,
    iter: std::iter::Enumerate<std::slice::Iter<'a, Value>>,
}

impl<'de> SeqAccess<'de> for Items<'_> {
    type Error = figment::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        match self.iter.next() {
            Some((i, v)) => seed
                .deserialize(self.parent.child(v, i.to_string()))
                .map(Some),
            None => Ok(None),
        }
    }
}

impl<'de> Deserializer<'de> for Checker<'_> {
    type Error = figment::Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Dict(_, map) => v.visit_map(Entries {
                parent: &self,
                iter: map.iter(),
                next: None,
            }),
            Value::Array(_, items) => v.visit_seq(Items {
                parent: &self,
                iter: items.iter().enumerate(),
            }),
            other => other.deserialize_any(v),
        }
    }

    fn deserialize_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        if let Value::Dict(_, map) = self.value {
            self.known.borrow_mut().insert(self.path.join("."), fields);
            for (k, val) in map {
                if !fields.contains(&k.as_str()) {
                    self.found.borrow_mut().push(Unknown {
                        parent: self.path.clone(),
                        key: k.clone(),
                        value: val.clone(),
                    });
                }
            }
        }
        self.deserialize_any(v)
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Empty(..) => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Self::Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Self::Error> {
        self.value.deserialize_enum(name, variants, v)
    }

    fn deserialize_ignored_any<V: de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

/// `IAC_A__B` or `a.b` (TOML) for a path, in the style of where the key came from.
fn spelled(from_env: bool, path: &[&str]) -> String {
    if from_env {
        format!("IAC_{}", path.join("__").to_ascii_uppercase())
    } else if path.len() == 1 {
        format!("`{}`", path[0])
    } else {
        format!(
            "`{}` in [{}]",
            path[path.len() - 1],
            path[..path.len() - 1].join(".")
        )
    }
}

fn describe(
    fig: &Figment,
    known: &BTreeMap<String, &'static [&'static str]>,
    u: &Unknown,
) -> String {
    let md = fig.get_metadata(u.value.tag());
    let from_env = md.is_some_and(|m| m.name.contains("environment"));
    let mut full: Vec<&str> = u.parent.iter().map(String::as_str).collect();
    full.push(&u.key);
    let dotted = full.join(".");
    let is_table = matches!(u.value, Value::Dict(..));
    let what = if from_env {
        let mut leaves = Vec::new();
        leaf_paths(
            &u.value,
            &mut full.iter().map(|s| s.to_string()).collect(),
            &mut leaves,
        );
        let names: Vec<String> = leaves
            .iter()
            .map(|p| spelled(true, &p.iter().map(String::as_str).collect::<Vec<_>>()))
            .collect();
        format!("environment variable {}", names.join(", "))
    } else if is_table {
        format!("unknown table [{dotted}]")
    } else {
        format!("unknown key {}", spelled(false, &full))
    };
    let origin = match md {
        Some(_) if from_env => String::new(),
        Some(m) => match &m.source {
            Some(src) => format!(" in {src}"),
            None => format!(" in {}", m.name),
        },
        None => String::new(),
    };
    let hint = suggestion(known, u, from_env, &full, is_table);
    if from_env {
        format!("{what} names no configuration key{origin}: {hint}")
    } else {
        format!("{what}{origin}: {hint}")
    }
}

fn suggestion(
    known: &BTreeMap<String, &'static [&'static str]>,
    u: &Unknown,
    from_env: bool,
    full: &[&str],
    is_table: bool,
) -> String {
    let dotted = full.join(".");
    let parent = u.parent.join(".");
    let root: &[&str] = known.get("").copied().unwrap_or(&[]);
    let siblings: &[&str] = known.get(&parent).copied().unwrap_or(&[]);
    // 1. A renamed key.
    if let Some((_, new, unit)) = RENAMED.iter().find(|(old, _, _)| *old == dotted) {
        let new_path: Vec<&str> = new.split('.').collect();
        let number = match &u.value {
            Value::Num(_, n) => n
                .to_u128()
                .map(|n| n.to_string())
                .or_else(|| n.to_i128().map(|n| n.to_string())),
            Value::String(_, s) if s.parse::<u64>().is_ok() => Some(s.clone()),
            _ => None,
        };
        let example = match number {
            Some(n) if !unit.is_empty() && from_env => format!("={n}{unit}"),
            Some(n) if !unit.is_empty() => format!(" = \"{n}{unit}\""),
            _ => String::new(),
        };
        let kind = if unit.is_empty() {
            String::new()
        } else {
            " (durations are strings such as \"3s\", \"500ms\", \"5m\", \"90d\")".into()
        };
        return format!(
            "it was renamed: use {}{example}{kind}",
            spelled(from_env, &new_path)
        );
    }
    // 1b. A renamed key in the wrong table.
    if let Some((_, new, _)) = RENAMED
        .iter()
        .find(|(old, _, _)| old.rsplit('.').next() == Some(u.key.as_str()))
    {
        let new_path: Vec<&str> = new.split('.').collect();
        return format!(
            "did you mean {} (the new name of `{}`)?",
            spelled(from_env, &new_path),
            u.key
        );
    }
    // 2. A table wrapping real tables: [provision.docker] → [docker].
    if let Value::Dict(_, children) = &u.value {
        let hits: Vec<&String> = children
            .keys()
            .filter(|c| root.contains(&c.as_str()) && known.contains_key(c.as_str()))
            .collect();
        if !hits.is_empty() {
            let names: Vec<String> = hits
                .iter()
                .map(|c| {
                    if from_env {
                        format!("IAC_{}__…", c.to_ascii_uppercase())
                    } else {
                        format!("[{c}]")
                    }
                })
                .collect();
            return format!("did you mean {}?", names.join(" or "));
        }
    }
    // 3. At the top level, `<table>_<key>` (an env var missing its double underscore).
    if u.parent.is_empty() {
        for (table, fields) in known
            .iter()
            .filter(|(p, _)| !p.is_empty() && !p.contains('.'))
        {
            if let Some(rest) = u.key.strip_prefix(&format!("{table}_"))
                && let Some(best) =
                    closest(rest, fields).or_else(|| fields.contains(&rest).then_some(rest))
            {
                return format!("did you mean {}?", spelled(from_env, &[table, best]));
            }
        }
    }
    // 4. The same key (or table) in another table.
    let elsewhere: Vec<Vec<&str>> = known
        .iter()
        .filter(|(p, fields)| **p != parent && fields.contains(&u.key.as_str()))
        .map(|(p, _)| {
            let mut path: Vec<&str> = if p.is_empty() {
                vec![]
            } else {
                p.split('.').collect()
            };
            path.push(&u.key);
            path
        })
        .collect();
    if !elsewhere.is_empty() {
        let names: Vec<String> = elsewhere
            .iter()
            .map(|p| {
                if is_table && !from_env {
                    format!("[{}]", p.join("."))
                } else {
                    spelled(from_env, p)
                }
            })
            .collect();
        return format!("did you mean {}?", names.join(" or "));
    }
    // 5. A near miss among the siblings.
    if let Some(best) = closest(&u.key, siblings) {
        let mut path: Vec<&str> = u.parent.iter().map(String::as_str).collect();
        path.push(best);
        return if is_table {
            format!("did you mean [{}]?", path.join("."))
        } else {
            format!("did you mean {}?", spelled(from_env, &path))
        };
    }
    // 6. A near miss anywhere.
    let everywhere: Vec<(String, &str)> = known
        .iter()
        .flat_map(|(p, fields)| fields.iter().map(move |f| (p.clone(), *f)))
        .collect();
    let names: Vec<&str> = everywhere.iter().map(|(_, f)| *f).collect();
    if let Some(best) = closest(&u.key, &names)
        && let Some((p, f)) = everywhere.iter().find(|(_, f)| *f == best)
    {
        let mut path: Vec<&str> = if p.is_empty() {
            vec![]
        } else {
            p.split('.').collect()
        };
        path.push(f);
        return format!("did you mean {}?", spelled(from_env, &path));
    }
    let where_ = if parent.is_empty() {
        "at the top level".to_string()
    } else {
        format!("in [{parent}]")
    };
    format!("the keys {where_} are: {}", siblings.join(", "))
}

/// The paths of the scalar values under `v` (itself when it is one).
fn leaf_paths(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Dict(_, map) if !map.is_empty() => {
            for (k, child) in map {
                path.push(k.clone());
                leaf_paths(child, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

/// The known key most like `key`, if any is close enough to be a typo.
fn closest<'k>(key: &str, candidates: &[&'k str]) -> Option<&'k str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(key, c), *c))
        .filter(|(score, c)| {
            *score >= 0.85 || strsim::levenshtein(key, c) <= (key.len() / 4).max(1)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Whether `s` is a placeholder rather than a value: a redaction marker `iac config show`
/// prints, or template text from the docs and `.env.example`.
pub fn is_placeholder(s: &str) -> bool {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    ["[redacted]", "<redacted>", "***redacted***", "://***@"]
        .iter()
        .any(|m| lower.contains(m))
        || (t.starts_with('<') && t.ends_with('>') && t.len() > 2)
        || t.contains('…')
}

/// Every placeholder value in `fig`, as messages naming the key and where it came from.
pub fn placeholder_values(fig: &Figment) -> Vec<String> {
    let Ok(root) = fig.find_value("") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk_strings(&root, &mut Vec::new(), &mut |path, s, tag| {
        if is_placeholder(s) {
            let md = fig.get_metadata(tag);
            let from_env = md.is_some_and(|m| m.name.contains("environment"));
            let origin = match md {
                Some(m) => match &m.source {
                    Some(src) if !from_env => format!(" in {src}"),
                    _ => format!(" ({})", m.name),
                },
                None => String::new(),
            };
            out.push(format!(
                "{}{origin} is the placeholder {s:?}, not a value: set the real value or remove the line",
                spelled(from_env, path)
            ));
        }
    });
    out
}

fn walk_strings<'a>(v: &'a Value, path: &mut Vec<&'a str>, f: &mut dyn FnMut(&[&str], &str, Tag)) {
    match v {
        Value::String(tag, s) => f(path, s, *tag),
        Value::Dict(_, map) => walk_dict(map, path, f),
        Value::Array(_, items) => {
            for item in items {
                walk_strings(item, path, f);
            }
        }
        _ => {}
    }
}

fn walk_dict<'a>(map: &'a Dict, path: &mut Vec<&'a str>, f: &mut dyn FnMut(&[&str], &str, Tag)) {
    for (k, v) in map {
        path.push(k);
        walk_strings(v, path, f);
        path.pop();
    }
}
