//! Tree blobs (decrypted directory listings): any bytes must decode to a tree whose names
//! are single plain components in strictly increasing order, or be refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volguard_fuzz::tree::Tree;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tree::decode(data, "tree fuzz") {
        for w in t.nodes.windows(2) {
            assert!(w[0].name < w[1].name);
        }
        for n in &t.nodes {
            assert!(!n.name.is_empty() && !n.name.contains(&b'/') && !n.name.contains(&0));
            assert!(n.name != b"." && n.name != b"..");
        }
        // What a later backup writes back must decode the same.
        assert_eq!(Tree::decode(&t.encode(), "tree fuzz").ok(), Some(t));
    }
});
