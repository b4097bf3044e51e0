//! Deterministic fuzzing helpers for tests/fuzz.rs: a seeded PRNG (every input is derived from the
//! run's seed and its own index, so one input can be replayed alone), byte-level mutations, the
//! environment knobs that scale a run, and a tally of outcomes printed as the run's figures.

use std::collections::BTreeMap;

/// xorshift64* seeded through splitmix64: fast, tiny, and the same sequence on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed).max(1))
    }

    /// The generator of input `index` of a run seeded with `seed`.
    pub fn for_input(seed: u64, stream: u64, index: u64) -> Rng {
        Rng::new(splitmix64(seed ^ splitmix64(stream.wrapping_mul(0x1000_0000_01b3) ^ index)))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0, "below(0)");
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length skewed towards small values: mostly below 8, sometimes up to `max`.
    pub fn small_len(&mut self, max: usize) -> usize {
        match self.below(4) {
            0..=2 => self.below(8.min(max + 1)),
            _ => self.below(max + 1),
        }
    }
}

/// Values that sit on the boundaries decoders get wrong.
pub const INTERESTING_I32: &[i32] = &[
    0,
    1,
    -1,
    2,
    7,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x10000,
    0x7fff_ffff,
    i32::MIN,
    i32::MIN + 1,
    0x7fff_fffe,
    1 << 20,
    1 << 24,
    -2,
    -128,
];
pub const INTERESTING_I64: &[i64] = &[0, 1, -1, i64::MAX, i64::MIN, 1 << 31, -(1 << 31), 1 << 32, 0x7fff_ffff];

/// Zigzag varint (Kafka's record fields).
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// One random edit of `b`: bit flip, boundary byte, boundary i16/i32/i64 (big-endian) or varint
/// written over it, bytes inserted, removed, duplicated, truncated or appended. Positions at or
/// after `protect` only (the bytes before are left alone: a frame's size prefix, say).
pub fn mutate_once(rng: &mut Rng, b: &mut Vec<u8>, protect: usize) {
    let len = b.len();
    let pos = |rng: &mut Rng| protect + rng.below(len.saturating_sub(protect).max(1));
    match rng.below(12) {
        0 | 1 if len > protect => {
            let at = pos(rng);
            b[at] ^= 1 << rng.below(8);
        }
        2 if len > protect => {
            let at = pos(rng);
            b[at] = *rng.pick(&[0u8, 1, 0x7f, 0x80, 0xff, 0xfe, 0x40, 0x20, 0x10]);
        }
        3 if len > protect => {
            let at = pos(rng);
            b[at] = rng.byte();
        }
        4 if len >= protect + 2 => {
            let at = protect + rng.below(len - protect - 1);
            let v = *rng.pick(INTERESTING_I32) as i16;
            b[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
        5 if len >= protect + 4 => {
            let at = protect + rng.below(len - protect - 3);
            let v = *rng.pick(INTERESTING_I32);
            b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        6 if len >= protect + 8 => {
            let at = protect + rng.below(len - protect - 7);
            let v = *rng.pick(INTERESTING_I64);
            b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        }
        7 if len > protect => {
            // A varint over the bytes at `at` (may be longer or shorter than what it replaces).
            let at = pos(rng);
            let mut v = Vec::new();
            let value = if rng.chance(50) { i64::from(*rng.pick(INTERESTING_I32)) } else { *rng.pick(INTERESTING_I64) };
            put_varint(&mut v, value);
            let old = rng.below(4).min(len - at);
            b.splice(at..at + old, v);
        }
        8 => {
            let at = protect + rng.below(len.saturating_sub(protect) + 1).min(len);
            let n = 1 + rng.small_len(32);
            let ins = if rng.chance(50) { rng.bytes(n) } else { vec![*rng.pick(&[0u8, 0xff, 0x80]); n] };
            b.splice(at..at, ins);
        }
        9 if len > protect => {
            let at = pos(rng);
            let n = (1 + rng.small_len(64)).min(len - at);
            b.drain(at..at + n);
        }
        10 if len > protect => {
            // Duplicate a range next to itself (a repeated field, record or array element).
            let at = pos(rng);
            let n = (1 + rng.small_len(64)).min(len - at);
            let copy = b[at..at + n].to_vec();
            b.splice(at + n..at + n, copy);
        }
        11 if len > protect => {
            if rng.chance(50) {
                b.truncate(pos(rng));
            } else {
                let n = 1 + rng.small_len(64);
                let tail = rng.bytes(n);
                b.extend_from_slice(&tail);
            }
        }
        _ => {
            let n = 1 + rng.small_len(8);
            let tail = rng.bytes(n);
            b.extend_from_slice(&tail);
        }
    }
}

/// `ops` random edits.
pub fn mutate(rng: &mut Rng, b: &mut Vec<u8>, protect: usize, ops: usize) {
    for _ in 0..ops {
        mutate_once(rng, b, protect);
    }
}

/// A number from the environment (`SLUICE_FUZZ_*`), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        Err(_) => default,
    }
}

/// The run's seed: `SLUICE_FUZZ_SEED`, else one from the clock (printed, so a run can be replayed).
pub fn seed() -> u64 {
    match std::env::var("SLUICE_FUZZ_SEED") {
        Ok(v) => v.trim().parse().unwrap_or_else(|e| panic!("SLUICE_FUZZ_SEED={v:?}: {e}")),
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        }
    }
}

/// Counts of outcomes by name, printed sorted.
#[derive(Default, Debug, Clone)]
pub struct Tally(pub BTreeMap<String, u64>);

impl Tally {
    pub fn add(&mut self, what: impl Into<String>) {
        *self.0.entry(what.into()).or_insert(0) += 1;
    }

    pub fn get(&self, what: &str) -> u64 {
        self.0.get(what).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: &Tally) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_insert(0) += v;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// One line per outcome, most frequent first.
    pub fn report(&self) -> String {
        let mut rows: Vec<_> = self.0.iter().collect();
        rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        rows.iter().map(|(k, v)| format!("  {v:>12}  {k}\n")).collect()
    }
}

/// An error message with its numbers replaced by `N`, cut at `max_chars`: messages that differ
/// only in a count or an offset fall into one bucket.
pub fn bucket(message: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(max_chars);
    let mut in_number = false;
    for c in message.chars() {
        if out.len() >= max_chars {
            break;
        }
        if c.is_ascii_digit() || (in_number && (c.is_ascii_hexdigit() || c == 'x')) {
            if !in_number {
                out.push('N');
                in_number = true;
            }
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
