//! `kura files`: the files of a snapshot read in place, from a store and from an engine.
//!
//! On the imaging suite's disks (GPT Linux, MBR with logical partitions, Windows-style GPT),
//! captured into a store: `get` of each filesystem's root gives exactly the source tree (ext4,
//! NTFS, FAT), `ls` lists each directory's entries as the source has them, NTFS alternate data
//! streams are listed and readable, ext4 symbolic links (a loop among them) come out as links,
//! `find` matches globs. On an engine: `get` of a 200 MiB file fetches at most 1.1× the file's
//! bytes. Between two snapshots of the dedup scenario, `diff` lists exactly the files changed.
//! XFS made by mkfs.xfs (v5 by default, with large extent counts and 16 KiB directory blocks,
//! and v4) filled so that every directory and fork form occurs: `get` gives the source tree
//! with modes, owners and mtimes, `ls` every directory's names; corrupted inodes give errors
//! naming them.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kura_tests::content::{random_bytes, sha256_file, sha256_hex, text_bytes, FileSpec};
use kura_tests::disks::{build_gpt, debugfs_w, ext4_replace_file, read_at, write_at, Content, Disk, Fs, PartSpec, MIB};
use kura_tests::engine::Server as EngineServer;
use kura_tests::fixtures;
use kura_tests::kura_cli::{run, Run, Store};
use serde_json::Value;

/// The stream added to one NTFS file of each disk.
const STREAM: &str = "Zone.Identifier";

fn files(store: &Store, args: &[&str]) -> Run {
    let mut v: Vec<String> = vec!["files".into()];
    v.extend(args.iter().map(|s| s.to_string()));
    v.extend(["--store".into(), store.dir.display().to_string()]);
    run(v)
}

fn json(r: &Run) -> Value {
    r.expect_success().json()
}

/// `stats: {"chunks":N,"bytes":M}` from stderr of a `--stats` run.
fn fetched(r: &Run) -> (u64, u64) {
    let line = r.stderr.lines().find_map(|l| l.strip_prefix("stats: ")).unwrap_or_else(|| panic!("no stats:\n{r}"));
    let v: Value = serde_json::from_str(line).unwrap();
    (v["chunks"].as_u64().unwrap(), v["bytes"].as_u64().unwrap())
}

/// Adds stream `STREAM` to `name` on the NTFS partition `number` of `disk` (with ntfscp, on a
/// copy of the partition written back in place); returns the stream's bytes.
fn add_stream(disk: &Disk, number: u32, name: &str, scratch: &Path) -> Vec<u8> {
    let part = disk.partition(number);
    assert_eq!(part.fs, Fs::Ntfs);
    let img = scratch.join(format!("p{number}.ntfs"));
    std::fs::write(&img, read_at(&disk.path, part.offset, part.size as usize)).unwrap();
    let data = b"[ZoneTransfer]\r\nZoneId=3\r\n".to_vec();
    let src = scratch.join("stream.src");
    std::fs::write(&src, &data).unwrap();
    let img_s = img.to_str().unwrap();
    kura_tests::tools::run("ntfscp", ["-a", "0x80", "-N", STREAM, img_s, src.to_str().unwrap(), name]);
    write_at(&disk.path, part.offset, &std::fs::read(&img).unwrap());
    std::fs::remove_file(&img).unwrap();
    data
}

/// Every regular file under `root`: relative path → sha256 (FAT paths lower-cased).
fn local_tree(root: &Path, lower: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                let rel = e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string();
                out.insert(if lower { rel.to_lowercase() } else { rel }, sha256_file(&e.path()));
            }
        }
    }
    out
}

