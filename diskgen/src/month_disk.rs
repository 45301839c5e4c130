//! The "month of changes" disk that `kura bench --month` measures incrementals on: a realistic
//! base disk and the same disk a month later.
//!
//! Base: GPT with an ext4 root (~75 %) and an NTFS data volume (~25 %), each image filled with
//! junk (pseudo-random and old log text) *before* its mkfs, so free space holds deleted-looking
//! data a capture must not store. The ext4 root (`mkfs.ext4 -d`, 4 KiB blocks, inode tables
//! written) holds real files of this machine's `/usr`, database-like files of 8 KiB pages
//! (rows of text and numbers, a header with the page number and LSN, free space zeroed; they
//! compress about 3×), rotated logs, preallocated journal files (text, then a reserved tail, as
//! systemd-journald keeps them) and incompressible media. The NTFS volume holds a pack of
//! system files, media and a log.
//!
//! The month, on copies of the images (no mounts): scattered 8 KiB page rewrites in the
//! database files, clustered in a few hot regions, written in place at the pages' physical
//! blocks (from `debugfs blocks`), as a database does; log lines appended in place into the
//! journals' reserved tails; about 3 % of the other files replaced by `debugfs -w` (rm + write;
//! half "upgraded" with bytes changed throughout, half edited in one place); a few new files;
//! some deleted; and on NTFS one document edited in place (`ntfscp` over itself) and a new file.

use crate::bulk::{generate_files, regular_files, write_random, write_text, SystemFiles};
use crate::content::{log_text, XorShift};
use crate::disk::{build_gpt_zero_gaps, Content, Fs, PartSpec};
use crate::image::{self, format_ext4, format_ntfs, fsck_ext4, ntfs_copy_in, sync_file, Ext4};
use crate::tools::{self, run, run_output};
use crate::MIB;
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const KIB: u64 = 1 << 10;
/// The smallest disk the layout makes sense for.
pub const MIN_SIZE: u64 = 512 * MIB;
/// A database page.
pub const PAGE: u64 = 8 * KIB;
/// The ext4 block size (fixed, so page and journal offsets map to whole blocks).
pub const EXT4_BLOCK: u64 = 4 * KIB;
const SEED: u64 = 0x6d6f_6e74_686c_7921;

/// One partition of the month disk.
pub struct MonthPart {
    pub number: u32,
    pub fs: Fs,
    /// Byte offset on the disk.
    pub start: u64,
    pub size: u64,
}

/// What the scripted month changed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MonthChanges {
    pub db_files: usize,
    pub db_bytes: u64,
    /// Distinct 8 KiB pages rewritten in place.
    pub db_pages_rewritten: u64,
    pub journal_files: usize,
    /// Log text appended in place into the journals.
    pub log_bytes_appended: u64,
    /// ext4 files replaced by `debugfs` rm + write (upgraded or edited), and their new bytes.
    pub files_replaced: usize,
    pub replaced_bytes: u64,
    pub files_added: usize,
    pub added_bytes: u64,
    pub files_deleted: usize,
    /// Bytes of the NTFS document edited in place, and of the new NTFS file.
    pub ntfs_edited_bytes: u64,
    pub ntfs_new_bytes: u64,
}

/// The base disk and its month-later copy.
pub struct MonthDisk {
    pub path: PathBuf,
    pub month_path: PathBuf,
    pub parts: Vec<MonthPart>,
    /// Regular files on the ext4 root of the base disk.
    pub ext4_files: usize,
    pub changes: MonthChanges,
}

