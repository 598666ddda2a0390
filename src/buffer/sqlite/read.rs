//! Reading: readings and packed messages from the chunks and the tail,
//! and the damaged chunks found on the way.

use std::collections::VecDeque;
use std::sync::Arc;

use rusqlite::{params, OptionalExtension};

use super::ack::HandedChunk;
use super::ack::HANDED_MAX;
use super::append::TailEntry;
use super::{to_i64, IdMap, SqliteStore};
use crate::buffer::codec::{self, Chunk, Decoder};
use crate::buffer::{ChunkFit, MessageBuilder, Packed, Stored};
use crate::reading::Reading;

/// A chunk found damaged: its row, and why.
pub(super) struct Damaged {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) n: u64,
    pub(super) error: codec::DecodeError,
    /// The sensors it holds, as far as its damaged head says.
    pub(super) sensors: Vec<i64>,
}

impl Damaged {
    pub(super) fn new(
        first: i64,
        last: i64,
        n: i64,
        data: &[u8],
        error: codec::DecodeError,
    ) -> Damaged {
        Damaged {
            first: first.max(0) as u64,
            last: last.max(0) as u64,
            n: n.max(0) as u64,
            error,
            sensors: codec::sensors_unchecked(data),
        }
    }
}

/// A chunk at or above `checked_from` must carry a checksum.
pub(super) fn require_checksum(
    data: &[u8],
    first_seq: i64,
    checked_from: u64,
) -> Result<(), codec::DecodeError> {
    if first_seq.max(0) as u64 >= checked_from && !codec::is_checked(data) {
        return Err(codec::DecodeError("no checksum where one is required"));
    }
    Ok(())
}

