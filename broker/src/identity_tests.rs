use super::*;
use crate::storage::OsDisk;

fn disk() -> Arc<dyn Disk> {
    Arc::new(OsDisk)
}

fn answer(node_id: u64) -> HelloAnswer {
    HelloAnswer {
        node_id,
        cluster_id: "c1".into(),
        ..HelloAnswer::default()
    }
}

#[test]
fn a_new_data_dir_is_fresh_and_writes_nothing_until_it_settles() {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::open(disk(), dir.path(), 2).unwrap();
    assert!(id.is_fresh());
    assert_ne!(id.incarnation, 0);
    assert!(!dir.path().join(FILE_NAME).exists());
    id.learn_cluster_id("abc").unwrap();
    assert!(
        !dir.path().join(FILE_NAME).exists(),
        "fresh: nothing written"
    );
    std::fs::create_dir(dir.path().join(CONTROLLER_DIR)).unwrap();
    id.settle().unwrap();
    assert!(!id.is_fresh());
    let again = Identity::open(disk(), dir.path(), 2).unwrap();
    assert!(!again.is_fresh());
    assert_eq!(again.incarnation, id.incarnation);
    assert_eq!(again.cluster_id(), Some("abc"));
}

#[test]
fn a_data_dir_older_than_identities_is_given_one_and_is_not_fresh() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(CONTROLLER_DIR)).unwrap();
    let id = Identity::open(disk(), dir.path(), 3).unwrap();
    assert!(!id.is_fresh());
    let again = Identity::open(disk(), dir.path(), 3).unwrap();
    assert_eq!(again.incarnation, id.incarnation);
    assert_eq!(again.cluster_id(), None);
    again.learn_cluster_id("c9").unwrap();
    assert_eq!(
        Identity::open(disk(), dir.path(), 3).unwrap().cluster_id(),
        Some("c9")
    );
}

#[test]
fn another_brokers_data_dir_or_one_without_its_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(CONTROLLER_DIR)).unwrap();
    Identity::open(disk(), dir.path(), 1).unwrap();
    let e = Identity::open(disk(), dir.path(), 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("belongs to broker 1, not to broker 2"), "{e}");
    std::fs::remove_dir(dir.path().join(CONTROLLER_DIR)).unwrap();
    let e = Identity::open(disk(), dir.path(), 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no controller state"), "{e}");
}

#[test]
fn a_damaged_identity_file_is_refused_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(CONTROLLER_DIR)).unwrap();
    let path = dir.path().join(FILE_NAME);
    for (text, why) in [
        ("node_id = 1\nincarnation = \"zz\"\n", "bad incarnation"),
        ("node_id = 1\nincarnation = \"0\"\n", "bad incarnation"),
        ("node_id = 1\n", "missing field"),
        ("incarnation = \"1f\"\n", "missing field"),
        (
            "node_id = 1\nincarnation = \"1f\"\ncluster_id = \"a b\"\n",
            "letters, digits",
        ),
        (
            "node_id = 1\nincarnation = \"1f\"\nextra = 1\n",
            "unknown field",
        ),
        ("\u{0}\u{1}", "TOML"),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = Identity::open(disk(), dir.path(), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains(FILE_NAME), "{text:?}: {e}");
        assert!(
            e.contains(why) || why == "TOML",
            "{text:?}: expected {why:?} in {e}"
        );
    }
    std::fs::write(&path, vec![b'#'; 5000]).unwrap();
    let e = Identity::open(disk(), dir.path(), 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("5000 bytes"), "{e}");
}

#[test]
fn a_different_cluster_id_is_refused_once_one_is_known() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(CONTROLLER_DIR)).unwrap();
    let id = Identity::open(disk(), dir.path(), 1).unwrap();
    id.learn_cluster_id("aaa").unwrap();
    id.learn_cluster_id("aaa").unwrap();
    let e = id.learn_cluster_id("bbb").unwrap_err().to_string();
    assert!(e.contains("cluster aaa") && e.contains("bbb"), "{e}");
}

