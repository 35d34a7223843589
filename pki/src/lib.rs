//! Cluster PKI: the certificate authority, and the TLS configurations for Raft RPC (QUIC, mutual
//! TLS), the fleet link agent<->coordinator (QUIC, mutual TLS) and the HTTPS REST API (server
//! auth only; API clients present bearer tokens).
//!
//! Who a peer is lives in its certificate's Common Name (`coordinator:<id>`, `rack:<name>`,
//! `admin:<name>`, see [`Identity`]). Subject alternative names exist only so that a client can
//! verify the server by the address it dialled; authorization must never look at them. A CN is
//! only trustworthy after the TLS handshake has verified the chain to the cluster CA, which is
//! why [`quinn_peer_identity`] reads it from an established connection.
//!
//! Every rustls configuration is built with the ring provider passed explicitly, so no
//! process-wide default provider has to be installed (and aws-lc-rs is never pulled in).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, DnsName, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::prelude::FromDer;

/// ALPN for Raft RPC between coordinators.
pub const ALPN_RAFT: &[u8] = b"metalfleet-raft/1";
/// ALPN for the fleet link between rack agents and coordinators.
pub const ALPN_FLEET: &[u8] = b"metalfleet/1";

/// ALPN offered by the HTTPS API, preferred first.
const ALPN_HTTPS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Lifetime of a cluster CA.
const CA_VALIDITY_DAYS: i64 = 3650;

/// How far `notBefore` is set in the past, so that a peer whose clock lags ours (a freshly
/// booted machine before NTP has settled) does not reject a certificate issued a moment ago.
const NOT_BEFORE_BACKDATE: time::Duration = time::Duration::hours(1);

