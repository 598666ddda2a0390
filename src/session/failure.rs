//! Why a connection ended, in words an operator can act on.

use rumqttc::{ConnectReturnCode, ConnectionError};

use super::MAX_INCOMING_PACKET;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    LoginRefused,
    Tls,
    Unreachable,
    Lost,
    DeadLink,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

/// Turns a rumqttc error into a line an operator can act on.
pub fn classify(e: &ConnectionError, gateway_id: &str, broker: &str) -> Failure {
    use FailureKind::*;
    let (kind, message) = match e {
        ConnectionError::ConnectionRefused(code) => {
            let why = match code {
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                    format!("the broker {broker} refused the login of gateway {gateway_id} ({code:?}): check [gateway] id and the APIKEY issued for it in the Thing+ portal")
                }
                other => format!("the broker {broker} refused the connection ({other:?})"),
            };
            (LoginRefused, why)
        }
        ConnectionError::Tls(t) => (
            Tls,
            format!("TLS with {broker} failed: {t}: check [mqtt] ca_file, the host name and the system clock"),
        ),
        ConnectionError::Io(io) => (
            Unreachable,
            format!("cannot reach the broker {broker}: {io}: check the network, DNS and [mqtt] host and port"),
        ),
        ConnectionError::NetworkTimeout => (
            Unreachable,
            format!("cannot reach the broker {broker}: no answer in time: check the network and [mqtt] host and port"),
        ),
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => (
            Lost,
            format!("connection to {broker} dropped: it sent a packet of {n} bytes, over the limit of {MAX_INCOMING_PACKET} bytes; reconnecting"),
        ),
        other => match tls_alert(other) {
            // TLS 1.3 reports a refused client certificate after the handshake.
            Some(alert) => (
                Tls,
                format!("TLS with {broker} failed: {alert}: check [mqtt] client_cert and client_key, ca_file, the host name and the system clock"),
            ),
            None => (Lost, format!("connection to {broker} lost: {other}")),
        },
    };
    Failure { kind, message }
}

/// A rustls error somewhere in the error's chain.
fn tls_alert(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(t.to_string());
            }
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_refusal_is_explained() {
        let f = classify(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
            "gw1",
            "h:1",
        );
        assert_eq!(f.kind, FailureKind::LoginRefused);
        assert!(f.message.contains("APIKEY"));
        let f = classify(
            &ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            "gw1",
            "h:1",
        );
        assert_eq!(f.kind, FailureKind::Unreachable);
    }
}
