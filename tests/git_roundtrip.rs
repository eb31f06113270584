//! Back up real repositories of every shape and restore them: the restored repository must
//! have exactly the source's refs and HEAD and pass `git fsck --full`.

mod common;

use std::path::Path;

use common::*;

/// A history with a branch merged into main, an annotated tag, an annotated tag of a tree
/// (returned: the root tree's id), a lightweight tag of a blob and a note on main.
fn branches_tags_and_notes(repo: &Path) -> String {
    commit_file(repo, "a.txt", "one\n", "first");
    git(repo, &["checkout", "-q", "-b", "feature"]);
    commit_file(repo, "b/c.txt", "feature\n", "feature work");
    git(repo, &["checkout", "-q", "main"]);
    commit_file(repo, "a.txt", "one\ntwo\n", "second");
    git(repo, &["merge", "-q", "--no-ff", "-m", "merge feature", "feature"]);
    git(repo, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
    let tree = git(repo, &["rev-parse", "HEAD^{tree}"]).trim().to_owned();
    git(repo, &["tag", "-a", "tree-tag", "-m", "a tree", &tree]);
    let blob = git(repo, &["rev-parse", "HEAD:a.txt"]).trim().to_owned();
    git(repo, &["tag", "blob-light", &blob]);
    git(repo, &["notes", "add", "-m", "a note", "HEAD"]);
    tree
}

/// Branches, a merge, annotated and lightweight tags, a tag of a tree and of a blob, a tag
/// of a tag, notes, unicode ref names and a symbolic ref.
#[test]
fn every_kind_of_ref_round_trips() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    let tree = branches_tags_and_notes(&repo);
    git(&repo, &["tag", "light", "HEAD~1"]);
    git(&repo, &["tag", "-a", "tag-of-tag", "-m", "nested", "v1.0"]);
    git(&repo, &["branch", "ünïcødé/ветка-🚀"]);
    git(&repo, &["update-ref", "refs/custom/namespace/thing", "HEAD~1"]);
    git(&repo, &["symbolic-ref", "refs/remotes/origin/HEAD", "refs/heads/feature"]);

    env.backup("src", &repo);
    let dest = env.path("restored.git");
    env.restore_matches("src", &dest, &repo);
    assert_eq!(git(&dest, &["notes", "show", "main"]), "a note\n");
    assert_eq!(git(&dest, &["cat-file", "-p", "tree-tag"]).lines().next().unwrap(), format!("object {tree}"));
}

/// With a reachability bitmap, a first snapshot is counted by `git rev-list` from the
/// bitmap (see `rev_list`): refs of every kind, and objects the bitmap does not cover
/// (committed after the repack), must all be in it.
#[test]
fn source_with_a_bitmap_is_counted_from_it_and_round_trips() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    branches_tags_and_notes(&repo);
    git(&repo, &["repack", "-q", "-a", "-d", "--write-bitmap-index"]);
    let packs = files_under(&git_dir(&repo).join("objects/pack"));
    assert!(packs.iter().any(|p| p.extension().is_some_and(|e| e == "bitmap")), "{packs:?}");
    // After the repack: loose objects outside the bitmap, reachable from a new branch.
    git(&repo, &["checkout", "-q", "-b", "after-repack"]);
    commit_file(&repo, "d.txt", "new after the repack\n", "loose commit");
    git(&repo, &["checkout", "-q", "main"]);

    let out = env.rv(&["-vv", "backup", &repo.to_string_lossy()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("counted objects with git rev-list"), "{}", stderr(&out));
    let dest = env.path("restored.git");
    env.restore_matches("src", &dest, &repo);
    assert_eq!(git(&dest, &["notes", "show", "main"]), "a note\n");
    assert_eq!(git(&dest, &["show", "after-repack:d.txt"]), "new after the repack\n");
    assert_eq!(code(&env.rv(&["verify", "--deep"])), 0);
}

/// A first snapshot of a freshly repacked source (one pack, all of it reachable) is that
/// pack byte for byte, with the source's own index: restored, it is the same file.
#[test]
fn freshly_repacked_source_is_stored_as_its_own_pack() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    for i in 0..5 {
        commit_file(&repo, &format!("f{i}.txt"), &noise_text(i, 5_000), &format!("commit {i}"));
    }
    git(&repo, &["tag", "-a", "v1", "-m", "one"]);
    git(&repo, &["repack", "-q", "-a", "-d", "--write-bitmap-index"]);
    let source_pack = pack_file(&repo);

    let out = env.rv(&["-vv", "backup", &repo.to_string_lossy()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("stored it as it is while git counted"), "{}", stderr(&out));
    let dest = env.path("restored.git");
    env.restore_matches("src", &dest, &repo);
    let restored_pack = dest.join("objects/pack").join(source_pack.file_name().unwrap());
    assert!(std::fs::read(&restored_pack).unwrap() == std::fs::read(&source_pack).unwrap(), "same pack bytes");
    assert_eq!(code(&env.rv(&["verify", "--deep"])), 0);
}

