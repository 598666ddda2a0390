//! NMEA 0183: the GGA and RMC sentences of GPS/GNSS receivers.
//!
//! Pure: one line in, fields out. Fields: `location` (`{"lat","lng"}` in
//! decimal degrees), `altitude` (m above mean sea level, GGA), `speed`
//! (km/h, RMC), `course` (degrees true, RMC), `satellites` (GGA), `fix`
//! (1 with a position fix, else 0), `fix_quality` (GGA's quality indicator)
//! and `hdop` (GGA). A sentence without a fix gives `fix = 0` and clears
//! `location`, `altitude`, `speed` and `course`: no position is reported
//! from it.

use serde_json::{json, Value as J};

use super::format::LineFormat;
use super::record::{ParseError, Record};

/// Longest sentence NMEA 0183 allows is 82 characters; receivers with
/// proprietary extensions go further. Anything past this is not NMEA.
const MAX_SENTENCE: usize = 512;

/// The `nmea` format.
pub struct Nmea;

impl LineFormat for Nmea {
    fn parse(&self, line: &str) -> Result<Option<Record>, ParseError> {
        parse(line)
    }

    fn no_value_hint(&self, field: &str) -> Option<&'static str> {
        // The fields a sentence without a fix clears.
        matches!(field, "location" | "altitude" | "speed" | "course" | "hdop")
            .then_some("the receiver has no fix")
    }
}

/// Parses one line. `Ok(None)`: a valid sentence this parser does not use
/// (GSV, GSA, VTG, proprietary ones).
pub fn parse(line: &str) -> Result<Option<Record>, ParseError> {
    let line = line.trim_matches(|c: char| c.is_ascii_whitespace());
    if line.len() > MAX_SENTENCE {
        return Err(ParseError::malformed("sentence too long for NMEA"));
    }
    let body = checked_body(line)?;
    let mut parts = body.split(',');
    let address = parts.next().unwrap_or_default();
    let fields: Vec<&str> = parts.collect();
    // "GPGGA", "GNRMC", ...: a two-letter talker and the sentence type.
    if address.len() != 5 || !address.is_ascii() {
        return Ok(None);
    }
    match &address[2..] {
        "GGA" => gga(&fields).map(Some),
        "RMC" => rmc(&fields).map(Some),
        _ => Ok(None),
    }
}

/// Checks the `$...*hh` frame and checksum; returns what lies between.
fn checked_body(line: &str) -> Result<&str, ParseError> {
    let Some(rest) = line.strip_prefix('$') else {
        return Err(ParseError::malformed("not an NMEA sentence (no leading $)"));
    };
    let Some((body, sum)) = rest.rsplit_once('*') else {
        return Err(ParseError::malformed("NMEA sentence without a checksum"));
    };
    let expected = u8::from_str_radix(sum, 16)
        .ok()
        .filter(|_| sum.len() == 2)
        .ok_or_else(|| ParseError::malformed(format!("bad NMEA checksum field {sum:?}")))?;
    if !body.is_ascii() {
        return Err(ParseError::malformed("non-ASCII bytes in an NMEA sentence"));
    }
    let actual = body.bytes().fold(0u8, |a, b| a ^ b);
    if actual != expected {
        return Err(ParseError::checksum(format!(
            "NMEA checksum mismatch: the sentence says {expected:02X}, its content gives {actual:02X}"
        )));
    }
    Ok(body)
}

fn field<'a>(f: &[&'a str], i: usize) -> &'a str {
    f.get(i).copied().unwrap_or("")
}

fn num(f: &[&str], i: usize, what: &str) -> Result<Option<f64>, ParseError> {
    let s = field(f, i);
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(Some)
        .ok_or_else(|| ParseError::malformed(format!("bad {what} {s:?}")))
}

/// `ddmm.mmmm` + hemisphere to signed decimal degrees.
fn coordinate(value: &str, hemi: &str, deg_digits: usize, max: f64) -> Result<f64, ParseError> {
    let bad = || ParseError::malformed(format!("bad coordinate {value:?} {hemi:?}"));
    if value.len() < deg_digits + 2 || !value.is_char_boundary(deg_digits) {
        return Err(bad());
    }
    let (d, m) = value.split_at(deg_digits);
    let deg: f64 = d.parse().map_err(|_| bad())?;
    let min: f64 = m.parse().map_err(|_| bad())?;
    if !(0.0..60.0).contains(&min) || d.starts_with(['+', '-']) || m.starts_with(['+', '-']) {
        return Err(bad());
    }
    let v = deg + min / 60.0;
    if v > max {
        return Err(bad());
    }
    let v = match hemi {
        "N" | "E" => v,
        "S" | "W" => -v,
        _ => return Err(bad()),
    };
    // 1e-7 degree is about 1 cm: more digits are float noise.
    Ok((v * 1e7).round() / 1e7)
}