/// QUIC keep-alive: well inside the idle timeout so a quiet but healthy link is never reaped.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// QUIC idle timeout in milliseconds: how quickly a dead peer is noticed.
const QUIC_IDLE_TIMEOUT_MS: u32 = 5_000;

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A Common Name (or an [`Identity`] about to become one) does not have an allowed shape.
    #[error("invalid identity {cn:?}: {reason}")]
    InvalidIdentity { cn: String, reason: &'static str },
    /// The name part of a `rack:` or `admin:` identity breaks the shared naming rules.
    #[error("invalid identity {cn:?}")]
    InvalidIdentityName {
        cn: String,
        #[source]
        source: protocol::IdError,
    },
    /// The peer certificate has no Common Name, or more than one.
    #[error("certificate subject must carry exactly one common name, found {found}")]
    CommonNameCount { found: usize },
    /// The Common Name is not a string type we can read.
    #[error("certificate common name is not a readable string")]
    CommonNameEncoding {
        #[source]
        source: X509Error,
    },
    /// The cluster name cannot go into the CA's Common Name.
    #[error("invalid cluster name {name:?}: {reason}")]
    InvalidClusterName { name: String, reason: &'static str },
    /// A subject alternative name is neither an IP address nor a valid DNS name.
    #[error("invalid subject alternative name {san:?}")]
    InvalidSan {
        san: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The requested validity is zero or runs past what X.509 can encode.
    #[error("invalid certificate validity of {days} days")]
    InvalidValidity { days: u32 },
    /// An empty ALPN protocol id was given.
    #[error("ALPN protocol id must not be empty")]
    EmptyAlpn,
    /// Generating a key pair failed.
    #[error("generating {what} key pair")]
    KeyGeneration {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// A PEM document could not be decoded.
    #[error("decoding {what} PEM")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM document that should hold a certificate holds none.
    #[error("{what} PEM contains no CERTIFICATE block")]
    NoCertificate { what: &'static str },
    /// A certificate's DER could not be parsed.
    #[error("parsing {what}")]
    Certificate {
        what: &'static str,
        #[source]
        source: X509Error,
    },
    /// A private key could not be loaded.
    #[error("loading {what} private key")]
    Key {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// The certificate given as CA is not a CA certificate.
    #[error("certificate {subject:?} is not a CA (basic constraints missing or CA:FALSE)")]
    NotACa { subject: String },
    /// The CA certificate's name or key extensions cannot be used for issuing.
    #[error("reading issuer details of CA certificate {subject:?}")]
    CaExtensions {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    /// The CA private key does not belong to the CA certificate.
    #[error("CA private key does not match the public key of CA certificate {subject:?}")]
    CaKeyMismatch { subject: String },
    /// A certificate signing request could not be parsed.
    #[error("parsing certificate signing request")]
    Csr {
        #[source]
        source: X509Error,
    },
    /// The CSR's signature does not verify: the requester did not prove it holds the key.
    #[error("certificate signing request signature does not verify")]
    CsrSignature {
        #[source]
        source: X509Error,
    },
    /// The CSR's public key is of a kind we cannot put into a certificate.
    #[error("unsupported public key in certificate signing request")]
    CsrPublicKey {
        #[source]
        source: rcgen::Error,
    },
    /// Creating or signing a certificate or CSR failed.
    #[error("signing {what} for {subject:?}")]
    Sign {
        what: &'static str,
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused a configuration (protocol versions, certificate or key).
    #[error("building {what} TLS configuration")]
    Tls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    /// A CA certificate could not be added to a trust store.
    #[error("adding CA certificate to the {what} trust store")]
    TrustStore {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built.
    #[error("building client certificate verifier")]
    ClientVerifier {
        #[source]
        source: VerifierBuilderError,
    },
    /// The rustls configuration cannot be used for QUIC.
    #[error("building QUIC {what} configuration")]
    Quic {
        what: &'static str,
        #[source]
        source: NoInitialCipherSuite,
    },
    /// The QUIC peer presented no certificate chain we can read.
    #[error("QUIC peer {peer} presented no certificate")]
    NoPeerCertificate { peer: SocketAddr },
}

/// Who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A coordinator, by its Raft node id.
    Coordinator(u64),
    /// The rack agent serving the named rack.
    Rack(String),
    /// A named administrator (e.g. `metalctl` with a client certificate).
    Admin(String),
}

impl Identity {
    /// The Common Name that carries this identity.
    pub fn common_name(&self) -> String {
        match self {
            Identity::Coordinator(id) => format!("coordinator:{id}"),
            Identity::Rack(name) => format!("rack:{name}"),
            Identity::Admin(name) => format!("admin:{name}"),
        }
    }

    /// Parses a Common Name. Only the canonical form is accepted (no sign or leading zeros in a
    /// coordinator id, names following [`protocol::RackId`] / [`protocol::UserName`] rules), so
    /// one identity has exactly one spelling and comparisons in authorization code are exact.
    pub fn parse(cn: &str) -> Result<Identity, PkiError> {
        let invalid = |reason| PkiError::InvalidIdentity {
            cn: truncated(cn),
            reason,
        };
        let (kind, name) = cn.split_once(':').ok_or_else(|| {
            invalid("expected `coordinator:<id>`, `rack:<name>` or `admin:<name>`")
        })?;
        let bad_name = |source| PkiError::InvalidIdentityName {
            cn: truncated(cn),
            source,
        };
        match kind {
            "coordinator" => {
                let id: u64 = name
                    .parse()
                    .map_err(|_| invalid("coordinator id must be a decimal u64"))?;
                if id.to_string() != name {
                    return Err(invalid(
                        "coordinator id must be written without sign or leading zeros",
                    ));
                }
                Ok(Identity::Coordinator(id))
            }
            "rack" => {
                protocol::RackId::from_str(name).map_err(bad_name)?;
                Ok(Identity::Rack(name.to_owned()))
            }
            "admin" => {
                protocol::UserName::from_str(name).map_err(bad_name)?;
                Ok(Identity::Admin(name.to_owned()))
            }
            _ => Err(invalid("unknown identity kind")),
        }
    }

    /// The Common Name, after checking that it parses back to `self` (the variants are public,
    /// so a caller can build one with a name that could never be read back).
    fn checked_common_name(&self) -> Result<String, PkiError> {
        let cn = self.common_name();
        Identity::parse(&cn)?;
        Ok(cn)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.common_name())
    }
}

/// PEM-encoded certificate + private key.
#[derive(Clone)]
pub struct CertKeyPem {
    /// The certificate (optionally followed by intermediates), PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
}

impl fmt::Debug for CertKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKeyPem")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster certificate authority: signs every coordinator, rack agent and admin certificate.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// The CA's Common Name, kept for Debug and error messages.
    subject: String,
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority")
            .field("subject", &self.subject)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertAuthority {
    /// New self-signed CA (ECDSA P-256), CN "Metalfleet cluster CA <cluster_name>", valid 10
    /// years, CA basic constraints, key usage cert sign + crl sign.
    ///
    /// The path length is constrained to 0: this CA only ever signs end-entity certificates, so
    /// should it ever be made to sign a CA certificate, what that one signs is still refused.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        if cluster_name.is_empty() {
            return Err(PkiError::InvalidClusterName {
                name: String::new(),
                reason: "must not be empty",
            });
        }
        if cluster_name.chars().any(char::is_control) {
            return Err(PkiError::InvalidClusterName {
                name: truncated(cluster_name),
                reason: "must not contain control characters",
            });
        }
        let subject = format!("Metalfleet cluster CA {cluster_name}");
        let key = new_key("CA")?;

        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(&subject);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - NOT_BEFORE_BACKDATE;
        params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);

        let cert = params.self_signed(&key).map_err(|source| PkiError::Sign {
            what: "CA certificate",
            subject: subject.clone(),
            source,
        })?;
        Ok(CertAuthority {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            subject,
        })
    }

    /// Loads a CA stored earlier with [`CertAuthority::cert_pem`] and [`CertAuthority::key_pem`].
    /// Checks that the certificate is a CA and that the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        const WHAT: &str = "CA certificate";
        let der = first_cert_der(cert_pem, WHAT)?;
        let cert = parse_cert(&der, WHAT)?;
        let subject = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        if !cert.is_ca() {
            return Err(PkiError::NotACa { subject });
        }
        let key =
            KeyPair::from_pem(key_pem).map_err(|source| PkiError::Key { what: "CA", source })?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::CaKeyMismatch { subject });
        }
        let issuer =
            Issuer::from_ca_cert_der(&der, key).map_err(|source| PkiError::CaExtensions {
                subject: subject.clone(),
                source,
            })?;
        Ok(CertAuthority {
            issuer,
            cert_pem: cert_pem.to_owned(),
            subject,
        })
    }

    /// The CA certificate, PEM: the trust anchor handed to every member of the cluster.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PKCS#8 PEM), for the caller to seal and store.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate (new key generated here) for `identity`, SANs = the given DNS
    /// names / IP addresses (strings; parsed IPs become IP SANs, others DNS SANs), valid
    /// `validity_days`, EKU serverAuth+clientAuth.
    pub fn issue(
        &self,
        identity: &Identity,
        sans: &[String],
        validity_days: u32,
    ) -> Result<CertKeyPem, PkiError> {
        let params = leaf_params(identity, sans, validity_days)?;
        let key = new_key("leaf")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Sign {
                what: "leaf certificate",
                subject: identity.common_name(),
                source,
            })?;
        Ok(CertKeyPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a PEM CSR. Only the CSR's public key is used (after checking its signature, which
    /// proves the requester holds the private key): its subject and SANs are ignored and
    /// replaced by `identity` and `sans`, because the caller, not the requester, decides who the
    /// holder is. Returns the certificate PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        sans: &[String],
        validity_days: u32,
    ) -> Result<String, PkiError> {
        let params = leaf_params(identity, sans, validity_days)?;
        let der =
            CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|source| {
                PkiError::Pem {
                    what: "certificate signing request",
                    source,
                }
            })?;
        let (_, csr) = X509CertificationRequest::from_der(&der).map_err(|e| PkiError::Csr {
            source: nom_error(e),
        })?;
        csr.verify_signature()
            .map_err(|source| PkiError::CsrSignature { source })?;
        let public_key =
            rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
                .map_err(|source| PkiError::CsrPublicKey { source })?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|source| PkiError::Sign {
                what: "certificate from CSR",
                subject: identity.common_name(),
                source,
            })?;
        Ok(cert.pem())
    }
}

