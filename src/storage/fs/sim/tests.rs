//! The crash model of [`SimFs`]: what survives, and what may not.

use super::*;

fn fs(seed: u64) -> SimFs {
    let fs = SimFs::new(SimFsConfig { seed });
    fs.create_dir_all(Path::new("/d")).unwrap();
    fs
}

fn p(name: &str) -> PathBuf {
    Path::new("/d").join(name)
}

/// Whatever the seed: synced data under a synced name survives a crash exactly; unsynced
/// data leaves a prefix or some sectors of the writes (never bytes nobody wrote).
#[test]
fn synced_data_survives_and_unsynced_data_is_lost_or_torn() {
    let mut outcomes = BTreeSet::new();
    for seed in 0..200 {
        let fs = fs(seed);
        let f = fs.open(&p("a"), Mode::CreateNew).unwrap();
        f.write_all_at(&[1; 1000], 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(&[2; 2000], 1000).unwrap();
        fs.crash();
        fs.restart();
        let data = fs.read(&p("a")).unwrap();
        assert_eq!(data[..1000], [1; 1000], "seed {seed}");
        assert!(
            data[1000..].iter().all(|&b| b == 2 || b == 0),
            "seed {seed}"
        );
        outcomes.insert(data.iter().filter(|&&b| b == 2).count());
        assert!(f.size().is_err(), "handles from before the crash are dead");
    }
    assert!(outcomes.contains(&0), "{outcomes:?}");
    assert!(outcomes.len() > 3, "torn in several ways: {outcomes:?}");
}

#[test]
fn names_are_durable_only_after_their_directory_is_synced() {
    let mut seen = BTreeSet::new();
    for seed in 0..100 {
        let fs = fs(seed);
        for name in ["a", "b"] {
            let f = fs.open(&p(name), Mode::CreateNew).unwrap();
            f.write_all_at(name.as_bytes(), 0).unwrap();
            f.sync_data().unwrap();
        }
        fs.sync_dir(Path::new("/d")).unwrap();
        fs.remove(&p("a")).unwrap();
        fs.rename(&p("b"), &p("c")).unwrap();
        fs.crash();
        fs.restart();
        let mut names: Vec<String> = fs
            .list(Path::new("/d"))
            .unwrap()
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        // A prefix of (unlink a, rename b -> c).
        assert!(
            [vec!["a", "b"], vec!["b"], vec!["c"]]
                .iter()
                .any(|want| *want == names),
            "seed {seed}: {names:?}"
        );
        seen.insert(names);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn a_clean_restart_loses_nothing_and_faults_fail_one_operation() {
    let fs = fs(1);
    let f = fs.open(&p("a"), Mode::CreateNew).unwrap();
    fs.inject(fs.ops() + 1, Fault::NoSpace);
    let err = f.write_all_at(b"xyz", 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(28));
    f.write_all_at(b"abc", 0).unwrap();
    fs.inject(fs.ops() + 2, Fault::Crash);
    f.sync_data().unwrap();
    assert!(fs.sync_dir(Path::new("/d")).is_err());
    assert!(fs.read(&p("a")).is_err(), "no power");
    fs.restart();
    // The dir sync never happened: the name may be lost; if kept, the data is whole.
    if let Ok(data) = fs.read(&p("a")) {
        assert_eq!(data, b"abc");
    }
    let f = fs.open(&p("b"), Mode::CreateNew).unwrap();
    f.write_all_at(b"unsynced", 0).unwrap();
    fs.restart();
    assert_eq!(
        fs.read(&p("b")).unwrap(),
        b"unsynced",
        "no crash, nothing lost"
    );
}

/// Writes a crash discarded stay discarded: a later sync does not bring them back.
#[test]
fn a_sync_after_a_crash_does_not_resurrect_lost_writes() {
    for seed in 0..50 {
        let fs = fs(seed);
        let f = fs.open(&p("a"), Mode::CreateNew).unwrap();
        f.write_all_at(&[0; 100], 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(&[7; 100], 0).unwrap();
        fs.crash();
        fs.restart();
        let before = fs.read(&p("a")).unwrap();
        let f = fs.open(&p("a"), Mode::ReadWrite).unwrap();
        f.sync_data().unwrap();
        fs.crash();
        fs.restart();
        assert_eq!(fs.read(&p("a")).unwrap(), before, "seed {seed}");
    }
}
