//! Mercurial repositories (issue 11), made by the tests with the hg command: each snapshot
//! must restore to a repository whose changesets (hidden and secret ones included), phases,
//! branches, bookmarks, tags, obsolescence markers, hgrc and requirements equal the source's
//! when it was taken (`hg::dump`), and which `hg verify` passes without a warning.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Output,
};

use common::{hg::*, *};
use serde_json::Value;

fn new_env() -> Env {
    let env = Env::new();
    env.init_store();
    env
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", stdout(out), stderr(out)))
}

/// Restores snapshot `at` of `name` (the latest when `None`) into a new directory `dest`
/// under the env, asserts `hg verify` is clean there and returns its path.
fn restore_clean(env: &Env, name: &str, at: Option<&str>, dest: &str) -> PathBuf {
    let dest = env.path(dest);
    env.restore(name, &dest, at);
    verify_clean(&dest);
    dest
}

/// `snapshots NAME --json`, oldest first.
fn snapshots(env: &Env, name: &str) -> Vec<Value> {
    serde_json::from_str(&env.rv_ok(&["snapshots", name, "--json"])).unwrap()
}

fn refs_of(snapshot: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(snapshot["refs"].clone()).unwrap()
}

/// Every bookmark of `repo` with its node, from hg.
fn bookmarks(repo: &Path) -> BTreeMap<String, String> {
    hg_read(repo, &["bookmarks", "-Tjson"])
        .parse::<Value>()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["bookmark"].as_str().unwrap().to_owned(), b["node"].as_str().unwrap().to_owned()))
        .collect()
}

/// Whether `node` is a changeset of `repo` (hidden ones included).
fn has_changeset(repo: &Path, node: &str) -> bool {
    let out = hg_read_command(repo).args(["--hidden", "log", "-r", node, "-T", "{node}"]).output().unwrap();
    out.status.success() && String::from_utf8_lossy(&out.stdout) == node
}

fn phase_of(repo: &Path, node: &str) -> String {
    hg_read(repo, &["--hidden", "log", "-r", node, "-T", "{phase}"])
}

/// A source with a little history on `default`: `root` public, `second` draft.
fn small_history(path: &Path) -> HgRepo {
    let repo = HgRepo::new(path);
    repo.commit("a", "root", &[]);
    repo.set_phase("public", ".");
    repo.commit("a", "second", &[]);
    repo
}

#[test]
fn drafts_and_a_secret_changeset_restore_with_their_phases() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    let public = repo.node("desc('root')");
    let draft = repo.node("desc('second')");
    let draft2 = repo.commit("b", "another draft", &[]);
    let secret = repo.commit("x", "secret work", &["--secret"]);
    repo.update("null");
    let expected = repo.dump();

    env.backup("src", &repo.path);
    let dest = restore_clean(&env, "src", None, "restored");
    assert_eq!(dump(&dest), expected);
    assert_eq!(phase_of(&dest, &public), "public");
    assert_eq!(phase_of(&dest, &draft), "draft");
    assert_eq!(phase_of(&dest, &draft2), "draft");
    assert_eq!(phase_of(&dest, &secret), "secret", "the secret changeset is restored, and stays secret");
}

#[test]
fn bookmarks_moved_and_deleted_restore_as_each_snapshot_had_them() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    let a = repo.node("desc('root')");
    let b = repo.node("desc('second')");
    repo.bookmark("keep", &a);
    repo.bookmark("move", &a);
    repo.bookmark("delete", &b);
    let first = env.backup("src", &repo.path);
    let first_dump = repo.dump();

    let c = repo.commit("a", "third", &[]);
    repo.bookmark("move", &c);
    repo.delete_bookmark("delete");
    repo.bookmark("new", &b);
    repo.update("null");
    let second = env.backup("src", &repo.path);
    let second_dump = repo.dump();

    let at_first = restore_clean(&env, "src", Some(&first), "first");
    assert_eq!(dump(&at_first), first_dump);
    let want_first: BTreeMap<String, String> =
        [("delete", &b), ("keep", &a), ("move", &a)].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(bookmarks(&at_first), want_first);

    let at_second = restore_clean(&env, "src", Some(&second), "second");
    assert_eq!(dump(&at_second), second_dump);
    let want_second: BTreeMap<String, String> =
        [("keep", &a), ("move", &c), ("new", &b)].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(bookmarks(&at_second), want_second, "moved, deleted and added bookmarks as at the second snapshot");

    let listed = snapshots(&env, "src");
    let refs = refs_of(listed.last().unwrap());
    assert_eq!(refs.get("bookmarks/move"), Some(&c), "{refs:?}");
    assert!(!refs.contains_key("bookmarks/delete"), "{refs:?}");
}