/// Generates a fresh key pair and a PEM CSR for `identity` (the key never leaves the caller).
/// Returns `(key_pem, csr_pem)`. The CSR carries no SANs: the CA decides them.
pub fn generate_csr(identity: &Identity) -> Result<(String, String), PkiError> {
    let cn = identity.checked_common_name()?;
    let key = new_key("CSR")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(&cn);
    let sign_err = |source| PkiError::Sign {
        what: "certificate signing request",
        subject: cn.clone(),
        source,
    };
    let csr = params.serialize_request(&key).map_err(sign_err)?;
    let csr_pem = csr.pem().map_err(sign_err)?;
    Ok((key.serialize_pem(), csr_pem))
}

/// SHA-256 fingerprint (lowercase hex) of the first certificate in a PEM string.
pub fn fingerprint(cert_pem: &str) -> Result<String, PkiError> {
    let der = first_cert_der(cert_pem, "certificate")?;
    Ok(fingerprint_der(der.as_ref()))
}

/// SHA-256 fingerprint (lowercase hex) of a DER certificate, e.g. a QUIC peer's.
pub fn fingerprint_der(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// Identity and certificate fingerprint of the peer of an established QUIC connection.
pub fn quinn_peer(conn: &quinn::Connection) -> Result<(Identity, String), PkiError> {
    let identity = quinn_peer_identity(conn)?;
    let fp = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|c| fingerprint_der(c.as_ref())))
        .unwrap_or_default();
    Ok((identity, fp))
}

