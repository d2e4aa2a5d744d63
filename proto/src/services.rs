//! Conversions of service specs between wire and model. Templates travel as their source text and
//! are parsed again here, so an agent never trusts a template it did not check.

use std::collections::BTreeMap;
use std::time::Duration;

use testfleet_model::{
    ImageSource, MAX_PULL_TIMEOUT, PullPolicy, Scope, ServiceSpec, Template, WaitStrategy,
};

use crate::{ConvertError, pb};

impl From<Scope> for pb::Scope {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Agent => pb::Scope::Agent,
            Scope::Lease => pb::Scope::Lease,
            Scope::Test => pb::Scope::Test,
        }
    }
}

impl From<Option<PullPolicy>> for pb::PullPolicy {
    fn from(p: Option<PullPolicy>) -> Self {
        match p {
            None => pb::PullPolicy::Unspecified,
            Some(PullPolicy::Missing) => pb::PullPolicy::Missing,
            Some(PullPolicy::Always) => pb::PullPolicy::Always,
            Some(PullPolicy::Never) => pb::PullPolicy::Never,
        }
    }
}

fn pull_from_wire(v: i32) -> Result<Option<PullPolicy>, ConvertError> {
    match pb::PullPolicy::try_from(v) {
        Ok(pb::PullPolicy::Unspecified) => Ok(None),
        Ok(pb::PullPolicy::Missing) => Ok(Some(PullPolicy::Missing)),
        Ok(pb::PullPolicy::Always) => Ok(Some(PullPolicy::Always)),
        Ok(pb::PullPolicy::Never) => Ok(Some(PullPolicy::Never)),
        Err(_) => Err(ConvertError::new(
            "pull policy",
            format!("unknown value {v}"),
        )),
    }
}

pub fn scope_from_wire(v: i32) -> Result<Scope, ConvertError> {
    match pb::Scope::try_from(v) {
        Ok(pb::Scope::Agent) => Ok(Scope::Agent),
        Ok(pb::Scope::Lease) => Ok(Scope::Lease),
        Ok(pb::Scope::Test) => Ok(Scope::Test),
        _ => Err(ConvertError::new("scope", format!("unknown value {v}"))),
    }
}

impl From<&ServiceSpec> for pb::ServiceSpec {
    fn from(s: &ServiceSpec) -> Self {
        use pb::service_spec::Source;
        let source = match &s.source {
            ImageSource::Image { name, tag } => Source::Image(pb::ImageRef {
                name: name.clone(),
                tag: tag.clone(),
            }),
            ImageSource::Build {
                context,
                dockerfile,
            } => Source::Build(pb::BuildContext {
                context: context.clone(),
                dockerfile: dockerfile.clone(),
            }),
            ImageSource::Compose {
                files,
                waits,
                pinned,
            } => Source::Compose(pb::ComposeStack {
                pinned: *pinned,
                files: files.clone(),
                waits: waits
                    .iter()
                    .map(|(k, w)| (k.clone(), wait_to_wire(w).unwrap_or_default()))
                    .collect(),
            }),
        };
        let wait = wait_to_wire(&s.wait);
        pb::ServiceSpec {
            name: s.name.clone(),
            source: Some(source),
            env: s.env.clone().into_iter().collect(),
            cmd: s.cmd.clone(),
            ports: s.ports.iter().map(|p| u32::from(*p)).collect(),
            wait,
            startup_timeout_ms: s.startup_timeout.as_millis() as u64,
            scope: pb::Scope::from(s.scope) as i32,
            exports: s
                .exports
                .iter()
                .map(|(k, t)| (k.clone(), t.source().to_owned()))
                .collect(),
            pull: pb::PullPolicy::from(s.pull) as i32,
            pull_timeout_ms: s.pull_timeout.map_or(0, |t| t.as_millis() as u64),
        }
    }
}

fn wait_to_wire(w: &WaitStrategy) -> Option<pb::WaitStrategy> {
    use pb::wait_strategy::Kind;
    let kind = match w {
        WaitStrategy::None => return None,
        WaitStrategy::Log { message } => Kind::Log(message.clone()),
        WaitStrategy::Port { port } => Kind::Port(u32::from(*port)),
        WaitStrategy::Http { port, path, status } => Kind::Http(pb::HttpWait {
            port: u32::from(*port),
            path: path.clone(),
            status: u32::from(*status),
        }),
        WaitStrategy::Healthcheck => Kind::Healthcheck(true),
    };
    Some(pb::WaitStrategy { kind: Some(kind) })
}

fn wait_from_wire(w: Option<pb::WaitStrategy>) -> Result<WaitStrategy, ConvertError> {
    use pb::wait_strategy::Kind;
    Ok(match w.and_then(|w| w.kind) {
        None | Some(Kind::Healthcheck(false)) => WaitStrategy::None,
        Some(Kind::Log(message)) => WaitStrategy::Log { message },
        Some(Kind::Port(p)) => WaitStrategy::Port {
            port: port(p, "wait port")?,
        },
        Some(Kind::Http(h)) => WaitStrategy::Http {
            port: port(h.port, "wait port")?,
            path: h.path,
            status: u16::try_from(h.status)
                .map_err(|_| ConvertError::new("wait status", "not an HTTP status"))?,
        },
        Some(Kind::Healthcheck(true)) => WaitStrategy::Healthcheck,
    })
}

