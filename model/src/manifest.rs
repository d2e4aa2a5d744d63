//! The suite manifest, `testfleet.toml`: the services a suite's tests need. Parsing is strict: an
//! unknown key, a bad value or a bad export template is an error naming the file, the line and the
//! key, never silently ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::QuarantinePolicy;
use crate::relative_path::is_relative_inside;
use crate::service::{
    ImageSource, MAX_PULL_TIMEOUT, PullPolicy, Scope, ServiceSpec, Template, WaitStrategy,
    is_service_name,
};

pub const FILE_NAME: &str = "testfleet.toml";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no place in the file (it could not be read).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        } else {
            write!(f, "{}: {}", self.file.display(), self.message)
        }
    }
}

impl std::error::Error for ManifestError {}

/// A parsed manifest. `dir` is where relative paths (build contexts) are resolved from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub services: Vec<ServiceSpec>,
    /// Commands to run before bundling, per service name (e.g. compiling a static server binary
    /// into a build context). Run on the submitting machine, in `dir`.
    pub prepare: BTreeMap<String, Vec<String>>,
    /// Test binaries each service is for (empty: every binary), per service name.
    pub binaries: BTreeMap<String, Vec<String>>,
    pub quarantine: QuarantinePolicy,
    /// Files and directories (relative to the manifest) bundled with the tests even where git
    /// ignores them.
    pub include: Vec<String>,
    /// Globs (relative to the manifest, `**` for any depth) of files left out of the bundle.
    pub exclude: Vec<String>,
    /// Variables of an agent's environment its tests may see (`NAME`, or `PREFIX*`).
    pub pass_env: Vec<String>,
    /// A suite run by a tool that writes JUnit (`[runner]`); `None`: the Cargo workspace's tests.
    pub runner: Option<SuiteRunner>,
}

/// The `[runner]` of a suite that is not a Cargo workspace's tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteRunner {
    pub tool: Tool,
    /// Environment of the tests (and of collecting them).
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tool {
    /// `python -m pytest`: tests collected from `paths`, `args` given to collecting and running.
    Pytest {
        python: String,
        paths: Vec<String>,
        args: Vec<String>,
        /// Which tests must run together, on one worker.
        dist: Dist,
    },
    /// Any tool: `list` prints one test id per line; `run` runs the ids given at `{tests}` and
    /// writes JUnit to `{junit}`. Its tests form one binary named `binary`.
    Command {
        binary: String,
        list: Vec<String>,
        run: Vec<String>,
    },
}

/// Which of a pytest suite's tests run together, one after another on one worker, as
/// pytest-xdist's `--dist` modes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dist {
    /// Each test goes wherever it is cheapest; no groups, and no preference for tests that share
    /// a fixture.
    Load,
    /// Tests marked `@pytest.mark.xdist_group(name)` run together by name; others as `Load`, but
    /// tests that share a class, module or package fixture fill a lease together
    /// ([`crate::TestSpec::shares`]; so do the two modes below).
    #[default]
    LoadGroup,
    /// A file's tests run together.
    LoadFile,
    /// A class's tests run together, and a module's tests outside classes.
    LoadScope,
}

impl Dist {
    fn parse(s: &str) -> Result<Dist, String> {
        Ok(match s {
            "load" => Dist::Load,
            "loadgroup" => Dist::LoadGroup,
            "loadfile" => Dist::LoadFile,
            "loadscope" => Dist::LoadScope,
            other => {
                return Err(format!(
                    "unknown `dist = \"{other}\"` (expected load, loadgroup, loadfile or loadscope)"
                ));
            }
        })
    }

    /// The group of test `id` (a pytest node id) marked with xdist group `marked`, if any.
    pub fn group_of(self, id: &str, marked: Option<&str>) -> Option<String> {
        match self {
            Dist::Load => None,
            Dist::LoadGroup => marked.map(str::to_owned),
            Dist::LoadFile => Some(id.split("::").next().unwrap_or(id).to_owned()),
            Dist::LoadScope => {
                let path = id.split('[').next().unwrap_or(id);
                let parts: Vec<&str> = path.split("::").collect();
                // The test's module and its classes: all but the function.
                Some(parts[..parts.len().saturating_sub(1).max(1)].join("::"))
            }
        }
    }
}

