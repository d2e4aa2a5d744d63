//! The three roles a token can carry, and which of them may do what.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Submits and cancels runs, uploads bundles, changes quarantine, and reads everything.
    Client,
    /// Reads runs, agents and history; changes nothing and runs nothing.
    Reader,
    /// Connects as an agent and downloads bundles; cannot submit or read history.
    Agent,
    /// A CI job under `testfleet ci`: submits its pipeline's run and joins the fleet as an agent
    /// (what a client and an agent may do, in one token for a CI secret).
    Ci,
}

impl Role {
    /// Whether a caller with this role may call a method that needs `needed`.
    pub fn grants(self, needed: Role) -> bool {
        self == needed
            || (self == Role::Client && needed == Role::Reader)
            || (self == Role::Ci && needed != Role::Ci)
    }

    /// "a client", "a reader", "an agent": for messages.
    pub fn with_article(self) -> &'static str {
        match self {
            Role::Client => "a client",
            Role::Reader => "a reader",
            Role::Agent => "an agent",
            Role::Ci => "a ci",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Reader => "reader",
            Role::Agent => "agent",
            Role::Ci => "ci",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "client" => Ok(Role::Client),
            "reader" => Ok(Role::Reader),
            "agent" => Ok(Role::Agent),
            "ci" => Ok(Role::Ci),
            other => Err(format!(
                "unknown role `{other}` (roles are client, reader, agent and ci)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_may_read_but_nobody_else_crosses_roles() {
        assert!(Role::Client.grants(Role::Reader));
        assert!(Role::Client.grants(Role::Client));
        assert!(!Role::Client.grants(Role::Agent));
        assert!(!Role::Reader.grants(Role::Client));
        assert!(!Role::Agent.grants(Role::Client));
        assert!(!Role::Agent.grants(Role::Reader));
        assert!(Role::Agent.grants(Role::Agent));
        // A CI job submits, reads and runs tests; nothing needs the ci role itself.
        for r in [Role::Client, Role::Reader, Role::Agent] {
            assert!(Role::Ci.grants(r));
            assert!(!r.grants(Role::Ci));
        }
    }
}