/// The names `ls --json` gives for `N:/dir`.
fn ls_names(store: &Store, snap: &str, arg: &str) -> BTreeSet<String> {
    let v = json(&files(store, &["ls", snap, arg, "--json"]));
    v.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

/// Captures `disk` (after `prepare`), then checks every ext4/NTFS/FAT partition: `get` of the
/// root equals the source tree, `ls` of each source directory lists its entries.
fn check_disk(build: fn(&Path) -> Disk, stream_on: (u32, &str)) {
    let work = tempfile::tempdir().unwrap();
    let disk = build(work.path());
    let stream = add_stream(&disk, stream_on.0, stream_on.1, work.path());
    let store = Store::new(work.path().join("store"));
    let cap = store.capture(&disk.path, Some("files"));
    std::fs::remove_file(&disk.path).unwrap();

    // Without a path: the partitions and their filesystems (not an MBR extended partition: a
    // container, not a partition of the layout).
    let parts = json(&files(&store, &["ls", &cap.snapshot, "--json"]));
    for p in disk.partitions.iter().filter(|p| p.fs != Fs::Extended) {
        let listed = parts.as_array().unwrap().iter().find(|x| x["number"] == p.number);
        let listed = listed.unwrap_or_else(|| panic!("partition {} not listed: {parts}", p.number));
        let readable = matches!(p.fs, Fs::Ext4 | Fs::Ntfs | Fs::Fat);
        assert_eq!(listed["readable"], readable, "{listed}");
    }

    for p in disk.partitions.iter().filter(|p| matches!(p.fs, Fs::Ext4 | Fs::Ntfs | Fs::Fat)) {
        let n = p.number;
        let fat = p.fs == Fs::Fat;
        let to = work.path().join(format!("got-{n}"));
        let r = files(&store, &["get", &cap.snapshot, &format!("{n}:/"), "--to", to.to_str().unwrap(), "--json"]);
        let report = json(&r);
        let expected: BTreeMap<String, String> =
            p.files.iter().map(|(k, v)| (if fat { k.to_lowercase() } else { k.clone() }, v.clone())).collect();
        let got = local_tree(&to, fat);
        assert_eq!(got, expected, "partition {n} ({:?}): get differs from the source tree\n{r}", p.fs);
        assert_eq!(report["files"], expected.len(), "{r}");

        // `ls` of every directory of the source lists exactly its entries.
        let mut dirs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in p.files.keys() {
            let comps: Vec<&str> = path.split('/').collect();
            for i in 0..comps.len() {
                let dir = comps[..i].join("/");
                let name = if fat { comps[i].to_lowercase() } else { comps[i].to_string() };
                dirs.entry(dir).or_default().insert(name);
            }
        }
        for (dir, names) in &dirs {
            let mut listed = ls_names(&store, &cap.snapshot, &format!("{n}:/{dir}"));
            if fat {
                listed = listed.into_iter().map(|s| s.to_lowercase()).collect();
            }
            if dir.is_empty() && p.fs == Fs::Ext4 {
                assert!(listed.remove("lost+found"), "{listed:?}");
            }
            if (n, "") == (stream_on.0, dir.as_str()) {
                assert!(listed.remove(&format!("{}:{STREAM}", stream_on.1)), "stream not listed: {listed:?}");
            }
            assert_eq!(&listed, names, "ls {n}:/{dir}");
        }
        std::fs::remove_dir_all(&to).unwrap();
    }

    // The stream: listed with its size after its file, and readable by name.
    let (n, name) = stream_on;
    let v = json(&files(&store, &["ls", &cap.snapshot, &format!("{n}:/{name}"), "--json"]));
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{v}");
    assert_eq!(entries[1]["name"], format!("{name}:{STREAM}"));
    assert_eq!(entries[1]["kind"], "stream");
    assert_eq!(entries[1]["size"], stream.len());
    let to = work.path().join("stream");
    files(&store, &["get", &cap.snapshot, &format!("{n}:/{name}:{STREAM}"), "--to", to.to_str().unwrap()])
        .expect_success();
    assert_eq!(std::fs::read(to.join(format!("{name}:{STREAM}"))).unwrap(), stream);
}

#[test]
fn gpt_linux_disk_files_are_listed_and_copied_as_the_source_has_them() {
    check_disk(fixtures::gpt_linux, (5, "report.txt"));
}

#[test]
fn mbr_disk_with_logical_partitions_files_are_listed_and_copied_as_the_source_has_them() {
    check_disk(fixtures::mbr_legacy, (6, "setup.log"));
}

#[test]
fn gpt_windows_disk_files_are_listed_and_copied_as_the_source_has_them() {
    check_disk(fixtures::gpt_windows, (3, "bootmgr"));
}

/// ext4 symbolic links (one pointing at itself) come out as links, never followed; modes,
/// mtimes and owners are kept; `find` matches globs; bad input gets clear errors.
#[test]
fn symlinks_metadata_find_and_errors() {
    let work = tempfile::tempdir().unwrap();
    let disk = fixtures::small_gpt(work.path());
    let root = PathBuf::from(format!("{}?offset={}", disk.path.display(), disk.partition(1).offset));
    debugfs_w(&root, "symlink /user/link docs/thesis.tex");
    debugfs_w(&root, "symlink /user/loop /user/loop");
    debugfs_w(&root, "set_inode_field /shared/notes.md mode 0100600");
    debugfs_w(&root, "set_inode_field /shared/notes.md uid 1234");
    debugfs_w(&root, "set_inode_field /shared/notes.md mtime 20200102030405");
    let store = Store::new(work.path().join("store"));
    let cap = store.capture(&disk.path, None);
    let snap = &cap.snapshot;

    let v = json(&files(&store, &["ls", snap, "1:/user", "--json"]));
    let link = v.as_array().unwrap().iter().find(|e| e["name"] == "link").unwrap_or_else(|| panic!("{v}"));
    assert_eq!((link["kind"].as_str(), link["target"].as_str()), (Some("symlink"), Some("docs/thesis.tex")));
    let text = files(&store, &["ls", snap, "1:/user"]);
    assert!(text.expect_success().stdout.contains("loop -> /user/loop"), "{text}");

    // A symlink inside a path is not followed.
    files(&store, &["ls", snap, "1:/user/loop/x"]).expect_failure_mentioning(&["not a directory"]);

    let to = work.path().join("got");
    let r = files(&store, &["get", snap, "1:/", "--to", to.to_str().unwrap(), "--json"]);
    let report = json(&r);
    assert_eq!(report["symlinks"], 2, "{r}");
    assert_eq!(std::fs::read_link(to.join("user/link")).unwrap(), Path::new("docs/thesis.tex"));
    assert_eq!(std::fs::read_link(to.join("user/loop")).unwrap(), Path::new("/user/loop"));
    let m = std::fs::metadata(to.join("shared/notes.md")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o600);
    assert_eq!(m.mtime(), 1_577_934_245, "2020-01-02T03:04:05Z");
    // Tests run as root: the owner is kept too.
    assert_eq!(m.uid(), 1234);
    // Nothing existing is overwritten.
    files(&store, &["get", snap, "1:/shared", "--to", to.to_str().unwrap()]).expect_failure_mentioning(&["exists"]);

    // find: names, whole paths, one partition or all.
    let found = files(&store, &["find", snap, "*.md"]);
    assert_eq!(found.expect_success().stdout.lines().collect::<Vec<_>>(), ["1:/shared/notes.md"], "{found}");
    let found = files(&store, &["find", snap, "1:/user/**/*.png"]);
    assert_eq!(found.expect_success().stdout.trim(), "1:/user/docs/figures/plot.png", "{found}");
    let all = json(&files(&store, &["find", snap, "/**", "--json"]));
    let expected: usize = disk.partitions.iter().map(|p| p.files.len()).sum();
    let regular = all.as_array().unwrap().iter().filter(|e| e["kind"] == "file").count();
    assert_eq!(regular, expected, "{all}");

    files(&store, &["ls", snap, "7:/"]).expect_failure_mentioning(&["no partition 7"]);
    files(&store, &["ls", snap, "1:/nope"]).expect_failure_mentioning(&["/nope", "no such file"]);
    files(&store, &["ls", snap, "1:/a/../b"]).expect_failure_mentioning(&[".."]);
    files(&store, &["find", snap, "[abc"]).expect_failure_mentioning(&["]"]);
}

/// A 200 MiB file from a snapshot on an engine: only its chunks (and a little metadata) are
/// fetched.
#[test]
fn get_of_a_large_file_from_an_engine_fetches_little_more_than_the_file() {
    let work = tempfile::tempdir().unwrap();
    let big = random_bytes(31_000, 200 << 20);
    let big_sha = sha256_hex(&big);
    let disk = build_gpt(
        work.path(),
        "big.img",
        300 * MIB,
        vec![
            PartSpec::gpt(
                260 * MIB,
                "8300",
                "root",
                Content::Ext4 {
                    label: "root",
                    block_size: 4096,
                    files: vec![
                        FileSpec::new("data/big.bin", big),
                        FileSpec::new("etc/hostname", b"big\n".to_vec()),
                        FileSpec::new("var/log/syslog", text_bytes(31_001, 3 << 20)),
                    ],
                    deleted: Vec::new(),
                },
            ),
            PartSpec::gpt(16 * MIB, "0700", "raw", Content::Raw(random_bytes(31_002, 8 << 20))),
        ],
    );
    let server = EngineServer::start(&work.path().join("engine"));
    let cap = server.capture(&disk.path, "files-host");
    std::fs::remove_file(&disk.path).unwrap();

    let to = work.path().join("got");
    let r = server.kura(&[&"files", &"get", &cap.snapshot, &"1:/data/big.bin", &"--to", &to, &"--stats"]);
    assert!(r.success(), "{r}\nengine log:\n{}", server.log());
    let (chunks, bytes) = fetched(&r);
    let size = 200u64 << 20;
    eprintln!(
        "get of a {size} byte file fetched {chunks} chunks, {bytes} bytes ({:.3}× the file)",
        bytes as f64 / size as f64
    );
    assert_eq!(sha256_file(&to.join("big.bin")), big_sha);
    assert!(bytes >= size && bytes * 10 <= size * 11, "fetched {bytes} bytes for a {size} byte file");

    // A listing fetches only metadata.
    let r = server.kura(&[&"files", &"ls", &cap.snapshot, &"1:/etc", &"--stats"]);
    assert!(r.success() && r.stdout.contains("hostname"), "{r}");
    let (_, ls_bytes) = fetched(&r);
    eprintln!("ls fetched {ls_bytes} bytes");
    assert!(ls_bytes < 8 << 20, "ls fetched {ls_bytes} bytes");
}

/// Sets an ext4 file's mtime to a fixed time (seconds and nanoseconds).
fn pin_mtime(disk: &Disk, path: &str) {
    let root = PathBuf::from(format!("{}?offset={}", disk.path.display(), disk.partition(3).offset));
    debugfs_w(&root, &format!("set_inode_field /{path} mtime @1600000000"));
    debugfs_w(&root, &format!("set_inode_field /{path} mtime_extra 0"));
}

/// The dedup test's scenario: three files rewritten in place between two captures; `diff`
/// lists exactly those, and nothing between a snapshot and itself. A fourth file rewritten
/// with its size and mtime kept is found only by `--content`.
#[test]
fn diff_lists_exactly_the_changed_files() {
    let work = tempfile::tempdir().unwrap();
    let mut disk = fixtures::gpt_linux(work.path());
    let sneaky = "home/user/notes.txt";
    pin_mtime(&disk, sneaky);
    let store = Store::new(work.path().join("store"));
    let first = store.capture(&disk.path, Some("first"));
    let changed = [
        ("usr/share/doc/kura/changelog", text_bytes(77_001, 305_000)),
        ("etc/fstab", text_bytes(77_002, 950)),
        ("usr/share/misc/deep/dir0/file0.dat", random_bytes(77_003, 3_100)),
    ];
    for (path, data) in &changed {
        ext4_replace_file(&mut disk, 3, path, data, work.path());
    }
    ext4_replace_file(&mut disk, 3, sneaky, &text_bytes(77_004, 5_000), work.path());
    pin_mtime(&disk, sneaky);
    let second = store.capture(&disk.path, Some("second"));
    // Its changed chunks are pieced (patches on the first's): the diff reads them assembled.
    assert!(second.pieced_chunks >= 1, "{second:?}");

    let r = files(&store, &["diff", &first.snapshot, &second.snapshot, "--json", "--stats"]);
    let v = json(&r);
    let mut got: Vec<(u64, String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (d["partition"].as_u64().unwrap(), d["path"].as_str().unwrap().into(), d["change"].as_str().unwrap().into())
        })
        .collect();
    got.sort();
    let mut want: Vec<(u64, String, String)> =
        changed.iter().map(|(p, _)| (3, format!("/{p}"), "changed".to_string())).collect();
    want.sort();
    assert_eq!(got, want, "{r}");
    let (_, bytes) = fetched(&r);
    eprintln!("diff fetched {bytes} bytes for {} + {} used", first.used_bytes, second.used_bytes);

    let r = files(&store, &["diff", &first.snapshot, &first.snapshot, "--content", "--json"]);
    assert_eq!(json(&r), serde_json::json!([]), "{r}");
    // Text output, limited to one directory.
    let r = files(&store, &["diff", &first.snapshot, &second.snapshot, "3:/etc"]);
    assert!(r.expect_success().stdout.trim().starts_with("M 3:/etc/fstab (size"), "{r}");
    assert_eq!(r.stdout.lines().count(), 1, "{r}");
    // --content reads the files whose metadata is equal: the rewrite that kept size and mtime.
    let r = files(&store, &["diff", &first.snapshot, &second.snapshot, "3:/home", "--content", "--stats"]);
    assert_eq!(r.expect_success().stdout.trim(), format!("M 3:/{sneaky} (content)"), "{r}");
}

