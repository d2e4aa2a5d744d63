//! Services a suite's tests need (databases, caches, brokers): what image, how to wait for it, how
//! long it lives (its scope), and the environment variables it exports to the tests.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// An image that must already be present on the agent's Docker engine.
    Image { name: String, tag: String },
    /// Built by each agent from a context directory (inside the workspace, shipped in the bundle),
    /// once per content.
    Build { context: String, dockerfile: String },
    /// A compose stack: the compose files (inside the workspace, shipped in the bundle), merged as
    /// compose merges them, and what to wait for per compose service (besides their healthchecks).
    Compose {
        files: Vec<String>,
        waits: BTreeMap<String, WaitStrategy>,
        /// Keep the host ports (and container names) the files pin, for suites that reach
        /// `localhost:PORT` as written; such a stack cannot run twice at once on one engine.
        pinned: bool,
    },
}

impl ImageSource {
    /// Parses `name[:tag]`; the tag defaults to `latest`.
    pub fn parse_image(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{s}` is not an image reference"));
        }
        let last_slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match s[last_slash..].rfind(':') {
            Some(i) => (&s[..last_slash + i], &s[last_slash + i + 1..]),
            None => (s, "latest"),
        };
        if name.is_empty() || tag.is_empty() {
            return Err(format!("`{s}` is not an image reference"));
        }
        Ok(ImageSource::Image {
            name: name.to_owned(),
            tag: tag.to_owned(),
        })
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Image { name, tag } => write!(f, "{name}:{tag}"),
            ImageSource::Build {
                context,
                dockerfile,
            } => write!(f, "build of {context}/{dockerfile}"),
            ImageSource::Compose { files, .. } => write!(f, "compose stack {}", files.join(" + ")),
        }
    }
}

/// How long a service's container lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One per agent, reused by every lease (and run) that needs the same service.
    Agent,
    /// Fresh for each lease (batch of tests), removed when the lease ends.
    Lease,
    /// Fresh for each test, removed when the test ends.
    Test,
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "agent" => Ok(Scope::Agent),
            "lease" => Ok(Scope::Lease),
            "test" => Ok(Scope::Test),
            other => Err(format!(
                "`{other}` is not a scope (use `agent`, `lease` or `test`)"
            )),
        }
    }
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Agent => "agent",
            Scope::Lease => "lease",
            Scope::Test => "test",
        }
    }
}

/// When an agent pulls a service's image (or a built image's `FROM` images) from its registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Only when the engine does not have it: a tag already present is used as it is.
    #[default]
    Missing,
    /// Once per run on each agent, so a moving tag (`:latest`, `:16`) is as new as the registry's.
    Always,
    /// Never: the image must be on the agent's engine already (built or loaded there).
    Never,
}

impl FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "missing" => Ok(PullPolicy::Missing),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            other => Err(format!(
                "`{other}` is not a pull policy (use `missing`, `always` or `never`)"
            )),
        }
    }
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Missing => "missing",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest a pull may be given, in a manifest or on an agent's command line.
pub const MAX_PULL_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitStrategy {
    None,
    /// A line containing `message` on stdout or stderr.
    Log {
        message: String,
    },
    /// A TCP connection to the mapped port succeeds.
    Port {
        port: u16,
    },
    /// `GET path` on the mapped port answers `status`.
    Http {
        port: u16,
        path: String,
        status: u16,
    },
    /// The image's own HEALTHCHECK reports healthy.
    Healthcheck,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Part {
    Literal(String),
    Host,
    Port(u16),
    /// A compose service's port.
    StackPort(String, u16),
}

/// An export template such as `postgres://u:p@{host}:{port:5432}/db`. `{host}` is the host that
/// reaches the container's published ports, `{port:N}` the host port published for container port
/// N, and in a compose stack's exports `{port:SERVICE:N}` that of compose service SERVICE's port N;
/// `{{` and `}}` are literal braces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => {
                    return Err(format!(
                        "unmatched `}}` at byte {i} (write `}}}}` for a literal brace)"
                    ));
                }
                '{' => {
                    let rest = &s[i + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("unclosed `{{` at byte {i}"))?;
                    let name = &rest[..end];
                    let unknown = || {
                        format!(
                            "unknown placeholder `{{{name}}}` (use `{{host}}`, `{{port:N}}` or `{{port:SERVICE:N}}`)"
                        )
                    };
                    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
                    let part = match name {
                        "host" => Part::Host,
                        _ => match name.strip_prefix("port:").map(|r| r.rsplit_once(':')) {
                            Some(None) => Part::Port(port(&name[5..]).ok_or_else(unknown)?),
                            Some(Some((svc, p))) if !svc.is_empty() => {
                                Part::StackPort(svc.to_owned(), port(p).ok_or_else(unknown)?)
                            }
                            _ => return Err(unknown()),
                        },
                    };
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(part);
                    for _ in 0..=end {
                        chars.next();
                    }
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        Ok(Template {
            source: s.to_owned(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The ports the template refers to: `(None, N)` for `{port:N}`, `(Some(SERVICE), N)` for
    /// `{port:SERVICE:N}`.
    pub fn ports(&self) -> impl Iterator<Item = (Option<&str>, u16)> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Port(p) => Some((None, *p)),
            Part::StackPort(s, p) => Some((Some(s.as_str()), *p)),
            _ => None,
        })
    }

    /// The text with `host` and the host ports `host_port` gives for `(service, port)`.
    pub fn render(
        &self,
        host: &str,
        host_port: &dyn Fn(Option<&str>, u16) -> Option<u16>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Host => out.push_str(host),
                Part::Port(p) => {
                    let hp = host_port(None, *p)
                        .ok_or_else(|| format!("container port {p} is not published"))?;
                    out.push_str(&hp.to_string());
                }
                Part::StackPort(s, p) => {
                    let hp = host_port(Some(s), *p)
                        .ok_or_else(|| format!("compose service `{s}` publishes no port {p}"))?;
                    out.push_str(&hp.to_string());
                }
            }
        }
        Ok(out)
    }
}

