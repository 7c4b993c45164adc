//! Synthetic fleet readings in the reference's long CSV format, deterministic for a seed: each
//! sensor has its own level, a daily cycle and noise, plus rare spikes and an optional drift.

use std::io::Write;

use rayon::prelude::*;

use super::time::format_ms;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateSpec {
    /// Devices, numbered 1..=devices.
    pub devices: u32,
    /// Tags per device, numbered 1..=tags.
    pub tags: u32,
    /// Time between readings, milliseconds.
    pub interval_ms: i64,
    /// Time covered, milliseconds (readings at start, start+interval, … below start+duration).
    pub duration_ms: i64,
    /// First reading, epoch milliseconds.
    pub start_ms: i64,
    /// Seed: the same seed gives the same bytes.
    pub seed: u64,
    /// Probability that a reading is a spike (an anomaly).
    pub anomaly_rate: f64,
    /// Drift added over the whole duration, in units of each sensor's noise level.
    pub drift: f64,
}

impl Default for GenerateSpec {
    fn default() -> Self {
        Self {
            devices: 10,
            tags: 10,
            interval_ms: 60_000,
            duration_ms: 86_400_000,
            start_ms: 1_535_497_200_000, // 2018-08-28 23:00:00, the reference's sample day
            seed: 42,
            anomaly_rate: 0.001,
            drift: 0.0,
        }
    }
}

impl GenerateSpec {
    /// Number of time steps.
    pub fn steps(&self) -> i64 {
        if self.interval_ms <= 0 {
            0
        } else {
            (self.duration_ms + self.interval_ms - 1) / self.interval_ms
        }
    }

    /// Number of data rows.
    pub fn rows(&self) -> u64 {
        self.steps().max(0) as u64 * u64::from(self.devices) * u64::from(self.tags)
    }
}

/// SplitMix64: a counter-based generator, so any (sensor, step) value is computed independently.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(z: u64) -> f64 {
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// One sensor's fixed character: level, cycle amplitude and noise.
fn sensor_params(seed: u64, sensor: u64) -> (f64, f64, f64) {
    let h = mix(seed ^ mix(sensor));
    let level = 20.0 + 80.0 * unit(h);
    let amp = 1.0 + 9.0 * unit(mix(h ^ 1));
    let noise = 0.5 + 2.0 * unit(mix(h ^ 2));
    (level, amp, noise)
}

/// The value of one sensor at one step.
fn value(spec: &GenerateSpec, sensor: u64, params: (f64, f64, f64), step: i64) -> f64 {
    let (level, amp, noise) = params;
    let t = spec.start_ms + step * spec.interval_ms;
    let day_phase = (t.rem_euclid(86_400_000) as f64) / 86_400_000.0 * std::f64::consts::TAU;
    let h = mix(spec.seed ^ mix(sensor ^ (step as u64).wrapping_mul(0x1_0000_0001)));
    // Box–Muller from two uniforms.
    let (u1, u2) = (unit(h).max(1e-300), unit(mix(h)));
    let gauss = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let progress = step as f64 / spec.steps().max(1) as f64;
    let mut v = level + amp * day_phase.sin() + noise * gauss + spec.drift * noise * progress;
    if unit(mix(h ^ 3)) < spec.anomaly_rate {
        let sign = if unit(mix(h ^ 4)) < 0.5 { -1.0 } else { 1.0 };
        v += sign * (8.0 + 8.0 * unit(mix(h ^ 5))) * (noise + amp);
    }
    v
}

/// Appends a value with two decimals (fast; the generator writes hundreds of megabytes).
fn push_2dp(out: &mut Vec<u8>, v: f64) {
    let cents = (v * 100.0).round() as i64;
    if cents < 0 {
        out.push(b'-');
    }
    let c = cents.unsigned_abs();
    let mut buf = itoa_u64(c / 100);
    out.append(&mut buf);
    out.push(b'.');
    out.push(b'0' + (c % 100 / 10) as u8);
    out.push(b'0' + (c % 10) as u8);
}

fn itoa_u64(mut n: u64) -> Vec<u8> {
    let mut d = Vec::with_capacity(20);
    loop {
        d.push(b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    d.reverse();
    d
}

/// Writes the CSV (header plus rows, time-major then device then tag, like the reference's data).
pub fn generate(spec: &GenerateSpec, out: &mut impl Write) -> std::io::Result<u64> {
    out.write_all(b"TS,Device,Tag,Value\n")?;
    let n_sensors = u64::from(spec.devices) * u64::from(spec.tags);
    let params: Vec<_> = (0..n_sensors)
        .map(|s| sensor_params(spec.seed, s))
        .collect();
    let labels: Vec<Vec<u8>> = (0..n_sensors)
        .map(|s| {
            format!(
                ",{},{},",
                s / u64::from(spec.tags) + 1,
                s % u64::from(spec.tags) + 1
            )
            .into_bytes()
        })
        .collect();
    let steps = spec.steps();
    let block = 16i64;
    let mut written = 20u64;
    let mut first = 0i64;
    while first < steps {
        // A batch of blocks generated in parallel, then written in order.
        let last = (first + block * 32).min(steps);
        let bufs: Vec<Vec<u8>> = (first..last)
            .step_by(block as usize)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|b0| {
                let mut buf = Vec::with_capacity((block as usize) * n_sensors as usize * 32);
                for step in b0..(b0 + block).min(last) {
                    let ts = format_ms(spec.start_ms + step * spec.interval_ms);
                    for s in 0..n_sensors {
                        buf.extend_from_slice(ts.as_bytes());
                        buf.extend_from_slice(&labels[s as usize]);
                        push_2dp(&mut buf, value(spec, s, params[s as usize], step));
                        buf.push(b'\n');
                    }
                }
                buf
            })
            .collect();
        for b in bufs {
            written += b.len() as u64;
            out.write_all(&b)?;
        }
        first = last;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::csv::{CsvOptions, parse};

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_the_reader_reads_them_back() {
        let spec = GenerateSpec {
            devices: 3,
            tags: 2,
            duration_ms: 3_600_000,
            anomaly_rate: 0.05,
            ..GenerateSpec::default()
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        let n = generate(&spec, &mut a).unwrap();
        generate(&spec, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(n as usize, a.len());
        assert!(a.starts_with(b"TS,Device,Tag,Value\n2018-08-28 23:00:00.000,1,1,"));
        let parsed = parse(
            "gen.csv",
            &bytes::Bytes::from(a),
            &CsvOptions {
                strict: true,
                ..CsvOptions::default()
            },
        )
        .unwrap();
        assert_eq!(parsed.sensors.len(), 6);
        assert_eq!(parsed.rows as u64, spec.rows());
        assert_eq!(spec.rows(), 360);
    }

    #[test]
    fn two_decimal_formatting_handles_signs_and_rounding() {
        let mut out = Vec::new();
        for v in [84.534, -0.004, -1.5, 0.0, 1234.996] {
            push_2dp(&mut out, v);
            out.push(b' ');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "84.53 0.00 -1.50 0.00 1235.00 "
        );
    }
}
