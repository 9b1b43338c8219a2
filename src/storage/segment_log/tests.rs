//! Records, replay, segments, torn tails and corruption of [`SegmentLog`].

use super::*;

use crate::storage::test_entries::{e, entries};

/// An entry that nearly fills a segment: the next big one starts a new segment, a small one
/// still fits.
fn big(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        payload: Payload::Command(vec![index as u8; SEGMENT_BYTES as usize - 4096].into()),
    }
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta { index, term }
}

fn open(dir: &Path, snapshot: Option<SnapshotMeta>) -> (SegmentLog, Replayed) {
    SegmentLog::open(dir, snapshot).unwrap()
}

fn reopened(dir: &Path, snapshot: Option<SnapshotMeta>) -> Vec<Entry> {
    let (log, replayed) = open(dir, snapshot);
    assert_eq!(
        log.read(snapshot).unwrap(),
        replayed,
        "read agrees with open"
    );
    replayed.entries
}

#[test]
fn names_round_trip() {
    assert_eq!(segment_name(7), "segment-00000000000000000007.log");
    assert_eq!(parse_name(&segment_name(u64::MAX)), Some(u64::MAX));
    for bad in ["segment-7.log", "segment-0000000000000000000x.log", "other"] {
        assert_eq!(parse_name(bad), None, "{bad}");
    }
}

#[test]
fn replay_follows_persists_truncations_and_commit_hints() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, replayed) = open(tmp.path(), None);
    assert_eq!(replayed, Replayed::default());
    log.append(0, &entries(1, 1..=5)).unwrap();
    log.append(2, &[e(2, 3)]).unwrap(); // drops 4 and 5
    log.append(3, &[]).unwrap(); // commit only
    let noop = Entry {
        term: 2,
        index: 4,
        payload: Payload::Noop,
    };
    log.append(3, std::slice::from_ref(&noop)).unwrap();
    drop(log);
    let (log, replayed) = open(tmp.path(), None);
    let mut want = entries(1, 1..=2);
    want.extend([e(2, 3), noop]);
    assert_eq!(replayed.entries, want);
    assert_eq!(replayed.commit, Some(3));
    assert_eq!(log.segment_paths().len(), 1);
}

#[test]
fn full_segments_roll_and_covered_ones_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    for i in 1..=3 {
        log.append(i, &[big(1, i)]).unwrap();
    }
    log.append(3, &entries(1, 4..=5)).unwrap();
    let paths = log.segment_paths();
    assert_eq!(paths.len(), 3, "one big entry per segment: {paths:?}");
    // Entries 4 and 5 share the last segment with entry 3: only the first two can go.
    log.compact(meta(4, 1)).unwrap();
    assert_eq!(log.segment_paths(), paths[2..].to_vec());
    assert!(!paths[0].exists() && !paths[1].exists());
    assert_eq!(log.tail_bytes(), entry_len(&e(1, 5)));
    drop(log);
    assert_eq!(reopened(tmp.path(), Some(meta(4, 1))), entries(1, 5..=5));
}

/// A crash before the unlinks were durable: the deleted segments reappear, in any subset.
#[test]
fn deleted_segments_that_reappear_replay_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    log.append(0, &[big(1, 1)]).unwrap();
    log.append(0, &entries(1, 2..=10)).unwrap();
    log.append(0, &[big(2, 5)]).unwrap(); // truncates 6..=10, in its own segment
    log.append(0, &entries(2, 6..=8)).unwrap();
    log.append(0, &[big(2, 9)]).unwrap();
    log.append(8, &entries(2, 10..=12)).unwrap();
    let paths = log.segment_paths();
    let saved: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    log.compact(meta(9, 2)).unwrap();
    let left = log.segment_paths();
    assert!(left.len() < paths.len(), "compaction deleted segments");
    drop(log);
    let want = entries(2, 10..=12);
    assert_eq!(reopened(tmp.path(), Some(meta(9, 2))), want);
    for mask in 0..(1u32 << paths.len()) {
        for (i, (path, raw)) in paths.iter().zip(&saved).enumerate() {
            if mask & (1 << i) != 0 && !left.contains(path) {
                std::fs::write(path, raw).unwrap();
            }
        }
        assert_eq!(
            reopened(tmp.path(), Some(meta(9, 2))),
            want,
            "mask {mask:b}"
        );
    }
}

