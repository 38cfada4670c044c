//! `docker diff` output in a comparable form. dockerd lists changes in Go map order, which
//! differs from call to call; only the shape is fixed (a directory's line, then its
//! entries each followed by their content, then its deletions). These helpers check that
//! shape and put the lines in the shape's name order, the order `volguard layer-diff` uses.

pub fn parse(out: &str) -> Vec<(char, String)> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, p) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            assert!(matches!(k, "A" | "C" | "D"), "bad kind in {l:?}");
            (k.chars().next().unwrap(), p.to_string())
        })
        .collect()
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

/// Panics unless `lines` has the shape moby's differ produces whatever its map order: a
/// changed path's directory is listed before it; a directory's content directly follows
/// it as one block; a directory's deletions come after its other entries.
pub fn assert_docker_shape(lines: &[(char, String)]) {
    for (i, (k, p)) in lines.iter().enumerate() {
        let par = parent(p);
        if par != "/" {
            let pi = lines
                .iter()
                .position(|(_, q)| q == par)
                .unwrap_or_else(|| panic!("{k} {p}: its directory {par} is not listed"));
            assert!(pi < i, "{p} listed before its directory");
            // Everything between the directory and this entry is inside the directory.
            for (_, q) in &lines[pi + 1..i] {
                assert!(
                    q.starts_with(&format!("{par}/")),
                    "{q} splits the content of {par}"
                );
            }
        }
        if *k == 'D' {
            for (k2, q) in &lines[i + 1..] {
                if parent(q) == par {
                    assert_eq!(
                        *k2, 'D',
                        "{q} follows the deletion {p} in the same directory"
                    );
                }
            }
        }
    }
}

/// The shape's order with entries by name: per component, entries before deletions.
pub fn canonical(mut lines: Vec<(char, String)>) -> Vec<String> {
    fn key(k: char, p: &str) -> Vec<(bool, Vec<u8>)> {
        let comps: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
        let n = comps.len();
        comps
            .iter()
            .enumerate()
            .map(|(i, c)| (k == 'D' && i + 1 == n, c.as_bytes().to_vec()))
            .collect()
    }
    lines.sort_by_key(|a| key(a.0, &a.1));
    lines.into_iter().map(|(k, p)| format!("{k} {p}")).collect()
}
