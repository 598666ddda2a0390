//! The rustls client configuration for the MQTT connection.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::{MqttConfig, MAX_PEM_FILE_SIZE};

/// Installs ring as the process-wide crypto provider (one provider only:
/// two would make rustls panic). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A PEM file's bytes: a regular file of at most [`MAX_PEM_FILE_SIZE`]
/// bytes (a FIFO or a device is refused without blocking).
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    crate::small_file::read(path, MAX_PEM_FILE_SIZE)
        .map(|(bytes, _)| bytes)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path, what)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds the client configuration: the system trust store or `ca_file`, and
/// the optional client certificate. Errors name the file at fault.
pub fn client_config(mqtt: &MqttConfig) -> Result<Arc<ClientConfig>, String> {
    install_crypto_provider();
    let mut roots = RootCertStore::empty();
    match &mqtt.ca_file {
        Some(ca) => {
            for c in load_certs(ca, "[mqtt] ca_file")? {
                roots
                    .add(c)
                    .map_err(|e| format!("[mqtt] ca_file {}: {e}", ca.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no CA certificates found in the system trust store: install ca-certificates or set [mqtt] ca_file"
                        .into(),
                );
            }
        }
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match (&mqtt.client_cert, &mqtt.client_key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert, "[mqtt] client_cert")?;
            let pem = read_pem(key, "[mqtt] client_key")?;
            let key = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| format!("cannot read [mqtt] client_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key do not work together: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