impl SqliteStore {
    pub(super) fn try_read(&mut self, from: u64, max: usize) -> rusqlite::Result<Vec<Stored>> {
        let from = from.max(self.acked_below);
        let mut out = Vec::with_capacity(max.min(4096));
        let mut damaged = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        // Sensor names for this batch only: another thread drops these
        // readings, and a shared reference count would bounce between cores.
        let mut local: Vec<(i64, Arc<str>)> = Vec::new();
        let mut name = |names: &IdMap<Arc<str>>, sensor: i64| -> Arc<str> {
            if let Some((_, n)) = local.iter().find(|(id, _)| *id == sensor) {
                return n.clone();
            }
            let n: Arc<str> = match names.get(&sensor) {
                Some(n) => Arc::from(&**n),
                None => Arc::from(format!("unknown-sensor-{sensor}")),
            };
            if local.len() < 64 {
                local.push((sensor, n.clone()));
            }
            n
        };
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT last_seq, n, data, first_seq FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq",
            )?;
            let mut rows = stmt.query(params![to_i64(from)])?;
            let checked_from = self.checked_from;
            'rows: while let Some(row) = rows.next()? {
                let data = row.get_ref(2)?.as_blob()?;
                let first = row.get::<_, i64>(3)?;
                let damage = |e| -> rusqlite::Result<Damaged> {
                    Ok(Damaged::new(first, row.get(0)?, row.get(1)?, data, e))
                };
                // The whole chunk is checked before any of it is returned.
                let decoded = require_checksum(data, first, checked_from)
                    .and_then(|()| Decoder::new(data))
                    .and_then(|d| d.collect::<Result<Vec<_>, _>>());
                let records = match decoded {
                    Ok(r) => r,
                    Err(e) => {
                        damaged.push(damage(e)?);
                        continue;
                    }
                };
                for rec in records {
                    if rec.seq < from {
                        continue;
                    }
                    out.push(Stored {
                        seq: rec.seq,
                        reading: Reading {
                            sensor_id: name(&self.names, rec.sensor),
                            time_ms: rec.t,
                            value: rec.value(),
                        },
                    });
                    if out.len() >= max {
                        break 'rows;
                    }
                }
            }
        }
        if !damaged.is_empty() {
            self.drop_damaged(&damaged)?;
            // Read again without the damaged chunks, so that what is returned is what is kept.
            return self.try_read(from, max);
        }
        let start = self.tail.partition_point(|e| e.seq < from);
        for e in self.tail.range(start..) {
            if out.len() >= max {
                break;
            }
            out.push(Stored {
                seq: e.seq,
                reading: e.reading.clone(),
            });
        }
        Ok(out)
    }

    /// Messages packed straight from the chunks: the values are kept as
    /// JSON text, so this copies bytes and formats times, nothing more.
    pub(super) fn try_read_packed(
        &mut self,
        from: u64,
        max_bytes: usize,
        max_messages: usize,
    ) -> rusqlite::Result<Vec<Packed>> {
        if max_messages == 0 {
            return Ok(Vec::new());
        }
        // A read from just past the end of the drain's list of chunks given
        // whole extends it; any other read starts a new one.
        let from = from.max(self.acked_below);
        if self.handed_next != Some(from) {
            self.forget_handed();
            self.handed_start = from;
        }
        let mut extending = self.handed.len() < HANDED_MAX;
        let checked_from = self.checked_from;
        let handed = &mut self.handed;
        let handed_next = &mut self.handed_next;
        let mut damaged = Vec::new();
        let messages = {
            let names = &self.names;
            // A few sensors at a time, usually: a short list before the map.
            let mut recent: Vec<(i64, &str)> = Vec::with_capacity(8);
            let mut name = |sensor: i64| -> &str {
                if let Some((_, n)) = recent.iter().find(|(id, _)| *id == sensor) {
                    return n;
                }
                let n = names.get(&sensor).map_or("unknown-sensor", |n| &**n);
                if recent.len() == 8 {
                    recent.remove(0);
                }
                recent.push((sensor, n));
                n
            };
            let mut b = MessageBuilder::new(max_bytes, max_messages);
            let mut stmt = self.conn.prepare_cached(
                "SELECT last_seq, n, data, first_seq FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq",
            )?;
            let mut rows = stmt.query(params![to_i64(from)])?;
            let mut full = false;
            'rows: while let Some(row) = rows.next()? {
                let data = row.get_ref(2)?.as_blob()?;
                let last = row.get::<_, i64>(0)? as u64;
                let first = row.get::<_, i64>(3)?;
                let damage = |e| -> rusqlite::Result<Damaged> {
                    Ok(Damaged::new(first, last as i64, row.get(1)?, data, e))
                };
                let row_n = row.get::<_, i64>(1).unwrap_or(-1);
                let parsed = parse_whole(data, first, last, row_n, checked_from);
                match parsed {
                    Ok(Some(c)) if c.seq0 >= from => {
                        let runs: Vec<(&str, &[u8])> =
                            c.groups.iter().map(|(s, text)| (name(*s), *text)).collect();
                        match b.add_chunk(c.seq0, last, c.n as usize, &runs) {
                            ChunkFit::Taken => {
                                if extending {
                                    handed.push_back(HandedChunk {
                                        first: c.seq0,
                                        last,
                                        n: c.n,
                                    });
                                    *handed_next = Some(last + 1);
                                    extending = handed.len() < HANDED_MAX;
                                }
                                continue;
                            }
                            ChunkFit::Full => {
                                full = true;
                                break 'rows;
                            }
                            ChunkFit::TooLarge => {}
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        damaged.push(damage(e)?);
                        continue;
                    }
                }
                // Read reading by reading: the list stops before this chunk.
                extending = false;
                *handed_next = None;
                let decoder = match Decoder::new(data) {
                    Ok(d) => d,
                    Err(e) => {
                        damaged.push(damage(e)?);
                        continue;
                    }
                };
                for rec in decoder {
                    let rec = match rec {
                        Ok(r) => r,
                        Err(e) => {
                            // What was taken of it goes too: the read starts again.
                            damaged.push(damage(e)?);
                            continue 'rows;
                        }
                    };
                    if rec.seq < from {
                        continue;
                    }
                    if !b.add(rec.seq, name(rec.sensor), rec.t, rec.value) {
                        full = true;
                        break 'rows;
                    }
                }
            }
            if !full {
                pack_tail(&self.tail, from, &mut b);
            }
            b.finish(false)
        };
        if !damaged.is_empty() {
            self.drop_damaged(&damaged)?;
            return self.try_read_packed(from, max_bytes, max_messages);
        }
        Ok(messages)
    }

    /// Deletes chunks whose data failed its checksum or cannot be decoded
    /// (damaged on disk), counts their readings as dropped and says in one
    /// log line what was lost: how many readings, which seqs, which sensors.
    pub(super) fn drop_damaged(&mut self, damaged: &[Damaged]) -> rusqlite::Result<()> {
        self.begin()?;
        self.forget_handed();
        let mut lost = 0u64;
        let mut ranges = Vec::new();
        let mut sensors: Vec<i64> = Vec::new();
        let mut reasons: Vec<&'static str> = Vec::new();
        for d in damaged {
            let deleted = self
                .conn
                .prepare_cached("DELETE FROM chunks WHERE last_seq = ?1")?
                .execute(params![to_i64(d.last)])?;
            if deleted == 0 {
                continue;
            }
            lost += d.n;
            ranges.push(format!("{}..={}", d.first, d.last));
            sensors.extend(&d.sensors);
            if !reasons.contains(&d.error.0) {
                reasons.push(d.error.0);
            }
        }
        if lost == 0 {
            return Ok(());
        }
        self.pending = self.pending.saturating_sub(lost);
        self.dropped_since_start += lost;
        self.dropped_total += lost;
        self.meta_dirty = true;
        sensors.sort_unstable();
        sensors.dedup();
        let names: Vec<&str> = sensors
            .iter()
            .filter_map(|id| self.names.get(id).map(|n| &**n))
            .collect();
        let names = if names.is_empty() {
            "unknown (the chunk's head is damaged too)".to_string()
        } else {
            names.join(", ")
        };
        let seqs = ranges.join(", ");
        let reason = reasons.join(", ");
        tracing::error!(
            readings = lost,
            seqs = %seqs,
            sensors = %names,
            reason = %reason,
            "damaged buffered readings were dropped, not sent: {lost} readings, seqs {seqs}, of sensors {names} ({reason}; the disk returned other bytes than were written: check the storage). They count as dropped"
        );
        Ok(())
    }

    pub(super) fn oldest_ms(&mut self) -> rusqlite::Result<Option<i64>> {
        let data: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT data FROM chunks WHERE last_seq >= ?1 ORDER BY last_seq LIMIT 1",
                params![to_i64(self.acked_below)],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(data) = data {
            if let Some(Ok(rec)) = Decoder::new(&data).ok().and_then(|mut d| d.next()) {
                return Ok(Some(rec.t));
            }
        }
        Ok(self.tail.front().map(|e| e.reading.time_ms))
    }
}

