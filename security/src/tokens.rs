//! Tokens: the coordinator's set (role, name, token per line, kept only as SHA-256 digests and
//! compared in constant time), and the one secret a client or agent presents. Tokens are read from
//! files or the environment, never from the command line (where `ps` shows them), and never printed.

use std::fmt;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Role, SecurityError};

/// Shorter tokens are refused: a token is the only thing between the network and code execution.
pub const MIN_TOKEN_LEN: usize = 16;

/// A token held by a client or agent. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Checks the shape of a token (what fits in an HTTP header, long enough); `what` names its
    /// source in errors.
    pub fn new(token: &str, what: &str) -> Result<Self, SecurityError> {
        check_token(token).map_err(|reason| SecurityError::Invalid {
            what: what.to_owned(),
            reason,
        })?;
        Ok(Secret(token.to_owned()))
    }

    /// The token in `path` (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, SecurityError> {
        let text = read_secret_file(path, "token file")?;
        Secret::new(text.trim(), &format!("token file `{}`", path.display()))
    }

    /// The token from `file` if given, else from the environment variable `env`, else none.
    pub fn load(file: Option<&Path>, env: &str) -> Result<Option<Self>, SecurityError> {
        if let Some(path) = file {
            return Secret::from_file(path).map(Some);
        }
        match std::env::var(env) {
            Ok(v) if !v.trim().is_empty() => Secret::new(v.trim(), &format!("${env}")).map(Some),
            _ => Ok(None),
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn check_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token is {} characters long; at least {MIN_TOKEN_LEN} are required (`testfleet token` makes one)",
            token.len()
        ));
    }
    if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "the token holds {c:?}; only printable ASCII without spaces is allowed"
        ));
    }
    Ok(())
}

fn read_secret_file(path: &Path, what: &'static str) -> Result<String, SecurityError> {
    let read = |source| SecurityError::Read {
        what,
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(read)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "a {what} is readable by other users; `chmod 600` it"
            );
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read)?;
    Ok(text)
}

/// One entry of the coordinator's token set. The token itself is not kept.
#[derive(Clone, Debug)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    digest: [u8; 32],
}

/// The tokens a coordinator accepts.
#[derive(Clone, Debug, Default)]
pub struct TokenSet {
    entries: Vec<TokenEntry>,
}

impl TokenSet {
    /// Parses `ROLE NAME TOKEN` lines; `#` starts a comment. `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SecurityError> {
        let mut set = TokenSet::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |reason: String| SecurityError::TokenLine {
                origin: origin.to_owned(),
                line: i + 1,
                reason,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [role, name, token] = fields.as_slice() else {
                return Err(err(format!(
                    "expected `ROLE NAME TOKEN`, found {} fields",
                    fields.len()
                )));
            };
            let role: Role = role.parse().map_err(err)?;
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(err(format!(
                    "the name `{name}` may hold only letters, digits, `-`, `_` and `.`"
                )));
            }
            check_token(token).map_err(err)?;
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if set.entries.iter().any(|e| e.name == *name) {
                return Err(err(format!("the name `{name}` is used twice")));
            }
            if set.entries.iter().any(|e| e.digest == digest) {
                return Err(err("this token is already given to another name".into()));
            }
            set.entries.push(TokenEntry {
                name: (*name).to_owned(),
                role,
                digest,
            });
        }
        if set.entries.is_empty() {
            return Err(SecurityError::Invalid {
                what: origin.to_owned(),
                reason: "no tokens in it; every request would be refused".into(),
            });
        }
        Ok(set)
    }

    /// The set in `file` if given, else in the environment variable `env` (same format), else none
    /// (authentication off).
    pub fn load(file: Option<&Path>, env: &str) -> Result<Option<Self>, SecurityError> {
        if let Some(path) = file {
            let text = read_secret_file(path, "tokens file")?;
            return TokenSet::parse(&text, &format!("tokens file `{}`", path.display())).map(Some);
        }
        match std::env::var(env) {
            Ok(v) if !v.trim().is_empty() => TokenSet::parse(&v, &format!("${env}")).map(Some),
            _ => Ok(None),
        }
    }

    /// The entry whose token is `presented`. Every entry is compared, in constant time, whether or
    /// not one matched earlier: how long this takes says nothing about the tokens.
    pub fn authenticate(&self, presented: &[u8]) -> Option<&TokenEntry> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&digest)) {
                found = Some(e);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn count(&self, role: Role) -> usize {
        self.entries.iter().filter(|e| e.role == role).count()
    }
}

/// A fresh token: 32 bytes from the kernel's random source, as hex.
pub fn generate_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "client-token-0123456789";
    const AGENT: &str = "agent-token-0123456789";

    fn set() -> TokenSet {
        TokenSet::parse(
            &format!("# tokens\nclient ci {CLIENT}\n\nagent pool-a {AGENT}  # the pool\n"),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn tokens_authenticate_to_their_entry_and_nothing_else_does() {
        let s = set();
        assert_eq!(s.len(), 2);
        let c = s.authenticate(CLIENT.as_bytes()).unwrap();
        assert_eq!((c.name.as_str(), c.role), ("ci", Role::Client));
        let a = s.authenticate(AGENT.as_bytes()).unwrap();
        assert_eq!((a.name.as_str(), a.role), ("pool-a", Role::Agent));
        assert!(s.authenticate(b"client-token-012345678").is_none());
        assert!(s.authenticate(b"").is_none());
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        let cases = [
            ("admin x 0123456789abcdef", "unknown role `admin`"),
            ("client x short", "at least 16"),
            ("client x", "expected `ROLE NAME TOKEN`"),
            ("client a/b 0123456789abcdef", "may hold only"),
            (
                "client a 0123456789abcdef\nagent a 0123456789abcdeg",
                "used twice",
            ),
            (
                "client a 0123456789abcdef\nagent b 0123456789abcdef",
                "already given",
            ),
            ("# nothing\n", "no tokens"),
        ];
        for (text, want) in cases {
            let err = TokenSet::parse(text, "f").unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let err = TokenSet::parse("\n\nclient x short", "f").unwrap_err();
        assert!(err.to_string().starts_with("f, line 3:"), "{err}");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = Secret::new(CLIENT, "t").unwrap();
        assert!(!format!("{s:?}").contains(CLIENT));
        assert!(Secret::new("with space in it 0123", "t").is_err());
    }

    #[test]
    fn a_token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, format!("{CLIENT}\n")).unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), CLIENT);
        let err = Secret::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("cannot read token file"), "{err}");
    }

    #[test]
    fn generated_tokens_are_long_and_differ() {
        let (a, b) = (generate_token().unwrap(), generate_token().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(Secret::new(&a, "t").is_ok());
    }
}
