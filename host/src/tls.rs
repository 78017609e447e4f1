//! TLS for `airlock serve`: rustls with TLS 1.2 and 1.3 only, ALPN h2 and
//! http/1.1, and a local CA plus server certificate generated on first run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider used for every TLS endpoint of the process.
///
/// Passed explicitly rather than installed as a process default, so that
/// other crates that enable a second provider (the AWS SDK) cannot make
/// rustls pick one at run time.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Reads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let cert_pem =
            std::fs::read(cert).with_context(|| format!("failed to read {}", cert.display()))?;
        let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("failed to parse certificates in {}", cert.display()))?;
        anyhow::ensure!(
            !chain.is_empty(),
            "no certificate found in {}",
            cert.display()
        );
        let key_pem =
            std::fs::read(key).with_context(|| format!("failed to read {}", key.display()))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .with_context(|| format!("failed to parse the private key in {}", key.display()))?
            .with_context(|| format!("no private key found in {}", key.display()))?;
        Ok(Self { chain, key })
    }
}

/// Paths of the generated local certificate authority and server identity.
#[derive(Debug, Clone)]
pub struct LocalCertificate {
    /// The CA certificate to trust (`curl --cacert`).
    pub ca: PathBuf,
    /// The server certificate chain (leaf, then CA).
    pub cert: PathBuf,
    /// The server's private key (mode 0600).
    pub key: PathBuf,
    /// Whether it was created just now.
    pub created: bool,
}

/// Makes sure `dir` holds a local CA and a server certificate for
/// `localhost`, `127.0.0.1` and `::1`, creating them if missing.
pub fn ensure_local_certificate(dir: &Path) -> anyhow::Result<LocalCertificate> {
    let paths = LocalCertificate {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        created: false,
    };
    if paths.ca.exists() && paths.cert.exists() && paths.key.exists() {
        return Ok(paths);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let year = 1970
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            / 31_556_952) as i32;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Airlock local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    leaf.distinguished_name.push(DnType::CommonName, "airlock");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    crate::fsutil::write_private(&paths.key, leaf_key.serialize_pem().as_bytes())?;
    crate::fsutil::write_atomic(
        &paths.cert,
        format!("{}{}", leaf_cert.pem(), ca_cert.pem()).as_bytes(),
    )?;
    // The CA goes last: its presence marks a complete set.
    crate::fsutil::write_atomic(&paths.ca, ca_cert.pem().as_bytes())?;
    Ok(LocalCertificate {
        created: true,
        ..paths
    })
}

/// A rustls server configuration: TLS 1.3 and 1.2 only (rustls implements
/// nothing older), forward-secret AEAD suites only, ALPN h2 then http/1.1.
pub fn server_config(identity: Identity) -> anyhow::Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("failed to select TLS versions")?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .context("the certificate and key do not form a usable server identity")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Prefer the server's cipher suite order (all AEAD with forward secrecy).
    config.ignore_client_order = true;
    Ok(config)
}
