//! Sans-IO codec benches: frame encode + decode, and the CBOR payload codec.
//!
//! Run with `cargo bench --bench frame`.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use hsipc::proto::codec;
use hsipc::proto::frame::{Frame, FrameKind};
use serde::{Deserialize, Serialize};

/// The largest frame accepted (hsipc's default maximum message length).
const MAX: usize = 32 << 20;

fn frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for (name, len) in [("encode_decode_64B", 64), ("encode_decode_64KiB", 64 * 1024)] {
        let payload = Bytes::from(vec![0xA5u8; len]);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let frame = Frame::new(FrameKind::Request, 0, 1, 2)
                    .with_name("svc.method")
                    .with_payload(black_box(payload.clone()));
                let bytes = frame.encode(MAX).expect("encode");
                let back = Frame::decode(black_box(bytes), MAX).expect("decode");
                black_box(back)
            })
        });
    }
    g.finish();
}

/// A small event, about 64 bytes as CBOR.
#[derive(Serialize, Deserialize)]
struct Reading {
    seq: u64,
    value: f64,
    sensor: String,
    raw: Bytes,
}

fn cbor(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let payload = Bytes::from(vec![0xA5u8; 64]);
    g.throughput(Throughput::Bytes(64));
    g.bench_function("cbor_64B", |b| {
        b.iter(|| {
            let enc = codec::encode(black_box(&payload)).expect("encode");
            let back: Bytes = codec::decode(black_box(&enc)).expect("decode");
            black_box(back)
        })
    });
    let reading =
        Reading { seq: 123_456_789, value: 21.5, sensor: "room12/temperature".into(), raw: Bytes::from(vec![7u8; 16]) };
    let len = codec::encode(&reading).expect("encode").len();
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("cbor_struct_64B", |b| {
        b.iter(|| {
            let enc = codec::encode(black_box(&reading)).expect("encode");
            let back: Reading = codec::decode(black_box(&enc)).expect("decode");
            black_box(back)
        })
    });
    g.finish();
}

/// Raw bytes as `Bytes` (one copy) against `Vec<u8>` (through serde a byte at a time, written
/// as a byte string) and against `Vec<u8>` written as CBOR's array of integers (what hsipc did
/// before byte sequences became byte strings).
fn binary(c: &mut Criterion) {
    let mut g = c.benchmark_group("binary");
    for (label, len) in [("64B", 64usize), ("4KiB", 4096), ("64KiB", 64 * 1024), ("1MiB", 1 << 20)] {
        let raw: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let bytes = Bytes::from(raw.clone());
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("bytes_{label}"), |b| {
            b.iter(|| {
                let enc = codec::encode(black_box(&bytes)).expect("encode");
                let back: Bytes = codec::decode_from(black_box(&enc)).expect("decode");
                black_box(back)
            })
        });
        g.bench_function(format!("vec_u8_{label}"), |b| {
            b.iter(|| {
                let enc = codec::encode(black_box(&raw)).expect("encode");
                let back: Vec<u8> = codec::decode_from(black_box(&enc)).expect("decode");
                black_box(back)
            })
        });
        g.bench_function(format!("slice_u8_{label}"), |b| {
            b.iter(|| {
                let enc = codec::encode(black_box(&&raw[..])).expect("encode");
                let back: Vec<u8> = codec::decode_from(black_box(&enc)).expect("decode");
                black_box(back)
            })
        });
        // A `Vec<u8>` inside a struct goes through serde (one byte at a time).
        g.bench_function(format!("vec_u8_in_tuple_{label}"), |b| {
            b.iter(|| {
                let enc = codec::encode(black_box(&(1u8, &raw))).expect("encode");
                let back: (u8, Vec<u8>) = codec::decode_from(black_box(&enc)).expect("decode");
                black_box(back)
            })
        });
        if len <= 64 * 1024 {
            g.bench_function(format!("vec_u8_as_array_{label}"), |b| {
                b.iter(|| {
                    let mut enc = Vec::new();
                    ciborium::into_writer(black_box(&raw), &mut enc).expect("encode");
                    let back: Vec<u8> = codec::decode(black_box(&enc)).expect("decode");
                    black_box(back)
                })
            });
        }
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    frame(&mut c);
    cbor(&mut c);
    binary(&mut c);
    c.final_summary();
}
