//! A workspace's `.config/nextest.toml`, read as cargo-nextest reads it, so a team's test groups,
//! heavy tests, timeouts, retries and per-test overrides hold on the fleet: profiles (with
//! `inherits`), `[test-groups]`, and `[[profile.NAME.overrides]]` matched by `filter` (the
//! filterset language of `-E`) and `platform`. Values are read in `values`; applying them to a
//! run's tests is `apply`. Keys testfleet does not honour are collected and named in one warning.

mod apply;
mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use apply::apply;
use toml::Value;
use values::Settings;

use crate::error::{CliError, CliResult};
use crate::filterset::Filterset;

/// Where nextest reads a workspace's configuration.
pub const CONFIG_PATH: &str = ".config/nextest.toml";

/// The profile in use, flattened: its chain (the profile, what it inherits, then `default`)
/// resolved into overrides and settings in the order nextest looks at them.
#[derive(Debug)]
pub struct NextestConfig {
    pub path: PathBuf,
    pub profile: String,
    /// `[test-groups]`: name → max-threads.
    pub groups: BTreeMap<String, u32>,
    /// Overrides whose platform matches (or that name none), the profile's first, then those of
    /// the profiles it inherits, `default`'s last.
    overrides: Vec<Override>,
    /// Profile-level settings, the profile's first, `default`'s last.
    layers: Vec<Settings>,
    /// The first `default-filter` along the chain.
    default_filter: Option<Filterset>,
    /// Keys that have no effect here, as `profile.ci.fail-fast`.
    pub unsupported: Vec<String>,
}

#[derive(Debug)]
struct Override {
    filter: Option<Filterset>,
    settings: Settings,
}

/// Keys of a profile other than its settings that testfleet honours.
const PROFILE_KEYS: &[&str] = &["inherits", "default-filter", "overrides"];