#[test]
fn cluster_ids_are_bounded_and_minted_ones_pass() {
    check_cluster_id(&mint_cluster_id()).unwrap();
    assert!(check_cluster_id("").is_err());
    assert!(check_cluster_id(&"a".repeat(CLUSTER_ID_BYTES_MAX + 1)).is_err());
    assert!(check_cluster_id("a/b").is_err());
    assert_ne!(mint_cluster_id(), mint_cluster_id());
}

#[test]
fn a_fresh_broker_proceeds_at_the_first_start_or_when_the_leader_confirms_it_is_unknown() {
    let voters = [1, 2, 3];
    let mut answers = BTreeMap::new();
    assert!(matches!(
        judge_fresh(2, &voters, &answers),
        Verdict::Wait(_)
    ));
    answers.insert(
        1,
        HelloAnswer {
            fresh: true,
            ..answer(1)
        },
    );
    let Verdict::Wait(why) = judge_fresh(2, &voters, &answers) else {
        panic!("one voter has not answered")
    };
    assert!(why.contains("not answering: [3]"), "{why}");
    answers.insert(
        3,
        HelloAnswer {
            fresh: true,
            ..answer(3)
        },
    );
    assert_eq!(judge_fresh(2, &voters, &answers), Verdict::Proceed);
    // A peer with state but no controller leader cannot tell.
    answers.insert(3, answer(3));
    let Verdict::Wait(why) = judge_fresh(2, &voters, &answers) else {
        panic!("broker 3 holds state")
    };
    assert!(why.contains("controller leader to ask: [3]"), "{why}");
    answers.insert(
        3,
        HelloAnswer {
            confirmed: true,
            ..answer(3)
        },
    );
    assert_eq!(judge_fresh(2, &voters, &answers), Verdict::Proceed);
    // A broker that is not an initial voter (a scale-up) needs the leader's word too.
    let mut joining = BTreeMap::new();
    joining.insert(1, answer(1));
    assert!(matches!(
        judge_fresh(4, &voters, &joining),
        Verdict::Wait(_)
    ));
    assert_eq!(judge_fresh(1, &[1], &BTreeMap::new()), Verdict::Proceed);
}

#[test]
fn a_fresh_broker_the_cluster_registered_before_refuses_naming_the_procedure() {
    let mut answers = BTreeMap::new();
    // Every other voter fresh does not outweigh a leader that remembers the node id.
    answers.insert(
        1,
        HelloAnswer {
            fresh: true,
            ..answer(1)
        },
    );
    answers.insert(
        3,
        HelloAnswer {
            confirmed: true,
            registered: true,
            registered_incarnation: 0xab,
            ..answer(3)
        },
    );
    let Verdict::Refuse(why) = judge_fresh(2, &[1, 2, 3], &answers) else {
        panic!("a registered node id came back empty")
    };
    assert!(why.contains("cluster c1 already knows broker 2"), "{why}");
    assert!(why.contains("00000000000000ab"), "{why}");
    assert!(why.contains("ferry cluster remove-broker 2"), "{why}");
    assert!(why.contains("A broker lost its data dir"), "{why}");
}

#[test]
fn a_broker_whose_peers_are_a_majority_of_another_cluster_is_refused() {
    let mut answers = BTreeMap::new();
    answers.insert(
        1,
        HelloAnswer {
            cluster_id: "other".into(),
            ..answer(1)
        },
    );
    judge_known(Some("mine"), 3, &answers).unwrap();
    judge_known(None, 3, &answers).unwrap();
    answers.insert(
        3,
        HelloAnswer {
            cluster_id: String::new(),
            ..answer(3)
        },
    );
    judge_known(Some("mine"), 3, &answers).unwrap();
    answers.insert(
        3,
        HelloAnswer {
            cluster_id: "other".into(),
            ..answer(3)
        },
    );
    let e = judge_known(Some("mine"), 3, &answers)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster mine") && e.contains("is other"), "{e}");
    answers.insert(
        3,
        HelloAnswer {
            cluster_id: "mine".into(),
            ..answer(3)
        },
    );
    judge_known(Some("mine"), 3, &answers).unwrap();
}
