//! Certificates and TLS configurations for the node-to-node transport.
//!
//! Two modes:
//! - **Certs** (production): a cluster CA (`ca.pem`, `ca.key`, made once by [`create_ca`]) signs
//!   one certificate per node ([`create_node_cert`]: `node.pem`, `node.key`, plus a copy of
//!   `ca.pem` so a node's directory is self-contained; `ca.key` never leaves the CA directory).
//!   Both directions are authenticated: the server requires a client certificate that chains to
//!   the cluster CA, and the client verifies the server's certificate against the same CA and the
//!   address it dialled (so node certificates name, as SANs, the IPs or DNS names peers dial).
//! - **Insecure** (local development only): each start makes a throwaway self-signed
//!   certificate; the client accepts any server certificate (it still checks the handshake
//!   signature, so the connection is encrypted, but not authenticated) and the server asks for
//!   no client certificate.
//!
//! Invariants:
//! - Every rustls config is built with an explicit ring provider and TLS 1.3 only; the process
//!   default provider is never consulted (it may be unset, or another crate may install one).
//! - ALPN is always [`ALPN_PROTOCOL`], so a Flotilla node never talks to a different protocol
//!   that happens to share a port, and a future `flotilla/2` is refused by an old node.
//! - A missing or corrupt file is an error naming the path; nothing here panics on file content.
//! - Existing key material is never overwritten.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::TransportError;

/// The application protocol negotiated on every connection.
pub const ALPN_PROTOCOL: &[u8] = b"flotilla/1";
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node.key";
/// The CA's subject. Node certificates name it as their issuer, and `create_node_cert` rebuilds
/// it from here (rcgen cannot parse an existing certificate without the x509-parser feature);
/// the rebuilt issuer is then checked against `ca.pem` by verifying the new certificate.
const CA_COMMON_NAME: &str = "Flotilla cluster CA";

/// How the transport authenticates peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Throwaway self-signed certificate, no verification of peers. Local development only.
    Insecure,
    /// Mutual TLS with the cluster CA: `dir` holds `ca.pem`, `node.pem` and `node.key`.
    Certs { dir: PathBuf },
}

/// The rustls configurations a node needs: one to accept connections and one to dial.
#[derive(Debug)]
pub struct TlsConfigs {
    pub server: rustls::ServerConfig,
    pub client: rustls::ClientConfig,
}

/// The ring provider, explicitly: see the module invariants.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server and client configurations for `mode`.
pub fn load(mode: &TlsMode) -> Result<TlsConfigs, TransportError> {
    match mode {
        TlsMode::Insecure => {
            Ok(TlsConfigs { server: insecure_server_config()?, client: insecure_client_config()? })
        }
        TlsMode::Certs { dir } => {
            Ok(TlsConfigs { server: mutual_server_config(dir)?, client: mutual_client_config(dir)? })
        }
    }
}

/// Creates a cluster CA in `dir`: `ca.pem` (the certificate every node trusts) and `ca.key`
/// (keep it offline; it is only needed to sign new node certificates).
pub fn create_ca(dir: &Path) -> Result<(), TransportError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    refuse_existing(&cert_path)?;
    refuse_existing(&key_path)?;
    fs::create_dir_all(dir).map_err(|source| TransportError::Io { path: dir.to_path_buf(), source })?;
    let key = KeyPair::generate().map_err(cert_error)?;
    let cert = ca_params().self_signed(&key).map_err(cert_error)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(())
}