impl NextestConfig {
    /// Reads `root/.config/nextest.toml` for `profile` (`None`: `default`). A workspace without the
    /// file has no config, unless a profile other than `default` was asked for, which is an error.
    pub fn load(root: &Path, profile: Option<&str>, cpus: u32) -> CliResult<Option<Self>> {
        let path = root.join(CONFIG_PATH);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match profile {
                    Some(p) if p != "default" => Err(CliError::Config(format!(
                        "nextest profile `{p}` was asked for, but {} does not exist",
                        path.display()
                    ))),
                    _ => Ok(None),
                };
            }
            Err(e) => {
                return Err(CliError::Config(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let bad = |e: String| CliError::Config(format!("{}: {e}", path.display()));
        let table: toml::Table = text.parse().map_err(|e| bad(format!("{e}")))?;
        Self::from_table(
            path.clone(),
            &table,
            profile.unwrap_or("default"),
            cpus,
            host_platform,
        )
        .map(Some)
        .map_err(bad)
    }

    /// The config of `table` for profile `name`; `host` tells which target triple and cfg()
    /// platforms the host matches (asked only if an override names a platform).
    fn from_table(
        path: PathBuf,
        table: &toml::Table,
        name: &str,
        cpus: u32,
        host: fn() -> Result<String, String>,
    ) -> Result<Self, String> {
        let mut unsupported = vec![];
        let mut groups = BTreeMap::new();
        let empty = toml::Table::new();
        for (key, value) in table {
            match key.as_str() {
                // A requirement on nextest's own version: nothing to do here.
                "nextest-version" | "profile" => {}
                "experimental" if value.as_array().is_some_and(|a| a.is_empty()) => {}
                "test-groups" => {
                    let Some(t) = value.as_table() else {
                        return Err("`test-groups` must be a table".into());
                    };
                    for (group, conf) in t {
                        let at = format!("test-groups.{group}");
                        let conf = conf.as_table().unwrap_or(&empty);
                        let Some(max) = conf.get("max-threads") else {
                            return Err(format!("`{at}.max-threads`: missing"));
                        };
                        let max = values::max_threads(max, &format!("{at}.max-threads"), cpus)?;
                        groups.insert(group.clone(), max);
                        unsupported.extend(
                            conf.keys()
                                .filter(|k| *k != "max-threads")
                                .map(|k| format!("{at}.{k}")),
                        );
                    }
                }
                other => unsupported.push(other.to_owned()),
            }
        }
        let profiles = match table.get("profile") {
            Some(p) => p.as_table().ok_or("`profile` must be a table")?,
            None => &empty,
        };
        let chain = profile_chain(profiles, name)?;
        let mut overrides = vec![];
        let mut layers = vec![];
        let mut default_filter = None;
        let mut host_triple: Option<String> = None;
        for profile in &chain {
            let at = format!("profile.{profile}");
            let conf = match profiles.get(profile.as_str()) {
                Some(c) => c.as_table().ok_or(format!("`{at}` must be a table"))?,
                None => &empty,
            };
            for key in conf.keys() {
                if !values::SETTING_KEYS.contains(&key.as_str())
                    && !PROFILE_KEYS.contains(&key.as_str())
                {
                    unsupported.push(format!("{at}.{key}"));
                }
            }
            layers.push(Settings::read(conf, &at, &mut unsupported)?);
            if default_filter.is_none()
                && let Some(f) = conf.get("default-filter")
            {
                default_filter = Some(filterset(f, &format!("{at}.default-filter"))?);
            }
            let list = match conf.get("overrides") {
                Some(Value::Array(a)) => a.as_slice(),
                Some(_) => return Err(format!("`{at}.overrides` must be a list of tables")),
                None => &[],
            };
            for (i, o) in list.iter().enumerate() {
                let at = format!("{at}.overrides[{i}]");
                let o = o.as_table().ok_or(format!("`{at}` must be a table"))?;
                if !o.contains_key("filter") && !o.contains_key("platform") {
                    return Err(format!("`{at}`: needs a `filter` or a `platform`"));
                }
                for key in o.keys() {
                    if !values::SETTING_KEYS.contains(&key.as_str())
                        && !["filter", "platform"].contains(&key.as_str())
                    {
                        unsupported.push(format!("{at}.{key}"));
                    }
                }
                let settings = Settings::read(o, &at, &mut unsupported)?;
                let filter = match o.get("filter") {
                    Some(f) => Some(filterset(f, &format!("{at}.filter"))?),
                    None => None,
                };
                if let Some(p) = o.get("platform") {
                    if host_triple.is_none() {
                        host_triple = Some(host()?);
                    }
                    let triple = host_triple.as_deref().expect("set above");
                    if !platform_matches(p, triple, &format!("{at}.platform"))? {
                        continue;
                    }
                }
                overrides.push(Override { filter, settings });
            }
        }
        let config = NextestConfig {
            path,
            profile: name.to_owned(),
            groups,
            overrides,
            layers,
            default_filter,
            unsupported,
        };
        config.check_groups()?;
        Ok(config)
    }

    /// Every test group a setting names is declared, as nextest requires.
    fn check_groups(&self) -> Result<(), String> {
        let named = self
            .layers
            .iter()
            .chain(self.overrides.iter().map(|o| &o.settings))
            .filter_map(|s| s.test_group.clone().flatten());
        for g in named {
            if !self.groups.contains_key(&g) {
                return Err(format!(
                    "test group `{g}` is used but not declared under [test-groups]"
                ));
            }
        }
        Ok(())
    }

    /// The settings nextest would give a test: for each key, the first override that matches it
    /// and says something, else the first profile along the chain that does.
    fn settings_for(&self, matches: impl Fn(&Filterset) -> bool) -> Settings {
        let mut s = Settings::default();
        let matching = self
            .overrides
            .iter()
            .filter(|o| o.filter.as_ref().is_none_or(&matches))
            .map(|o| &o.settings);
        for layer in matching.chain(self.layers.iter()) {
            s.threads_required = s.threads_required.or(layer.threads_required);
            s.test_group = s.test_group.clone().or(layer.test_group.clone());
            s.retries = s.retries.or(layer.retries);
            s.flaky_fails = s.flaky_fails.or(layer.flaky_fails);
            s.slow_timeout = s.slow_timeout.or(layer.slow_timeout);
            s.leak_timeout = s.leak_timeout.or(layer.leak_timeout);
        }
        s
    }

    /// The warning that names the keys testfleet does not honour, once; `None` if there are none.
    pub fn warning(&self) -> Option<String> {
        (!self.unsupported.is_empty()).then(|| {
            format!(
                "warning: {} sets {} that testfleet does not support and ignores: {}",
                self.path.display(),
                if self.unsupported.len() == 1 {
                    "a key"
                } else {
                    "keys"
                },
                self.unsupported.join(", ")
            )
        })
    }
}

/// The profile, the ones it inherits from (`inherits`, else `default`), and `default`, in that
/// order; an unknown profile or a loop is an error.
fn profile_chain(profiles: &toml::Table, name: &str) -> Result<Vec<String>, String> {
    let mut chain = vec![];
    let mut at = name.to_owned();
    loop {
        if chain.contains(&at) {
            return Err(format!(
                "profiles inherit from each other in a loop: {} -> {at}",
                chain.join(" -> ")
            ));
        }
        if at != "default" && !profiles.contains_key(&at) {
            let mut known: Vec<&str> = profiles.keys().map(String::as_str).collect();
            if !known.contains(&"default") {
                known.insert(0, "default");
            }
            return Err(format!(
                "nextest profile `{at}` is not defined (profiles: {})",
                known.join(", ")
            ));
        }
        chain.push(at.clone());
        if at == "default" {
            return Ok(chain);
        }
        at = profiles
            .get(&at)
            .and_then(|p| p.get("inherits"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_owned();
    }
}

fn filterset(v: &Value, at: &str) -> Result<Filterset, String> {
    let text = v.as_str().ok_or(format!("`{at}`: expected a filterset"))?;
    Filterset::parse(text).map_err(|e| format!("`{at}`: {e}"))
}

/// The host's target triple, as rustc names it.
fn host_platform() -> Result<String, String> {
    let out = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("-vV")
        .output()
        .map_err(|e| format!("cannot run rustc to learn the host platform: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV did not name the host platform".to_owned())
}

/// Whether an override's `platform` (a triple, a `cfg(...)`, or `{ host, target }`, both of
/// which must match) matches the host; testfleet builds for the host, so host and target are one.
fn platform_matches(v: &Value, triple: &str, at: &str) -> Result<bool, String> {
    let one = |spec: &str| -> Result<bool, String> {
        if !spec.starts_with("cfg(") {
            return Ok(spec == triple);
        }
        let expr = cfg_expr::Expression::parse(spec).map_err(|e| format!("`{at}`: {e}"))?;
        let Some(info) = cfg_expr::targets::get_builtin_target_by_triple(triple) else {
            return Err(format!(
                "`{at}`: the host platform `{triple}` is not one cfg() can be evaluated for"
            ));
        };
        Ok(expr.eval(|pred| match pred {
            cfg_expr::Predicate::Target(tp) => tp.matches(info),
            _ => false,
        }))
    };
    match v {
        Value::String(s) => one(s),
        Value::Table(t) => {
            for key in t.keys() {
                if key != "host" && key != "target" {
                    return Err(format!("`{at}.{key}`: expected `host` or `target`"));
                }
            }
            let mut all = true;
            for spec in t.values() {
                let spec = spec
                    .as_str()
                    .ok_or(format!("`{at}`: expected a triple or a cfg()"))?;
                all &= one(spec)?;
            }
            Ok(all)
        }
        _ => Err(format!(
            "`{at}`: expected a triple, a cfg() or a table with host and target"
        )),
    }
}

#[cfg(test)]
mod tests;