/// Every entry below `root` (not `root` itself), by relative path: kind, permission bits,
/// owner, mtime to the nanosecond, and content (a file's SHA-256, a link's target).
fn tree_meta(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let t = m.file_type();
            let (kind, content) = if t.is_dir() {
                dirs.push(p.clone());
                ("dir", String::new())
            } else if t.is_symlink() {
                ("link", std::fs::read_link(&p).unwrap().display().to_string())
            } else {
                ("file", sha256_file(&p))
            };
            let mode = if t.is_symlink() { 0o777 } else { m.mode() & 0o7777 };
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let v = format!("{kind} {mode:o} {}:{} {}.{:09} {content}", m.uid(), m.gid(), m.mtime(), m.mtime_nsec());
            out.insert(rel, v);
        }
    }
    out
}

/// `touch -h -d @SECS.NANOS path`: an mtime (and atime) to the nanosecond, links not followed.
fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    kura_tests::tools::run("touch", ["-h", "-d", &format!("@{secs}.{nanos:09}"), path.to_str().unwrap()]);
}

/// Fills a mounted XFS root with a tree that takes every on-disk form: directories shortform
/// (`small`), block (`block`, 50 entries), leaf (`leaf`, 300) and node (`node`, 2000); a file
/// whose extents need a btree (`frag.bin`, 300 islands of 4 KiB with holes between); a file
/// with holes and a preallocated, unwritten range (`sparse.bin`); symbolic links with a short
/// (in the inode) and a 1000-byte (in a block) target; a 20-level deep path; modes, owners
/// and mtimes (one after 2038). `big` also makes the large directories and files.
fn populate_xfs(root: &Path, big: bool) {
    use std::os::unix::fs::FileExt;
    let dir = |d: &str| {
        std::fs::create_dir_all(root.join(d)).unwrap();
        root.join(d)
    };
    let small = dir("small");
    std::fs::write(small.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(small.join("b"), text_bytes(41_001, 5_000)).unwrap();
    let block = dir("block");
    for i in 0..50u64 {
        std::fs::write(block.join(format!("file-{i:03}.txt")), text_bytes(41_100 + i, 100 + 37 * i as usize)).unwrap();
    }
    let node = dir("node");
    let count = if big { 2000 } else { 700 };
    for i in 0..count {
        let data = if i % 97 == 0 { random_bytes(41_200 + i, 9_000) } else { Vec::new() };
        std::fs::write(node.join(format!("a-rather-long-file-name-number-{i:05}.dat")), data).unwrap();
    }
    if big {
        let leaf = dir("leaf");
        for i in 0..300u64 {
            std::fs::write(leaf.join(format!("entry-{i:04}-name")), format!("{i}\n")).unwrap();
        }
        let mut deep = String::from("deep");
        for i in 0..20 {
            deep.push_str(&format!("/d{i:02}"));
        }
        std::fs::write(dir(&deep).join("leaf.txt"), b"at the bottom\n").unwrap();
        std::fs::write(root.join("data.bin"), random_bytes(41_300, 3 << 20)).unwrap();
    }
    let frag = std::fs::File::create(root.join("frag.bin")).unwrap();
    for i in 0..300u64 {
        frag.write_at(&random_bytes(41_400 + i, 4096), i * 8192).unwrap();
        if i % 50 == 0 {
            frag.sync_all().unwrap();
        }
    }
    drop(frag);
    let sparse = root.join("sparse.bin");
    let f = std::fs::File::create(&sparse).unwrap();
    f.write_at(&random_bytes(41_500, 65_536), 0).unwrap();
    f.write_at(&random_bytes(41_501, 10_000), 3 << 20).unwrap();
    drop(f);
    // Preallocated inside the file's size: unwritten, reads as zeros.
    kura_tests::tools::run("fallocate", ["-o", "1048576", "-l", "1048576", sparse.to_str().unwrap()]);
    std::os::unix::fs::symlink("small/a.txt", root.join("short-link")).unwrap();
    let long: String = (0..200).map(|i| format!("dir{i:05}/")).collect::<String>()[..1000].to_string();
    std::os::unix::fs::symlink(&long, root.join("long-link")).unwrap();
    kura_tests::tools::run("sync", Vec::<&str>::new());

    std::fs::set_permissions(small.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(small.join("a.txt"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(block.join("file-007.txt"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    set_mtime(&small.join("a.txt"), 1_600_000_000, 123_456_789);
    // After 2038 (bigtime) or before 1970.
    set_mtime(&small.join("b"), if big { 4_102_444_800 } else { -86_400 }, 5);
    set_mtime(&root.join("short-link"), 1_500_000_000, 42);
    set_mtime(&small, 1_400_000_000, 7);
}

/// `xfs_db -r -c "inode N" -c "p FIELD"` of an image.
fn inode_field(img: &Path, ino: u64, field: &str) -> String {
    let out = kura_tests::tools::run(
        "xfs_db",
        ["-r", "-c", &format!("inode {ino}"), "-c", &format!("p {field}"), img.to_str().unwrap()],
    );
    out.trim().strip_prefix(&format!("{field} = ")).unwrap_or_else(|| panic!("{out}")).to_string()
}

/// The logical block offsets of the mappings of an inode's data fork (`xfs_db bmap`).
fn fork_offsets(img: &Path, ino: u64) -> Vec<u64> {
    let out =
        kura_tests::tools::run("xfs_db", ["-r", "-c", &format!("inode {ino}"), "-c", "bmap", img.to_str().unwrap()]);
    out.lines().filter_map(|l| l.strip_prefix("data offset ")?.split_whitespace().next()?.parse().ok()).collect()
}

/// XFS as mkfs.xfs makes it by default (v5, bigtime), and with large extent counts, 16 KiB
/// directory blocks and classic timestamps: `get` of the root gives exactly the source tree
/// (contents, link targets, modes, owners, mtimes), `ls` of every directory lists exactly
/// its entries, `find` matches; a corrupted inode (in a copy) gives an error naming it.
#[test]
fn xfs_files_are_listed_and_copied_as_the_source_has_them() {
    let work = tempfile::tempdir().unwrap();
    let size = 320 * MIB;
    let inos = |root: &Path| -> BTreeMap<&'static str, u64> {
        let ino = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().ino();
        let mut m: BTreeMap<&'static str, u64> =
            [("small", ino("small")), ("block", ino("block")), ("node", ino("node")), ("frag", ino("frag.bin"))]
                .into_iter()
                .chain([("victim", ino("block/file-007.txt")), ("long", ino("long-link"))])
                .collect();
        if root.join("leaf").exists() {
            m.insert("leaf", ino("leaf"));
        }
        m
    };
    let mut trees = Vec::new();
    let mut numbers = Vec::new();
    let mut images = Vec::new();
    for (n, args) in [(1, vec!["-L", "kuraxfs"]), (2, vec!["-i", "nrext64=1", "-n", "size=16384", "-m", "bigtime=0"])] {
        let img = work.path().join(format!("xfs{n}.img"));
        let mut meta = BTreeMap::new();
        let mut ino = BTreeMap::new();
        kura_tests::lvm::xfs_image(&img, size, &args, |root| {
            populate_xfs(root, n == 1);
            meta = tree_meta(root);
            ino = inos(root);
        });
        // The forms the tree was made to take.
        assert_eq!(inode_field(&img, ino["small"], "core.format"), "1 (local)");
        assert_eq!(inode_field(&img, ino["block"], "core.format"), "2 (extents)");
        assert_eq!(inode_field(&img, ino["frag"], "core.format"), "3 (btree)");
        assert_eq!(inode_field(&img, ino["long"], "core.format"), "2 (extents)");
        if n == 1 {
            // Directory forms by their fork's mappings (4 KiB blocks): one block; data blocks
            // and one leaf block at 32 GiB; and a free-index block at 64 GiB (node form).
            let (leaf_at, free_at) = (8_388_608, 16_777_216);
            assert_eq!(fork_offsets(&img, ino["block"]), [0], "block form");
            let leaf = fork_offsets(&img, ino["leaf"]);
            assert!(leaf.contains(&leaf_at) && leaf.iter().all(|&o| o < free_at), "leaf form: {leaf:?}");
            let node = fork_offsets(&img, ino["node"]);
            assert!(node.contains(&free_at), "node form: {node:?}");
        }
        eprintln!("partition {n}: {} entries, inodes {ino:?}", meta.len());
        trees.push(meta);
        numbers.push(ino);
        images.push(img);
    }
    // Partition 3: a copy of partition 1 with one file's inode corrupted.
    let bad = work.path().join("xfs3.img");
    std::fs::copy(&images[0], &bad).unwrap();
    let victim = numbers[0]["victim"];
    let out =
        kura_tests::tools::run("xfs_db", ["-r", "-c", &format!("convert inode {victim} byte"), bad.to_str().unwrap()]);
    let at: u64 = out.split(['(', ')']).nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    write_at(&bad, at + 56, &[0xFF; 8]);
    // Two inodes made inconsistent with their checksums kept right (xfs_db rewrites them): an
    // extent count far beyond the btree's, a shortform directory larger than its fork.
    let (frag, small) = (numbers[0]["frag"], numbers[0]["small"]);
    for (ino, field) in [(frag, "core.nextents 100000"), (small, "core.size 4000")] {
        let cmd = ["-x", "-c", &format!("inode {ino}"), "-c", &format!("write {field}"), bad.to_str().unwrap()];
        kura_tests::tools::run("xfs_db", cmd);
    }
    images.push(bad);

    let parts = images
        .into_iter()
        .map(|path| PartSpec::gpt(size, "8300", "xfs", Content::Image { fs: Fs::Raw, path }))
        .collect();
    let disk = build_gpt(work.path(), "xfs-disk.img", 3 * size + 10 * MIB, parts);
    let store = Store::new(work.path().join("store"));
    let cap = store.capture(&disk.path, None);
    std::fs::remove_file(&disk.path).unwrap();
    let snap = &cap.snapshot;
    let parts = json(&files(&store, &["ls", snap, "--json"]));
    for p in parts.as_array().unwrap() {
        assert_eq!((p["fs"].as_str(), p["readable"].as_bool()), (Some("xfs"), Some(true)), "{parts}");
    }

    for (i, tree) in trees.iter().enumerate() {
        let n = i + 1;
        let to = work.path().join(format!("got-{n}"));
        let started = std::time::Instant::now();
        let r = files(&store, &["get", snap, &format!("{n}:/"), "--to", to.to_str().unwrap(), "--json", "--stats"]);
        let report = json(&r);
        eprintln!("get of partition {n} took {:?}", started.elapsed());
        let got = tree_meta(&to);
        for (path, want) in tree {
            assert_eq!(got.get(path), Some(want), "partition {n}: {path}\n{r}");
        }
        assert_eq!(
            got.len(),
            tree.len(),
            "partition {n}: extra entries {:?}",
            got.keys().filter(|k| !tree.contains_key(*k)).collect::<Vec<_>>()
        );
        assert_eq!(report["symlinks"], 2, "{r}");

        // `ls` of every directory lists exactly its entries.
        let mut dirs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        dirs.insert(String::new(), BTreeSet::new());
        for path in tree.keys() {
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            dirs.entry(parent.to_string()).or_default().insert(name.to_string());
        }
        for (dir, names) in &dirs {
            if tree.get(dir).is_some_and(|v| !v.starts_with("dir")) {
                continue;
            }
            assert_eq!(&ls_names(&store, snap, &format!("{n}:/{dir}")), names, "ls {n}:/{dir}");
        }
        std::fs::remove_dir_all(&to).unwrap();
    }
    // One entry: kind, target, owner and the mtime after 2038.
    let v = json(&files(&store, &["ls", snap, "1:/long-link", "--json"]));
    assert_eq!(v[0]["target"].as_str().map(str::len), Some(1000), "{v}");
    let v = json(&files(&store, &["ls", snap, "1:/small", "--json"]));
    let a = v.as_array().unwrap().iter().find(|e| e["name"] == "a.txt").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        (a["mode"].as_u64(), a["uid"].as_u64(), a["gid"].as_u64()),
        (Some(0o640), Some(1234), Some(5678)),
        "{v}"
    );

    let found = files(&store, &["find", snap, "1:/node/*-0199?.dat"]);
    let want: Vec<String> =
        (1990..2000).map(|i| format!("1:/node/a-rather-long-file-name-number-{i:05}.dat")).collect();
    assert_eq!(found.expect_success().stdout.lines().collect::<Vec<_>>(), want, "{found}");
    let found = files(&store, &["find", snap, "2:/**/*.txt"]);
    assert_eq!(found.expect_success().stdout.lines().count(), 51, "{found}");

    // The corrupted inode: an error naming it, in `ls` of its directory and `get` of it; the
    // rest of the filesystem still reads.
    let inode = format!("inode {victim}");
    files(&store, &["ls", snap, "3:/block"]).expect_failure_mentioning(&[&inode, "checksum"]);
    let to = work.path().join("got-bad");
    files(&store, &["get", snap, "3:/block/file-007.txt", "--to", to.to_str().unwrap()])
        .expect_failure_mentioning(&[&inode]);
    let to = work.path().join("got-frag");
    files(&store, &["get", snap, "3:/frag.bin", "--to", to.to_str().unwrap()])
        .expect_failure_mentioning(&[&format!("inode {frag}"), "extents"]);
    files(&store, &["ls", snap, "3:/small"]).expect_failure_mentioning(&[&format!("inode {small}"), "4000"]);
    assert_eq!(ls_names(&store, snap, "3:/deep"), BTreeSet::from(["d00".to_string()]));
    files(&store, &["ls", snap, "1:/nope"]).expect_failure_mentioning(&["/nope", "no such file"]);
    files(&store, &["ls", snap, "1:/short-link/x"]).expect_failure_mentioning(&["not a directory"]);
}

/// A v4 XFS (no CRCs, no ftype in directory entries), which the kernel no longer mounts:
/// filled by `mkfs.xfs -p PROTOFILE`. Shortform, block and leaf directories, files, a
/// symbolic link in a block (no header on v4), an owner and mode, all read as written.
#[test]
fn xfs_v4_without_ftype_is_read() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    let mut file = |rel: &str, data: Vec<u8>| -> String {
        let p = src.join(rel.replace('/', "_"));
        std::fs::write(&p, &data).unwrap();
        expected.insert(rel.to_string(), sha256_hex(&data));
        p.display().to_string()
    };
    let long = "x/".repeat(500);
    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\nsmall d--755 0 0\n");
    proto += &format!("a.txt ---640 1234 5678 {}\n$\n", file("small/a.txt", b"alpha\n".to_vec()));
    proto += "block d--755 0 0\n";
    for i in 0..50u64 {
        let name = format!("file-{i:03}.txt");
        proto += &format!("{name} ---644 0 0 {}\n", file(&format!("block/{name}"), text_bytes(42_000 + i, 300)));
    }
    proto += "$\nleaf d--755 0 0\n";
    for i in 0..300u64 {
        let name = format!("entry-{i:04}-name");
        proto += &format!("{name} ---644 0 0 {}\n", file(&format!("leaf/{name}"), format!("{i}\n").into_bytes()));
    }
    proto += &format!("$\ndata.bin ---644 0 0 {}\n", file("data.bin", random_bytes(42_500, 700_000)));
    proto += &format!("long l--777 0 0 {long}\nshort l--777 0 0 small/a.txt\n$\n");
    let proto_path = work.path().join("proto");
    std::fs::write(&proto_path, proto).unwrap();
    let img = work.path().join("v4.img");
    std::fs::File::create(&img).unwrap().set_len(320 * MIB).unwrap();
    let (img_s, proto_s) = (img.to_str().unwrap(), proto_path.to_str().unwrap());
    kura_tests::tools::run("mkfs.xfs", ["-q", "-f", "-m", "crc=0", "-n", "ftype=0", "-p", proto_s, img_s]);
    let sb = kura_tests::tools::run("xfs_db", ["-r", "-c", "sb 0", "-c", "p versionnum", img_s]);
    assert!(sb.trim().ends_with('4'), "not a v4 superblock: {sb}");

    let disk = build_gpt(
        work.path(),
        "v4-disk.img",
        330 * MIB,
        vec![PartSpec::gpt(320 * MIB, "8300", "root", Content::Image { fs: Fs::Raw, path: img })],
    );
    let store = Store::new(work.path().join("store"));
    let cap = store.capture(&disk.path, None);
    std::fs::remove_file(&disk.path).unwrap();
    let snap = &cap.snapshot;
    let to = work.path().join("got");
    let r = files(&store, &["get", snap, "1:/", "--to", to.to_str().unwrap(), "--json"]);
    assert_eq!(json(&r)["symlinks"], 2, "{r}");
    assert_eq!(local_tree(&to, false), expected, "{r}");
    assert_eq!(std::fs::read_link(to.join("long")).unwrap(), Path::new(&long));
    assert_eq!(std::fs::read_link(to.join("short")).unwrap(), Path::new("small/a.txt"));
    let m = std::fs::metadata(to.join("small/a.txt")).unwrap();
    assert_eq!((m.permissions().mode() & 0o7777, m.uid(), m.gid()), (0o640, 1234, 5678));
    for dir in ["block", "leaf"] {
        let want: BTreeSet<String> =
            expected.keys().filter_map(|k| k.strip_prefix(&format!("{dir}/")).map(str::to_string)).collect();
        assert_eq!(ls_names(&store, snap, &format!("1:/{dir}")), want, "ls 1:/{dir}");
    }
}

// --- btrfs ---------------------------------------------------------------------------------

/// A loop mount of a filesystem image, unmounted on drop.
struct LoopMount(PathBuf);

impl LoopMount {
    fn new(img: &Path, dir: &Path, options: &str) -> LoopMount {
        std::fs::create_dir_all(dir).unwrap();
        let opts = if options.is_empty() { "loop".to_string() } else { format!("loop,{options}") };
        kura_tests::tools::run("mount", ["-o", &opts, img.to_str().unwrap(), dir.to_str().unwrap()]);
        LoopMount(dir.to_path_buf())
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = kura_tests::tools::run_unchecked("umount", [&self.0]);
    }
}

/// What a tree holds, path by path (relative, the root left out): kind, mode, owner, mtime
/// (`None` for the empty directory a subvolume shows inside a snapshot: the kernel gives it
/// the time of the lookup), and a file's sha256 or a link's target.
type TreeMeta = BTreeMap<String, (char, u32, u32, u32, Option<(i64, i64)>, String)>;

fn btrfs_tree_meta(root: &Path) -> TreeMeta {
    let mut out = TreeMeta::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let t = m.file_type();
            let (kind, what) = if t.is_dir() {
                dirs.push(p.clone());
                ('d', String::new())
            } else if t.is_file() {
                ('f', sha256_file(&p))
            } else if t.is_symlink() {
                ('l', std::fs::read_link(&p).unwrap().to_str().unwrap().to_string())
            } else {
                ('s', String::new())
            };
            let mtime = (!(t.is_dir() && m.ino() == 2)).then(|| (m.mtime(), m.mtime_nsec()));
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            out.insert(rel, (kind, m.mode() & 0o7777, m.uid(), m.gid(), mtime, what));
        }
    }
    out
}

/// Fills the `@` subvolume as a SUSE root would be: compressed files (zstd by mount option,
/// zlib by property), inline, sparse and preallocated files, a directory of 2000 entries,
/// symbolic links, modes, owners and mtimes.
fn fill_btrfs_root(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    };
    let sh = |cmd: &str| kura_tests::tools::run("sh", ["-c", cmd]);
    w("etc/hostname", b"suse-test\n");
    w("etc/fstab", &text_bytes(41_001, 700));
    w("usr/share/doc/changelog", &text_bytes(41_002, 700 << 10));
    w("var/lib/random.bin", &random_bytes(41_003, 300 << 10));
    std::fs::create_dir_all(root.join("var/log")).unwrap();
    kura_tests::tools::run("btrfs", ["property", "set", root.join("var/log").to_str().unwrap(), "compression", "zlib"]);
    w("var/log/messages", &text_bytes(41_004, 900 << 10));
    w("var/log/boot.log", &text_bytes(41_005, 3_000));
    let r = root.display();
    // Sparse: data, a hole, data, a hole to the end.
    sh(&format!("printf start > {r}/var/lib/sparse.img && printf middle | dd of={r}/var/lib/sparse.img bs=1 seek=3000000 conv=notrunc status=none && truncate -s 8M {r}/var/lib/sparse.img"));
    // Preallocated: 2 MiB allocated, 64 KiB written in the middle, 1 MiB more kept past the end.
    sh(&format!("fallocate -l 2M {r}/var/lib/prealloc.bin && dd if=/dev/urandom of={r}/var/lib/prealloc.bin bs=64K seek=8 count=1 conv=notrunc status=none && fallocate -n -o 2M -l 1M {r}/var/lib/prealloc.bin"));
    for i in 0..2000 {
        w(&format!("usr/lib/many/entry-{i:04}.conf"), format!("value {i}\n").as_bytes());
    }
    std::os::unix::fs::symlink("../usr/share/doc/changelog", root.join("etc/changelog")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at/all", root.join("etc/dangling")).unwrap();
    sh(&format!("chmod 600 {r}/etc/fstab && chown 1000:100 {r}/etc/fstab && chmod 4755 {r}/var/lib/random.bin"));
    sh(&format!("touch -h -d '2021-03-04 05:06:07.123456789Z' {r}/etc/changelog {r}/etc/fstab {r}/var/log/messages"));
    sh(&format!("touch -d '2019-12-31 23:59:59Z' {r}/usr/lib/many {r}/etc"));
}

/// btrfs as SUSE lays it out: subvolumes `@`, `@/home`, `@/.snapshots` with a read-only
/// snapshot of `@`, the default subvolume set to `@`. `get` of the root equals the tree a
/// mount of the default subvolume shows (contents, links, modes, owners, mtimes); `ls` lists
/// the mount's names, subvolumes as directories; with the default set to the snapshot (as
/// SUSE does), the root is the snapshot; a corrupted tree block gives a checksum error.
#[test]
fn btrfs_default_subvolume_is_read_as_the_kernel_mounts_it() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("btrfs.img");
    std::fs::File::create(&img).unwrap().set_len(300 * MIB).unwrap();
    kura_tests::tools::run("mkfs.btrfs", ["-q", "-f", "-L", "suse", img.to_str().unwrap()]);
    let top = work.path().join("top");
    let snapshot_id;
    {
        let m = LoopMount::new(&img, &top, "subvolid=5,compress=zstd");
        let sub =
            |p: &str| kura_tests::tools::run("btrfs", ["-q", "subvolume", "create", top.join(p).to_str().unwrap()]);
        sub("@");
        sub("@/home");
        sub("@/.snapshots");
        std::fs::write(top.join("not-in-default.txt"), b"top level\n").unwrap();
        fill_btrfs_root(&top.join("@"));
        std::fs::create_dir_all(top.join("@/home/user")).unwrap();
        std::fs::write(top.join("@/home/user/notes.txt"), text_bytes(41_010, 200 << 10)).unwrap();
        std::fs::create_dir(top.join("@/.snapshots/1")).unwrap();
        let snap = top.join("@/.snapshots/1/snapshot");
        let src = top.join("@");
        kura_tests::tools::run(
            "btrfs",
            ["-q", "subvolume", "snapshot", "-r", src.to_str().unwrap(), snap.to_str().unwrap()],
        );
        let id = kura_tests::tools::run("btrfs", ["inspect-internal", "rootid", snap.to_str().unwrap()]);
        snapshot_id = id.trim().to_string();
        kura_tests::tools::run("btrfs", ["subvolume", "set-default", src.to_str().unwrap()]);
        drop(m);
    }
    // The extents the test is about are there.
    let dump = kura_tests::tools::run("btrfs", ["inspect-internal", "dump-tree", img.to_str().unwrap()]);
    for what in ["compression 1 (zlib)", "compression 3 (zstd)", "prealloc data", "inline extent data"] {
        assert!(dump.contains(what), "no {what:?} extent in the filesystem");
    }
    let expected = {
        let _m = LoopMount::new(&img, &work.path().join("default"), "ro");
        btrfs_tree_meta(&work.path().join("default"))
    };
    assert!(expected.contains_key("home/user/notes.txt") && expected.contains_key(".snapshots/1/snapshot/etc/fstab"));
    assert!(!expected.contains_key("not-in-default.txt"));
    assert_eq!(expected[".snapshots/1/snapshot/home"].4, None, "a subvolume inside a snapshot is an empty directory");

    let disk = build_gpt(
        work.path(),
        "btrfs-disk.img",
        310 * MIB,
        vec![PartSpec::gpt(300 * MIB, "8300", "root", Content::Image { fs: Fs::Raw, path: img.clone() })],
    );
    let store = Store::new(work.path().join("store"));
    let cap = store.capture(&disk.path, Some("btrfs"));
    let parts = json(&files(&store, &["ls", &cap.snapshot, "--json"]));
    assert_eq!((parts[0]["fs"].as_str(), parts[0]["readable"].as_bool()), (Some("btrfs"), Some(true)), "{parts}");

    let to = work.path().join("got");
    let started = std::time::Instant::now();
    let r = files(&store, &["get", &cap.snapshot, "1:/", "--to", to.to_str().unwrap(), "--json"]);
    let report = json(&r);
    eprintln!("get of {} entries took {:?}", expected.len(), started.elapsed());
    let mut got = btrfs_tree_meta(&to);
    for (path, meta) in got.iter_mut() {
        if expected.get(path).is_some_and(|e| e.4.is_none()) {
            meta.4 = None;
        }
    }
    let differ: Vec<_> = expected
        .keys()
        .chain(got.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| expected.get(*k) != got.get(*k))
        .map(|k| format!("{k}: mount {:?}, kura {:?}", expected.get(k), got.get(k)))
        .collect();
    assert!(differ.is_empty(), "get differs from the mount:\n{}\n{r}", differ.join("\n"));
    assert_eq!(report["symlinks"], 4, "two links, and their copies in the snapshot: {r}");
    std::fs::remove_dir_all(&to).unwrap();

    // ls: the names of the mount, subvolumes as directories, in every directory checked.
    let names = |dir: &str| -> BTreeSet<String> {
        std::fs::read_dir(work.path().join("default-again").join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    {
        let _m = LoopMount::new(&img, &work.path().join("default-again"), "ro");
        for dir in ["", "usr/lib/many", "home", ".snapshots/1/snapshot", ".snapshots/1/snapshot/home", "etc"] {
            assert_eq!(ls_names(&store, &cap.snapshot, &format!("1:/{dir}")), names(dir), "ls /{dir}");
        }
    }
    let v = json(&files(&store, &["ls", &cap.snapshot, "1:/", "--json"]));
    let kind = |n: &str| v.as_array().unwrap().iter().find(|e| e["name"] == n).map(|e| e["kind"].clone());
    assert_eq!((kind("home"), kind(".snapshots")), (Some("dir".into()), Some("dir".into())), "{v}");
    let found = files(&store, &["find", &cap.snapshot, "1:/usr/lib/many/entry-19*"]);
    assert_eq!(found.expect_success().stdout.lines().count(), 100, "{found}");

    // SUSE's default: the snapshot. The root is then the snapshot's tree.
    {
        let _m = LoopMount::new(&img, &top, "subvolid=5");
        kura_tests::tools::run("btrfs", ["subvolume", "set-default", &snapshot_id, top.to_str().unwrap()]);
    }
    std::fs::remove_file(&disk.path).unwrap();
    let disk = build_gpt(
        work.path(),
        "btrfs-disk.img",
        310 * MIB,
        vec![PartSpec::gpt(300 * MIB, "8300", "root", Content::Image { fs: Fs::Raw, path: img.clone() })],
    );
    let cap2 = store.capture(&disk.path, Some("btrfs-snapshot-default"));
    let want: BTreeSet<String> = expected
        .keys()
        .filter_map(|k| k.strip_prefix(".snapshots/1/snapshot/"))
        .filter(|k| !k.contains('/'))
        .map(String::from)
        .collect();
    assert_eq!(ls_names(&store, &cap2.snapshot, "1:/"), want);
    let to = work.path().join("fstab");
    files(&store, &["get", &cap2.snapshot, "1:/etc/fstab", "--to", to.to_str().unwrap()]).expect_success();
    assert_eq!(sha256_file(&to.join("fstab")), expected["etc/fstab"].5);

    // A corrupted tree block: every block of the `@` subvolume's tree (owner 256) gets a byte
    // changed in a copy of the disk.
    let (offset, size) = (disk.partition(1).offset, disk.partition(1).size);
    let clean = std::fs::read(&disk.path).unwrap();
    std::fs::remove_file(&disk.path).unwrap();
    let mut raw = clean.clone();
    let fsid = raw[(offset + 0x10020) as usize..(offset + 0x10030) as usize].to_vec();
    let nodesize = u32::from_le_bytes(raw[(offset + 0x10094) as usize..][..4].try_into().unwrap()) as usize;
    let mut corrupted = 0;
    for at in (offset as usize..(offset + size) as usize).step_by(nodesize) {
        let b = &mut raw[at..at + nodesize];
        if b[32..48] == fsid[..] && u64::from_le_bytes(b[88..96].try_into().unwrap()) == 256 {
            b[nodesize - 1] ^= 0x5a;
            corrupted += 1;
        }
    }
    assert!(corrupted > 0);
    let bad = work.path().join("corrupt.img");
    std::fs::write(&bad, &raw).unwrap();
    drop(raw);
    let cap3 = store.capture(&bad, Some("btrfs-corrupt"));
    std::fs::remove_file(&bad).unwrap();
    // The snapshot's own root block is intact; `@`'s tree (reached through `ls` of the top
    // of the old default's parent) is not: its files cannot be read.
    let r = files(&store, &["get", &cap3.snapshot, "1:/etc/fstab", "--to", work.path().join("bad").to_str().unwrap()]);
    r.expect_failure_mentioning(&["/etc/fstab", "checksum mismatch", "corrupt metadata"]);

    // Garbage with valid checksums: bytes of the subvolumes' tree blocks changed and the
    // checksums recomputed. Reading gives the files or clear errors: never a panic or a hang.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..6 {
        let mut raw = clean.clone();
        for at in (offset as usize..(offset + size) as usize).step_by(nodesize) {
            let b = &mut raw[at..at + nodesize];
            let owner = u64::from_le_bytes(b[88..96].try_into().unwrap());
            if b[32..48] == fsid[..] && (256..=300).contains(&owner) && next() % 3 == 0 {
                // Odd rounds: only the back half, where a leaf keeps its items' data.
                let lo = if round % 2 == 0 { 96 } else { nodesize / 2 };
                for _ in 0..1 + next() % 4 {
                    let i = lo + (next() % (nodesize - lo) as u64) as usize;
                    b[i] = next() as u8;
                }
                let crc = !crc32c_raw(!0, &b[32..]);
                b[..4].copy_from_slice(&crc.to_le_bytes());
            }
        }
        std::fs::write(&bad, &raw).unwrap();
        let cap = store.capture(&bad, Some("btrfs-garbage"));
        std::fs::remove_file(&bad).unwrap();
        let to = work.path().join(format!("garbage-{round}"));
        for args in
            [vec!["get", "1:/", "--to", to.to_str().unwrap()], vec!["find", "1:/**"], vec!["ls", "1:/usr/lib/many"]]
        {
            let mut a = args.clone();
            a.insert(1, &cap.snapshot);
            let r = files(&store, &a);
            assert!(
                r.status.code() == Some(0) || (r.status.code() == Some(1) && r.stderr.contains("error:")),
                "round {round}: {r}"
            );
            eprintln!(
                "round {round}: {} -> {}",
                args[0],
                r.stderr.lines().find(|l| l.starts_with("error:")).unwrap_or("ok")
            );
        }
    }
}

/// CRC-32C without the final inversion (`!crc32c_raw(!0, b)` is the standard one).
fn crc32c_raw(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    crc
}
