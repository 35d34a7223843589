//! HTTP client used by `metalctl` and by `coordinator join`: HTTPS trusting the cluster CA,
//! failing over across the configured coordinators.

/// Builds a reqwest client that trusts only `ca_pem` (or the system roots when `None`).
pub fn http_client(ca_pem: Option<&str>) -> Result<reqwest::Client, reqwest::Error> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(60));
    if let Some(pem) = ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())? {
            b = b.add_root_certificate(cert);
        }
        b = b.tls_built_in_root_certs(false);
    }
    b.build()
}
