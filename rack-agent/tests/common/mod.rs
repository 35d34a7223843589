//! Helpers shared by the agent's in-process tests: a config in a temporary directory, a
//! locally issued identity, and polling instead of sleeping.

#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use rack_agent::config::Config;
use rack_agent::identity;

/// Writes `agent.toml` into `dir` and loads it.
pub fn config(dir: &Path, coordinators: &[String], extra: &str) -> Config {
    let list: Vec<String> = coordinators.iter().map(|c| format!("{c:?}")).collect();
    let text = format!(
        "rack = \"ams1-r12\"\ndata_dir = \"{}\"\ncoordinators = [{}]\nstatus_interval_secs = 1\n{extra}",
        dir.join("data").display(),
        list.join(", ")
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

/// Gives the agent a certificate from `ca` the way enrollment would (key generated locally).
pub fn issue_identity(config: &Config, ca: &pki::CertAuthority) {
    let who = pki::Identity::Rack(config.rack.to_string());
    let (key_pem, csr_pem) = pki::generate_csr(&who).unwrap();
    let cert_pem = ca.sign_csr(&csr_pem, &who, &[], 1).unwrap();
    identity::install_ca(&config.ca_cert, ca.cert_pem()).unwrap();
    identity::install_pair(config, &cert_pem, &key_pem).unwrap();
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `secs` seconds.
pub async fn poll<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