/// Once the segment holding the snapshot's entry is gone, replay cannot re-check the term:
/// the record's `last` carries the decision, both ways.
#[test]
fn the_snapshot_record_keeps_its_decision_after_the_entry_is_deleted() {
    for (term, want) in [(1, entries(1, 3..=4)), (2, vec![])] {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = open(tmp.path(), None);
        log.append(0, &[e(1, 1), big(1, 2)]).unwrap();
        log.append(2, &entries(1, 3..=4)).unwrap();
        log.compact(meta(2, term)).unwrap();
        assert_eq!(log.segment_paths().len(), 1, "the first segment is deleted");
        drop(log);
        assert_eq!(
            reopened(tmp.path(), Some(meta(2, term))),
            want,
            "term {term}"
        );
    }
}

#[test]
fn a_snapshot_of_another_history_drops_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    log.append(0, &entries(1, 1..=5)).unwrap();
    assert_eq!(log.compact(meta(3, 2)).unwrap(), 0);
    log.append(0, &entries(2, 4..=4)).unwrap();
    drop(log);
    assert_eq!(reopened(tmp.path(), Some(meta(3, 2))), entries(2, 4..=4));
}

/// A crash between publishing a snapshot and writing its record: open compacts, so entries
/// written later are not hidden behind those of another history.
#[test]
fn open_writes_the_snapshot_record_a_crash_left_out() {
    for (term, kept, next) in [(1, entries(1, 4..=5), e(3, 6)), (2, vec![], e(3, 4))] {
        let tmp = tempfile::tempdir().unwrap();
        let (mut log, _) = open(tmp.path(), None);
        log.append(0, &entries(1, 1..=5)).unwrap();
        drop(log);
        let snapshot = Some(meta(3, term));
        let (mut log, replayed) = open(tmp.path(), snapshot);
        assert_eq!(replayed.entries, kept, "term {term}");
        log.append(0, std::slice::from_ref(&next)).unwrap();
        drop(log);
        let mut want = kept;
        want.push(next);
        assert_eq!(reopened(tmp.path(), snapshot), want, "term {term}");
    }
}

/// Cuts the last record at every kind of point (header, body, last byte), as a crash leaves
/// it: the rest of the preallocated file zero, or (a record past the preallocation) the file
/// ending there; and with garbage after it.
#[test]
fn a_torn_last_record_is_cut_off_and_earlier_batches_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    log.append(1, &entries(1, 1..=3)).unwrap();
    let path = log.segment_paths()[0].clone();
    let good = log.active_len as usize;
    log.append(4, &entries(1, 4..=6)).unwrap();
    let end = log.active_len as usize;
    drop(log);
    let full = std::fs::read(&path).unwrap();
    assert_eq!(full.len() as u64, PREALLOC_BYTES, "preallocated");
    let record = end - good;
    let zeroed = |cut: usize| {
        let mut raw = full.clone();
        raw[good + cut..end].fill(0);
        raw
    };
    let mut garbage = full.clone();
    garbage[good + 3..end + 100].fill(0xa5);
    let mut torn: Vec<Vec<u8>> = [1, 4, 7, 8, 9, 20, record / 2, record - 1]
        .into_iter()
        .flat_map(|cut| [zeroed(cut), full[..good + cut].to_vec()])
        .collect();
    torn.push(garbage);
    for (n, raw) in torn.into_iter().enumerate() {
        std::fs::write(&path, &raw).unwrap();
        let (mut log, replayed) = open(tmp.path(), None);
        assert_eq!(replayed.entries, entries(1, 1..=3), "case {n}");
        assert_eq!(replayed.commit, Some(1));
        assert_eq!(log.active_len as usize, good);
        let after = std::fs::read(&path).unwrap();
        assert!(after[good..].iter().all(|&b| b == 0), "case {n}: zeroed");
        // The log goes on after the cut.
        log.append(7, &entries(2, 4..=4)).unwrap();
        drop(log);
        let mut want = entries(1, 1..=3);
        want.push(e(2, 4));
        assert_eq!(reopened(tmp.path(), None), want, "case {n}");
    }
}