/// A chunk of version 2 or 3, ready to be copied sensor by sensor once its
/// checksum matched (in `Chunk::parse`); `None` for version 1. Its head must
/// agree with its row (counts and acknowledgements come from the row): if
/// not, it is damaged.
fn parse_whole(
    data: &[u8],
    first: i64,
    last: u64,
    row_n: i64,
    checked_from: u64,
) -> Result<Option<Chunk<'_>>, codec::DecodeError> {
    require_checksum(data, first, checked_from)
        .and_then(|()| Chunk::parse(data))
        .and_then(|c| match c {
            Some(c) if c.seq0 != first as u64 || c.n != row_n as u64 || !c.fits(last) => {
                Err(codec::DecodeError("head disagrees with its row"))
            }
            c => Ok(c),
        })
}

/// Adds the readings of the tail from `from` on, while they fit.
fn pack_tail<'a>(tail: &'a VecDeque<TailEntry>, from: u64, b: &mut MessageBuilder<'a>) {
    let start = tail.partition_point(|e| e.seq < from);
    let mut text = String::new();
    for e in tail.range(start..) {
        text.clear();
        e.reading.value.write_json(&mut text);
        if !b.add(
            e.seq,
            &e.reading.sensor_id,
            e.reading.time_ms,
            text.as_bytes(),
        ) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::super::testing::{fill, store};
    use crate::buffer::codec;
    use crate::buffer::Store;

    #[test]
    fn a_chunk_whose_head_disagrees_with_its_row_is_dropped_as_damaged_not_sent() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        fill(&mut s, 3000);
        let (last, n, mut data): (i64, i64, Vec<u8>) = s
            .conn
            .query_row(
                "SELECT last_seq, n, data FROM chunks ORDER BY last_seq LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        // Its count of readings, damaged (the row still says `n`).
        data[2] = 0xff;
        data[3] = 0x7f;
        s.conn
            .execute(
                "UPDATE chunks SET data = ?1 WHERE last_seq = ?2",
                params![data, last],
            )
            .unwrap();
        let msgs = s.read_packed(0, 8192, 4).unwrap();
        assert!(
            msgs[0].seqs.start > last as u64,
            "the damaged chunk is not sent"
        );
        assert!(msgs.iter().all(|m| m.count < 400));
        assert_eq!(s.stats().unwrap().pending, 3000 - n as u64);
        for m in &msgs {
            s.ack(m.seqs.clone()).unwrap();
        }
        let sent: usize = msgs.iter().map(|m| m.count).sum();
        assert_eq!(s.stats().unwrap().pending, 3000 - n as u64 - sent as u64);
    }

    #[test]
    fn a_chunk_passed_off_as_an_older_version_without_its_checksum_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        fill(&mut s, 3000);
        let (last, n, data): (i64, i64, Vec<u8>) = s
            .conn
            .query_row(
                "SELECT last_seq, n, data FROM chunks ORDER BY last_seq LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        // A well-formed version 2 chunk: what a damaged version byte (and
        // checksum) could make of it.
        let v2 = [&[2u8][..], &data[5..]].concat();
        assert_eq!(codec::decode_all(&v2).unwrap().len() as i64, n);
        s.conn
            .execute(
                "UPDATE chunks SET data = ?1 WHERE last_seq = ?2",
                params![v2, last],
            )
            .unwrap();
        let all = s.read(0, usize::MAX).unwrap();
        assert_eq!(all[0].seq, last as u64 + 1, "not returned");
        let stats = s.stats().unwrap();
        assert_eq!(stats.dropped, n as u64, "counted");
        assert_eq!(stats.pending, 3000 - n as u64);
    }
}
