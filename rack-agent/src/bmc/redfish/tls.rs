//! TLS for Redfish: a rustls client config per BMC that verifies against a CA bundle, accepts
//! anything (`insecure`, lab only), or accepts exactly one pinned certificate (self-signed BMC
//! certificates, which is what most BMCs ship with).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::bmc::config::RedfishVerify;

/// The text our pin verifier puts in its error, so the driver can tell a pin mismatch apart.
pub const PIN_MISMATCH: &str = "certificate does not match the pinned SHA-256 fingerprint";

/// A client config for `verify`; `Err` says what is wrong (unreadable or empty CA bundle).
pub fn client_config(verify: &RedfishVerify) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let config = match verify {
        RedfishVerify::Ca(path) => {
            let roots = load_roots(path)?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        RedfishVerify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                provider,
                pin: None,
            }))
            .with_no_client_auth(),
        RedfishVerify::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                provider,
                pin: Some(*pin),
            }))
            .with_no_client_auth(),
    };
    Ok(config)
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
    for cert in iter {
        let cert = cert.map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
        // Bundles such as Debian's hold a few certificates rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "CA bundle {} holds no usable certificate",
            path.display()
        ));
    }
    Ok(roots)
}

/// Accepts the pinned certificate (or, without a pin, any certificate); handshake signatures
/// are still verified, so the peer must hold the certificate's key.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    pin: Option<[u8; 32]>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) => {
                let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
                if got == pin {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "{PIN_MISMATCH} (presented {})",
                        hex::encode(got)
                    )))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