fn location(f: &[&str], lat: usize) -> Result<Option<J>, ParseError> {
    let (la, ns, lo, ew) = (
        field(f, lat),
        field(f, lat + 1),
        field(f, lat + 2),
        field(f, lat + 3),
    );
    if la.is_empty() || lo.is_empty() {
        return Ok(None);
    }
    let lat = coordinate(la, ns, 2, 90.0)?;
    let lng = coordinate(lo, ew, 3, 180.0)?;
    Ok(Some(json!({ "lat": lat, "lng": lng })))
}

fn number(v: f64) -> J {
    serde_json::Number::from_f64(v).map_or(J::Null, J::Number)
}

/// `$--GGA,time,lat,N,lon,E,quality,sats,hdop,alt,M,geoid,M,age,station*hh`
fn gga(f: &[&str]) -> Result<Record, ParseError> {
    let quality = num(f, 5, "GGA fix quality")?.unwrap_or(0.0);
    let satellites = num(f, 6, "GGA satellite count")?;
    let hdop = num(f, 7, "GGA HDOP")?;
    let mut r = Record::default();
    r.set("fix_quality", Some(number(quality)));
    if let Some(s) = satellites {
        r.set("satellites", Some(number(s)));
    }
    let loc = if quality > 0.0 { location(f, 1)? } else { None };
    r.set("fix", Some(number(if loc.is_some() { 1.0 } else { 0.0 })));
    if loc.is_some() {
        r.set("altitude", num(f, 8, "GGA altitude")?.map(number));
        r.set("hdop", hdop.map(number));
    } else {
        r.set("altitude", None);
        r.set("hdop", None);
    }
    r.set("location", loc);
    Ok(r)
}