/// Creates `node.pem` and `node.key` in `out_dir`, signed by the CA in `ca_dir`, valid for both
/// server and client authentication, and copies `ca.pem` next to them. `sans` are the IP
/// addresses and DNS names peers use to dial this node; at least one is required.
pub fn create_node_cert(
    ca_dir: &Path,
    out_dir: &Path,
    node_name: &str,
    sans: &[String],
) -> Result<(), TransportError> {
    if sans.is_empty() {
        return Err(TransportError::Certificate(format!(
            "node certificate for {node_name:?} needs at least one subject alternative name (an IP or DNS name peers dial)"
        )));
    }
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_pem = read_file(&ca_cert_path)?;
    let ca_cert = parse_one_cert(&ca_cert_path, &ca_pem)?;
    let ca_key_pem = read_file(&ca_key_path)?;
    let ca_key_text = std::str::from_utf8(&ca_key_pem)
        .map_err(|_| corrupt(&ca_key_path, "not a PEM file (invalid UTF-8)"))?;
    let ca_key = KeyPair::from_pem(ca_key_text).map_err(|e| corrupt(&ca_key_path, e))?;

    let node_cert_path = out_dir.join(NODE_CERT_FILE);
    let node_key_path = out_dir.join(NODE_KEY_FILE);
    refuse_existing(&node_cert_path)?;
    refuse_existing(&node_key_path)?;

    let mut params = CertificateParams::new(sans.to_vec()).map_err(|e| {
        TransportError::Certificate(format!("invalid subject alternative name in {sans:?}: {e}"))
    })?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // One certificate serves both roles: a node accepts connections and dials peers.
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let node_key = KeyPair::generate().map_err(cert_error)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let node_cert = params.signed_by(&node_key, &issuer).map_err(cert_error)?;

    // The issuer was rebuilt from CA_COMMON_NAME and ca.key; make sure the result really chains
    // to ca.pem (catches a ca.key that belongs to another CA, or a ca.pem made elsewhere).
    let verifier = client_verifier(&ca_cert_path, ca_cert)?;
    verifier.verify_client_cert(node_cert.der(), &[], UnixTime::now()).map_err(|e| {
        TransportError::Certificate(format!(
            "{} and {} do not belong together: a certificate signed with the key does not verify against the certificate ({e})",
            ca_key_path.display(),
            ca_cert_path.display()
        ))
    })?;

    fs::create_dir_all(out_dir)
        .map_err(|source| TransportError::Io { path: out_dir.to_path_buf(), source })?;
    write_new(&node_key_path, node_key.serialize_pem().as_bytes(), true)?;
    write_new(&node_cert_path, node_cert.pem().as_bytes(), false)?;
    let out_ca_path = out_dir.join(CA_CERT_FILE);
    match fs::read(&out_ca_path) {
        Ok(existing) if existing == ca_pem => {}
        Ok(_) => {
            return Err(TransportError::Certificate(format!(
                "{} exists and differs from {}",
                out_ca_path.display(),
                ca_cert_path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_new(&out_ca_path, &ca_pem, false)?,
        Err(source) => return Err(TransportError::Io { path: out_ca_path, source }),
    }
    Ok(())
}

/// Server side of mutual TLS: presents `dir/node.pem` and requires a client certificate that
/// chains to `dir/ca.pem`.
pub fn mutual_server_config(dir: &Path) -> Result<rustls::ServerConfig, TransportError> {
    let ca_path = dir.join(CA_CERT_FILE);
    let ca = parse_one_cert(&ca_path, &read_file(&ca_path)?)?;
    let (chain, key) = load_node_identity(dir)?;
    let verifier = client_verifier(&ca_path, ca)?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| corrupt(&dir.join(NODE_KEY_FILE), format!("does not match {NODE_CERT_FILE}: {e}")))?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    Ok(config)
}

/// Client side of mutual TLS: verifies the server against `dir/ca.pem` and presents
/// `dir/node.pem`.
pub fn mutual_client_config(dir: &Path) -> Result<rustls::ClientConfig, TransportError> {
    let ca_path = dir.join(CA_CERT_FILE);
    let ca = parse_one_cert(&ca_path, &read_file(&ca_path)?)?;
    let roots = root_store(&ca_path, ca)?;
    let (chain, key) = load_node_identity(dir)?;
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| corrupt(&dir.join(NODE_KEY_FILE), format!("does not match {NODE_CERT_FILE}: {e}")))?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    Ok(config)
}

/// Insecure server: a throwaway self-signed certificate made now, no client authentication.
pub fn insecure_server_config() -> Result<rustls::ServerConfig, TransportError> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).map_err(cert_error)?;
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![generated.cert.der().clone()], key)?;
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    Ok(config)
}

/// Insecure client: accepts any server certificate, presents none.
pub fn insecure_client_config() -> Result<rustls::ClientConfig, TransportError> {
    let provider = crypto_provider();
    let verifier = Arc::new(AcceptAnyServerCert { algorithms: provider.signature_verification_algorithms });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    Ok(config)
}

/// Accepts any server certificate (insecure mode) but still verifies the handshake signature
/// against the presented certificate, so the session keys are bound to *some* key pair and a
/// broken peer is caught; it offers no protection against an active attacker.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable in practice (configs are TLS 1.3 only), but correct if it ever is reached.
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The CA's parameters. Deterministic, so `create_node_cert` can rebuild the issuer name.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    // Path length 0: the CA signs node certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn root_store(ca_path: &Path, ca: CertificateDer<'static>) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(|e| corrupt(ca_path, format!("not a usable CA certificate: {e}")))?;
    Ok(roots)
}

fn client_verifier(
    ca_path: &Path,
    ca: CertificateDer<'static>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TransportError> {
    let roots = root_store(ca_path, ca)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .build()
        .map_err(|e| corrupt(ca_path, format!("cannot build a client verifier from it: {e}")))
}

fn load_node_identity(
    dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    let cert_path = dir.join(NODE_CERT_FILE);
    let key_path = dir.join(NODE_KEY_FILE);
    let cert_pem = read_file(&cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(&cert_path, e))?;
    if chain.is_empty() {
        return Err(corrupt(&cert_path, "no CERTIFICATE section"));
    }
    let key = PrivateKeyDer::from_pem_slice(&read_file(&key_path)?).map_err(|e| corrupt(&key_path, e))?;
    Ok((chain, key))
}

fn parse_one_cert(path: &Path, pem: &[u8]) -> Result<CertificateDer<'static>, TransportError> {
    CertificateDer::from_pem_slice(pem).map_err(|e| corrupt(path, e))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TransportError> {
    fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TransportError::MissingFile { path: path.to_path_buf() }
        } else {
            TransportError::Io { path: path.to_path_buf(), source }
        }
    })
}

