//! Node identity: certificates, the dev CA helper, and the TLS configurations.
//!
//! **Naming rule.** A node certificate names its node id as exactly one DNS
//! subject-alternative name `node-<id>.ha` (decimal id, no leading zeros,
//! id ≥ 1), see [`node_dns_name`]. Using a DNS name lets the dialing side use
//! rustls' ordinary server-name check: connecting to node 3 verifies that the
//! answering certificate is valid for `node-3.ha`. The accepting side learns
//! the peer's id by parsing that name out of the verified client certificate
//! ([`node_id_from_cert`]); the address a connection comes from is never used.
//!
//! Both sides require TLS 1.3, a chain to the cluster CA that is valid now
//! (expired or not-yet-valid certificates fail the handshake), and ALPN
//! [`ALPN`]. Everything uses the *ring* crypto provider, passed explicitly.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ha_core::NodeId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The ALPN protocol id: protocol `ha`, wire version 1.
pub const ALPN: &[u8] = b"ha/1";
/// Suffix of every node DNS name.
pub const NODE_NAME_SUFFIX: &str = ".ha";
/// Prefix of every node DNS name.
pub const NODE_NAME_PREFIX: &str = "node-";
/// Largest certificate (DER bytes) whose names we parse.
pub const MAX_CERT_BYTES: usize = 64 << 10;

/// Why an identity could not be built, loaded or verified.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// PEM input could not be parsed.
    #[error("invalid PEM ({what}): {detail}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Parser message.
        detail: String,
    },
    /// rustls refused the configuration (bad key, bad CA …).
    #[error("TLS configuration refused: {0}")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls configuration.
    #[error("QUIC crypto configuration refused: {0}")]
    Quic(String),
    /// A certificate does not name exactly one valid node id.
    #[error("certificate names no node id: {0}")]
    NoNodeId(String),
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ReservedId,
}

/// The DNS name a certificate carries for `id`: `node-<id>.ha`.
pub fn node_dns_name(id: NodeId) -> String {
    format!("{NODE_NAME_PREFIX}{}{NODE_NAME_SUFFIX}", id.0)
}

/// Parses `node-<id>.ha` (strictly: decimal, no sign, no leading zero, id ≥ 1).
pub fn parse_node_dns_name(name: &str) -> Option<NodeId> {
    let digits = name
        .strip_prefix(NODE_NAME_PREFIX)?
        .strip_suffix(NODE_NAME_SUFFIX)?;
    if digits.is_empty()
        || digits.len() > 20
        || digits.starts_with('0')
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse::<u64>().ok().map(NodeId)
}

/// The node id a (CA-verified) certificate names: its single `node-<id>.ha`
/// DNS SAN. Refuses certificates with none or with several such names.
pub fn node_id_from_cert(cert: &CertificateDer<'_>) -> Result<NodeId, IdentityError> {
    if cert.len() > MAX_CERT_BYTES {
        return Err(IdentityError::NoNodeId(format!(
            "certificate of {} bytes exceeds {MAX_CERT_BYTES}",
            cert.len()
        )));
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityError::NoNodeId(format!("unparseable certificate: {e}")))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityError::NoNodeId(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| IdentityError::NoNodeId("no subjectAltName".into()))?;
    let mut found: Option<NodeId> = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name
            && let Some(id) = parse_node_dns_name(dns)
        {
            if found.is_some_and(|f| f != id) {
                return Err(IdentityError::NoNodeId(
                    "certificate names several node ids".into(),
                ));
            }
            found = Some(id);
        }
    }
    found.ok_or_else(|| IdentityError::NoNodeId("no node-<id>.ha DNS name".into()))
}

/// Validity window of a generated certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start, as time since the Unix epoch.
    pub not_before: Duration,
    /// End, as time since the Unix epoch.
    pub not_after: Duration,
}

impl Validity {
    /// From one hour ago (tolerates clock skew) until `days` from now.
    pub fn days_from_now(days: u64) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            not_before: now.saturating_sub(Duration::from_secs(3600)),
            not_after: now.saturating_add(Duration::from_secs(days.saturating_mul(86_400))),
        }
    }

    fn apply(&self, params: &mut rcgen::CertificateParams) -> Result<(), IdentityError> {
        let to_dt = |d: Duration| {
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            time::OffsetDateTime::from_unix_timestamp(secs)
                .map_err(|e| IdentityError::NoNodeId(format!("validity out of range: {e}")))
        };
        params.not_before = to_dt(self.not_before)?;
        params.not_after = to_dt(self.not_after)?;
        Ok(())
    }
}

/// A development cluster CA that issues node certificates. For production
/// use your own PKI; the transport only needs the CA certificate and each
/// node's chain and key ([`NodeIdentity`]).
pub struct DevCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    key_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A fresh CA (ECDSA P-256) named `common_name`, valid for `validity`.
    pub fn generate(common_name: &str, validity: Validity) -> Result<Self, IdentityError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        validity.apply(&mut params)?;
        let key = rcgen::KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key)?;
        Ok(Self { issuer, key_pem })
    }

    /// The CA certificate (DER), what every node trusts.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA private key as PKCS#8 PEM (keep it off the nodes).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for node `id` (SAN `node-<id>.ha`, usable as
    /// both TLS client and server), with a fresh key.
    pub fn issue(&self, id: NodeId, validity: Validity) -> Result<NodeIdentity, IdentityError> {
        if id == NodeId(0) {
            return Err(IdentityError::ReservedId);
        }
        let mut params = rcgen::CertificateParams::new(vec![node_dns_name(id)])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node_dns_name(id));
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params)?;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(NodeIdentity {
            node_id: id,
            cert_chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            ca: self.cert_der(),
        })
    }
}

