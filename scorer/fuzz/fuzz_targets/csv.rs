//! Fuzz target: the readings CSV reader, partitioner and aggregation must return Ok or Err on any
//! input, never panic, hang or exhaust memory; lenient and strict reads must agree when both pass.
#![cfg_attr(fuzzing, no_main)]

use fleetscore_scorer::data::aggregate::{Aggregation, aggregate};
use fleetscore_scorer::data::csv::{CsvOptions, parse};
use fleetscore_scorer::data::partition::partition;

fn check(data: &[u8]) {
    let buf = bytes::Bytes::copy_from_slice(data);
    let lenient = parse("fuzz.csv", &buf, &CsvOptions { parse_time: true, ..CsvOptions::default() });
    let strict = parse("fuzz.csv", &buf, &CsvOptions { strict: true, parse_time: true, select: None });
    if let (Ok(l), Ok(s)) = (&lenient, &strict) {
        assert_eq!(l.sensors.len(), s.sensors.len());
        assert_eq!(l.bad_rows, 0);
    }
    if let Ok(p) = lenient {
        let agg = Aggregation::parse("1m", "mean,min,max,std,count").unwrap_or_else(|_| unreachable!());
        for series in p.sensors.values() {
            assert_eq!(series.ts.len(), series.values.len());
            for i in 0..series.len() {
                let _ = series.ts_text(i);
            }
            let w = aggregate(&agg, &series.time_ms, &series.values);
            assert_eq!(w.start_ms.len(), w.x.nrows());
        }
    }
    if let Ok(parts) = partition("fuzz.csv", data) {
        for part in parts.parts {
            assert!(part.content.ends_with(b"\n"));
        }
    }
}

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

#[cfg(not(fuzzing))]
fn main() {
    fleetscore_scorer_fuzz::smoke(
        "csv",
        &[
            b"TS,Device,Tag,Value\n2018-08-28 23:00:05.000,1,4,84.53\n",
            b"\xEF\xBB\xBF\"TS\",\"Device\",\"Tag\",\"Value\"\r\n\"2018-08-28T23:00:05Z\",1,4,\"1e3\"\r\n",
        ],
        check,
    );
}
