//! Redis glob patterns (`SCAN ... MATCH`, `KEYS`): `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
//!
//! Semantics follow Redis's `stringmatchlen`, quirks included: a trailing lone `\` matches a
//! backslash, an unterminated `[` class ends at the end of the pattern, `[]` is an empty class,
//! and a reversed range `[z-a]` means `[a-z]`.
//!
//! Unlike Redis's recursive matcher, this one backtracks only to the last `*`, which is enough
//! because every other token matches exactly one byte. Time is O(pattern × key) in the worst
//! case and no recursion happens, so a hostile pattern cannot blow the stack.

/// Does `key` match `pattern`?
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0, 0);
    // Where to resume after the most recent `*`: the pattern after it and the key position
    // the star currently stops at.
    let mut resume: Option<(usize, usize)> = None;
    loop {
        if p < pattern.len() {
            if pattern[p] == b'*' {
                while p < pattern.len() && pattern[p] == b'*' {
                    p += 1;
                }
                resume = Some((p, k));
                continue;
            }
            if let Some(&byte) = key.get(k) {
                let (matched, next) = match_one(pattern, p, byte);
                if matched {
                    p = next;
                    k += 1;
                    continue;
                }
            }
        } else if k == key.len() {
            return true;
        }
        // Mismatch: let the last star swallow one more byte, or fail if there is none.
        match resume {
            Some((star_p, star_k)) if star_k < key.len() => {
                resume = Some((star_p, star_k + 1));
                p = star_p;
                k = star_k + 1;
            }
            _ => return false,
        }
    }
}

/// Matches the single-byte token (anything but `*`) at `pattern[p]` against `byte`; returns
/// whether it matched and where the next token starts.
fn match_one(pattern: &[u8], p: usize, byte: u8) -> (bool, usize) {
    match pattern[p] {
        b'?' => (true, p + 1),
        b'[' => match_class(pattern, p + 1, byte),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == byte, p + 2),
        literal => (literal == byte, p + 1),
    }
}

/// Matches a `[...]` class whose body starts at `pattern[start]`.
fn match_class(pattern: &[u8], start: usize, byte: u8) -> (bool, usize) {
    let mut i = start;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        match pattern.get(i) {
            // Unterminated: Redis lets the class end with the pattern.
            None => break,
            Some(b'\\') if i + 1 < pattern.len() => {
                matched |= pattern[i + 1] == byte;
                i += 2;
            }
            Some(b']') => {
                i += 1;
                break;
            }
            Some(&low) if pattern.get(i + 1) == Some(&b'-') && i + 2 < pattern.len() => {
                let high = pattern[i + 2];
                let (low, high) = if low <= high { (low, high) } else { (high, low) };
                matched |= (low..=high).contains(&byte);
                i += 3;
            }
            Some(&literal) => {
                matched |= literal == byte;
                i += 1;
            }
        }
    }
    (matched != negate, i)
}

/// The bytes every matching key must start with: the pattern up to its first wildcard, escapes
/// resolved. SCAN uses it to narrow the range it asks the cluster for.
pub fn literal_prefix(pattern: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::new();
    let mut p = 0;
    while let Some(&byte) = pattern.get(p) {
        match byte {
            b'*' | b'?' | b'[' => break,
            b'\\' if p + 1 < pattern.len() => {
                prefix.push(pattern[p + 1]);
                p += 2;
            }
            literal => {
                prefix.push(literal);
                p += 1;
            }
        }
    }
    prefix
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn redis_examples() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h*llo", "hllo", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h[a-b]llo", "hcllo", false),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("[\\]]", "]", true),
            ("[]a]", "]", false),
            ("[]a]", "a]", false),
            ("[]a]", "]a]", false),
            ("a[", "a", false),
            ("a[bc", "ab", true),
            ("a\\", "a\\", true),
            ("*a*b*c*", "xxaxxbxxcxx", true),
            ("*a*b*c*", "xxaxxcxxbxx", false),
            ("user:*:name", "user:42:name", true),
            ("user:*:name", "user:42:email", false),
            ("**x", "abx", true),
            ("", "", true),
            ("", "a", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(matches(pattern.as_bytes(), key.as_bytes()), *expected, "{pattern:?} vs {key:?}");
        }
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"a\\*b?c"), b"a*b");
        assert_eq!(literal_prefix(b"[ab]c"), b"");
        assert_eq!(literal_prefix(b"plain"), b"plain");
        assert_eq!(literal_prefix(b"x\\"), b"x\\");
    }

    /// The obvious exponential matcher over the same single-byte tokens, to check the
    /// backtracking shortcut against.
    fn reference(pattern: &[u8], p: usize, key: &[u8]) -> bool {
        if p == pattern.len() {
            return key.is_empty();
        }
        if pattern[p] == b'*' {
            return (0..=key.len()).any(|skip| reference(pattern, p + 1, &key[skip..]));
        }
        match key.split_first() {
            Some((&byte, rest)) => {
                let (matched, next) = match_one(pattern, p, byte);
                matched && reference(pattern, next, rest)
            }
            None => false,
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference_matcher(
            pattern in proptest::collection::vec(prop::sample::select(b"ab*?[]^-\\".to_vec()), 0..10),
            key in proptest::collection::vec(prop::sample::select(b"ab]-\\^".to_vec()), 0..10),
        ) {
            prop_assert_eq!(matches(&pattern, &key), reference(&pattern, 0, &key));
        }

        #[test]
        fn matching_keys_start_with_the_literal_prefix(
            pattern in proptest::collection::vec(prop::sample::select(b"ab*?[\\".to_vec()), 0..8),
            key in proptest::collection::vec(prop::sample::select(b"ab*?[\\".to_vec()), 0..8),
        ) {
            if matches(&pattern, &key) {
                prop_assert!(key.starts_with(&literal_prefix(&pattern)));
            }
        }
    }
}