/// The interpreter a pytest suite runs with unless it says otherwise.
pub const DEFAULT_PYTHON: &str = "python3";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    service: Vec<RawService>,
    #[serde(default)]
    compose: Vec<RawCompose>,
    quarantine: Option<RawQuarantine>,
    bundle: Option<RawBundle>,
    runner: Option<Spanned<RawRunner>>,
    #[serde(default)]
    pass_env: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    kind: String,
    python: Option<String>,
    paths: Option<Vec<String>>,
    args: Option<Vec<String>>,
    binary: Option<String>,
    list: Option<Vec<String>>,
    run: Option<Vec<String>>,
    dist: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuarantine {
    auto: Option<bool>,
    release_after: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBundle {
    #[serde(default)]
    include: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    image: Option<Spanned<String>>,
    build: Option<Spanned<toml::Value>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    ports: Vec<Spanned<u16>>,
    wait: Option<Spanned<RawWait>>,
    startup_timeout: Option<Spanned<f64>>,
    scope: Option<Spanned<String>>,
    pull: Option<Spanned<String>>,
    pull_timeout: Option<Spanned<f64>>,
    #[serde(default)]
    exports: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    binaries: Vec<String>,
    #[serde(default)]
    prepare: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompose {
    name: Spanned<String>,
    file: Option<Spanned<String>>,
    files: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    wait: BTreeMap<String, Spanned<RawWait>>,
    startup_timeout: Option<Spanned<f64>>,
    scope: Option<Spanned<String>>,
    pull: Option<Spanned<String>>,
    pull_timeout: Option<Spanned<f64>>,
    #[serde(default)]
    exports: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    binaries: Vec<String>,
    host_ports: Option<Spanned<String>>,
}

/// A stack waits this long by default: several containers, some of them with healthchecks.
pub const DEFAULT_STACK_STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

type At<'a> = dyn Fn(usize, String) -> ManifestError + 'a;

/// When a service or stack runs and how its image arrives: the keys both share.
struct Lifecycle {
    startup_timeout: Duration,
    scope: Scope,
    pull: Option<PullPolicy>,
    pull_timeout: Option<Duration>,
}

impl Lifecycle {
    fn parse(
        at: &At<'_>,
        what: &str,
        startup_timeout: Option<Spanned<f64>>,
        scope: Option<Spanned<String>>,
        pull: Option<Spanned<String>>,
        pull_timeout: Option<Spanned<f64>>,
    ) -> Result<Self, ManifestError> {
        let secs = |t: Spanned<f64>, key: &str, max: Duration| {
            let (span, secs) = (t.span().start, t.into_inner());
            if secs > 0.0 && secs <= max.as_secs_f64() {
                Ok(Duration::from_secs_f64(secs))
            } else {
                Err(at(
                    span,
                    format!(
                        "{what}: key `{key}`: {secs} is not between 0 and {} seconds",
                        max.as_secs()
                    ),
                ))
            }
        };
        let text = |v: Spanned<String>, key: &'static str| {
            let span = v.span().start;
            move |m: String| at(span, format!("{what}: key `{key}`: {m}"))
        };
        Ok(Lifecycle {
            startup_timeout: startup_timeout
                .map(|t| secs(t, "startup_timeout", Duration::from_secs(3600)))
                .transpose()?
                .unwrap_or(if what.starts_with("compose") {
                    DEFAULT_STACK_STARTUP_TIMEOUT
                } else {
                    DEFAULT_STARTUP_TIMEOUT
                }),
            scope: match scope {
                None => Scope::Agent,
                Some(sc) => {
                    let err = text(sc.clone(), "scope");
                    sc.into_inner().parse().map_err(err)?
                }
            },
            pull: match pull {
                None => None,
                Some(p) => {
                    let err = text(p.clone(), "pull");
                    Some(p.into_inner().parse::<PullPolicy>().map_err(err)?)
                }
            },
            pull_timeout: pull_timeout
                .map(|t| secs(t, "pull_timeout", MAX_PULL_TIMEOUT))
                .transpose()?,
        })
    }
}

/// Export templates, each port checked by `check(service, port)`.
fn parse_exports(
    at: &At<'_>,
    what: &str,
    raw: BTreeMap<String, Spanned<String>>,
    check: impl Fn(Option<&str>, u16) -> Result<(), String>,
) -> Result<BTreeMap<String, Template>, ManifestError> {
    let mut exports = BTreeMap::new();
    for (key, value) in raw {
        let span = value.span().start;
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(at(
                span,
                format!("{what}: exports key `{key}` is not an environment variable name"),
            ));
        }
        let t = Template::parse(value.get_ref())
            .map_err(|m| at(span, format!("{what}: key `exports.{key}`: {m}")))?;
        for (svc, port) in t.ports() {
            check(svc, port).map_err(|m| at(span, format!("{what}: key `exports.{key}`: {m}")))?;
        }
        exports.insert(key, t);
    }
    Ok(exports)
}