/// Names of services and stacks: ASCII letters, digits, `-` and `_` (they go into container,
/// network and project names).
pub(crate) fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub source: ImageSource,
    pub env: BTreeMap<String, String>,
    pub cmd: Vec<String>,
    pub ports: Vec<u16>,
    pub wait: WaitStrategy,
    pub startup_timeout: Duration,
    pub scope: Scope,
    pub exports: BTreeMap<String, Template>,
    /// `None`: the agent's default (`testfleet agent --pull`).
    pub pull: Option<PullPolicy>,
    /// `None`: the agent's default (`testfleet agent --pull-timeout`).
    pub pull_timeout: Option<Duration>,
}

impl ServiceSpec {
    /// A stable identity of everything that shapes the container: two specs with the same
    /// fingerprint can share one agent-scope container. FNV-1a over a canonical encoding, so it is
    /// the same on every machine and version that encodes the same way.
    pub fn fingerprint(&self) -> String {
        const SEP: char = '\u{1f}';
        let mut canon = format!("v1{SEP}{}{SEP}{}{SEP}", self.name, self.source);
        if let ImageSource::Build {
            context,
            dockerfile,
        } = &self.source
        {
            canon.push_str(&format!("{context}{SEP}{dockerfile}{SEP}"));
        }
        if let ImageSource::Compose {
            files,
            waits,
            pinned,
        } = &self.source
        {
            canon.push_str(&format!("{files:?}{SEP}{waits:?}{SEP}{pinned}{SEP}"));
        }
        for (k, v) in &self.env {
            canon.push_str(&format!("env{SEP}{k}{SEP}{v}{SEP}"));
        }
        for c in &self.cmd {
            canon.push_str(&format!("cmd{SEP}{c}{SEP}"));
        }
        for p in &self.ports {
            canon.push_str(&format!("port{SEP}{p}{SEP}"));
        }
        canon.push_str(&format!("{:?}{SEP}{}", self.wait, self.scope.as_str()));
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in canon.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// Checks a spec that arrived over the wire as strictly as the manifest parser would.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if !is_service_name(name) {
            return Err(format!("service name `{name}` is invalid"));
        }
        if self.startup_timeout.is_zero() || self.startup_timeout > Duration::from_secs(3600) {
            return Err(format!(
                "service `{name}`: startup timeout must be between 0 and 3600 s"
            ));
        }
        if let Some(t) = self.pull_timeout
            && (t.is_zero() || t > MAX_PULL_TIMEOUT)
        {
            return Err(format!(
                "service `{name}`: pull timeout must be between 0 and 3600 s"
            ));
        }
        let stack = match &self.source {
            ImageSource::Compose { files, .. } => Some(files),
            _ => None,
        };
        for t in self.exports.values() {
            for (svc, p) in t.ports() {
                match (svc, stack) {
                    (None, None) if !self.ports.contains(&p) => {
                        return Err(format!(
                            "service `{name}`: export refers to port {p}, which is not exposed"
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(format!(
                            "compose stack `{name}`: export refers to port {p} without a compose service (`{{port:SERVICE:{p}}}`)"
                        ));
                    }
                    (Some(s), None) => {
                        return Err(format!(
                            "service `{name}`: `{{port:{s}:{p}}}` names a compose service; a service has `{{port:{p}}}`"
                        ));
                    }
                    _ => {}
                }
            }
        }
        if let Some(files) = stack {
            if files.is_empty() {
                return Err(format!("compose stack `{name}`: no compose file"));
            }
            for f in files {
                if !crate::relative_path::is_relative_inside(f) {
                    return Err(format!(
                        "compose stack `{name}`: file `{f}` must be a relative path inside the workspace"
                    ));
                }
            }
        }
        if let ImageSource::Build {
            context,
            dockerfile,
        } = &self.source
        {
            for (what, p) in [("build context", context), ("dockerfile", dockerfile)] {
                if !crate::relative_path::is_relative_inside(p) {
                    return Err(format!(
                        "service `{name}`: {what} `{p}` must be a relative path inside the workspace"
                    ));
                }
            }
        }
        let waited = match &self.wait {
            WaitStrategy::Port { port } | WaitStrategy::Http { port, .. } => Some(*port),
            _ => None,
        };
        if let Some(p) = waited.filter(|p| !self.ports.contains(p)) {
            return Err(format!(
                "service `{name}`: waits on port {p}, which is not exposed"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_at_the_tag_not_the_registry_port() {
        let img = |s| ImageSource::parse_image(s).unwrap().to_string();
        assert_eq!(img("redis"), "redis:latest");
        assert_eq!(img("local/redis:7"), "local/redis:7");
        assert_eq!(img("registry:5000/team/db"), "registry:5000/team/db:latest");
        assert_eq!(img("registry:5000/team/db:16"), "registry:5000/team/db:16");
        assert!(ImageSource::parse_image("a b").is_err());
        assert!(ImageSource::parse_image("x:").is_err());
    }

    #[test]
    fn templates_render_hosts_ports_and_braces() {
        let t = Template::parse("{{\"url\": \"redis://{host}:{port:6379}/0\"}}").unwrap();
        let out = t
            .render("127.0.0.1", &|s, p| {
                (s.is_none() && p == 6379).then_some(32768)
            })
            .unwrap();
        assert_eq!(out, "{\"url\": \"redis://127.0.0.1:32768/0\"}");
        assert_eq!(t.ports().collect::<Vec<_>>(), vec![(None, 6379)]);
        assert!(Template::parse("{port:0}").is_err());
        assert!(Template::parse("{port:x}").is_err());
        assert!(Template::parse("{port::80}").is_err());
        assert!(Template::parse("{port:db:0}").is_err());
        assert!(Template::parse("a}b").is_err());
        let missing = Template::parse("{port:1}")
            .unwrap()
            .render("h", &|_, _| None);
        assert!(missing.unwrap_err().contains("not published"));
        // A compose stack's exports name the compose service whose port they mean.
        let t = Template::parse("http://{host}:{port:front:8080}/ pg:{port:db:5432}").unwrap();
        assert_eq!(
            t.ports().collect::<Vec<_>>(),
            vec![(Some("front"), 8080), (Some("db"), 5432)]
        );
        let out = t.render("h", &|s, p| match (s, p) {
            (Some("front"), 8080) => Some(1),
            (Some("db"), 5432) => Some(2),
            _ => None,
        });
        assert_eq!(out.unwrap(), "http://h:1/ pg:2");
        let missing = t.render("h", &|_, _| None).unwrap_err();
        assert!(
            missing.contains("compose service `front` publishes no port 8080"),
            "{missing}"
        );
    }

    #[test]
    fn fingerprints_change_with_what_shapes_the_container() {
        let spec = ServiceSpec {
            name: "db".into(),
            source: ImageSource::parse_image("x:1").unwrap(),
            env: BTreeMap::new(),
            cmd: vec![],
            ports: vec![1],
            wait: WaitStrategy::None,
            startup_timeout: Duration::from_secs(5),
            scope: Scope::Agent,
            exports: BTreeMap::new(),
            pull: None,
            pull_timeout: None,
        };
        let mut other = spec.clone();
        assert_eq!(spec.fingerprint(), other.fingerprint());
        other.env.insert("A".into(), "1".into());
        assert_ne!(spec.fingerprint(), other.fingerprint());
        let mut other = spec.clone();
        other.startup_timeout = Duration::from_secs(9);
        assert_eq!(
            spec.fingerprint(),
            other.fingerprint(),
            "how long we wait does not shape the container"
        );
    }
}
