//! Peer certificates: the `ha-node certs` generator, loading a member's
//! identity from PEM files, and the insecure development identity.
//!
//! Every member certificate names the member's node id as the DNS SAN
//! `node-<id>.ha` (the transport's rule, see `ha_transport_quic::identity`):
//! the transport authenticates a peer as that id, and the member table
//! decides what the id may do (a removed id is refused everywhere).
//!
//! - **Founding members**: ids derive from names ([`crate::ids`]), so
//!   `ha-node certs --names n1,n2,n3 --initial-cluster-token T --out DIR`
//!   writes the CA and every founder's certificate before anything runs.
//! - **Members added later** get an id the cluster assigns when it applies
//!   the `MemberAdd` (never an id used before). `etcdctl member add` prints
//!   it; then `ha-node certs --ca-dir DIR --member-ids <hex id> --out DIR2
//!   --initial-cluster-token T` issues `member-<hex id>.pem` with the same
//!   CA, and the new member is started with it and
//!   `--initial-cluster-state existing`: it takes its id from the
//!   certificate (see [`cert_member_id`]). A certificate of a removed member
//!   is thus useless: its id is a tombstone.
//!
//! ## `--peer-insecure-dev-tls`
//!
//! Every member derives the *same* Ed25519 CA key from the cluster token
//! ([`dev_ca_seed`]) and issues itself a certificate for its id. Peers then
//! speak TLS 1.3 with certificates like in production, but **anyone who
//! knows the cluster token can mint a member certificate**: the token is a
//! shared secret at best, usually not even that. Use it on a laptop or in
//! CI, never on a network you do not control. The node logs a warning.

use std::path::{Path, PathBuf};

use ha_core::NodeId;
use ha_transport_quic::{DevCa, IdentityError, NodeIdentity, Validity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::ids;

/// Most members `ha-node certs` generates at once.
pub const MAX_CERT_MEMBERS: usize = 64;
/// Largest PEM file read, in bytes.
pub const MAX_PEM_FILE_BYTES: u64 = 256 << 10;
/// Validity of generated member certificates, in days.
pub const DEFAULT_VALIDITY_DAYS: u64 = 365;

/// Why certificates could not be generated or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Certificate generation or parsing failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// rcgen failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A PEM file is larger than [`MAX_PEM_FILE_BYTES`].
    #[error("{path}: {size} bytes is more than the limit of {MAX_PEM_FILE_BYTES} for a PEM file")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
}

/// Arguments of `ha-node certs`.
#[derive(clap::Args, Clone, Debug)]
pub struct CertsArgs {
    /// Generate certificates for members named node1..nodeN.
    #[arg(long, conflicts_with = "names")]
    pub nodes: Option<usize>,
    /// Comma-separated member names (the `--name` each member is started with).
    #[arg(long)]
    pub names: Option<String>,
    /// Directory to write the files into (created; existing files are not overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Issue certificates for members added at run time instead: their ids
    /// as `member add` printed them (hex, comma separated), signed by the CA
    /// in `--ca-dir`. Files: `member-<id hex>.pem`, `member-<id hex>-key.pem`.
    #[arg(long, requires = "ca_dir", conflicts_with_all = ["nodes", "names"])]
    pub member_ids: Option<String>,
    /// Directory holding `ca.pem` and `ca-key.pem` of an earlier
    /// `ha-node certs` run (for `--member-ids`).
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// The `--initial-cluster-token` the members will use (ids depend on it).
    #[arg(long, default_value = crate::config::DEFAULT_TOKEN)]
    pub initial_cluster_token: String,
    /// Validity of the member certificates, in days.
    #[arg(long, default_value_t = DEFAULT_VALIDITY_DAYS)]
    pub validity_days: u64,
}

/// What `ha-node certs` wrote for one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedMember {
    /// Member name.
    pub name: String,
    /// Its node id.
    pub id: NodeId,
    /// Certificate file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
}

impl CertsArgs {
    /// The ids of `--member-ids`, checked (hex, 1..=[`ids::MEMBER_ID_MAX`],
    /// no repeats).
    pub fn member_ids(&self) -> Result<Vec<NodeId>, CertError> {
        let Some(list) = &self.member_ids else {
            return Ok(Vec::new());
        };
        let texts: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if texts.is_empty() || texts.len() > MAX_CERT_MEMBERS {
            return Err(CertError::Invalid(format!(
                "--member-ids: between 1 and {MAX_CERT_MEMBERS} ids, got {}",
                texts.len()
            )));
        }
        let mut ids_out = Vec::with_capacity(texts.len());
        for t in texts {
            let id = ids::parse_member_id(t)
                .map_err(|e| CertError::Invalid(format!("--member-ids: {e}")))?;
            if ids_out.contains(&id) {
                return Err(CertError::Invalid(format!("--member-ids: {t} given twice")));
            }
            ids_out.push(id);
        }
        Ok(ids_out)
    }