#[test]
fn a_closed_named_branch_restores_closed() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    let closing = repo.closed_branch("feature-x", "default", "f");
    repo.update("default");
    repo.hg(&["branch", "-q", "still-open"]);
    let open = repo.commit("o", "open work", &[]);
    repo.update("null");
    let expected = repo.dump();

    env.backup("src", &repo.path);
    let dest = restore_clean(&env, "src", None, "restored");
    assert_eq!(dump(&dest), expected);
    let closed = hg_read(&dest, &["branches", "--closed", "-T", "{branch} {node} {closed}\n"]);
    assert!(closed.contains(&format!("feature-x {closing} True\n")), "{closed}");
    assert!(closed.contains(&format!("still-open {open} False\n")), "{closed}");
    let open_only = hg_read(&dest, &["branches", "-T", "{branch}\n"]);
    assert!(!open_only.lines().any(|b| b == "feature-x"), "a closed branch is not listed as open: {open_only}");
    let refs = refs_of(&snapshots(&env, "src")[0]);
    assert_eq!(refs.get("branches/feature-x"), Some(&closing), "{refs:?}");
}

#[test]
fn an_amend_and_a_prune_restore_their_markers_and_hidden_changesets() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    let before_amend = repo.commit("w", "wip", &[]);
    let amended_once = repo.amend("wip amended");
    let amended = repo.amend("wip amended again");
    let pruned = repo.commit("p", "to prune", &[]);
    repo.update("desc('root')");
    repo.prune(&pruned);
    repo.update("null");
    let markers = hg_read(&repo.path, &["debugobsolete"]);
    assert_eq!(markers.lines().count(), 3, "two amends and a prune: {markers}");
    let expected = repo.dump();

    env.backup("src", &repo.path);
    let dest = restore_clean(&env, "src", None, "restored");
    assert_eq!(dump(&dest), expected);
    assert_eq!(hg_read(&dest, &["debugobsolete"]), markers);
    let visible = hg_read(&dest, &["log", "-T", "{node}\n"]);
    for hidden in [&before_amend, &amended_once, &pruned] {
        assert!(has_changeset(&dest, hidden), "hidden changeset {hidden} is restored");
        assert!(!visible.contains(hidden.as_str()), "and stays hidden: {visible}");
    }
    assert!(visible.contains(amended.as_str()), "{visible}");
}

#[test]
fn a_strip_between_snapshots_restores_without_the_stripped_changesets() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    // The stripped changesets add a file: a strip leaves its emptied revlog behind.
    let stripped = repo.commit("new-file", "to strip", &[]);
    let stripped_child = repo.commit("new-file", "to strip too", &[]);
    repo.bookmark("on-stripped", &stripped_child);
    repo.update("null");
    let before = env.backup("src", &repo.path);
    let before_dump = repo.dump();

    repo.strip(&stripped);
    assert!(!has_changeset(&repo.path, &stripped));
    let after = env.backup("src", &repo.path);
    let after_dump = repo.dump();

    let at_after = restore_clean(&env, "src", Some(&after), "after");
    assert_eq!(dump(&at_after), after_dump);
    assert!(!has_changeset(&at_after, &stripped), "a stripped changeset is not restored");
    assert!(!has_changeset(&at_after, &stripped_child), "nor its descendant");

    let at_before = restore_clean(&env, "src", Some(&before), "before");
    assert_eq!(dump(&at_before), before_dump, "the snapshot before the strip still has them");

    // A changeset after the strip builds on the snapshot that saw it.
    let later = repo.commit("a", "after the strip", &[]);
    repo.update("null");
    env.backup("src", &repo.path);
    let latest = restore_clean(&env, "src", None, "latest");
    assert_eq!(dump(&latest), repo.dump());
    assert!(has_changeset(&latest, &later) && !has_changeset(&latest, &stripped));
}

/// A forge root holding one Mercurial repository `proj`; returns the root.
fn forge_with(env: &Env, make: impl FnOnce(&Path)) -> PathBuf {
    let root = env.path("forge");
    std::fs::create_dir_all(&root).unwrap();
    make(&root.join("proj"));
    root
}