fn refuse_existing(path: &Path) -> Result<(), TransportError> {
    if path.exists() {
        return Err(TransportError::AlreadyExists { path: path.to_path_buf() });
    }
    Ok(())
}

/// Writes a new file, failing if it exists; private keys are readable by the owner only.
fn write_new(path: &Path, contents: &[u8], private: bool) -> Result<(), TransportError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let io_error = |source| TransportError::Io { path: path.to_path_buf(), source };
    let mut file = options.open(path).map_err(|source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            TransportError::AlreadyExists { path: path.to_path_buf() }
        } else {
            io_error(source)
        }
    })?;
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> TransportError {
    TransportError::CorruptFile { path: path.to_path_buf(), reason: reason.to_string() }
}

fn cert_error(e: rcgen::Error) -> TransportError {
    TransportError::Certificate(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans() -> Vec<String> {
        vec!["127.0.0.1".to_string(), "node1.flotilla.test".to_string()]
    }

    #[test]
    fn ca_and_node_certificates_load_into_mutual_tls_configs() {
        let ca = tempfile::tempdir().expect("tempdir");
        let node = tempfile::tempdir().expect("tempdir");
        create_ca(ca.path()).expect("create ca");
        create_node_cert(ca.path(), node.path(), "n1", &sans()).expect("create node cert");
        assert!(node.path().join(CA_CERT_FILE).exists());
        assert!(!node.path().join(CA_KEY_FILE).exists(), "the CA key must never be copied to a node");
        let configs = load(&TlsMode::Certs { dir: node.path().to_path_buf() }).expect("load");
        assert_eq!(configs.server.alpn_protocols, vec![ALPN_PROTOCOL.to_vec()]);
        assert_eq!(configs.client.alpn_protocols, vec![ALPN_PROTOCOL.to_vec()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(node.path().join(NODE_KEY_FILE)).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "node.key must not be readable by others");
        }
    }

    #[test]
    fn existing_key_material_is_never_overwritten() {
        let ca = tempfile::tempdir().expect("tempdir");
        create_ca(ca.path()).expect("create ca");
        match create_ca(ca.path()) {
            Err(TransportError::AlreadyExists { path }) => assert!(path.ends_with(CA_CERT_FILE)),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        create_node_cert(ca.path(), ca.path(), "n1", &sans()).expect("node cert beside the CA");
        assert!(matches!(
            create_node_cert(ca.path(), ca.path(), "n1", &sans()),
            Err(TransportError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn missing_and_corrupt_files_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        match load(&TlsMode::Certs { dir: dir.path().to_path_buf() }) {
            Err(TransportError::MissingFile { path }) => assert_eq!(path, dir.path().join(CA_CERT_FILE)),
            other => panic!("expected MissingFile, got {other:?}"),
        }
        create_ca(dir.path()).expect("create ca");
        create_node_cert(dir.path(), dir.path(), "n1", &sans()).expect("node cert");
        fs::write(dir.path().join(NODE_KEY_FILE), b"-----BEGIN PRIVATE KEY-----\ngarbage\n").expect("write");
        let error = load(&TlsMode::Certs { dir: dir.path().to_path_buf() }).expect_err("corrupt key");
        let message = error.to_string();
        assert!(message.contains(NODE_KEY_FILE), "{message}");
        fs::write(dir.path().join(CA_CERT_FILE), b"not pem at all").expect("write");
        match load(&TlsMode::Certs { dir: dir.path().to_path_buf() }) {
            Err(TransportError::CorruptFile { path, .. }) => assert_eq!(path, dir.path().join(CA_CERT_FILE)),
            other => panic!("expected CorruptFile, got {other:?}"),
        }
    }

    #[test]
    fn a_ca_key_that_does_not_match_the_ca_certificate_is_refused() {
        let ca_a = tempfile::tempdir().expect("tempdir");
        let ca_b = tempfile::tempdir().expect("tempdir");
        create_ca(ca_a.path()).expect("ca a");
        create_ca(ca_b.path()).expect("ca b");
        fs::copy(ca_b.path().join(CA_KEY_FILE), ca_a.path().join("other.key")).expect("copy");
        fs::rename(ca_a.path().join("other.key"), ca_a.path().join(CA_KEY_FILE)).expect("swap key");
        let out = tempfile::tempdir().expect("tempdir");
        let error = create_node_cert(ca_a.path(), out.path(), "n1", &sans()).expect_err("mismatched CA");
        assert!(matches!(error, TransportError::Certificate(_)), "{error}");
    }

    #[test]
    fn node_certificate_needs_a_subject_alternative_name() {
        let ca = tempfile::tempdir().expect("tempdir");
        create_ca(ca.path()).expect("ca");
        assert!(matches!(
            create_node_cert(ca.path(), ca.path(), "n1", &[]),
            Err(TransportError::Certificate(_))
        ));
    }

    #[test]
    fn insecure_configs_build() {
        let configs = load(&TlsMode::Insecure).expect("insecure");
        assert_eq!(configs.server.alpn_protocols, vec![ALPN_PROTOCOL.to_vec()]);
    }
}
