//! Modbus RTU replies from a device on the bus. The input describes a few
//! points (planned into batched requests as the bus task does) and the
//! bytes the device answers to the first request; tokio-modbus decodes the
//! frame (as in the daemon) and the points are extracted and decoded from
//! the data. Any reply gives values or an error, never a panic or a hang.
//!
//! Input: `flags unit base_hi base_lo max_gap npoints (offset type)* reply...`.
//! flags bits 0-1: function; bit 2: prepend the right unit and function
//! code to the reply; bit 3: append a correct CRC; bit 4: no batching.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use thingplus_gw::config::{ModbusDataType, ModbusFunction, ModbusPoint, WordOrder};
use thingplus_gw::sensor::modbus::{
    extract, plan, read_batch, Data, Outcome, MAX_BITS, MAX_REGISTERS,
};
use tokio::io::AsyncWriteExt;
use tokio_modbus::Slave;

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
});

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

const TYPES: [ModbusDataType; 5] = [
    ModbusDataType::U16,
    ModbusDataType::I16,
    ModbusDataType::U32,
    ModbusDataType::I32,
    ModbusDataType::F32,
];

fuzz_target!(|data: &[u8]| {
    let [flags, unit, base_hi, base_lo, max_gap, npoints, rest @ ..] = data else {
        return;
    };
    let function = [
        ModbusFunction::Coil,
        ModbusFunction::Discrete,
        ModbusFunction::Holding,
        ModbusFunction::Input,
    ][usize::from(flags & 3)];
    let base = u16::from_be_bytes([*base_hi, *base_lo]);
    let n = usize::from(npoints % 8) + 1;
    if rest.len() < 2 * n {
        return;
    }
    let (desc, reply) = rest.split_at(2 * n);
    let points: Vec<ModbusPoint> = desc
        .chunks(2)
        .map(|d| ModbusPoint {
            bus: "b".into(),
            unit: *unit,
            function,
            address: base.saturating_add(u16::from(d[0])),
            data_type: if function.is_bits() {
                ModbusDataType::Bool
            } else {
                TYPES[usize::from(d[1] % 5)]
            },
            word_order: if d[1] & 0x80 != 0 {
                WordOrder::Little
            } else {
                WordOrder::Big
            },
        })
        .collect();
    let members: Vec<usize> = (0..points.len()).collect();
    let batches = plan(&points, &members, flags & 0x10 == 0, u16::from(*max_gap));

    // Every point is in exactly one batch, inside its range, within the protocol limit.
    let mut seen = vec![0; points.len()];
    for b in &batches {
        let limit = if b.function.is_bits() {
            MAX_BITS
        } else {
            MAX_REGISTERS
        };
        assert!(b.count >= 1 && b.count <= limit, "{b:?}");
        for &m in &b.members {
            seen[m] += 1;
            let p = &points[m];
            assert!(p.address >= b.start);
            assert!(
                u32::from(p.address) + u32::from(p.data_type.width())
                    <= u32::from(b.start) + u32::from(b.count),
                "{b:?} {p:?}"
            );
        }
    }
    assert!(seen.iter().all(|&s| s == 1));

    // The device's reply to the first request.
    let batch = &batches[0];
    let fc = match function {
        ModbusFunction::Coil => 1,
        ModbusFunction::Discrete => 2,
        ModbusFunction::Holding => 3,
        ModbusFunction::Input => 4,
    };
    let mut frame = Vec::with_capacity(reply.len() + 4);
    if flags & 0x04 != 0 {
        frame.extend_from_slice(&[*unit, fc]);
    }
    frame.extend_from_slice(reply);
    if flags & 0x08 != 0 {
        let crc = crc16(&frame);
        frame.extend_from_slice(&crc.to_le_bytes());
    }
    let outcome = RT.block_on(async {
        let (ours, mut device) = tokio::io::duplex(1 << 16);
        device.write_all(&frame).await.expect("pipe");
        device.shutdown().await.expect("pipe"); // then end of file
        let mut ctx = tokio_modbus::client::rtu::attach_slave(ours, Slave(*unit));
        // What the bus task does (it adds a timeout).
        let r = read_batch(&mut ctx, batch).await;
        drop(device);
        r
    });
    if let Outcome::Data(data) = outcome {
        // As the bus task: every member of the batch from the data.
        let got = match &data {
            Data::Words(w) => w.len(),
            Data::Bits(b) => b.len(),
        };
        assert_eq!(got, usize::from(batch.count));
        for &m in &batch.members {
            match extract(&data, batch, &points[m]) {
                Ok(v) => assert!(v.is_finite()),
                Err(e) => assert_eq!(points[m].data_type, ModbusDataType::F32, "{e}"),
            }
        }
    }
});