/// A compose service's name as compose allows it.
fn is_compose_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// A `[[compose]]` table: a stack of compose services run as one service of the suite.
fn parse_compose(
    at: &At<'_>,
    c: RawCompose,
    declared: &[ServiceSpec],
) -> Result<(String, ServiceSpec, Vec<String>), ManifestError> {
    let name_at = c.name.span().start;
    let name = c.name.into_inner();
    if !is_service_name(&name) {
        return Err(at(
            name_at,
            format!(
                "compose stack name `{name}` must be non-empty ASCII letters, digits, '-' or '_'"
            ),
        ));
    }
    if declared.iter().any(|o| o.name == name) {
        return Err(at(name_at, format!("service `{name}` is declared twice")));
    }
    let what = format!("compose stack `{name}`");
    let files = match (c.file, c.files) {
        (Some(f), None) => vec![(f.span().start, f.into_inner())],
        (None, Some(fs)) => {
            let span = fs.span().start;
            let fs = fs.into_inner();
            if fs.is_empty() {
                return Err(at(span, format!("{what}: key `files` is empty")));
            }
            fs.into_iter().map(|f| (span, f)).collect()
        }
        (Some(f), Some(_)) => {
            return Err(at(
                f.span().start,
                format!("{what}: set either `file` or `files`, not both"),
            ));
        }
        (None, None) => {
            return Err(at(
                name_at,
                format!("{what}: one of `file` or `files` is required"),
            ));
        }
    };
    for (span, f) in &files {
        if !is_relative_inside(f) {
            return Err(at(
                *span,
                format!("{what}: compose file `{f}` must be a relative path inside the workspace"),
            ));
        }
    }
    let mut waits = BTreeMap::new();
    for (svc, w) in c.wait {
        let span = w.span().start;
        if !is_compose_service_name(&svc) {
            return Err(at(
                span,
                format!("{what}: key `wait`: `{svc}` is not a compose service name"),
            ));
        }
        let w = parse_wait(w.into_inner(), None)
            .map_err(|m| at(span, format!("{what}: key `wait.{svc}`: {m}")))?;
        waits.insert(svc, w);
    }
    let pinned = match c.host_ports {
        None => false,
        Some(h) => match h.get_ref().as_str() {
            "engine" => false,
            "file" => true,
            other => {
                return Err(at(
                    h.span().start,
                    format!(
                        "{what}: key `host_ports`: `{other}` is neither `engine` (the engine picks them) nor `file` (as the files pin them)"
                    ),
                ));
            }
        },
    };
    let life = Lifecycle::parse(
        at,
        &what,
        c.startup_timeout,
        c.scope,
        c.pull,
        c.pull_timeout,
    )?;
    let exports = parse_exports(at, &what, c.exports, |svc, port| match svc {
        Some(svc) if is_compose_service_name(svc) => Ok(()),
        Some(svc) => Err(format!("`{svc}` is not a compose service name")),
        None => Err(format!(
            "a stack's port names its compose service: `{{port:SERVICE:{port}}}`"
        )),
    })?;
    let spec = ServiceSpec {
        name: name.clone(),
        source: ImageSource::Compose {
            files: files.into_iter().map(|(_, f)| f).collect(),
            waits,
            pinned,
        },
        env: BTreeMap::new(),
        cmd: vec![],
        ports: vec![],
        wait: WaitStrategy::None,
        startup_timeout: life.startup_timeout,
        scope: life.scope,
        exports,
        pull: life.pull,
        pull_timeout: life.pull_timeout,
    };
    Ok((name, spec, c.binaries))
}