/// What one node needs to speak on the cluster: its certificate chain and
/// key, and the cluster CA it trusts.
#[derive(Debug)]
pub struct NodeIdentity {
    /// The id this node claims (must match its certificate).
    pub node_id: NodeId,
    /// Leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// The cluster CA certificate.
    pub ca: CertificateDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id,
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl NodeIdentity {
    /// Loads an identity from PEM text (chain, key, CA) and checks that the
    /// leaf names `node_id`.
    pub fn from_pem(
        node_id: NodeId,
        cert_chain_pem: &str,
        key_pem: &str,
        ca_pem: &str,
    ) -> Result<Self, IdentityError> {
        let pem_err = |what| {
            move |e: rustls::pki_types::pem::Error| IdentityError::Pem {
                what,
                detail: e.to_string(),
            }
        };
        let cert_chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err("certificate chain"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err("key"))?;
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(pem_err("CA"))?;
        let ident = Self {
            node_id,
            cert_chain,
            key,
            ca,
        };
        ident.check_names_self()?;
        Ok(ident)
    }

    /// The leaf certificate as PEM.
    pub fn cert_chain_pem(&self) -> String {
        self.cert_chain
            .iter()
            .map(|c| der_to_pem("CERTIFICATE", c))
            .collect()
    }

    /// The private key as PEM.
    pub fn key_pem(&self) -> String {
        der_to_pem("PRIVATE KEY", self.key.secret_der())
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> String {
        der_to_pem("CERTIFICATE", &self.ca)
    }

    /// Checks that the leaf certificate names [`Self::node_id`].
    pub fn check_names_self(&self) -> Result<(), IdentityError> {
        if self.node_id == NodeId(0) {
            return Err(IdentityError::ReservedId);
        }
        let leaf = self
            .cert_chain
            .first()
            .ok_or_else(|| IdentityError::NoNodeId("empty certificate chain".into()))?;
        let named = node_id_from_cert(leaf)?;
        if named != self.node_id {
            return Err(IdentityError::NoNodeId(format!(
                "certificate names node {named}, identity claims node {}",
                self.node_id
            )));
        }
        Ok(())
    }
}

fn der_to_pem(label: &str, der: &[u8]) -> String {
    // Base64 with 64-column lines (RFC 7468).
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = match chunk.len() {
            1 => u32::from(chunk[0]) << 16,
            2 => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8),
            _ => (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]),
        };
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The ring crypto provider every config here is built with.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default rustls provider if none is
/// installed yet (other rustls users in the process then agree with us).
/// The configs built here pass the provider explicitly either way.
pub fn install_ring_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<rustls::RootCertStore>, IdentityError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// rustls server config: TLS 1.3, client certificates required and verified
/// against the cluster CA, ALPN `ha/1`.
pub fn server_tls_config(ident: &NodeIdentity) -> Result<rustls::ServerConfig, IdentityError> {
    let provider = crypto_provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(&ident.ca)?,
        provider.clone(),
    )
    .build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(ident.cert_chain.clone(), ident.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// rustls client config: TLS 1.3, server verified against the cluster CA
/// (and, per connection, against the dialed node's name), presents this
/// node's certificate, ALPN `ha/1`.
pub fn client_tls_config(ident: &NodeIdentity) -> Result<rustls::ClientConfig, IdentityError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&ident.ca)?)
        .with_client_auth_cert(ident.cert_chain.clone(), ident.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_name_round_trip_and_strictness() {
        assert_eq!(node_dns_name(NodeId(42)), "node-42.ha");
        assert_eq!(parse_node_dns_name("node-42.ha"), Some(NodeId(42)));
        for bad in [
            "node-0.ha",
            "node-042.ha",
            "node-.ha",
            "node-+4.ha",
            "node-4.ha.evil",
            "xnode-4.ha",
            "node-99999999999999999999.ha",
        ] {
            assert_eq!(parse_node_dns_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn issued_cert_names_its_node_and_pem_round_trips() {
        let ca = DevCa::generate("test CA", Validity::days_from_now(1)).unwrap();
        let ident = ca.issue(NodeId(7), Validity::days_from_now(1)).unwrap();
        assert_eq!(node_id_from_cert(&ident.cert_chain[0]).unwrap(), NodeId(7));
        let back = NodeIdentity::from_pem(
            NodeId(7),
            &ident.cert_chain_pem(),
            &ident.key_pem(),
            &ca.cert_pem(),
        )
        .unwrap();
        assert_eq!(back.cert_chain, ident.cert_chain);
        assert_eq!(back.ca, ident.ca);
        assert_eq!(back.key.secret_der(), ident.key.secret_der());
        // Claiming another id with this certificate is refused.
        let err = NodeIdentity::from_pem(
            NodeId(8),
            &ident.cert_chain_pem(),
            &ident.key_pem(),
            &ca.cert_pem(),
        );
        assert!(matches!(err, Err(IdentityError::NoNodeId(_))));
        assert!(matches!(
            ca.issue(NodeId(0), Validity::days_from_now(1)),
            Err(IdentityError::ReservedId)
        ));
    }

    #[test]
    fn garbage_certificate_is_an_error() {
        let der = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02]);
        assert!(matches!(
            node_id_from_cert(&der),
            Err(IdentityError::NoNodeId(_))
        ));
        assert!(matches!(
            NodeIdentity::from_pem(NodeId(1), "junk", "junk", "junk"),
            Err(IdentityError::Pem { .. })
        ));
    }
}
