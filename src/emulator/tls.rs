//! TLS for the emulated Entra ID: a throwaway CA and a certificate for
//! 127.0.0.1 and localhost signed by it. The CA is written to a file that the
//! poller trusts through `SSL_CERT_FILE`, exactly as an operator would for a
//! private CA.

use std::sync::Arc;

use axum::Router;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;

#[derive(Debug, thiserror::Error)]
#[error("cannot make the emulator's TLS certificate: {0}")]
pub struct TlsError(String);

pub struct Tls {
    /// The CA certificate, PEM: what clients must trust.
    pub ca_pem: String,
    pub config: Arc<ServerConfig>,
}

pub fn generate() -> Result<Tls, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let e = |e: &dyn std::fmt::Display| TlsError(e.to_string());
    let ca_key = KeyPair::generate().map_err(|x| e(&x))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|x| e(&x))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "activity-log-emulator CA");
    let ca = ca_params.self_signed(&ca_key).map_err(|x| e(&x))?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().map_err(|x| e(&x))?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .map_err(|x| e(&x))?
        .signed_by(&leaf_key, &issuer)
        .map_err(|x| e(&x))?;
    let key = PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(|x| e(&x))?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .map_err(|x| e(&x))?;
    Ok(Tls {
        ca_pem: ca.pem(),
        config: Arc::new(config),
    })
}

/// Serves `router` over TLS on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, config: Arc<ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}