fn default_dockerfile() -> String {
    "Dockerfile".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWait {
    log: Option<String>,
    port: Option<u16>,
    http: Option<String>,
    status: Option<u16>,
    healthcheck: Option<bool>,
}

pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

impl Manifest {
    /// Reads `path`; a missing file is an error (callers look for it first when it is optional).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, file: &Path) -> Result<Self, ManifestError> {
        let at = |offset: usize, message: String| ManifestError {
            file: file.to_path_buf(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            at(offset, e.message().trim().to_owned())
        })?;
        let mut manifest = Manifest::default();
        if let Some(q) = raw.quarantine {
            let d = QuarantinePolicy::default();
            manifest.quarantine = QuarantinePolicy {
                auto: q.auto.unwrap_or(d.auto),
                release_after: q.release_after.unwrap_or(d.release_after),
            };
        }
        if let Some(r) = raw.runner {
            let span = r.span().start;
            manifest.runner =
                Some(parse_runner(r.into_inner()).map_err(|m| at(span, format!("[runner]: {m}")))?);
        }
        for v in raw.pass_env {
            let (span, name) = (v.span().start, v.into_inner());
            crate::spec::check_pass_env(&name)
                .map_err(|why| at(span, format!("key `pass_env`: `{name}`: {why}")))?;
            manifest.pass_env.push(name);
        }
        let (include, exclude) = raw
            .bundle
            .map(|b| (b.include, b.exclude))
            .unwrap_or_default();
        for ex in exclude {
            let (span, glob) = (ex.span().start, ex.into_inner());
            if !is_relative_inside(&glob) {
                return Err(at(
                    span,
                    format!(
                        "key `bundle.exclude`: `{glob}` must be a relative glob inside the workspace"
                    ),
                ));
            }
            manifest.exclude.push(glob);
        }
        for inc in include {
            let (span, path) = (inc.span().start, inc.into_inner());
            if !is_relative_inside(&path) {
                return Err(at(
                    span,
                    format!(
                        "key `bundle.include`: `{path}` must be a relative path inside the workspace"
                    ),
                ));
            }
            manifest.include.push(path);
        }
        for s in raw.service {
            let name_at = s.name.span().start;
            let name = s.name.into_inner();
            if !is_service_name(&name) {
                return Err(at(
                    name_at,
                    format!(
                        "service name `{name}` must be non-empty ASCII letters, digits, '-' or '_'"
                    ),
                ));
            }
            if manifest
                .services
                .iter()
                .any(|o: &ServiceSpec| o.name == name)
            {
                return Err(at(name_at, format!("service `{name}` is declared twice")));
            }
            let source = match (s.image, s.build) {
                (Some(img), None) => {
                    let (span, img) = (img.span().start, img.into_inner());
                    ImageSource::parse_image(&img)
                        .map_err(|m| at(span, format!("service `{name}`: key `image`: {m}")))?
                }
                (None, Some(b)) => {
                    let span = b.span().start;
                    let (context, dockerfile) = parse_build(b.into_inner())
                        .map_err(|m| at(span, format!("service `{name}`: key `build`: {m}")))?;
                    for (key, p) in [
                        ("build.context", &context),
                        ("build.dockerfile", &dockerfile),
                    ] {
                        if !is_relative_inside(p) {
                            return Err(at(
                                span,
                                format!(
                                    "service `{name}`: key `{key}`: `{p}` must be a relative path inside the workspace"
                                ),
                            ));
                        }
                    }
                    ImageSource::Build {
                        context,
                        dockerfile,
                    }
                }
                (Some(img), Some(_)) => {
                    return Err(at(
                        img.span().start,
                        format!("service `{name}`: set either `image` or `build`, not both"),
                    ));
                }
                (None, None) => {
                    return Err(at(
                        name_at,
                        format!("service `{name}`: one of `image` or `build` is required"),
                    ));
                }
            };
            let mut ports = Vec::new();
            for p in s.ports {
                let (span, p) = (p.span().start, p.into_inner());
                if p == 0 {
                    return Err(at(
                        span,
                        format!("service `{name}`: key `ports`: 0 is not a port"),
                    ));
                }
                ports.push(p);
            }
            let wait = match s.wait {
                None => WaitStrategy::None,
                Some(w) => {
                    let span = w.span().start;
                    parse_wait(w.into_inner(), Some(&ports))
                        .map_err(|m| at(span, format!("service `{name}`: key `wait`: {m}")))?
                }
            };
            let what = format!("service `{name}`");
            let life = Lifecycle::parse(
                &at,
                &what,
                s.startup_timeout,
                s.scope,
                s.pull,
                s.pull_timeout,
            )?;
            let exports = parse_exports(&at, &what, s.exports, |svc, port| match svc {
                Some(svc) => Err(format!(
                    "`{{port:{svc}:{port}}}` names a compose service; a service's port is `{{port:{port}}}`"
                )),
                None if !ports.contains(&port) => Err(format!("port {port} is not in `ports`")),
                None => Ok(()),
            })?;
            if !s.prepare.is_empty() {
                manifest.prepare.insert(name.clone(), s.prepare);
            }
            manifest.binaries.insert(name.clone(), s.binaries);
            manifest.services.push(ServiceSpec {
                name,
                source,
                env: s.env,
                cmd: s.cmd,
                ports,
                wait,
                startup_timeout: life.startup_timeout,
                scope: life.scope,
                exports,
                pull: life.pull,
                pull_timeout: life.pull_timeout,
            });
        }
        for c in raw.compose {
            let (name, spec, binaries) = parse_compose(&at, c, &manifest.services)?;
            manifest.binaries.insert(name, binaries);
            manifest.services.push(spec);
        }
        Ok(manifest)
    }

    /// The services a test binary needs, as indices into `services`.
    pub fn services_for(&self, binary_id: &str) -> Vec<u32> {
        self.services
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                let only = self
                    .binaries
                    .get(&s.name)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                only.is_empty() || only.iter().any(|b| b == binary_id)
            })
            .map(|(i, _)| i as u32)
            .collect()
    }
}