/// A repacked source's one pack is copied while git counts, on the bet that it holds exactly
/// what the refs reach; when a branch was deleted after the repack it holds more, and the
/// snapshot must not: the branch's commit (a leaked secret, say) does not come back.
#[test]
fn repacked_source_with_a_branch_deleted_since_stores_only_what_its_refs_reach() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    for i in 0..3 {
        commit_file(&repo, &format!("f{i}.txt"), &noise_text(i, 5_000), &format!("commit {i}"));
    }
    git(&repo, &["checkout", "-q", "-b", "secret"]);
    commit_file(&repo, "secret.txt", "password\n", "oops");
    let secret = git(&repo, &["rev-parse", "HEAD"]).trim().to_owned();
    git(&repo, &["checkout", "-q", "main"]);
    git(&repo, &["repack", "-q", "-a", "-d", "--write-bitmap-index"]);
    git(&repo, &["branch", "-q", "-D", "secret"]);
    assert_eq!(git(&repo, &["cat-file", "-t", &secret]).trim(), "commit", "still in the pack");

    let out = env.rv(&["-vv", "backup", &repo.to_string_lossy()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("its copy was stopped"), "{}", stderr(&out));
    let dest = env.path("restored.git");
    env.restore_matches("src", &dest, &repo);
    let found = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(&dest)
        .args(["cat-file", "-e", &secret])
        .output()
        .unwrap();
    assert!(!found.status.success(), "the deleted branch's commit came back");
    assert_eq!(code(&env.rv(&["verify", "--deep"])), 0);
}

/// Without a git binary, gix counts a first snapshot (walking every tree): the same
/// repository restores the same.
#[test]
fn first_snapshot_without_git_on_the_path_is_counted_by_gix() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("src"));
    branches_tags_and_notes(&repo);
    let out = env
        .rv_command(&["-vv", "backup", &repo.to_string_lossy()])
        .env("PATH", env.path("no-such-dir"))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!stderr(&out).contains("counted objects with git rev-list"), "{}", stderr(&out));
    env.restore_matches("src", &env.path("restored.git"), &repo);
}

#[test]
fn empty_repository_round_trips() {
    let env = Env::new();
    env.init_store();
    let repo = new_repo(&env.path("empty"));
    env.backup("empty", &repo);
    let dest = env.path("out");
    env.restore("empty", &dest, None);
    assert_eq!(git(&dest, &["for-each-ref"]), "");
    assert_eq!(git(&dest, &["symbolic-ref", "HEAD"]).trim(), "refs/heads/main");
    fsck(&dest);
}

#[test]
fn bare_repository_with_detached_head_round_trips() {
    let env = Env::new();
    env.init_store();
    let work = new_repo(&env.path("work"));
    let first = commit_file(&work, "f", "1", "one");
    commit_file(&work, "f", "2", "two");
    let bare = env.path("bare.git");
    git(env.dir.path(), &["clone", "-q", "--bare", &work.to_string_lossy(), &bare.to_string_lossy()]);
    git(&bare, &["update-ref", "--no-deref", "HEAD", &first]);
    env.backup("team/bare.git", &bare);
    let dest = env.path("out");
    env.restore("team/bare.git", &dest, None);
    assert_eq!(ref_state_any_head(&dest), ref_state_any_head(&bare));
    fsck(&dest);
}

/// A repository borrowing objects through alternates is backed up self-contained.
#[test]
fn alternates_are_backed_up_self_contained() {
    let env = Env::new();
    env.init_store();
    let origin = new_repo(&env.path("origin"));
    for i in 0..5 {
        commit_file(&origin, "f", &format!("{i}\n"), &format!("c{i}"));
    }
    git(&origin, &["gc", "-q"]);
    let fork = env.path("fork.git");
    git(env.dir.path(), &["clone", "-q", "--bare", "--shared", &origin.to_string_lossy(), &fork.to_string_lossy()]);
    assert!(fork.join("objects/info/alternates").exists());
    commit_file(&origin, "g", "more\n", "after fork");
    env.backup("fork.git", &fork);
    // The origin disappearing must not matter to the backup.
    std::fs::remove_dir_all(&origin).unwrap();
    let dest = env.path("out");
    env.restore("fork.git", &dest, None);
    assert!(!dest.join("objects/info/alternates").exists());
    fsck(&dest);
    assert_eq!(git(&dest, &["rev-list", "--count", "main"]).trim(), "5");
}

#[test]
fn reftable_repository_is_refused_clearly() {
    let env = Env::new();
    env.init_store();
    let repo = env.path("rt");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "--ref-format=reftable"]);
    commit_file(&repo, "f", "x", "c");
    let out = env.rv(&["backup", &repo.to_string_lossy()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("reftable"), "{}", stderr(&out));
    assert_eq!(snapshot_count(&env.path("store")), 0);
}
