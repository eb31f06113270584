//! Choosing delta bases for the objects of an incremental snapshot.
//!
//! A push of a few commits mostly brings new versions of files that exist already. git
//! stores such a version as a delta against the old one; without that, an incremental
//! snapshot stores every new version whole and costs several times a `git bundle` of the
//! same commits. The old version is the object at the same path in the commit's first
//! parent, found by comparing the two trees (descending only where they differ), else in
//! its other parents (a merge), else one the commit removed elsewhere (a moved or renamed
//! file; git's own pack-objects finds those by name and size in a window). This matters
//! for objects the source holds loose (receive-pack leaves pushes under 100 objects so),
//! which have no delta of the source's to copy. When that
//! base is new too, it is in the same pack (written first); when it is not, it is reachable
//! from a commit that the previous snapshot's refs reach, so it is in the snapshot chain
//! (which is complete), and the delta names it across snapshots (a "thin" pack, completed
//! at restore).

use anyhow::{Context, Result, anyhow};
use gix::{ObjectId, hashtable::HashMap};

/// Entries of one commit that its first parent has not under the same name (added) or no
/// longer has (removed): where a renamed or moved file's old version is found.
#[derive(Default)]
struct Moves {
    added: Vec<Entry>,
    removed: Vec<Entry>,
}

/// A tree entry with its whole path.
struct Entry {
    path: Vec<u8>,
    is_tree: bool,
    id: ObjectId,
}

impl Entry {
    fn basename(&self) -> &[u8] {
        self.path.rsplit(|&b| b == b'/').next().unwrap_or(&self.path)
    }

    fn dir(&self) -> &[u8] {
        &self.path[..self.path.len() - self.basename().len()]
    }

    fn extension(&self) -> Option<&[u8]> {
        let name = self.basename();
        let dot = name.iter().rposition(|&b| b == b'.')?;
        (dot > 0).then(|| &name[dot + 1..])
    }
}

/// Added and removed entries collected per commit, at most each: adding or deleting a large
/// directory must not make the backup read every tree under it.
const MAX_MOVES: usize = 10_000;

/// Removed entries of one file name looked at for each added one.
const CANDIDATES: usize = 64;

/// For each new blob or tree, another version of it that its commit replaced, when there
/// is one: the object at the same path in the first parent, else at the same path in
/// another parent (a merge), else one the commit removed under the same file name (a move)
/// or in the same directory with the same extension (a rename).
pub fn choose(
    find: &dyn gix_pack::Find,
    new_commits: &[ObjectId],
    new_objects: &gix::hashtable::HashSet<ObjectId>,
) -> Result<HashMap<ObjectId, ObjectId>> {
    let mut bases = HashMap::default();
    let mut buf = Vec::new();
    for commit in new_commits {
        let (tree, parents) = commit_tree_and_parents(find, commit, &mut buf)?;
        let mut moves = Moves::default();
        for (nth, parent) in parents.iter().enumerate() {
            let (parent_tree, _) = commit_tree_and_parents(find, parent, &mut buf)?;
            // The root trees pair as any other (it is what changes in every commit).
            if parent_tree != tree && new_objects.contains(&tree) && !bases.contains_key(&tree) {
                bases.insert(tree, parent_tree);
            }
            let moves = (nth == 0).then_some(&mut moves);
            pair_trees(find, parent_tree, tree, new_objects, &mut bases, moves)?;
        }
        pair_moves(moves, &mut bases);
    }
    Ok(bases)
}

fn commit_tree_and_parents(
    find: &dyn gix_pack::Find,
    id: &ObjectId,
    buf: &mut Vec<u8>,
) -> Result<(ObjectId, Vec<ObjectId>)> {
    let (data, _) = find
        .try_find(id, buf)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("reading commit {id}"))?
        .with_context(|| format!("commit {id} is missing in the source"))?;
    let commit = gix::objs::CommitRefIter::from_bytes(data.data, id.kind());
    let mut tree = None;
    let mut parents = Vec::new();
    for token in commit {
        match token.map_err(|e| anyhow!("commit {id} does not parse: {e}"))? {
            gix::objs::commit::ref_iter::Token::Tree { id } => tree = Some(id),
            gix::objs::commit::ref_iter::Token::Parent { id } => parents.push(id),
            _ => break,
        }
    }
    Ok((tree.with_context(|| format!("commit {id} has no tree"))?, parents))
}