fn run_json(env: &Env, root: &Path) -> Value {
    let out = env.rv(&["run", "--scan", root.to_str().unwrap(), "--json"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    json(&out)
}

#[test]
fn a_phase_change_alone_is_seen_by_run_and_restored() {
    let env = new_env();
    let root = forge_with(&env, |p| {
        let repo = small_history(p);
        repo.commit("a", "third", &[]);
        repo.update("null");
    });
    let repo = HgRepo { path: root.join("proj") };
    let night1 = run_json(&env, &root);
    assert_eq!(night1["backed_up"], 1, "{night1}");
    let draft_dump = repo.dump();

    repo.set_phase("public", "all()");
    let night2 = run_json(&env, &root);
    assert_eq!(night2["changed"], 1, "{night2}");
    assert_eq!(night2["backed_up"], 1, "{night2}");
    let public_dump = repo.dump();
    assert_ne!(public_dump, draft_dump);

    let listed = snapshots(&env, "proj");
    assert_eq!(listed.len(), 2);
    let latest = restore_clean(&env, "proj", None, "latest");
    assert_eq!(dump(&latest), public_dump);
    assert_eq!(hg_read(&latest, &["log", "-r", "draft()", "-T", "{node}\n"]), "", "every changeset is public");
    let first = restore_clean(&env, "proj", Some(listed[0]["id"].as_str().unwrap()), "first");
    assert_eq!(dump(&first), draft_dump);
}

#[test]
fn an_empty_repository_backs_up_restores_empty_and_then_its_first_changeset() {
    let env = new_env();
    let repo = HgRepo::empty(&env.path("src"));
    let empty_dump = repo.dump();
    let first = env.backup("src", &repo.path);
    assert_eq!(refs_of(&snapshots(&env, "src")[0]), BTreeMap::new());
    let dest = restore_clean(&env, "src", Some(&first), "empty");
    assert_eq!(dump(&dest), empty_dump);
    assert_eq!(hg_read(&dest, &["--hidden", "log", "-T", "{node}\n"]), "", "no changeset");

    let node = repo.commit("a", "first", &[]);
    env.backup("src", &repo.path);
    let dest = restore_clean(&env, "src", None, "first");
    assert_eq!(dump(&dest), repo.dump());
    assert!(has_changeset(&dest, &node));
}

/// Nights 1-5 of the recipe (`hg::night`), a backup after each: every snapshot restores
/// to the source as it was right after that night's backup.
#[test]
fn every_snapshot_of_a_multi_night_history_restores_exactly() {
    let env = new_env();
    let repo = HgRepo::new(&env.path("src"));
    let mut taken = Vec::new();
    for n in 1..=5 {
        night(&repo, n);
        let id = env.backup("src", &repo.path);
        let branches = hg_read(&repo.path, &["branches", "--closed", "-T", "{branch}\n"]);
        taken.push((n, id, repo.dump(), bookmarks(&repo.path), branches));
    }
    let listed = snapshots(&env, "src");
    assert_eq!(listed.len(), 5);
    for ((n, id, _, bookmarks, branches), snapshot) in taken.iter().zip(&listed) {
        assert_eq!(snapshot["id"], id.as_str());
        assert_eq!(snapshot["vcs"], "hg", "night {n}");
        let refs = refs_of(snapshot);
        let recorded: BTreeMap<String, String> = refs
            .iter()
            .filter_map(|(name, node)| Some((name.strip_prefix("bookmarks/")?.to_owned(), node.clone())))
            .collect();
        assert_eq!(&recorded, bookmarks, "night {n}: the snapshot's bookmarks");
        let mut recorded: Vec<&str> = refs.keys().filter_map(|name| name.strip_prefix("branches/")).collect();
        let mut want: Vec<&str> = branches.lines().collect();
        recorded.sort_unstable();
        want.sort_unstable();
        assert_eq!(recorded, want, "night {n}: a ref for every named branch, closed ones too");
    }
    for (n, id, expected, _, _) in &taken {
        let dest = restore_clean(&env, "src", Some(id), &format!("night{n}"));
        assert_eq!(&dump(&dest), expected, "snapshot of night {n} ({id})");
    }
}

#[test]
fn verify_deep_rebuilds_hg_snapshots_and_passes() {
    let env = new_env();
    let repo = HgRepo::new(&env.path("src"));
    for n in 1..=3 {
        night(&repo, n);
        env.backup("src", &repo.path);
    }
    let out = env.rv(&["verify", "--deep", "--json"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let report = json(&out);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["repos_checked"], 1, "{report}");
}

/// Sets the link revision of file revision `rev` of the inline revlog `store/data/<file>.i`
/// to `linkrev`: a damage of the index that no size check sees and `hg bundle` copies into the
/// bundle as it is, which then cannot be applied.
fn set_linkrev(repo: &Path, file: &str, rev: usize, linkrev: i32) {
    let path = repo.join(".hg/store/data").join(format!("{file}.i"));
    let mut index = std::fs::read(&path).unwrap();
    let flags = u32::from_be_bytes(index[..4].try_into().unwrap()) >> 16;
    assert_eq!(flags & 1, 1, "{} is inline", path.display());
    let mut at = 0;
    for _ in 0..rev {
        at += 64 + i32::from_be_bytes(index[at + 8..at + 12].try_into().unwrap()) as usize;
    }
    index[at + 20..at + 24].copy_from_slice(&linkrev.to_be_bytes());
    std::fs::write(&path, index).unwrap();
}

/// A source whose revlogs are consistent in size but wrong inside (a linkrev pointing past
/// the changelog, which only `hg verify` reads) is backed up as it is: its full snapshot is a
/// copy of the store. `verify --deep` reports it (hg verify of the rebuild), and a restore
/// gives back the source as it was, damage included, which hg verify reports the same way.
#[test]
fn verify_deep_fails_a_snapshot_of_a_source_damaged_inside_its_revlogs() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    repo.commit("a", "third", &[]);
    set_linkrev(&repo.path, "a", 1, 99);
    env.backup("src", &repo.path);
    assert_eq!(code(&env.rv(&["verify"])), 0, "the stored objects are all there");

    let out = env.rv(&["verify", "--deep", "--json"]);
    assert_eq!(code(&out), 3, "{}{}", stdout(&out), stderr(&out));
    let report = json(&out);
    assert_eq!(report["ok"], false, "{report}");
    assert!(report["problems"].as_array().unwrap().iter().any(|p| p["repo"] == "src"), "{report}");
    let restored = env.path("restored");
    let restore = env.rv(&["restore", "src", &restored.to_string_lossy()]);
    assert_eq!(code(&restore), 0, "{}", stderr(&restore));
    let verify = |repo: &std::path::Path| hg_command(repo).arg("verify").output().unwrap();
    let (source, rebuilt) = (verify(&repo.path), verify(&restored));
    assert!(!source.status.success() && !rebuilt.status.success(), "hg verify fails on both");
    let errors = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("integrity error")).count()
    };
    assert_eq!(errors(&rebuilt), errors(&source), "{}", String::from_utf8_lossy(&rebuilt.stdout));
}

