//! `https://` control URLs (the `tls` feature): ureq with rustls, trusting the system's CA
//! bundle or the PEM file named by `LANPARTY_CA_FILE`. Only the transport: the caller builds
//! paths and bodies and reads status codes (`control::http`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{PemItem, RootCerts, TlsConfig};

use super::http::CA_FILE_ENV;
use super::http_client::{Method, Reply, CONNECT_TIMEOUT};
use super::ControlError;
use crate::wire::http::MAX_RESPONSE_BODY_BYTES;

/// Where Linux systems keep their trusted roots as one PEM bundle (Debian, Ubuntu, Alpine,
/// OpenWrt's ca-bundle; Fedora, RHEL; openSUSE). The binary carries no roots of its own: that
/// keeps it small, and the system's bundle is the one its owner keeps up to date.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// An agent for `https://` servers, trusting `LANPARTY_CA_FILE` or the system's roots.
pub fn agent() -> Result<ureq::Agent, ControlError> {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .tls_config(trusted_roots()?)
        .build();
    Ok(config.into())
}

/// `LANPARTY_CA_FILE`, else the system's bundle.
fn trusted_roots() -> Result<TlsConfig, ControlError> {
    if let Some(path) = std::env::var_os(CA_FILE_ENV) {
        return roots_from(Path::new(&path), CA_FILE_ENV);
    }
    SYSTEM_CA_BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(|p| roots_from(p, "system CA bundle"))
        .unwrap_or_else(|| {
            Err(ControlError::Invalid(format!(
                "https needs trusted root certificates: install ca-certificates (or ca-bundle), \
                 or name a PEM file with {CA_FILE_ENV}"
            )))
        })
}

fn roots_from(path: &Path, what: &str) -> Result<TlsConfig, ControlError> {
    let invalid = |why: String| ControlError::Invalid(format!("{what} {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(cert)) => Some(cert),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(invalid("no PEM certificates in it".into()));
    }
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(certs)))
        .build())
}

/// One request through `agent`; the error is the cause as a person reads it. One code path
/// for every method (the http crate's request through `Agent::run`): that keeps ureq's share
/// of the binary smaller than its GET and POST builders would.
pub fn request(
    agent: &ureq::Agent,
    url: &str,
    method: Method,
    bearer: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<Reply, String> {
    use ureq::http;
    let cause = |e: ureq::Error| {
        let cause = e.to_string();
        cause.strip_prefix("io: ").unwrap_or(&cause).to_string()
    };
    let mut builder = http::Request::builder()
        .method(match method {
            Method::Get => http::Method::GET,
            Method::Post => http::Method::POST,
            Method::Delete => http::Method::DELETE,
        })
        .uri(url);
    if method == Method::Post {
        builder = builder.header("Content-Type", "application/json");
    }
    if let Some(token) = bearer {
        builder = builder.header("Authorization", format!("Bearer {token}"));
    }
    let request = builder.body(body).map_err(|e| e.to_string())?;
    let request = agent
        .configure_request(request)
        .timeout_global(Some(timeout))
        .build();
    let mut response = agent.run(request).map_err(cause)?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BODY_BYTES as u64)
        .read_to_vec()
        .map_err(cause)?;
    Ok(Reply { status, body })
}
