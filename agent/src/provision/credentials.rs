//! Registry credentials from where Docker users keep them: `DOCKER_AUTH_CONFIG` (the text of a
//! config.json, as CI systems set it), else `$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`; in each, a registry's `auths` entry, its `credHelpers` helper or the
//! `credsStore` (as `docker login` leaves them; helpers are the `docker-credential-*` programs).

use std::path::PathBuf;

use docker_credential::{CredentialRetrievalError, DockerCredential};
use testcontainers::bollard::auth::DockerCredentials;

/// The key Docker keeps Docker Hub's credentials under.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Credentials for a registry, and where they came from (said in errors, never the secret).
#[derive(Clone)]
pub struct Found {
    pub credentials: DockerCredentials,
    pub source: String,
}

/// Where credentials are looked up, from the environment.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `DOCKER_AUTH_CONFIG`'s text.
    pub auth_config: Option<String>,
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub config_file: Option<PathBuf>,
}

impl Sources {
    pub fn from_env() -> Self {
        let config_file = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .map(|d| d.join("config.json"));
        Sources {
            auth_config: std::env::var("DOCKER_AUTH_CONFIG")
                .ok()
                .filter(|s| !s.trim().is_empty()),
            config_file,
        }
    }

    /// The first source that exists, its text and its name for messages.
    fn config(&self) -> Result<Option<(String, String)>, String> {
        if let Some(text) = &self.auth_config {
            return Ok(Some((text.clone(), "DOCKER_AUTH_CONFIG".into())));
        }
        let Some(path) = &self.config_file else {
            return Ok(None);
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some((text, path.display().to_string()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The credentials for `registry` (`host[:port]`, or `docker.io`), `None` when none are
    /// configured for it. A broken config or a failing helper is an error that says which; a
    /// helper that knows no credentials for the registry is not.
    pub fn lookup(&self, registry: &str) -> Result<Option<Found>, String> {
        let Some((text, source)) = self.config()? else {
            return Ok(None);
        };
        if serde_json::from_str::<serde_json::Value>(&text).is_err() {
            return Err(format!("{source} is not valid JSON"));
        }
        let server = if registry == "docker.io" {
            DOCKER_HUB_KEY
        } else {
            registry
        };
        let credentials = match docker_credential::get_credential_from_reader(
            text.as_bytes(),
            server,
        ) {
            Ok(DockerCredential::IdentityToken(token)) => DockerCredentials {
                identitytoken: Some(token),
                serveraddress: Some(server.to_owned()),
                ..Default::default()
            },
            Ok(DockerCredential::UsernamePassword(username, password)) => DockerCredentials {
                username: Some(username),
                password: Some(password),
                serveraddress: Some(server.to_owned()),
                ..Default::default()
            },
            Err(CredentialRetrievalError::NoCredentialConfigured) => return Ok(None),
            Err(CredentialRetrievalError::HelperFailure { stdout, .. })
                if stdout.contains("credentials not found") =>
            {
                return Ok(None);
            }
            Err(CredentialRetrievalError::HelperFailure {
                helper,
                stdout,
                stderr,
            }) => {
                let said = format!("{} {}", stdout.trim(), stderr.trim());
                return Err(format!(
                    "the credential helper `{helper}` named in {source} failed for {registry}: {}",
                    said.trim()
                ));
            }
            Err(CredentialRetrievalError::HelperCommunicationError) => {
                return Err(format!(
                    "the credential helper named in {source} for {registry} cannot be run (is it on PATH?)"
                ));
            }
            Err(e) => return Err(format!("credentials for {registry} in {source}: {e}")),
        };
        Ok(Some(Found {
            credentials,
            source,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_text(text: &str) -> Sources {
        Sources {
            auth_config: Some(text.to_owned()),
            config_file: None,
        }
    }

    #[test]
    fn auths_entries_are_found_by_registry_and_docker_hub_by_its_key() {
        // "alice:s3cret" and "bob:pw" in base64, as `docker login` writes them.
        let s = from_text(
            r#"{"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6czNjcmV0"},
                          "https://index.docker.io/v1/": {"auth": "Ym9iOnB3"}}}"#,
        );
        let found = s.lookup("127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(found.credentials.username.as_deref(), Some("alice"));
        assert_eq!(found.credentials.password.as_deref(), Some("s3cret"));
        assert_eq!(found.source, "DOCKER_AUTH_CONFIG");
        let hub = s.lookup("docker.io").unwrap().unwrap();
        assert_eq!(hub.credentials.username.as_deref(), Some("bob"));
        assert!(s.lookup("registry.example:443").unwrap().is_none());
    }

    #[test]
    fn the_environment_s_config_comes_before_the_file_and_a_missing_file_is_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"auths": {"r:1": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        let mut s = Sources {
            auth_config: None,
            config_file: Some(file.clone()),
        };
        let found = s.lookup("r:1").unwrap().unwrap();
        assert_eq!(found.source, file.display().to_string());
        assert_eq!(found.credentials.username.as_deref(), Some("u"));
        s.auth_config = Some(r#"{"auths": {}}"#.into());
        assert!(
            s.lookup("r:1").unwrap().is_none(),
            "DOCKER_AUTH_CONFIG wins"
        );
        s.auth_config = None;
        s.config_file = Some(dir.path().join("absent.json"));
        assert!(s.lookup("r:1").unwrap().is_none());
    }

    #[test]
    fn a_broken_config_and_a_failing_helper_are_errors_that_say_which() {
        let err = from_text("{not json").lookup("r:1").err().unwrap();
        assert!(
            err.contains("DOCKER_AUTH_CONFIG is not valid JSON"),
            "{err}"
        );
        let err = from_text(r#"{"credHelpers": {"r:1": "testfleet-absent-helper"}}"#)
            .lookup("r:1")
            .err()
            .unwrap();
        assert!(err.contains("cannot be run"), "{err}");
    }
}