fn expect_corrupt(err: StorageError, path: &Path, offset: usize, reason: &str) {
    let msg = err.to_string();
    assert!(matches!(err, StorageError::CorruptLog { .. }), "{msg}");
    let want = format!(
        "log segment {} is corrupt at byte {offset} ({reason}",
        path.display()
    );
    assert!(msg.starts_with(&want), "{msg}\nwant: {want}");
    assert!(msg.ends_with("it forgot its votes"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn a_bad_record_followed_by_a_valid_one_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    log.append(1, &entries(1, 1..=2)).unwrap();
    let path = log.segment_paths()[0].clone();
    let second = log.active_len as usize;
    log.append(1, &entries(1, 3..=4)).unwrap();
    log.append(1, &entries(1, 5..=6)).unwrap();
    drop(log);
    let mut raw = std::fs::read(&path).unwrap();
    raw[second + 20] ^= 0x08;
    std::fs::write(&path, &raw).unwrap();
    let err = SegmentLog::open(tmp.path(), None).unwrap_err();
    expect_corrupt(
        err,
        &path,
        second,
        "checksum mismatch, followed by a valid record",
    );
}

#[test]
fn a_bad_record_in_an_earlier_segment_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    log.append(1, &[big(1, 1)]).unwrap();
    log.append(1, &[big(1, 2)]).unwrap();
    let first = log.segment_paths()[0].clone();
    drop(log);
    // Its only record damaged: in the last segment that would be a torn write.
    let mut raw = std::fs::read(&first).unwrap();
    raw[100] ^= 1;
    std::fs::write(&first, &raw).unwrap();
    let err = SegmentLog::open(tmp.path(), None).unwrap_err();
    expect_corrupt(err, &first, 0, "checksum mismatch");
}

#[test]
fn a_valid_record_that_does_not_decode_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    log.buf = vec![0; HEADER_LEN];
    log.buf.push(9);
    log.write_record(0, 0).unwrap();
    let path = log.segment_paths()[0].clone();
    drop(log);
    let err = SegmentLog::open(tmp.path(), None).unwrap_err();
    expect_corrupt(err, &path, 0, "checksum matches but unknown record kind 9");
}

#[test]
fn a_gap_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    log.append(0, &entries(1, 1..=2)).unwrap();
    // An Entries record starting past the end, never written by persist.
    log.tail = Tail::new(1, &entries(1, 1..=9));
    log.append(0, &entries(1, 5..=5)).unwrap();
    drop(log);
    let msg = SegmentLog::open(tmp.path(), None).unwrap_err().to_string();
    assert!(
        msg.starts_with("log entry 5 in ")
            && msg.contains("expected index 3: the log must be contiguous from 1"),
        "{msg}"
    );
}

/// Entry 1 (nearly a segment), compacted at 1, then entry 2 (as big: it rolls). Returns the
/// two segments and the open log.
fn snapshot_then_roll(dir: &Path) -> (Vec<PathBuf>, SegmentLog) {
    let (mut log, _) = open(dir, None);
    log.append(1, &[big(1, 1)]).unwrap();
    log.compact(meta(1, 1)).unwrap();
    log.append(2, &[big(1, 2)]).unwrap();
    let paths = log.segment_paths();
    assert_eq!(paths.len(), 2, "the second entry rolls");
    (paths, log)
}

