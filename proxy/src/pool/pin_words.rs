//! The first step of the pinning check: whether a statement's text holds one of a few short words,
//! ignoring ASCII case, anywhere (inside longer names, strings and comments too, and overlapping).
//!
//! Multi-pattern Shift-And (bitap): each letter of each word is one bit of a 64-bit state, and one byte
//! of text moves the state with a shift, an OR and an AND through a 256-entry table. It replaced an
//! aho-corasick DFA, whose general search loop cost about 1,060 instructions per pgbench statement
//! (callgrind: 6% of a transaction-pooled statement's user-space time), about 19 per byte of such short
//! text. Matches overlap: every occurrence of every word is seen, where a leftmost-longest search skips
//! a word that starts inside an earlier match; for the pinning check that only ever means one more
//! parse, never a missed pin.

/// A set of words whose letters fit in one 64-bit state.
pub(super) struct WordSet {
    /// Per byte: the positions (bits) at which that byte, in either ASCII case, continues a word.
    masks: [u64; 256],
    /// The first position of every word.
    starts: u64,
    /// The last position of every word.
    ends: u64,
    /// Per position: the word that ends there (meaningful only where `ends` has the bit).
    word_at: [u8; 64],
}

impl WordSet {
    /// The set of `words`: ASCII, none empty, 64 bytes at most together, 32 words at most (one bit each
    /// in [`Self::found`]'s answer).
    pub(super) fn new(words: &[&str]) -> WordSet {
        let total: usize = words.iter().map(|w| w.len()).sum();
        assert!(total <= 64 && words.iter().all(|w| !w.is_empty() && w.is_ascii()), "words must fit in 64 bits");
        assert!(words.len() <= 32, "at most 32 words");
        let mut set = WordSet { masks: [0; 256], starts: 0, ends: 0, word_at: [0; 64] };
        let mut at = 0;
        for (index, word) in words.iter().enumerate() {
            set.starts |= 1 << at;
            for &byte in word.as_bytes() {
                set.masks[byte.to_ascii_lowercase() as usize] |= 1 << at;
                set.masks[byte.to_ascii_uppercase() as usize] |= 1 << at;
                at += 1;
            }
            set.ends |= 1 << (at - 1);
            set.word_at[at - 1] = index as u8;
        }
        set
    }

    /// The words that occur in `text`, as bits by index (bit `i`: word `i`). The scan stops at the end of
    /// the 64-byte block in which it first sees a word of `enough` (bits by index), so a caller that only
    /// needs one of those does not read a long text to its end.
    pub(super) fn found(&self, text: &[u8], enough: u32) -> u32 {
        let mut state = 0u64;
        // Every position any word reached: a word's last position set means the word ended there. One OR
        // per byte instead of a test and a branch, which was about a fifth of the scan's instructions.
        let mut reached = 0u64;
        for block in text.chunks(64) {
            for &byte in block {
                // A bit shifted out of one word's last position into the next word's first position is
                // harmless: `starts` sets that bit anyway.
                state = ((state << 1) | self.starts) & self.masks[byte as usize];
                reached |= state;
            }
            if self.words_ending(reached) & enough != 0 {
                break;
            }
        }
        self.words_ending(reached)
    }

    /// The words whose last position is among `positions`, as bits by index.
    fn words_ending(&self, positions: u64) -> u32 {
        let mut ends = positions & self.ends;
        let mut words = 0;
        while ends != 0 {
            words |= 1 << self.word_at[ends.trailing_zeros() as usize];
            ends &= ends - 1;
        }
        words
    }
}

#[cfg(test)]
mod tests {
    use super::WordSet;

    /// The indexes of the words found in `text`, in order.
    fn words_in(set: &WordSet, text: &str) -> Vec<usize> {
        let found = set.found(text.as_bytes(), 0);
        (0..32).filter(|&w| found & (1 << w) != 0).collect()
    }

    #[test]
    fn every_word_is_found_in_any_case_overlapping_and_inside_longer_words() {
        let set = WordSet::new(&["temp", "set", "reset", "set_config"]);
        assert_eq!(words_in(&set, "SELECT 1"), Vec::<usize>::new());
        assert_eq!(words_in(&set, "CREATE TEMPORARY TABLE t ()"), vec![0]);
        assert_eq!(words_in(&set, "RESET all"), vec![1, 2], "set ends with reset");
        assert_eq!(words_in(&set, "select Set_Config('a', 'b', false)"), vec![1, 3]);
        // "temp" starts inside "set": a leftmost-longest search would report only "set".
        assert_eq!(words_in(&set, "setemp"), vec![0, 1]);
        assert_eq!(words_in(&set, "tem"), Vec::<usize>::new(), "a word cut short is no match");
        assert_eq!(words_in(&set, "pg_temp.t, pg_TEMP.u"), vec![0]);
    }

    #[test]
    fn a_word_is_not_completed_across_another_words_letters() {
        // "ab" then "cd" are adjacent bits: "ab" followed by "d" must not complete "cd".
        let set = WordSet::new(&["ab", "cd"]);
        assert_eq!(words_in(&set, "abd"), vec![0]);
        assert_eq!(words_in(&set, "acd"), vec![1]);
        assert_eq!(words_in(&set, "bcd ab"), vec![0, 1]);
    }

    #[test]
    fn a_word_is_found_across_the_blocks_of_the_scan() {
        let set = WordSet::new(&["listen"]);
        let text = format!("{}listen", "x".repeat(61));
        assert_eq!(set.found(text.as_bytes(), 0), 1, "the word starts in the first block and ends in the second");
    }

    #[test]
    fn the_scan_stops_at_the_end_of_the_block_that_holds_a_word_it_was_told_is_enough() {
        let set = WordSet::new(&["a", "b"]);
        let mut text = vec![b'x'; 200];
        text[10] = b'a';
        text[150] = b'b';
        assert_eq!(set.found(&text, 0b01), 0b01, "b lies two blocks after the block of a");
        assert_eq!(set.found(&text, 0b10), 0b11, "a alone does not stop the scan");
        text[63] = b'b';
        assert_eq!(set.found(&text, 0b01), 0b11, "b in the block of a is seen");
        assert_eq!(set.found(b"yyy", u32::MAX), 0);
    }

    proptest::proptest! {
        /// Against a plain substring search, over texts made of the words' letters and a few others.
        #[test]
        fn it_agrees_with_a_substring_search(text in "[setmpRdlorahvy_ciSE .]{0,150}") {
            let words = ["listen", "prepare", "load", "hold", "temp", "advisory", "set_config", "reset", "set"];
            let set = WordSet::new(&words);
            let lower = text.to_ascii_lowercase();
            let expected: Vec<usize> = (0..words.len()).filter(|&w| lower.contains(words[w])).collect();
            proptest::prop_assert_eq!(words_in(&set, &text), expected);
        }
    }
}
