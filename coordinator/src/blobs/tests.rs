use std::time::Duration;

use testfleet_bundle::blob::compress;
use testfleet_bundle::manifest::ManifestEntry;

use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn store(dir: &Path) -> BlobStore {
    BlobStore::open(dir, 1 << 30, Arc::default()).unwrap()
}

/// A file's digest and its frame.
fn frame(contents: &[u8]) -> (BlobDigest, Vec<u8>) {
    let mut bytes = Vec::new();
    let digest = compress(contents, &mut bytes).unwrap();
    (digest, bytes)
}

/// Uploads `contents` in pieces, as chunks arrive.
fn upload(store: &BlobStore, contents: &[u8]) -> BlobDigest {
    let (digest, bytes) = frame(contents);
    let mut up = store.begin(digest).unwrap();
    for piece in bytes.chunks(7) {
        up.write(piece).unwrap();
    }
    up.finish().unwrap();
    digest
}

fn manifest_of(files: &[(&str, BlobDigest)]) -> (String, Vec<u8>) {
    let m = Manifest::from_entries(
        files
            .iter()
            .map(|(path, d)| ManifestEntry {
                path: (*path).into(),
                sha256: d.sha256,
                size: d.size,
                executable: false,
            })
            .collect(),
    )
    .unwrap();
    (m.digest(), m.to_bytes())
}

/// Sets `path`'s last use to `age` ago.
fn age(path: &Path, age: Duration) {
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

fn files_in(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        n += if p.is_dir() { files_in(&p) } else { 1 };
    }
    n
}

#[test]
fn a_file_is_visible_once_verified_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let (a, _) = frame(b"first file");
    let empty = BlobDigest {
        size: 0,
        ..frame(b"").0
    };
    assert_eq!(store.find_missing(&[a, empty]).unwrap(), vec![a]);
    assert_eq!(upload(&store, b"first file"), a);
    assert!(store.find_missing(&[a]).unwrap().is_empty());
    let stored = store.path_of(&a);
    let mode = std::fs::metadata(&stored).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o444);
    assert_eq!(files_in(&dir.path().join("tmp")), 0);
}

#[test]
fn a_file_that_is_not_what_it_claims_or_is_cut_off_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    // Another file's bytes under a's digest, same size.
    let (a, _) = frame(b"claimed contents");
    let (_, other) = frame(b"another contents");
    let mut up = store.begin(a).unwrap();
    let refused = up.write(&other).and_then(|()| up.finish());
    assert!(
        matches!(refused, Err(BlobStoreError::Refused(..))),
        "{refused:?}"
    );
    // Half a frame, then the stream goes away.
    let (b, bytes) = frame(&vec![9u8; 1 << 20]);
    let mut up = store.begin(b).unwrap();
    up.write(&bytes[..bytes.len() / 2]).unwrap();
    drop(up);
    assert_eq!(files_in(&dir.path().join("cas")), 0);
    assert_eq!(files_in(&dir.path().join("tmp")), 0);
    assert_eq!(store.find_missing(&[a, b]).unwrap(), vec![a, b]);
    // Larger than the store takes: refused before a byte.
    let small = BlobStore::open(dir.path(), 10, Arc::default()).unwrap();
    assert!(matches!(
        small.begin(b),
        Err(BlobStoreError::TooLarge { .. })
    ));
}

#[test]
fn a_manifest_is_stored_only_once_every_file_it_names_is_here() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let a = upload(&store, b"binary a");
    let (b, _) = frame(b"binary b");
    let (digest, bytes) = manifest_of(&[("target/a", a), ("target/b", b)]);
    assert!(!store.has_manifest(&digest).unwrap());
    assert_eq!(store.put_manifest(&digest, &bytes).unwrap(), vec![b]);
    assert!(!store.has_manifest(&digest).unwrap());
    assert!(store.manifest(&digest).unwrap().is_none());
    upload(&store, b"binary b");
    assert!(store.put_manifest(&digest, &bytes).unwrap().is_empty());
    assert!(store.has_manifest(&digest).unwrap());
    assert_eq!(store.manifest(&digest).unwrap().unwrap(), bytes);
    // Bytes that are not what the digest names, or not a manifest, are refused.
    let (other, _) = manifest_of(&[("target/a", a)]);
    assert!(matches!(
        store.put_manifest(&other, &bytes),
        Err(BlobStoreError::BadManifest(_))
    ));
    let hostile = format!(
        "{}\n{} 8 644 ../escape\n",
        testfleet_bundle::manifest::VERSION_LINE,
        a.sha256_hex()
    );
    let hostile_digest = hex::encode(Sha256::digest(hostile.as_bytes()));
    let err = store
        .put_manifest(&hostile_digest, hostile.as_bytes())
        .unwrap_err();
    assert!(err.to_string().contains(".."), "{err}");
    assert!(matches!(
        store.has_manifest("../../etc/passwd"),
        Err(BlobStoreError::BadDigest(_))
    ));
    assert_eq!(files_in(&dir.path().join("tmp")), 0);
}

#[test]
fn collection_removes_only_what_no_kept_or_recent_bundle_needs() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let shared = upload(&store, b"shared by both bundles");
    let only_old = upload(&store, b"only in the old bundle");
    let only_kept = upload(&store, b"only in the kept bundle");
    let loose = upload(&store, b"named by no bundle");
    let found = upload(&store, b"named by none, but just asked for");
    let (old, old_bytes) = manifest_of(&[("a", shared), ("b", only_old)]);
    let (kept, kept_bytes) = manifest_of(&[("a", shared), ("c", only_kept)]);
    store.put_manifest(&old, &old_bytes).unwrap();
    store.put_manifest(&kept, &kept_bytes).unwrap();
    std::fs::write(dir.path().join("tmp/left-behind"), b"half").unwrap();
    for d in [shared, only_old, only_kept, loose, found] {
        age(&store.path_of(&d), 10 * DAY);
    }
    for m in [&old, &kept] {
        age(&dir.path().join("manifests").join(m), 10 * DAY);
    }
    age(&dir.path().join("tmp/left-behind"), 10 * DAY);
    // A client asks what is missing: what it is told is here must stay.
    assert!(store.find_missing(&[found]).unwrap().is_empty());

    let collected = store
        .collect(SystemTime::now() - 7 * DAY, &HashSet::from([kept.clone()]))
        .unwrap();
    assert_eq!(
        (collected.manifests, collected.files, collected.leftovers),
        (1, 2, 1)
    );
    assert!(!store.has_manifest(&old).unwrap());
    assert!(store.has_manifest(&kept).unwrap());
    assert_eq!(
        store
            .find_missing(&[shared, only_old, only_kept, loose, found])
            .unwrap(),
        vec![only_old, loose]
    );
    // The kept bundle can still be stored again as it is: all its files are here.
    assert!(store.put_manifest(&kept, &kept_bytes).unwrap().is_empty());
}