/// Issue 11, defect 1: the segment holding the latest Snapshot record was unlinked at the
/// first restart (the record did not count as content of its segment), so the second
/// restart redid the compaction from a log starting at the snapshot's index + 1 and dropped
/// every entry after it.
#[test]
fn entries_after_a_snapshot_survive_two_restarts_after_a_roll() {
    let tmp = tempfile::tempdir().unwrap();
    drop(snapshot_then_roll(tmp.path()));
    for restart in 1..=3 {
        assert_eq!(
            reopened(tmp.path(), Some(meta(1, 1))),
            vec![big(1, 2)],
            "restart {restart}"
        );
        let (log, _) = open(tmp.path(), Some(meta(1, 1)));
        assert_eq!(
            log.segment_paths().len(),
            2,
            "restart {restart}: the segment holding the Snapshot record stays"
        );
    }
}

/// A data dir an older kvstore left after its first restart (the segment with the latest
/// Snapshot record already unlinked): the redo of the compaction finds no entry at the
/// snapshot's index, and keeps the entries after it rather than dropping them.
#[test]
fn a_lost_snapshot_record_is_redone_without_dropping_later_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let (paths, mut log) = snapshot_then_roll(tmp.path());
    log.append(3, &[e(1, 3)]).unwrap();
    drop(log);
    std::fs::remove_file(&paths[0]).unwrap();
    for restart in 1..=2 {
        let mut want = vec![big(1, 2)];
        want.push(e(1, 3));
        assert_eq!(
            reopened(tmp.path(), Some(meta(1, 1))),
            want,
            "restart {restart}"
        );
    }
}

/// Issue 11: a client's value that holds a valid-looking record, in a record a crash tore,
/// is not "a valid record after a bad one": the tear is cut off, not a fatal CorruptLog.
#[test]
fn a_record_forged_inside_a_torn_record_is_not_fatal() {
    let scratch = tempfile::tempdir().unwrap();
    let forged = {
        let (mut log, _) = open(scratch.path(), None);
        log.append(99, &entries(9, 1..=3)).unwrap();
        let raw = std::fs::read(&log.segment_paths()[0]).unwrap();
        raw[..log.active_len as usize].to_vec()
    };
    let mut value = vec![0xab; 600];
    value.extend_from_slice(&forged);
    value.extend_from_slice(&[0xcd; 600]);
    let evil = Entry {
        term: 1,
        index: 3,
        payload: Payload::Command(value.into()),
    };
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    log.append(1, &entries(1, 1..=2)).unwrap();
    let path = log.segment_paths()[0].clone();
    let torn_at = log.active_len as usize;
    log.append(2, &[evil]).unwrap();
    drop(log);
    // The crash kept the header's sector and the forged record's, not the one between.
    let mut raw = std::fs::read(&path).unwrap();
    raw[torn_at + 100..torn_at + 600].fill(0);
    std::fs::write(&path, &raw).unwrap();
    let (log, replayed) = open(tmp.path(), None);
    assert_eq!(replayed.entries, entries(1, 1..=2));
    assert_eq!(
        log.active_len as usize, torn_at,
        "cut off at the torn record"
    );
}

/// A record whose `fdatasync` failed (or that a killed process never synced) sits in the page
/// cache: the next start replays it, so it must make it durable before the node relies on
/// it. Found by the storage model test: a later power loss lost such a record while the
/// records after it, in a new segment, survived (a gap, so a fatal error at the next start).
#[test]
fn open_makes_what_it_replays_durable() {
    use crate::storage::fs::{Fault, SimFs, SimFsConfig};
    let dir = Path::new("/node");
    for seed in 0..20 {
        let fs = SimFs::new(SimFsConfig { seed });
        let (mut log, _) = SegmentLog::open_in(fs.clone(), dir, None).unwrap();
        log.append(1, &entries(1, 1..=2)).unwrap();
        fs.inject(fs.ops() + 2, Fault::Io); // the write, then its sync
        assert!(log.append(2, &[e(1, 3)]).is_err());
        drop(log);
        fs.restart(); // the process stops and starts again: no power loss
        let (_, replayed) = SegmentLog::open_in(fs.clone(), dir, None).unwrap();
        assert_eq!(replayed.entries, entries(1, 1..=3), "seed {seed}");
        fs.crash();
        fs.restart();
        let (_, replayed) = SegmentLog::open_in(fs.clone(), dir, None).unwrap();
        assert_eq!(
            replayed.entries,
            entries(1, 1..=3),
            "seed {seed}: after power loss"
        );
    }
}

