//! `metrics.jsonl` survives interrupted writes: a torn last line is cut before the next
//! append, and a bad line in the middle is skipped, not fatal.

use std::io::Write;

use vitrine::train::events::{RunStarted, TrainEvent};
use vitrine::train::metrics_log::{MetricsFollower, MetricsWriter, read_all};

fn notice(step: usize) -> TrainEvent {
    TrainEvent::Notice {
        step,
        message: format!("event {step}"),
        kind: None,
    }
}

#[test]
fn a_torn_last_line_is_cut_before_the_next_event() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("metrics.jsonl");
    {
        let mut w = MetricsWriter::append(&path).expect("open");
        w.write(&notice(1)).expect("write");
        w.write(&notice(2)).expect("write");
    }
    // Power lost in the middle of the third event.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    f.write_all(br#"{"event":"notice","step":3,"mess"#)
        .expect("torn");
    drop(f);
    let mut w = MetricsWriter::append(&path).expect("reopen repairs");
    w.write(&notice(4)).expect("write");
    assert_eq!(
        read_all(&path).expect("read"),
        vec![notice(1), notice(2), notice(4)]
    );
    // A file holding only a torn line is emptied.
    let only = tmp.path().join("only.jsonl");
    std::fs::write(&only, b"{\"event\":\"no").expect("write");
    MetricsWriter::append(&only).expect("repair");
    assert_eq!(std::fs::read(&only).expect("read"), b"");
}

#[test]
fn a_bad_line_is_skipped_and_the_rest_replays() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("metrics.jsonl");
    let line = |e: &TrainEvent| serde_json::to_string(e).expect("json") + "\n";
    let text = [
        line(&notice(1)),
        "{\"event\":\"notice\",\"st\n".to_string(),
        "\u{0}\u{ff}garbage\n".to_string(),
        line(&notice(2)),
    ]
    .concat();
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
    bytes.extend_from_slice(line(&notice(3)).as_bytes());
    std::fs::write(&path, bytes).expect("write");
    let mut follower = MetricsFollower::new(&path);
    assert_eq!(
        follower.poll().expect("poll"),
        vec![notice(1), notice(2), notice(3)]
    );
    assert_eq!(follower.skipped(), 3);
    // A writer mid-append: the partial line waits for the next poll.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    let next = line(&notice(4));
    let (a, b) = next.as_bytes().split_at(10);
    f.write_all(a).expect("half");
    assert!(follower.poll().expect("poll").is_empty());
    f.write_all(b).expect("rest");
    assert_eq!(follower.poll().expect("poll"), vec![notice(4)]);
    assert_eq!(follower.skipped(), 3);
}

#[test]
fn a_started_event_reads_with_and_without_the_device_details() {
    // As runs wrote it before the device's name and memory were recorded.
    let old = r#"{"event":"started","run":"demo","device":"cpu","backbone":"resnet18","image_size":32,"batch":16,"epochs":3,"steps_per_epoch":18,"total_steps":54,"start_step":0,"resumed":false,"mining":"batchhard","params":11448768,"trainable_params":11439168,"train_triplets":302,"val_queries":97,"val_gallery":71,"time":1795887304.585161}"#;
    let event: TrainEvent = serde_json::from_str(old).expect("an old started event");
    let TrainEvent::Started(RunStarted {
        device,
        device_name,
        device_detail,
        device_memory_bytes,
        device_memory_free_bytes,
        ..
    }) = &event
    else {
        panic!("{event:?}")
    };
    assert_eq!(device, "cpu");
    assert!(device_name.is_empty() && device_detail.is_empty());
    assert_eq!((*device_memory_bytes, *device_memory_free_bytes), (0, None));

    // A new one round-trips through the log with every field.
    let mut new: serde_json::Value = serde_json::from_str(old).expect("json");
    new["device"] = "cuda:0".into();
    new["device_name"] = "NVIDIA H200".into();
    new["device_detail"] = "compute 9.0".into();
    new["device_memory_bytes"] = 150_100_000_000u64.into();
    new["device_memory_free_bytes"] = 149_000_000_000u64.into();
    let event: TrainEvent = serde_json::from_value(new).expect("a new started event");
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("metrics.jsonl");
    MetricsWriter::append(&path)
        .expect("open")
        .write(&event)
        .expect("write");
    let read = read_all(&path).expect("read");
    assert_eq!(read, vec![event]);
    let TrainEvent::Started(RunStarted {
        device_name,
        device_memory_free_bytes,
        ..
    }) = &read[0]
    else {
        panic!("{read:?}")
    };
    assert_eq!(device_name, "NVIDIA H200");
    assert_eq!(*device_memory_free_bytes, Some(149_000_000_000));
}