/// `[runner]`: `kind` says which keys belong; any other is an error, as is a run command without
/// its placeholders.
fn parse_runner(r: RawRunner) -> Result<SuiteRunner, String> {
    let given = |present: bool, key: &str| present.then(|| key.to_owned());
    let (tool, foreign) = match r.kind.as_str() {
        "pytest" => (
            Tool::Pytest {
                python: r.python.unwrap_or_else(|| DEFAULT_PYTHON.to_owned()),
                paths: r.paths.unwrap_or_default(),
                args: r.args.unwrap_or_default(),
                dist: r
                    .dist
                    .as_deref()
                    .map(Dist::parse)
                    .transpose()?
                    .unwrap_or_default(),
            },
            [
                given(r.binary.is_some(), "binary"),
                given(r.list.is_some(), "list"),
                given(r.run.is_some(), "run"),
                None,
            ],
        ),
        "command" => {
            let (Some(list), Some(run)) = (r.list, r.run) else {
                return Err(
                    "kind `command` needs `list` (prints the test ids) and `run` \
                     (runs `{tests}`, writes JUnit to `{junit}`)"
                        .into(),
                );
            };
            if list.is_empty() || run.is_empty() {
                return Err("`list` and `run` must name a program".into());
            }
            crate::Runner::Junit {
                args: run.clone(),
                ids: crate::IdStyle::Plain,
            }
            .validate()?;
            (
                Tool::Command {
                    binary: r.binary.unwrap_or_else(|| "tests".to_owned()),
                    list,
                    run,
                },
                [
                    given(r.python.is_some(), "python"),
                    given(r.paths.is_some(), "paths"),
                    given(r.args.is_some(), "args"),
                    given(r.dist.is_some(), "dist"),
                ],
            )
        }
        other => {
            return Err(format!(
                "kind `{other}` is not a runner: `pytest` or `command` (a Cargo workspace needs no [runner])"
            ));
        }
    };
    if let Some(key) = foreign.into_iter().flatten().next() {
        return Err(format!("key `{key}` does not belong to kind `{}`", r.kind));
    }
    if let Tool::Pytest { python, .. } = &tool
        && python.is_empty()
    {
        return Err("`python` must name an interpreter".into());
    }
    Ok(SuiteRunner { tool, env: r.env })
}

/// `build = "dir"` or `build = { context = "dir", dockerfile = "Dockerfile.x" }`.
fn parse_build(v: toml::Value) -> Result<(String, String), String> {
    match v {
        toml::Value::String(context) => Ok((context, default_dockerfile())),
        toml::Value::Table(t) => {
            if let Some(unknown) = t
                .keys()
                .find(|k| !matches!(k.as_str(), "context" | "dockerfile"))
            {
                return Err(format!(
                    "unknown key `{unknown}` (expected `context` or `dockerfile`)"
                ));
            }
            let text = |k: &str| match t.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("`{k}` must be a string")),
            };
            let context = text("context")?.ok_or("`context` is required")?;
            Ok((
                context,
                text("dockerfile")?.unwrap_or_else(default_dockerfile),
            ))
        }
        _ => Err("give a context directory, or a table with `context` (and `dockerfile`)".into()),
    }
}

