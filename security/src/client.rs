//! The client's and agent's side: the endpoint (with TLS when the URL is `https://`), the bearer
//! token on every call, and connection errors explained in words a user can act on.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::{ClientTls, Secret, SecurityError};

/// A channel whose every call carries the token (if any).
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>`, marked sensitive so HTTP/2 never indexes it.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// How a client or agent proves who it is and protects the connection.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    pub token: Option<Secret>,
    pub tls: Option<ClientTls>,
}

impl ClientSecurity {
    /// The endpoint for `url`: TLS for `https://` (the given settings, or the system's roots).
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, SecurityError> {
        let invalid = |reason: String| SecurityError::Invalid {
            what: format!("coordinator URL `{url}`"),
            reason,
        };
        let ep = Endpoint::from_shared(url.to_owned()).map_err(|e| invalid(e.to_string()))?;
        let https = ep.uri().scheme_str() == Some("https");
        if !https && self.tls.is_some() {
            return Err(invalid(
                "TLS settings are given, but the URL is not https://".into(),
            ));
        }
        if !https && self.token.is_some() && !is_loopback(ep.uri().host().unwrap_or("")) {
            tracing::warn!(
                url,
                "the token is sent without TLS: anyone on the network path can read it (use https://)"
            );
        }
        if !https {
            return Ok(ep);
        }
        let tls = self.tls.clone().unwrap_or_default().config()?;
        ep.tls_config(tls)
            .map_err(|e| SecurityError::Tls(explain_connect_error(&e)))
    }

    pub fn bearer(&self) -> Bearer {
        Bearer(self.token.as_ref().map(|t| {
            let mut v: MetadataValue<Ascii> = format!("Bearer {}", t.expose())
                .parse()
                .expect("tokens are printable ASCII (checked when read)");
            v.set_sensitive(true);
            v
        }))
    }

    pub fn wrap(&self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, self.bearer())
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A connection error with its whole chain of causes, and a hint when the cause is a known TLS
/// mistake (wrong CA, expired certificate, missing client certificate, TLS on one side only).
pub fn explain_connect_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        src = s.source();
    }
    // rustls names its errors both as enum variants and in words, depending on the version.
    let lower = text.to_lowercase().replace(' ', "");
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    let hint = if has(&["unknownissuer"]) {
        Some(
            "the coordinator's certificate is not signed by a CA this client trusts (check --tls-ca)",
        )
    } else if has(&["expired"]) {
        Some("a certificate has expired (check the dates with `openssl x509 -noout -dates`)")
    } else if has(&["notvalidyet"]) {
        Some(
            "a certificate is not valid yet (check the machine's clock and the certificate's dates)",
        )
    } else if has(&["notvalidforname"]) {
        Some(
            "the coordinator's certificate does not carry this host name (use --tls-domain, or a matching URL)",
        )
    } else if has(&["certificaterequired"]) {
        Some("the coordinator requires a client certificate (--tls-cert and --tls-key)")
    } else if has(&["unknownca", "badcertificate"]) {
        Some(
            "the coordinator refused this client's certificate (is it signed by the coordinator's --tls-client-ca?)",
        )
    } else if has(&["invalidcontenttype", "corruptmessage"]) {
        Some("the coordinator does not speak TLS at this address (use http://)")
    } else if has(&[
        "brokenpipe",
        "connectionreset",
        "connectionclosed",
        "connectionwasnotready",
        "streamclosed",
        "unexpectedeof",
    ]) {
        // With TLS 1.3 a refused client certificate is only seen as the connection closing.
        Some(
            "the coordinator closed the connection: if it requires mutual TLS, give a client certificate signed by its --tls-client-ca (--tls-cert and --tls-key); if it speaks TLS, use https://",
        )
    } else {
        None
    };
    match hint {
        Some(h) => format!("{text} ({h})"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_with_a_plain_url_are_refused() {
        let s = ClientSecurity {
            token: None,
            tls: Some(ClientTls::default()),
        };
        let err = s.endpoint("http://127.0.0.1:1").unwrap_err().to_string();
        assert!(err.contains("not https://"), "{err}");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let s = ClientSecurity {
            token: None,
            tls: Some(ClientTls {
                ca: Some("/nonexistent/ca.pem".into()),
                ..ClientTls::default()
            }),
        };
        let err = s.endpoint("https://127.0.0.1:1").unwrap_err().to_string();
        assert!(
            err.contains("cannot read TLS CA `/nonexistent/ca.pem`"),
            "{err}"
        );
    }

    #[test]
    fn known_tls_failures_get_a_hint_and_others_keep_their_text() {
        let explain = |m: &str| explain_connect_error(&std::io::Error::other(m.to_owned()));
        assert!(explain("invalid peer certificate: UnknownIssuer").contains("check --tls-ca"));
        assert!(
            explain("invalid peer certificate: certificate expired: ...").contains("has expired")
        );
        assert!(explain("received fatal alert: CertificateRequired").contains("--tls-cert"));
        // However the closing shows, the hint is the same.
        for closed in [
            "broken pipe",
            "connection closed",
            "connection reset by peer",
        ] {
            assert!(explain(closed).contains("--tls-client-ca"), "{closed}");
        }
        assert_eq!(explain("connection refused"), "connection refused");
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("10.0.0.1"));
        assert!(!is_loopback("example.com"));
    }
}