#[test]
fn run_scan_over_a_mixed_tree_backs_up_exactly_the_changed_repositories() {
    let env = new_env();
    let root = env.path("forge");
    let git_names = ["git/a", "git/b.git", "git/c"];
    for name in git_names {
        let repo = new_repo(&root.join(name));
        commit_file(&repo, "README", &format!("{name}\n"), "first");
    }
    let hg_names = ["hg/x", "hg/y", "hg/z", "hg/empty"];
    for name in &hg_names[..3] {
        let repo = small_history(&root.join(name));
        repo.bookmark("main", ".");
        repo.update("null");
    }
    HgRepo::empty(&root.join("hg/empty"));
    let all: Vec<&str> = git_names.iter().chain(&hg_names).copied().collect();

    let night1 = run_json(&env, &root);
    assert_eq!(night1["examined"], all.len(), "{night1}");
    assert_eq!(night1["backed_up"], all.len(), "{night1}");
    assert_eq!(night1["failed"], 0, "{night1}");
    assert_eq!(night1["not_backed_up"], 0, "{night1}");

    // The day: a git push, an hg push, an hg bookmark alone; reads of two others (which
    // rewrite hg's caches) are no change.
    commit_file(&root.join("git/a"), "pushed", "x\n", "pushed");
    HgRepo { path: root.join("hg/x") }.commit("a", "pushed", &[]);
    let z = HgRepo { path: root.join("hg/z") };
    z.bookmark("feature", "desc('root')");
    for name in ["hg/y", "hg/empty"] {
        let path = root.join(name);
        hg(&path, &["log", "-q"]);
        hg(&path, &["tags", "-q"]);
        hg(&path, &["branches", "-q"]);
        verify_clean(&path);
    }
    let changed = ["git/a", "hg/x", "hg/z"];

    let night2 = run_json(&env, &root);
    assert_eq!(night2["changed"], changed.len(), "{night2}");
    assert_eq!(night2["backed_up"], changed.len(), "{night2}");
    assert_eq!(night2["unchanged"], all.len() - changed.len(), "{night2}");
    assert_eq!(night2["failed"], 0, "{night2}");
    for name in &all {
        let want = if changed.contains(name) { 2 } else { 1 };
        assert_eq!(snapshots(&env, name).len(), want, "{name}");
    }
    let dest = restore_clean(&env, "hg/z", None, "z");
    assert_eq!(dump(&dest), z.dump());

    let night3 = run_json(&env, &root);
    assert_eq!(night3["changed"], 0, "{night3}");
    assert_eq!(night3["backed_up"], 0, "{night3}");
}