    /// The member names asked for.
    pub fn member_names(&self) -> Result<Vec<String>, CertError> {
        let names: Vec<String> = match (&self.nodes, &self.names) {
            (Some(n), None) => (1..=*n).map(|i| format!("node{i}")).collect(),
            (None, Some(list)) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            _ => {
                return Err(CertError::Invalid("give --nodes N or --names a,b,c".into()));
            }
        };
        if names.is_empty() || names.len() > MAX_CERT_MEMBERS {
            return Err(CertError::Invalid(format!(
                "between 1 and {MAX_CERT_MEMBERS} members, got {}",
                names.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in &names {
            if n.is_empty()
                || n.len() > crate::config::MAX_NAME_BYTES
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(CertError::Invalid(format!(
                    "member name {n:?}: 1..={} bytes of letters, digits, '-', '_', '.'",
                    crate::config::MAX_NAME_BYTES
                )));
            }
            if !seen.insert(n.clone()) {
                return Err(CertError::Invalid(format!("member name {n:?} given twice")));
            }
        }
        Ok(names)
    }
}

fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    use std::io::Write;
    let io = |error| CertError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// The CA common name `ha-node certs` gives the CA of cluster `token`
/// (issuing with an existing CA rebuilds the issuer name from it).
fn ca_common_name(token: &str) -> String {
    format!("ha dev CA ({token})")
}

/// Generates a dev CA and one certificate per member into `args.out`:
/// `ca.pem`, `ca-key.pem`, `<name>.pem`, `<name>-key.pem`, and
/// `members.txt` (name, id); with `--member-ids`, certificates for added
/// members signed by the CA of `--ca-dir` instead. Refuses to overwrite
/// existing files.
pub fn generate(args: &CertsArgs) -> Result<Vec<IssuedMember>, CertError> {
    if args.member_ids.is_some() {
        return issue_added(args);
    }
    let names = args.member_names()?;
    check_validity_and_token(args)?;
    let token = &args.initial_cluster_token;
    std::fs::create_dir_all(&args.out).map_err(|error| CertError::Io {
        path: args.out.clone(),
        error,
    })?;
    let ca = DevCa::generate(
        &ca_common_name(token),
        Validity::days_from_now(args.validity_days.saturating_add(1)),
    )?;
    let out = &args.out;
    write_new(&out.join("ca.pem"), &ca.cert_pem(), false)?;
    write_new(&out.join("ca-key.pem"), ca.key_pem(), true)?;
    let mut issued = Vec::with_capacity(names.len());
    let mut listing =
        String::from("# name node-id (hex) -- certificates name node-<decimal id>.ha\n");
    for name in names {
        let id = ids::member_id(token, &name);
        let ident = ca.issue(id, Validity::days_from_now(args.validity_days))?;
        let cert = out.join(format!("{name}.pem"));
        let key = out.join(format!("{name}-key.pem"));
        write_new(&cert, &ident.cert_chain_pem(), false)?;
        write_new(&key, &ident.key_pem(), true)?;
        listing.push_str(&format!("{name} {:x}\n", id.0));
        issued.push(IssuedMember {
            name,
            id,
            cert,
            key,
        });
    }
    write_new(&out.join("members.txt"), &listing, false)?;
    Ok(issued)
}

fn check_validity_and_token(args: &CertsArgs) -> Result<(), CertError> {
    if args.validity_days == 0 || args.validity_days > 36_500 {
        return Err(CertError::Invalid(
            "--validity-days must be in 1..=36500".into(),
        ));
    }
    let token = &args.initial_cluster_token;
    if token.is_empty() || token.len() > crate::config::MAX_TOKEN_BYTES {
        return Err(CertError::Invalid(format!(
            "--initial-cluster-token must be 1..={} bytes",
            crate::config::MAX_TOKEN_BYTES
        )));
    }
    Ok(())
}

/// `--member-ids` with `--ca-dir`: one certificate per id, signed by the
/// existing CA (whose files `ha-node certs` wrote for the same token).
fn issue_added(args: &CertsArgs) -> Result<Vec<IssuedMember>, CertError> {
    let member_ids = args.member_ids()?;
    check_validity_and_token(args)?;
    let ca_dir = args
        .ca_dir
        .as_ref()
        .ok_or_else(|| CertError::Invalid("--member-ids needs --ca-dir".into()))?;
    let ca_pem = read_pem(&ca_dir.join("ca.pem"))?;
    let ca_key_pem = read_pem(&ca_dir.join("ca-key.pem"))?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| CertError::Invalid(format!("{}: {e}", ca_dir.join("ca.pem").display())))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)?;
    // The issuer as `DevCa::generate` made it: same name, same key usages
    // (the leaf's issuer name must equal the CA's subject byte for byte).
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        ca_common_name(&args.initial_cluster_token),
    );
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = rcgen::Issuer::new(params, ca_key);
    std::fs::create_dir_all(&args.out).map_err(|error| CertError::Io {
        path: args.out.clone(),
        error,
    })?;
    let validity = Validity::days_from_now(args.validity_days);
    let mut issued = Vec::with_capacity(member_ids.len());
    for id in member_ids {
        let dns = ha_transport_quic::identity::node_dns_name(id);
        let mut leaf = rcgen::CertificateParams::new(vec![dns.clone()])?;
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, dns);
        leaf.is_ca = rcgen::IsCa::ExplicitNoCa;
        leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf.use_authority_key_identifier_extension = true;
        let to_dt = |d: std::time::Duration| rcgen::date_time_ymd(1970, 1, 1) + d;
        leaf.not_before = to_dt(validity.not_before);
        leaf.not_after = to_dt(validity.not_after);
        let key = rcgen::KeyPair::generate()?;
        let cert = leaf.signed_by(&key, &issuer)?;
        let ident = NodeIdentity {
            node_id: id,
            cert_chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            ca: ca_der.clone(),
        };
        ident.check_names_self()?;
        let stem = format!("member-{:x}", id.0);
        let cert = args.out.join(format!("{stem}.pem"));
        let key = args.out.join(format!("{stem}-key.pem"));
        write_new(&cert, &ident.cert_chain_pem(), false)?;
        write_new(&key, &ident.key_pem(), true)?;
        issued.push(IssuedMember {
            name: stem,
            id,
            cert,
            key,
        });
    }
    Ok(issued)
}