#[test]
fn an_over_long_line_is_skipped_and_a_big_file_is_read_in_bounded_polls() {
    use vitrine::train::metrics_log::{MAX_LINE, MAX_POLL_BYTES};
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("metrics.jsonl");
    let line = |e: &TrainEvent| serde_json::to_string(e).expect("json") + "\n";
    // A line past the limit, then events; the long line never sits in memory whole.
    let long = "x".repeat(MAX_LINE + 10) + "\n";
    std::fs::write(&path, [line(&notice(1)), long, line(&notice(2))].concat()).expect("write");
    let mut follower = MetricsFollower::new(&path);
    assert_eq!(follower.poll().expect("poll"), vec![notice(1), notice(2)]);
    assert_eq!(follower.skipped(), 1);
    // More than one poll's worth: each poll stops at its budget, none loses an event.
    let mut many = Vec::new();
    let mut size = 0u64;
    for i in 0.. {
        let l = line(&notice(i));
        size += l.len() as u64;
        if size >= 2 * MAX_POLL_BYTES + 1000 {
            break;
        }
        many.push(l);
    }
    std::fs::write(&path, many.concat()).expect("write");
    let mut follower = MetricsFollower::new(&path);
    let mut seen = Vec::new();
    let mut polls = 0;
    loop {
        seen.extend(follower.poll().expect("poll"));
        polls += 1;
        if follower.caught_up() {
            break;
        }
    }
    assert!(polls >= 3, "{polls} polls");
    assert_eq!(seen.len(), many.len());
    assert_eq!(seen.last(), Some(&notice(many.len() - 1)));
}

#[test]
fn a_replaced_log_is_read_again_from_its_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("metrics.jsonl");
    let line = |e: &TrainEvent| serde_json::to_string(e).expect("json") + "\n";
    std::fs::write(&path, [line(&notice(1)), line(&notice(2))].concat()).expect("write");
    let mut follower = MetricsFollower::new(&path);
    assert_eq!(follower.poll().expect("poll").len(), 2);
    // Another run's log renamed over it, as long and longer: another inode.
    let other = tmp.path().join("other.jsonl");
    let replacement = [line(&notice(7)), line(&notice(8)), line(&notice(9))].concat();
    std::fs::write(&other, &replacement).expect("write");
    std::fs::rename(&other, &path).expect("rename");
    assert_eq!(
        follower.poll().expect("poll"),
        vec![notice(7), notice(8), notice(9)]
    );
    assert_eq!(follower.restarts(), 1);
    // Rewritten in place (same inode), as long: told by its first line.
    let same_size = [line(&notice(4)), line(&notice(5)), line(&notice(6))].concat();
    assert_eq!(same_size.len(), replacement.len());
    std::fs::write(&path, &same_size).expect("rewrite");
    assert_eq!(
        follower.poll().expect("poll"),
        vec![notice(4), notice(5), notice(6)]
    );
    assert_eq!(follower.restarts(), 2);
    // Appends are no replacement.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open");
    f.write_all(line(&notice(10)).as_bytes()).expect("append");
    assert_eq!(follower.poll().expect("poll"), vec![notice(10)]);
    assert_eq!(follower.restarts(), 2);
}