/// Builds the base disk of `size` bytes (whole MiB, at least [`MIN_SIZE`]) in `work` as
/// `disk.img` and the month-later copy as `disk.month.img`, both synced; the partition images
/// made on the way are removed. `say` hears what is being done.
pub fn build(work: &Path, size: u64, say: &dyn Fn(&str)) -> Result<MonthDisk> {
    ensure!(
        size >= MIN_SIZE && size.is_multiple_of(MIB),
        "the month disk must be whole MiB, at least {} MiB",
        MIN_SIZE / MIB
    );
    let usable = size - 2 * MIB;
    let p1 = (MIB, usable * 3 / 4 / MIB * MIB);
    let p2 = (p1.0 + p1.1, usable - p1.1);
    let mut rng = XorShift::new(SEED);
    let mut sys = SystemFiles::new();
    let mut ch = MonthChanges::default();

    // ext4: half of it used: 40 % system files, 30 % databases, 10 % rotated logs, 6 %
    // journals, 10 % media.
    say("  ext4: system files, databases, logs, media");
    let src = work.join("ext4-src");
    let budget = p1.1 / 2;
    sys.copy_into(&src, budget * 40 / 100)?;
    let db_dir = src.join("var/lib/db");
    fs::create_dir_all(&db_dir)?;
    let mut db_names = Vec::new();
    let mut left = budget * 30 / 100 / PAGE * PAGE;
    for (i, want) in [256 * MIB, 128 * MIB, 64 * MIB].iter().cycle().enumerate() {
        let len = (*want).min(left);
        if len < 8 * MIB {
            break;
        }
        let name = format!("var/lib/db/base{i:02}.db");
        write_db_file(&src.join(&name), len / PAGE, &mut rng)?;
        db_names.push((name, len / PAGE));
        left -= len;
    }
    ch.db_files = db_names.len();
    ch.db_bytes = db_names.iter().map(|(_, p)| p * PAGE).sum();
    generate_files(&src.join("var/log/old"), budget / 10, &[64 * KIB, MIB, 8 * MIB], &mut rng, false)?;
    let jdir = src.join("var/log/journal");
    fs::create_dir_all(&jdir)?;
    let jlen = (budget * 6 / 100 / 4 / EXT4_BLOCK * EXT4_BLOCK).max(EXT4_BLOCK * 16);
    let jfill = jlen * 4 / 10 / EXT4_BLOCK * EXT4_BLOCK;
    let mut journals = Vec::new();
    for i in 0..4 {
        let name = format!("var/log/journal/system{i}.journal");
        write_journal(&src.join(&name), jlen, jfill, &mut rng)?;
        journals.push(name);
    }
    ch.journal_files = journals.len();
    generate_files(&src.join("home/media"), budget / 10, &[256 * KIB, 4 * MIB, 32 * MIB], &mut rng, true)?;
    let files = regular_files(&src)?;

    let ext4_img = work.join("p1.img");
    say("  ext4: junk, then mkfs.ext4 -d");
    write_junk(&ext4_img, p1.1, &mut rng)?;
    format_ext4(&ext4_img, Ext4 { label: "kura-root", block_size: Some(EXT4_BLOCK as u32), eager_init: true }, &src)?;

    // NTFS: junk, then a pack of further system files, media and a log (~46 % of it).
    say("  ntfs: junk, mkntfs, ntfscp");
    let ntfs_img = work.join("p2.img");
    write_junk(&ntfs_img, p2.1, &mut rng)?;
    format_ntfs(&ntfs_img, "kura-data", p2.0)?;
    let nsrc = work.join("ntfs-src");
    fs::create_dir_all(&nsrc)?;
    let nbudget = p2.1 * 46 / 100;
    sys.pack_into(&nsrc.join("documents.pack"), nbudget * 4 / 10)?;
    write_random(&nsrc.join("media.bin"), nbudget * 3 / 10, &mut rng)?;
    write_text(&nsrc.join("archive.log"), nbudget * 3 / 10, &mut rng)?;
    for name in ["documents.pack", "media.bin", "archive.log"] {
        ntfs_copy_in(&ntfs_img, &nsrc.join(name), name)?;
    }

    say("  disk: sgdisk, partition images placed");
    let parts = vec![
        PartSpec::gpt(p1.1, "8300", "kura-root", Content::Image { fs: Fs::Ext4, path: ext4_img.clone() }),
        PartSpec::gpt(p2.1, "0700", "kura-data", Content::Image { fs: Fs::Ntfs, path: ntfs_img.clone() }),
    ];
    let disk = build_gpt_zero_gaps(work, "disk.img", size, parts)?;
    for (p, want) in disk.partitions.iter().zip([p1, p2]) {
        ensure!((p.offset, p.size) == want, "sgdisk placed partition {} at {:?}", p.number, (p.offset, p.size));
    }

    // The month, on copies of the partition images.
    say("  month: database pages, journal appends, files replaced, added, deleted");
    let ext4_mod = work.join("p1.month.img");
    fs::copy(&ext4_img, &ext4_mod)?;
    let f = OpenOptions::new().write(true).open(&ext4_mod)?;
    for (name, pages) in &db_names {
        let blocks = file_blocks(&ext4_mod, name)?;
        ensure!(blocks.len() as u64 == pages * PAGE / EXT4_BLOCK, "{name}: {} blocks", blocks.len());
        ch.db_pages_rewritten += rewrite_pages(&f, &blocks, *pages, &mut rng)?;
    }
    for name in &journals {
        let blocks = file_blocks(&ext4_mod, name)?;
        let add = (jlen - jfill) / 2;
        let text = log_text(add, &mut rng);
        write_logical(&f, &blocks, jfill, text.as_bytes())?;
        ch.log_bytes_appended += add;
    }
    f.sync_all()?;
    drop(f);

    let mod_dir = work.join("month-files");
    fs::create_dir_all(&mod_dir)?;
    let mut script = String::new();
    let fixed: BTreeSet<&str> =
        db_names.iter().map(|(n, _)| n.as_str()).chain(journals.iter().map(|n| n.as_str())).collect();
    for (i, rel) in files.iter().enumerate() {
        let Some(rel_s) = rel.to_str() else { continue };
        if fixed.contains(rel_s) || rel_s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
            continue;
        }
        let (Some(parent), Some(name)) =
            (rel.parent().and_then(|p| p.to_str()), rel.file_name().and_then(|n| n.to_str()))
        else {
            continue;
        };
        if i % 33 == 7 {
            let mut data = fs::read(src.join(rel))?;
            if i % 2 == 0 {
                // An upgrade: a few bytes changed in every 512, throughout.
                for block in data.chunks_mut(512) {
                    let at = rng.below(block.len() as u64) as usize;
                    let n = (block.len() - at).min(8);
                    rng.fill(&mut block[at..at + n]);
                }
            } else {
                // An edit: a few KiB rewritten in the middle, a line appended.
                let mid = data.len() / 2;
                let n = (data.len() - mid).min(4096);
                data[mid..mid + n].copy_from_slice(&log_text(n as u64, &mut rng).into_bytes());
                data.extend_from_slice(b"# edited this month\n");
            }
            let local = mod_dir.join(format!("r{i}"));
            fs::write(&local, &data)?;
            script += &format!("cd /{parent}\nrm {name}\nwrite {} {name}\n", local.display());
            ch.files_replaced += 1;
            ch.replaced_bytes += data.len() as u64;
        } else if i % 200 == 100 {
            script += &format!("rm /{rel_s}\n");
            ch.files_deleted += 1;
        }
    }
    // New files: further system files (an installed package) and a new log.
    let new_src = work.join("new-src");
    sys.copy_into(&new_src, budget / 100)?;
    write_text(&new_src.join("install.log"), budget / 400, &mut rng)?;
    script += "mkdir /srv\nmkdir /srv/new\ncd /srv/new\n";
    for (k, rel) in regular_files(&new_src)?.iter().enumerate() {
        let path = new_src.join(rel);
        if path.to_str().is_none_or(|p| p.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\')) {
            continue;
        }
        script += &format!("write {} f{k:05}\n", path.display());
        ch.files_added += 1;
        ch.added_bytes += fs::metadata(&path)?.len();
    }
    script += "cd /\n";
    let cmds = work.join("month.debugfs");
    fs::write(&cmds, &script)?;
    let out = run_output(tools::command("debugfs").arg("-w").arg("-f").arg(&cmds).arg(&ext4_mod))?;
    let written = out.matches("Allocated inode").count();
    ensure!(
        written == ch.files_replaced + ch.files_added,
        "debugfs wrote {written} of {} files:\n{}",
        ch.files_replaced + ch.files_added,
        out.lines()
            .filter(|l| !l.starts_with("debugfs:") && !l.starts_with("Allocated"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    fsck_ext4(&ext4_mod.display().to_string())?;
    fsck_ext4(&ext4_img.display().to_string())?;

    // NTFS: one document edited in place in scattered places (2 % of its 64 KiB pieces get 4–64
    // KiB of new text), one new file.
    let ntfs_mod = work.join("p2.month.img");
    fs::copy(&ntfs_img, &ntfs_mod)?;
    let doc = nsrc.join("documents.pack");
    let doc_len = fs::metadata(&doc)?.len();
    {
        let f = OpenOptions::new().write(true).open(&doc)?;
        let edits = (doc_len / (64 * KIB) / 50).max(4);
        for _ in 0..edits {
            let n = 4 * KIB + rng.below(60 * KIB);
            let at = rng.below(doc_len.saturating_sub(n).max(1));
            let text = log_text(n.min(doc_len - at), &mut rng);
            f.write_all_at(text.as_bytes(), at)?;
            ch.ntfs_edited_bytes += text.len() as u64;
        }
    }
    ntfs_copy_in(&ntfs_mod, &doc, "documents.pack")?;
    let report = nsrc.join("report.log");
    write_text(&report, p2.1 / 100, &mut rng)?;
    ntfs_copy_in(&ntfs_mod, &report, "report.log")?;
    ch.ntfs_new_bytes = p2.1 / 100;

    say("  month disk: the base disk, patched");
    let month = work.join("disk.month.img");
    fs::copy(&disk.path, &month)?;
    {
        let f = OpenOptions::new().write(true).open(&month)?;
        image::patch_differences(&ext4_img, &ext4_mod, &f, p1.0)?;
        image::patch_differences(&ntfs_img, &ntfs_mod, &f, p2.0)?;
        f.sync_all()?;
    }
    sync_file(&disk.path)?;
    for p in [&ext4_img, &ext4_mod, &ntfs_img, &ntfs_mod, &cmds] {
        fs::remove_file(p)?;
    }
    for d in [&src, &nsrc, &new_src, &mod_dir] {
        fs::remove_dir_all(d)?;
    }
    Ok(MonthDisk {
        path: disk.path,
        month_path: month,
        parts: vec![
            MonthPart { number: 1, fs: Fs::Ext4, start: p1.0, size: p1.1 },
            MonthPart { number: 2, fs: Fs::Ntfs, start: p2.0, size: p2.1 },
        ],
        ext4_files: files.len(),
        changes: ch,
    })
}

/// Fills `path` (created, `size` bytes) with junk: MiBs of pseudo-random bytes and of old log
/// text, alternating, as a disk that has held other data.
fn write_junk(path: &Path, size: u64, rng: &mut XorShift) -> Result<()> {
    let mut f = std::io::BufWriter::new(File::create(path)?);
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(MIB) as usize;
        if (pos / MIB).is_multiple_of(2) {
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])?;
        } else {
            f.write_all(log_text(n as u64, rng).as_bytes())?;
        }
        pos += n as u64;
    }
    f.flush()?;
    Ok(())
}