/// Issue 11: the latest Snapshot record and the snapshot file are cross-checked at open: a
/// record newer than every snapshot file (the file was lost), or a file whose term disagrees
/// with the record, is corrupt, never a log that silently starts over.
#[test]
fn a_snapshot_record_without_its_file_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    log.append(4, &entries(1, 1..=5)).unwrap();
    log.compact(meta(2, 1)).unwrap();
    log.compact(meta(5, 1)).unwrap();
    drop(log);
    let cases = [
        (None, "its snapshot file is missing: there is none"),
        (
            Some(meta(2, 1)),
            "its snapshot file is missing: the newest one is for index 2 term 1",
        ),
        (
            Some(meta(5, 2)),
            "the snapshot file for index 5 has term 2, the record term 1",
        ),
    ];
    for (file, reason) in cases {
        let msg = SegmentLog::open(tmp.path(), file).unwrap_err().to_string();
        let want = format!(
            "the Snapshot record for index 5 term 1 in {} is corrupt ({reason}); ",
            tmp.path().join(LOG_DIR).display()
        );
        assert!(msg.starts_with(&want), "{msg}\nwant: {want}");
    }
    assert_eq!(reopened(tmp.path(), Some(meta(5, 1))), vec![]);
    assert_eq!(
        reopened(tmp.path(), Some(meta(6, 1))),
        vec![],
        "a newer file"
    );
}

/// Issue 11: a lost segment in the middle of the log (its entries not covered by a snapshot)
/// is detected at open through the Chain record of the segment after it, naming it; one that
/// compaction unlinked is not.
#[test]
fn a_lost_middle_segment_is_named_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    for i in 1..=4 {
        log.append(i, &[big(1, i)]).unwrap();
    }
    let paths = log.segment_paths();
    assert_eq!(paths.len(), 4);
    log.compact(meta(1, 1)).unwrap();
    assert_eq!(
        log.segment_paths(),
        paths[1..].to_vec(),
        "compaction unlinks the first"
    );
    drop(log);
    assert_eq!(
        reopened(tmp.path(), Some(meta(1, 1))),
        vec![big(1, 2), big(1, 3), big(1, 4)]
    );
    std::fs::remove_file(&paths[2]).unwrap();
    let msg = SegmentLog::open(tmp.path(), Some(meta(1, 1)))
        .unwrap_err()
        .to_string();
    let want = format!(
        "log segment {} in {} is corrupt (it is missing, yet {} follows it and says it held entries up to index 3, which no snapshot covers); ",
        segment_name(3),
        tmp.path().join(LOG_DIR).display(),
        segment_name(4),
    );
    assert!(msg.starts_with(&want), "{msg}\nwant: {want}");
}

/// A membership change (tag 2) replays as it was written, between entries of the older tags.
#[test]
fn configuration_entries_replay_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = open(tmp.path(), None);
    let conf = Entry {
        term: 1,
        index: 3,
        payload: Payload::ConfChange(Box::new(crate::raft::ConfEntry::learner_joins_three(4))),
    };
    let mut written = entries(1, 1..=2);
    written.push(conf.clone());
    written.extend(entries(1, 4..=5));
    let bytes = log.append(0, &written).unwrap();
    assert_eq!(bytes, written.iter().map(entry_len).sum::<u64>());
    drop(log);
    assert_eq!(reopened(tmp.path(), None), written);
}
