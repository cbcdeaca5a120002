//! Key choice: uniform, zipfian (YCSB's scrambled zipfian) and latest, and the key bytes.
//!
//! The zipfian generator is the one YCSB uses (Gray et al., "Quickly Generating Billion-Record
//! Synthetic Databases", SIGMOD '94) with θ = 0.99: item 0 is the most popular, item i is drawn
//! with probability proportional to 1/(i+1)^θ. YCSB then scrambles the rank with a hash so the
//! popular keys are spread over the keyspace instead of all sitting at its start; so do we.
//!
//! ζ(n, θ) is summed exactly for the first [`ZETA_EXACT_TERMS`] terms and by Euler–Maclaurin for
//! the rest, so a generator over a growing keyspace (the `latest` distribution under inserts) can
//! be rebuilt in microseconds rather than O(n).

use flotilla_engine::rng::Rng;

/// YCSB's default skew.
pub const ZIPFIAN_THETA: f64 = 0.99;
/// Terms of ζ summed one by one before the Euler–Maclaurin tail takes over.
const ZETA_EXACT_TERMS: u64 = 1_000;

/// How keys are chosen among those that exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Scrambled zipfian over all keys (θ = 0.99): a few hot keys, spread over the keyspace.
    Zipfian,
    /// Zipfian over insertion order, newest first: recently inserted keys are hot.
    Latest,
}

impl std::str::FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(Distribution::Uniform),
            "zipfian" | "zipf" => Ok(Distribution::Zipfian),
            "latest" => Ok(Distribution::Latest),
            _ => Err(format!("unknown distribution {s:?}: expected uniform, zipfian or latest")),
        }
    }
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
            Distribution::Latest => "latest",
        })
    }
}

/// ζ(n, θ) = Σ_{i=1..n} 1/i^θ.
pub fn zeta(n: u64, theta: f64) -> f64 {
    let exact = n.min(ZETA_EXACT_TERMS);
    let mut sum: f64 = (1..=exact).map(|i| (i as f64).powf(-theta)).sum();
    if n > exact {
        // Σ_{i=a..b} f(i) ≈ ∫_a^b f + (f(a) + f(b))/2 + (f'(b) − f'(a))/12, f(x) = x^−θ.
        let (a, b) = ((exact + 1) as f64, n as f64);
        let f = |x: f64| x.powf(-theta);
        let df = |x: f64| -theta * x.powf(-theta - 1.0);
        let integral = (b.powf(1.0 - theta) - a.powf(1.0 - theta)) / (1.0 - theta);
        sum += integral + (f(a) + f(b)) / 2.0 + (df(b) - df(a)) / 12.0;
    }
    sum
}

/// Draws ranks in `[0, items)`, rank 0 most likely.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    pub fn new(items: u64, theta: f64) -> Zipfian {
        assert!(items >= 1, "a zipfian generator needs at least one item");
        assert!(theta > 0.0 && theta < 1.0, "theta {theta} outside (0, 1)");
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2, theta);
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian { items, theta, alpha, zetan, eta }
    }

    pub fn items(&self) -> u64 {
        self.items
    }

    /// The rank for a uniform variate `u` in [0, 1).
    pub fn rank(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }
}

