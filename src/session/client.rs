//! The few things the session asks of an MQTT client, behind a trait: the
//! delivery core drives rumqttc's `AsyncClient` in the daemon and a
//! recording fake in its unit tests. Every call is non-blocking (`try_`):
//! the task that polls the event loop never waits on its own channel.

use rumqttc::{AsyncClient, ClientError, QoS, Request};

/// Why the client did not take a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<T> {
    /// Its request channel is full: `T` is handed back to be sent later.
    Full(T),
    /// The event loop is gone (the connection is ending).
    Gone(String),
}

impl<T> std::fmt::Display for Refused<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Full(_) => f.write_str("the MQTT client's request channel is full"),
            Refused::Gone(e) => f.write_str(e),
        }
    }
}

pub trait MqttClient {
    /// Publishes at QoS 1.
    fn try_publish(
        &mut self,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), Refused<Vec<u8>>>;
    /// Acknowledges a message the broker sent (manual acks).
    fn try_ack(&mut self, qos: QoS, pkid: u16) -> Result<(), Refused<()>>;
    /// Subscribes at QoS 1.
    fn try_subscribe(&mut self, topic: &str) -> Result<(), Refused<()>>;
    fn try_disconnect(&mut self) -> Result<(), Refused<()>>;
}

impl MqttClient for AsyncClient {
    fn try_publish(
        &mut self,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), Refused<Vec<u8>>> {
        match AsyncClient::try_publish(self, topic, QoS::AtLeastOnce, retain, payload) {
            Ok(()) => Ok(()),
            Err(ClientError::TryRequest(Request::Publish(p))) => {
                Err(Refused::Full(p.payload.into()))
            }
            Err(e) => Err(Refused::Gone(e.to_string())),
        }
    }

    fn try_ack(&mut self, qos: QoS, pkid: u16) -> Result<(), Refused<()>> {
        let mut request = rumqttc::Publish::new("", qos, Vec::new());
        request.pkid = pkid;
        match AsyncClient::try_ack(self, &request) {
            Ok(()) => Ok(()),
            Err(ClientError::TryRequest(_)) => Err(Refused::Full(())),
            Err(e) => Err(Refused::Gone(e.to_string())),
        }
    }

    fn try_subscribe(&mut self, topic: &str) -> Result<(), Refused<()>> {
        AsyncClient::try_subscribe(self, topic, QoS::AtLeastOnce).map_err(refused)
    }

    fn try_disconnect(&mut self) -> Result<(), Refused<()>> {
        AsyncClient::try_disconnect(self).map_err(refused)
    }
}

fn refused(e: ClientError) -> Refused<()> {
    match e {
        ClientError::TryRequest(_) => Refused::Full(()),
        e => Refused::Gone(e.to_string()),
    }
}

/// A client that records what it is asked, with a request channel of
/// `room` places (`None`: endless) that the test empties by hand.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    pub sent: Vec<Sent>,
    pub room: Option<usize>,
    pub gone: bool,
}

#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Publish {
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    },
    Ack(u16),
    Subscribe(String),
    Disconnect,
}

#[cfg(test)]
impl Recorder {
    fn take_place(&mut self) -> Result<(), ()> {
        match &mut self.room {
            Some(0) => Err(()),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The payloads published on `topic`, in order.
    pub fn published_on(&self, topic: &str) -> Vec<Vec<u8>> {
        self.sent
            .iter()
            .filter_map(|s| match s {
                Sent::Publish {
                    topic: t, payload, ..
                } if t == topic => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
impl MqttClient for Recorder {
    fn try_publish(
        &mut self,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), Refused<Vec<u8>>> {
        if self.gone {
            return Err(Refused::Gone("gone".into()));
        }
        if self.take_place().is_err() {
            return Err(Refused::Full(payload));
        }
        self.sent.push(Sent::Publish {
            topic: topic.into(),
            retain,
            payload,
        });
        Ok(())
    }

    fn try_ack(&mut self, _qos: QoS, pkid: u16) -> Result<(), Refused<()>> {
        if self.gone {
            return Err(Refused::Gone("gone".into()));
        }
        self.take_place().map_err(|()| Refused::Full(()))?;
        self.sent.push(Sent::Ack(pkid));
        Ok(())
    }

    fn try_subscribe(&mut self, topic: &str) -> Result<(), Refused<()>> {
        self.sent.push(Sent::Subscribe(topic.into()));
        Ok(())
    }

    fn try_disconnect(&mut self) -> Result<(), Refused<()>> {
        self.sent.push(Sent::Disconnect);
        Ok(())
    }
}