/// One tree's entries: name to (is a tree, id).
fn entries(find: &dyn gix_pack::Find, id: &ObjectId, buf: &mut Vec<u8>) -> Result<Vec<(Vec<u8>, bool, ObjectId)>> {
    let (data, _) = find
        .try_find(id, buf)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("reading tree {id}"))?
        .with_context(|| format!("tree {id} is missing in the source"))?;
    let mut out = Vec::new();
    for entry in gix::objs::TreeRefIter::from_bytes(data.data, id.kind()) {
        let entry = entry.map_err(|e| anyhow!("tree {id} does not parse: {e}"))?;
        if entry.mode.is_commit() {
            continue; // a submodule's commit is not in this repository
        }
        out.push((entry.filename.to_vec(), entry.mode.is_tree(), entry.oid.to_owned()));
    }
    Ok(out)
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = prefix.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// Pairs the new objects of tree `new` with the objects at the same paths in `old`,
/// descending only into new trees (nothing new is under a tree that is not). With `moves`,
/// also collects what `new` added and `old` lost under other names.
fn pair_trees(
    find: &dyn gix_pack::Find,
    old: ObjectId,
    new: ObjectId,
    new_objects: &gix::hashtable::HashSet<ObjectId>,
    bases: &mut HashMap<ObjectId, ObjectId>,
    mut moves: Option<&mut Moves>,
) -> Result<()> {
    let mut pending = vec![(Some(old), new, Vec::new())];
    let mut buf = Vec::new();
    while let Some((old, new, prefix)) = pending.pop() {
        if Some(new) == old || !new_objects.contains(&new) {
            continue;
        }
        let old_entries = match old {
            Some(old) => entries(find, &old, &mut buf)?,
            None => Vec::new(),
        };
        let new_entries = entries(find, &new, &mut buf)?;
        let by_name: std::collections::HashMap<&[u8], (bool, ObjectId)> =
            old_entries.iter().map(|(name, is_tree, id)| (name.as_slice(), (*is_tree, *id))).collect();
        for (name, is_tree, id) in &new_entries {
            let same_kind = by_name.get(name.as_slice()).filter(|(old_is_tree, _)| old_is_tree == is_tree);
            // A new tree is descended with its old version, or alone when it has none
            // and moves are collected (what it holds is all added).
            let collecting = moves.as_ref().is_some_and(|moves| moves.added.len() < MAX_MOVES);
            if *is_tree && (same_kind.is_some() || collecting) {
                pending.push((same_kind.map(|(_, old_id)| *old_id), *id, join(&prefix, name)));
            }
            match same_kind {
                Some(&(_, old_id)) if old_id != *id => {
                    if new_objects.contains(id) && !bases.contains_key(id) {
                        bases.insert(*id, old_id);
                    }
                }
                Some(_) => {}
                None => {
                    if let Some(moves) = moves.as_deref_mut()
                        && moves.added.len() < MAX_MOVES
                        && new_objects.contains(id)
                        && !bases.contains_key(id)
                    {
                        moves.added.push(Entry { path: join(&prefix, name), is_tree: *is_tree, id: *id });
                    }
                }
            }
        }
        if let Some(moves) = moves.as_deref_mut() {
            let new_names: std::collections::HashMap<&[u8], bool> =
                new_entries.iter().map(|(name, is_tree, _)| (name.as_slice(), *is_tree)).collect();
            for (name, is_tree, id) in &old_entries {
                if new_names.get(name.as_slice()) != Some(is_tree) {
                    collect_removed(find, join(&prefix, name), *is_tree, *id, moves, &mut buf)?;
                }
            }
        }
    }
    Ok(())
}

/// Adds a removed entry to `moves` and, for a tree, everything under it.
fn collect_removed(
    find: &dyn gix_pack::Find,
    path: Vec<u8>,
    is_tree: bool,
    id: ObjectId,
    moves: &mut Moves,
    buf: &mut Vec<u8>,
) -> Result<()> {
    let mut pending = vec![(path, is_tree, id)];
    while let Some((path, is_tree, id)) = pending.pop() {
        if moves.removed.len() >= MAX_MOVES {
            break;
        }
        if is_tree {
            for (name, is_tree, id) in entries(find, &id, buf)? {
                pending.push((join(&path, &name), is_tree, id));
            }
        }
        moves.removed.push(Entry { path, is_tree, id });
    }
    Ok(())
}

type Candidates<K> = std::collections::HashMap<K, Vec<usize>>;

/// Gives each added object without a base a removed one of its kind: under the same file
/// name (a move; of several, the one whose path ends most like it: `a/x/mod.rs` moved to
/// `b/x/mod.rs`), else in the same directory with the same extension (a rename). Each
/// removed object is the base of one added object at most: a base is inflated and indexed
/// for every delta tried against it, and one old file rarely fits many new ones.
fn pair_moves(moves: Moves, bases: &mut HashMap<ObjectId, ObjectId>) {
    if moves.added.is_empty() || moves.removed.is_empty() {
        return;
    }
    // Positions in `moves.removed`, by (is a tree, file name) and by (is a tree, directory,
    // extension).
    let mut by_basename: Candidates<(bool, &[u8])> = Candidates::new();
    let mut by_dir_and_extension: Candidates<(bool, &[u8], &[u8])> = Candidates::new();
    for (at, removed) in moves.removed.iter().enumerate() {
        by_basename.entry((removed.is_tree, removed.basename())).or_default().push(at);
        if let Some(extension) = removed.extension() {
            by_dir_and_extension.entry((removed.is_tree, removed.dir(), extension)).or_default().push(at);
        }
    }
    let mut used = vec![false; moves.removed.len()];
    let common_suffix = |a: &[u8], b: &[u8]| a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count();
    for added in &moves.added {
        let unused = |at: &&usize| !used[**at] && moves.removed[**at].id != added.id;
        let moved = by_basename.get(&(added.is_tree, added.basename())).and_then(|candidates| {
            candidates
                .iter()
                .filter(unused)
                .take(CANDIDATES)
                .max_by_key(|&&at| common_suffix(&moves.removed[at].path, &added.path))
        });
        let renamed = || {
            let extension = added.extension()?;
            by_dir_and_extension.get(&(added.is_tree, added.dir(), extension))?.iter().find(unused)
        };
        if let Some(&at) = moved.or_else(renamed) {
            used[at] = true;
            bases.entry(added.id).or_insert(moves.removed[at].id);
        }
    }
}