/// One 8 KiB database page: a header (magic, page number, LSN, row count), rows of
/// `id|customer|status|amount|time|note` text, and zeroed free space (10–35 % of the page).
pub fn db_page(page: u64, lsn: u64, rng: &mut XorShift) -> Vec<u8> {
    const STATUS: [&str; 6] = ["new", "paid", "shipped", "returned", "cancelled", "pending"];
    const NOTES: [&str; 8] = ["gift", "express", "pickup", "standard", "bulk", "priority", "repeat", "first"];
    let mut p = vec![0u8; PAGE as usize];
    p[..4].copy_from_slice(b"KDB1");
    p[4..12].copy_from_slice(&page.to_le_bytes());
    p[12..20].copy_from_slice(&lsn.to_le_bytes());
    let fill = PAGE as usize * (65 + rng.below(26) as usize) / 100;
    let mut at = 24;
    let mut rows = 0u16;
    let mut id = page * 100;
    while at < fill {
        let r = rng.next_u64();
        id += 1 + (r & 3);
        let row = format!(
            "{id:010}|{:06}|{}|{:>7}.{:02}|{}|{}\n",
            (r >> 8) % 200_000,
            STATUS[((r >> 28) % 6) as usize],
            (r >> 32) % 100_000,
            (r >> 50) % 100,
            1_700_000_000 + (lsn % 1_000_000) * 7 + ((r >> 40) % 1000),
            NOTES[((r >> 60) % 8) as usize]
        );
        let n = row.len().min(fill - at);
        p[at..at + n].copy_from_slice(&row.as_bytes()[..n]);
        at += n;
        rows += 1;
    }
    p[20..22].copy_from_slice(&rows.to_le_bytes());
    p
}

