//! A mutational fuzzer over the inventory → validate → render path, run as
//! a test for a bounded time (CI runs it like every test).
//!
//! Seeds are the inventories in `tests/fuzz/corpus/`. Each case mutates one
//! (bytes flipped, inserted or cut, lines doubled or swapped, scalars swapped
//! for hostile values, nesting and aliases piled up) and must never panic:
//! parsing either refuses it with problems or yields an inventory that
//! renders (with placeholder certificates), and every unit it renders reads
//! back as units with an `ExecStart` of a plain absolute program.
//!
//! `RAMPART_FUZZ_SECS` sets the budget (default 20), `RAMPART_FUZZ_SEED`
//! replays a run: a failure prints both, and the input, which is also written
//! to `target/fuzz-failure.yaml`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use rampart::inventory::{self, LocalFiles};
use rampart::render;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::hostile::{parse_unit, split_command, HOSTILE};
use crate::render::fake_pki;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Identity files are the admin's; here every one reads.
struct AllReadable;
impl LocalFiles for AllReadable {
    fn check_readable(&self, _: &Path) -> Result<(), String> {
        Ok(())
    }
}

fn seeds() -> Vec<String> {
    let dir = Path::new(ROOT).join("tests/fuzz/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// One mutation of `text`.
fn mutate(rng: &mut StdRng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let i = rng.gen_range(0..lines.len());
    match rng.gen_range(0..9) {
        // A scalar value replaced by a hostile one (quoted, so it is a string).
        0 | 1 => {
            if let Some(at) = lines[i].find(": ") {
                let v = HOSTILE[rng.gen_range(0..HOSTILE.len())];
                let quoted = serde_json::to_string(v).unwrap();
                lines[i] = format!("{}: {quoted}", &lines[i][..at]);
            }
        }
        // A byte flipped, inserted or cut (kept valid UTF-8).
        2 => {
            let mut bytes = lines[i].clone().into_bytes();
            if !bytes.is_empty() {
                let j = rng.gen_range(0..bytes.len());
                match rng.gen_range(0..3) {
                    0 => bytes[j] ^= 1 << rng.gen_range(0..7),
                    1 => bytes.insert(j, b"[]{}:,&*!|>'\"#%-?\t\\"[rng.gen_range(0..19)]),
                    _ => {
                        bytes.remove(j);
                    }
                }
            }
            lines[i] = String::from_utf8_lossy(&bytes).into_owned();
        }
        3 => {
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        4 => {
            let j = rng.gen_range(0..lines.len());
            lines.swap(i, j);
        }
        5 => {
            lines.remove(i);
        }
        // Piled-up nesting, or an anchor aliased many times.
        6 => {
            let depth = rng.gen_range(1..200);
            lines.insert(
                i,
                format!("x{i}: {}{}", "[".repeat(depth), "]".repeat(depth)),
            );
        }
        7 => {
            let big = "y".repeat(rng.gen_range(1..200_000));
            let uses = vec!["*big"; rng.gen_range(1..50)].join(", ");
            lines.push(format!("big: &big \"{big}\""));
            lines.push(format!("uses: [{uses}]"));
        }
        // A number turned into something numbers are not.
        _ => {
            let odd = [
                "+6443",
                "0x10",
                "-1",
                "99999999999999999999",
                "1e3",
                "010",
                " 7",
            ];
            if let Some(at) = lines[i].find(": ") {
                lines[i] = format!(
                    "{}: \"{}\"",
                    &lines[i][..at],
                    odd[rng.gen_range(0..odd.len())]
                );
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Parse, validate, render; what must hold of the result.
fn check(text: &str) {
    let Ok(loaded) = inventory::parse_with(text, Path::new("fuzz.yaml"), &AllReadable) else {
        return;
    };
    let inv = loaded.inventory;
    let pki = fake_pki(&inv);
    let Ok(bundle) = render::render(&inv, &pki) else {
        return;
    };
    for (host, hb) in &bundle.hosts {
        for f in hb
            .files
            .iter()
            .filter(|f| f.path.starts_with("/etc/systemd/system/") && f.path.ends_with(".service"))
        {
            let text = String::from_utf8(f.contents.bytes().to_vec()).unwrap();
            let exec: Vec<String> = parse_unit(&text)
                .into_iter()
                .filter(|(_, k, _)| k == "ExecStart")
                .map(|(_, _, v)| v)
                .collect();
            assert_eq!(exec.len(), 1, "{host}:{}: one ExecStart\n{text}", f.path);
            let argv = split_command(&exec[0]);
            assert!(
                rampart::inventory::is_host_path(&argv[0]),
                "{host}:{}: the program is {:?}",
                f.path,
                argv[0]
            );
        }
    }
}

#[test]
fn inventories_never_panic_and_render_only_sound_units() {
    let secs: u64 = std::env::var("RAMPART_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("RAMPART_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let mut rng = StdRng::seed_from_u64(seed);
    let seeds = seeds();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut cases = 0u64;
    // Panics are caught to report the input; the default hook would print
    // every one of them first.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    while Instant::now() < deadline {
        let mut text = seeds[rng.gen_range(0..seeds.len())].clone();
        for _ in 0..rng.gen_range(1..6) {
            text = mutate(&mut rng, &text);
        }
        cases += 1;
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(&text))) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failure = Some((text, why));
            break;
        }
    }
    std::panic::set_hook(hook);
    if let Some((text, why)) = failure {
        let saved = Path::new(ROOT).join("target/fuzz-failure.yaml");
        let _ = std::fs::write(&saved, &text);
        panic!(
            "case {cases} of seed {seed} failed (replay: RAMPART_FUZZ_SEED={seed}; input saved to {}):\n{why}\n--- input\n{text}",
            saved.display()
        );
    }
    eprintln!("fuzz: {cases} cases in {secs} s, seed {seed}, no failure");
}
