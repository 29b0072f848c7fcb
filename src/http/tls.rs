//! TLS configuration on rustls with the `ring` provider: the server's
//! from PEM key and certificate files, the client's with the platform's
//! trusted roots plus `SSL_CERT_FILE`. Both offer only ALPN `h2`.
//! `VALK_TLS_VERIFY=0` turns client verification off, with a warning.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from a PEM private key and certificate chain.
pub fn server_config(key_path: &str, cert_path: &str) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificate file {}: {}", cert_path, e))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", cert_path));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "no private key found in {} (an unencrypted PEM key: PKCS#8, PKCS#1 or SEC1)",
            key_path
        ),
        e => format!("cannot read private key file {}: {}", key_path, e),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {}", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "the private key in {} does not belong to the certificate in {}",
                key_path, cert_path
            ),
            e => format!("TLS key and certificate do not fit: {}", e),
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Whether the client verifies server certificates (`VALK_TLS_VERIFY`).
/// Only `0` turns it off (docs/SECURITY.md): a weaker setting is never
/// inferred from some other spelling.
pub fn verify_enabled() -> bool {
    std::env::var("VALK_TLS_VERIFY").as_deref() != Ok("0")
}

/// Bundles that hold the system's roots on common Unix systems; read in
/// addition to `SSL_CERT_FILE` (which makes the platform loader skip them).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn trusted_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    // Such as an `SSL_CERT_FILE` that is missing or holds no certificate:
    // said once (the configuration is made once), not left to surface as
    // an unknown issuer.
    for error in &native.errors {
        crate::aio::log(format_args!(
            "valk: warning: trusted certificates not loaded: {}",
            error
        ));
    }
    roots.add_parsable_certificates(native.certs);
    if std::env::var_os("SSL_CERT_FILE").is_some() {
        if let Some(bundle) = SYSTEM_BUNDLES
            .iter()
            .find(|p| std::path::Path::new(p).exists())
        {
            if let Ok(iter) = CertificateDer::pem_file_iter(bundle) {
                roots.add_parsable_certificates(iter.filter_map(Result::ok));
            }
        }
    }
    roots
}

/// The client configuration, made once per process.
pub fn client_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG.get_or_init(make_client_config).clone()
}

fn make_client_config() -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {}", e))?;
    let mut config = if verify_enabled() {
        let roots = trusted_roots();
        if roots.is_empty() {
            return Err(
                "no trusted root certificates found (install ca-certificates or set SSL_CERT_FILE)"
                    .into(),
            );
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        crate::aio::log(format_args!(
            "valk: warning: VALK_TLS_VERIFY=0: server certificates are NOT verified"
        ));
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any certificate (`VALK_TLS_VERIFY=0` only); signatures are
/// still checked so the handshake itself stays sound.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a TLS handshake failed, in words: rustls's own text shows some
/// causes in Rust's debug notation (`UnknownIssuer`, `DnsName(..)`).
pub fn handshake_failure(err: &std::io::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return super::describe_error(err);
    };
    let certificate = |why: &str| format!("the server's certificate is refused: {}", why);
    match tls {
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                certificate("no trusted authority signed it (SSL_CERT_FILE can name more)")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                certificate("it is not valid for this host name")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                certificate("it has expired")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                certificate("it is not valid yet")
            }
            CertificateError::Revoked => certificate("it has been revoked"),
            CertificateError::BadSignature => certificate("its signature does not verify"),
            CertificateError::BadEncoding => certificate("it cannot be parsed"),
            CertificateError::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
                certificate("it is an authority's certificate, not a server's")
            }
            other => certificate(&other.to_string()),
        },
        Error::InvalidMessage(_) => "the peer does not speak TLS (an h2c server?)".to_string(),
        Error::AlertReceived(AlertDescription::NoApplicationProtocol) => {
            "the server does not offer HTTP/2 (ALPN h2)".to_string()
        }
        other => other.to_string(),
    }
}
