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

/// Sends one request to each coordinator in `bases` in turn, as built by `build`, until one
/// answers with anything but 503; returns that base and its response. A transport failure
/// (connect error, timeout, reset) or a 503 moves on to the next coordinator: safe for writes
/// because `metalctl` sends the same `Idempotency-Key` with every attempt. When all fail,
/// returns every coordinator tried and why.
pub async fn send_failover<F>(
    bases: &[String],
    build: F,
) -> Result<(String, reqwest::Response), Vec<super::error::Attempt>>
where
    F: Fn(&str) -> Result<reqwest::RequestBuilder, String>,
{
    let mut tried = Vec::new();
    for base in bases {
        let reason = match build(base) {
            Err(e) => e,
            Ok(req) => match req.send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    match serde_json::from_str::<protocol::error::ErrorBody>(&text) {
                        Ok(b) => format!("{status} {}: {}", b.code, b.message),
                        Err(_) => format!("{status} {}", text.trim()),
                    }
                }
                Ok(resp) => return Ok((base.clone(), resp)),
                Err(e) => transport_reason(&e),
            },
        };
        tried.push(super::error::Attempt {
            url: base.clone(),
            reason,
        });
    }
    Err(tried)
}

/// A transport error as its cause chain (`tcp connect error: Connection refused (os error
/// 111)`); reqwest's own outermost message only repeats the URL.
pub fn transport_reason(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        let s = err.to_string();
        // hyper-util's "client error (Connect)" only says which stage its cause happened in.
        if !s.starts_with("client error (") && parts.last() != Some(&s) {
            parts.push(s);
        }
        cur = err.source();
    }
    if e.is_timeout() && !parts.iter().any(|p| p.contains("timed out")) {
        parts.push("timed out".to_owned());
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}