/// `$--RMC,time,status,lat,N,lon,E,knots,course,date,magvar,E[,mode[,navstatus]]*hh`
fn rmc(f: &[&str]) -> Result<Record, ParseError> {
    let valid = field(f, 1) == "A" && field(f, 11) != "N";
    let mut r = Record::default();
    let loc = if valid { location(f, 2)? } else { None };
    r.set("fix", Some(number(if loc.is_some() { 1.0 } else { 0.0 })));
    if loc.is_some() {
        let speed = num(f, 6, "RMC speed")?.map(|kn| (kn * 1.852 * 1000.0).round() / 1000.0);
        r.set("speed", speed.map(number));
        r.set("course", num(f, 7, "RMC course")?.map(number));
    } else {
        r.set("speed", None);
        r.set("course", None);
    }
    r.set("location", loc);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::super::record::Lookup;
    use super::*;
    use crate::sensor::device::ProblemKind;

    /// Appends the right checksum to `$...`.
    pub fn sentence(body: &str) -> String {
        let sum = body.bytes().fold(0u8, |a, b| a ^ b);
        format!("${body}*{sum:02X}")
    }

    fn get(r: &Record, f: &str) -> Option<J> {
        match r.get(f) {
            Lookup::Value(v) => Some(v.clone()),
            _ => None,
        }
    }

    #[test]
    fn gga_with_fix() {
        // The classic example from the NMEA documentation.
        let r = parse("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            get(&r, "location"),
            Some(json!({"lat": 48.1173, "lng": 11.5166667}))
        );
        assert_eq!(get(&r, "altitude"), Some(json!(545.4)));
        assert_eq!(get(&r, "satellites"), Some(json!(8.0)));
        assert_eq!(get(&r, "fix"), Some(json!(1.0)));
        assert_eq!(get(&r, "fix_quality"), Some(json!(1.0)));
        assert_eq!(r.get("speed"), Lookup::Absent);
    }

    #[test]
    fn rmc_with_fix_southern_western() {
        let s = sentence("GNRMC,225446,A,3351.000,S,15112.000,W,000.5,054.7,191194,020.3,E,A");
        let r = parse(&s).unwrap().unwrap();
        assert_eq!(
            get(&r, "location"),
            Some(json!({"lat": -33.85, "lng": -151.2}))
        );
        assert_eq!(get(&r, "speed"), Some(json!(0.926)));
        assert_eq!(get(&r, "course"), Some(json!(54.7)));
        assert_eq!(r.get("altitude"), Lookup::Absent);
    }

    #[test]
    fn no_fix_gives_no_location() {
        let r = parse(&sentence("GPGGA,123519,,,,,0,00,,,M,,M,,"))
            .unwrap()
            .unwrap();
        assert_eq!(r.get("location"), Lookup::NoValue);
        assert_eq!(r.get("altitude"), Lookup::NoValue);
        assert_eq!(get(&r, "fix"), Some(json!(0.0)));
        assert_eq!(get(&r, "satellites"), Some(json!(0.0)));
        // Void RMC, even with stale coordinates in it.
        let r = parse(&sentence(
            "GPRMC,225446,V,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(r.get("location"), Lookup::NoValue);
        assert_eq!(r.get("speed"), Lookup::NoValue);
        assert_eq!(get(&r, "fix"), Some(json!(0.0)));
        // Mode indicator N (data not valid) despite status A.
        let r = parse(&sentence(
            "GPRMC,225446,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E,N",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(r.get("location"), Lookup::NoValue);
    }

    #[test]
    fn checksums_are_verified() {
        let e =
            parse("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48").unwrap_err();
        assert_eq!(e.kind, ProblemKind::BadChecksum);
        let e =
            parse("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,").unwrap_err();
        assert_eq!(e.kind, ProblemKind::Malformed);
        assert!(parse("$GPGGA,1*4").is_err());
        assert!(parse("$GPGGA,1*ZZ").is_err());
    }

    #[test]
    fn other_sentences_are_ignored_and_garbage_is_an_error() {
        assert_eq!(
            parse(&sentence(
                "GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00"
            ))
            .unwrap(),
            None
        );
        assert_eq!(parse(&sentence("PGRMZ,246,f,3")).unwrap(), None);
        for g in [
            "",
            "hello",
            "$",
            "*00",
            "\u{1}\u{2}$GP",
            "$GPGGA*00,",
            "$ü*00",
        ] {
            assert!(parse(g).is_err(), "{g:?}");
        }
    }

    #[test]
    fn bad_coordinates_are_errors_not_locations() {
        for body in [
            "GPGGA,1,4807.038,X,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            "GPGGA,1,4867.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            "GPGGA,1,9107.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            "GPGGA,1,48,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            "GPGGA,1,-807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            "GPGGA,1,4807.038,N,01131.000,E,x,08,0.9,545.4,M,46.9,M,,",
        ] {
            let e = parse(&sentence(body)).unwrap_err();
            assert_eq!(e.kind, ProblemKind::Malformed, "{body}");
        }
    }

    proptest::proptest! {
        /// Any well-formed GGA with a fix gives a location within range.
        #[test]
        fn gga_locations_are_in_range(lat in 0u32..9_000_000, lng in 0u32..18_000_000, s in proptest::bool::ANY, w in proptest::bool::ANY) {
            let lat_s = format!("{:02}{:07.4}", lat / 100_000, f64::from(lat % 100_000) * 60.0 / 100_000.0);
            let lng_s = format!("{:03}{:07.4}", lng / 100_000, f64::from(lng % 100_000) * 60.0 / 100_000.0);
            let body = format!(
                "GPGGA,120000,{lat_s},{},{lng_s},{},1,08,0.9,10.0,M,0.0,M,,",
                if s { "S" } else { "N" },
                if w { "W" } else { "E" }
            );
            let sum = body.bytes().fold(0u8, |a, b| a ^ b);
            let r = parse(&format!("${body}*{sum:02X}")).unwrap().unwrap();
            let Lookup::Value(loc) = r.get("location") else { panic!("no location in {body}") };
            let (la, ln) = (loc["lat"].as_f64().unwrap(), loc["lng"].as_f64().unwrap());
            proptest::prop_assert!((-90.0..=90.0).contains(&la), "{}", body);
            proptest::prop_assert!((-180.0..=180.0).contains(&ln), "{}", body);
            proptest::prop_assert!((la.abs() - f64::from(lat) / 100_000.0).abs() < 1e-6, "{}", body);
        }
    }
}