/// Identity of a peer from its end-entity certificate DER (CN parsed with [`Identity::parse`]).
///
/// This does no chain verification: only call it on a certificate the TLS handshake has
/// already verified against the cluster CA.
pub fn identity_of(cert_der: &[u8]) -> Result<Identity, PkiError> {
    let cert = parse_cert(cert_der, "peer certificate")?;
    let mut names = cert.subject().iter_common_name();
    let (Some(cn), None) = (names.next(), names.next()) else {
        return Err(PkiError::CommonNameCount {
            found: cert.subject().iter_common_name().count(),
        });
    };
    let cn = cn
        .as_str()
        .map_err(|source| PkiError::CommonNameEncoding { source })?;
    Identity::parse(cn)
}

/// `notAfter` of the first certificate in a PEM string, as unix seconds (for renewal
/// decisions).
pub fn not_after(cert_pem: &str) -> Result<i64, PkiError> {
    let der = first_cert_der(cert_pem, "certificate")?;
    let cert = parse_cert(&der, "certificate")?;
    Ok(cert.validity().not_after.timestamp())
}

/// rustls server config requiring client certificates signed by `ca_pem`, presenting `leaf`,
/// with the given ALPN. TLS 1.3 only.
pub fn mtls_server_config(
    ca_pem: &str,
    leaf: &CertKeyPem,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, PkiError> {
    const WHAT: &str = "mutual-TLS server";
    check_alpn(alpn)?;
    let provider = ring_provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(trust_store(ca_pem, WHAT)?, provider.clone())
            .build()
            .map_err(|source| PkiError::ClientVerifier { source })?;
    let (chain, key) = load_leaf(leaf)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| PkiError::Tls { what: WHAT, source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| PkiError::Tls { what: WHAT, source })?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// rustls client config trusting only `ca_pem` (no public roots), presenting `leaf` as client
/// certificate, with the given ALPN. TLS 1.3 only. The server is verified against the server
/// name the caller connects with (the target's IP or DNS name), as usual.
pub fn mtls_client_config(
    ca_pem: &str,
    leaf: &CertKeyPem,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, PkiError> {
    const WHAT: &str = "mutual-TLS client";
    check_alpn(alpn)?;
    let roots = trust_store(ca_pem, WHAT)?;
    let (chain, key) = load_leaf(leaf)?;
    let mut config = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| PkiError::Tls { what: WHAT, source })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|source| PkiError::Tls { what: WHAT, source })?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// HTTPS API server: presents `leaf`, no client auth (API clients present bearer tokens), ALPN
/// h2 + http/1.1. Accepts TLS 1.2 and 1.3 (rustls' safe defaults), because API clients are
/// general-purpose HTTP tools rather than our own code.
pub fn https_server_config(leaf: &CertKeyPem) -> Result<rustls::ServerConfig, PkiError> {
    const WHAT: &str = "HTTPS server";
    let (chain, key) = load_leaf(leaf)?;
    let mut config = rustls::ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| PkiError::Tls { what: WHAT, source })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| PkiError::Tls { what: WHAT, source })?;
    config.alpn_protocols = ALPN_HTTPS.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// quinn server config over [`mtls_server_config`], with the cluster's keep-alive and idle
/// timeout.
pub fn quinn_server_config(
    ca_pem: &str,
    leaf: &CertKeyPem,
    alpn: &[u8],
) -> Result<quinn::ServerConfig, PkiError> {
    let tls = mtls_server_config(ca_pem, leaf, alpn)?;
    let quic = QuicServerConfig::try_from(tls).map_err(|source| PkiError::Quic {
        what: "server",
        source,
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// quinn client config over [`mtls_client_config`], with the cluster's keep-alive and idle
/// timeout.
pub fn quinn_client_config(
    ca_pem: &str,
    leaf: &CertKeyPem,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, PkiError> {
    let tls = mtls_client_config(ca_pem, leaf, alpn)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|source| PkiError::Quic {
        what: "client",
        source,
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The peer's [`Identity`] on an established quinn connection built with this module's
/// configs (so the chain has been verified against the cluster CA during the handshake).
pub fn quinn_peer_identity(conn: &quinn::Connection) -> Result<Identity, PkiError> {
    let missing = || PkiError::NoPeerCertificate {
        peer: conn.remote_address(),
    };
    let chain = conn
        .peer_identity()
        .ok_or_else(missing)?
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| missing())?;
    let leaf = chain.first().ok_or_else(missing)?;
    identity_of(leaf)
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(QUIC_KEEP_ALIVE))
        .max_idle_timeout(Some(quinn::VarInt::from_u32(QUIC_IDLE_TIMEOUT_MS).into()));
    Arc::new(transport)
}

fn check_alpn(alpn: &[u8]) -> Result<(), PkiError> {
    if alpn.is_empty() {
        return Err(PkiError::EmptyAlpn);
    }
    Ok(())
}

fn new_key(what: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::KeyGeneration { what, source })
}

fn common_name_dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A random positive 128-bit serial. rcgen's default derives the serial from the public key,
/// which would give every renewal of the same CSR key the same serial.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and always 16 bytes long once DER-encoded.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Parameters shared by every leaf: CN from `identity`, SANs, EKU serverAuth + clientAuth.
fn leaf_params(
    identity: &Identity,
    sans: &[String],
    validity_days: u32,
) -> Result<CertificateParams, PkiError> {
    let cn = identity.checked_common_name()?;
    let invalid_validity = PkiError::InvalidValidity {
        days: validity_days,
    };
    if validity_days == 0 {
        return Err(invalid_validity);
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now
        .checked_add(time::Duration::days(i64::from(validity_days)))
        .filter(|t| t.year() <= 9999)
        .ok_or(invalid_validity)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(&cn);
    params.subject_alt_names = sans
        .iter()
        .map(|s| parse_san(s))
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = now - NOT_BEFORE_BACKDATE;
    params.not_after = not_after;
    Ok(params)
}

fn parse_san(san: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = san.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |source: Box<dyn std::error::Error + Send + Sync>| PkiError::InvalidSan {
        san: truncated(san),
        source,
    };
    DnsName::try_from(san).map_err(|e| invalid(Box::new(e)))?;
    let name = san.try_into().map_err(|e| invalid(Box::new(e)))?;
    Ok(SanType::DnsName(name))
}

fn first_cert_der(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or(PkiError::NoCertificate { what })?
        .map_err(|source| PkiError::Pem { what, source })
}

fn parse_cert<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Certificate {
        what,
        source: nom_error(e),
    })?;
    Ok(cert)
}

fn nom_error(e: x509_parser::nom::Err<X509Error>) -> X509Error {
    match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
        x509_parser::nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
    }
}

fn trust_store(ca_pem: &str, what: &'static str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let der = der.map_err(|source| PkiError::Pem {
            what: "CA certificate",
            source,
        })?;
        roots
            .add(der)
            .map_err(|source| PkiError::TrustStore { what, source })?;
    }
    if roots.is_empty() {
        return Err(PkiError::NoCertificate {
            what: "CA certificate",
        });
    }
    Ok(Arc::new(roots))
}

