//! Appending: readings go into the in-memory tail at once, and from there
//! into chunks (see [`super::codec`]) when full chunks wait or at a commit.

use std::sync::Arc;

use rusqlite::params;

use super::{to_i64, SqliteStore, BOUNDS_CHECK_EVERY, CHUNK_BYTES, CHUNK_READINGS, TAIL_FLUSH};
use crate::clock::MAX_STAMP_LEAD_MS;
use crate::reading::Reading;

pub(super) struct SensorEntry {
    pub(super) id: i64,
    pub(super) last_t: i64,
    /// A clamped time was logged for this sensor.
    pub(super) warned: bool,
}

/// A reading appended and not yet written into a chunk.
pub(super) struct TailEntry {
    pub(super) seq: u64,
    pub(super) sensor: i64,
    pub(super) reading: Reading,
}

impl SqliteStore {
    /// The database id of a sensor, registering it when new. Its row is
    /// written with the next commit ([`SqliteStore::commit_with_meta`]), so
    /// that an append never fails (a full disk fails commits, not appends).
    pub(super) fn sensor_db_id(&mut self, name: &Arc<str>, t: i64) -> i64 {
        if let Some(e) = self.sensors.get(name) {
            return e.id;
        }
        let id = self.names.keys().max().map_or(1, |m| m + 1);
        self.unsaved_sensors.push(id);
        self.sensors.insert(
            name.clone(),
            SensorEntry {
                id,
                last_t: t.saturating_sub(1),
                warned: false,
            },
        );
        self.names.insert(id, name.clone());
        id
    }

    /// Puts the readings into the tail; nothing here touches the disk.
    pub(super) fn push_readings(&mut self, readings: &[Reading]) {
        for r in readings {
            let id = self.sensor_db_id(&r.sensor_id, r.time_ms);
            let e = self
                .sensors
                .get_mut(&r.sensor_id)
                .expect("registered above");
            let behind = e.last_t.saturating_sub(r.time_ms);
            let t = if r.time_ms > e.last_t {
                r.time_ms
            } else if behind <= MAX_STAMP_LEAD_MS {
                // A small step back (NTP): keep the order Thing+ requires.
                if !e.warned {
                    e.warned = true;
                    tracing::warn!(
                        sensor_id = %r.sensor_id,
                        time_ms = r.time_ms,
                        newest_buffered_ms = e.last_t,
                        "a reading of {} is older than this sensor's newest buffered one (did the clock step back?): its time is moved forward to keep the order Thing+ requires",
                        r.sensor_id
                    );
                }
                e.last_t.saturating_add(1)
            } else {
                // A larger step back means the newest time was wrong (a wrong
                // timeSync or clock setting, since corrected): follow the
                // clock, as the clock itself does, instead of stamping every
                // later reading in the future for as long as the error was.
                tracing::warn!(
                    sensor_id = %r.sensor_id,
                    time_ms = r.time_ms,
                    newest_buffered_ms = e.last_t,
                    "a reading of {} is {} s older than this sensor's newest buffered one: that time was wrong (the clock went back by more than {} s), so readings keep the clock's time from here on",
                    r.sensor_id,
                    behind / 1000,
                    MAX_STAMP_LEAD_MS / 1000
                );
                r.time_ms
            };
            e.last_t = t;
            self.dirty_sensors.push(id);
            let mut reading = r.clone();
            reading.time_ms = t;
            self.tail.push_back(TailEntry {
                seq: self.next_seq,
                sensor: id,
                reading,
            });
            self.next_seq += 1;
            self.pending += 1;
            self.since_check += 1;
        }
        if self.dirty_sensors.len() > 1024 {
            self.dirty_sensors.sort_unstable();
            self.dirty_sensors.dedup();
        }
    }

    /// After appends: writes full chunks out of a long tail, checks the
    /// bounds when due.
    pub(super) fn after_append(&mut self) -> rusqlite::Result<()> {
        if self.tail.len() >= TAIL_FLUSH {
            self.flush_tail(false)?;
        }
        if self.since_check >= BOUNDS_CHECK_EVERY && self.in_tx {
            self.enforce_bounds()?;
        }
        Ok(())
    }

    pub(super) fn insert_chunk(
        &mut self,
        first: u64,
        last: u64,
        n: u64,
        data: &[u8],
    ) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO chunks(last_seq, first_seq, n, data) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![to_i64(last), to_i64(first), to_i64(n), data])?;
        Ok(())
    }

    /// Writes the tail as chunks: all of it, or only full chunks.
    pub(super) fn flush_tail(&mut self, all: bool) -> rusqlite::Result<()> {
        while !self.tail.is_empty() {
            if !all && (self.tail.len() as u64) < CHUNK_READINGS {
                break;
            }
            self.begin()?;
            let mut taken = 0;
            for e in &self.tail {
                if self.encoder.len() >= CHUNK_READINGS || self.encoder.bytes() >= CHUNK_BYTES {
                    break;
                }
                self.encoder
                    .push(e.seq, e.sensor, e.reading.time_ms, &e.reading.value);
                taken += 1;
            }
            let (first, last, n, data) = self.encoder.finish().expect("at least one reading");
            self.insert_chunk(first, last, n, &data)?;
            // Kept until committed: a rolled-back commit puts them back.
            self.written.extend(self.tail.drain(..taken));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::store;
    use super::*;
    use crate::buffer::Store;
    use crate::reading::Value;

    #[test]
    fn a_small_step_back_keeps_the_order_a_large_one_follows_the_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store(tmp.path());
        let t0 = 1_800_000_000_000;
        let times = |s: &mut SqliteStore| -> Vec<i64> {
            s.read(0, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|r| r.reading.time_ms)
                .collect()
        };
        let at = |t: i64| Reading::new("a", t, Value::Number(1.0));
        // 30 s back: moved just after the newest.
        s.append(vec![at(t0), at(t0 - 30_000)]).unwrap();
        s.commit().unwrap();
        assert_eq!(times(&mut s), [t0, t0 + 1]);
        // An hour back: the newest time was wrong; the clock's time is kept,
        // and the next readings follow it, also after a reopen.
        s.append(vec![at(t0 - 3_600_000)]).unwrap();
        s.commit().unwrap();
        drop(s);
        let mut s = store(tmp.path());
        s.append(vec![at(t0 - 3_599_000)]).unwrap();
        s.commit().unwrap();
        assert_eq!(times(&mut s), [t0, t0 + 1, t0 - 3_600_000, t0 - 3_599_000]);
    }
}
