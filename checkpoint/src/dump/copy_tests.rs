//! Tests of the page copy ([`super`]).

use super::*;

#[test]
fn scattered_pages_are_batched() {
    let jobs: Vec<Job> = (0..100)
        .map(|i| Job {
            addr: 0x10_0000 + i * 20 * PAGE,
            len: PAGE,
            slot: i,
        })
        .collect();
    let b = batches(&jobs, BUF);
    assert_eq!(b.len(), 2, "64 pages fill a 256 KiB batch");
    assert_eq!(b[0].len(), 64);
    let big = [Job {
        addr: 0,
        len: 1 << 20,
        slot: 7,
    }];
    let b = batches(&big, BUF);
    assert_eq!(b.len(), 4);
    assert_eq!(b[3][0].slot, 7 + 192);
}

/// `pages` pages of bytes that differ from page to page.
fn patterned(pages: usize, step: usize, modulo: usize) -> Vec<u8> {
    (0..pages * PAGE as usize)
        .map(|i| (i / 4096 * step + i % modulo) as u8)
        .collect()
}

/// `n` single pages of `src`, every other one, each in a slot of its own.
fn every_other_page(out: &mut DataFile, base: u64, n: u64) -> Vec<Job> {
    (0..n)
        .map(|i| Job {
            addr: base + 2 * i * PAGE,
            len: PAGE,
            slot: out.alloc(1),
        })
        .collect()
}

/// Each job's bytes of `src` are at its slot of the data file `back`.
fn assert_copied(back: &[u8], src: &[u8], base: u64, jobs: &[Job]) {
    for j in jobs {
        let (s, d) = (
            (j.addr - base) as usize,
            (DATA_OFF + j.slot * PAGE) as usize,
        );
        assert_eq!(&back[d..d + j.len as usize], &src[s..s + j.len as usize]);
    }
}

#[test]
fn a_running_round_written_directly_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d");
    let mut out = DataFile::new(File::create(&path).unwrap(), path.clone());
    out.go_direct();
    out.direct_always = true;
    let src = patterned(1200, 13, 251);
    let base = src.as_ptr() as u64;
    // 600 scattered pages (more than one 2 MiB write), then 1 MiB whole
    let mut jobs = every_other_page(&mut out, base, 600);
    jobs.push(Job {
        addr: base + 1200 * PAGE - (1 << 20),
        len: 1 << 20,
        slot: out.alloc(256),
    });
    let me = std::process::id() as i32;
    let n = copy(me, &jobs, &mut out, &|_| {}, true).unwrap();
    assert_eq!(n.bytes, 856 * PAGE);
    assert!(n.failed.is_empty());
    assert_copied(&std::fs::read(&path).unwrap(), &src, base, &jobs);
    assert_eq!(out.crcs[3], crc32fast::hash(&src[6 * 4096..7 * 4096]));
}

#[test]
fn a_large_running_round_is_timed_then_copied_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d");
    let mut out = DataFile::new(File::create(&path).unwrap(), path.clone());
    out.go_direct();
    let src = patterned(2000, 7, 241);
    let base = src.as_ptr() as u64;
    // 300 scattered pages, then 5 MiB whole: the timed first 2 MiB end
    // inside the big job
    let mut jobs = every_other_page(&mut out, base, 300);
    jobs.push(Job {
        addr: base + 700 * PAGE,
        len: 5 << 20,
        slot: out.alloc(1280),
    });
    let shown = std::cell::Cell::new(0);
    let me = std::process::id() as i32;
    let n = copy(me, &jobs, &mut out, &|b| shown.set(shown.get() + b), true).unwrap();
    assert_eq!(n.bytes, 1580 * PAGE);
    assert_eq!(shown.get(), n.bytes, "progress counts each byte once");
    assert_copied(&std::fs::read(&path).unwrap(), &src, base, &jobs);
    let last = 300 + 1279;
    assert_eq!(
        out.crcs[last],
        crc32fast::hash(&src[(700 + 1279) * 4096..(700 + 1280) * 4096])
    );
}

#[test]
fn jobs_split_at_a_byte_count() {
    let j = |addr, pages, slot| Job {
        addr: addr * PAGE,
        len: pages * PAGE,
        slot,
    };
    let (h, t) = split_at_bytes(&[j(0, 2, 0), j(10, 4, 2), j(20, 1, 6)], 3 * PAGE);
    assert_eq!(h.iter().map(|x| x.len).sum::<u64>(), 3 * PAGE);
    assert_eq!((h[1].addr, h[1].len, h[1].slot), (10 * PAGE, PAGE, 2));
    assert_eq!((t[0].addr, t[0].len, t[0].slot), (11 * PAGE, 3 * PAGE, 3));
    assert_eq!(t.len(), 2);
}

#[test]
fn copies_own_memory_with_page_crcs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d");
    let mut out = DataFile::new(File::create(&path).unwrap(), path.clone());
    let src: Vec<u8> = (0..5 * PAGE as usize)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let slot = out.alloc(5);
    assert_eq!(out.alloc(1), 5);
    let me = std::process::id() as i32;
    let n = copy(
        me,
        &[Job {
            addr: src.as_ptr() as u64,
            len: 5 * PAGE,
            slot,
        }],
        &mut out,
        &|_| {},
        false,
    )
    .unwrap();
    assert_eq!(n.bytes, 5 * PAGE);
    let back = std::fs::read(&path).unwrap();
    assert_eq!(&back[DATA_OFF as usize..][..src.len()], &src[..]);
    assert_eq!(out.crcs[2], crc32fast::hash(&src[2 * 4096..3 * 4096]));
    assert_eq!(out.crc_of(1, 3), crc32fast::hash(&src[4096..4 * 4096]));
}