#[test]
fn hostile_bookmark_names_round_trip() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    let nodes = [repo.node("desc('root')"), repo.node("desc('second')")];
    let mut want = BTreeMap::new();
    for (i, name) in HOSTILE_BOOKMARKS.iter().enumerate() {
        let node = &nodes[i % 2];
        repo.bookmark(name, node);
        want.insert(name.to_string(), node.clone());
    }
    repo.update("null");
    assert_eq!(bookmarks(&repo.path), want, "hg took every name as given");
    let expected = repo.dump();

    env.backup("src", &repo.path);
    let refs = refs_of(&snapshots(&env, "src")[0]);
    for (name, node) in &want {
        assert_eq!(refs.get(&format!("bookmarks/{name}")), Some(node), "{name:?} in {refs:?}");
    }
    let dest = restore_clean(&env, "src", None, "restored");
    assert_eq!(bookmarks(&dest), want);
    assert_eq!(dump(&dest), expected);
}

/// Snapshots of every repository in the store.
fn snapshot_total(env: &Env) -> usize {
    snapshot_count(&env.path("store"))
}

#[test]
fn a_truncated_file_revlog_fails_the_backup_naming_it_and_records_no_snapshot() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    repo.commit("a", "third", &[]);
    env.backup("src", &repo.path);
    // A new changeset elsewhere: an incremental bundle never reads `a`'s old revisions.
    repo.commit("b", "pushed", &[]);
    let revlog = repo.path.join(".hg/store/data/a.i");
    let size = std::fs::metadata(&revlog).unwrap().len();
    std::fs::File::options().write(true).open(&revlog).unwrap().set_len(size - 10).unwrap();

    let out = env.rv(&["backup", "--name", "src", &repo.path.to_string_lossy()]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("data/a.i"), "the error names the revlog: {}", stderr(&out));
    assert_eq!(snapshot_total(&env), 1, "no snapshot recorded");
}

#[test]
fn a_truncated_changelog_fails_the_backup_naming_it_and_records_no_snapshot() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    // A changelog past hg's inline limit (128 KiB) is split into .i and .d.
    let message = env.path("long-message");
    std::fs::write(&message, noise_text(11, 400_000)).unwrap();
    std::fs::write(repo.path.join("b"), "b\n").unwrap();
    repo.hg(&["commit", "-q", "-A", "-l", &message.to_string_lossy()]);
    let data = repo.path.join(".hg/store/00changelog.d");
    let size = std::fs::metadata(&data).expect("a split changelog").len();
    std::fs::File::options().write(true).open(&data).unwrap().set_len(size - 100).unwrap();

    let out = env.rv(&["backup", "--name", "src", &repo.path.to_string_lossy()]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("00changelog.d"), "the error names the revlog: {}", stderr(&out));
    assert_eq!(snapshot_total(&env), 0, "no snapshot recorded");
}