fn write_db_file(path: &Path, pages: u64, rng: &mut XorShift) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(MIB as usize, File::create(path)?);
    for page in 0..pages {
        f.write_all(&db_page(page, 1000 + page, rng))?;
    }
    f.flush()?;
    Ok(())
}

/// A journal file of `len` bytes: `used` bytes of log text, then a reserved tail whose 4 KiB
/// blocks start with a newline (so `mkfs.ext4 -d` allocates them rather than leaving holes).
fn write_journal(path: &Path, len: u64, used: u64, rng: &mut XorShift) -> Result<()> {
    let mut f = std::io::BufWriter::new(File::create(path)?);
    f.write_all(log_text(used, rng).as_bytes())?;
    let mut block = vec![0u8; EXT4_BLOCK as usize];
    block[0] = b'\n';
    for _ in 0..(len - used) / EXT4_BLOCK {
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

/// The physical block of each logical block of the file `name` (relative to the root) on the
/// ext4 image `img` (`debugfs -R blocks`).
fn file_blocks(img: &Path, name: &str) -> Result<Vec<u64>> {
    let out = run("debugfs", ["-R".as_ref(), format!("blocks /{name}").as_ref(), img.as_os_str()])?;
    let blocks: Vec<u64> = out
        .split_whitespace()
        .map(|w| w.parse::<u64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("debugfs blocks /{name}: {out:.200}"))?;
    if blocks.is_empty() {
        bail!("debugfs found no blocks for /{name}");
    }
    Ok(blocks)
}

/// Writes `data` at logical byte `at` of a file whose logical blocks are at `blocks` of the
/// image open as `f`.
fn write_logical(f: &File, blocks: &[u64], at: u64, data: &[u8]) -> Result<()> {
    let mut done = 0usize;
    while done < data.len() {
        let pos = at + done as u64;
        let (lb, off) = (pos / EXT4_BLOCK, pos % EXT4_BLOCK);
        let phys = *blocks.get(lb as usize).context("write past the file's blocks")?;
        let n = ((EXT4_BLOCK - off) as usize).min(data.len() - done);
        f.write_all_at(&data[done..done + n], phys * EXT4_BLOCK + off)?;
        done += n;
    }
    Ok(())
}

/// A month of database writes on a file of `pages` pages: 3 % of the pages rewritten, 70 % of
/// the writes in six hot regions of 1 % of the file each, the rest anywhere. Returns the
/// distinct pages rewritten.
fn rewrite_pages(f: &File, blocks: &[u64], pages: u64, rng: &mut XorShift) -> Result<u64> {
    let writes = pages * 3 / 100;
    let hot_len = (pages / 100).max(8);
    let hot: Vec<u64> = (0..6).map(|_| rng.below(pages.saturating_sub(hot_len).max(1))).collect();
    let mut done = BTreeSet::new();
    for _ in 0..writes {
        let page = if rng.below(10) < 7 { hot[rng.below(6) as usize] + rng.below(hot_len) } else { rng.below(pages) };
        done.insert(page.min(pages - 1));
    }
    for (k, &page) in done.iter().enumerate() {
        let data = db_page(page, 1_000_000 + k as u64, rng);
        write_logical(f, blocks, page * PAGE, &data)?;
    }
    Ok(done.len() as u64)
}
