use rusqlite::{params, Connection};
use std::time::Instant;
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let c = Connection::open(dir.path().join("a.db")).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; CREATE TABLE r(seq INTEGER PRIMARY KEY, s INTEGER, t INTEGER, k INTEGER, v);").unwrap();
    let n = 1_000_000i64;
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let tx = c.unchecked_transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO r(s,t,k,v) VALUES(?,?,?,?)")
                .unwrap();
            for j in 0..1000 {
                st.execute(params![
                    (i + j) % 10,
                    1_700_000_000_000i64 + i + j,
                    0,
                    (i + j) as f64 * 0.5
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        i += 1000;
    }
    let e = t0.elapsed();
    println!("per-row: {:.0}/s", n as f64 / e.as_secs_f64());
    let t0 = Instant::now();
    let mut st = c
        .prepare("SELECT seq,s,t,k,v FROM r WHERE seq >= ? ORDER BY seq LIMIT 4096")
        .unwrap();
    let mut from = 0i64;
    let mut cnt = 0;
    loop {
        let rows: Vec<(i64, i64, i64, i64, f64)> = st
            .query_map([from], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(|x| x.unwrap())
            .collect();
        if rows.is_empty() {
            break;
        }
        from = rows.last().unwrap().0 + 1;
        cnt += rows.len();
    }
    println!(
        "read per-row: {:.0}/s ({cnt})",
        cnt as f64 / t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let mut lo = 0i64;
    while lo < n + 1 {
        let tx = c.unchecked_transaction().unwrap();
        tx.execute(
            "DELETE FROM r WHERE seq >= ? AND seq < ?",
            params![lo, lo + 1000],
        )
        .unwrap();
        tx.commit().unwrap();
        lo += 1000;
    }
    println!(
        "delete per-row: {:.0}/s",
        n as f64 / t0.elapsed().as_secs_f64()
    );
    let sz: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    println!("pages {sz}");
    // blob chunks of 1000 readings ~ 12 bytes each
    c.execute_batch("CREATE TABLE ch(seq INTEGER PRIMARY KEY, n INTEGER, d BLOB);")
        .unwrap();
    let blob = vec![7u8; 12000];
    let t0 = Instant::now();
    for k in 0..1000 {
        let tx = c.unchecked_transaction().unwrap();
        tx.execute(
            "INSERT INTO ch(seq,n,d) VALUES(?,?,?)",
            params![k * 1000, 1000, &blob],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    println!(
        "chunk: {:.0} readings/s",
        n as f64 / t0.elapsed().as_secs_f64()
    );
}
