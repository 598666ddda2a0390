//! The gateway id: explicit in the config, or the MAC address of a NIC.

use mac_address::{mac_address_by_name, MacAddressIterator};

/// Characters Thing+ accepts in ids: URL-unreserved.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// 12 lowercase hex digits without separators.
pub fn format_mac(bytes: [u8; 6]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A MAC that identifies real hardware: not all zeros, not locally
/// administered (bit 1 of the first octet: virtual, container and bridge
/// interfaces), not multicast.
pub fn is_hardware_mac(bytes: [u8; 6]) -> bool {
    bytes.iter().any(|&b| b != 0) && bytes[0] & 0x02 == 0 && bytes[0] & 0x01 == 0
}

/// Picks the hardware NIC with the smallest name: a stable choice across boots.
pub fn choose_interface(mut candidates: Vec<(String, [u8; 6])>) -> Option<(String, [u8; 6])> {
    candidates.retain(|(name, mac)| name != "lo" && is_hardware_mac(*mac));
    candidates.sort();
    candidates.into_iter().next()
}

/// Resolves `id = "auto"` on this machine: the MAC of `interface`, or of
/// the first hardware NIC.
pub fn auto_id(interface: Option<&str>) -> Result<String, String> {
    auto_id_from(interface, system_mac_of, system_nics)
}

/// Resolves `id = "auto"` from facts given: `mac_of` looks an interface up,
/// `nics` lists every interface with its MAC.
pub fn auto_id_from(
    interface: Option<&str>,
    mac_of: impl FnOnce(&str) -> Result<Option<[u8; 6]>, String>,
    nics: impl FnOnce() -> Vec<(String, [u8; 6])>,
) -> Result<String, String> {
    match interface {
        Some(name) => match mac_of(name) {
            Ok(Some(mac)) if mac.iter().any(|&b| b != 0) => Ok(format_mac(mac)),
            Ok(_) => Err(format!(
                "interface \"{name}\" has no MAC address (or does not exist): set [gateway] interface to an existing NIC, or set [gateway] id explicitly"
            )),
            Err(e) => Err(format!(
                "cannot read the MAC address of \"{name}\": {e}; set [gateway] id explicitly"
            )),
        },
        None => choose_interface(nics())
            .map(|(_, mac)| format_mac(mac))
            .ok_or_else(|| {
                "no network interface with a hardware MAC address was found (only loopback, virtual or container interfaces): set [gateway] id explicitly, or name one with [gateway] interface".to_string()
            }),
    }
}

/// The MAC of this machine's interface `name`; `Ok(None)` when it has none.
pub fn system_mac_of(name: &str) -> Result<Option<[u8; 6]>, String> {
    mac_address_by_name(name)
        .map(|m| m.map(|m| m.bytes()))
        .map_err(|e| e.to_string())
}

/// This machine's interfaces with a MAC, by name.
pub fn system_nics() -> Vec<(String, [u8; 6])> {
    let mut nics = Vec::new();
    if let Ok(iter) = MacAddressIterator::new() {
        for mac in iter {
            if let Ok(Some(name)) = mac_address::name_by_mac_address(&mac) {
                nics.push((name, mac.bytes()));
            }
        }
    }
    nics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        assert!(is_valid_id("b827eb1dcccc"));
        assert!(is_valid_id("gw-1_a.b~c"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("gw/1"));
        assert!(!is_valid_id("gw 1"));
        assert!(!is_valid_id("gw+#"));
        assert!(!is_valid_id("gw,1"));
    }

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac([0xb8, 0x27, 0xeb, 0x1d, 0xcc, 0xcc]),
            "b827eb1dcccc"
        );
    }

    #[test]
    fn skips_virtual_and_zero_macs_in_stable_order() {
        let c = vec![
            ("veth0".to_string(), [0x02, 0x42, 0, 0, 0, 1]), // locally administered
            ("lo".to_string(), [0; 6]),
            ("wlan0".to_string(), [0xb8, 0x27, 0xeb, 0, 0, 2]),
            ("eth0".to_string(), [0xb8, 0x27, 0xeb, 0, 0, 1]),
            ("dummy".to_string(), [0; 6]),
        ];
        let (name, mac) = choose_interface(c).unwrap();
        assert_eq!(name, "eth0");
        assert_eq!(format_mac(mac), "b827eb000001");
    }

    #[test]
    fn auto_id_from_a_named_interface_or_the_first_hardware_nic() {
        let nics = || {
            vec![
                ("wlan0".to_string(), [0xb8, 0x27, 0xeb, 0, 0, 2]),
                ("eth0".to_string(), [0xb8, 0x27, 0xeb, 0, 0, 1]),
            ]
        };
        let none = |_: &str| -> Result<Option<[u8; 6]>, String> { Ok(None) };
        assert_eq!(auto_id_from(None, none, nics).unwrap(), "b827eb000001");
        let wlan = |n: &str| Ok((n == "wlan0").then_some([0xb8, 0x27, 0xeb, 0, 0, 2]));
        assert_eq!(
            auto_id_from(Some("wlan0"), wlan, nics).unwrap(),
            "b827eb000002"
        );
        let e = auto_id_from(Some("eth9"), wlan, nics).unwrap_err();
        assert!(
            e.starts_with("interface \"eth9\" has no MAC address"),
            "{e}"
        );
        let zero = |_: &str| Ok(Some([0; 6]));
        assert!(auto_id_from(Some("lo"), zero, nics).is_err());
        let broken = |_: &str| Err("permission denied".to_string());
        let e = auto_id_from(Some("eth0"), broken, nics).unwrap_err();
        assert!(
            e.contains("cannot read the MAC address of \"eth0\": permission denied"),
            "{e}"
        );
        let e = auto_id_from(None, none, Vec::new).unwrap_err();
        assert!(
            e.starts_with("no network interface with a hardware MAC"),
            "{e}"
        );
    }

    #[test]
    fn none_when_only_virtual() {
        let c = vec![("docker0".to_string(), [0x02, 0x42, 1, 2, 3, 4])];
        assert!(choose_interface(c).is_none());
    }
}
