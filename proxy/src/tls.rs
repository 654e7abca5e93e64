//! rustls configurations (ring provider, through pgwire's tokio_rustls re-export): the server side that
//! terminates clients' TLS, and the client side for upstreams whose URL asks for TLS. Which upstream
//! certificates the client side accepts follows libpq's `sslmode` (see `libpq_tls`): any (`require`,
//! `prefer`: encryption only), a chain to the given roots (`verify-ca`), or a chain to the roots that also
//! names the host (`verify-full`). The checks themselves are rustls's `WebPkiServerVerifier`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use pgwire::tokio::tokio_rustls::rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use pgwire::tokio::tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS acceptor for clients from PEM files (certificate chain, private key).
pub fn server_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let (chain, key) = read_cert_and_key(cert, key)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("TLS certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_cert_and_key(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading TLS certificate {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading TLS key {}", key.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing TLS certificate {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_slice(&key_pem).with_context(|| format!("parsing TLS key {}", key.display()))?;
    Ok((chain, key))
}

/// Which upstream certificates are accepted.
#[derive(Debug, Clone)]
pub enum UpstreamTrust {
    /// Any certificate: the channel is encrypted, the server not authenticated (libpq's `require` and
    /// `prefer` without a root certificate).
    EncryptOnly,
    /// A chain to these roots; the host name is not checked (`verify-ca`).
    Chain(Arc<RootCertStore>),
    /// A chain to these roots for the host name or IP address connected to (`verify-full`).
    ChainAndName(Arc<RootCertStore>),
}

/// A client certificate chain and its key, presented when the upstream asks (`sslcert`, `sslkey`).
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// A TLS connector for the upstream that accepts the certificates `trust` allows.
pub fn upstream_connector(trust: &UpstreamTrust, identity: Option<ClientIdentity>) -> anyhow::Result<TlsConnector> {
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        UpstreamTrust::EncryptOnly => Arc::new(EncryptOnly(provider())),
        UpstreamTrust::Chain(roots) => Arc::new(ChainOnly(webpki_verifier(roots)?)),
        UpstreamTrust::ChainAndName(roots) => webpki_verifier(roots)?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match identity {
        Some(ClientIdentity { chain, key }) => {
            builder.with_client_auth_cert(chain, key).context("TLS client certificate and key do not match")?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

fn webpki_verifier(roots: &Arc<RootCertStore>) -> anyhow::Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(Arc::clone(roots), provider())
        .build()
        .context("building the upstream certificate verifier")
}

/// Reads every certificate of a PEM file (a CA bundle) as trust anchors. Errors name the file.
pub fn read_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let pem = std::fs::read(path).with_context(|| format!("reading root certificate file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing root certificate file {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in root certificate file {}", path.display());
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).with_context(|| {
            format!("root certificate file {}: a certificate is not a usable trust anchor", path.display())
        })?;
    }
    Ok(roots)
}

/// Reads a client certificate chain and its private key (PEM). Errors name the file.
pub fn read_identity(cert: &Path, key: &Path) -> anyhow::Result<ClientIdentity> {
    let (chain, key) = read_cert_and_key(cert, key)?;
    Ok(ClientIdentity { chain, key })
}

/// Why the upstream's certificate was refused, when that is what failed the TLS handshake `error`.
pub fn rejected_certificate(error: &std::io::Error) -> Option<&CertificateError> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(reason) => Some(reason),
        _ => None,
    }
}

/// The certificate is fine but names other hosts than the one connected to.
pub fn is_name_mismatch(reason: &CertificateError) -> bool {
    matches!(reason, CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })
}

/// What the client (and the log) is told when the upstream's certificate for `host` was refused.
pub fn describe_rejection(host: &str, reason: &CertificateError) -> String {
    match reason {
        reason if is_name_mismatch(reason) => {
            format!("the upstream server's certificate does not match host name \"{host}\" ({reason})")
        }
        CertificateError::UnknownIssuer => {
            "the upstream server's certificate is not trusted: it does not chain to a root certificate of \
             sslrootcert (UnknownIssuer)"
                .to_owned()
        }
        reason => format!("the upstream server's certificate is not trusted ({reason})"),
    }
}

/// `verify-ca`: the full webpki verification, except that a certificate for another name passes. webpki
/// checks the name only after the chain, signatures, validity and usage have passed, so a name error
/// means everything else was in order.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(reason)) if is_name_mismatch(&reason) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate but still checks the handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