#[test]
fn a_repository_with_an_unknown_requirement_is_refused_by_name() {
    let env = new_env();
    let root = env.path("forge");
    for (name, file) in [("in-requires", ".hg/requires"), ("in-store", ".hg/store/requires")] {
        let repo = small_history(&root.join(name));
        let path = repo.path.join(file);
        let mut requires = std::fs::read_to_string(&path).unwrap();
        requires.push_str("exp-unknown-thing\n");
        std::fs::write(&path, requires).unwrap();

        let out = env.rv(&["backup", "--name", name, &repo.path.to_string_lossy()]);
        assert_eq!(code(&out), 1, "{name}: {}{}", stdout(&out), stderr(&out));
        assert!(stderr(&out).contains("exp-unknown-thing"), "{name}: {}", stderr(&out));
    }
    assert_eq!(snapshot_total(&env), 0);

    let out = env.rv(&["run", "--scan", root.to_str().unwrap(), "--json"]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let night = json(&out);
    assert_eq!(night["failed"], 2, "{night}");
    for failure in night["failed_repos"].as_array().unwrap() {
        assert!(failure["error"].as_str().unwrap().contains("exp-unknown-thing"), "{night}");
    }
    assert_eq!(snapshot_total(&env), 0);
}

#[test]
fn lag_of_an_hg_repository_is_zero_after_backup_and_positive_after_a_commit() {
    let env = new_env();
    let root = forge_with(&env, |p| {
        small_history(p);
    });
    let repo = HgRepo { path: root.join("proj") };
    run_json(&env, &root);
    let lag = || {
        let out = env.rv(&["lag", "--scan", root.to_str().unwrap(), "--json"]);
        assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
        let report = json(&out);
        let entry = &report["repos"][0];
        assert_eq!(entry["repo"], "proj", "{report}");
        assert_eq!(entry["vcs"], "hg", "{report}");
        entry["lag_seconds"].as_i64().unwrap()
    };
    // Reads rewrite hg's caches, which is no change.
    hg(&repo.path, &["log", "-q"]);
    verify_clean(&repo.path);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(lag(), 0);

    repo.commit("a", "pushed", &[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(lag() > 0);
}

/// hg runs hooks and loads extensions named in a repository's `.hg/hgrc`: a forge's
/// repository is its customer's code. The hgrc is data to back up and restore, never
/// configuration for repovault's own hg calls.
#[test]
fn the_repositorys_hgrc_hooks_and_extensions_never_run_in_backup_restore_or_verify() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    let marker = env.path("hook-ran");
    let mut hgrc = String::from("[hooks]\n");
    for hook in ["preoutgoing", "outgoing", "prechangegroup", "changegroup", "pretxnopen", "pretxnclose"] {
        hgrc.push_str(&format!("{hook} = echo {hook} >> {}\n", marker.display()));
    }
    for command in ["bundle", "log", "branches", "bookmarks", "verify", "unbundle", "init", "heads"] {
        hgrc.push_str(&format!("pre-{command} = echo pre-{command} >> {}\n", marker.display()));
    }
    hgrc.push_str("[extensions]\nnosuchext = /nonexistent/extension.py\n");
    repo.append_hgrc(&hgrc);
    let expected = repo.dump();

    env.backup("src", &repo.path);
    let dest = env.path("restored");
    env.restore("src", &dest, None);
    let out = env.rv(&["verify", "--deep"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(!marker.exists(), "hooks ran: {}", std::fs::read_to_string(&marker).unwrap_or_default());
    assert_eq!(dump(&dest), expected, "the hgrc itself is restored");
    verify_clean(&dest);
}

/// Requirements a restore must reproduce exactly, far from hg's defaults: zlib revlogs
/// without share-safe, generaldelta, sparse-revlog or dotencode; and what a Rust-enabled hg
/// writes (persistent nodemap, dirstate-v2) with bookmarks in the store and the internal phase.
#[test]
fn repositories_with_other_requirements_restore_with_the_same_ones() {
    let env = new_env();
    let formats: [(&str, &[&str]); 2] = [
        (
            "old-format",
            &[
                "format.revlog-compression=zlib",
                "format.use-share-safe=no",
                "format.usegeneraldelta=no",
                "format.generaldelta=no",
                "format.sparse-revlog=no",
                "format.dotencode=no",
            ],
        ),
        (
            "new-format",
            &[
                "format.use-persistent-nodemap=yes",
                "format.use-dirstate-v2=yes",
                "format.bookmarks-in-store=yes",
                "format.use-internal-phase=yes",
            ],
        ),
    ];
    for (name, settings) in formats {
        let repo = HgRepo::with_format(&env.path(name), settings);
        repo.commit("a", "root", &[]);
        repo.commit("a", "second", &[]);
        repo.bookmark("mark", "desc('root')");
        repo.update("null");
        let expected = repo.dump();
        env.backup(name, &repo.path);
        let dest = restore_clean(&env, name, None, &format!("{name}-restored"));
        assert_eq!(dump(&dest), expected, "{name}");
        for file in [".hg/requires", ".hg/store/requires"] {
            assert_eq!(std::fs::read(dest.join(file)).ok(), std::fs::read(repo.path.join(file)).ok(), "{name}: {file}");
        }
    }
    assert!(env.path("new-format/.hg/store/bookmarks").is_file(), "bookmarks in the store");
}

/// A share's store is another repository's: refused, naming its requirement.
#[test]
fn a_shared_working_copy_is_refused_by_name() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    let share = env.path("share");
    let made = hg_base()
        .args(["--config", "extensions.share=", "share", "-q", "--noupdate"])
        .arg(&repo.path)
        .arg(&share)
        .status()
        .unwrap();
    assert!(made.success(), "hg share");
    let out = env.rv(&["backup", "--name", "share", &share.to_string_lossy()]);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("\"shared\""), "{}", stderr(&out));
    assert_eq!(snapshot_total(&env), 0);
}

/// Later hg snapshots build on the bundles of earlier ones: forgetting those snapshots must
/// keep every bundle the kept ones need.
#[test]
fn prune_keeps_every_bundle_the_kept_hg_snapshot_needs() {
    let env = new_env();
    let repo = HgRepo::new(&env.path("src"));
    night(&repo, 1);
    env.backup("src", &repo.path);
    night(&repo, 2);
    env.backup("src", &repo.path);
    repo.bookmark("late", "desc('root')");
    env.backup("src", &repo.path);
    let expected = repo.dump();

    let out = env.rv(&["prune", "--keep-last", "1", "--json"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let report = json(&out);
    assert_eq!(report["snapshots_forgotten"], 2, "{report}");
    // The forgotten snapshots' own bookmarks and phases files are named by no one now.
    assert!(report["objects_deleted"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(snapshots(&env, "src").len(), 1);
    let out = env.rv(&["verify", "--deep"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let dest = restore_clean(&env, "src", None, "restored");
    assert_eq!(dump(&dest), expected);
}

/// The same snapshots through an ssh:// store (repovault serve on the storage host).
#[test]
fn hg_snapshots_through_an_ssh_store_restore_exactly() {
    let mut env = Env::new();
    let sshd = common::sshd::Sshd::start(&env.path("sshd"));
    env.use_ssh(&sshd);
    env.init_store();
    let repo = HgRepo::new(&env.path("src"));
    let mut taken = Vec::new();
    for n in 1..=3 {
        night(&repo, n);
        taken.push((env.backup("src", &repo.path), repo.dump()));
    }
    for (i, (id, expected)) in taken.iter().enumerate() {
        let dest = restore_clean(&env, "src", Some(id), &format!("night{}", i + 1));
        assert_eq!(&dump(&dest), expected, "night {}", i + 1);
    }
    let out = env.rv(&["verify", "--deep"]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
}

/// hg stores the revlog of a file whose encoded path is too long under `store/dh/` with a
/// hashed name, and a file revlog past 128 KiB as `.i` + `.d`: both back up and restore.
#[test]
fn long_paths_and_large_files_back_up_and_restore() {
    let env = new_env();
    let repo = small_history(&env.path("src"));
    let long_dir: PathBuf = (1..=6).map(|i| format!("directory-with-a-long-name-{i:02}")).collect();
    std::fs::create_dir_all(repo.path.join(&long_dir)).unwrap();
    let long_file = long_dir.join("file-with-a-rather-long-name-too.txt");
    std::fs::write(repo.path.join(&long_file), "x\n").unwrap();
    std::fs::write(repo.path.join("Large.bin"), noise_bytes(5, 300_000)).unwrap();
    repo.commit("a", "long path and large file", &[]);
    let store = repo.path.join(".hg/store");
    assert!(files_under(&store.join("dh")).iter().any(|f| f.extension().is_some_and(|e| e == "i")), "a hashed revlog");
    assert!(store.join("data/_large.bin.d").is_file(), "a split file revlog");
    repo.update("null");
    let expected = repo.dump();

    env.backup("src", &repo.path);
    let dest = restore_clean(&env, "src", None, "restored");
    assert_eq!(dump(&dest), expected);
    let content = hg_read(&dest, &["cat", "-r", "tip", &dest.join(&long_file).to_string_lossy()]);
    assert_eq!(content, "x\n");
}