fn port(v: u32, what: &'static str) -> Result<u16, ConvertError> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ConvertError::new(what, format!("{v} is not a port")))
}

impl TryFrom<pb::ServiceSpec> for ServiceSpec {
    type Error = ConvertError;
    fn try_from(s: pb::ServiceSpec) -> Result<Self, ConvertError> {
        use pb::service_spec::Source;
        let source = match s.source {
            Some(Source::Image(i)) => ImageSource::parse_image(&format!("{}:{}", i.name, i.tag))
                .map_err(|m| ConvertError::new("service image", m))?,
            Some(Source::Build(b)) => ImageSource::Build {
                context: b.context,
                dockerfile: b.dockerfile,
            },
            Some(Source::Compose(c)) => ImageSource::Compose {
                pinned: c.pinned,
                files: c.files,
                waits: c
                    .waits
                    .into_iter()
                    .map(|(k, w)| Ok((k, wait_from_wire(Some(w))?)))
                    .collect::<Result<_, ConvertError>>()?,
            },
            None => return Err(ConvertError::new("service source", "missing")),
        };
        let wait = wait_from_wire(s.wait)?;
        let exports = s
            .exports
            .into_iter()
            .map(|(k, v)| {
                Template::parse(&v)
                    .map(|t| (k.clone(), t))
                    .map_err(|m| ConvertError::new("service export", format!("`{k}`: {m}")))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let spec = ServiceSpec {
            name: s.name,
            source,
            env: s.env.into_iter().collect(),
            cmd: s.cmd,
            ports: s
                .ports
                .into_iter()
                .map(|p| port(p, "service port"))
                .collect::<Result<_, _>>()?,
            wait,
            startup_timeout: Duration::from_millis(s.startup_timeout_ms),
            scope: scope_from_wire(s.scope)?,
            exports,
            pull: pull_from_wire(s.pull)?,
            // Bounded before it becomes a Duration, so no value overflows.
            pull_timeout: (s.pull_timeout_ms > 0).then(|| {
                Duration::from_millis(
                    s.pull_timeout_ms
                        .min(MAX_PULL_TIMEOUT.as_millis() as u64 + 1),
                )
            }),
        };
        spec.validate()
            .map_err(|m| ConvertError::new("service", m))?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_specs_round_trip() {
        let text = r#"
[[service]]
name = "db"
image = "local/pg:16"
env = { A = "1" }
cmd = ["run", "--fast"]
ports = [5432, 9000]
wait = { http = "/ok", port = 9000, status = 204 }
startup_timeout = 7.5
scope = "test"
pull = "never"
pull_timeout = 12.5
exports = { URL = "pg://{host}:{port:5432}" }
[[service]]
name = "built"
build = { context = "docker", dockerfile = "Dockerfile.test" }
wait = { log = "ready" }
[[compose]]
name = "stack"
files = ["c.yaml", "d.yaml"]
host_ports = "file"
wait = { front = { http = "/ok", port = 80 }, db = { log = "up" }, q = { healthcheck = true } }
exports = { FRONT = "http://{host}:{port:front:80}/" }
"#;
        let m = testfleet_model::Manifest::parse(text, std::path::Path::new("t.toml")).unwrap();
        for s in &m.services {
            let back = ServiceSpec::try_from(pb::ServiceSpec::from(s)).unwrap();
            assert_eq!(&back, s);
        }
    }

    #[test]
    fn hostile_service_specs_are_rejected() {
        let mut s = pb::ServiceSpec {
            name: "x".into(),
            source: Some(pb::service_spec::Source::Image(pb::ImageRef {
                name: "i".into(),
                tag: "1".into(),
            })),
            startup_timeout_ms: 1000,
            scope: pb::Scope::Agent as i32,
            ..Default::default()
        };
        assert!(ServiceSpec::try_from(s.clone()).is_ok());
        s.ports = vec![70000];
        assert!(
            ServiceSpec::try_from(s.clone())
                .unwrap_err()
                .to_string()
                .contains("not a port")
        );
        s.ports = vec![];
        s.exports.insert("U".into(), "{port:5}".into());
        assert!(
            ServiceSpec::try_from(s.clone())
                .unwrap_err()
                .to_string()
                .contains("not exposed")
        );
        s.exports.clear();
        s.pull_timeout_ms = u64::MAX;
        assert!(
            ServiceSpec::try_from(s.clone())
                .unwrap_err()
                .to_string()
                .contains("pull timeout")
        );
        s.pull_timeout_ms = 0;
        s.pull = 9;
        assert!(ServiceSpec::try_from(s.clone()).is_err());
        s.pull = 0;
        s.scope = 42;
        assert!(ServiceSpec::try_from(s).is_err());
    }
}
