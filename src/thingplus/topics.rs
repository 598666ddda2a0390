//! Topic names of one gateway.

/// Every topic a gateway uses, built once per gateway id.
#[derive(Clone, Debug)]
pub struct Topics {
    /// `v/a/g/{gw}/mqtt/status`: retained `on` / `off`, will `err`.
    pub mqtt_status: String,
    /// `v/a/g/{gw}/status`: gateway and sensor statuses.
    pub status: String,
    /// `v/a/g/{gw}`: values of many sensors in one JSON object.
    pub values: String,
    /// `v/a/g/{gw}/req`: requests from the server.
    pub request: String,
    /// `v/a/g/{gw}/res`: responses to requests.
    pub response: String,
    prefix: String,
}

impl Topics {
    pub fn new(gateway_id: &str) -> Self {
        let prefix = format!("v/a/g/{gateway_id}");
        Topics {
            mqtt_status: format!("{prefix}/mqtt/status"),
            status: format!("{prefix}/status"),
            values: prefix.clone(),
            request: format!("{prefix}/req"),
            response: format!("{prefix}/res"),
            prefix,
        }
    }

    /// `v/a/g/{gw}/s/{sensorId}`: values of one sensor.
    pub fn sensor_values(&self, sensor_id: &str) -> String {
        format!("{}/s/{sensor_id}", self.prefix)
    }

    /// `v/a/g/{gw}/s/{sensorId}/status`.
    pub fn sensor_status(&self, sensor_id: &str) -> String {
        format!("{}/s/{sensor_id}/status", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_protocol() {
        let t = Topics::new("b827eb1dcccc");
        assert_eq!(t.mqtt_status, "v/a/g/b827eb1dcccc/mqtt/status");
        assert_eq!(t.status, "v/a/g/b827eb1dcccc/status");
        assert_eq!(t.values, "v/a/g/b827eb1dcccc");
        assert_eq!(t.request, "v/a/g/b827eb1dcccc/req");
        assert_eq!(t.response, "v/a/g/b827eb1dcccc/res");
        assert_eq!(
            t.sensor_values("b827eb1dcccc-temperature-0"),
            "v/a/g/b827eb1dcccc/s/b827eb1dcccc-temperature-0"
        );
        assert_eq!(
            t.sensor_status("x-onoff-0"),
            "v/a/g/b827eb1dcccc/s/x-onoff-0/status"
        );
    }
}