/// The member id a certificate file names (`node-<id>.ha`): how a member
/// joining an existing cluster learns the id the cluster assigned it.
pub fn cert_member_id(cert: &Path) -> Result<NodeId, CertError> {
    let pem = read_pem(cert)?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CertError::Invalid(format!("{}: {e}", cert.display())))?;
    ha_transport_quic::identity::node_id_from_cert(&der).map_err(|e| {
        CertError::Invalid(format!(
            "{}: names no member id (node-<id>.ha): {e}",
            cert.display()
        ))
    })
}

fn read_pem(path: &Path) -> Result<String, CertError> {
    let io = |error| CertError::Io {
        path: path.to_path_buf(),
        error,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_PEM_FILE_BYTES {
        return Err(CertError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Loads member `id`'s identity from PEM files; the certificate must name
/// `id` (`node-<id>.ha`).
pub fn load_identity(
    id: NodeId,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<NodeIdentity, CertError> {
    let (ca_pem, cert_pem, key_pem) = (read_pem(ca)?, read_pem(cert)?, read_pem(key)?);
    NodeIdentity::from_pem(id, &cert_pem, &key_pem, &ca_pem).map_err(|e| {
        CertError::Invalid(format!(
            "peer certificate {} is not usable for member id {:x} (node-{}.ha): {e}",
            cert.display(),
            id.0,
            id.0
        ))
    })
}

/// The 32-byte Ed25519 seed of the insecure dev CA of cluster `token`.
pub fn dev_ca_seed(token: &str) -> [u8; 32] {
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_mut(8).enumerate() {
        let v = ids::pinned_hash("ha-insecure-dev-ca-v1", &[token.as_bytes(), &[i as u8]]);
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    seed
}

/// The identity of member `id` under the insecure dev CA of `token` (see
/// the [module docs](self)): the CA is the same on every member; the
/// member's own key is fresh.
pub fn insecure_dev_identity(token: &str, id: NodeId) -> Result<NodeIdentity, CertError> {
    // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410).
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&dev_ca_seed(token));
    let ca_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8),
        &rcgen::PKCS_ED25519,
    )?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ha insecure dev CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    params.serial_number = Some(rcgen::SerialNumber::from(1u64));
    let issuer = rcgen::CertifiedIssuer::self_signed(params, ca_key)?;

    let mut leaf =
        rcgen::CertificateParams::new(vec![ha_transport_quic::identity::node_dns_name(id)])?;
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name.push(
        rcgen::DnType::CommonName,
        ha_transport_quic::identity::node_dns_name(id),
    );
    leaf.is_ca = rcgen::IsCa::ExplicitNoCa;
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.use_authority_key_identifier_extension = true;
    let validity = Validity::days_from_now(3650);
    let to_dt = |d: std::time::Duration| rcgen::date_time_ymd(1970, 1, 1) + d;
    leaf.not_before = to_dt(validity.not_before);
    leaf.not_after = to_dt(validity.not_after);
    let key = rcgen::KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    let ident = NodeIdentity {
        node_id: id,
        cert_chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        ca: CertificateDer::clone(issuer.der()),
    };
    ident.check_names_self()?;
    Ok(ident)
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::client::danger::ServerCertVerifier;
    use std::sync::Arc;

    #[test]
    fn dev_ca_is_the_same_on_every_member() {
        let a = insecure_dev_identity("tok", NodeId(5)).unwrap();
        let b = insecure_dev_identity("tok", NodeId(6)).unwrap();
        assert_eq!(a.ca, b.ca, "both members trust the same CA");
        let c = insecure_dev_identity("other", NodeId(5)).unwrap();
        assert_ne!(a.ca, c.ca, "another token gives another CA");
    }

    #[test]
    fn generate_writes_usable_files_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let args = CertsArgs {
            nodes: Some(2),
            names: None,
            out: dir.path().join("certs"),
            member_ids: None,
            ca_dir: None,
            initial_cluster_token: "t".into(),
            validity_days: 10,
        };
        let issued = generate(&args).unwrap();
        assert_eq!(issued.len(), 2);
        assert_eq!(issued[0].name, "node1");
        let ca = args.out.join("ca.pem");
        let ident = load_identity(issued[1].id, &ca, &issued[1].cert, &issued[1].key).unwrap();
        assert_eq!(ident.node_id, ids::member_id("t", "node2"));
        // The certificate names its own id only.
        let wrong = load_identity(issued[0].id, &ca, &issued[1].cert, &issued[1].key);
        assert!(wrong.is_err());
        assert!(generate(&args).is_err(), "existing files are kept");
    }

    #[test]
    fn added_members_get_certificates_from_the_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let founders = CertsArgs {
            nodes: None,
            names: Some("n1".into()),
            out: dir.path().join("certs"),
            member_ids: None,
            ca_dir: None,
            initial_cluster_token: "t".into(),
            validity_days: 10,
        };
        generate(&founders).unwrap();
        let args = CertsArgs {
            names: None,
            member_ids: Some("5a3c1b2e".into()),
            ca_dir: Some(founders.out.clone()),
            ..founders.clone()
        };
        let issued = generate(&args).unwrap();
        assert_eq!(issued.len(), 1);
        let id = NodeId(0x5a3c_1b2e);
        assert_eq!(issued[0].id, id);
        assert_eq!(cert_member_id(&issued[0].cert).unwrap(), id);
        let ca = args.out.join("ca.pem");
        load_identity(id, &ca, &issued[0].cert, &issued[0].key).unwrap();
        // The leaf chains to the existing CA (what a peer checks).
        let ca_der = CertificateDer::from_pem_slice(read_pem(&ca).unwrap().as_bytes()).unwrap();
        let leaf =
            CertificateDer::from_pem_slice(read_pem(&issued[0].cert).unwrap().as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            ha_transport_quic::identity::crypto_provider(),
        )
        .build()
        .unwrap();
        let name =
            rustls::pki_types::ServerName::try_from(ha_transport_quic::identity::node_dns_name(id))
                .unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
            .expect("signed by the cluster CA");

        for bad in ["0", "zz", "1,1", "100000000"] {
            let a = CertsArgs {
                out: dir.path().join("bad"),
                member_ids: Some(bad.into()),
                ..args.clone()
            };
            assert!(matches!(generate(&a), Err(CertError::Invalid(_))), "{bad}");
            assert!(!a.out.exists(), "bad input writes nothing");
        }
    }
}