/// FNV-1a of a u64's little-endian bytes: the scrambling hash (as in YCSB).
pub fn fnv64(value: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in value.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A uniform variate in [0, 1) with 53 random bits.
pub fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Chooses existing keys by index for one client. Cheap to create; not shared between clients.
#[derive(Debug)]
pub struct KeyChooser {
    distribution: Distribution,
    /// For `Zipfian`: fixed over the initial keyspace. For `Latest`: rebuilt as inserts grow it.
    zipfian: Option<Zipfian>,
}

impl KeyChooser {
    pub fn new(distribution: Distribution, keys: u64) -> KeyChooser {
        let zipfian = match distribution {
            Distribution::Uniform => None,
            Distribution::Zipfian | Distribution::Latest => Some(Zipfian::new(keys.max(1), ZIPFIAN_THETA)),
        };
        KeyChooser { distribution, zipfian }
    }

    /// A key index in `[0, existing)`; `existing` grows with inserts.
    pub fn choose(&mut self, rng: &mut Rng, existing: u64) -> u64 {
        let existing = existing.max(1);
        match self.distribution {
            Distribution::Uniform => rng.below(existing),
            Distribution::Zipfian => {
                let zipfian = self.zipfian.as_ref().expect("zipfian generator");
                // Keys inserted after the start are chosen as if they were not there: YCSB's
                // scrambled zipfian also draws over the initial record count.
                fnv64(zipfian.rank(unit(rng))) % zipfian.items().min(existing)
            }
            Distribution::Latest => {
                let stale = self.zipfian.as_ref().is_none_or(|z| existing > z.items() + z.items() / 1_000);
                if stale {
                    self.zipfian = Some(Zipfian::new(existing, ZIPFIAN_THETA));
                }
                let zipfian = self.zipfian.as_ref().expect("latest generator");
                let back = zipfian.rank(unit(rng)).min(existing - 1);
                existing - 1 - back
            }
        }
    }
}

/// Bytes in a key: 2 prefix bytes, "user", 12 digits.
pub const KEY_BYTES: usize = 18;

/// First and last two-byte prefix keys are spread over: the span Flotilla's initial ranges are
/// cut evenly over (`engine::store::initial_ranges`).
const PREFIX_LOW: u64 = 0x2100;
const PREFIX_HIGH: u64 = 0x7f00;

/// The key for index `i`. The first two bytes are a hash of `i` spread uniformly over
/// `0x2100..0x7f00`, so keys land evenly in Flotilla's initial ranges whatever their number
/// (the second byte is any byte: keys are binary, as RESP and etcd allow); the rest makes
/// keys unique and readable.
pub fn key(i: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(KEY_BYTES);
    let prefix = PREFIX_LOW + fnv64(i ^ 0x5bd1_e995) % (PREFIX_HIGH - PREFIX_LOW);
    key.push((prefix >> 8) as u8);
    key.push(prefix as u8);
    key.extend_from_slice(format!("user{i:012}").as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeta_tail_approximation_matches_the_exact_sum() {
        for n in [1_001u64, 5_000, 123_457] {
            let exact: f64 = (1..=n).map(|i| (i as f64).powf(-ZIPFIAN_THETA)).sum();
            let approx = zeta(n, ZIPFIAN_THETA);
            assert!((exact - approx).abs() / exact < 1e-9, "n {n}: exact {exact} approx {approx}");
        }
    }

    #[test]
    fn zipfian_frequencies_follow_the_power_law() {
        let items = 1_000;
        let z = Zipfian::new(items, ZIPFIAN_THETA);
        let mut rng = Rng::new(7);
        let draws = 400_000;
        let mut counts = vec![0u64; items as usize];
        for _ in 0..draws {
            counts[z.rank(unit(&mut rng)) as usize] += 1;
        }
        let zetan = zeta(items, ZIPFIAN_THETA);
        // Ranks 0 and 1 are exact by construction: p(i) = 1/((i+1)^θ ζ(n)). Beyond them the
        // algorithm is a continuous approximation (as in YCSB): within 20 % for the next ranks.
        for (i, &count) in counts.iter().enumerate().take(6) {
            let expected = draws as f64 / ((i + 1) as f64).powf(ZIPFIAN_THETA) / zetan;
            let error = (count as f64 - expected).abs() / expected;
            let tolerance = if i < 2 { 0.03 } else { 0.2 };
            assert!(error < tolerance, "rank {i}: {count} draws, expected {expected:.0}");
        }
        // And the tail is hit, decreasingly: the first decile outweighs the last by a lot.
        let first: u64 = counts[..100].iter().sum();
        let last: u64 = counts[900..].iter().sum();
        assert!(last > 0 && first > 5 * last, "first decile {first}, last {last}");
    }

    #[test]
    fn latest_prefers_the_newest_keys_and_follows_inserts() {
        let mut chooser = KeyChooser::new(Distribution::Latest, 10_000);
        let mut rng = Rng::new(3);
        let newest = (0..10_000).filter(|_| chooser.choose(&mut rng, 10_000) >= 9_990).count();
        assert!(newest > 3_000, "{newest} of 10000 draws among the 10 newest keys");
        // After inserts the newest keys are the new ones, and nothing beyond them is chosen.
        for _ in 0..10_000 {
            assert!(chooser.choose(&mut rng, 20_000) < 20_000);
        }
        assert!((0..1_000).any(|_| chooser.choose(&mut rng, 20_000) == 19_999));
    }

    #[test]
    fn uniform_and_zipfian_stay_in_range() {
        let mut rng = Rng::new(1);
        for distribution in [Distribution::Uniform, Distribution::Zipfian] {
            let mut chooser = KeyChooser::new(distribution, 100);
            let mut seen = [false; 100];
            for _ in 0..20_000 {
                seen[chooser.choose(&mut rng, 100) as usize] = true;
            }
            let distinct = seen.iter().filter(|&&s| s).count();
            assert!(distinct > 50, "{distribution}: {distinct} distinct keys of 100");
        }
    }

    #[test]
    fn keys_are_unique_and_spread_evenly_over_ranges() {
        let keys: Vec<Vec<u8>> = (0..10_000).map(key).collect();
        let distinct: std::collections::BTreeSet<&Vec<u8>> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        assert!(keys.iter().all(|k| k.len() == KEY_BYTES && (0x21..0x7f).contains(&k[0])));
        // 64 ranges cut evenly over 0x2100..0x7f00: each gets its share (156) within 25 %.
        let mut buckets = [0u32; 64];
        for k in &keys {
            let point = u64::from(k[0]) << 8 | u64::from(k[1]);
            buckets[((point - PREFIX_LOW) * 64 / (PREFIX_HIGH - PREFIX_LOW)) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| (117..=195).contains(&b)), "{buckets:?}");
    }

    #[test]
    fn distribution_parses() {
        assert_eq!("zipfian".parse::<Distribution>(), Ok(Distribution::Zipfian));
        assert!("pareto".parse::<Distribution>().is_err());
    }
}