/// A wait; its port must be one of `ports` when they are known (a compose service's are not).
fn parse_wait(w: RawWait, ports: Option<&[u16]>) -> Result<WaitStrategy, String> {
    let check_port = |p: u16| match ports {
        Some(ports) if !ports.contains(&p) => Err(format!("port {p} is not in `ports`")),
        _ => Ok(p),
    };
    let kinds = [
        w.log.is_some(),
        w.http.is_some(),
        w.healthcheck.is_some(),
        w.port.is_some() && w.http.is_none(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if kinds != 1 {
        return Err(
            "give exactly one of `log`, `port`, `http` (with `port`), or `healthcheck`".into(),
        );
    }
    if w.status.is_some() && w.http.is_none() {
        return Err("`status` goes with `http`".into());
    }
    Ok(if let Some(message) = w.log {
        if message.is_empty() {
            return Err("`log` must not be empty".into());
        }
        WaitStrategy::Log { message }
    } else if let Some(path) = w.http {
        if !path.starts_with('/') {
            return Err(format!("`http` path `{path}` must start with '/'"));
        }
        let port = check_port(w.port.ok_or("`http` needs a `port`")?)?;
        WaitStrategy::Http {
            port,
            path,
            status: w.status.unwrap_or(200),
        }
    } else if w.healthcheck == Some(true) {
        WaitStrategy::Healthcheck
    } else if let Some(p) = w.port {
        WaitStrategy::Port {
            port: check_port(p)?,
        }
    } else {
        return Err("`healthcheck = false` waits for nothing; leave `wait` out instead".into());
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dist_modes_group_tests_as_xdist_does() {
        let id = "tests/test_a.py::TestB::test_c[1]";
        assert_eq!(Dist::Load.group_of(id, Some("g")), None);
        assert_eq!(Dist::LoadGroup.group_of(id, Some("g")), Some("g".into()));
        assert_eq!(Dist::LoadGroup.group_of(id, None), None);
        assert_eq!(
            Dist::LoadFile.group_of(id, None),
            Some("tests/test_a.py".into())
        );
        assert_eq!(
            Dist::LoadScope.group_of(id, None),
            Some("tests/test_a.py::TestB".into())
        );
        assert_eq!(
            Dist::LoadScope.group_of("tests/test_a.py::test_d", None),
            Some("tests/test_a.py".into())
        );
    }

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("testfleet.toml"))
    }

    const GOOD: &str = r#"
[[service]]
name = "db"
image = "local/postgres:16"
env = { POSTGRES_PASSWORD = "pw" }
ports = [5432]
wait = { log = "ready to accept connections" }
startup_timeout = 20
scope = "lease"
pull = "always"
pull_timeout = 90
exports = { DATABASE_URL = "postgres://postgres:pw@{host}:{port:5432}/postgres" }

[[service]]
name = "api"
build = { context = "docker/api" }
ports = [8080]
wait = { http = "/health", port = 8080 }
binaries = ["app::api"]
prepare = ["make", "api"]
"#;

    #[test]
    fn a_full_manifest_parses() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.services.len(), 2);
        let db = &m.services[0];
        assert_eq!(db.scope, Scope::Lease);
        assert_eq!(db.startup_timeout, Duration::from_secs(20));
        assert_eq!(db.pull, Some(PullPolicy::Always));
        assert_eq!(db.pull_timeout, Some(Duration::from_secs(90)));
        assert_eq!(
            db.source,
            ImageSource::Image {
                name: "local/postgres".into(),
                tag: "16".into()
            }
        );
        let url =
            db.exports["DATABASE_URL"].render("10.0.0.1", &|_, p| (p == 5432).then_some(49153));
        assert_eq!(
            url.unwrap(),
            "postgres://postgres:pw@10.0.0.1:49153/postgres"
        );
        let api = &m.services[1];
        assert_eq!(api.scope, Scope::Agent, "agent scope is the default");
        assert_eq!(
            (api.pull, api.pull_timeout),
            (None, None),
            "unset: the agent's defaults"
        );
        assert_eq!(
            api.wait,
            WaitStrategy::Http {
                port: 8080,
                path: "/health".into(),
                status: 200
            }
        );
        assert_eq!(m.services_for("app::api"), vec![0, 1]);
        assert_eq!(m.services_for("app"), vec![0]);
        assert_eq!(m.prepare["api"], ["make", "api"]);
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn quarantine_policy_and_bundle_files_parse() {
        let m = parse("[quarantine]\nauto = true\nrelease_after = 3\n[bundle]\ninclude = [\"fixtures\", \"data/x.json\"]\n").unwrap();
        assert_eq!(
            m.quarantine,
            QuarantinePolicy {
                auto: true,
                release_after: 3
            }
        );
        assert_eq!(m.include, ["fixtures", "data/x.json"]);
        assert_eq!(parse("").unwrap().quarantine, QuarantinePolicy::default());
        let e = err("[bundle]\ninclude = [\"../secrets\"]\n");
        assert!(
            e.starts_with("testfleet.toml:2: ") && e.contains("bundle.include"),
            "{e}"
        );
        let e = err("[quarantine]\nautomatic = true\n");
        assert!(e.contains("unknown field `automatic`"), "{e}");
    }

    #[test]
    fn passed_variables_and_bundle_exclusions_parse_and_are_checked() {
        let m =
            parse("pass_env = [\"DATABASE_URL\", \"AWS_*\"]\n[bundle]\nexclude = [\"docs/**\"]\n")
                .unwrap();
        assert_eq!(m.pass_env, ["DATABASE_URL", "AWS_*"]);
        assert_eq!(m.exclude, ["docs/**"]);
        let e = err("pass_env = [\"TESTFLEET_TOKEN\"]\n");
        assert!(
            e.starts_with("testfleet.toml:1: ") && e.contains("never passed"),
            "{e}"
        );
        let e = err("\n[bundle]\nexclude = [\"../x\"]\n");
        assert!(
            e.starts_with("testfleet.toml:3: ") && e.contains("bundle.exclude"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_name_the_key_the_file_and_the_line() {
        let e = err("[[service]]\nname = \"db\"\nimage = \"x:1\"\nimgae = \"typo\"\n");
        assert!(e.starts_with("testfleet.toml:4: "), "{e}");
        assert!(e.contains("unknown field `imgae`"), "{e}");
        let e = err("[servcie]\n");
        assert!(
            e.starts_with("testfleet.toml:1: ") && e.contains("servcie"),
            "{e}"
        );
    }

    #[test]
    fn bad_templates_name_the_key_and_the_line() {
        let base = "[[service]]\nname = \"db\"\nimage = \"x:1\"\nports = [5432]\n";
        let e = err(&format!(
            "{base}exports = {{ URL = \"{{host}}:{{port:5433}}\" }}\n"
        ));
        assert!(e.starts_with("testfleet.toml:5: "), "{e}");
        assert!(
            e.contains("exports.URL") && e.contains("port 5433 is not in `ports`"),
            "{e}"
        );
        let e = err(&format!("{base}exports = {{ URL = \"{{hots}}\" }}\n"));
        assert!(e.contains("unknown placeholder `{hots}`"), "{e}");
        let e = err(&format!("{base}exports = {{ URL = \"{{host\" }}\n"));
        assert!(e.contains("unclosed `{`"), "{e}");
    }

    #[test]
    fn each_bad_value_is_explained() {
        let cases = [
            (
                "[[service]]\nname = \"a\"\n",
                "one of `image` or `build` is required",
            ),
            (
                "[[service]]\nname = \"a\"\nimage = \"x:1\"\nbuild = \"d\"\n",
                "either `image` or `build`",
            ),
            (
                "[[service]]\nname = \"a\"\nbuild = \"../outside\"\n",
                "relative path inside",
            ),
            (
                "[[service]]\nname = \"a\"\nbuild = { contxt = \"d\" }\n",
                "unknown key `contxt`",
            ),
            ("[[service]]\nname = \"a\"\nbuild = 5\n", "key `build`"),
            (
                "[[service]]\nname = \"a\"\nimage = \"x:1\"\nscope = \"run\"\n",
                "`run` is not a scope",
            ),
            (
                "[[service]]\nname = \"a\"\nimage = \"x:1\"\nwait = { port = 1 }\n",
                "port 1 is not in `ports`",
            ),
            (
                "[[service]]\nname = \"a\"\nimage = \"x:1\"\nwait = {}\n",
                "exactly one of",
            ),
            (
                "[[service]]\nname = \"a\"\nimage = \"x:1\"\nstartup_timeout = 0\n",
                "startup_timeout",
            ),
            (
                "[[service]]\nname = \"a\"\nimage = \"x:1\"\npull = \"sometimes\"\n",
                "`sometimes` is not a pull policy",
            ),
            (
                "[[service]]\nname = \"a\"\nimage = \"x:1\"\npull_timeout = 7200\n",
                "key `pull_timeout`: 7200 is not between",
            ),
            (
                "[[service]]\nname = \"a b\"\nimage = \"x:1\"\n",
                "service name",
            ),
            ("[[service]]\nname = \"a\"\nimage = \"\"\n", "key `image`"),
            (
                "[[service]]\nname = \"a\"\nimage = \"x\"\n[[service]]\nname = \"a\"\nimage = \"y\"\n",
                "declared twice",
            ),
        ];
        for (text, needle) in cases {
            let e = err(text);
            assert!(e.contains(needle), "{text:?} gave {e}");
            assert!(e.starts_with("testfleet.toml:"), "{e}");
        }
    }

    #[test]
    fn runners_parse_with_their_own_keys_only() {
        let m = parse("[runner]\nkind = \"pytest\"\npaths = [\"tests\"]\nenv = { A = \"1\" }\n")
            .unwrap();
        let r = m.runner.unwrap();
        assert_eq!(
            r.tool,
            Tool::Pytest {
                python: DEFAULT_PYTHON.into(),
                paths: vec!["tests".into()],
                args: vec![],
                dist: Dist::LoadGroup,
            }
        );
        assert_eq!(r.env["A"], "1");
        let m = parse("[runner]\nkind = \"pytest\"\ndist = \"loadscope\"\n").unwrap();
        assert!(matches!(
            m.runner.unwrap().tool,
            Tool::Pytest {
                dist: Dist::LoadScope,
                ..
            }
        ));
        assert!(err("[runner]\nkind = \"pytest\"\ndist = \"each\"\n").contains("unknown `dist"));
        let m = parse("[runner]\nkind = \"command\"\nlist = [\"./t\", \"--list\"]\nrun = [\"./t\", \"--junit\", \"{junit}\", \"{tests}\"]\n").unwrap();
        assert!(
            matches!(m.runner.unwrap().tool, Tool::Command { binary, .. } if binary == "tests")
        );
        assert!(parse("").unwrap().runner.is_none());

        let e = err("\n[runner]\nkind = \"nose\"\n");
        assert!(
            e.starts_with("testfleet.toml:2:") && e.contains("`nose`"),
            "{e}"
        );
        let e = err("[runner]\nkind = \"pytest\"\nlist = [\"x\"]\n");
        assert!(
            e.contains("key `list` does not belong to kind `pytest`"),
            "{e}"
        );
        let e = err("[runner]\nkind = \"command\"\nlist = [\"x\"]\n");
        assert!(e.contains("needs `list`"), "{e}");
        let e = err("[runner]\nkind = \"command\"\nlist = [\"x\"]\nrun = [\"x\", \"{tests}\"]\n");
        assert!(e.contains("{junit}"), "{e}");
        let e = err("[runner]\nkind = \"pytest\"\npyhton = \"python3.12\"\n");
        assert!(e.contains("pyhton"), "{e}");
    }

    #[test]
    fn compose_stacks_parse_into_services_of_their_own_kind() {
        let m = parse(
            r#"
[[service]]
name = "cache"
image = "redis:7"

[[compose]]
name = "stack"
files = ["compose.test.yaml", "compose.ci.yaml"]
scope = "lease"
wait = { front = { port = 8080 }, db = { log = "ready" } }
exports = { FRONT_URL = "http://{host}:{port:front:8080}/" }
binaries = ["app::it"]
pull = "never"
"#,
        )
        .unwrap();
        let stack = &m.services[1];
        assert_eq!(stack.scope, Scope::Lease);
        assert_eq!(stack.pull, Some(PullPolicy::Never));
        assert_eq!(stack.startup_timeout, DEFAULT_STACK_STARTUP_TIMEOUT);
        let ImageSource::Compose {
            files,
            waits,
            pinned,
        } = &stack.source
        else {
            panic!("{:?}", stack.source)
        };
        assert!(
            !pinned,
            "the engine picks host ports unless the stack says otherwise"
        );
        assert_eq!(files, &["compose.test.yaml", "compose.ci.yaml"]);
        assert_eq!(waits["front"], WaitStrategy::Port { port: 8080 });
        assert_eq!(
            waits["db"],
            WaitStrategy::Log {
                message: "ready".into()
            }
        );
        assert_eq!(m.services_for("app::it"), vec![0, 1]);
        assert_eq!(m.services_for("app::unit"), vec![0]);
        stack.validate().unwrap();
        let cases = [
            ("[[compose]]\nname = \"s\"\n", "one of `file` or `files`"),
            (
                "[[compose]]\nname = \"s\"\nfile = \"a.yaml\"\nfiles = [\"b.yaml\"]\n",
                "either `file` or `files`",
            ),
            (
                "[[compose]]\nname = \"s\"\nfile = \"../a.yaml\"\n",
                "relative path inside",
            ),
            (
                "[[compose]]\nname = \"s\"\nfile = \"a.yaml\"\nexports = { U = \"{port:80}\" }\n",
                "`{port:SERVICE:80}`",
            ),
            (
                "[[service]]\nname = \"s\"\nimage = \"x\"\nports = [80]\nexports = { U = \"{port:web:80}\" }\n",
                "names a compose service",
            ),
            (
                "[[compose]]\nname = \"s\"\nfile = \"a.yaml\"\nwait = { web = { http = \"x\", port = 1 } }\n",
                "key `wait.web`",
            ),
            (
                "[[service]]\nname = \"s\"\nimage = \"x\"\n[[compose]]\nname = \"s\"\nfile = \"a.yaml\"\n",
                "declared twice",
            ),
            (
                "[[compose]]\nname = \"s\"\nfile = \"a.yaml\"\nimage = \"x\"\n",
                "unknown field `image`",
            ),
            (
                "[[compose]]\nname = \"s\"\nfile = \"a.yaml\"\nhost_ports = \"mine\"\n",
                "key `host_ports`: `mine` is neither",
            ),
        ];
        for (text, wanted) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }
}