fn load_leaf(
    leaf: &CertKeyPem,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    const WHAT: &str = "leaf certificate";
    let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PkiError::Pem { what: WHAT, source })?;
    if chain.is_empty() {
        return Err(PkiError::NoCertificate { what: WHAT });
    }
    let key =
        PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).map_err(|source| PkiError::Pem {
            what: "leaf private key",
            source,
        })?;
    Ok((chain, key))
}

/// Input echoed into an error, cut short so a hostile peer cannot flood the logs.
fn truncated(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::Ipv4Addr;

    use quinn::Endpoint;
    use x509_parser::extensions::GeneralName;

    use super::*;

    /// Generous bound for a loopback handshake; a hang fails the test instead of the suite.
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

    fn loopback_sans() -> Vec<String> {
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
    }

    fn rack(name: &str) -> Identity {
        Identity::Rack(name.to_owned())
    }

    fn first_der(pem: &str) -> CertificateDer<'static> {
        first_cert_der(pem, "test").unwrap()
    }

    /// Runs one QUIC handshake on loopback. Returns what the server saw (the client's identity,
    /// or the error) and what the client saw (the server's identity and the ALPN, or the error).
    async fn quic_handshake(
        server: quinn::ServerConfig,
        client: quinn::ClientConfig,
        server_name: &str,
    ) -> (
        Result<Identity, String>,
        Result<(Identity, Option<Vec<u8>>), String>,
    ) {
        let server = Endpoint::server(server, (Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let addr = server.local_addr().unwrap();
        let client_ep = Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();

        let server_side = async {
            let incoming = server.accept().await.ok_or("endpoint closed")?;
            let conn = incoming.await.map_err(|e| e.to_string())?;
            let identity = quinn_peer_identity(&conn).map_err(|e| e.to_string())?;
            Ok::<_, String>((identity, conn))
        };
        let client_side = async {
            let conn = client_ep
                .connect_with(client, addr, server_name)
                .unwrap()
                .await
                .map_err(|e| e.to_string())?;
            let identity = quinn_peer_identity(&conn).map_err(|e| e.to_string())?;
            let alpn = conn
                .handshake_data()
                .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .and_then(|d| d.protocol);
            Ok::<_, String>((identity, alpn, conn))
        };
        let (server_res, client_res) = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            tokio::join!(server_side, client_side)
        })
        .await
        .unwrap();

        // In TLS 1.3 the client finishes its side before the server has judged the client
        // certificate, so a rejected client only learns of it when the connection closes.
        let client_res = match client_res {
            Ok((identity, alpn, conn)) if server_res.is_err() => {
                let reason = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.closed())
                    .await
                    .unwrap();
                Err(format!(
                    "closed after handshake: {reason} ({identity}, {alpn:?})"
                ))
            }
            Ok((identity, alpn, _conn)) => Ok((identity, alpn)),
            Err(e) => Err(e),
        };
        (server_res.map(|(identity, _conn)| identity), client_res)
    }

    #[tokio::test]
    async fn issue_and_identity_round_trip() {
        for identity in [
            Identity::Coordinator(0),
            Identity::Coordinator(u64::MAX),
            rack("ams1-r12"),
            Identity::Admin("alice".to_owned()),
        ] {
            assert_eq!(Identity::parse(&identity.common_name()).unwrap(), identity);
        }
        for bad in [
            "",
            "coordinator",
            "coordinator:",
            "coordinator:+1",
            "coordinator:01",
            "coordinator:-1",
            "coordinator:18446744073709551616",
            "rack:",
            "rack:a b",
            "rack:a:b",
            "admin:../x",
            "node:1",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad:?} should not parse");
        }

        let ca = CertAuthority::generate("lab").unwrap();
        let identity = rack("ams1-r12");
        let leaf = ca
            .issue(
                &identity,
                &["10.0.0.7".to_owned(), "r12.ams1.example".to_owned()],
                30,
            )
            .unwrap();
        assert_eq!(identity_of(&first_der(&leaf.cert_pem)).unwrap(), identity);
        assert_eq!(
            identity_of(&first_der(ca.cert_pem()))
                .unwrap_err()
                .to_string(),
            "invalid identity \"Metalfleet cluster CA lab\": expected `coordinator:<id>`, \
             `rack:<name>` or `admin:<name>`"
        );

        let fp = fingerprint(&leaf.cert_pem).unwrap();
        assert_eq!(fp.len(), 64);
        assert!(fp.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
        assert_ne!(fp, fingerprint(ca.cert_pem()).unwrap());

        let now = OffsetDateTime::now_utc().unix_timestamp();
        let expires = not_after(&leaf.cert_pem).unwrap();
        assert!(
            (expires - (now + 30 * 86_400)).abs() < 60,
            "{expires} vs {now}"
        );
        let ca_expires = not_after(ca.cert_pem()).unwrap();
        assert!((ca_expires - (now + CA_VALIDITY_DAYS * 86_400)).abs() < 60);

        let leaf_der = first_der(&leaf.cert_pem);
        let (_, cert) = X509Certificate::from_der(leaf_der.as_ref()).unwrap();
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::IPAddress(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d).to_string(),
                GeneralName::DNSName(dns) => dns.to_string(),
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(sans, ["10.0.0.7", "r12.ams1.example"]);

        // Refused before anything is signed.
        assert!(matches!(
            ca.issue(&rack("a b"), &[], 30),
            Err(PkiError::InvalidIdentityName { .. })
        ));
        assert!(matches!(
            ca.issue(&identity, &["not a host".to_owned()], 30),
            Err(PkiError::InvalidSan { .. })
        ));
        assert!(matches!(
            ca.issue(&identity, &[], 0),
            Err(PkiError::InvalidValidity { .. })
        ));
        assert!(matches!(
            ca.issue(&identity, &[], u32::MAX),
            Err(PkiError::InvalidValidity { .. })
        ));

        // A stored CA loads back; a key from another CA is refused.
        let reloaded = CertAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(reloaded.cert_pem(), ca.cert_pem());
        let other = CertAuthority::generate("other").unwrap();
        assert!(matches!(
            CertAuthority::from_pem(ca.cert_pem(), &other.key_pem()),
            Err(PkiError::CaKeyMismatch { .. })
        ));
        assert!(matches!(
            CertAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem),
            Err(PkiError::NotACa { .. })
        ));
    }

    #[tokio::test]
    async fn csr_subject_is_replaced_by_the_given_identity() {
        let ca = CertAuthority::generate("lab").unwrap();
        let (key_pem, csr_pem) = generate_csr(&Identity::Admin("mallory".to_owned())).unwrap();
        let identity = rack("ams1-r12");
        let cert_pem = ca
            .sign_csr(&csr_pem, &identity, &["10.1.2.3".to_owned()], 30)
            .unwrap();
        assert_eq!(identity_of(&first_der(&cert_pem)).unwrap(), identity);

        // The certificate is for the requester's key.
        let der = first_der(&cert_pem);
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        let key = KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );

        assert!(matches!(
            ca.sign_csr("garbage", &identity, &[], 30),
            Err(PkiError::Pem { .. })
        ));
        // A CSR whose signature does not match its content proves nothing.
        let mut tampered = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01; // inside the signature
        use base64::Engine as _;
        let tampered_pem = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(&tampered)
        );
        assert!(matches!(
            ca.sign_csr(&tampered_pem, &identity, &[], 30),
            Err(PkiError::CsrSignature { .. })
        ));
    }

    #[tokio::test]
    async fn quic_mutual_tls_identifies_the_client() {
        let ca = CertAuthority::generate("lab").unwrap();
        let server_leaf = ca
            .issue(&Identity::Coordinator(1), &loopback_sans(), 1)
            .unwrap();
        // The client key never leaves the client; its certificate comes from the CA reloaded
        // from storage, which must chain exactly like the original.
        let reloaded = CertAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let (key_pem, csr_pem) = generate_csr(&Identity::Coordinator(2)).unwrap();
        let client_leaf = CertKeyPem {
            cert_pem: reloaded
                .sign_csr(&csr_pem, &Identity::Coordinator(2), &[], 1)
                .unwrap(),
            key_pem,
        };

        let (server_saw, client_saw) = quic_handshake(
            quinn_server_config(ca.cert_pem(), &server_leaf, ALPN_RAFT).unwrap(),
            quinn_client_config(ca.cert_pem(), &client_leaf, ALPN_RAFT).unwrap(),
            "127.0.0.1",
        )
        .await;
        assert_eq!(server_saw.unwrap(), Identity::Coordinator(2));
        let (server_identity, alpn) = client_saw.unwrap();
        assert_eq!(server_identity, Identity::Coordinator(1));
        assert_eq!(alpn.as_deref(), Some(ALPN_RAFT));
    }

    #[tokio::test]
    async fn quic_refuses_client_cert_from_another_ca() {
        let ca = CertAuthority::generate("lab").unwrap();
        let rogue = CertAuthority::generate("rogue").unwrap();
        let server_leaf = ca
            .issue(&Identity::Coordinator(1), &loopback_sans(), 1)
            .unwrap();
        let client_leaf = rogue.issue(&rack("ams1-r12"), &[], 1).unwrap();

        let (server_saw, client_saw) = quic_handshake(
            quinn_server_config(ca.cert_pem(), &server_leaf, ALPN_FLEET).unwrap(),
            // The client trusts the right CA; only its own certificate is foreign.
            quinn_client_config(ca.cert_pem(), &client_leaf, ALPN_FLEET).unwrap(),
            "127.0.0.1",
        )
        .await;
        let server_err = server_saw.unwrap_err();
        assert!(server_err.contains("UnknownIssuer"), "{server_err}");
        assert!(client_saw.is_err(), "client kept {client_saw:?}");
    }

    #[tokio::test]
    async fn quic_client_refuses_server_from_another_ca() {
        let ca = CertAuthority::generate("lab").unwrap();
        let other = CertAuthority::generate("other").unwrap();
        let server_leaf = ca
            .issue(&Identity::Coordinator(1), &loopback_sans(), 1)
            .unwrap();
        let client_leaf = other.issue(&Identity::Coordinator(2), &[], 1).unwrap();

        let (server_saw, client_saw) = quic_handshake(
            // The server would accept the client, so only the client's check can stop this.
            quinn_server_config(other.cert_pem(), &server_leaf, ALPN_RAFT).unwrap(),
            quinn_client_config(other.cert_pem(), &client_leaf, ALPN_RAFT).unwrap(),
            "127.0.0.1",
        )
        .await;
        let client_err = client_saw.unwrap_err();
        assert!(client_err.contains("UnknownIssuer"), "{client_err}");
        assert!(server_saw.is_err(), "server accepted {server_saw:?}");
    }

    #[tokio::test]
    async fn quic_client_checks_the_server_name() {
        let ca = CertAuthority::generate("lab").unwrap();
        let server_leaf = ca
            .issue(&Identity::Coordinator(1), &loopback_sans(), 1)
            .unwrap();
        let client_leaf = ca.issue(&Identity::Coordinator(2), &[], 1).unwrap();

        // Dialled as a coordinator whose certificate does not name this address.
        let (_, client_saw) = quic_handshake(
            quinn_server_config(ca.cert_pem(), &server_leaf, ALPN_RAFT).unwrap(),
            quinn_client_config(ca.cert_pem(), &client_leaf, ALPN_RAFT).unwrap(),
            "10.9.9.9",
        )
        .await;
        let client_err = client_saw.unwrap_err();
        assert!(client_err.contains("not valid for name"), "{client_err}");
    }

    #[test]
    fn authority_can_be_shared_between_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CertAuthority>();
        assert_send_sync::<PkiError>();
    }

    #[tokio::test]
    async fn debug_never_prints_private_keys() {
        let ca = CertAuthority::generate("lab").unwrap();
        let leaf = ca.issue(&Identity::Coordinator(1), &[], 1).unwrap();
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        for debug in [format!("{leaf:?}"), format!("{ca:?}")] {
            assert!(!debug.contains("PRIVATE KEY"), "{debug}");
            assert!(debug.contains("<redacted>"), "{debug}");
        }
    }

    #[test]
    fn https_config_offers_h2_and_http1_without_client_auth() {
        let ca = CertAuthority::generate("lab").unwrap();
        let leaf = ca
            .issue(&Identity::Coordinator(1), &loopback_sans(), 1)
            .unwrap();
        let config = https_server_config(&leaf).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(matches!(
            mtls_server_config(ca.cert_pem(), &leaf, b""),
            Err(PkiError::EmptyAlpn)
        ));
        assert!(matches!(
            mtls_client_config("", &leaf, ALPN_FLEET),
            Err(PkiError::NoCertificate { .. })
        ));
    }
}
